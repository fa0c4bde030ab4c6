"""Fit a CT patch bundle's fusion model (`cadx fuse`): the bundle's own validation patients,
found in a dataset (MSD folder with cases.csv, or CSV manifest) that carries their clinical
columns, scored with the bundle's patient score at its stored patch threshold, and a logistic
regression of the outcome on that score plus those columns (`cadx.decide.fusion`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from cadx.bundle import PatchModelBundle
from cadx.decide.fusion import (
    FusionFit,
    bundle_validation_ids,
    fit_validation_fusion,
    fusion_clinical_values,
    refuse_leaking_columns,
)
from cadx.errors import InputError
from cadx.evaluate.cohort import cohort_patient_scores
from cadx.io.clinical import ClinicalSchema, case_rows
from cadx.io.dataset import CaseRef
from cadx.patches.cohort import patch_cohort
from cadx.train.pipeline import score_cases


def validation_cases(bundle: PatchModelBundle, refs: Sequence[CaseRef],
                     source: str | Path) -> tuple[CaseRef, ...]:
    """The cases of the dataset `refs` (read from `source`) that are the bundle's validation
    patients as its summary lists them: never a training or test patient."""
    validation, others = bundle_validation_ids(bundle.summary,
                                               f"{bundle.name} ({bundle.created_utc})",
                                               "cadx train")
    chosen = tuple(r for r in refs if r.patient_id in validation and r.patient_id not in others)
    if not chosen:
        raise InputError(f"{source}: none of the model's {len(validation)} validation patients "
                         "is in this dataset (give the dataset it was trained on, with the "
                         "clinical columns in its cases.csv or manifest)")
    return chosen


def fit_ct_fusion(bundle: PatchModelBundle, refs: Sequence[CaseRef], source: str | Path,
                  columns: Sequence[str], *, schema: ClinicalSchema | None = None,
                  out_of_range: str = "error", seed: int = 0,
                  progress: bool = True) -> FusionFit:
    """Fit the fusion of the bundle's patient score with clinical `columns` on its validation
    patients among `refs` (the dataset read from `source`). The clinical values are checked
    before any scan is read; the scans are scored as `cadx evaluate` scores them (the bundle's
    patient score, its stored patch threshold, its precision and test-time flips)."""
    columns = [c.lower() for c in dict.fromkeys(columns)]
    refuse_leaking_columns(columns, schema.leaking if schema is not None else (),
                           schema_source=schema.source if schema else "")
    chosen = validation_cases(bundle, refs, source)
    n_validation = len(set(bundle.summary["split"]["validation"]))
    notes = [] if len(chosen) == n_validation else [
        f"{len(chosen)} of the model's {n_validation} validation patients are in {source}"]
    validation, read_notes = fusion_clinical_values(case_rows(chosen), str(source), columns,
                                                    schema, out_of_range)
    cases = patch_cohort(chosen, bundle.config, progress=progress)
    patch_scores = score_cases(bundle.build_model(), cases, bundle.config.decide.test_time_flips,
                               bundle.precision, bundle.config.model)
    patient_scores = cohort_patient_scores(cases, patch_scores, bundle.patch_threshold,
                                           bundle.config)
    scores = {c.patient_id: float(s) for c, s in zip(cases, patient_scores, strict=True)}
    labels = {c.patient_id: int(c.has_tumour) for c in cases}
    fusion, fit_notes = fit_validation_fusion(scores, labels, validation, columns,
                                              schema=schema, seed=seed)
    # The fusion fits this score only: evaluate refuses to fuse another (--patient-score).
    fusion.fitted_on["patient_score"] = bundle.config.decide.score_name
    return FusionFit(fusion, chosen, notes + read_notes + validation.notes + fit_notes,
                     list(validation.warnings))


__all__ = ["fit_ct_fusion", "validation_cases"]
