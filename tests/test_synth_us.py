"""Tests for the synthetic ultrasound lesion generator (cadx.synth.us_lesions)."""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage as ndi

from cadx.errors import ConfigError
from cadx.io.images import load_image_dataset, read_image
from cadx.synth import us_lesions
from cadx.synth.us_lesions import UltrasoundCohortSpec, make_us_image, write_us_cohort

SPEC = UltrasoundCohortSpec(n_patients=12, images_per_patient=(2, 4), malignant_fraction=0.5,
                            image_size_px=64, seed=3)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_us_cohort(tmp_path_factory.mktemp("us") / "cohort", SPEC, progress=False)


def _manifest(root: Path) -> list[dict[str, str]]:
    with (root / "manifest.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def _auc(positive: list[float], negative: list[float]) -> float:
    pos, neg = np.asarray(positive)[:, None], np.asarray(negative)[None, :]
    return float((pos > neg).mean() + 0.5 * (pos == neg).mean())


def test_layout_counts_and_class_balance(cohort: Path) -> None:
    rows = _manifest(cohort)
    assert list(rows[0]) == ["path", "patient_id", "label", "mask"]
    on_disk = sorted(p.relative_to(cohort).as_posix() for p in cohort.glob("*/*.png"))
    assert sorted(r["path"] for r in rows) + sorted(r["mask"] for r in rows) == on_disk
    for row in rows[:4]:  # each mask marks a lesion inside its image's frame
        mask = np.asarray(Image.open(cohort / row["mask"]))
        assert mask.shape == np.asarray(Image.open(cohort / row["path"])).shape[:2]
        assert set(np.unique(mask).tolist()) == {0, 255}
    assert not list(cohort.rglob("*.part"))
    per_patient = Counter(r["patient_id"] for r in rows)
    assert sorted(per_patient) == [f"US{i:04d}" for i in range(1, 13)]
    assert all(2 <= n <= 4 for n in per_patient.values())
    label_of = {}
    for r in rows:
        folder, name = r["path"].split("/")
        assert folder == ("malignant" if r["label"] == "1" else "benign")
        assert name.startswith(r["patient_id"] + "_")
        assert label_of.setdefault(r["patient_id"], r["label"]) == r["label"]
    assert Counter(label_of.values()) == {"0": 6, "1": 6}


def test_cohort_is_deterministic(cohort: Path, tmp_path: Path) -> None:
    again = write_us_cohort(tmp_path / "again", SPEC, progress=False)
    for path in sorted(cohort.rglob("*.*")):
        assert (again / path.relative_to(cohort)).read_bytes() == path.read_bytes(), path
    other = write_us_cohort(tmp_path / "other", replace(SPEC, n_patients=3, seed=4),
                            progress=False)
    ours = {p.read_bytes() for p in cohort.glob("*/*.png")}
    assert not ours & {p.read_bytes() for p in other.glob("*/*.png")}


def test_images_mix_grayscale_and_rgb_and_read_as_requested(cohort: Path) -> None:
    modes = Counter(Image.open(cohort / r["path"]).mode for r in _manifest(cohort))
    assert set(modes) == {"L", "RGB"} and modes["RGB"] < modes["L"]
    dataset = load_image_dataset(cohort, progress=False)
    assert dataset.class_names == ("benign", "malignant") and len(dataset) == sum(modes.values())
    for record in dataset.records[:6]:
        for channels in (1, 3):
            pixels = read_image(record.path, size_px=32, channels=channels)
            assert pixels.shape == (channels, 32, 32) and pixels.dtype == np.float32
            assert 0.0 <= pixels.min() and pixels.max() <= 1.0


def test_image_and_mask_values() -> None:
    rng = np.random.default_rng(0)
    for malignant in (False, True, False, True):
        image, mask = make_us_image(rng, malignant, size_px=96)
        assert image.dtype == mask.dtype == np.uint8
        assert image.shape == mask.shape == (96, 96)
        assert set(np.unique(mask)) == {0, 1}
        # Black outside the fan (top corners), speckled grey tissue inside it.
        assert image[0, 0] == image[0, -1] == 0
        tissue = image[image > 0]
        assert 40 < tissue.mean() < 170 and tissue.std() > 15 and image.max() > 150
        assert mask.sum() > 0
    with pytest.raises(ConfigError):
        make_us_image(rng, True, size_px=16)


def test_views_of_one_patient_show_the_same_lesion() -> None:
    rng = np.random.default_rng(5)
    lesion = us_lesions._draw_lesion(rng, malignant=True)
    views = [us_lesions._render(rng, lesion, 64) for _ in range(4)]
    areas = [int(mask.sum()) for _, mask in views]
    assert max(areas) / min(areas) < 1.6
    assert len({image.tobytes() for image, _ in views}) == 4


def test_classes_differ_on_average_but_overlap() -> None:
    """Margin irregularity, taller-than-wide shape and posterior shadowing separate the classes
    on average, yet no single feature approaches perfect separation."""
    rng = np.random.default_rng(1)
    features: dict[str, dict[int, list[float]]] = {
        k: {0: [], 1: []} for k in ("irregularity", "taller", "shadowing")}
    for i in range(120):
        label = i % 2
        image, mask = make_us_image(rng, bool(label), size_px=64)
        lesion = mask.astype(bool)
        ys, xs = np.nonzero(lesion)
        perimeter = int((lesion & ~ndi.binary_erosion(lesion)).sum())
        features["irregularity"][label].append(perimeter ** 2 / lesion.sum())
        features["taller"][label].append((np.ptp(ys) + 1) / (np.ptp(xs) + 1))
        x0, x1, bottom = xs.min(), xs.max(), ys.max()
        width = x1 - x0
        band = image[bottom + 2:bottom + 10].astype(float)
        below = band[:, x0 + width // 4:x1 - width // 4 + 1]
        beside = np.concatenate([band[:, max(x0 - width // 2, 0):max(x0 - 2, 0)].ravel(),
                                 band[:, x1 + 2:x1 + width // 2].ravel()])
        below, beside = below[below > 0], beside[beside > 0]
        if below.size and beside.size:
            features["shadowing"][label].append(beside.mean() / below.mean())
    for name, by_class in features.items():
        assert np.mean(by_class[1]) > np.mean(by_class[0]), name
        assert 0.6 < _auc(by_class[1], by_class[0]) < 0.95, name


def test_manifest_is_written_last(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    render = us_lesions._render

    def failing_render(rng, lesion, size_px):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return render(rng, lesion, size_px)

    monkeypatch.setattr(us_lesions, "_render", failing_render)
    with pytest.raises(KeyboardInterrupt):
        write_us_cohort(tmp_path / "cut", SPEC, progress=False)
    assert not (tmp_path / "cut" / "manifest.csv").exists()
    assert not list((tmp_path / "cut").rglob("*.part"))


@pytest.mark.parametrize("kwargs", [
    {"n_patients": 0}, {"images_per_patient": (3, 2)}, {"images_per_patient": (0, 2)},
    {"malignant_fraction": 1.5}, {"image_size_px": 8},
])
def test_spec_rejects_bad_parameters(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        UltrasoundCohortSpec(**kwargs)
