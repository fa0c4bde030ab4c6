"""Leakage guards of the 2D track: near-duplicate images found across splits and grouped into
one patient on request, one file with two labels refused, and deep features refused when the
backbones were trained on this run's evaluation patients."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cadx.config import ImageModelConfig, ImageTrainConfig
from cadx.errors import ConfigError, InputError
from cadx.io.images import load_image_dataset, read_images
from cadx.io.near_duplicates import group_near_duplicates, near_duplicate_pairs
from cadx.train.image_pipeline import (
    split_image_dataset,
    train_feature_model,
    train_image_ensemble,
)

TINY = ImageModelConfig(size_px=32, width=0.125, seed=0,
                        train=ImageTrainConfig(batch_size=16, max_epochs=1,
                                               early_stop_patience=1))


def _scene(rng: np.random.Generator, size: int = 64) -> np.ndarray:
    y, x = np.mgrid[:size, :size] / size
    cy, cx = rng.uniform(0.3, 0.7, 2)
    blob = np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / rng.uniform(0.005, 0.03))
    texture = np.kron(rng.uniform(-0.15, 0.15, (8, 8)), np.ones((size // 8, size // 8)))
    return np.clip(0.4 + 0.3 * blob * rng.choice([-1, 1]) + texture
                   + rng.normal(0, 0.02, (size, size)), 0, 1)


def _write(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((image * 255).astype(np.uint8)).save(path)


def _dataset(root: Path, n: int = 24, copies: int = 6) -> Path:
    """n images, one per 'patient' (no real ids); the first `copies` are saved again,
    slightly cropped and re-noised, as other patients."""
    rng = np.random.default_rng(0)
    rows = ["path,patient_id,label"]
    scenes = [_scene(rng) for _ in range(n)]
    for k, scene in enumerate(scenes):
        _write(root / f"img{k}.png", scene)
        rows.append(f"img{k}.png,P{k},{k % 2}")
    for k in range(copies):
        near = np.clip(scenes[k][1:-1, 2:] + rng.normal(0, 0.01, (62, 62)), 0, 1)
        _write(root / f"copy{k}.png", near)
        rows.append(f"copy{k}.png,C{k},{k % 2}")
    (root / "m.csv").write_text("\n".join(rows) + "\n")
    return root / "m.csv"


def test_near_duplicates_are_found_and_distinct_images_are_not() -> None:
    rng = np.random.default_rng(1)
    scenes = np.stack([_scene(rng) for _ in range(10)])[:, None]
    resized = np.stack([np.asarray(Image.fromarray((s[0] * 255).astype(np.uint8)).resize(
        (48, 48)), np.float32)[None] / 255 for s in scenes[:2]])
    small = np.stack([np.asarray(Image.fromarray(r[0]).resize((64, 64)), np.float32)[None]
                      for r in resized])
    pairs = near_duplicate_pairs(np.concatenate([scenes, small]))
    assert {tuple(p) for p in pairs.tolist()} == {(0, 10), (1, 11)}


def test_grouping_merges_near_duplicate_patients_before_splitting(tmp_path: Path) -> None:
    manifest = _dataset(tmp_path)
    dataset = load_image_dataset(manifest, progress=False)
    data = split_image_dataset(dataset, TINY, progress=False)
    assert any("near-duplicate images" in w and "different splits" in w for w in data.warnings)
    grouped = split_image_dataset(dataset, replace(TINY, group_near_duplicates=True),
                                  progress=False)
    assert any("6 patient(s) merged" in w for w in grouped.warnings)
    assert not any("different splits" in w for w in grouped.warnings)
    records = [r for rs in grouped.records.values() for r in rs]
    pid = {r.path.name: r.patient_id for r in records}
    assert all(pid[f"copy{k}.png"] == pid[f"img{k}.png"] for k in range(6))
    merged, count = group_near_duplicates(list(dataset.records),
                                          read_images(dataset.records, 32, 1, False))
    assert count == 6 and len({r.patient_id for r in merged}) == 24


def test_one_file_with_two_labels_is_an_error(tmp_path: Path) -> None:
    manifest = _dataset(tmp_path, copies=0)
    (tmp_path / "img99.png").write_bytes((tmp_path / "img0.png").read_bytes())
    manifest.write_text(manifest.read_text() + "img99.png,P99,1\n")
    dataset = load_image_dataset(manifest, progress=False)
    with pytest.raises(InputError, match="same file with different labels"):
        split_image_dataset(dataset, TINY, progress=False)


def test_features_refuse_backbones_trained_on_their_test_patients(tmp_path: Path) -> None:
    dataset = load_image_dataset(_dataset(tmp_path, copies=0), progress=False)
    source = train_image_ensemble(dataset, ["resnet18"], TINY, progress=False, n_boot=10).bundle
    with pytest.raises(ConfigError, match="trained those backbones"):
        train_feature_model(dataset, ["resnet18"], ["avgpool"], ["rf"], False,
                            replace(TINY, seed=1), source_bundle=source, progress=False)
    outcome = train_feature_model(dataset, ["resnet18"], ["avgpool"], ["rf"], False, TINY,
                                  source_bundle=source, progress=False, n_boot=10)
    assert outcome.bundle.method == "features"
