"""`cadx triage-train` on tiny synthetic stand-ins for real data (fast): defects, the sources
of a data folder, its refusals (too few images, duplicates across categories), missing
categories, thresholds, and a whole build whose bundles `cadx run` loads."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from cadx.cli import main
from cadx.errors import InputError
from cadx.synth.categories import make_category_image
from cadx.triage.bundle import load_triage_bundle
from cadx.triage.defects import DEFECTS, OOD_KINDS, apply_defect, make_ood_image
from cadx.triage.pipeline_file import load_pipeline
from cadx.triage.real_sources import (
    check_counts,
    check_cross_category_duplicates,
    find_real_sources,
)
from cadx.triage.real_train import (
    TriageBuildSpec,
    build_triage,
    choose_floor,
    false_drop_threshold,
)


def _write_category(root: Path, category: str, n_patients: int, seed: int,
                    per_patient: int = 1) -> Path:
    folder = root / category
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for p in range(n_patients):
        for k in range(per_patient):
            image = make_category_image(rng, category, 64, lesion=bool(p % 2)).pixels
            Image.fromarray(image).save(folder / f"P{seed}{p:03d}_{k}.png")
    return folder


def _write_ct(root: Path, n_slices: int = 40) -> Path:
    z, y, x = np.mgrid[0:n_slices, 0:48, 0:48]
    hu = np.where((y - 24) ** 2 + (x - 24) ** 2 < 400, 40.0, -1000.0)
    hu = hu + np.random.default_rng(0).normal(0, 20, hu.shape) + (z % 7) * 10
    volume = hu.transpose(2, 1, 0).astype(np.int16)  # (x, y, z) as NIfTI stores it
    path = root / "ct-abdomen" / "scan.nii.gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(volume, np.diag([3.0, 3.0, 3.0, 1.0])), str(path))
    return path


def test_defects_change_the_frame_and_keep_its_shape() -> None:
    rng = np.random.default_rng(0)
    frame = np.random.default_rng(1).uniform(0.2, 0.8, (64, 64, 3))
    for kind in (*DEFECTS, "doppler"):
        out = apply_defect(rng, frame, kind)
        assert out.shape == frame.shape and 0 <= out.min() and out.max() <= 1, kind
        assert np.abs(out - frame).mean() > 0.02, kind
    with pytest.raises(Exception, match="unknown defect"):
        apply_defect(rng, frame, "smudge")
    for kind in OOD_KINDS:
        image = make_ood_image(rng, kind, 64)
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8


def test_sources_of_a_plain_folder_report_absent_categories(tmp_path: Path) -> None:
    _write_category(tmp_path, "us-breast", 22, 1)
    _write_ct(tmp_path)
    sources = find_real_sources(tmp_path)
    assert set(sources.frames) == {"us-breast", "ct-abdomen"}
    assert set(sources.absent) == {"us-thyroid", "us-adnexa"}
    ct = sources.frames["ct-abdomen"]
    assert {f.split for f in ct} == {"train", "validation", "test"}
    # Slices at a slab edge are left out, so no two splits hold neighbouring slices.
    by_z = {int(f.key.split("#z")[1]): f.split for f in ct}
    assert all(by_z[z] == by_z[z + 1] for z in by_z if z + 1 in by_z)
    assert ct[0].load().shape == (48, 48, 3)
    check_counts(sources)


def test_refuses_too_few_images_and_duplicates_across_categories(tmp_path: Path) -> None:
    _write_category(tmp_path, "us-breast", 22, 1)
    thyroid = _write_category(tmp_path, "us-thyroid", 12, 2)
    with pytest.raises(InputError, match="us-thyroid has 12"):
        check_counts(find_real_sources(tmp_path))
    _write_category(tmp_path, "us-thyroid", 22, 2)
    (thyroid / "copy_0.png").write_bytes((tmp_path / "us-breast" / "P1000_0.png").read_bytes())
    with pytest.raises(InputError, match=r"more than one category.*P1000_0.png"):
        check_cross_category_duplicates(find_real_sources(tmp_path))
    with pytest.raises(InputError, match="no real images"):
        find_real_sources(tmp_path / "us-breast")


def test_thresholds_allow_the_stated_share_of_false_drops() -> None:
    good = np.linspace(0.0, 1.0, 101)
    raised = false_drop_threshold(good, 0.02, negated=False)
    assert (good > raised).sum() == 2
    dropped_below = false_drop_threshold(good, 0.02, negated=True)
    assert (good <= dropped_below).sum() == 2
    probabilities = np.array([[0.9, 0.1], [0.55, 0.45], [0.2, 0.8], [0.52, 0.48]])
    assert choose_floor(probabilities, np.array([0, 1, 1, 1]), 0.0) == 0.55


def test_build_from_a_tiny_folder_writes_bundles_that_run(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for k, category in enumerate(("us-breast", "us-thyroid", "us-adnexa")):
        _write_category(data, category, 24, k)
    spec = TriageBuildSpec(size_px=64, work_px=96, max_per_category=24, phantom_ct_slices=0,
                           other_per_look=6, ood_per_kind=1, extra_doppler_frames=0)
    result = build_triage(data, tmp_path / "triage", spec, progress=False)
    report = result.report
    assert report["absent_categories"].keys() == {"ct-abdomen"}
    assert report["categories"] == ["us-thyroid", "us-breast", "us-adnexa", "other"]
    assert set(report["qc"]["caught"]) >= set(DEFECTS)
    pipeline = load_pipeline(result.pipeline_file)
    assert pipeline.router.labels == ("us-thyroid", "us-breast", "us-adnexa", "other")
    assert [str(r) for r in pipeline.drop_rules] == ["not target", "unreadable", "doppler"]
    assert load_triage_bundle(result.qc_file).size_px == 64
    with (result.out_dir / "test-truth.csv").open() as handle:
        truth = list(csv.DictReader(handle))
    assert truth and {row["category"] for row in truth} <= set(pipeline.router.labels)
    # The second build reuses every cached feature.
    cache = next((result.out_dir / "cache").glob("*.npz"))
    stamp = cache.stat().st_mtime_ns
    build_triage(data, tmp_path / "triage", spec, progress=False)
    assert cache.stat().st_mtime_ns == stamp
    files = [row["path"] for row in truth[:3]]
    assert main(["run", str(result.pipeline_file), *files, "--out", str(tmp_path / "run"),
                 "--truth", str(result.out_dir / "test-truth.csv"), "--quiet"]) == 0


def test_cli_refuses_a_missing_folder_and_names_absent_categories(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["triage-train", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) != 0
    assert "data folder not found" in capsys.readouterr().err
    _write_category(tmp_path / "data", "us-breast", 10, 1)
    assert main(["triage-train", str(tmp_path / "data"), "--out", str(tmp_path / "o"),
                 "--quiet"]) != 0
    captured = capsys.readouterr()
    assert "category us-thyroid absent" in captured.out
    assert "us-breast has 10" in captured.err
