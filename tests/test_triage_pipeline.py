"""The pipeline file (init, validation) and `cadx run`: QC drops with reasons, routing with the
confidence floor, every analyser of the category, merged per image and per patient."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cadx.cli import main
from cadx.decide.roc import OperatingPoint
from cadx.errors import ConfigError
from cadx.image_bundle import ImageModelBundle, NetworkSpec, save_image_bundle
from cadx.models.backbones import build_backbone
from cadx.triage.bundle import TriageBundle, save_triage_bundle
from cadx.triage.pipeline_file import init_pipeline, load_pipeline
from cadx.triage.router import UNROUTED
from cadx.triage.run import collect_images, read_inputs, run_pipeline, write_run
from cadx.triage.truth import evaluate_against_truth, read_truth

CATEGORIES = ("a", "b", "c")
FLAGS = ("target", "unreadable")


def _point(threshold: float) -> OperatingPoint:
    return OperatingPoint(threshold, 1.0, 1.0, 1.0, 1.0, (0.0, 1.0), (0.0, 1.0))


@pytest.fixture
def models(tmp_path: Path) -> dict[str, Path]:
    torch.manual_seed(0)
    router = TriageBundle("router", CATEGORIES, "resnet18", 0.125, 32, 3,
                          build_backbone("resnet18", 3, 3, 0.125).state_dict(),
                          confidence_floor=0.6)
    qc = TriageBundle("qc", FLAGS, "resnet18", 0.125, 32, 3,
                      build_backbone("resnet18", 3, 2, 0.125).state_dict(),
                      flag_points={"target": _point(0.5), "unreadable": _point(0.5)})
    analyser = ImageModelBundle(
        method="cnn-ensemble", size_px=32, channels=1,
        networks=[NetworkSpec("resnet18", 0.125, 0.8, 1.0)],
        state_dicts=[build_backbone("resnet18", 1, 1, 0.125).state_dict()],
        image_operating_point=_point(0.4), exam_operating_point=_point(0.3),
        name="lesion-model")
    return {"router": save_triage_bundle(router, tmp_path / "router.cadx"),
            "qc": save_triage_bundle(qc, tmp_path / "qc.cadx"),
            "analyser": save_image_bundle(analyser, tmp_path / "lesion.cadx")}


def _fake_predict(self, images, model=None):
    """Router and QC outputs keyed to image brightness, so routing is known in advance:
    black -> not target; < 0.3 -> a, 0.4-0.6 -> b, > 0.7 -> c, otherwise no clear winner."""
    mean = images.mean(axis=(1, 2, 3))
    if self.kind == "qc":
        return np.stack([np.where(mean < 0.05, 0.1, 0.9), np.full(len(mean), 0.2)], axis=1)
    out = np.full((len(mean), 3), 1 / 3)
    for k, (lo, hi) in enumerate(((0.05, 0.3), (0.4, 0.6), (0.7, 1.01))):
        out[(mean >= lo) & (mean < hi)] = np.eye(3)[k] * 0.9 + 0.1 / 3
    return out


BRIGHTNESS = {"P1_1.png": 0.2, "P1_2.png": 0.5, "P2_1.png": 0.25, "P2_2.png": 0.0,
              "P3_1.png": 0.9, "P3_2.png": 0.35}
EXPECTED = {"P1_1.png": "a", "P1_2.png": "b", "P2_1.png": "a", "P2_2.png": "dropped",
            "P3_1.png": "c", "P3_2.png": UNROUTED}


def _inputs(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, value in BRIGHTNESS.items():
        Image.fromarray(np.full((40, 48), round(value * 255), np.uint8)).save(folder / name)
    return folder


def _pipeline_file(tmp_path: Path, models: dict[str, Path]) -> Path:
    return init_pipeline(tmp_path / "pipeline.yaml", models["router"], qc_file=models["qc"],
                         analysers=[("a", models["analyser"]), ("a", models["analyser"]),
                                    ("b", models["analyser"])])


def test_init_writes_every_category_with_bundle_thresholds_and_loads_back(tmp_path, models):
    path = _pipeline_file(tmp_path, models)
    text = path.read_text()
    assert text.startswith("# cadx triage pipeline") and "drop_if: [not target, unreadable]" \
        in text
    pipeline = load_pipeline(path)
    assert {c: [a.spec.name for a in group] for c, group in pipeline.analysers.items()} == \
        {"a": ["lesion", "lesion-2"], "b": ["lesion-3"], "c": []}
    assert pipeline.analysers["a"][0].image_threshold == 0.4
    assert pipeline.analysers["a"][0].exam_threshold == 0.3
    assert pipeline.confidence_floor == 0.6 and [str(r) for r in pipeline.drop_rules] == \
        ["not target", "unreadable"]
    with pytest.raises(ConfigError, match="has no category 'd'"):
        init_pipeline(tmp_path / "p2.yaml", models["router"], analysers=[("d", models["analyser"])])


@pytest.mark.parametrize(("edit", "message"), [
    (lambda t: t.replace("categories:", "categoris:"), r"unknown key\(s\) categoris"),
    (lambda t: t.replace("  c: []", "  d: []"), "the router has no category 'd'"),
    (lambda t: t.replace("not target", "not doppler"), "names flag 'doppler'"),
    (lambda t: t.replace("confidence_floor: 0.6", "confidence_floor: 1.5"), "outside"),
    (lambda t: t.replace("lesion.cadx", "gone.cadx", 1), r"categories.a\[0\]: bundle gone.cadx"),
    (lambda t: t.replace("name: lesion-2", "name: lesion"), "name 'lesion' used twice"),
    (lambda t: t.replace("router:", "router: [", 1), "not a readable YAML file"),
])
def test_bad_pipeline_files_name_the_file_and_the_entry(tmp_path, models, edit, message):
    path = _pipeline_file(tmp_path, models)
    path.write_text(edit(path.read_text()))
    with pytest.raises(Exception, match=message) as info:
        load_pipeline(path)
    assert "pipeline.yaml" in str(info.value)


def test_run_drops_routes_and_merges_every_analyser_finding(tmp_path, models, monkeypatch):
    monkeypatch.setattr(TriageBundle, "predict", _fake_predict)
    pipeline = load_pipeline(_pipeline_file(tmp_path, models))
    paths = collect_images([_inputs(tmp_path / "in")])
    result = run_pipeline(pipeline, paths, read_inputs(paths, progress=False))
    by_name = {o.path.name: o for o in result.images}
    for name, expected in EXPECTED.items():
        outcome = by_name[name]
        decided = outcome.status if expected in ("dropped", UNROUTED) else \
            outcome.routing.category
        assert decided == expected, name
    assert [f["analyser"] for f in by_name["P1_1.png"].findings] == ["lesion", "lesion-2"]
    assert [f["analyser"] for f in by_name["P1_2.png"].findings] == ["lesion-3"]
    assert by_name["P3_1.png"].findings == [] and by_name["P3_2.png"].findings == []
    assert by_name["P2_2.png"].qc.reasons == ("not target (p 0.100 <= 0.500)",)
    assert set(by_name["P3_2.png"].routing.scores) == set(CATEGORIES)
    patients = {p["patient_id"]: p for p in result.patients}
    assert sorted(patients["P1"]["categories"]) == ["a", "b"]
    assert [f["analyser"] for f in patients["P1"]["categories"]["a"]["findings"]] == \
        ["lesion", "lesion-2"]
    assert patients["P2"]["dropped"] == [{"image": "P2_2.png",
                                          "reasons": ["not target (p 0.100 <= 0.500)"]}]
    assert patients["P3"]["categories"]["c"]["note"] == "no analyser registered for this " \
                                                        "category"
    assert patients["P3"]["unrouted"][0]["image"] == "P3_2.png"
    assert {m["analyser"] for m in result.models["analysers"]} == {"lesion", "lesion-2",
                                                                   "lesion-3"}
    assert all(len(m["sha256"]) == 64 for m in result.models["analysers"])
    assert result.summary()["routed_by_category"] == {"a": 2, "b": 1, "c": 1}

    truth_csv = tmp_path / "in" / "truth.csv"
    rows = [("P1_1.png", "a", 1), ("P1_2.png", "b", 1), ("P2_1.png", "b", 1),
            ("P2_2.png", "a", 0), ("P3_1.png", "c", 1), ("P3_2.png", "c", 1)]
    truth_csv.write_text("path,category,target,unreadable\n" +
                         "".join(f"{p},{c},{t},0\n" for p, c, t in rows))
    evaluation = evaluate_against_truth(
        paths, [o.routing for o in result.images], [o.status == "dropped" for o in
                                                    result.images],
        [o.qc.reasons for o in result.images], read_truth(truth_csv), CATEGORIES,
        pipeline.drop_rules)
    routing = evaluation["routing"]
    assert routing["images"] == 5 and routing["routed_correctly"]["count"] == 3
    assert routing["routed_wrongly"]["count"] == 1 and routing["unrouted"]["count"] == 1
    assert evaluation["qc"]["removed_of_to_remove"]["count"] == 1
    assert evaluation["qc"]["good_images_removed"]["count"] == 0
    out = write_run(result, tmp_path / "results", evaluation)
    saved = json.loads((out / "results.json").read_text())
    assert saved["summary"]["dropped"] == 1 and len(saved["images"]) == 6
    table = list(csv.DictReader((out / "images.csv").open()))
    assert [r["status"] for r in table].count("routed") == 4


def test_cli_run_writes_results_and_bad_input_is_one_line(tmp_path, models, capsys):
    pipeline = _pipeline_file(tmp_path, models)
    inputs = _inputs(tmp_path / "in")
    assert main(["run", str(pipeline), str(inputs), "--out", str(tmp_path / "res"),
                 "--quiet"]) == 0
    assert (tmp_path / "res" / "results.json").is_file()
    capsys.readouterr()
    (inputs / "broken.png").write_bytes(b"not a png")
    assert main(["run", str(pipeline), str(inputs), "--out", str(tmp_path / "res2"),
                 "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cadx: error:") and "broken.png" in err and "\n" not in err
    assert not (tmp_path / "res2").exists()
    assert main(["run", str(tmp_path / "missing.yaml"), str(inputs), "--out",
                 str(tmp_path / "res3")]) == 2
    assert "missing.yaml: pipeline file not found" in capsys.readouterr().err


class _BrightnessAnalyser:
    """A registered analyser type of its own: the image's mean brightness as its score."""

    def __init__(self, spec):
        self.spec = spec

    def analyse(self, images):
        return np.array([float(np.mean(image)) for image in images])

    def image_findings(self, probabilities):
        return [{"analyser": self.spec.name, "probability": float(p), "finding": "bright"}
                for p in probabilities]

    def exam(self, patient_ids, probabilities):
        return {pid: {"analyser": self.spec.name, "finding": "bright"} for pid in patient_ids}

    def model_info(self):
        return {"analyser": self.spec.name, "type": self.spec.type}


def test_registered_analyser_types_are_usable_from_the_pipeline_file(tmp_path, models,
                                                                     monkeypatch):
    from cadx.triage import analysers

    monkeypatch.setattr(analysers, "_TYPES", dict(analysers._TYPES))
    monkeypatch.setattr(TriageBundle, "predict", _fake_predict)
    analysers.register_analyser_type("brightness", _BrightnessAnalyser)
    with pytest.raises(ConfigError, match="already registered"):
        analysers.register_analyser_type("brightness", _BrightnessAnalyser)
    path = _pipeline_file(tmp_path, models)
    path.write_text(path.read_text().replace(
        "  c: []", "  c:\n  - {name: shine, type: brightness, bundle: lesion.cadx}"))
    pipeline = load_pipeline(path)
    paths = collect_images([_inputs(tmp_path / "in")])
    result = run_pipeline(pipeline, paths, read_inputs(paths, progress=False))
    found = {o.path.name: o.findings for o in result.images}
    assert found["P3_1.png"] == [{"analyser": "shine", "probability": pytest.approx(0.9, abs=0.01),
                                  "finding": "bright"}]
    path.write_text(path.read_text().replace("type: brightness", "type: glow"))
    with pytest.raises(ConfigError, match="unknown type 'glow'"):
        load_pipeline(path)
