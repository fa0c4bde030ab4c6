"""Fit a 2D image bundle's fusion model (`cadx fuse`): the bundle's own validation patients,
found in a manifest that carries their clinical columns, scored by the bundle, and a logistic
regression of the outcome on their exam score plus those columns (`cadx.decide.fusion`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from cadx.decide.exam import exam_probability, exam_scores
from cadx.decide.fusion import FusionInputs, FusionModel, fit_fusion, refuse_leaking_columns
from cadx.errors import ConfigError, InputError
from cadx.image_bundle import ImageModelBundle
from cadx.io.clinical import (
    ClinicalSchema,
    column_spec,
    image_rows,
    looks_numeric,
    validate_clinical,
)
from cadx.io.images import ImageDataset, ImageRecord, read_images


@dataclass
class FusionFit:
    """The fitted fusion, the validation patients it used and what was said on the way."""

    fusion: FusionModel
    records: tuple[ImageRecord, ...]
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def validation_records(bundle: ImageModelBundle, dataset: ImageDataset) -> tuple[ImageRecord, ...]:
    """The records of `dataset` whose patients are the bundle's validation patients (as its
    summary lists them): never a training or test patient."""
    split = bundle.summary.get("split", {})
    validation = set(split.get("validation", []))
    if not validation:
        raise ConfigError(f"bundle {bundle.name} ({bundle.created_utc}) lists no validation "
                          "patients: a fusion is fitted on them only (train it with cadx "
                          "train-images / train-features)")
    others = set(split.get("train", [])) | set(split.get("test", []))
    chosen = tuple(r for r in dataset.records
                   if r.patient_id in validation and r.patient_id not in others)
    if not chosen:
        raise InputError(f"{dataset.source}: none of the model's {len(validation)} validation "
                         "patients is in this manifest (give the manifest it was trained on, "
                         "with the clinical columns added)")
    return chosen


def fit_image_fusion(bundle: ImageModelBundle, dataset: ImageDataset, columns: Sequence[str],
                     *, schema: ClinicalSchema | None = None, out_of_range: str = "error",
                     seed: int = 0, progress: bool = True) -> FusionFit:
    """Fit the fusion of the bundle's exam score with `columns` on its validation patients."""
    if bundle.method not in ("cnn-ensemble", "features"):
        raise ConfigError(f"unknown image model method {bundle.method!r}")
    columns = [c.lower() for c in dict.fromkeys(columns)]
    leaks = schema.leaking if schema is not None else ()
    refuse_leaking_columns(columns, leaks, schema_source=schema.source if schema else "")
    records = validation_records(bundle, dataset)
    n_validation = len(set(bundle.summary["split"]["validation"]))
    found = len({r.patient_id for r in records})
    notes = [] if found == n_validation else [
        f"{found} of the model's {n_validation} validation patients are in {dataset.source}"]
    rows = image_rows(records)
    numeric = [c for c in columns if (schema is None or schema.column(c) is None)
               and looks_numeric(rows, c)]
    if numeric:
        notes.append(f"{', '.join(numeric)} read as number(s): no schema entry, and every value "
                     "is a number (give --clinical-schema for the unit and plausible range)")
    validation = validate_clinical(rows, str(dataset.source), schema, columns=columns,
                                   numeric=numeric, out_of_range=out_of_range)
    validation.raise_errors()
    conflicts = [m for c in columns for m in validation.conflicts.get(c, [])]
    if conflicts:
        raise InputError(f"{dataset.source}: a fusion column needs one value per patient: "
                         + "; ".join(conflicts[:3])
                         + (f"; and {len(conflicts) - 3} more" if len(conflicts) > 3 else ""))
    images = read_images(records, bundle.size_px, bundle.channels, progress)
    probabilities = bundle.predict(images)
    patient_ids = [r.patient_id for r in records]
    scores = exam_scores(patient_ids, probabilities, bundle.aggregation)
    ids = sorted(scores)
    label_of = {r.patient_id: r.label for r in records}
    inputs = FusionInputs(
        ids, [label_of[p] for p in ids],
        exam_probability([scores[p] for p in ids], bundle.aggregation).tolist(),
        {c: [validation.patients[p].get(c) for p in ids] for c in columns})
    specs = {}
    for c in columns:
        entry = schema.column(c) if schema is not None else None
        specs[c] = column_spec(entry) if entry is not None else {
            "kind": validation.kinds[c], "level": "image"}
    fusion, fit_notes = fit_fusion(inputs, columns, validation.kinds, validation.units,
                                   leaks_label=leaks, seed=seed, column_specs=specs,
                                   schema_source=schema.source if schema else "")
    return FusionFit(fusion, records, notes + validation.notes + fit_notes,
                     list(validation.warnings))


def fusion_inputs_note(fusion: FusionModel) -> str:
    """The validation AUCs of the fit, said to be in-sample."""
    fitted = fusion.fitted_on
    return (f"validation AUC on the {fitted['n_patients']} fitting patients: image only "
            f"{fitted['auc_image_only']:.3f}, fusion {fitted['auc_fusion']:.3f} (in-sample: the "
            "fusion was fitted on them; judge it on test patients with cadx evaluate-images)")


__all__ = ["FusionFit", "fit_image_fusion", "fusion_inputs_note", "validation_records"]
