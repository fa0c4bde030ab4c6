"""Evaluate a trained 2D image model on a labelled image dataset with its stored thresholds
unchanged: an external validation (seed 002 validates on two external sets). Image and exam
levels with CIs, subgroup tables by any manifest column, and, where the manifest gives lesion
masks, how well the Grad-CAM maps point at the lesion."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from cadx.diagnose.cam import grad_cam
from cadx.errors import ConfigError, InputError
from cadx.evaluate.cam_quality import CamLocalisation, cam_localisation
from cadx.evaluate.levels import LevelResult
from cadx.image_bundle import ImageModelBundle
from cadx.io.images import ImageDataset, ImageRecord, read_image, read_images
from cadx.train.image_pipeline import evaluate_images

CAM_BATCH = 16


@dataclass
class ImageEvaluation:
    """The levels, the CAM localisation per class (when masks were given) and the notes."""

    levels: list[LevelResult]
    cam: dict[str, CamLocalisation] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


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


def _masks(records: Sequence[ImageRecord], size_px: int) -> np.ndarray:
    return np.stack([read_image(r.mask, size_px, 1)[0] > 0.5 for r in records])


def cam_quality(bundle: ImageModelBundle, records: Sequence[ImageRecord], images: np.ndarray,
                labels: np.ndarray) -> dict[str, CamLocalisation]:
    """Grad-CAM localisation against the records' masks, per class (malignant, benign)."""
    models = bundle.build_networks()
    archs = [spec.arch for spec in bundle.networks]
    weights = [spec.weight for spec in bundle.networks]
    out = {}
    for label, name in ((1, "malignant"), (0, "benign")):
        index = np.flatnonzero(labels == label)
        index = index[[records[i].mask is not None for i in index]]
        if not len(index):
            continue
        cams = np.concatenate([grad_cam(models, archs, weights, images[index[k:k + CAM_BATCH]])
                               for k in range(0, len(index), CAM_BATCH)])
        masks = _masks([records[i] for i in index], bundle.size_px)
        keep = masks.any(axis=(1, 2))
        if keep.any():
            out[name] = cam_localisation(cams[keep], masks[keep])
    return out


def evaluate_image_model(bundle: ImageModelBundle, dataset: ImageDataset, *,
                         split: str | None = None, fold: str | None = None,
                         subgroup_columns: Sequence[str] = (),
                         each_image_a_patient: bool = False, with_cam: bool = True,
                         n_boot: int = 1000, seed: int = 0,
                         progress: bool = True) -> ImageEvaluation:
    """Score every image (or those of `split` / `fold`) with the bundle and evaluate at its stored
    image and exam thresholds. `subgroup_columns` are manifest columns (e.g. device); with
    masks in the manifest and a CNN model, Grad-CAM localisation is measured too."""
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
    available = {name for r in records for name, _ in r.attributes}
    unknown = [c for c in subgroup_columns if c not in available]
    if unknown:
        raise ConfigError(f"{dataset.source}: no column {', '.join(unknown)} for subgroups "
                          f"(columns: {', '.join(sorted(available)) or 'none'})")
    subgroups = {c: [r.attribute(c) for r in records] for c in subgroup_columns}
    images = read_images(records, bundle.size_px, bundle.channels, progress)
    probabilities = bundle.predict(images)
    levels = evaluate_images(bundle, labels, probabilities, patient_ids, subgroups=subgroups,
                             n_boot=n_boot, seed=seed)
    result = ImageEvaluation(levels, notes=notes, warnings=_overlap_warning(records, bundle))
    if with_cam and any(r.mask is not None for r in records):
        if bundle.method == "cnn-ensemble":
            result.cam = cam_quality(bundle, records, images, labels)
        else:
            result.notes.append("no CAM check: a features model (SVM/random forest) has no "
                                "spatial map")
    return result
