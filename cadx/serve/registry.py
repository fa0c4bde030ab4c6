"""Load every model bundle of a folder once, with its networks built, for the service."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from cadx.bundle import PatchModelBundle
from cadx.errors import ConfigError
from cadx.image_bundle import ImageModelBundle, load_any_bundle

BUNDLE_SUFFIX = ".cadx"
CT_PATCH, IMAGE = "ct-patch", "image"


@dataclass
class ServedModel:
    """One loaded bundle: its id (the file name without `.cadx`) and its ready networks."""

    model_id: str
    bundle: PatchModelBundle | ImageModelBundle
    networks: list[nn.Module]
    segmenter_network: nn.Module | None = None

    @property
    def kind(self) -> str:
        return IMAGE if isinstance(self.bundle, ImageModelBundle) else CT_PATCH

    @property
    def organ(self) -> str | None:
        return self.bundle.organ if isinstance(self.bundle, ImageModelBundle) else None

    @property
    def needs_organ_mask(self) -> bool:
        """CT models crop inside the organ: they need a mask unless they embed a segmenter."""
        return isinstance(self.bundle, PatchModelBundle) and self.bundle.segmenter is None

    @property
    def decision_threshold(self) -> float:
        if isinstance(self.bundle, ImageModelBundle):
            return self.bundle.exam_threshold
        return self.bundle.patient_threshold

    def info(self) -> dict[str, Any]:
        """What a client needs to pick the model and send the right files."""
        return {
            "id": self.model_id, "name": self.bundle.name, "kind": self.kind,
            "organ": self.organ, "needs_organ_mask": self.needs_organ_mask,
            "threshold": self.decision_threshold, "cadx_version": self.bundle.cadx_version,
            "created_utc": self.bundle.created_utc,
            "accepts": ("one or more PNG/JPEG images" if self.kind == IMAGE else
                        "a NIfTI volume plus its organ mask, or one zip holding both, or a zipped "
                        "DICOM series with a DICOM SEG of the organ (or a separate mask)"
                        if self.needs_organ_mask else
                        "a NIfTI volume or a zipped DICOM series; the organ is segmented "
                        "automatically unless a mask is given"),
        }


def _networks(bundle: PatchModelBundle | ImageModelBundle) -> list[nn.Module]:
    if isinstance(bundle, ImageModelBundle):
        return bundle.build_networks()
    return [bundle.build_model()]


def load_model_folder(folder: str | Path) -> dict[str, ServedModel]:
    """Every `*.cadx` bundle of `folder` by id; ConfigError/BundleError naming a bad file."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"{folder}: model folder not found")
    paths = sorted(p for p in folder.glob(f"*{BUNDLE_SUFFIX}") if not p.name.startswith("."))
    if not paths:
        raise ConfigError(f"{folder}: no model bundles (*{BUNDLE_SUFFIX}) in this folder")
    models = {}
    for path in paths:
        bundle = load_any_bundle(path)
        segmenter = getattr(bundle, "segmenter", None)
        models[path.stem] = ServedModel(
            path.stem, bundle, _networks(bundle),
            segmenter.build_network().eval() if segmenter is not None else None)
    return models
