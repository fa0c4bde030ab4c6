"""The demo's showcase patient is chosen by rule, with where its positive patches lie (issue 16,
finding 6): not the first test patient, who may be a false positive for the wrong reason."""

from __future__ import annotations

import numpy as np

from cadx.evaluate.cohort import CohortEvaluation
from cadx.workflows import choose_showcase_patient


def _evaluation(rows: list[dict], patches: dict[str, tuple[list[float], list[int]]]
                ) -> CohortEvaluation:
    ids = [pid for pid, (scores, _) in patches.items() for _ in scores]
    return CohortEvaluation(
        patch_threshold=0.5, patient_threshold=0.3, patch={}, patient={}, by_tumour_size=[],
        patients=rows, patch_roc={}, patient_roc={}, metadata_columns=[],
        patch_scores=np.array([s for scores, _ in patches.values() for s in scores]),
        patch_labels=np.array([y for _, labels in patches.values() for y in labels]),
        patch_patient_ids=np.array(ids))


def _row(pid: str, tumour: bool, score: float) -> dict:
    return {"patient_id": pid, "has_tumour": tumour, "patient_score": score,
            "predicted_cancer": score > 0.3}


def test_showcase_is_the_best_scored_true_positive_not_a_false_positive():
    rows = [_row("p1", False, 0.9),  # first and highest: a false positive
            _row("p2", True, 0.4), _row("p3", True, 0.6), _row("p4", True, 0.2)]
    evaluation = _evaluation(rows, {
        "p1": ([0.9, 0.8, 0.7], [0, 0, 0]), "p2": ([0.6, 0.1], [1, 0]),
        "p3": ([0.9, 0.7, 0.6, 0.2], [1, 0, 0, 1]), "p4": ([0.1], [1])})
    chosen = choose_showcase_patient(evaluation)
    assert chosen.patient_id == "p3" and "true positives" in chosen.reason
    assert (chosen.patches, chosen.tumour_patches) == (4, 2)
    assert (chosen.positive_patches, chosen.positive_patches_on_tumour) == (3, 1)


def test_without_a_detected_cancer_the_showcase_says_it_is_a_miss():
    rows = [_row("p1", False, 0.9), _row("p2", True, 0.2), _row("p3", True, 0.1)]
    evaluation = _evaluation(rows, {"p1": ([0.9], [0]), "p2": ([0.4], [1]),
                                    "p3": ([0.1], [1])})
    chosen = choose_showcase_patient(evaluation)
    assert chosen.patient_id == "p2" and "false negative" in chosen.reason
    assert chosen.positive_patches == 0
