"""Train the triage models: the router (softmax CNN over image categories, from a class-folder
dataset or CSV) and the QC model (multi-label sigmoid CNN over flags, from a QC manifest), with
patient-level splits, a confidence floor / per-flag Youden thresholds, and a held-out test
evaluation stored in the bundle."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from cadx.config import ImageModelConfig
from cadx.decide.roc import youden_operating_point
from cadx.errors import ConfigError, SplitError
from cadx.io.images import ImageDataset, ImageRecord, assign_splits, read_images
from cadx.models.backbones import BACKBONES, build_backbone
from cadx.train.image_fit import (
    ImageTrainingHistory,
    fit_image_model,
    predict_image_probabilities,
)
from cadx.train.splits import assert_disjoint
from cadx.triage.bundle import TriageBundle
from cadx.triage.evaluate import flag_metrics, routing_metrics
from cadx.triage.qc import QCDataset
from cadx.triage.router import routings

SPLITS = ("train", "validation", "test")
DEFAULT_ARCH = "resnet18"
DEFAULT_CONFIDENCE_FLOOR = 0.6


@dataclass
class TriageTrainingOutcome:
    """The bundle, its training history and the held-out test metrics (empty without test)."""

    bundle: TriageBundle
    history: ImageTrainingHistory
    test: dict[str, object] = field(default_factory=dict)


def _check_arch(arch: str) -> None:
    # Checked before any image is read, not after minutes of loading.
    if arch not in BACKBONES:
        raise ConfigError(f"unknown network {arch!r}; one of {', '.join(BACKBONES)}")


def _split(records: Sequence[ImageRecord], config: ImageModelConfig
           ) -> dict[str, np.ndarray]:
    """Indices of the records in each split, at patient level."""
    assigned = assign_splits(records, config.validation_fraction, config.test_fraction,
                             config.seed)
    parts = {s: np.array([i for i, r in enumerate(assigned) if r.split == s], dtype=int)
             for s in SPLITS}
    assert_disjoint({s: sorted({assigned[i].patient_id for i in idx})
                     for s, idx in parts.items()})
    return parts


def _train_network(arch: str, n_outputs: int, config: ImageModelConfig, images: dict,
                   labels: dict, task: str, progress: bool
                   ) -> tuple[torch.nn.Module, ImageTrainingHistory]:
    torch.manual_seed(config.seed)
    model = build_backbone(arch, config.channels, n_outputs, config.width)
    # Stopping on the validation log loss: a router's AUC reaches 1 while its probabilities
    # are still too unsure to clear the confidence floor.
    return fit_image_model(model, images["train"], labels["train"], images["validation"],
                           labels["validation"], config.train, task=task, monitor="loss",
                           progress=progress)


def _summary(source: object, records: Sequence[ImageRecord], parts: dict[str, np.ndarray],
             config: ImageModelConfig, history: ImageTrainingHistory) -> dict[str, object]:
    return {"dataset": str(source), "config": asdict(config), "history": asdict(history),
            "counts": {s: {"images": len(idx),
                           "patients": len({records[i].patient_id for i in idx})}
                       for s, idx in parts.items()},
            "split": {s: sorted({records[i].patient_id for i in idx})
                      for s, idx in parts.items()}}


def train_router(dataset: ImageDataset, config: ImageModelConfig, *, arch: str = DEFAULT_ARCH,
                 confidence_floor: float = DEFAULT_CONFIDENCE_FLOOR,
                 progress: bool = True) -> TriageTrainingOutcome:
    """A softmax router over `dataset`'s classes (the categories); SplitError if a category
    has no patient in the training or validation split."""
    _check_arch(arch)
    categories = dataset.class_names
    parts = _split(dataset.records, config)
    labels_all = np.array([r.label for r in dataset.records], dtype=int)
    for split in ("train", "validation"):
        missing = sorted(set(range(len(categories))) - set(labels_all[parts[split]].tolist()))
        if missing:
            raise SplitError(f"{dataset.source}: the {split} split has no image of "
                             f"{', '.join(categories[k] for k in missing)}; add patients of "
                             "every category")
    images = {s: read_images([dataset.records[i] for i in idx], config.size_px,
                             config.channels, progress) for s, idx in parts.items()}
    labels = {s: labels_all[idx] for s, idx in parts.items()}
    model, history = _train_network(arch, len(categories), config, images, labels,
                                    "multiclass", progress)
    bundle = TriageBundle(
        "router", categories, arch, config.width, config.size_px, config.channels,
        {k: v.detach().clone() for k, v in model.state_dict().items()},
        confidence_floor=confidence_floor,
        summary=_summary(dataset.source, dataset.records, parts, config, history))
    outcome = TriageTrainingOutcome(bundle, history)
    if len(parts["test"]):
        routed = routings(bundle.predict(images["test"], model), categories, confidence_floor)
        outcome.test = routing_metrics([categories[k] for k in labels["test"]], routed,
                                       categories)
        bundle.summary["test"] = outcome.test
    return outcome


def train_qc(data: QCDataset, config: ImageModelConfig, *, arch: str = DEFAULT_ARCH,
             progress: bool = True) -> TriageTrainingOutcome:
    """A multi-label QC model over `data`'s flags, each flag's threshold at the maximum Youden
    index on the validation images."""
    _check_arch(arch)
    parts = _split(data.records, config)
    images = {s: read_images([data.records[i] for i in idx], config.size_px, config.channels,
                             progress) for s, idx in parts.items()}
    labels = {s: data.flags[idx] for s, idx in parts.items()}
    model, history = _train_network(arch, len(data.flag_names), config, images, labels,
                                    "multilabel", progress)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    val_probabilities = predict_image_probabilities(model, images["validation"],
                                                    task="multilabel")
    points = {flag: youden_operating_point(labels["validation"][:, k], val_probabilities[:, k],
                                           f"validation {flag}")
              for k, flag in enumerate(data.flag_names)}
    bundle = TriageBundle("qc", data.flag_names, arch, config.width, config.size_px,
                          config.channels, state, flag_points=points,
                          summary=_summary(data.source, data.records, parts, config, history))
    outcome = TriageTrainingOutcome(bundle, history)
    if len(parts["test"]):
        probabilities = bundle.predict(images["test"], model)
        outcome.test = flag_metrics(labels["test"], probabilities,
                                    [points[f].threshold for f in data.flag_names],
                                    data.flag_names)
        bundle.summary["test"] = outcome.test
    return outcome
