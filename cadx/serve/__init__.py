"""REST service and web page: every bundle of a folder behind `POST /v1/diagnose`."""
