"""Quality control: the QC manifest, multi-label training with per-flag Youden thresholds,
drop rules with reasons, and `clean` (a copy without the dropped images, nothing deleted)."""

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from cadx.config import ImageModelConfig, ImageTrainConfig
from cadx.decide.roc import OperatingPoint
from cadx.errors import ConfigError, InputError, SplitError
from cadx.models.backbones import build_backbone
from cadx.train.image_fit import fit_image_model, predict_image_probabilities
from cadx.triage.bundle import TriageBundle
from cadx.triage.clean import clean_folder
from cadx.triage.qc import DropRule, load_qc_manifest, parse_drop_rules, qc_decisions
from cadx.triage.train import train_qc

FLAGS = ("target", "unreadable")


def _point(threshold: float) -> OperatingPoint:
    return OperatingPoint(threshold, 1.0, 1.0, 1.0, 1.0, (0.0, 1.0), (0.0, 1.0))


def _qc_bundle(thresholds=(0.5, 0.7)) -> TriageBundle:
    torch.manual_seed(0)
    return TriageBundle("qc", FLAGS, "resnet18", 0.125, 32, 3,
                        build_backbone("resnet18", 3, 2, 0.125).state_dict(),
                        flag_points={f: _point(t) for f, t in zip(FLAGS, thresholds, strict=True)})


def _two_flags(n: int, seed: int):
    """Flag 0: a bright square on the left; flag 1: on the right (independent)."""
    rng = np.random.default_rng(seed)
    images = rng.normal(0.3, 0.05, (n, 1, 24, 24)).astype(np.float32)
    flags = np.stack([np.arange(n) % 2, (np.arange(n) // 2) % 2], axis=1)
    for i, (left, right) in enumerate(flags):
        y = rng.integers(4, 20)
        if left:
            images[i, 0, y - 3:y + 3, 1:7] += 0.5
        if right:
            images[i, 0, y - 3:y + 3, 17:23] += 0.5
    return np.clip(images, 0, 1), flags


def test_multilabel_training_learns_each_flag():
    torch.manual_seed(0)
    x_train, y_train = _two_flags(80, 0)
    x_val, y_val = _two_flags(32, 1)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.AdaptiveMaxPool2d((1, 3)), nn.Flatten(), nn.Linear(24, 2))
    config = ImageTrainConfig(batch_size=16, max_epochs=8, learning_rate=1e-2, augment=False)
    model, history = fit_image_model(net, x_train, y_train, x_val, y_val, config,
                                     task="multilabel", progress=False)
    probabilities = predict_image_probabilities(model, x_val, task="multilabel")
    assert probabilities.shape == (32, 2)
    assert history.best_validation_auc > 0.9
    from sklearn.metrics import roc_auc_score

    assert min(roc_auc_score(y_val[:, k], probabilities[:, k]) for k in range(2)) > 0.85
    with pytest.raises(SplitError, match=r"label column\(s\) \[1\] all 0 or all 1"):
        fit_image_model(net, x_train, y_train * [1, 0], x_val, y_val, config,
                        task="multilabel", progress=False)


def test_drop_rules_give_each_reason_with_probability_and_threshold():
    bundle = _qc_bundle()
    rules = parse_drop_rules(["not target", "unreadable"], FLAGS)
    assert rules == (DropRule("target", True), DropRule("unreadable"))
    decisions = qc_decisions(bundle, np.array([[0.9, 0.1], [0.2, 0.1], [0.3, 0.8],
                                               [0.8, 0.7]]), rules)
    assert [d.dropped for d in decisions] == [False, True, True, False]  # 0.7 is not > 0.7
    assert decisions[1].reasons == ("not target (p 0.200 <= 0.500)",)
    assert decisions[2].reasons == ("not target (p 0.300 <= 0.500)",
                                    "unreadable (p 0.800 > 0.700)")
    assert decisions[0].raised == {"target": True, "unreadable": False}
    with pytest.raises(ConfigError, match="names flag 'doppler'"):
        parse_drop_rules(["doppler"], FLAGS)
    with pytest.raises(ConfigError, match="is not 'FLAG' or 'not FLAG'"):
        parse_drop_rules(["target or unreadable"], FLAGS)


def _write_images(folder: Path, names, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(folder / name)


def test_qc_manifest_errors_name_the_file_and_row(tmp_path):
    _write_images(tmp_path, ["a_1.png"])
    manifest = tmp_path / "qc.csv"
    manifest.write_text("path,patient_id,target\na_1.png,a,1\n")
    with pytest.raises(InputError, match=r"qc.csv: missing column\(s\) unreadable"):
        load_qc_manifest(manifest, FLAGS)
    manifest.write_text("path,patient_id,target,unreadable\na_1.png,a,1,yes\nb.png,b,0,0\n")
    with pytest.raises(InputError, match=r"line 2: unreadable is 'yes'.*line 3: b.png not found"):
        load_qc_manifest(manifest, FLAGS)
    manifest.write_text("path,patient_id,target,unreadable\na_1.png,a,1,0\n")
    data = load_qc_manifest(manifest, FLAGS)
    assert data.flags.tolist() == [[1, 0]] and data.records[0].label == 1


def test_train_qc_sets_a_youden_threshold_per_flag(tmp_path):
    from cadx.synth.categories import CategoryCohortSpec, write_category_cohort

    root = write_category_cohort(tmp_path / "tri", CategoryCohortSpec(
        patients_per_category=9, images_per_patient=(1, 1), unreadable_fraction=0.0,
        image_size_px=40, seed=1), progress=False)
    rows = list(csv.DictReader((root / "qc.csv").open()))
    # Patients 1-3 train, 4-6 validation, 7-9 test: each part has a 3D-rendering patient.
    split_of = {str(k): ("train", "validation", "test")[(k - 1) // 3] for k in range(1, 10)}
    with (root / "qc-split.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "patient_id", "target", "is3d", "split"])
        writer.writerows([r["path"], r["patient_id"], r["target"], r["is3d"],
                          split_of[r["patient_id"][-1]]] for r in rows)
    data = load_qc_manifest(root / "qc-split.csv", ("target", "is3d"))
    config = ImageModelConfig(size_px=32, channels=3, width=0.125,
                              train=ImageTrainConfig(batch_size=8, max_epochs=1))
    outcome = train_qc(data, config, progress=False)
    bundle = outcome.bundle
    assert bundle.kind == "qc" and set(bundle.flag_points) == {"target", "is3d"}
    assert all(0.0 <= bundle.threshold(f) <= 1.0 for f in bundle.labels)
    assert set(outcome.test) == {"target", "is3d"}
    assert outcome.test["is3d"]["positives"] == 1  # the one 3D-rendering test patient


def test_clean_copies_kept_images_reports_every_drop_and_keeps_the_input(tmp_path,
                                                                         monkeypatch):
    source = tmp_path / "data"
    _write_images(source / "benign", ["p1_1.png", "p2_1.png"], seed=1)
    _write_images(source / "malignant", ["p3_1.png"], seed=2)
    before = {p: p.read_bytes() for p in source.rglob("*.png")}
    bundle = _qc_bundle()
    # The QC network's output is fixed here; what is tested is what clean does with it.
    monkeypatch.setattr(TriageBundle, "predict", lambda self, images, model=None:
                        np.array([[0.9, 0.1], [0.1, 0.1], [0.9, 0.95]]))
    rules = parse_drop_rules(["not target", "unreadable"], FLAGS)
    result = clean_folder(source, bundle, rules, tmp_path / "clean", tmp_path / "clean.csv",
                          progress=False)
    assert sorted(p.relative_to(tmp_path / "clean").as_posix()
                  for p in (tmp_path / "clean").rglob("*.png")) == ["benign/p1_1.png"]
    assert {p: p.read_bytes() for p in source.rglob("*.png")} == before
    report = list(csv.DictReader((tmp_path / "clean.csv").open()))
    assert [(r["path"], r["status"]) for r in report] == [
        ("benign/p1_1.png", "kept"), ("benign/p2_1.png", "dropped"),
        ("malignant/p3_1.png", "dropped")]
    assert report[2]["reasons"] == "unreadable (p 0.950 > 0.700)"
    assert report[1]["p_target"] == "0.1000"
    assert result.removed_by_rule == {"not target": 1, "unreadable": 1}
    with pytest.raises(ConfigError, match="not an empty folder"):
        clean_folder(source, bundle, rules, tmp_path / "clean", tmp_path / "c.csv")
    with pytest.raises(ConfigError, match="outside the input folder"):
        clean_folder(source, bundle, rules, source / "cleaned", tmp_path / "c.csv")


def test_cli_clean_and_train_qc_errors_are_one_line(tmp_path, capsys, monkeypatch):
    from cadx.cli import main
    from cadx.triage.bundle import save_triage_bundle

    source = tmp_path / "data"
    _write_images(source, ["p1_1.png", "p2_1.png"])
    qc_path = save_triage_bundle(_qc_bundle(), tmp_path / "qc.cadx")
    monkeypatch.setattr(TriageBundle, "predict", lambda self, images, model=None:
                        np.array([[0.9, 0.1], [0.1, 0.1]]))
    assert main(["clean", str(source), "--qc", str(qc_path), "--out", str(tmp_path / "out"),
                 "--report", str(tmp_path / "r.csv"), "--drop-if", "not target",
                 "--quiet"]) == 0
    assert "kept 1, dropped 1" in capsys.readouterr().out
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["p1_1.png"]
    assert main(["clean", str(source), "--qc", str(qc_path), "--out", str(tmp_path / "o2"),
                 "--report", str(tmp_path / "r2.csv"), "--drop-if", "is3d"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cadx: error: --drop-if: drop rule 'is3d' names flag 'is3d'")
    assert not (tmp_path / "o2").exists() and not (tmp_path / "r2.csv").exists()
    (tmp_path / "qc.csv").write_text("path,patient_id,target\np1_1.png,p1,1\n")
    assert main(["train-qc", str(tmp_path / "qc.csv"), "--flags", "target,unreadable",
                 "--out", str(tmp_path / "m.cadx")]) == 2
    assert "qc.csv: missing column(s) unreadable" in capsys.readouterr().err
