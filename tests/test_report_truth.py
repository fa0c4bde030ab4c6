"""Reports that do not mislead (issue 16, finding 5): overlap with training data matched on
content, the exam threshold named on both scales, each score's own calibration note, every
printed warning in metrics.json, a plain-language summary and provenance in every report."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from cadx.cli import main
from cadx.decide.exam import exam_score_description, exam_threshold_text
from cadx.evaluate.levels import evaluate_level
from cadx.evaluate.report import (
    NOT_A_DEVICE,
    _calibration_note,
    summary_lines,
    write_report,
)
from cadx.io.dataset import CaseRef
from cadx.io.provenance import content_fingerprint, seen_before, synthetic_source
from cadx.workflows import training_overlap_warnings


def _scan(path: Path, content: bytes, mtime: float = 0.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=mtime) as handle:
        handle.write(content)
    return path


def _refs(folder: Path, contents: dict[str, bytes]) -> list[CaseRef]:
    return [CaseRef(pid, _scan(folder / f"{pid}.nii.gz", data), folder / f"{pid}_label.nii.gz")
            for pid, data in contents.items()]


def _bundle(train: list[CaseRef], with_fingerprints: bool = True) -> SimpleNamespace:
    summary = {"split": {"train": [r.patient_id for r in train], "validation": []}}
    if with_fingerprints:
        summary["image_sha256"] = {r.patient_id: content_fingerprint(r.image_path)
                                   for r in train}
    return SimpleNamespace(summary=summary)


def test_fingerprint_ignores_the_gzip_time_stamp(tmp_path):
    a = _scan(tmp_path / "a.nii.gz", b"voxels", mtime=1.0)
    b = _scan(tmp_path / "b.nii.gz", b"voxels", mtime=2.0)
    assert a.read_bytes() != b.read_bytes()
    assert content_fingerprint(a) == content_fingerprint(b)


def test_a_new_cohort_with_the_same_ids_is_not_called_training_data(tmp_path):
    train = _refs(tmp_path / "train", {"pancreas_001": b"one", "pancreas_002": b"two"})
    fresh = _refs(tmp_path / "fresh", {"pancreas_001": b"new one", "pancreas_002": b"new two"})
    warnings, overlap = training_overlap_warnings(_bundle(train), fresh)
    assert warnings == [] and overlap == []


def test_the_same_scan_under_another_name_is_recognised(tmp_path):
    train = _refs(tmp_path / "train", {"pancreas_001": b"one", "pancreas_002": b"two"})
    renamed = _refs(tmp_path / "other", {"site_b_17": b"two", "site_b_18": b"unseen"})
    warnings, overlap = training_overlap_warnings(_bundle(train), renamed)
    assert overlap == ["site_b_17"]
    assert len(warnings) == 1 and "same images (by content)" in warnings[0]


def test_an_old_bundle_without_fingerprints_says_same_ids_only(tmp_path):
    train = _refs(tmp_path / "train", {"pancreas_001": b"one"})
    fresh = _refs(tmp_path / "fresh", {"pancreas_001": b"other"})
    warnings, overlap = training_overlap_warnings(_bundle(train, with_fingerprints=False), fresh)
    assert overlap == [] and len(warnings) == 1
    assert "same ids as" in warnings[0] and "unknown" in warnings[0]
    assert seen_before({"x": fresh[0].image_path}, ["x"], None) == ([], ["x"])


def test_the_theta_threshold_is_printed_on_both_scales_with_their_names():
    text = exam_threshold_text(0.3955, "theta")
    assert "theta 0.3955" in text and "0.3267" in text and "1 - exp(-theta)" in text
    assert exam_threshold_text(0.4, "mean") == "0.4000"


def _level(name="patient", unit="patients", scores=None, y=None, **kwargs):
    y = np.array([0, 1] * 6) if y is None else y
    scores = np.linspace(0.1, 0.9, y.size) if scores is None else scores
    return evaluate_level(name, y, scores, 0.5, unit=unit, n_boot=50, **kwargs)


def test_each_report_describes_its_own_score_in_the_calibration_note():
    exam = _level("exams (theta)", score_kind="score",
                  score_description=exam_score_description("theta"))
    note = _calibration_note(exam)
    assert "1 - exp(-theta)" in note and "patches" not in note
    ct = _level(score_kind="score",
                score_description="the fraction of the patient's patches above the patch "
                                  "threshold")
    assert "patches above the patch threshold" in _calibration_note(ct)


def test_summary_says_whether_the_auc_tells_the_model_from_chance():
    y = np.array([0, 1] * 6)
    chance = _level(scores=np.array([0.5, 0.4, 0.6, 0.7, 0.3, 0.2, 0.8, 0.9, 0.45, 0.55,
                                     0.35, 0.65]), y=y)
    line = summary_lines([chance])[0]
    assert re.match(r"patient-level AUC 0\.\d\d \[0\.\d\d, (0|1)\.\d\d\]: not distinguishable "
                    r"from chance .* on 12 patients \(6 with cancer\)", line), line
    good = _level(scores=y * 0.8 + 0.1, y=y)
    assert "better than chance" in summary_lines([good])[0]


def test_metrics_json_holds_every_printed_warning_summary_and_provenance(tmp_path, capsys):
    data = tmp_path / "cohort"
    data.mkdir()
    (data / "dataset.json").write_text(json.dumps({"name": "cadx-synthetic-pancreas",
                                                   "reference": "synthetic"}))
    rows = ["patient_id,y_true,score,model"]
    rng = np.random.default_rng(0)
    for model in ("a", "b"):
        rows += [f"p{i},{i % 2},{rng.uniform():.3f},{model}" for i in range(12)]
    predictions = data / "predictions.csv"
    predictions.write_text("\n".join(rows) + "\n")
    out = tmp_path / "report"
    assert main(["report", str(predictions), "--out", str(out), "--n-boot", "50"]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["warnings"]) == 2
    for warning in metrics["warnings"]:
        assert " ".join(warning.split()) in printed
    assert printed.count("warning:") == 2
    assert metrics["summary"] and all(" ".join(s.split()) in printed for s in metrics["summary"])
    assert NOT_A_DEVICE in metrics["provenance"]
    assert any("synthetic" in line for line in metrics["provenance"])
    html = (out / "report.html").read_text()
    assert "Summary:" in html and "not a medical device" in html and "synthetic" in html


def test_synthetic_cohorts_are_recognised(tmp_path):
    from cadx.synth.us_lesions import UltrasoundCohortSpec, write_us_cohort

    us = write_us_cohort(tmp_path / "us", UltrasoundCohortSpec(n_patients=2, seed=3),
                         progress=False)
    assert "synthetic" in synthetic_source(us) and synthetic_source(us / "manifest.csv")
    assert synthetic_source(tmp_path) is None


def test_a_report_without_synthetic_data_does_not_say_so(tmp_path):
    write_report(tmp_path / "r", [_level()], title="t", meta={"dataset": str(tmp_path)})
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert not any("synthetic" in line for line in metrics["provenance"])
    assert metrics["provenance"][-1] == NOT_A_DEVICE


def test_2d_report_names_its_exam_score_threshold_scales_and_synthetic_data(tmp_path, capsys):
    from cadx.config import ImageModelConfig, ImageTrainConfig
    from cadx.image_bundle import load_image_bundle, save_image_bundle
    from cadx.io.images import load_image_dataset
    from cadx.synth.us_lesions import UltrasoundCohortSpec, write_us_cohort
    from cadx.train.image_pipeline import train_image_ensemble

    cohort = write_us_cohort(tmp_path / "us", UltrasoundCohortSpec(
        n_patients=16, images_per_patient=(2, 2), image_size_px=40, seed=5), progress=False)
    tiny = ImageModelConfig(size_px=32, width=0.125, seed=0, train=ImageTrainConfig(
        batch_size=16, max_epochs=1, early_stop_patience=1))
    outcome = train_image_ensemble(load_image_dataset(cohort, progress=False), ["resnet18"],
                                   tiny, progress=False, n_boot=20)
    model = save_image_bundle(outcome.bundle, tmp_path / "us.cadx")
    out = tmp_path / "report"
    capsys.readouterr()
    assert main(["evaluate-images", str(model), str(cohort / "manifest.csv"), "--out", str(out),
                 "--no-cam", "--n-boot", "20", "--quiet"]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    metrics = json.loads((out / "metrics.json").read_text())
    exam = metrics["levels"]["exams (theta)"]
    theta = load_image_bundle(model).exam_threshold
    assert f"theta {theta:.4f}" in exam["threshold_note"]
    assert f"{exam['threshold']:.4f}" in exam["threshold_note"]
    html = (out / "report.html").read_text()
    assert "1 - exp(-theta)" in html and "fraction of the patient&#x27;s patches" not in html
    assert any("synthetic ultrasound" in line for line in metrics["provenance"])
    assert metrics["warnings"] and all(" ".join(w.split()) in printed
                                       for w in metrics["warnings"])
