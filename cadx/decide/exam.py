"""Exam (patient) scores from per-image probabilities (seed 002).

theta = -(1/n) * sum_i ln(1 - p_i) over a patient's n images: one confidently malignant image
raises the exam score strongly, many doubtful ones a little. The mean and the max of p_i are the
usual alternatives. Each returns a score per patient; thresholds come from `decide.roc`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cadx.config import EXAM_SCORES
from cadx.errors import ConfigError

# p is clipped to [0, 1 - PROBABILITY_CLIP] so that a probability of exactly 1 gives a finite
# theta (-ln 1e-6 = 13.8) instead of infinity.
PROBABILITY_CLIP = 1e-6


def exam_scores(patient_ids: Sequence[str], probabilities: Sequence[float],
                method: str = "theta") -> dict[str, float]:
    """Aggregate image probabilities into one score per patient with `method`."""
    if method not in EXAM_SCORES:
        raise ConfigError(f"exam score must be one of {EXAM_SCORES}, got {method!r}")
    p = np.asarray(probabilities, dtype=np.float64)
    if p.size != len(patient_ids):
        raise ConfigError(f"{len(patient_ids)} patient ids for {p.size} probabilities")
    if p.size and (not np.isfinite(p).all() or p.min() < 0 or p.max() > 1):
        raise ConfigError("image probabilities must be finite and within [0, 1]")
    ids, inverse = np.unique(np.asarray(patient_ids).astype(str), return_inverse=True)
    counts = np.bincount(inverse, minlength=len(ids))
    if method == "theta":
        terms = -np.log1p(-np.clip(p, 0.0, 1.0 - PROBABILITY_CLIP))
        values = np.bincount(inverse, weights=terms, minlength=len(ids)) / counts
    elif method == "mean":
        values = np.bincount(inverse, weights=p, minlength=len(ids)) / counts
    else:
        values = np.full(len(ids), -np.inf)
        np.maximum.at(values, inverse, p)
    return dict(zip(ids.tolist(), values.tolist(), strict=True))


def exam_probability(values: Sequence[float] | np.ndarray, method: str = "theta") -> np.ndarray:
    """Exam scores mapped into [0, 1] without changing their order (so ROC, AUC and Youden
    points are the same): theta -> 1 - exp(-theta), one minus the geometric mean of the
    (1 - p_i); the mean and the max already are probabilities."""
    if method not in EXAM_SCORES:
        raise ConfigError(f"exam score must be one of {EXAM_SCORES}, got {method!r}")
    values = np.asarray(values, dtype=np.float64)
    return -np.expm1(-values) if method == "theta" else values


def exam_score_description(method: str = "theta") -> str:
    """The exam score of `method` as the reports show it (after `exam_probability`), in words."""
    if method == "theta":
        return ("1 - exp(-theta), theta = -(1/n) * sum ln(1 - p_i) over the patient's n image "
                "probabilities p_i")
    if method == "mean":
        return "the mean of the patient's image probabilities"
    return "the highest of the patient's image probabilities"


def exam_threshold_text(threshold: float, method: str = "theta") -> str:
    """An exam threshold named on both scales where they differ: 'theta 0.3955 (= 0.3267 as
    1 - exp(-theta), the scale of the test reports)'; '0.4000' for mean and max."""
    if method != "theta":
        return f"{threshold:.4f}"
    shown = float(exam_probability([threshold], method)[0])
    return (f"theta {threshold:.4f} (= {shown:.4f} as 1 - exp(-theta), the scale of the test "
            "reports)")
