"""Evaluated levels and the report folder: values come from cadx.evaluate.stats, files are whole."""

import json
import re

import numpy as np
import pytest

from cadx.evaluate.cohort import cohort_levels, evaluate_cohort
from cadx.evaluate.levels import MAX_SUBGROUP_VALUES, MISSING_GROUP, evaluate_level
from cadx.evaluate.report import write_cohort_report, write_report
from cadx.evaluate.stats import (
    binary_metrics_with_ci,
    calibration_curve_ece,
    delong_auc_ci,
    wilson_interval,
)
from cadx.patches.cohort import PatchedCase
from cadx.patches.grid import PatchSet

N_BOOT = 200


def _patients(n: int = 80, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    scores = np.clip(0.5 + 0.25 * (y - 0.5) + rng.normal(0, 0.2, n), 0, 1)
    return y, scores


def _patches(n_patients: int = 30, per_patient: int = 12, seed: int = 1):
    rng = np.random.default_rng(seed)
    ids = np.repeat([f"p{i}" for i in range(n_patients)], per_patient)
    y = (rng.random(ids.size) < 0.3).astype(int)
    scores = np.clip(0.4 * y + rng.uniform(0, 0.6, ids.size), 0, 1)
    return ids, y, scores


def test_patient_level_matches_stats_functions():
    y, scores = _patients()
    level = evaluate_level("patient", y, scores, 0.5, n_boot=N_BOOT, seed=3)
    expected = binary_metrics_with_ci(y, scores > 0.5, scores, n_boot=N_BOOT, seed=3)
    assert level.metrics == {name: expected[name] for name in level.metrics}
    assert level.metrics["auc"] == delong_auc_ci(y, scores)
    tp = int(((scores > 0.5) & (y == 1)).sum())
    assert level.metrics["sensitivity"] == wilson_interval(tp, int(y.sum()))
    assert level.calibration == calibration_curve_ece(y, scores, n_bins=10)
    assert level.counts["tp"] + level.counts["fn"] == y.sum()
    assert sum(level.counts[k] for k in ("tp", "fp", "tn", "fn")) == y.size


def test_threshold_is_strict():
    y = np.array([0, 0, 1, 1])
    level = evaluate_level("x", y, [0.2, 0.5, 0.5, 0.9], 0.5, n_boot=N_BOOT)
    assert (level.counts["tp"], level.counts["fp"]) == (1, 0)  # 0.5 is not > 0.5


def test_patch_level_uses_patient_cluster_bootstrap():
    ids, y, scores = _patches()
    level = evaluate_level("patch", y, scores, 0.45, unit="patches", clusters=ids,
                           n_boot=N_BOOT, seed=1)
    expected = binary_metrics_with_ci(y, scores > 0.45, scores, clusters=ids, n_boot=N_BOOT,
                                      seed=1)
    assert level.metrics == {name: expected[name] for name in level.metrics}
    assert all(iv.method.startswith("cluster-bootstrap") for iv in level.metrics.values())
    assert level.counts["n_patients"] == 30


def test_subgroups_wilson_order_missing_and_too_many_values():
    y = np.array([1, 1, 1, 0, 0, 1, 0, 1])
    scores = np.array([0.9, 0.2, 0.8, 0.1, 0.7, 0.6, 0.3, 0.95])
    sizes = ["> 4 cm", "< 2 cm", "< 2 cm", None, None, "2-4 cm", "", "> 4 cm"]
    level = evaluate_level("patient", y, scores, 0.5, n_boot=N_BOOT,
                           subgroups={"size_bin": sizes, "id": [str(i) for i in range(8)]},
                           subgroup_order={"size_bin": ["< 2 cm", "2-4 cm", "> 4 cm"]})
    rows = level.subgroups["size_bin"]
    assert [r["group"] for r in rows] == ["< 2 cm", "2-4 cm", "> 4 cm", MISSING_GROUP]
    small = rows[0]
    assert (small["n"], small["positives"], small["detected"]) == (2, 2, 1)
    assert small["sensitivity"] == wilson_interval(1, 2).to_dict()
    assert small["specificity"]["estimate"] is None  # no negatives in this group
    missing = rows[-1]
    assert (missing["negatives"], missing["true_negatives"]) == (3, 2)
    assert missing["specificity"] == wilson_interval(2, 3).to_dict()
    assert "id" in level.subgroups  # 8 values: still a table

    many = [str(i) for i in range(MAX_SUBGROUP_VALUES + 1)]
    y2, s2 = _patients(len(many))
    wide = evaluate_level("p", y2, s2, 0.5, subgroups={"accession": many}, n_boot=N_BOOT)
    assert "accession" not in wide.subgroups and "'accession' not tabulated" in wide.notes[0]


def _outside_data_uris(text: str) -> str:
    return re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", text)


def test_report_folder_is_self_contained_and_matches_levels(tmp_path):
    y, scores = _patients()
    ids, py, pscores = _patches()
    levels = [evaluate_level("patch", py, pscores, 0.45, unit="patches", clusters=ids,
                             n_boot=N_BOOT),
              evaluate_level("patient", y, scores, 0.5, n_boot=N_BOOT, threshold_optimistic=True,
                             threshold_note="chosen on the evaluated data")]
    out = write_report(tmp_path / "rep", levels, title="<Test> & report",
                       meta={"dataset": "toy"}, warnings=["look out"])
    names = sorted(p.name for p in out.iterdir())
    assert names == ["calibration.png", "confusion.png", "metrics.json", "pr.png",
                     "report.html", "report.txt", "roc.png"]
    page = (out / "report.html").read_text()
    images = re.findall(r'<img [^>]*src="([^"]*)"', page)
    assert len(images) == 4 and all(s.startswith("data:image/png;base64,") for s in images)
    rest = _outside_data_uris(page).lower()
    assert "http" not in rest and "<script" not in rest and "<link" not in rest
    assert "&lt;Test&gt; &amp; report" in page and "look out" in page
    assert "optimistic" in page and "not a calibrated probability" not in page

    metrics = json.loads((out / "metrics.json").read_text())
    patch = metrics["levels"]["patch"]
    assert patch["metrics"]["auc"] == levels[0].metrics["auc"].to_dict()
    assert patch["metrics"]["sensitivity"]["method"].startswith("cluster-bootstrap")
    assert metrics["levels"]["patient"]["metrics"]["auc"] == delong_auc_ci(y, scores).to_dict()
    assert metrics["levels"]["patient"]["calibration"]["ece"] == pytest.approx(
        calibration_curve_ece(y, scores)["ece"])


def _case(pid: str, labels: list[int], diameter_mm: float | None, site: str) -> PatchedCase:
    n = len(labels)
    patches = PatchSet(np.zeros((n, 1, 2, 2), np.float32), np.full(n, pid),
                       np.zeros((n, 3), int), np.array(labels))
    return PatchedCase(pid, patches, diameter_mm is not None, diameter_mm, {"site": site})


def test_cohort_report_patch_and_patient_levels(tmp_path):
    rng = np.random.default_rng(2)
    cases, scores = [], []
    for i in range(16):
        tumour = i % 2 == 0
        labels = [1, 1, 0, 0, 0] if tumour else [0] * 5
        cases.append(_case(f"c{i}", labels, 6.0 + 3 * i if tumour else None, "AB"[i % 4 // 2]))
        scores.append(np.clip(0.5 * np.array(labels) + rng.uniform(0, 0.5, 5), 0, 1))
    evaluation = evaluate_cohort(cases, scores, 0.45, 0.3)
    levels = write_cohort_report(tmp_path / "rep", evaluation, title="cohort", meta={},
                                 n_boot=N_BOOT)
    patch, patient = levels
    assert patch.metrics["auc"].method.startswith("cluster-bootstrap")
    assert patient.metrics["auc"].method == "delong"
    sizes = [r["group"] for r in patient.subgroups["size_bin"]]
    assert sizes == ["< 1 cm", "1-2 cm", "2-4 cm", "> 4 cm", "no tumour"]
    assert [r["n"] for r in patient.subgroups["size_bin"]] == [1, 2, 3, 2, 8]
    no_tumour = patient.subgroups["size_bin"][-1]
    assert no_tumour["n"] == no_tumour["negatives"] == 8
    # The seed's split (< 2 cm) beside the four bins, each with its interval.
    seed_split = patient.subgroups["size_2cm"]
    assert [(r["group"], r["n"]) for r in seed_split] == [("< 2 cm", 3), (">= 2 cm", 5),
                                                           ("no tumour", 8)]
    assert "sensitivity" in seed_split[0]
    assert [r["size_bin"] for r in evaluation.by_tumour_size] == [
        "< 1 cm", "1-2 cm", "2-4 cm", "> 4 cm", "< 2 cm"]
    assert [r["group"] for r in patient.subgroups["site"]] == ["A", "B"]
    assert patient.score_kind == "score"
    page = (tmp_path / "rep" / "report.html").read_text()
    assert "a score, not a calibrated probability" in page
    header = (tmp_path / "rep" / "patients.csv").read_text().splitlines()[0]
    assert header.endswith(",site")
    assert cohort_levels(evaluation, n_boot=N_BOOT)[1].metrics == patient.metrics
