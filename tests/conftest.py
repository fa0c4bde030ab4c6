"""Small synthetic volumes and datasets written on the fly (fast: no network, no shared data)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk


def write_volume(path: Path, array: np.ndarray, spacing_zyx=(2.5, 1.0, 1.0),
                 origin=(0.0, 0.0, 0.0)) -> Path:
    """Write a (z, y, x) array as NIfTI with the given spacing."""
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(float(s) for s in spacing_zyx[::-1]))
    image.SetOrigin(origin)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


def toy_case(rng: np.random.Generator, with_tumour: bool, shape=(8, 48, 48)):
    """A noisy 'organ' ellipse at ~100 HU in fat, with an optional dark tumour disc (label 2)."""
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    cy, cx = shape[1] / 2 + rng.uniform(-3, 3), shape[2] / 2 + rng.uniform(-3, 3)
    organ = (((y - cy) / 10) ** 2 + ((x - cx) / 16) ** 2 <= 1) & (z >= 1) & (z < shape[0] - 1)
    image = np.full(shape, -100.0) + rng.normal(0, 10, shape)
    image[organ] = 100 + rng.normal(0, 10, int(organ.sum()))
    label = organ.astype(np.uint8)
    if with_tumour:
        ty, tx = cy + rng.uniform(-3, 3), cx + rng.uniform(-6, 6)
        tumour = organ & (((y - ty) ** 2 + (x - tx) ** 2) <= 16) & (z >= 3) & (z <= 5)
        image[tumour] = 20 + rng.normal(0, 10, int(tumour.sum()))
        label[tumour] = 2
    return image.astype(np.int16), label


def random_patch_set(rng: np.random.Generator, n: int, size_px: int = 16):
    """`n` single-patient noise patches, about 30 % labelled cancerous and a little brighter."""
    from cadx.patches.grid import PatchSet

    labels = (rng.random(n) < 0.3).astype(np.uint8)
    patches = (rng.random((n, size_px, size_px), dtype=np.float32) * 0.5
               + labels[:, None, None] * 0.02)
    return PatchSet(patches, np.full(n, "p", dtype=object), np.zeros((n, 3), np.int32), labels)


def write_toy_dataset(root: Path, n_patients: int = 12, seed: int = 0,
                      shape=(8, 48, 48)) -> Path:
    """An MSD-layout dataset of toy cases, half with tumours."""
    rng = np.random.default_rng(seed)
    training = []
    for i in range(n_patients):
        image, label = toy_case(rng, with_tumour=i % 2 == 0, shape=shape)
        name = f"toy_{i:03d}.nii.gz"
        write_volume(root / "imagesTr" / name, image)
        write_volume(root / "labelsTr" / name, label)
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    (root / "dataset.json").write_text(json.dumps({
        "name": "toy", "labels": {"0": "background", "1": "organ", "2": "tumour"},
        "numTraining": n_patients, "training": training}))
    return root


@pytest.fixture
def toy_dataset(tmp_path: Path) -> Path:
    return write_toy_dataset(tmp_path / "toy")
