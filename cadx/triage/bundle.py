"""Triage models as `.cadx` files: the router (softmax over image categories, with a confidence
floor) and the quality-control model (one sigmoid per flag, with a threshold per flag chosen by
Youden on validation patients).

Both are one CNN from `cadx.models.backbones`; the archive (manifest.json, weights.pt, one
checksum) is written by `cadx.bundle.write_archive`. Weights load with `weights_only=True`.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cadx import __version__
from cadx.bundle import read_archive, read_manifest, write_archive
from cadx.decide.roc import OperatingPoint
from cadx.errors import BundleError, ConfigError
from cadx.models.backbones import build_backbone
from cadx.train.image_fit import predict_image_probabilities

TRIAGE_BUNDLE_FORMAT = "cadx-triage-bundle/1"
TASK_OF_KIND = {"router": "multiclass", "qc": "multilabel"}


@dataclass
class TriageBundle:
    """A router (`kind` "router": `labels` are categories) or a QC model (`kind` "qc":
    `labels` are flags, each with its validation operating point)."""

    kind: str
    labels: tuple[str, ...]
    arch: str
    width: float
    size_px: int
    channels: int
    state_dict: dict[str, torch.Tensor]
    confidence_floor: float = 0.0
    flag_points: dict[str, OperatingPoint] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    name: str = ""
    cadx_version: str = __version__
    created_utc: str = field(
        default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    def __post_init__(self) -> None:
        if self.kind not in TASK_OF_KIND:
            raise ConfigError(f"unknown triage model kind {self.kind!r}; one of "
                              f"{', '.join(TASK_OF_KIND)}")
        if len(self.labels) < 2 or len(set(self.labels)) != len(self.labels):
            raise ConfigError(f"a {self.kind} model needs at least two distinct labels, got "
                              f"{list(self.labels)}")
        if not 0.0 <= self.confidence_floor < 1.0:
            raise ConfigError(f"confidence floor must be in [0, 1), got {self.confidence_floor}")
        if self.kind == "qc" and set(self.flag_points) != set(self.labels):
            raise ConfigError(f"a QC model needs one threshold per flag {list(self.labels)}, "
                              f"got {sorted(self.flag_points)}")
        self.name = self.name or f"cadx-{self.kind}"

    @property
    def task(self) -> str:
        return TASK_OF_KIND[self.kind]

    def threshold(self, flag: str) -> float:
        """The QC threshold of `flag`: a probability above it raises the flag."""
        if flag not in self.flag_points:
            raise ConfigError(f"QC model {self.name} has no flag {flag!r}; it has "
                              f"{', '.join(self.labels)}")
        return self.flag_points[flag].threshold

    def build_network(self) -> nn.Module:
        """The network with its stored weights, in eval mode."""
        model = build_backbone(self.arch, self.channels, len(self.labels), self.width)
        model.load_state_dict(self.state_dict)
        return model.eval()

    def predict(self, images: np.ndarray, model: nn.Module | None = None) -> np.ndarray:
        """(N, K) probabilities of (N, C, size_px, size_px) images: softmax over categories
        (router) or one sigmoid per flag (QC)."""
        model = model if model is not None else self.build_network()
        probabilities = predict_image_probabilities(model, images, task=self.task)
        return probabilities.reshape(len(images), len(self.labels))

    def model_info(self) -> dict[str, str]:
        """What a result cites as the model that produced it."""
        return {"name": self.name, "kind": self.kind, "arch": self.arch,
                "cadx_version": self.cadx_version, "created_utc": self.created_utc}

    def manifest(self) -> dict[str, Any]:
        return {
            "format": TRIAGE_BUNDLE_FORMAT, "kind": self.kind, "name": self.name,
            "cadx_version": self.cadx_version, "created_utc": self.created_utc,
            "labels": list(self.labels), "arch": self.arch, "width": self.width,
            "size_px": self.size_px, "channels": self.channels,
            "confidence_floor": self.confidence_floor,
            "flag_points": {flag: point.to_dict() for flag, point in self.flag_points.items()},
            "summary": self.summary,
        }


def save_triage_bundle(bundle: TriageBundle, path: str | Path) -> Path:
    """Write the bundle atomically to `path`."""
    weights = io.BytesIO()
    torch.save(bundle.state_dict, weights)
    return write_archive(path, {"manifest.json": json.dumps(bundle.manifest(), indent=2).encode(),
                                "weights.pt": weights.getvalue()})


def load_triage_bundle(path: str | Path, kind: str | None = None) -> TriageBundle:
    """Read and verify a router or QC bundle (of `kind` if given); BundleError naming the file
    if it is missing, corrupt, of another format or of the other kind."""
    manifest = read_manifest(path)
    if manifest.get("format") != TRIAGE_BUNDLE_FORMAT:
        raise BundleError(f"{path}: not a triage model (format {manifest.get('format')!r}); "
                          "train one with cadx train-router or cadx train-qc")
    if kind is not None and manifest.get("kind") != kind:
        raise BundleError(f"{path}: a {manifest.get('kind')} model, not a {kind} model")
    parts = read_archive(path, ["manifest.json", "weights.pt"])
    manifest = json.loads(parts["manifest.json"])
    state_dict = torch.load(io.BytesIO(parts["weights.pt"]), map_location="cpu",
                            weights_only=True)
    try:
        return TriageBundle(
            kind=manifest["kind"], labels=tuple(manifest["labels"]), arch=manifest["arch"],
            width=float(manifest["width"]), size_px=int(manifest["size_px"]),
            channels=int(manifest["channels"]), state_dict=state_dict,
            confidence_floor=float(manifest["confidence_floor"]),
            flag_points={flag: OperatingPoint.from_dict(point)
                         for flag, point in manifest["flag_points"].items()},
            summary=manifest.get("summary", {}), name=manifest["name"],
            cadx_version=manifest["cadx_version"], created_utc=manifest["created_utc"])
    except (KeyError, TypeError, ValueError, ConfigError) as exc:
        raise BundleError(f"{path}: triage bundle manifest is invalid ({exc})") from None
