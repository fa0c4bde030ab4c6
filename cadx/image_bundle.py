"""A trained 2D image model as one `.cadx` file (the 2D track of seeds 002 and 004).

Two methods share the format: "cnn-ensemble" (CNNs whose probabilities are averaged with
weights w_k = validation AUC_k / sum AUC) and "features" (deep features of CNN layers and/or
GLCM + wavelet texture features, classified by an SVM, a random forest or their average). Both
carry an image threshold and an exam (patient) threshold chosen by Youden on validation patients.

The archive is written by `cadx.bundle.write_archive`: manifest.json, weights.pt (the networks'
state dicts) and, for the features method, classifier.pkl (a pickled scikit-learn estimator),
all under one checksum. Pickles run code when loaded: load bundles only from sources you trust,
as with any scikit-learn model file.
"""

from __future__ import annotations

import io
import json
import pickle
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cadx import __version__
from cadx.bundle import PatchModelBundle, load_bundle, read_archive, read_manifest, write_archive
from cadx.decide.ensemble import auc_weights, weighted_ensemble
from cadx.decide.fusion import FusionModel
from cadx.decide.roc import OperatingPoint
from cadx.errors import BundleError, ConfigError
from cadx.features.deep import concat_features, extract_deep_features
from cadx.features.texture import texture_features
from cadx.models.backbones import build_backbone
from cadx.train.image_fit import predict_image_probabilities

IMAGE_BUNDLE_FORMAT = "cadx-image-bundle/1"
METHODS = ("cnn-ensemble", "features")


@dataclass(frozen=True)
class NetworkSpec:
    """One CNN of the bundle: its architecture, width multiplier, validation AUC, and either its
    ensemble weight (cnn-ensemble) or the layers whose outputs are features (features)."""

    arch: str
    width: float
    validation_auc: float | None = None
    weight: float | None = None
    layers: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NetworkSpec:
        return cls(data["arch"], float(data["width"]), data.get("validation_auc"),
                   data.get("weight"), tuple(data.get("layers", ())))


@dataclass
class ImageModelBundle:
    """Everything needed to score 2D images and decide per exam."""

    method: str
    size_px: int
    channels: int
    networks: list[NetworkSpec]
    state_dicts: list[dict[str, torch.Tensor]]
    image_operating_point: OperatingPoint
    exam_operating_point: OperatingPoint
    aggregation: str = "theta"
    texture: bool = False
    classifier: Any = None
    class_names: tuple[str, ...] = ("benign", "malignant")
    organ: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    # Exam score + clinical columns, fitted on the validation patients (cadx fuse); optional.
    fusion: FusionModel | None = None
    name: str = "cadx-image-model"
    cadx_version: str = __version__
    created_utc: str = field(
        default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    kind: str = field(default="image", init=False)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"unknown image model method {self.method!r}; one of {METHODS}")
        if len(self.networks) != len(self.state_dicts):
            raise ConfigError(f"{len(self.networks)} networks but {len(self.state_dicts)} "
                              "state dicts")
        if self.method == "features" and self.classifier is None:
            raise ConfigError("a features model needs a fitted classifier")
        if self.method == "cnn-ensemble" and not self.networks:
            raise ConfigError("a CNN ensemble needs at least one network")

    @property
    def exam_threshold(self) -> float:
        return self.exam_operating_point.threshold

    @property
    def image_threshold(self) -> float:
        return self.image_operating_point.threshold

    def build_networks(self) -> list[nn.Module]:
        """The networks with their stored weights, in eval mode."""
        models = []
        for spec, state in zip(self.networks, self.state_dicts, strict=True):
            model = build_backbone(spec.arch, self.channels, 1, spec.width)
            try:
                model.load_state_dict(state)
            except RuntimeError as exc:  # weights of another network version
                raise BundleError(f"bundle {self.name} ({self.created_utc}): the {spec.arch} "
                                  "weights do not fit this version's network; retrain it "
                                  f"({str(exc).splitlines()[0]})") from None
            models.append(model.eval())
        return models

    def predict(self, images: np.ndarray, models: list[nn.Module] | None = None) -> np.ndarray:
        """Malignancy probability of each (C, size_px, size_px) image of `images`."""
        models = models if models is not None else self.build_networks()
        if self.method == "cnn-ensemble":
            scores = {str(k): predict_image_probabilities(model, images)
                      for k, model in enumerate(models)}
            weights = {str(k): float(spec.weight) for k, spec in enumerate(self.networks)}
            return np.clip(weighted_ensemble(scores, weights), 0.0, 1.0)
        features = image_features(images, self.networks, models, self.texture)
        return self.classifier.predict_proba(features)[:, 1].astype(np.float64)

    def manifest(self) -> dict[str, Any]:
        return {
            "format": IMAGE_BUNDLE_FORMAT, "kind": self.kind, "method": self.method,
            "name": self.name, "cadx_version": self.cadx_version,
            "created_utc": self.created_utc, "size_px": self.size_px, "channels": self.channels,
            "networks": [asdict(spec) for spec in self.networks],
            "aggregation": self.aggregation, "texture": self.texture,
            "class_names": list(self.class_names), "organ": self.organ,
            "image_operating_point": self.image_operating_point.to_dict(),
            "exam_operating_point": self.exam_operating_point.to_dict(),
            "summary": self.summary,
            **({"fusion": self.fusion.to_dict()} if self.fusion is not None else {}),
        }


def ensemble_specs(archs: list[str], widths: list[float],
                   validation_aucs: list[float]) -> list[NetworkSpec]:
    """NetworkSpecs of a CNN ensemble weighted by validation AUC (w_k = AUC_k / sum AUC)."""
    weights = auc_weights({str(k): auc for k, auc in enumerate(validation_aucs)})
    return [NetworkSpec(arch, width, auc, weights[str(k)])
            for k, (arch, width, auc) in enumerate(zip(archs, widths, validation_aucs,
                                                       strict=True))]


def image_features(images: np.ndarray, networks: list[NetworkSpec], models: list[nn.Module],
                   texture: bool) -> np.ndarray:
    """(N, D) features: every network's chosen layers, then (optionally) GLCM + wavelet texture
    features of the channel-mean image, concatenated in that order."""
    parts = [extract_deep_features(model, spec.arch, images, layer)
             for spec, model in zip(networks, models, strict=True) for layer in spec.layers]
    if texture:
        gray = np.asarray(images, dtype=np.float32).mean(axis=1)
        parts.append(np.stack([texture_features(image) for image in gray]))
    if not parts:
        raise ConfigError("no features chosen: give at least one backbone layer or texture")
    return concat_features(parts).astype(np.float64)


def save_image_bundle(bundle: ImageModelBundle, path: str | Path) -> Path:
    """Write the bundle atomically to `path`."""
    weights = io.BytesIO()
    torch.save(bundle.state_dicts, weights)
    parts = {"manifest.json": json.dumps(bundle.manifest(), indent=2).encode(),
             "weights.pt": weights.getvalue()}
    if bundle.classifier is not None:
        parts["classifier.pkl"] = pickle.dumps(bundle.classifier)
    return write_archive(path, parts)


def load_image_bundle(path: str | Path) -> ImageModelBundle:
    """Read and verify an image bundle; BundleError naming the file if anything is wrong."""
    manifest = read_manifest(path)
    if manifest.get("format") != IMAGE_BUNDLE_FORMAT:
        raise BundleError(f"{path}: not a 2D image model (format {manifest.get('format')!r})")
    names = ["manifest.json", "weights.pt"]
    if manifest["method"] == "features":
        names.append("classifier.pkl")
    parts = read_archive(path, names)
    manifest = json.loads(parts["manifest.json"])
    state_dicts = torch.load(io.BytesIO(parts["weights.pt"]), map_location="cpu",
                             weights_only=True)
    classifier = pickle.loads(parts["classifier.pkl"]) if "classifier.pkl" in parts else None
    return ImageModelBundle(
        method=manifest["method"], size_px=int(manifest["size_px"]),
        channels=int(manifest["channels"]),
        networks=[NetworkSpec.from_dict(spec) for spec in manifest["networks"]],
        state_dicts=list(state_dicts),
        image_operating_point=OperatingPoint.from_dict(manifest["image_operating_point"]),
        exam_operating_point=OperatingPoint.from_dict(manifest["exam_operating_point"]),
        aggregation=manifest["aggregation"], texture=bool(manifest["texture"]),
        classifier=classifier, class_names=tuple(manifest["class_names"]),
        organ=manifest.get("organ"), summary=manifest.get("summary", {}),
        fusion=FusionModel.from_dict(manifest["fusion"]) if manifest.get("fusion") else None,
        name=manifest["name"], cadx_version=manifest["cadx_version"],
        created_utc=manifest["created_utc"],
    )


def load_any_bundle(path: str | Path) -> PatchModelBundle | ImageModelBundle:
    """A CT patch bundle or a 2D image bundle, whichever `path` holds."""
    if read_manifest(path).get("format") == IMAGE_BUNDLE_FORMAT:
        return load_image_bundle(path)
    return load_bundle(path)
