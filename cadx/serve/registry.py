"""Load every model bundle of a folder once, with its networks built, for the service."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cadx.bundle import PatchModelBundle, verify_bundle_signature
from cadx.errors import ConfigError
from cadx.image_bundle import ImageModelBundle, load_any_bundle

BUNDLE_SUFFIX = ".cadx"
CT_PATCH, IMAGE = "ct-patch", "image"


@dataclass
class ServedModel:
    """One loaded bundle: its id (the file name without `.cadx`) and, for CT models, its
    networks built once (image models' networks are built by `diagnose_images` per call)."""

    model_id: str
    bundle: PatchModelBundle | ImageModelBundle
    patch_network: nn.Module | None = None
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

    def fusion_info(self) -> dict[str, Any] | None:
        """The clinical values the bundle's fusion model takes (None without one): per column
        its kind, unit, other accepted units, plausible range and, for categories, the values
        the validation patients had — what the page needs to draw one input per column."""
        fusion = self.bundle.fusion  # 2D image and CT patch bundles alike
        if fusion is None:
            return None
        columns = []
        for name in fusion.columns:
            spec = fusion.column_specs.get(name, {})
            columns.append({
                "name": name, "kind": fusion.kinds[name], "unit": fusion.units.get(name),
                "units": [str(u[0]) for u in spec.get("units", [])],
                "range": [spec.get("low"), spec.get("high")],
                "values": list(fusion.levels.get(name, ()))})
        return {"columns": columns, "threshold": fusion.threshold, "model": fusion.describe()}

    def info(self) -> dict[str, Any]:
        """What a client needs to pick the model and send the right files (and, with a fusion
        model, the clinical values)."""
        return {
            "id": self.model_id, "name": self.bundle.name, "kind": self.kind,
            "organ": self.organ, "needs_organ_mask": self.needs_organ_mask,
            "threshold": self.decision_threshold, "cadx_version": self.bundle.cadx_version,
            "created_utc": self.bundle.created_utc,
            "fusion": self.fusion_info(),
            "accepts": ("one or more PNG/JPEG images" if self.kind == IMAGE else
                        "a NIfTI volume plus its organ mask, or one zip holding both, or a zipped "
                        "DICOM series with a DICOM SEG of the organ (or a separate mask)"
                        if self.needs_organ_mask else
                        "a NIfTI volume or a zipped DICOM series; the organ is segmented "
                        "automatically unless a mask is given"),
        }


def load_model_folder(folder: str | Path, signing_key: bytes | None = None
                      ) -> dict[str, ServedModel]:
    """Every `*.cadx` bundle of `folder` by id; ConfigError/BundleError naming a bad file.

    With `signing_key`, every bundle must carry a valid signature by that key, checked before
    anything in it is unpickled or used."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"{folder}: model folder not found")
    paths = sorted(p for p in folder.glob(f"*{BUNDLE_SUFFIX}") if not p.name.startswith("."))
    if not paths:
        raise ConfigError(f"{folder}: no model bundles (*{BUNDLE_SUFFIX}) in this folder")
    models = {}
    for path in paths:
        if signing_key is not None:
            verify_bundle_signature(path, signing_key)
        bundle = load_any_bundle(path)
        model = ServedModel(path.stem, bundle)
        if isinstance(bundle, PatchModelBundle):
            # Converted here once: predict_logits converts to channels-last in place, which
            # concurrent workers must not do at the same time.
            model.patch_network = bundle.build_model().to(memory_format=torch.channels_last)
            if bundle.segmenter is not None:
                model.segmenter_network = bundle.segmenter.build_network().eval()
        models[path.stem] = model
    return models
