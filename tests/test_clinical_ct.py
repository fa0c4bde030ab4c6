"""Clinical columns beside a CT patch model (issue 17): `cadx fuse` fits the fusion of the
patient score with clinical columns on the bundle's validation patients only, the bundle keeps
it through save and load, `cadx evaluate` reports the fused level beside the image-only one with
DeLong's comparison, and `diagnose` and the service show both scores. A tiny toy cohort and a
patch CNN with random weights keep it fast."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from cadx.bundle import load_bundle, read_manifest, save_bundle
from cadx.cli import main
from cadx.config import DecideConfig
from cadx.decide.ct_fusion import fit_ct_fusion
from cadx.io.clinical import load_clinical_schema
from cadx.io.dataset import load_dataset
from tests.conftest import write_toy_dataset
from tests.serve_support import write_ct_bundle

SCHEMA = """columns:
  age:   {type: numeric, unit: years, range: [0, 120]}
  ca125: {type: numeric, unit: U/mL, units: {kU/L: 1}, range: [0, 100000]}
"""


def _clinical(k: int) -> tuple[float, float]:
    """Age and CA125 of toy patient k: both higher with a tumour (every other patient), with
    overlap so neither separates the classes alone."""
    tumour = k % 2 == 0
    return 50 + 8 * tumour + (7 * k) % 17, 20 + 25 * tumour + (11 * k) % 40


def _write_cases_csv(dataset: Path, split: dict[str, list[str]],
                     absurd_outside_validation: bool = False) -> None:
    with (dataset / "cases.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["patient_id", "age", "ca125 [kU/L]"])
        for k in range(36):
            pid = f"toy_{k:03d}"
            age, ca125 = _clinical(k)
            if absurd_outside_validation and pid not in split["validation"]:
                age, ca125 = 999, -5  # outside the schema's ranges: read, it would be refused
            writer.writerow([pid, age, ca125])


@pytest.fixture(scope="module")
def ct_cohort(tmp_path_factory):
    """36 toy patients (half with a tumour) with age and CA125 in cases.csv; a random-weight
    patch bundle whose summary splits them 12 train / 12 validation / 12 test."""
    root = tmp_path_factory.mktemp("clinical_ct")
    dataset = write_toy_dataset(root / "data", n_patients=36)
    split = {part: [f"toy_{k:03d}" for k in range(36) if k % 3 == index]
             for index, part in enumerate(("train", "validation", "test"))}
    _write_cases_csv(dataset, split)
    model = write_ct_bundle(root / "model.cadx")
    bundle = load_bundle(model)
    bundle.summary = {"split": split}
    save_bundle(bundle, model)
    schema = root / "schema.yaml"
    schema.write_text(SCHEMA)
    return root, dataset, model, split, schema


def test_fusion_is_fitted_on_the_validation_patients_only(ct_cohort, tmp_path) -> None:
    root, dataset, model, split, schema_path = ct_cohort
    bundle, schema = load_bundle(model), load_clinical_schema(schema_path)
    fit = fit_ct_fusion(bundle, load_dataset(dataset), dataset, ["age", "ca125"],
                        schema=schema, progress=False)
    assert fit.fusion.fitted_on["patient_ids"] == sorted(split["validation"])
    assert {r.patient_id for r in fit.records} == set(split["validation"])
    assert fit.fusion.fitted_on["patient_score"] == "fraction"
    assert fit.fusion.units == {"age": "years", "ca125": "U/mL"}
    # Training and test patients' values cannot move the fit: make them absurd (outside the
    # schema's ranges, so reading them would be refused) and refit.
    other = write_toy_dataset(tmp_path / "data", n_patients=36)
    _write_cases_csv(other, split, absurd_outside_validation=True)
    refit = fit_ct_fusion(bundle, load_dataset(other), other, ["age", "ca125"], schema=schema,
                          progress=False)
    assert refit.fusion.coefficients == fit.fusion.coefficients
    assert refit.fusion.threshold == fit.fusion.threshold


def test_a_fused_bundle_round_trips_and_an_old_one_loads_without_fusion(ct_cohort,
                                                                        tmp_path) -> None:
    root, dataset, model, split, schema_path = ct_cohort
    bundle = load_bundle(model)
    assert bundle.fusion is None and "fusion" not in read_manifest(model)
    bundle.fusion = fit_ct_fusion(bundle, load_dataset(dataset), dataset, ["age"],
                                  progress=False).fusion
    again = load_bundle(save_bundle(bundle, tmp_path / "fused.cadx"))
    assert again.fusion.to_dict() == bundle.fusion.to_dict()
    values = {"age": 61.0}
    assert again.fusion.predict(0.3, values) == bundle.fusion.predict(0.3, values)
    assert again.patient_threshold == bundle.patient_threshold


def _test_manifest(root: Path, dataset: Path, split: dict[str, list[str]]) -> Path:
    """The test patients as a CSV manifest with their clinical columns."""
    manifest = root / "test.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "label", "patient_id", "age", "ca125"])
        for pid in split["test"]:
            age, ca125 = _clinical(int(pid.removeprefix("toy_")))
            writer.writerow([dataset / "imagesTr" / f"{pid}.nii.gz",
                             dataset / "labelsTr" / f"{pid}.nii.gz", pid, age, ca125])
    return manifest


@pytest.fixture(scope="module")
def fused_ct(ct_cohort):
    root, dataset, model, split, schema = ct_cohort
    fused = root / "fused.cadx"
    assert main(["fuse", str(model), str(dataset), "--clinical", "age,ca125",
                 "--clinical-schema", str(schema), "--out", str(fused), "--quiet"]) == 0
    return fused


def test_fuse_refuses_leaks_and_a_dataset_without_the_validation_patients(ct_cohort, fused_ct,
                                                                         tmp_path,
                                                                         capsys) -> None:
    root, dataset, model, split, schema = ct_cohort
    capsys.readouterr()
    assert main(["fuse", str(model), str(dataset), "--clinical", "histology", "--out",
                 str(tmp_path / "x.cadx"), "--quiet"]) == 2
    assert "'histology' (it is the biopsy result" in capsys.readouterr().err
    test_only = _test_manifest(tmp_path, dataset, split)
    assert main(["fuse", str(model), str(test_only), "--clinical", "age", "--out",
                 str(tmp_path / "x.cadx"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "none of the model's 12 validation patients is in this dataset" in err
    assert not (tmp_path / "x.cadx").exists()


def test_evaluate_reports_the_fused_level_and_its_delong_comparison(ct_cohort, fused_ct,
                                                                    capsys) -> None:
    root, dataset, model, split, schema = ct_cohort
    report = root / "report"
    assert main(["evaluate", str(fused_ct), str(_test_manifest(root, dataset, split)),
                 "--out", str(report), "--n-boot", "50", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "patients + age, ca125 (fusion)" in out and "DeLong" in out
    metrics = json.loads((report / "metrics.json").read_text())
    assert list(metrics["levels"]) == ["patch", "patient", "patients + age, ca125 (fusion)"]
    assert metrics["levels"]["patients + age, ca125 (fusion)"]["n"] == 12
    comparison = metrics["comparisons"][0]
    assert comparison["model_a"] == "patients + age, ca125 (fusion)"
    assert comparison["model_b"] == "patient" and comparison["n"] == 12
    assert 0.0 <= comparison["p_value"] <= 1.0
    assert "fitted on 12 validation patients" in metrics["meta"]["fusion"]
    # The fusion was fitted on the bundle's own patient score: another one is not fused.
    bundle = load_bundle(fused_ct)
    topk = DecideConfig("topk")
    bundle.patient_operating_points[topk.score_name] = bundle.patient_operating_point
    other_score = save_bundle(bundle, root / "fused_topk.cadx")
    assert main(["evaluate", str(other_score), str(_test_manifest(root, dataset, split)),
                 "--out", str(root / "report_topk"), "--n-boot", "50", "--quiet",
                 "--patient-score", "topk"]) == 0
    metrics = json.loads((root / "report_topk" / "metrics.json").read_text())
    assert list(metrics["levels"]) == ["patch", "patient"] and not metrics["comparisons"]
    assert metrics["meta"]["notes"] == [f"fusion not evaluated: it was fitted on the patient "
                                        f"score fraction, not {topk.score_name} "
                                        "(--patient-score)"]


def test_diagnose_shows_both_scores_with_the_values_and_says_why_without(ct_cohort, fused_ct,
                                                                         tmp_path) -> None:
    root, dataset, model, split, schema = ct_cohort
    pid = split["test"][0]
    image = dataset / "imagesTr" / f"{pid}.nii.gz"
    mask = dataset / "labelsTr" / f"{pid}.nii.gz"
    result = tmp_path / "result.json"
    assert main(["diagnose", str(fused_ct), str(image), "--organ-mask", str(mask),
                 "--clinical", "age=61,ca125=35 kU/L", "--out", str(result)]) == 0
    answer = json.loads(result.read_text())
    fusion = answer["fusion"]
    assert fusion["values"] == {"age": 61.0, "ca125": 35.0}
    assert fusion["image_only_score"] == pytest.approx(answer["patient_score"], abs=1e-6)
    assert 0.0 < fusion["score"] < 1.0
    assert fusion["decision"] in ("cancer suspected", "no cancer detected")
    assert main(["diagnose", str(fused_ct), str(image), "--organ-mask", str(mask),
                 "--clinical", "age=61", "--out", str(result)]) == 0
    answer = json.loads(result.read_text())
    assert answer["fusion"]["score"] is None and answer["patient_score"] is not None
    assert answer["fusion"]["not_fused"] == ("image-only score given: the fusion model needs "
                                             "ca125: missing")
    # A model without a fusion model ignores the values, saying so.
    assert main(["diagnose", str(model), str(image), "--organ-mask", str(mask),
                 "--clinical", "age=61", "--out", str(result)]) == 0
    answer = json.loads(result.read_text())
    assert answer["fusion"] is None
    assert answer["notes"] == ["clinical values ignored: this model has no fusion model "
                               "(cadx fuse adds one)"]


def test_the_service_fuses_a_ct_model_and_ignores_values_for_one_without(ct_cohort, fused_ct,
                                                                         tmp_path) -> None:
    from cadx.serve.app import create_app
    from cadx.serve.registry import load_model_folder

    root, dataset, model, split, schema = ct_cohort
    models = tmp_path / "models"
    models.mkdir()
    (models / "fused_ct.cadx").write_bytes(fused_ct.read_bytes())
    (models / "plain_ct.cadx").write_bytes(model.read_bytes())
    client = TestClient(create_app(load_model_folder(models)))
    listed = {m["id"]: m for m in client.get("/v1/models").json()["models"]}
    assert [c["name"] for c in listed["fused_ct"]["fusion"]["columns"]] == ["age", "ca125"]
    assert listed["plain_ct"]["fusion"] is None
    pid = split["test"][0]
    files = [("files", (f"{pid}.nii.gz", (dataset / "imagesTr" / f"{pid}.nii.gz").read_bytes())),
             ("organ_mask", ("mask.nii.gz", (dataset / "labelsTr" / f"{pid}.nii.gz")
                             .read_bytes()))]
    response = client.post("/v1/diagnose?model=fused_ct",
                           data={"clinical": "age=61,ca125=35"}, files=files)
    assert response.status_code == 200, response.text
    fusion = response.json()["fusion"]
    assert fusion["values"] == {"age": 61.0, "ca125": 35.0} and fusion["score"] is not None
    response = client.post("/v1/diagnose?model=plain_ct", data={"clinical": "age=61"},
                           files=files)
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["fusion"] is None
    assert "clinical values ignored" in result["details"]["notes"][0]
