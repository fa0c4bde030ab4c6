"""Confusion-matrix metrics and AUC for binary decisions."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score


def _ratio(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def binary_metrics(y_true: np.ndarray, y_pred: np.ndarray,
                   scores: np.ndarray | None = None) -> dict[str, float | int | None]:
    """Accuracy, sensitivity, specificity, PPV, NPV, F1 (None where undefined) and counts.

    With `scores`, also the ROC AUC (None when only one class is present).
    """
    y_true = np.asarray(y_true).astype(bool)
    y_pred = np.asarray(y_pred).astype(bool)
    tp = int((y_true & y_pred).sum())
    tn = int((~y_true & ~y_pred).sum())
    fp = int((~y_true & y_pred).sum())
    fn = int((y_true & ~y_pred).sum())
    sensitivity = _ratio(tp, tp + fn)
    ppv = _ratio(tp, tp + fp)
    f1 = _ratio(2 * tp, 2 * tp + fp + fn)
    result: dict[str, float | int | None] = {
        "n": int(y_true.size), "n_positive": tp + fn, "n_negative": tn + fp,
        "tp": tp, "fp": fp, "tn": tn, "fn": fn,
        "accuracy": _ratio(tp + tn, y_true.size), "sensitivity": sensitivity,
        "specificity": _ratio(tn, tn + fp), "ppv": ppv, "npv": _ratio(tn, tn + fn), "f1": f1,
    }
    if scores is not None:
        both = y_true.any() and (~y_true).any()
        result["auc"] = float(roc_auc_score(y_true, scores)) if both else None
    return result
