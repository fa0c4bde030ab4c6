"""Clinical columns (issue 17): the schema validator's messages, subgroup tables by clinical
columns (numeric in bins), the fusion model fitted on validation patients only, the refusal of
columns that leak the label, and the fused score in diagnose."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cadx.cli import main
from cadx.decide.fusion import FusionInputs, FusionModel, fit_fusion, refuse_leaking_columns
from cadx.errors import ConfigError, InputError
from cadx.evaluate.levels import MISSING_GROUP, evaluate_level
from cadx.evaluate.predictions import predictions_levels, read_predictions
from cadx.evaluate.subgroups import bin_values, clinical_subgroups, parse_subgroup_bins
from cadx.io.clinical import (
    ClinicalRow,
    load_clinical_schema,
    parse_clinical_items,
    validate_clinical,
)

SCHEMA = """\
columns:
  age: {type: numeric, unit: years, range: [0, 120]}
  ca125: {type: numeric, unit: U/mL, units: {kU/L: 1}, range: [0, 100000]}
  lesion_size_mm: {type: numeric, unit: mm, units: {cm: 10}, range: [1, 300]}
  device: {type: categorical, level: image}
  site: {type: categorical, values: [left, right]}
  risk_note: {type: categorical, leaks_label: true}
"""


@pytest.fixture()
def schema(tmp_path):
    path = tmp_path / "schema.yaml"
    path.write_text(SCHEMA)
    return load_clinical_schema(path)


def _rows(*cells: dict[str, str], patients: list[str] | None = None) -> list[ClinicalRow]:
    return [ClinicalRow(f"line {k + 2}", (patients or [f"P{k}" for k in range(len(cells))])[k],
                        row) for k, row in enumerate(cells)]


# --------------------------------------------------------------------------- validator


def test_clean_values_are_read_in_the_schema_unit_and_conversions_are_noted(schema) -> None:
    rows = _rows({"age": "54", "ca125": "35 kU/L", "lesion_size_mm": "2.5 cm"},
                 {"age": "61", "ca125": "12", "lesion_size_mm": "18"})
    result = validate_clinical(rows, "m.csv", schema)
    result.raise_errors()
    assert result.column_values("age") == [54.0, 61.0]
    assert result.column_values("ca125") == [35.0, 12.0]
    assert result.column_values("lesion_size_mm") == [25.0, 18.0]
    assert "column 'ca125': 1 value(s) in kU/L read as U/mL (x 1)" in result.notes
    assert "column 'lesion_size_mm': 1 value(s) in cm read as mm (x 10)" in result.notes


def test_each_problem_is_one_message_naming_file_column_and_row(schema) -> None:
    rows = _rows({"age": "fifty"}, {"age": "130"}, {"age": "1,5"}, {"age": "<5"},
                 {"ca125": "35 mg"}, {"site": "middle"})
    result = validate_clinical(rows, "m.csv", schema)
    assert result.errors == [
        "line 2, column 'age': 'fifty' is not a number",
        "line 3, column 'age': '130' is outside the plausible range 0..120 years "
        "(or pass --out-of-range missing)",
        "line 4, column 'age': '1,5' is not a number (decimal comma? write it with a point)",
        "line 5, column 'age': '<5' is not a number (a censored value such as '<5' is not a "
        "number: give the number or leave it blank)",
        "line 6, column 'ca125': unit 'mg' of '35 mg' is not accepted (accepted: U/mL, kU/L)",
        "line 7, column 'site': 'middle' is not one of left, right",
    ]
    with pytest.raises(InputError, match=r"^m\.csv: 6 clinical value problem\(s\): line 2, "
                                         r"column 'age': 'fifty' is not a number; .*; and 1 more$"):
        result.raise_errors()


def test_out_of_range_can_be_set_missing_with_a_warning_each(schema) -> None:
    rows = _rows({"age": "130"}, {"age": "40"})
    result = validate_clinical(rows, "m.csv", schema, out_of_range="missing")
    result.raise_errors()
    assert result.column_values("age") == [None, 40.0]
    assert result.set_missing == ["line 2, column 'age'"]
    assert ("line 2, column 'age': '130' is outside the plausible range 0..120 years; set "
            "missing (--out-of-range missing)") in result.warnings


def test_missing_values_are_reported_per_column_and_refused_where_required(tmp_path) -> None:
    rows = _rows({"age": "54"}, {"age": ""}, {"age": "NA"})
    result = validate_clinical(rows, "m.csv", None, numeric=["age"])
    assert result.warnings == ["column 'age': missing on 2 of 3 row(s) (line 3, line 4)"]
    assert not result.errors
    path = tmp_path / "required.yaml"
    path.write_text("columns:\n  age: {type: numeric, required: true}\n")
    result = validate_clinical(rows, "m.csv", load_clinical_schema(path))
    assert result.errors == ["column 'age': missing on 2 of 3 row(s) (line 3, line 4) and the "
                             "schema requires it"]


def test_units_in_the_header_and_conflicting_units(schema) -> None:
    rows = _rows({"ca125 [kU/L]": "35"}, {"ca125 [kU/L]": "40 U/mL"})
    result = validate_clinical(rows, "m.csv", schema)
    assert result.column_values("ca125")[0] == 35.0
    assert result.errors == ["line 3, column 'ca125': value unit 'U/mL' differs from the "
                             "header's 'kU/L'"]
    bad = validate_clinical(_rows({"age [months]": "600"}), "m.csv", schema)
    assert bad.errors == ["column 'age': header unit 'months' is not accepted (accepted: years)"]


def test_a_patient_whose_images_disagree_is_refused_for_patient_level_columns(schema) -> None:
    rows = _rows({"age": "54", "device": "GE"}, {"age": "55", "device": "Toshiba"},
                 patients=["P1", "P1"])
    result = validate_clinical(rows, "m.csv", schema)
    assert result.errors == [
        "line 3, column 'age': patient P1 has '55' here but '54' on line 2 (a patient-level "
        "column; declare 'level: image' in the schema if it varies per image)"]
    assert "device" in result.conflicts and result.patients["P1"]["device"] == "GE"


def test_asked_for_columns_that_are_absent_are_named(schema) -> None:
    result = validate_clinical(_rows({"age": "54"}), "m.csv", schema, columns=["bmi"])
    assert result.errors[0] == "no column 'bmi' (columns: age)"
    assert any("not in this file" in note for note in result.notes)


@pytest.mark.parametrize("text, message", [
    ("columns:\n  age: {type: number}\n", "column 'age': type must be numeric or categorical"),
    ("columns:\n  age: {type: numeric, range: [120, 0]}\n", "range low 120 is above high 0"),
    ("columns:\n  age: {type: numeric, rnage: [0, 1]}\n", "unknown key(s) rnage"),
    ("columns:\n  site: {type: categorical, unit: mm}\n", "a categorical column has no unit"),
    ("age: 1\n", "expected a mapping 'columns:'"),
])
def test_bad_schemas_are_refused_with_the_file_and_column(tmp_path, text, message) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_clinical_schema(path)
    assert str(caught.value).startswith(str(path)) and message in str(caught.value)


def test_clinical_items_parse_and_keep_commas_inside_values() -> None:
    assert parse_clinical_items(["age=54,device=GE Logiq 7, 10 MHz"]) == {
        "age": "54", "device": "GE Logiq 7, 10 MHz"}
    with pytest.raises(ConfigError, match="NAME=VALUE"):
        parse_clinical_items(["54"])


# --------------------------------------------------------------------------- subgroups


def test_numeric_bins_are_half_open_with_open_ends() -> None:
    assert bin_values([0.0, 19.9, 20.0, 45.0, -1.0, None], (0, 20, 40), "mm") == [
        "[0, 20) mm", "[0, 20) mm", "[20, 40) mm", ">= 40 mm", "< 0 mm", MISSING_GROUP]
    assert parse_subgroup_bins(["Lesion_Size_mm=0,20,40"]) == {"lesion_size_mm": (0, 20, 40)}
    for bad in ("lesion_size_mm", "x=20,10", "x=a,b"):
        with pytest.raises(ConfigError, match="--subgroup-bins"):
            parse_subgroup_bins([bad])
    with pytest.raises(ConfigError, match="column 'age' is numeric: give its bins"):
        clinical_subgroups(["age"], {}, {"age": [1.0]}, kinds={"age": "numeric"})


def test_subgroup_table_of_a_hand_made_cohort_with_bins_and_aucs() -> None:
    # 12 patients: small lesions (< 20 mm) scored well, large ones badly; device as is.
    y = [1, 1, 1, 0, 0, 0, 1, 1, 1, 0, 0, 0]
    scores = [0.9, 0.8, 0.7, 0.2, 0.1, 0.3, 0.4, 0.2, 0.6, 0.5, 0.7, 0.3]
    size = [5.0, 12.0, 15.0, 8.0, 19.0, 3.0, 25.0, 30.0, 45.0, 22.0, 50.0, None]
    device = ["GE", "GE", "Toshiba", "GE", "Toshiba", "GE"] * 2
    groups, order = clinical_subgroups(["device"], {"lesion_size_mm": (0, 20, 40)},
                                       {"device": device, "lesion_size_mm": size},
                                       units={"lesion_size_mm": "mm"})
    level = evaluate_level("patients", y, scores, 0.45, subgroups=groups, subgroup_order=order)
    by_size = {row["group"]: row for row in level.subgroups["lesion_size_mm"]}
    assert list(by_size) == ["[0, 20) mm", "[20, 40) mm", ">= 40 mm", MISSING_GROUP]
    small = by_size["[0, 20) mm"]
    assert (small["n"], small["positives"], small["detected"]) == (6, 3, 3)
    assert small["auc"]["estimate"] == 1.0 and small["auc"]["low"] is not None
    large = by_size["[20, 40) mm"]
    assert (large["n"], large["positives"], large["detected"]) == (3, 2, 0)
    assert large["auc"]["estimate"] == 0.0 and large["auc"]["low"] is None  # one negative: no CI
    assert by_size[">= 40 mm"]["n"] == 2 and by_size[MISSING_GROUP]["auc"]["estimate"] is None
    assert [row["group"] for row in level.subgroups["device"]] == ["GE", "Toshiba"]


def test_report_command_bins_a_numeric_column_and_names_bad_cells(tmp_path) -> None:
    path = tmp_path / "predictions.csv"
    rows = [("P1", 1, 0.9, 12), ("P2", 1, 0.8, 25), ("P3", 0, 0.2, 8), ("P4", 0, 0.3, 31),
            ("P5", 1, 0.7, 15), ("P6", 0, 0.4, 22)]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["patient_id", "y_true", "score", "lesion_size_mm"])
        writer.writerows(rows)
    assert main(["report", str(path), "--out", str(tmp_path / "r"), "--n-boot", "50",
                 "--subgroup-bins", "lesion_size_mm=0,20"]) == 0
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    table = metrics["levels"]["predictions"]["subgroups"]["lesion_size_mm"]
    assert [(g["group"], g["n"]) for g in table] == [("[0, 20)", 3), (">= 20", 3)]
    path.write_text(path.read_text().replace("P4,0,0.3,31", "P4,0,0.3,big"))
    with pytest.raises(InputError, match=r"model 'predictions' row 4, column 'lesion_size_mm': "
                                         r"'big' is not a number"):
        predictions_levels(read_predictions(path), subgroup_bins={"lesion_size_mm": (0, 20)})


# --------------------------------------------------------------------------- fusion


def _synthetic_inputs(n: int = 60, seed: int = 0) -> FusionInputs:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    age = 45 + 12 * y + rng.normal(0, 8, n)
    score = np.clip(0.5 + 0.15 * (y - 0.5) + rng.normal(0, 0.15, n), 0.01, 0.99)
    device = np.where(rng.random(n) < 0.5, "GE", "Toshiba")
    return FusionInputs([f"P{k}" for k in range(n)], y.tolist(), score.tolist(),
                        {"age": age.tolist(), "device": device.tolist()})


def test_fusion_fit_stores_plain_numbers_and_scores_the_same_after_a_round_trip() -> None:
    inputs = _synthetic_inputs()
    model, notes = fit_fusion(inputs, ["age", "device"], {"age": "numeric",
                                                          "device": "categorical"})
    assert notes == []
    assert model.feature_names() == ["logit(exam score)", "age", "device=GE", "device=Toshiba"]
    assert model.coefficients["age"] > 0  # age carries the label in these data
    assert model.fitted_on["auc_fusion"] > model.fitted_on["auc_image_only"]
    again = FusionModel.from_dict(json.loads(json.dumps(model.to_dict())))
    values = {"age": 60.0, "device": "GE"}
    assert again.predict(0.4, values) == pytest.approx(model.predict(0.4, values))
    assert again.missing_reason({"age": 60.0}) == "the fusion model needs device: missing"
    assert "'Siemens' was not among the validation patients' values (GE, Toshiba)" in \
        again.missing_reason({"age": 60.0, "device": "Siemens"})


def test_patients_with_a_missing_value_are_left_out_of_the_fit_and_counted() -> None:
    inputs = _synthetic_inputs()
    inputs.clinical["age"][3] = None
    model, notes = fit_fusion(inputs, ["age"], {"age": "numeric"})
    assert notes == ["1 of 60 validation patients left out of the fusion fit: a value of age "
                     "is missing"]
    assert model.fitted_on["n_patients"] == 59


def test_columns_that_leak_the_answer_are_refused_by_name_with_the_reason() -> None:
    with pytest.raises(ConfigError) as caught:
        refuse_leaking_columns(["age", "birads", "histology", "label", "risk_note"],
                               leaks_label=["risk_note"], schema_source="schema.yaml")
    assert str(caught.value) == (
        "refused as fusion input(s), they leak the answer: 'birads' (BI-RADS is the "
        "radiologist's malignancy category for these same images: a fusion on it measures the "
        "reader, not the model); 'histology' (it is the biopsy result that defines benign vs "
        "malignant); 'label' (it is the label column itself); 'risk_note' (the schema in "
        "schema.yaml marks it leaks_label)")
    inputs = _synthetic_inputs()
    inputs.clinical["answer"] = ["yes" if y else "no" for y in inputs.y_true]
    with pytest.raises(ConfigError, match="'answer' \\(its values separate the validation "
                                          "patients' labels perfectly\\)"):
        fit_fusion(inputs, ["answer"], {"answer": "categorical"})


def test_too_few_patients_of_a_class_is_refused() -> None:
    inputs = _synthetic_inputs(n=8)
    with pytest.raises(ConfigError, match="at least 5 malignant validation patients"):
        fit_fusion(inputs, ["age"], {"age": "numeric"})


# --------------------------------------------------------------------------- 2D bundle


def _image_cohort(folder: Path, n: int = 36) -> tuple[Path, dict[str, list[str]]]:
    """One small PNG per patient; label 1 every other patient; age tracks the label; splits
    12 train / 12 validation / 12 test (as a bundle's summary would list them)."""
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True, exist_ok=True)
    rows, split = [], {"train": [], "validation": [], "test": []}
    for k in range(n):
        pid, label = f"P{k:02d}", k % 2
        image = rng.normal(120 - 40 * label, 25, (40, 40))
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(folder / f"{pid}_1.png")
        part = ("train", "validation", "test")[k % 3]
        split[part].append(pid)
        age = 45 + 8 * label + (7 * k) % 20
        rows.append((f"{pid}_1.png", pid, label, age, ("GE", "Toshiba")[k % 4 // 2],
                     (3, 5)[label], 8 + 3 * k))
    manifest = folder / "manifest.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "patient_id", "label", "age", "device", "birads",
                         "lesion_size_mm"])
        writer.writerows(rows)
    return manifest, split


@pytest.fixture()
def image_model(tmp_path):
    from cadx.image_bundle import load_image_bundle, save_image_bundle
    from tests.serve_support import write_image_bundle

    manifest, split = _image_cohort(tmp_path / "data")
    path = write_image_bundle(tmp_path / "model.cadx", organ=None)
    bundle = load_image_bundle(path)
    bundle.summary = {"split": split}
    save_image_bundle(bundle, path)
    return path, manifest, split


def test_fusion_is_fitted_on_the_validation_patients_only(image_model, tmp_path) -> None:
    from cadx.decide.image_fusion import fit_image_fusion
    from cadx.image_bundle import load_image_bundle
    from cadx.io.images import load_image_dataset

    path, manifest, split = image_model
    bundle = load_image_bundle(path)
    fit = fit_image_fusion(bundle, load_image_dataset(manifest, progress=False), ["age"],
                           progress=False)
    assert fit.fusion.fitted_on["patient_ids"] == sorted(split["validation"])
    assert {r.patient_id for r in fit.records} == set(split["validation"])
    # Test and training patients' values cannot move the fit: make them absurd and refit.
    text = manifest.read_text().splitlines()
    changed = [line if line.split(",")[1] in split["validation"] or line.startswith("path")
               else line.replace(line.split(",")[3], "999", 1) for line in text]
    other = tmp_path / "changed.csv"
    other.write_text("\n".join(changed) + "\n")
    for line in changed[1:]:
        pid = line.split(",")[1]
        src = manifest.parent / f"{pid}_1.png"
        (tmp_path / f"{pid}_1.png").write_bytes(src.read_bytes())
    refit = fit_image_fusion(bundle, load_image_dataset(other, progress=False), ["age"],
                             progress=False)
    assert refit.fusion.coefficients == fit.fusion.coefficients


def test_fuse_then_evaluate_and_diagnose_show_both_scores(image_model, tmp_path,
                                                          capsys) -> None:
    path, manifest, split = image_model
    fused = tmp_path / "fused.cadx"
    assert main(["fuse", str(path), str(manifest), "--clinical", "birads", "--out",
                 str(fused), "--quiet"]) == 2
    assert "'birads' (BI-RADS is the radiologist's" in capsys.readouterr().err
    assert main(["fuse", str(path), str(manifest), "--clinical", "age,device", "--out",
                 str(fused), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "fitted on 12 validation patients (6 malignant)" in out
    test_csv = tmp_path / "test.csv"
    with manifest.open() as source, test_csv.open("w") as target:
        lines = source.read().splitlines()
        target.write("\n".join([lines[0]] + [line for line in lines[1:]
                                             if line.split(",")[1] in split["test"]]) + "\n")
    for pid in split["test"]:
        (tmp_path / f"{pid}_1.png").write_bytes((manifest.parent / f"{pid}_1.png").read_bytes())
    report = tmp_path / "report"
    assert main(["evaluate-images", str(fused), str(test_csv), "--out", str(report),
                 "--subgroups", "device", "--subgroup-bins", "lesion_size_mm=0,50",
                 "--n-boot", "50", "--quiet"]) == 0
    metrics = json.loads((report / "metrics.json").read_text())
    assert list(metrics["levels"]) == ["images", "exams (theta)",
                                       "exams + age, device (fusion)"]
    comparison = metrics["comparisons"][0]
    assert comparison["model_b"] == "exams (theta)" and comparison["n"] == 12
    assert 0.0 <= comparison["p_value"] <= 1.0
    exams = metrics["levels"]["exams (theta)"]["subgroups"]
    assert [g["group"] for g in exams["lesion_size_mm"]] == ["[0, 50)", ">= 50"]
    image = tmp_path / "data" / f"{split['test'][0]}_1.png"
    result = tmp_path / "result.json"
    assert main(["diagnose", str(fused), str(image), "--clinical", "age=61,device=GE",
                 "--out", str(result)]) == 0
    fusion = json.loads(result.read_text())["fusion"]
    assert fusion["values"] == {"age": 61.0, "device": "GE"}
    assert 0.0 < fusion["score"] < 1.0 and fusion["decision"] is not None
    assert main(["diagnose", str(fused), str(image), "--clinical", "age=61",
                 "--out", str(result)]) == 0
    fusion = json.loads(result.read_text())["fusion"]
    assert fusion["score"] is None
    assert fusion["not_fused"] == ("image-only score given: the fusion model needs device: "
                                   "missing")


def test_schema_groups_put_categories_in_named_groups_and_say_so(tmp_path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("columns:\n  histology:\n    type: categorical\n    groups:\n"
                    "      carcinoma: [invasive ductal carcinoma, invasive lobular carcinoma]\n")
    rows = _rows({"histology": "invasive ductal carcinoma"}, {"histology": "fibroadenoma"},
                 {"histology": "invasive lobular carcinoma"})
    result = validate_clinical(rows, "m.csv", load_clinical_schema(path))
    assert result.column_values("histology") == ["carcinoma", "fibroadenoma", "carcinoma"]
    assert result.notes == ["column 'histology': 2 value(s) reported in the schema's groups "
                            "(carcinoma)"]


def test_the_busbra_schema_of_the_docs_loads_and_marks_its_leaking_columns() -> None:
    schema = load_clinical_schema(Path(__file__).resolve().parents[1] / "docs"
                                  / "busbra_clinical_schema.yaml")
    assert schema.leaking == ("histology", "birads")
    assert dict(schema.column("histology").groups)["ductal carcinoma in situ"] == \
        "carcinoma in situ"
