"""ROC curve and the operating point at the maximum Youden index (seed 000, FIG. 4)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from cadx.errors import SplitError


@dataclass(frozen=True)
class OperatingPoint:
    """A threshold with its ROC: a score strictly greater than `threshold` is positive."""

    threshold: float
    sensitivity: float
    specificity: float
    youden_index: float
    auc: float
    fpr: tuple[float, ...]
    tpr: tuple[float, ...]

    def to_dict(self) -> dict[str, object]:
        return {
            "threshold": self.threshold, "sensitivity": self.sensitivity,
            "specificity": self.specificity, "youden_index": self.youden_index, "auc": self.auc,
            "roc": {"fpr": list(self.fpr), "tpr": list(self.tpr)},
        }

    @classmethod
    def from_dict(cls, data: dict) -> OperatingPoint:
        return cls(data["threshold"], data["sensitivity"], data["specificity"],
                   data["youden_index"], data["auc"], tuple(data["roc"]["fpr"]),
                   tuple(data["roc"]["tpr"]))


def _roc(y_true: np.ndarray, scores: np.ndarray, name: str
         ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(labels, scores, fpr, tpr, thresholds) of a two-class ROC; SplitError with one class."""
    y_true = np.asarray(y_true).astype(int)
    scores = np.asarray(scores, dtype=np.float64)
    if len(np.unique(y_true)) < 2:
        raise SplitError(f"{name or 'ROC'}: need both positive and negative cases, "
                         f"got only {'positive' if y_true.any() else 'negative'} ({len(y_true)})")
    fpr, tpr, thresholds = roc_curve(y_true, scores, drop_intermediate=False)
    return y_true, scores, fpr, tpr, thresholds


def _point_at(y_true: np.ndarray, scores: np.ndarray, fpr: np.ndarray, tpr: np.ndarray,
              thresholds: np.ndarray, best: int) -> OperatingPoint:
    """The OperatingPoint of ROC index `best`, its threshold placed so that `score >
    threshold` reproduces that ROC point (see youden_operating_point)."""
    chosen = thresholds[best]
    lower = scores[scores < chosen]
    if np.isinf(chosen):
        threshold = float(scores.max())
    elif lower.size:
        threshold = float((chosen + lower.max()) / 2.0)
    else:
        threshold = float(np.nextafter(chosen, -np.inf))
    return OperatingPoint(
        threshold=threshold, sensitivity=float(tpr[best]), specificity=float(1.0 - fpr[best]),
        youden_index=float(tpr[best] - fpr[best]), auc=float(roc_auc_score(y_true, scores)),
        fpr=tuple(float(v) for v in fpr), tpr=tuple(float(v) for v in tpr),
    )


def youden_operating_point(y_true: np.ndarray, scores: np.ndarray,
                           name: str = "") -> OperatingPoint:
    """The threshold maximising sensitivity + specificity - 1 on the ROC of `scores`.

    scikit-learn's ROC counts `score >= t` as positive at its thresholds t; we return the
    midpoint between the chosen t and the next lower distinct score, so that the seed's rule
    `score > threshold` reproduces exactly the chosen ROC point. Ties in the Youden index go
    to the higher threshold (the more specific point).
    """
    y_true, scores, fpr, tpr, thresholds = _roc(y_true, scores, name)
    youden = tpr - fpr
    # First index within rounding of the maximum, so ties go to the higher threshold even when
    # float error makes 1 - 1/3 look larger than 2/3.
    best = int(np.flatnonzero(youden >= youden.max() - 1e-9)[0])
    return _point_at(y_true, scores, fpr, tpr, thresholds, best)


def specificity_operating_point(y_true: np.ndarray, scores: np.ndarray,
                                min_specificity: float, name: str = "") -> OperatingPoint:
    """The most sensitive threshold whose specificity on these cases is >= `min_specificity`
    (a fixed-specificity operating point; ties in sensitivity go to the more specific point).
    `score > threshold` reproduces the chosen ROC point, as for youden_operating_point."""
    if not 0.0 < min_specificity <= 1.0:
        raise ValueError(f"min_specificity must be in (0, 1], got {min_specificity}")
    y_true, scores, fpr, tpr, thresholds = _roc(y_true, scores, name)
    allowed = np.flatnonzero(1.0 - fpr >= min_specificity - 1e-9)  # index 0 (no positive) is
    best_tpr = tpr[allowed].max()                                   # always allowed
    best = int(allowed[np.flatnonzero(tpr[allowed] >= best_tpr - 1e-12)[0]])
    return _point_at(y_true, scores, fpr, tpr, thresholds, best)
