"""Patient thresholds re-chosen on a site's own labelled patients (`cadx calibrate`).

Training chooses the patient threshold by max Youden on its validation patients (seed 000),
often a few dozen. A site that holds a larger labelled cohort the model has never seen can set
the operating point there instead: by max Youden again, or as the most sensitive threshold
that keeps a required specificity. The network and the patch threshold stay as trained; every
stored patient score's threshold is re-chosen by the same rule, and the bundle records how.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import numpy as np

from cadx.decide.aggregate import candidate_patient_scores
from cadx.decide.roc import OperatingPoint, specificity_operating_point, youden_operating_point
from cadx.evaluate.cohort import cohort_patient_scores

if TYPE_CHECKING:
    from cadx.bundle import PatchModelBundle
    from cadx.patches.cohort import PatchedCase


def calibration_rule(target_specificity: float | None) -> str:
    """How the threshold is chosen, as recorded in the bundle and printed."""
    if target_specificity is None:
        return "max Youden"
    return f"most sensitive with specificity >= {target_specificity:g}"


def operating_point(truth: np.ndarray, scores: np.ndarray, target_specificity: float | None,
                    name: str) -> OperatingPoint:
    """Max Youden, or the most sensitive point with specificity >= `target_specificity`."""
    if target_specificity is None:
        return youden_operating_point(truth, scores, name)
    return specificity_operating_point(truth, scores, target_specificity, name)


def calibrated_bundle(bundle: PatchModelBundle, cases: Sequence[PatchedCase],
                      patch_scores: Sequence[np.ndarray], target_specificity: float | None,
                      source: str) -> tuple[PatchModelBundle, dict[str, Any]]:
    """`bundle` with every stored patient score's threshold re-chosen on `cases` (scored
    `patch_scores` by the bundle's network), and the record kept in its summary under
    "calibration": rule, cohort, the previous and new threshold with their sensitivity and
    specificity on these patients."""
    truth = np.array([c.has_tumour for c in cases])
    own = bundle.config.decide.score_name
    points: dict[str, OperatingPoint] = {}
    own_scores = None
    for decide in candidate_patient_scores(bundle.config.decide):
        name = decide.score_name
        if name != own and name not in bundle.patient_operating_points:
            continue
        scores = cohort_patient_scores(cases, patch_scores, bundle.patch_threshold,
                                       replace(bundle.config, decide=decide))
        points[name] = operating_point(truth, scores, target_specificity,
                                       f"{source} patients ({name})")
        if name == own:
            own_scores = scores
    before = own_scores > bundle.patient_threshold
    point = points[own]
    record = {
        "dataset": source, "patients": int(len(truth)), "with_tumour": int(truth.sum()),
        "rule": calibration_rule(target_specificity), "target_specificity": target_specificity,
        "patient_score": own,
        "previous_threshold": bundle.patient_threshold,
        "previous_sensitivity": float(before[truth].mean()),
        "previous_specificity": float((~before[~truth]).mean()),
        "threshold": point.threshold, "sensitivity": point.sensitivity,
        "specificity": point.specificity, "auc": point.auc,
        "calibrated_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    calibrated = replace(bundle, patient_operating_point=point,
                         patient_operating_points={**bundle.patient_operating_points, **points},
                         summary={**bundle.summary, "calibration": record})
    return calibrated, record
