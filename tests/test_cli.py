"""The commands as a user runs them: train -> diagnose -> evaluate, and every bad input."""

import json
from pathlib import Path

import numpy as np
import pytest

from cadx.cli import main
from tests.conftest import toy_case, write_toy_dataset, write_volume

TOY_OPTIONS = ["--patch-size", "16", "--stride", "8", "--epochs", "3", "--batch-size", "32",
               "--reduce-lr-patience", "1", "--early-stop-patience", "2", "--quiet"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    dataset = write_toy_dataset(root / "data", n_patients=12)
    model = root / "model.cadx"
    assert main(["train", str(dataset), "--out", str(model), *TOY_OPTIONS]) == 0
    return dataset, model


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("cadx: error: ")
    assert "Traceback" not in err and len(err.splitlines()) == 1
    return err


def test_train_writes_a_bundle_with_thresholds_and_split(trained):
    from cadx.bundle import load_bundle

    _, model = trained
    bundle = load_bundle(model)
    split = bundle.summary["split"]
    assert not set(split["train"]) & (set(split["validation"]) | set(split["test"]))
    assert 0.0 <= bundle.patch_threshold <= 1.0
    assert bundle.config.patches.size_px == 16
    assert bundle.summary["counts"]["train"]["patches"] > 0
    assert bundle.summary["test"]["patient"]["n"] == len(split["test"])


def test_diagnose_writes_json(trained, tmp_path):
    dataset, model = trained
    image = dataset / "imagesTr" / "toy_000.nii.gz"
    label = dataset / "labelsTr" / "toy_000.nii.gz"
    out = tmp_path / "result.json"
    assert main(["diagnose", str(model), str(image), "--organ-mask", str(label),
                 "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["patient_id"] == "toy_000"
    assert 0.0 <= result["patient_score"] <= 1.0
    assert result["decision"] in ("cancer suspected", "no cancer detected")
    assert result["n_positive_patches"] == len(result["positive_patches"])
    assert result["organ_mask"] == "given"
    assert set(result["timings_s"]) >= {"read", "preprocess", "patches", "score"}


def test_evaluate_writes_report(trained, tmp_path, capsys):
    dataset, model = trained
    out = tmp_path / "report"
    assert main(["evaluate", str(model), str(dataset), "--out", str(out), "--quiet",
                 "--n-boot", "200"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["levels"]["patient"]["n"] == 12
    assert metrics["levels"]["patch"]["metrics"]["auc"]["method"].startswith("cluster-bootstrap")
    for name in ("roc.png", "pr.png", "confusion.png", "calibration.png", "report.html"):
        assert (out / name).stat().st_size > 1000
    assert len((out / "patients.csv").read_text().splitlines()) == 13
    # The whole toy set includes the training scans (matched by content): the user is warned,
    # and metrics.json holds the same warning.
    printed = " ".join(capsys.readouterr().out.split())
    assert "same images (by content) as scans used to train" in printed
    assert metrics["warnings"] and all(" ".join(w.split()) in printed
                                       for w in metrics["warnings"])


def test_diagnose_without_organ_mask_says_why(trained, capsys):
    dataset, model = trained
    assert main(["diagnose", str(model), str(dataset / "imagesTr" / "toy_000.nii.gz")]) == 2
    assert "--organ-mask is required" in _error_line(capsys)


def test_missing_image(trained, tmp_path, capsys):
    _, model = trained
    assert main(["diagnose", str(model), str(tmp_path / "nope.nii.gz"),
                 "--organ-mask", str(tmp_path / "m.nii.gz")]) == 2
    assert "nope.nii.gz: file not found" in _error_line(capsys)


def test_unreadable_nifti(trained, tmp_path, capsys):
    _, model = trained
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"this is not a nifti file" * 10)
    assert main(["diagnose", str(model), str(bad), "--organ-mask", str(bad)]) == 2
    assert "bad.nii.gz: not a readable image" in _error_line(capsys)


def _pair(tmp_path: Path, image: np.ndarray, label: np.ndarray, label_spacing=(2.5, 1.0, 1.0)):
    return (write_volume(tmp_path / "img.nii.gz", image),
            write_volume(tmp_path / "lab.nii.gz", label, spacing_zyx=label_spacing))


def test_shape_mismatch(trained, tmp_path, capsys):
    _, model = trained
    image, label = toy_case(np.random.default_rng(0), True)
    img, lab = _pair(tmp_path, image, label[:, :40])
    assert main(["diagnose", str(model), str(img), "--organ-mask", str(lab)]) == 2
    assert "lab.nii.gz: shape (8, 40, 48) (z,y,x) does not match image" in _error_line(capsys)


def test_spacing_mismatch(trained, tmp_path, capsys):
    _, model = trained
    image, label = toy_case(np.random.default_rng(0), True)
    img, lab = _pair(tmp_path, image, label, label_spacing=(5.0, 1.0, 1.0))
    assert main(["diagnose", str(model), str(img), "--organ-mask", str(lab)]) == 2
    assert "lab.nii.gz: spacing (5, 1, 1) mm (z,y,x) does not match" in _error_line(capsys)


def test_label_without_organ(trained, tmp_path, capsys):
    _, model = trained
    image, label = toy_case(np.random.default_rng(0), False)
    img, lab = _pair(tmp_path, image, np.zeros_like(label))
    assert main(["diagnose", str(model), str(img), "--organ-mask", str(lab)]) == 2
    assert "lab.nii.gz: label map has no organ voxels" in _error_line(capsys)


def test_nan_voxels(trained, tmp_path, capsys):
    _, model = trained
    image, label = toy_case(np.random.default_rng(0), False)
    image = image.astype(np.float32)
    image[2, 3, 4] = np.nan
    img, lab = _pair(tmp_path, image, label)
    assert main(["diagnose", str(model), str(img), "--organ-mask", str(lab)]) == 2
    assert "img.nii.gz: 1 voxels are NaN or infinite" in _error_line(capsys)


def test_patch_larger_than_image_refused_and_nothing_written(tmp_path, capsys):
    dataset = write_toy_dataset(tmp_path / "d", n_patients=6)
    out = tmp_path / "m.cadx"
    options = ["--patch-size", "64", "--quiet"]
    assert main(["train", str(dataset), "--out", str(out), *options]) == 2
    assert "patch size 64 px is larger than the image (48 x 48 px)" in _error_line(capsys)
    assert not out.exists() and not list(tmp_path.glob(".m.cadx*"))


def test_one_class_cohort_refused_and_nothing_written(tmp_path, capsys):
    dataset = write_toy_dataset(tmp_path / "d", n_patients=6)
    labels = dataset / "labelsTr"
    for path in labels.glob("*.nii.gz"):  # remove every tumour
        from cadx.io.volumes import read_volume

        label, _ = read_volume(path)
        label[label == 2] = 1
        write_volume(path, label)
    out = tmp_path / "m.cadx"
    assert main(["train", str(dataset), "--out", str(out), *TOY_OPTIONS]) == 2
    assert "need both tumour and tumour-free" in _error_line(capsys)
    assert not out.exists()


def test_empty_training_split_refused(tmp_path, capsys):
    dataset = write_toy_dataset(tmp_path / "d", n_patients=4)
    assert main(["train", str(dataset), "--out", str(tmp_path / "m.cadx"), *TOY_OPTIONS]) == 2
    assert "split has" in _error_line(capsys)


def test_dataset_without_dataset_json(tmp_path, capsys):
    assert main(["train", str(tmp_path), "--out", str(tmp_path / "m.cadx")]) == 2
    assert "no dataset.json" in _error_line(capsys)


def test_csv_manifest_with_missing_file(tmp_path, capsys):
    manifest = tmp_path / "cases.csv"
    manifest.write_text("image,label\nmissing.nii.gz,missing_label.nii.gz\n")
    assert main(["train", str(manifest), "--out", str(tmp_path / "m.cadx")]) == 2
    assert "missing.nii.gz: listed in" in _error_line(capsys)


def test_corrupt_bundle(tmp_path, capsys):
    bad = tmp_path / "m.cadx"
    bad.write_bytes(b"PK\x03\x04 garbage")
    for name in ("x.nii.gz", "m.nii.gz"):  # inputs are checked to exist before the bundle
        (tmp_path / name).write_bytes(b"")
    assert main(["diagnose", str(bad), str(tmp_path / "x.nii.gz"), "--organ-mask",
                 str(tmp_path / "m.nii.gz")]) == 2
    assert "m.cadx: not a cadx model bundle" in _error_line(capsys)
