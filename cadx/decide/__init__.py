"""ROC curves, Youden thresholds and patient-level aggregation of patch scores."""
