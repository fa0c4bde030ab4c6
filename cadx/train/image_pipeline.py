"""The 2D track from a labelled image dataset to a bundle (seeds 002 and 004): patient-level
splits, a CNN ensemble weighted by validation AUC or deep/texture features + SVM / random forest,
image and exam thresholds by Youden on validation patients, and a held-out test evaluation."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.metrics import roc_auc_score

from cadx.config import ImageModelConfig
from cadx.decide.ensemble import weighted_ensemble
from cadx.decide.exam import (
    exam_probability,
    exam_score_description,
    exam_scores,
    exam_threshold_text,
)
from cadx.decide.roc import OperatingPoint, youden_operating_point
from cadx.errors import ConfigError, InputError, SplitError
from cadx.evaluate.levels import LevelResult, evaluate_level
from cadx.features.cache import cached, feature_key
from cadx.features.classifiers import AveragingEnsemble, fit_classifier
from cadx.image_bundle import ImageModelBundle, NetworkSpec, ensemble_specs, image_features
from cadx.io.images import (
    ImageDataset,
    ImageRecord,
    assign_splits,
    find_duplicate_images,
    fold_splits,
    read_images,
    read_lesion_masks,
)
from cadx.io.near_duplicates import (
    DEFAULT_CORRELATION,
    cross_split_near_duplicates,
    group_near_duplicates,
)
from cadx.models.backbones import (
    build_backbone,
    cam_layer,
    feature_layers_of,
    is_pretrained_arch,
    load_init_weights,
)
from cadx.models.pretrained import weights_provenance
from cadx.train.image_fit import (
    ImageTrainingHistory,
    fit_image_model,
    predict_image_probabilities,
)
from cadx.train.splits import assert_disjoint

SPLITS = ("train", "validation", "test")


@dataclass
class SplitImages:
    """A dataset's images read at the model's size, by split (patient level)."""

    records: dict[str, tuple[ImageRecord, ...]]
    images: dict[str, np.ndarray]
    warnings: list[str] = field(default_factory=list)

    def labels(self, split: str) -> np.ndarray:
        return np.array([r.label for r in self.records[split]], dtype=int)

    def patient_ids(self, split: str) -> np.ndarray:
        return np.array([r.patient_id for r in self.records[split]])

    def counts(self) -> dict[str, dict[str, int]]:
        out = {}
        for split in SPLITS:
            labels, patients = self.labels(split), self.patient_ids(split)
            out[split] = {"images": len(labels), "malignant_images": int(labels.sum()),
                          "patients": len(set(patients.tolist())),
                          "malignant_patients": len(set(patients[labels == 1].tolist()))}
        return out


@dataclass
class ImageTrainingOutcome:
    """The bundle, the training histories and the held-out test levels (empty without test)."""

    bundle: ImageModelBundle
    data: SplitImages
    histories: dict[str, ImageTrainingHistory] = field(default_factory=dict)
    test_levels: list[LevelResult] = field(default_factory=list)


def _refuse_conflicting_copies(records: Sequence[ImageRecord], source: Path) -> None:
    """InputError if one file's bytes appear with two different labels."""
    for first, second in find_duplicate_images(records):
        if first.label != second.label:
            raise InputError(f"{source}: {first.path} (label {first.label}) and {second.path} "
                             f"(label {second.label}) are the same file with different labels")


def split_image_dataset(dataset: ImageDataset, config: ImageModelConfig,
                        progress: bool = True) -> SplitImages:
    """Read every image at the model's size; optionally merge near-duplicate images into one
    patient; assign patient-level splits (or keep the CSV's, or a fold's); refuse one file
    with two labels; warn about byte-identical and near-duplicate images across splits."""
    if len(dataset.class_names) != 2:
        raise ConfigError(f"{dataset.source}: the 2D track is binary; found classes "
                          f"{list(dataset.class_names)}")
    _refuse_conflicting_copies(dataset.records, dataset.source)
    all_images = read_images(dataset.records, config.size_px, config.channels, progress)
    records, warnings = list(dataset.records), []
    if config.group_near_duplicates:
        records, merged = group_near_duplicates(records, all_images)
        warnings.append(f"near-duplicate images grouped: {merged} patient(s) merged into "
                        f"others ({len(dataset.patient_ids)} -> "
                        f"{len({r.patient_id for r in records})} patients) before splitting")
    position = {r.path: k for k, r in enumerate(records)}
    records = list(fold_splits(records, config.test_fold, config.validation_fraction,
                               config.seed) if config.test_fold is not None else
                   assign_splits(records, config.validation_fraction, config.test_fraction,
                                 config.seed))
    by_split = {split: tuple(r for r in records if r.split == split) for split in SPLITS}
    assert_disjoint({split: sorted({r.patient_id for r in rs}) for split, rs in by_split.items()})
    for split in ("train", "validation"):
        labels = {r.label for r in by_split[split]}
        if labels != {0, 1}:
            raise SplitError(f"{dataset.source}: the {split} split has "
                             f"{len(by_split[split])} images of classes {sorted(labels)}; "
                             "need both benign and malignant patients there")
    duplicates = find_duplicate_images(records)
    if duplicates:
        first, second = duplicates[0]
        warnings.append(f"{len(duplicates)} pair(s) of byte-identical images in different "
                        f"patients or splits, e.g. {first.path} ({first.patient_id}, "
                        f"{first.split}) = {second.path} ({second.patient_id}, {second.split})")
    ordered = all_images[[position[r.path] for r in records]]
    near = cross_split_near_duplicates(records, ordered)
    if near:
        first, second = near[0]
        warnings.append(f"{len(near)} pair(s) of near-duplicate images (thumbnail correlation "
                        f">= {DEFAULT_CORRELATION}) in different splits, e.g. {first.path} "
                        f"({first.split}) ~ {second.path} ({second.split}); if they are one "
                        "patient's, group them (--group-near-duplicates or patient ids)")
    images = {split: all_images[[position[r.path] for r in rs]]
              for split, rs in by_split.items()}
    return SplitImages(by_split, images, warnings)


def _patient_labels(patient_ids: np.ndarray, labels: np.ndarray) -> dict[str, int]:
    out: dict[str, int] = {}
    for pid, label in zip(patient_ids.tolist(), labels.tolist(), strict=True):
        out[pid] = max(out.get(pid, 0), int(label))
    return out


def operating_points(labels: np.ndarray, probabilities: np.ndarray, patient_ids: np.ndarray,
                     aggregation: str) -> tuple[OperatingPoint, OperatingPoint]:
    """Youden operating points of the images and of the exams (exam score `aggregation`)."""
    image_point = youden_operating_point(labels, probabilities, "validation images")
    scores = exam_scores(patient_ids.tolist(), probabilities, aggregation)
    truth = _patient_labels(patient_ids, labels)
    ids = sorted(scores)
    exam_point = youden_operating_point(np.array([truth[p] for p in ids]),
                                        np.array([scores[p] for p in ids]), "validation exams")
    return image_point, exam_point


def evaluate_images(bundle: ImageModelBundle, labels: np.ndarray, probabilities: np.ndarray,
                    patient_ids: np.ndarray, *,
                    subgroups: Mapping[str, Sequence[object]] | None = None,
                    subgroup_order: Mapping[str, Sequence[str]] | None = None,
                    n_boot: int = 1000, seed: int = 0) -> list[LevelResult]:
    """Image level (patient cluster-bootstrap CIs) and exam level (Wilson/DeLong CIs) at the
    bundle's validation thresholds. Exam scores are reported as 1 - exp(-theta) for theta
    (same order, so the same ROC), to keep every level's scores in [0, 1]. `subgroups` (a
    value per image for each column) give subgroup tables; an exam takes its first image's."""
    note = "Youden on validation patients"
    subgroups = dict(subgroups or {})
    image_level = evaluate_level("images", labels, probabilities, bundle.image_threshold,
                                 unit="images", clusters=patient_ids, threshold_note=note,
                                 subgroups=subgroups, subgroup_order=subgroup_order,
                                 n_boot=n_boot, seed=seed)
    scores = exam_scores(patient_ids.tolist(), probabilities, bundle.aggregation)
    truth = _patient_labels(patient_ids, labels)
    ids = sorted(scores)
    first = {pid: k for k, pid in reversed(list(enumerate(patient_ids.tolist())))}
    exam_values = exam_probability([scores[p] for p in ids], bundle.aggregation)
    exam_level = evaluate_level(
        f"exams ({bundle.aggregation})", [truth[p] for p in ids], exam_values,
        float(exam_probability([bundle.exam_threshold], bundle.aggregation)[0]),
        unit="patients", score_kind="score",
        threshold_note=f"{note}: {exam_threshold_text(bundle.exam_threshold, bundle.aggregation)}",
        score_description=exam_score_description(bundle.aggregation),
        subgroups={c: [values[first[p]] for p in ids] for c, values in subgroups.items()},
        subgroup_order=subgroup_order, n_boot=n_boot, seed=seed)
    return [image_level, exam_level]


def _summary(data: SplitImages, config: ImageModelConfig, dataset: ImageDataset,
             extra: dict[str, object]) -> dict[str, object]:
    return {"dataset": str(dataset.source), "counts": data.counts(),
            "config": asdict(config),
            "split": {split: sorted({r.patient_id for r in data.records[split]})
                      for split in SPLITS},
            "warnings": list(data.warnings), **extra}


def _finish(bundle: ImageModelBundle, data: SplitImages, histories: dict,
            n_boot: int) -> ImageTrainingOutcome:
    outcome = ImageTrainingOutcome(bundle, data, histories)
    if len(data.records["test"]):
        labels, pids = data.labels("test"), data.patient_ids("test")
        if len(set(labels.tolist())) == 2:
            probabilities = bundle.predict(data.images["test"])
            outcome.test_levels = evaluate_images(bundle, labels, probabilities, pids,
                                                  n_boot=n_boot,
                                                  seed=bundle.summary["config"]["seed"])
            bundle.summary["test"] = {level.name: {"auc": level.metrics["auc"].estimate}
                                      for level in outcome.test_levels}
    return outcome


def network_width(arch: str, config: ImageModelConfig) -> float:
    """The width a network of `arch` is built at: the pretrained ones exist at width 1 only."""
    return 1.0 if is_pretrained_arch(arch) else config.width


def _fresh_network(arch: str, config: ImageModelConfig, init_weights: Mapping[str, str | Path],
                   index: int) -> tuple[torch.nn.Module, str | None]:
    """A network to train: ImageNet weights for a pretrained arch (unless `config.pretrained`
    is off or a weights file is given), else a seeded random initialisation, then the file."""
    torch.manual_seed(config.seed + index)
    pretrained = is_pretrained_arch(arch) and config.pretrained and arch not in init_weights
    model = build_backbone(arch, config.channels, 1, network_width(arch, config), pretrained)
    source = None
    if pretrained:
        packages = weights_provenance(arch)
        source = (f"ImageNet weights from {packages['weights_package']} "
                  f"({packages['model_package']})")
    if arch in init_weights:
        report = load_init_weights(model, init_weights[arch])
        source = f"{init_weights[arch]} ({len(report.loaded)} tensors loaded)"
    if is_pretrained_arch(arch) and (pretrained or arch in init_weights):
        model.freeze_early_blocks(min(config.frozen_blocks, len(model.blocks)))
        source += f"; stem and first {model.frozen_blocks} blocks frozen"
    return model, source


def _training_lesion_masks(data: SplitImages, config: ImageModelConfig) -> np.ndarray:
    """The training images' lesion masks for lesion-mask guidance (ConfigError without any)."""
    records = data.records["train"]
    if not any(r.mask for r in records):
        raise ConfigError(f"--lesion-mask-weight needs lesion masks: none of the {len(records)} "
                          "training images has one (give the manifest a `mask` column)")
    return read_lesion_masks(records, config.size_px)


def train_image_ensemble(dataset: ImageDataset, archs: Sequence[str], config: ImageModelConfig,
                         *, init_weights: Mapping[str, str | Path] | None = None,
                         progress: bool = True, n_boot: int = 1000) -> ImageTrainingOutcome:
    """Train one CNN per architecture, weight them by validation AUC, choose thresholds on
    validation, evaluate on the held-out test patients. An architecture listed k times gives k
    members, the j-th (from 0) trained with seed `config.train.seed + j` (its own batch order
    and augmentation draws): a seed ensemble."""
    if not archs:
        raise ConfigError("give at least one architecture (--arch)")
    init_weights = dict(init_weights or {})
    unknown = sorted(set(init_weights) - set(archs))
    if unknown:
        raise ConfigError(f"initial weights given for {unknown}, which are not trained here")
    data = split_image_dataset(dataset, config, progress)
    y_train, y_val = data.labels("train"), data.labels("validation")
    masks = _training_lesion_masks(data, config) if config.train.lesion_mask_weight else None
    histories, states, val_aucs, sources = {}, [], [], {}
    val_probabilities: dict[str, np.ndarray] = {}
    for index, arch in enumerate(archs):
        model, source = _fresh_network(arch, config, init_weights, index)
        sources[arch] = source or "from scratch (random initialisation)"
        repeat = list(archs[:index]).count(arch)
        train_config = replace(config.train, seed=config.train.seed + repeat)
        model, history = fit_image_model(model, data.images["train"], y_train,
                                         data.images["validation"], y_val,
                                         train_config, lesion_masks=masks,
                                         lesion_layer=cam_layer(model, arch),
                                         progress=progress)
        histories[f"{index}:{arch}"] = history
        states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        val_aucs.append(history.best_validation_auc)
        val_probabilities[str(index)] = predict_image_probabilities(model,
                                                                    data.images["validation"])
    specs = ensemble_specs(list(archs), [network_width(arch, config) for arch in archs],
                           val_aucs)
    val_probabilities = np.clip(weighted_ensemble(
        val_probabilities, {str(k): spec.weight for k, spec in enumerate(specs)}), 0.0, 1.0)
    image_point, exam_point = operating_points(y_val, val_probabilities,
                                               data.patient_ids("validation"), config.aggregation)
    bundle = ImageModelBundle(
        method="cnn-ensemble", size_px=config.size_px, channels=config.channels,
        networks=specs, state_dicts=states, image_operating_point=image_point,
        exam_operating_point=exam_point, aggregation=config.aggregation,
        class_names=dataset.class_names)
    bundle.summary = _summary(data, config, dataset, {
        "initial_weights": sources,
        "histories": {name: asdict(h) for name, h in histories.items()},
        "validation_auc_ensemble": float(roc_auc_score(y_val, val_probabilities))})
    return _finish(bundle, data, histories, n_boot)


def _refuse_backbone_leak(source_bundle: ImageModelBundle, data: SplitImages) -> None:
    """ConfigError if patients evaluated here (validation or test) trained the backbones."""
    trained = set(source_bundle.summary.get("split", {}).get("train", []))
    for split in ("test", "validation"):
        leaked = sorted(trained & {r.patient_id for r in data.records[split]})
        if leaked:
            raise ConfigError(
                f"--backbones-from {source_bundle.name} ({source_bundle.created_utc}): "
                f"{len(leaked)} of this run's {split} patients trained those backbones "
                f"(e.g. {', '.join(leaked[:3])}); use the same split settings (--seed, "
                "fractions, --test-fold) as that training run")


def train_feature_model(dataset: ImageDataset, backbones: Sequence[str],
                        layers: Sequence[str] | None, classifiers: Sequence[str],
                        texture: bool, config: ImageModelConfig, *,
                        source_bundle: ImageModelBundle | None = None,
                        init_weights: Mapping[str, str | Path] | None = None,
                        feature_cache: str | Path | None = None,
                        candidate_sizes: Sequence[int] = (),
                        progress: bool = True, n_boot: int = 1000) -> ImageTrainingOutcome:
    """Deep features of `layers` of each backbone (None: each backbone's `default_feature_layers`;
    concatenated across backbones) and/or
    texture features, classified by each of `classifiers` (averaged when several). With
    `feature_cache` (a folder) the feature matrices are stored and reused by later runs.

    The backbones come from `source_bundle` (CNNs trained by `train_image_ensemble`), from
    `init_weights` files, or are randomly initialised (seeded) otherwise. With several
    `candidate_sizes` the images are read at each, features and classifiers fitted at each, and
    the size with the highest validation image AUC is kept (ties: the first); the split is the
    same for all. Without, `config.size_px`.
    """
    if not backbones and not texture:
        raise ConfigError("choose backbones (--backbones) and/or --texture features")
    if not classifiers:
        raise ConfigError("choose at least one classifier (--classifier svm,rf)")
    init_weights = dict(init_weights or {})
    sizes = list(dict.fromkeys(candidate_sizes)) or [config.size_px]
    if source_bundle is not None:
        if set(candidate_sizes) - {source_bundle.size_px}:
            raise ConfigError("--backbones-from: the images are read at the source bundle's "
                              f"size ({source_bundle.size_px} px); give no other --size")
        sizes = [source_bundle.size_px]
        config = replace(config, channels=source_bundle.channels)
    config = replace(config, size_px=sizes[0])
    data = split_image_dataset(dataset, config, progress)
    if source_bundle is not None:
        _refuse_backbone_leak(source_bundle, data)
    specs, states, models, sources = [], [], [], {}
    for index, arch in enumerate(backbones):
        if source_bundle is not None:
            found = [k for k, spec in enumerate(source_bundle.networks) if spec.arch == arch]
            if not found:
                have = [spec.arch for spec in source_bundle.networks]
                raise ConfigError(f"backbone {arch} is not in the source bundle (it has {have})")
            spec = source_bundle.networks[found[0]]
            width, state = spec.width, source_bundle.state_dicts[found[0]]
            sources[arch] = f"trained CNN of {source_bundle.name} ({source_bundle.created_utc})"
            model = build_backbone(arch, config.channels, 1, width)
            model.load_state_dict(state)
        else:
            model, source = _fresh_network(arch, config, init_weights, index)
            width = network_width(arch, config)
            sources[arch] = source or "random initialisation (no trained weights)"
        specs.append(NetworkSpec(arch, width, layers=feature_layers_of(arch, layers)))
        states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        models.append(model.eval())
    validation_auc, best = {}, None
    for size in sizes:
        sized = data if size == sizes[0] else _read_at_size(data, size, config.channels,
                                                             progress)
        fit = _fit_feature_classifier(sized, replace(config, size_px=size), specs, states,
                                      models, classifiers, texture, feature_cache)
        validation_auc[size] = float(roc_auc_score(sized.labels("validation"), fit[2]))
        if best is None or validation_auc[size] > validation_auc[best[0]]:
            best = (size, sized, fit)
    config = replace(config, size_px=best[0])
    data, (classifier, features, val_probabilities, reused) = best[1], best[2]
    y_val = data.labels("validation")
    image_point, exam_point = operating_points(y_val, val_probabilities,
                                               data.patient_ids("validation"), config.aggregation)
    bundle = ImageModelBundle(
        method="features", size_px=config.size_px, channels=config.channels, networks=specs,
        state_dicts=states, image_operating_point=image_point, exam_operating_point=exam_point,
        aggregation=config.aggregation, texture=texture, classifier=classifier,
        class_names=dataset.class_names)
    bundle.summary = _summary(data, config, dataset, {
        "backbones": sources, "layers": {spec.arch: list(spec.layers) for spec in specs},
        "texture": texture,
        "classifiers": list(classifiers), "n_features": int(features["train"].shape[1]),
        "features_from_cache": reused,
        "size_validation_auc": {str(size): auc for size, auc in validation_auc.items()}})
    return _finish(bundle, data, {}, n_boot)


def _read_at_size(data: SplitImages, size_px: int, channels: int,
                  progress: bool) -> SplitImages:
    """The same split with its images read again at `size_px`."""
    return SplitImages(data.records, {split: read_images(records, size_px, channels, progress)
                                      for split, records in data.records.items()},
                       list(data.warnings))


def _fit_feature_classifier(data: SplitImages, config: ImageModelConfig,
                            specs: Sequence[NetworkSpec], states: Sequence[dict],
                            models: Sequence[torch.nn.Module], classifiers: Sequence[str],
                            texture: bool, feature_cache: str | Path | None
                            ) -> tuple[BaseEstimator | AveragingEnsemble,
                                       dict[str, np.ndarray], np.ndarray, list[str]]:
    """Features of every split at `config.size_px` (cached), the fitted classifier (averaged
    over `classifiers`), its validation probabilities, and the splits read from the cache."""
    features, reused = {}, []
    for split in SPLITS:
        if not len(data.records[split]):
            continue
        key = feature_key([r.sha256 for r in data.records[split]], config.size_px,
                          config.channels, [(s.arch, s.width, s.layers) for s in specs], states,
                          texture)
        features[split], hit = cached(feature_cache, key, lambda split=split: image_features(
            data.images[split], specs, models, texture))
        reused += [split] if hit else []
    fitted = [fit_classifier(kind, features["train"], data.labels("train"),
                             data.patient_ids("train"), config.seed) for kind in classifiers]
    classifier = fitted[0] if len(fitted) == 1 else AveragingEnsemble(fitted)
    return classifier, features, classifier.predict_proba(features["validation"])[:, 1], reused
