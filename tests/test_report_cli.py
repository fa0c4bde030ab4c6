"""`cadx report` and `cadx compare` on a predictions CSV, and every bad input they refuse."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from cadx.cli import main
from cadx.evaluate.stats import delong_auc_ci, delong_test

FAST = ["--n-boot", "200"]


def _write(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _two_models(n: int = 60, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    scores = {name: np.round(1 / (1 + np.exp(-(rng.normal(0, 1, n) + gap * (2 * y - 1)))), 4)
              for name, gap in (("cnn", 1.5), ("radiomics", 0.7))}
    return y, scores


@pytest.fixture
def predictions(tmp_path) -> Path:
    y, scores = _two_models()
    rows = [[f"p{i:02d}", y[i], scores[m][i], m, "< 2 cm" if y[i] and i % 2 else
             ("2-4 cm" if y[i] else ""), "AB"[i % 2]]
            for m in scores for i in range(y.size)]
    return _write(tmp_path / "predictions.csv",
                  ["patient_id", "y_true", "score", "model", "size_bin", "site"], rows)


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("cadx: error: ")
    assert "Traceback" not in err and len(err.splitlines()) == 1
    return err


def test_report_per_model_with_comparison(predictions, tmp_path, capsys):
    out = tmp_path / "rep"
    assert main(["report", str(predictions), "--out", str(out), *FAST]) == 0
    printed = capsys.readouterr().out
    assert "chosen on the evaluated data" in printed and "optimistic" in printed
    assert "AUC comparisons" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["levels"]) == ["cnn", "radiomics"]
    cnn = metrics["levels"]["cnn"]
    assert cnn["threshold_optimistic"] and cnn["n"] == 60
    y, scores = _two_models()
    assert cnn["metrics"]["auc"] == delong_auc_ci(y, scores["cnn"]).to_dict()
    assert [r["group"] for r in cnn["subgroups"]["size_bin"]] == ["< 2 cm", "2-4 cm",
                                                                  "(missing)"]
    assert [r["group"] for r in cnn["subgroups"]["site"]] == ["A", "B"]
    (comparison,) = metrics["comparisons"]
    assert comparison["p_value"] == delong_test(y, scores["cnn"], scores["radiomics"])["p_value"]
    page = (out / "report.html").read_text()
    assert "Model comparisons" in page and "optimistic" in page


def test_report_at_given_threshold_without_model_column(tmp_path, capsys):
    y, scores = _two_models()
    path = _write(tmp_path / "scores.csv", ["patient_id", "y_true", "score"],
                  [[f"p{i}", y[i], scores["cnn"][i]] for i in range(y.size)])
    out = tmp_path / "rep"
    assert main(["report", str(path), "--out", str(out), "--threshold", "0.5", *FAST]) == 0
    assert "optimistic" not in capsys.readouterr().out
    level = json.loads((out / "metrics.json").read_text())["levels"]["scores"]
    assert level["threshold"] == 0.5 and level["threshold_note"] == "given with --threshold"
    assert level["tp"] == int(((scores["cnn"] > 0.5) & (y == 1)).sum())


def test_report_several_rows_per_patient_uses_cluster_bootstrap(tmp_path, capsys):
    rng = np.random.default_rng(4)
    rows = [[f"p{i}", int(rng.random() < 0.4), round(float(rng.random()), 3)]
            for i in range(20) for _ in range(5)]
    path = _write(tmp_path / "patches.csv", ["patient_id", "y_true", "score"], rows)
    out = tmp_path / "rep"
    assert main(["report", str(path), "--out", str(out), "--threshold", "0.5", *FAST]) == 0
    level = json.loads((out / "metrics.json").read_text())["levels"]["patches"]
    assert level["n"] == 100 and level["n_patients"] == 20
    assert all(m["method"].startswith("cluster-bootstrap") for m in level["metrics"].values())


def test_compare_prints_and_writes_delong(predictions, tmp_path, capsys):
    out = tmp_path / "cmp.json"
    assert main(["compare", str(predictions), "--models", "radiomics,cnn",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    y, scores = _two_models()
    expected = delong_test(y, scores["radiomics"], scores["cnn"])
    assert result["p_value"] == expected["p_value"]
    assert (result["auc_a"], result["auc_b"], result["z"]) == (
        expected["auc_a"], expected["auc_b"], expected["z"])
    assert f"{expected['auc_a']:.3f}" in printed and f"{expected['difference']:+.3f}" in printed


def _bad_csv(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "bad.csv"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


GOOD = "patient_id,y_true,score\na,0,0.1\nb,1,0.8\nc,0,0.3\nd,1,0.7\n"


@pytest.mark.parametrize(("text", "message"), [
    ("patient_id,y_true,score\na,0,0.1\nb,1,nan\n", "bad.csv: column 'score' holds NaN at row 2"),
    ("patient_id,y_true,score\na,0,1.5\nb,1,0.9\n",
     "column 'score' holds a value outside [0, 1] at row 1"),
    ("patient_id,y_true,score\na,0,0.1\nb,1,\n", "column 'score' is not numeric at row 2"),
    ("patient_id,y_true,score\na,1,0.1\nb,1,0.9\n", "only class 1 is present"),
    ("patient_id,y_true,score\na,0,0.1\nb,yes,0.9\n",
     "column 'y_true' must hold 0/1 labels, found 'yes' at row 2"),
    ("patient_id,y_true\na,0\nb,1\n", "bad.csv: missing column(s) 'score'"),
    ("patient_id,y_true,score\na,0,0.1\nb,1\n", "row 2 has 2 fields but the header has 3"),
    ("patient_id,y_true,score\n,0,0.1\nb,1,0.9\n", "column 'patient_id' is empty at row 1"),
    ("", "bad.csv: empty file"),
    ("patient_id,y_true,score\n", "bad.csv: no data rows"),
    (b"patient_id,y_true,score\n\xff\xfe,0,0.1\n", "bad.csv: unreadable CSV"),
    ("patient_id,y_true,score,model\na,0,0.1,m1\nb,1,0.9,m1\nc,1,0.9,m2\n",
     "model 'm2': only class 1 is present"),
])
def test_report_refuses_bad_input_and_writes_nothing(tmp_path, capsys, text, message):
    out = tmp_path / "rep"
    assert main(["report", str(_bad_csv(tmp_path, text)), "--out", str(out)]) == 2
    assert message in _error_line(capsys)
    assert not out.exists()
    assert not list(tmp_path.rglob("*.part"))


def test_report_missing_file_and_bad_threshold(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "r")]) == 2
    assert "nope.csv: file not found" in _error_line(capsys)
    good = _bad_csv(tmp_path, GOOD)
    assert main(["report", str(good), "--out", str(tmp_path / "r"), "--threshold", "1.5"]) == 2
    assert "--threshold must lie in [0, 1]" in _error_line(capsys)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(("text", "models", "message"), [
    (GOOD, "a,b", "no 'model' column"),
    ("patient_id,y_true,score,model\na,0,0.1,x\nb,1,0.9,x\na,0,0.2,y\nb,1,0.8,y\n",
     "x,zzz", "unknown model 'zzz' in --models; the file has 'x', 'y'"),
    ("patient_id,y_true,score,model\na,0,0.1,x\nb,1,0.9,x\na,0,0.2,y\nc,1,0.8,y\n", "x,y",
     "scored different patients: 1 only in 'x' (b), 1 only in 'y' (c)"),
    ("patient_id,y_true,score,model\na,0,0.1,x\nb,1,0.9,x\nc,1,0.9,x\n"
     "a,0,0.2,y\nb,1,0.8,y\nc,0,0.3,y\n", "x,y", "y_true differs between models"),
    ("patient_id,y_true,score,model\na,0,0.1,x\na,1,0.9,x\nb,0,0.2,y\nb,1,0.8,y\n", "x,y",
     "model 'x' has several rows for patient(s) a"),
    (GOOD, "a", "--models needs exactly two model names"),
])
def test_compare_refuses(tmp_path, capsys, text, models, message):
    out = tmp_path / "cmp.json"
    assert main(["compare", str(_bad_csv(tmp_path, text)), "--models", models,
                 "--out", str(out)]) == 2
    assert message in _error_line(capsys)
    assert not out.exists()
