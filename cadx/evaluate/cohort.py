"""Patch- and patient-level evaluation of a scored, labelled cohort at given thresholds."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from sklearn.metrics import roc_curve

from cadx.config import DecideConfig, PipelineConfig
from cadx.decide.aggregate import score_patients
from cadx.evaluate.lesion_size import (
    LARGER_TUMOUR_GROUP,
    SIZE_BINS_MM,
    SMALL_TUMOUR_GROUP,
    SMALL_TUMOUR_MM,
    size_bin,
)
from cadx.evaluate.levels import MISSING_GROUP, LevelResult, evaluate_level
from cadx.evaluate.metrics import binary_metrics
from cadx.patches.cohort import PatchedCase

NO_TUMOUR_GROUP = "no tumour"
_UNDER_2CM = {name for low, _, name in SIZE_BINS_MM if low < SMALL_TUMOUR_MM}


@dataclass
class CohortEvaluation:
    """Metrics at the stored thresholds, per-patient rows and sensitivity by tumour size.

    Patient rows carry the dataset's metadata columns (`metadata_columns`). The patch-level
    arrays (one entry per patch) feed the report's confidence intervals and are left out of
    `to_dict`.
    """

    patch_threshold: float
    patient_threshold: float
    patch: dict[str, float | int | None]
    patient: dict[str, float | int | None]
    by_tumour_size: list[dict[str, object]]
    patients: list[dict[str, object]]
    patch_roc: dict[str, list[float]]
    patient_roc: dict[str, list[float]]
    metadata_columns: list[str]
    patch_scores: np.ndarray = field(repr=False)
    patch_labels: np.ndarray = field(repr=False)
    patch_patient_ids: np.ndarray = field(repr=False)
    patient_score_description: str = ""  # the patient score in words, for the report

    def to_dict(self) -> dict[str, object]:
        return {
            "patch_threshold": self.patch_threshold, "patient_threshold": self.patient_threshold,
            "patch": self.patch, "patient": self.patient, "by_tumour_size": self.by_tumour_size,
            "patients": self.patients, "patch_roc": self.patch_roc,
            "patient_roc": self.patient_roc, "metadata_columns": self.metadata_columns,
        }


def _roc(y_true: np.ndarray, scores: np.ndarray) -> dict[str, list[float]]:
    if len(np.unique(y_true)) < 2:
        return {"fpr": [], "tpr": []}
    fpr, tpr, _ = roc_curve(y_true, scores)
    return {"fpr": fpr.tolist(), "tpr": tpr.tolist()}


def cohort_patient_scores(cases: Sequence[PatchedCase], patch_scores: Sequence[np.ndarray],
                          patch_threshold: float, config: PipelineConfig) -> np.ndarray:
    """The patient score `config.decide` of each case (in `cases` order)."""
    ids = np.concatenate([c.patches.patient_ids for c in cases])
    coords = np.concatenate([np.asarray(c.patches.coords).reshape(-1, 3) for c in cases])
    score_of = score_patients(config.decide, ids, np.concatenate(patch_scores), patch_threshold,
                              coords, config.patches.stride_px)
    return np.array([score_of[c.patient_id] for c in cases])


def evaluate_cohort(cases: Sequence[PatchedCase], patch_scores: Sequence[np.ndarray],
                    patch_threshold: float, patient_threshold: float,
                    config: PipelineConfig | None = None) -> CohortEvaluation:
    """Evaluate `cases` whose patches scored `patch_scores` (one array per case), with the
    patient score of `config.decide` (default: the seed's fraction of positive patches)."""
    all_scores = np.concatenate(patch_scores)
    all_labels = np.concatenate([c.patches.labels for c in cases]).astype(bool)
    all_ids = np.concatenate([c.patches.patient_ids for c in cases])
    patch = binary_metrics(all_labels, all_scores > patch_threshold, all_scores)

    truth = np.array([c.has_tumour for c in cases])
    p_scores = cohort_patient_scores(cases, patch_scores, patch_threshold,
                                     config or PipelineConfig())
    predicted = p_scores > patient_threshold
    patient = binary_metrics(truth, predicted, p_scores)
    decide = (config or PipelineConfig()).decide

    rows = [
        {"patient_id": c.patient_id, "has_tumour": c.has_tumour,
         "tumour_diameter_mm": None if c.tumour_diameter_mm is None
         else round(c.tumour_diameter_mm, 1),
         "size_bin": size_bin(c.tumour_diameter_mm), "n_patches": len(c.patches),
         "n_cancer_patches": int(c.patches.labels.sum()),
         "patient_score": float(s), "predicted_cancer": bool(p)}
        for c, s, p in zip(cases, p_scores, predicted, strict=True)
    ]
    # Metadata columns in first-seen order; a column that clashes with a computed one is dropped.
    computed_columns = set(rows[0]) if rows else set()
    metadata_columns = [column for column in dict.fromkeys(k for c in cases for k in c.meta)
                        if column not in computed_columns]
    for row, case in zip(rows, cases, strict=True):
        row.update({column: case.meta.get(column) for column in metadata_columns})
    size_table = []
    small = [r for r in rows if _seed_size_group(r) == SMALL_TUMOUR_GROUP]
    groups = [(name, [r for r in rows if r["size_bin"] == name]) for _, _, name in SIZE_BINS_MM]
    for name, members in [*groups, (SMALL_TUMOUR_GROUP, small)]:
        detected = sum(r["predicted_cancer"] for r in members)
        size_table.append({"size_bin": name, "n": len(members), "detected": detected,
                           "sensitivity": detected / len(members) if members else None})
    return CohortEvaluation(
        patch_threshold=patch_threshold, patient_threshold=patient_threshold,
        patch=patch, patient=patient, by_tumour_size=size_table, patients=rows,
        patch_roc=_roc(all_labels, all_scores), patient_roc=_roc(truth, p_scores),
        metadata_columns=metadata_columns, patch_scores=all_scores,
        patch_labels=all_labels.astype(int), patch_patient_ids=all_ids.astype(str),
        patient_score_description=patient_score_description(decide),
    )


def patient_score_description(decide: DecideConfig) -> str:
    """The patient score of `decide` in words (see `cadx.decide.aggregate`)."""
    if decide.patient_score == "topk":
        return f"the mean of the patient's {decide.top_k} highest patch probabilities"
    if decide.patient_score == "cluster":
        return ("n / (n + 1) for the n patches of the patient's largest 3D cluster of patches "
                "above the patch threshold")
    return "the fraction of the patient's patches above the patch threshold"


def _seed_size_group(row: dict[str, object]) -> str:
    """The seed's split: tumours under 2 cm, the larger ones, no tumour."""
    if not row["has_tumour"]:
        return NO_TUMOUR_GROUP
    if row["size_bin"] is None:
        return MISSING_GROUP
    return SMALL_TUMOUR_GROUP if row["size_bin"] in _UNDER_2CM else LARGER_TUMOUR_GROUP


def cohort_levels(evaluation: CohortEvaluation, *, source: str = "", n_boot: int = 1000,
                  seed: int = 0, subgroups: Mapping[str, Sequence[object]] | None = None,
                  subgroup_order: Mapping[str, Sequence[str]] | None = None,
                  ) -> list[LevelResult]:
    """The patch level (patient-level cluster bootstrap CIs) and the patient level (Wilson and
    DeLong CIs, subgroups by tumour size and by each metadata column) of `evaluation`.
    `subgroups` (a value per patient row, e.g. a clinical column in bins) replace or add
    columns, their groups listed in `subgroup_order` first.

    A cohort with one class only raises InputError naming `source` (e.g. the dataset).
    """
    prefix = f"{source}, " if source else ""
    patch = evaluate_level(
        "patch", evaluation.patch_labels, evaluation.patch_scores, evaluation.patch_threshold,
        unit="patches", clusters=evaluation.patch_patient_ids, score_kind="probability",
        threshold_note="stored in the model bundle (max Youden on the validation patches)",
        source=f"{prefix}patch level", n_boot=n_boot, seed=seed)
    rows = evaluation.patients
    extra, extra_order = dict(subgroups or {}), dict(subgroup_order or {})
    subgroups: dict[str, list[object]] = {
        "size_bin": [(r["size_bin"] or MISSING_GROUP) if r["has_tumour"] else NO_TUMOUR_GROUP
                     for r in rows],
        "size_2cm": [_seed_size_group(r) for r in rows]}
    subgroups.update({column: [r[column] for r in rows]
                      for column in evaluation.metadata_columns})
    subgroups.update({column: list(values) for column, values in extra.items()})
    patient = evaluate_level(
        "patient", [r["has_tumour"] for r in rows], [r["patient_score"] for r in rows],
        evaluation.patient_threshold, unit="patients", subgroups=subgroups,
        subgroup_order={"size_bin": [name for _, _, name in SIZE_BINS_MM] + [NO_TUMOUR_GROUP],
                        "size_2cm": [SMALL_TUMOUR_GROUP, LARGER_TUMOUR_GROUP,
                                     NO_TUMOUR_GROUP], **extra_order},
        score_kind="score", score_description=evaluation.patient_score_description,
        threshold_note="stored in the model bundle (max Youden on the validation patients)",
        source=f"{prefix}patient level", n_boot=n_boot, seed=seed)
    return [patch, patient]
