"""Patient scores from patch scores.

* ``fraction`` (seed 000): the fraction of the patient's patches above the patch threshold.
* ``topk``: the mean of the patient's k highest patch probabilities (all of them when the patient
  has fewer than k patches); it needs no patch threshold, and one small tumour covering a few
  patches of a large gland is not diluted by the gland's size.
* ``cluster``: the number of patches in the patient's largest 3D cluster of positive patches
  (above the patch threshold), where two patches are neighbours when they lie at most one grid
  step apart in y, in x and in slices; scattered false positives make small clusters, a tumour
  one contiguous cluster. As a patient score the size n is reported as n / (n + 1), which keeps
  the order of the sizes (so the same ROC, AUC and threshold choice) within [0, 1), as the
  reports expect of a score.

Every function takes plain arrays (one entry per patch) and returns {patient id: score}, every
patient of `patient_ids` included (0 for a patient without positive patches).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from cadx.config import PATIENT_SCORES, DecideConfig
from cadx.errors import ConfigError


def _groups(patient_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ids, inverse = np.unique(np.asarray(patient_ids).astype(str), return_inverse=True)
    return ids, inverse.ravel()


def patient_scores(patient_ids: np.ndarray, patch_scores: np.ndarray,
                   patch_threshold: float) -> dict[str, float]:
    """Map each patient id to the fraction of its patches scoring above `patch_threshold`."""
    ids, inverse = _groups(patient_ids)
    positive = (np.asarray(patch_scores) > patch_threshold).astype(np.float64)
    n_positive = np.bincount(inverse, weights=positive, minlength=len(ids))
    n_total = np.bincount(inverse, minlength=len(ids))
    return {pid: float(p / n) for pid, p, n in zip(ids.tolist(), n_positive, n_total, strict=True)}


def top_k_mean_scores(patient_ids: np.ndarray, patch_scores: np.ndarray,
                      top_k: int) -> dict[str, float]:
    """Map each patient id to the mean of its `top_k` highest patch scores."""
    if top_k < 1:
        raise ConfigError(f"top-k must be >= 1, got {top_k}")
    ids, inverse = _groups(patient_ids)
    scores = np.asarray(patch_scores, dtype=np.float64)
    order = np.lexsort((-scores, inverse))  # by patient, highest score first
    grouped = inverse[order]
    first = np.searchsorted(grouped, np.arange(len(ids)))
    rank = np.arange(len(order)) - first[grouped]
    kept = rank < top_k
    sums = np.bincount(grouped[kept], weights=scores[order][kept], minlength=len(ids))
    counts = np.minimum(np.bincount(inverse, minlength=len(ids)), top_k)
    return {pid: float(s / n) for pid, s, n in zip(ids.tolist(), sums, counts, strict=True)}


def largest_cluster_scores(patient_ids: np.ndarray, patch_scores: np.ndarray,
                           patch_threshold: float, coords: np.ndarray,
                           neighbour_px: int) -> dict[str, float]:
    """Map each patient id to the size (patches) of its largest cluster of positive patches.

    `coords` holds each patch's (slice, y, x) on the preprocessed grid; positive patches whose
    slices differ by at most 1 and whose y and x differ by at most `neighbour_px` (the grid
    stride) are neighbours. All patients are clustered in one k-d tree query.
    """
    ids, inverse = _groups(patient_ids)
    coords = np.asarray(coords, dtype=np.float64).reshape(-1, 3)
    if len(coords) != len(inverse):
        raise ConfigError(f"{len(coords)} patch coordinates for {len(inverse)} patches")
    positive = np.flatnonzero(np.asarray(patch_scores) > patch_threshold)
    best = np.zeros(len(ids))
    if positive.size:
        # Slices scaled to one grid step, patients set far apart: neighbours are exactly the
        # pairs within Chebyshev distance `neighbour_px`.
        points = coords[positive] * np.array([neighbour_px, 1.0, 1.0])
        span = float(np.abs(points).max()) + 2.0 * neighbour_px + 1.0
        points[:, 0] += inverse[positive] * 4.0 * span
        pairs = cKDTree(points).query_pairs(neighbour_px * (1.0 + 1e-9), p=np.inf,
                                            output_type="ndarray")
        graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])),
                           shape=(positive.size, positive.size))
        _, component = connected_components(graph, directed=False)
        sizes = np.bincount(component)
        np.maximum.at(best, inverse[positive], sizes[component])
    return dict(zip(ids.tolist(), best.tolist(), strict=True))


def score_patients(config: DecideConfig, patient_ids: np.ndarray, patch_scores: np.ndarray,
                   patch_threshold: float, coords: np.ndarray | None = None,
                   neighbour_px: int | None = None) -> dict[str, float]:
    """The patient score `config.patient_score` of every patient (see the module docstring);
    "cluster" needs the patches' `coords` and the grid step `neighbour_px`."""
    method = config.patient_score
    if method == "fraction":
        return patient_scores(patient_ids, patch_scores, patch_threshold)
    if method == "topk":
        return top_k_mean_scores(patient_ids, patch_scores, config.top_k)
    if method == "cluster":
        if coords is None or neighbour_px is None:
            raise ConfigError("the cluster patient score needs patch coordinates and the stride")
        sizes = largest_cluster_scores(patient_ids, patch_scores, patch_threshold, coords,
                                       neighbour_px)
        return {pid: size / (size + 1.0) for pid, size in sizes.items()}
    raise ConfigError(f"patient score must be one of {PATIENT_SCORES}, got {method!r}")


# Top-k patient scores whose validation thresholds every bundle stores, so that `evaluate
# --patient-score topk --top-k K` can use any of them without choosing on the evaluated data.
STORED_TOP_K = (1, 3, 5, 10, 20)


def candidate_patient_scores(decide: DecideConfig) -> list[DecideConfig]:
    """Every patient score a bundle stores a threshold for: each of PATIENT_SCORES, top-k for
    each k in STORED_TOP_K and `decide.top_k`, with `decide`'s other settings."""
    tops = sorted({*STORED_TOP_K, decide.top_k})
    return ([replace(decide, patient_score=name) for name in PATIENT_SCORES if name != "topk"]
            + [replace(decide, patient_score="topk", top_k=k) for k in tops])
