"""Evaluate a trained 2D image model on a labelled image dataset with its stored thresholds
unchanged: an external validation (seed 002 validates on two external sets). Image and exam
levels with CIs, subgroup tables by any manifest column, and, where the manifest gives lesion
masks, how well the Grad-CAM maps point at the lesion."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from cadx.decide.exam import exam_probability, exam_scores
from cadx.diagnose.cam import grad_cam
from cadx.errors import ConfigError, InputError
from cadx.evaluate.cam_quality import CamLocalisation, cam_localisation
from cadx.evaluate.fusion import fused_level
from cadx.evaluate.levels import LevelResult
from cadx.evaluate.subgroups import clinical_subgroups
from cadx.image_bundle import ImageModelBundle
from cadx.io.clinical import (
    ClinicalSchema,
    ClinicalValidation,
    image_rows,
    schema_from_columns,
    split_header_unit,
    validate_clinical,
    with_columns,
)
from cadx.io.images import ImageDataset, ImageRecord, read_images, read_lesion_masks
from cadx.train.image_pipeline import evaluate_images

CAM_BATCH = 16


@dataclass
class ImageEvaluation:
    """The levels, the CAM localisation per class (when masks were given) and the notes."""

    levels: list[LevelResult]
    cam: dict[str, CamLocalisation] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    comparisons: list[dict[str, object]] = field(default_factory=list)  # fusion vs image only
    clinical: ClinicalValidation | None = None


def select_split(dataset: ImageDataset, split: str | None,
                 fold: str | None = None) -> tuple[ImageRecord, ...]:
    """All records, or those of one explicit `split` and/or `fold` of the manifest."""
    chosen = tuple(r for r in dataset.records if (split is None or r.split == split)
                   and (fold is None or r.fold == fold))
    if not chosen:
        raise InputError(f"{dataset.source}: no image has "
                         + " and ".join(f"{name} {value!r}" for name, value in
                                        (("split", split), ("fold", fold)) if value))
    return chosen


def _check_labels(dataset: ImageDataset, bundle: ImageModelBundle) -> None:
    if len(dataset.class_names) != len(bundle.class_names):
        raise InputError(f"{dataset.source}: {len(dataset.class_names)} classes "
                         f"({', '.join(dataset.class_names)}) but the model knows "
                         f"{len(bundle.class_names)} ({', '.join(bundle.class_names)}); "
                         "relabel to 0 = benign, 1 = malignant")


def _overlap_warning(records: Sequence[ImageRecord], bundle: ImageModelBundle) -> list[str]:
    used = {pid for split in ("train", "validation")
            for pid in bundle.summary.get("split", {}).get(split, [])}
    shared = sorted({r.patient_id for r in records} & used)
    if not shared:
        return []
    return [f"{len(shared)} patient id(s) of this dataset are the same ids as patients used to "
            f"train or tune this model (e.g. {', '.join(shared[:3])}); if they are the same "
            "people, these figures are not an independent validation"]


def cam_quality(bundle: ImageModelBundle, records: Sequence[ImageRecord], images: np.ndarray,
                labels: np.ndarray, method: str = "gradcam", flip_average: bool = False,
                input_px: int | None = None, fuse_layer: str | None = None,
                ) -> dict[str, CamLocalisation]:
    """Grad-CAM localisation against the records' masks, per class (malignant, benign);
    `method`, `flip_average`, `input_px` and `fuse_layer` as in
    `cadx.diagnose.cam.grad_cam`."""
    models = bundle.build_networks()
    archs = [spec.arch for spec in bundle.networks]
    weights = [spec.weight for spec in bundle.networks]
    out = {}
    for label, name in ((1, "malignant"), (0, "benign")):
        index = np.flatnonzero(labels == label)
        index = index[[records[i].mask is not None for i in index]]
        if not len(index):
            continue
        cams = np.concatenate([grad_cam(models, archs, weights, images[index[k:k + CAM_BATCH]],
                                        method, flip_average, input_px, fuse_layer)
                               for k in range(0, len(index), CAM_BATCH)])
        masks = read_lesion_masks([records[i] for i in index], bundle.size_px) > 0.5
        keep = masks.any(axis=(1, 2))
        if keep.any():
            out[name] = cam_localisation(cams[keep], masks[keep])
    return out


def clinical_values(records: Sequence[ImageRecord], source: str,
                    schema: ClinicalSchema | None, columns: Sequence[str],
                    numeric: Sequence[str] = (), out_of_range: str = "error",
                    ) -> ClinicalValidation:
    """Validate the clinical columns of `records` (InputError listing the problems)."""
    validation = validate_clinical(image_rows(records), source, schema, columns=columns,
                                   numeric=numeric, out_of_range=out_of_range)
    validation.raise_errors()
    return validation


def fusion_level(bundle: ImageModelBundle, records: Sequence[ImageRecord],
                 probabilities: np.ndarray, patient_ids: np.ndarray,
                 validation: ClinicalValidation, n_boot: int = 1000, seed: int = 0,
                 ) -> tuple[LevelResult | None, dict[str, object] | None, list[str]]:
    """The fused exam level of the bundle's fusion model, its DeLong comparison with the
    image-only exam score on the same patients, and notes (patients not fused and why); see
    `cadx.evaluate.fusion.fused_level`."""
    fusion = bundle.fusion
    scores = exam_scores(patient_ids.tolist(), probabilities, bundle.aggregation)
    ids = sorted(scores)
    exam_values = exam_probability([scores[p] for p in ids], bundle.aggregation)
    truth: dict[str, int] = {}
    for pid, record in zip(patient_ids.tolist(), records, strict=True):
        truth[pid] = max(truth.get(pid, 0), record.label)
    return fused_level(fusion, [truth[p] for p in ids], exam_values,
                       [validation.patients.get(p, {}) for p in ids],
                       name=f"exams + {', '.join(fusion.columns)} (fusion)",
                       image_name=f"exams ({bundle.aggregation})", n_boot=n_boot, seed=seed)


def evaluate_image_model(bundle: ImageModelBundle, dataset: ImageDataset, *,
                         split: str | None = None, fold: str | None = None,
                         subgroup_columns: Sequence[str] = (),
                         subgroup_bins: Mapping[str, Sequence[float]] | None = None,
                         schema: ClinicalSchema | None = None, out_of_range: str = "error",
                         each_image_a_patient: bool = False, with_cam: bool = True,
                         n_boot: int = 1000, seed: int = 0,
                         progress: bool = True) -> ImageEvaluation:
    """Score every image (or those of `split` / `fold`) with the bundle and evaluate at its stored
    image and exam thresholds. `subgroup_columns` are manifest columns (e.g. device) tabulated
    as they are, `subgroup_bins` numeric columns tabulated in bins (column -> edges); `schema`
    checks the clinical columns (see `cadx.io.clinical`). With masks in the manifest and a CNN
    model, Grad-CAM localisation is measured too; with a fusion model in the bundle, the fused
    exam score is a level of its own, compared with the image-only one by DeLong's test."""
    _check_labels(dataset, bundle)
    records = select_split(dataset, split, fold)
    labels = np.array([r.label for r in records], dtype=int)
    if len(set(labels.tolist())) < 2:
        raise InputError(f"{dataset.source}: every evaluated image is of class "
                         f"{bundle.class_names[labels[0]]}; an AUC needs both classes")
    notes = []
    if each_image_a_patient:
        patient_ids = np.array([str(r.path) for r in records])
        notes.append("no patient ids used: each image is its own patient (exam level = image "
                     "level)")
    else:
        patient_ids = np.array([r.patient_id for r in records])
    subgroup_bins = dict(subgroup_bins or {})
    available = {split_header_unit(name)[0].lower() for r in records for name, _ in r.attributes}
    unknown = [c for c in dict.fromkeys([*subgroup_columns, *subgroup_bins])
               if c not in available]
    if unknown:
        raise ConfigError(f"{dataset.source}: no column {', '.join(unknown)} for subgroups "
                          f"(columns: {', '.join(sorted(available)) or 'none'})")
    fusion_columns = list(bundle.fusion.columns) if bundle.fusion is not None else []
    validation = None
    if fusion_columns:  # the fusion's columns are read as they were when it was fitted
        fusion = bundle.fusion
        schema = with_columns(schema, schema_from_columns(
            {c: fusion.column_specs.get(c, {"kind": fusion.kinds[c]}) for c in fusion.columns},
            source=f"the fusion model of {bundle.name}"))
    if subgroup_columns or subgroup_bins or schema is not None:
        validation = clinical_values(records, str(dataset.source), schema,
                                     [*subgroup_columns, *fusion_columns],
                                     numeric=list(subgroup_bins), out_of_range=out_of_range)
        subgroups, order = clinical_subgroups(
            [*subgroup_columns], subgroup_bins,
            {c: validation.column_values(c) for c in validation.columns},
            validation.units, validation.kinds)
    else:
        subgroups, order = {}, {}
    images = read_images(records, bundle.size_px, bundle.channels, progress)
    probabilities = bundle.predict(images)
    levels = evaluate_images(bundle, labels, probabilities, patient_ids, subgroups=subgroups,
                             subgroup_order=order, n_boot=n_boot, seed=seed)
    result = ImageEvaluation(levels, notes=notes, warnings=_overlap_warning(records, bundle),
                             clinical=validation)
    if validation is not None:
        result.warnings += validation.warnings
        result.notes += validation.notes
    if bundle.fusion is not None and not each_image_a_patient:
        level, comparison, fusion_notes = fusion_level(bundle, records, probabilities,
                                                       patient_ids, validation, n_boot, seed)
        result.notes += fusion_notes
        if level is not None:
            result.levels.append(level)
            result.comparisons.append(comparison)
    if with_cam and any(r.mask is not None for r in records):
        if bundle.method == "cnn-ensemble":
            result.cam = cam_quality(bundle, records, images, labels)
        else:
            result.notes.append("no CAM check: a features model (SVM/random forest) has no "
                                "spatial map")
    return result
