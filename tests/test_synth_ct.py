"""Tests for the synthetic abdominal CT cohort generator (cadx.synth.ct_phantom)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage as ndi

from cadx.synth.ct_phantom import (
    MIN_PATIENTS_PER_WORKER,
    CohortSpec,
    PhantomCase,
    _cohort_plan,
    default_synthesis_workers,
    make_ct_phantom,
    write_msd_cohort,
)

SMALL_SHAPE = (12, 128, 128)
SMALL_SPACING = (2.5, 2.7, 2.7)  # same ~346 mm field of view as the default grid


def _small(seed: int, diameter: float | None) -> PhantomCase:
    return make_ct_phantom(np.random.default_rng(seed), diameter, SMALL_SHAPE, SMALL_SPACING)


@pytest.fixture(scope="module")
def default_cases() -> dict[float, PhantomCase]:
    """Default-resolution (40 x 384 x 384) tumour cases, generated once for the module."""
    return {d: make_ct_phantom(np.random.default_rng(seed), d)
            for seed, d in ((11, 12.0), (7, 30.0))}


def _equivalent_diameter_mm(case: PhantomCase) -> float:
    volume = float((case.label == 2).sum()) * float(np.prod(case.spacing_zyx_mm))
    return (6.0 * volume / np.pi) ** (1.0 / 3.0)


def _anterior_fat(image: np.ndarray) -> np.ndarray:
    """HU samples 3.6-9 mm under the anterior skin near the midline (uniform subcutaneous fat
    at 0.9 mm pixels: the phantom's anterior fat layer is >= 10 mm thick)."""
    samples = []
    nx = image.shape[2]
    for z in range(image.shape[0]):
        for x in range(nx // 2 - 30, nx // 2 + 30):
            column = image[z, :, x]
            skin = int(np.argmax(column > -500))
            samples.append(column[skin + 4:skin + 11])
    return np.concatenate(samples).astype(np.float64)


def test_case_types_and_label_values() -> None:
    for seed, diameter in ((0, None), (1, 20.0)):
        case = _small(seed, diameter)
        assert case.image_hu.dtype == np.int16 and case.label.dtype == np.uint8
        assert case.image_hu.shape == case.label.shape == SMALL_SHAPE
        assert case.spacing_zyx_mm == SMALL_SPACING
        assert case.tumour_diameter_mm == diameter
        assert set(np.unique(case.label)) <= {0, 1, 2}
        assert (case.label == 1).sum() > 100
        assert case.image_hu.min() >= -1024 and case.image_hu.max() <= 3071


def test_tumour_free_cases_have_no_tumour_label() -> None:
    for seed in range(3):
        assert not (_small(seed, None).label == 2).any()


@pytest.mark.parametrize("seed,diameter", [(2, 5.0), (3, 15.0), (4, 40.0)])
def test_tumour_lies_in_the_pancreas(seed: int, diameter: float) -> None:
    label = _small(seed, diameter).label
    tumour = label == 2
    assert tumour.any()
    components, n = ndi.label(tumour, structure=np.ones((3, 3, 3), dtype=bool))
    pancreas = label == 1
    for i in range(1, n + 1):
        shell = ndi.binary_dilation(components == i, structure=np.ones((3, 3, 3), dtype=bool))
        assert (shell & pancreas).any(), "tumour component not attached to the pancreas"


def test_tumour_size_matches_request(default_cases: dict[float, PhantomCase]) -> None:
    for diameter, case in default_cases.items():
        measured = _equivalent_diameter_mm(case)
        assert abs(measured - diameter) <= 0.3 * diameter, (diameter, measured)
        # In-plane extent of the largest tumour slice is of the same order.
        tumour = case.label == 2
        z = int(np.argmax(tumour.sum(axis=(1, 2))))
        ys, xs = np.nonzero(tumour[z])
        extent = max(np.ptp(ys), np.ptp(xs)) * case.spacing_zyx_mm[1]
        assert 0.5 * diameter <= extent <= 1.6 * diameter, (diameter, extent)


def test_attenuation(default_cases: dict[float, PhantomCase]) -> None:
    case = default_cases[30.0]
    image = case.image_hu.astype(np.float64)
    pancreas = image[case.label == 1].mean()
    tumour = image[case.label == 2].mean()
    assert 70.0 <= pancreas <= 130.0
    assert tumour < pancreas - 5.0


def test_noise_in_uniform_fat(default_cases: dict[float, PhantomCase]) -> None:
    for case in default_cases.values():
        fat = _anterior_fat(case.image_hu)
        assert -130.0 <= fat.mean() <= -70.0
        assert 8.0 <= fat.std() <= 20.0


def test_deterministic_given_seed() -> None:
    a, b = _small(5, 18.0), _small(5, 18.0)
    np.testing.assert_array_equal(a.image_hu, b.image_hu)
    np.testing.assert_array_equal(a.label, b.label)
    assert not np.array_equal(a.image_hu, _small(6, 18.0).image_hu)


def test_cohort_plan_counts_and_size_bins() -> None:
    for seed in range(5):
        plan = _cohort_plan(CohortSpec(n_patients=24, tumour_fraction=0.5, seed=seed))
        sizes = [d for d in plan if d is not None]
        assert len(sizes) == 12
        assert all(5.0 <= d <= 40.0 for d in sizes)
        assert any(d < 20.0 for d in sizes) and any(20.0 <= d <= 40.0 for d in sizes)
    big = [d for d in _cohort_plan(CohortSpec(n_patients=10, tumour_diameter_mm=(30.0, 60.0)))
           if d is not None]
    assert any(d > 40.0 for d in big) and max(big) <= 60.0


def test_cohort_spec_validation() -> None:
    with pytest.raises(ValueError):
        CohortSpec(tumour_fraction=1.5)
    with pytest.raises(ValueError):
        CohortSpec(tumour_diameter_mm=(20.0, 10.0))


def _read(path: Path) -> tuple[np.ndarray, tuple[float, ...]]:
    image = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(image), image.GetSpacing()


def test_write_msd_cohort(tmp_path: Path) -> None:
    spec = CohortSpec(n_patients=5, tumour_fraction=0.4, shape_zyx=SMALL_SHAPE,
                      spacing_zyx_mm=SMALL_SPACING, seed=3)
    out = write_msd_cohort(tmp_path / "cohort", spec, progress=False)
    assert out == tmp_path / "cohort"

    dataset = json.loads((out / "dataset.json").read_text())
    assert dataset["labels"] == {"0": "background", "1": "pancreas", "2": "cancer"}
    assert dataset["modality"] == {"0": "CT"}
    assert dataset["numTraining"] == 5 and dataset["numTest"] == 0 and dataset["test"] == []
    ids = [f"pancreas_{i:03d}" for i in range(1, 6)]
    assert dataset["training"] == [
        {"image": f"./imagesTr/{p}.nii.gz", "label": f"./labelsTr/{p}.nii.gz"} for p in ids
    ]
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == [f"{p}.nii.gz" for p in ids]
    assert sorted(p.name for p in (out / "labelsTr").iterdir()) == [f"{p}.nii.gz" for p in ids]

    with open(out / "cases.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["patient_id"] for r in rows] == ids
    assert sum(int(r["has_tumour"]) for r in rows) == round(5 * 0.4)

    expected_spacing = tuple(reversed(SMALL_SPACING))  # SimpleITK: x, y, z
    for row in rows:
        image, spacing = _read(out / "imagesTr" / f"{row['patient_id']}.nii.gz")
        label, label_spacing = _read(out / "labelsTr" / f"{row['patient_id']}.nii.gz")
        assert image.dtype == np.int16 and label.dtype == np.uint8
        assert image.shape == label.shape == SMALL_SHAPE
        assert spacing == pytest.approx(expected_spacing)
        assert label_spacing == pytest.approx(expected_spacing)
        if row["has_tumour"] == "1":
            assert 5.0 <= float(row["tumour_diameter_mm"]) <= 40.0
            assert (label == 2).any()
        else:
            assert row["tumour_diameter_mm"] == ""
            assert not (label == 2).any()

    # Same spec -> byte-identical arrays, also from 2 processes; no temporary files left behind.
    again = write_msd_cohort(tmp_path / "again", spec, progress=False, workers=2)
    assert (again / "cases.csv").read_text() == (out / "cases.csv").read_text()
    for sub in ("imagesTr", "labelsTr"):
        for pid in ids:
            np.testing.assert_array_equal(_read(out / sub / f"{pid}.nii.gz")[0],
                                          _read(again / sub / f"{pid}.nii.gz")[0])
    assert not list(out.rglob(".tmp-*"))


def test_synthesis_workers_default_and_bounds(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert default_synthesis_workers(MIN_PATIENTS_PER_WORKER - 1) == 1  # small cohorts: serial
    assert default_synthesis_workers(160) == 2  # one per core
    spec = CohortSpec(n_patients=1, shape_zyx=SMALL_SHAPE, spacing_zyx_mm=SMALL_SPACING)
    with pytest.raises(ValueError, match="workers must be >= 1"):
        write_msd_cohort(tmp_path / "c", spec, progress=False, workers=0)
