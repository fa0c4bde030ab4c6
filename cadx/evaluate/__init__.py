"""Metrics, lesion measurements and reports."""
