"""A tiny CT patch bundle and toy uploads for the service tests (random weights: fast)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cadx.bundle import PatchModelBundle, save_bundle
from cadx.config import ModelConfig, PatchConfig, PipelineConfig
from cadx.decide.roc import OperatingPoint
from cadx.models.patch_cnn import PatchCNN
from tests.conftest import toy_case, write_volume


def write_ct_bundle(path: Path, patch_threshold: float = 0.41,
                    patient_threshold: float = 0.2) -> Path:
    """A 16-px patch CNN with seeded random weights, saved as a `.cadx` bundle."""
    torch.manual_seed(0)
    model = PatchCNN(16, batch_norm=False)
    config = PipelineConfig(patches=PatchConfig(size_px=16, stride_px=8),
                            model=ModelConfig(batch_norm=False))
    point = (0.9, 0.8, 0.7, 0.95, (0.0, 1.0), (0.0, 1.0))
    bundle = PatchModelBundle(config=config, state_dict=model.state_dict(),
                              patch_operating_point=OperatingPoint(patch_threshold, *point),
                              patient_operating_point=OperatingPoint(patient_threshold, *point))
    return save_bundle(bundle, path)


def write_ct_upload(folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """A toy CT volume with a tumour and its organ mask (non-zero = organ), as NIfTI."""
    image, label = toy_case(np.random.default_rng(seed), with_tumour=True)
    image_path = write_volume(folder / "patient_ct.nii.gz", image)
    mask_path = write_volume(folder / "patient_mask.nii.gz", (label > 0).astype(np.uint8))
    return image_path, mask_path


def write_image_bundle(path: Path, organ: str | None = "thyroid",
                       exam_threshold: float = 0.5) -> Path:
    """A one-network (ResNet-18, width 0.25) 2D image bundle with seeded random weights."""
    from cadx.image_bundle import ImageModelBundle, NetworkSpec, save_image_bundle
    from cadx.models.backbones import build_backbone

    torch.manual_seed(0)
    network = build_backbone("resnet18", 1, 1, 0.25)
    point = (0.9, 0.8, 0.7, 0.95, (0.0, 1.0), (0.0, 1.0))
    bundle = ImageModelBundle(
        method="cnn-ensemble", size_px=32, channels=1,
        networks=[NetworkSpec("resnet18", 0.25, 0.8, 1.0)],
        state_dicts=[network.state_dict()],
        image_operating_point=OperatingPoint(0.5, *point),
        exam_operating_point=OperatingPoint(exam_threshold, *point), organ=organ)
    return save_image_bundle(bundle, path)


def write_png_images(folder: Path, n: int = 2, seed: int = 0) -> list[Path]:
    """`n` small grey PNG 'ultrasound' images with a dark blob."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(n):
        y, x = np.ogrid[:48, :64]
        image = rng.normal(120, 25, (48, 64))
        image[(y - 24) ** 2 + (x - 20 - 10 * k) ** 2 < 80] = 40
        path = folder / f"nodule_{k + 1}.png"
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(path)
        paths.append(path)
    return paths


def write_fused_image_bundle(path: Path) -> Path:
    """`write_image_bundle` (no organ) with a fusion model on age (years, 0..120) and device
    (GE, Toshiba), fitted on synthetic validation patients as tests/test_clinical.py does."""
    from cadx.decide.fusion import FusionInputs, fit_fusion
    from cadx.image_bundle import load_image_bundle, save_image_bundle
    from cadx.io.clinical import column_spec, schema_from_columns

    rng = np.random.default_rng(0)
    n = 60
    y = np.arange(n) % 2
    age = 45 + 12 * y + rng.normal(0, 8, n)
    score = np.clip(0.5 + 0.15 * (y - 0.5) + rng.normal(0, 0.15, n), 0.01, 0.99)
    device = np.where(rng.random(n) < 0.5, "GE", "Toshiba")
    inputs = FusionInputs([f"P{k}" for k in range(n)], y.tolist(), score.tolist(),
                          {"age": age.tolist(), "device": device.tolist()})
    specs = {"age": {"kind": "numeric", "unit": "years", "low": 0, "high": 120},
             "device": {"kind": "categorical"}}
    schema = schema_from_columns(specs)
    bundle = load_image_bundle(write_image_bundle(path, organ=None))
    bundle.fusion, _ = fit_fusion(inputs, ["age", "device"],
                                  {"age": "numeric", "device": "categorical"},
                                  {"age": "years", "device": None},
                                  column_specs={c: column_spec(schema.columns[c])
                                                for c in specs})
    return save_image_bundle(bundle, path)
