"""Patient score = fraction of the patient's patches above the patch threshold (seed 000)."""

from __future__ import annotations

import numpy as np


def patient_scores(patient_ids: np.ndarray, patch_scores: np.ndarray,
                   patch_threshold: float) -> dict[str, float]:
    """Map each patient id to the fraction of its patches scoring above `patch_threshold`."""
    ids, inverse = np.unique(np.asarray(patient_ids).astype(str), return_inverse=True)
    positive = (np.asarray(patch_scores) > patch_threshold).astype(np.float64)
    n_positive = np.bincount(inverse, weights=positive, minlength=len(ids))
    n_total = np.bincount(inverse, minlength=len(ids))
    return {pid: float(p / n) for pid, p, n in zip(ids.tolist(), n_positive, n_total, strict=True)}
