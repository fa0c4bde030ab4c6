"""Fit a 2D image bundle's fusion model (`cadx fuse`): the bundle's own validation patients,
found in a manifest that carries their clinical columns, scored by the bundle, and a logistic
regression of the outcome on their exam score plus those columns (`cadx.decide.fusion`)."""

from __future__ import annotations

from collections.abc import Sequence

from cadx.decide.exam import exam_probability, exam_scores
from cadx.decide.fusion import (
    FusionFit,
    bundle_validation_ids,
    fit_validation_fusion,
    fusion_clinical_values,
    fusion_inputs_note,
    refuse_leaking_columns,
)
from cadx.errors import ConfigError, InputError
from cadx.image_bundle import ImageModelBundle
from cadx.io.clinical import ClinicalSchema, image_rows
from cadx.io.images import ImageDataset, ImageRecord, read_images


def validation_records(bundle: ImageModelBundle, dataset: ImageDataset) -> tuple[ImageRecord, ...]:
    """The records of `dataset` whose patients are the bundle's validation patients (as its
    summary lists them): never a training or test patient."""
    validation, others = bundle_validation_ids(bundle.summary,
                                               f"{bundle.name} ({bundle.created_utc})",
                                               "cadx train-images / train-features")
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
    refuse_leaking_columns(columns, schema.leaking if schema is not None else (),
                           schema_source=schema.source if schema else "")
    records = validation_records(bundle, dataset)
    n_validation = len(set(bundle.summary["split"]["validation"]))
    found = len({r.patient_id for r in records})
    notes = [] if found == n_validation else [
        f"{found} of the model's {n_validation} validation patients are in {dataset.source}"]
    validation, read_notes = fusion_clinical_values(image_rows(records), str(dataset.source),
                                                    columns, schema, out_of_range)
    images = read_images(records, bundle.size_px, bundle.channels, progress)
    probabilities = bundle.predict(images)
    patient_ids = [r.patient_id for r in records]
    scores = exam_scores(patient_ids, probabilities, bundle.aggregation)
    ids = sorted(scores)
    exam = exam_probability([scores[p] for p in ids], bundle.aggregation).tolist()
    label_of = {r.patient_id: r.label for r in records}
    fusion, fit_notes = fit_validation_fusion(dict(zip(ids, exam, strict=True)), label_of,
                                              validation, columns, schema=schema, seed=seed)
    return FusionFit(fusion, records, notes + read_notes + validation.notes + fit_notes,
                     list(validation.warnings))


__all__ = ["FusionFit", "fit_image_fusion", "fusion_inputs_note", "validation_records"]
