"""The 2D track end to end on tiny synthetic ultrasound cohorts: training, bundles, exam
decisions, Grad-CAM, the CLI, and bad inputs."""

from __future__ import annotations

import json
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cadx.cli import main
from cadx.config import ImageModelConfig, ImageTrainConfig
from cadx.decide.exam import exam_probability, exam_scores
from cadx.diagnose.cam import grad_cam, write_overlay_png
from cadx.diagnose.images import diagnose_image_files, diagnose_images
from cadx.errors import BundleError, ConfigError, InputError, SplitError
from cadx.features.texture import texture_feature_names
from cadx.image_bundle import (
    ensemble_specs,
    load_any_bundle,
    load_image_bundle,
    save_image_bundle,
)
from cadx.io.images import fit_image, load_image_dataset, read_image
from cadx.models.backbones import build_backbone
from cadx.synth.us_lesions import UltrasoundCohortSpec, write_us_cohort
from cadx.train.image_pipeline import train_feature_model, train_image_ensemble

TINY = ImageModelConfig(size_px=32, width=0.125, seed=0,
                        train=ImageTrainConfig(batch_size=16, max_epochs=2,
                                               early_stop_patience=2))


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("us")
    return write_us_cohort(out, UltrasoundCohortSpec(n_patients=30, images_per_patient=(2, 3),
                                                     image_size_px=48, seed=3), progress=False)


@pytest.fixture(scope="module")
def ensemble(cohort):
    dataset = load_image_dataset(cohort, progress=False)
    return train_image_ensemble(dataset, ["resnet18", "darknet19"], TINY, progress=False,
                                n_boot=50)


def test_exam_probability_keeps_the_order_of_theta():
    theta = np.array([0.0, 0.1, 2.0, 13.8])
    mapped = exam_probability(theta, "theta")
    assert np.allclose(mapped, 1 - np.exp(-theta))
    assert np.all(np.diff(mapped) > 0) and mapped[0] == 0.0 and mapped[-1] < 1.0
    p = [0.2, 0.9]
    geometric = 1 - np.sqrt(0.8 * 0.1)
    assert exam_probability([exam_scores(["a", "a"], p)["a"]])[0] == pytest.approx(geometric)


def test_ensemble_weights_are_validation_aucs_normalised():
    specs = ensemble_specs(["resnet18", "darknet19"], [0.5, 0.5], [0.6, 0.9])
    assert [s.weight for s in specs] == pytest.approx([0.4, 0.6])


def test_ensemble_training_splits_by_patient_and_weights_by_auc(ensemble):
    bundle = ensemble.bundle
    split = bundle.summary["split"]
    assert not set(split["train"]) & set(split["validation"])
    assert not set(split["test"]) & (set(split["train"]) | set(split["validation"]))
    aucs = [s.validation_auc for s in bundle.networks]
    assert [s.weight for s in bundle.networks] == pytest.approx(np.array(aucs) / sum(aucs))
    assert [level.name for level in ensemble.test_levels] == ["images", "exams (theta)"]
    images = ensemble.data.images["validation"]
    assert images.shape[1:] == (1, 32, 32)
    # The ensemble probability is the AUC-weighted mean of the members' probabilities.
    members = [torch.sigmoid(m(torch.from_numpy(images))).detach().numpy().ravel()
               for m in bundle.build_networks()]
    expected = sum(s.weight * p for s, p in zip(bundle.networks, members, strict=True))
    assert np.allclose(bundle.predict(images), expected, atol=1e-5)


def test_an_architecture_listed_twice_is_a_seed_ensemble(cohort, monkeypatch):
    import cadx.train.image_pipeline as pipeline

    seeds = []
    real_fit = pipeline.fit_image_model

    def recording_fit(model, *args, **kwargs):
        seeds.append(args[4].seed)
        return real_fit(model, *args, **kwargs)

    monkeypatch.setattr(pipeline, "fit_image_model", recording_fit)
    dataset = load_image_dataset(cohort, progress=False)
    config = replace(TINY, train=replace(TINY.train, max_epochs=1, seed=5))
    twice = train_image_ensemble(dataset, ["resnet18", "resnet18"], config, progress=False,
                                 n_boot=20)
    assert seeds == [5, 6]  # each member its own batch order and augmentation draws
    first, second = twice.bundle.state_dicts
    assert any(not torch.equal(first[k], second[k]) for k in first)
    assert [s.arch for s in twice.bundle.networks] == ["resnet18", "resnet18"]


def test_image_bundle_round_trip_and_checksum(ensemble, tmp_path):
    path = save_image_bundle(ensemble.bundle, tmp_path / "us.cadx")
    loaded = load_any_bundle(path)
    assert loaded.kind == "image" and loaded.method == "cnn-ensemble"
    images = ensemble.data.images["test"]
    assert np.allclose(loaded.predict(images), ensemble.bundle.predict(images))
    assert loaded.exam_threshold == ensemble.bundle.exam_threshold
    with zipfile.ZipFile(path) as archive:
        parts = {name: archive.read(name) for name in archive.namelist()}
    manifest = json.loads(parts["manifest.json"])
    manifest["exam_operating_point"]["threshold"] = 0.0
    parts["manifest.json"] = json.dumps(manifest).encode()
    with zipfile.ZipFile(tmp_path / "edited.cadx", "w") as archive:
        for name, data in parts.items():
            archive.writestr(name, data)
    with pytest.raises(BundleError, match="checksum"):
        load_image_bundle(tmp_path / "edited.cadx")


def test_diagnose_decides_on_theta_and_writes_cams(ensemble, cohort, tmp_path):
    bundle = ensemble.bundle
    files = sorted((cohort / "malignant").glob("*.png"))[:3]
    result = diagnose_image_files(bundle, files, "P1", cam_dir=tmp_path / "cam")
    p = np.array([r.probability for r in result.images])
    theta = -np.mean(np.log1p(-p))
    assert result.exam_score == pytest.approx(theta, abs=1e-5)
    assert result.decision == ("malignancy suspected" if result.exam_score > bundle.exam_threshold
                               else "no malignancy detected")
    for image_result, path in zip(result.images, files, strict=True):
        overlay = Image.open(image_result.cam_png)
        assert overlay.mode == "RGB" and overlay.size == Image.open(path).size
    # In-memory arrays (uint8 RGB here) give the same probabilities as the files.
    arrays = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    again = diagnose_images(bundle, arrays, [f.name for f in files], "P1")
    assert [r.probability for r in again.images] == pytest.approx(p, abs=2e-3)


def test_grad_cam_shape_and_range():
    torch.manual_seed(0)
    models = [build_backbone(a, 1, 1, 0.125).eval() for a in ("resnet18", "darknet19")]
    images = np.random.default_rng(0).random((3, 1, 64, 64), dtype=np.float32)
    cams = grad_cam(models, ["resnet18", "darknet19"], [0.5, 0.5], images)
    assert cams.shape == (3, 64, 64)
    assert cams.min() >= 0.0 and cams.max() <= 1.0


def test_overlay_png_takes_the_image_size(tmp_path):
    cam = np.linspace(0, 1, 16 * 16).reshape(16, 16)
    path = write_overlay_png(tmp_path / "o.png", np.zeros((40, 60)), cam)
    overlay = np.asarray(Image.open(path))
    assert overlay.shape == (40, 60, 3)
    assert overlay[-1, -1, 0] > overlay[0, 0, 0]  # hot (red) where the map is high


def test_fit_image_matches_read_image(tmp_path):
    rgb = (np.random.default_rng(1).random((50, 70, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    from_file = read_image(tmp_path / "a.png", 32, channels=3)
    assert np.allclose(fit_image(rgb, 32, channels=3), from_file, atol=1e-6)
    grey = read_image(tmp_path / "a.png", channels=1)
    assert np.allclose(fit_image(grey, 32, 1), read_image(tmp_path / "a.png", 32, 1), atol=1e-6)
    with pytest.raises(InputError, match="shape"):
        fit_image(np.zeros((2, 5, 5, 5)), 32)


def test_feature_models_texture_only_and_from_trained_backbones(cohort, ensemble, tmp_path):
    dataset = load_image_dataset(cohort, progress=False)
    texture = train_feature_model(dataset, [], ["avgpool"], ["rf"], True, TINY,
                                  progress=False, n_boot=50)
    assert texture.bundle.networks == []
    assert texture.bundle.summary["n_features"] == len(texture_feature_names())
    deep = train_feature_model(dataset, ["resnet18", "darknet19"], ["avgpool"], ["svm", "rf"],
                               False, TINY, source_bundle=ensemble.bundle, progress=False,
                               n_boot=50)
    # Concatenated avgpool features of both CNNs (width 1/8: 64 + 128 channels).
    assert deep.bundle.summary["n_features"] == 64 + 128
    path = save_image_bundle(deep.bundle, tmp_path / "feats.cadx")
    images = deep.data.images["test"]
    assert np.allclose(load_image_bundle(path).predict(images), deep.bundle.predict(images))
    assert deep.test_levels and 0.0 <= deep.test_levels[1].metrics["auc"].estimate <= 1.0
    # A feature model has no spatial map: no CAM files, and the result says why.
    files = sorted((cohort / "benign").glob("*.png"))[:2]
    result = diagnose_image_files(deep.bundle, files, "P2", cam_dir=tmp_path / "cam")
    assert all(r.cam_png is None for r in result.images) and "no CAM" in result.notes[0]
    assert not (tmp_path / "cam").exists()


def test_feature_layers_default_to_stages_for_pretrained_backbones(cohort, tmp_path):
    """Without --layers a pretrained backbone gives its stage features, a from-scratch one its
    avgpool features, each stored in the bundle and used again when it predicts."""
    from cadx.cli import build_parser
    from cadx.models.backbones import default_feature_layers, embedding_size

    assert build_parser().parse_args(["train-features", "d", "--out", "m"]).layers is None
    assert default_feature_layers("efficientnet_lite0") == ("stages",)
    assert default_feature_layers("resnet18") == ("avgpool",)
    dataset = load_image_dataset(cohort, progress=False)
    outcome = train_feature_model(dataset, ["efficientnet_lite0", "resnet18"], None, ["rf"],
                                  False, TINY, progress=False, n_boot=50)
    bundle = outcome.bundle
    assert [spec.layers for spec in bundle.networks] == [("stages",), ("avgpool",)]
    assert bundle.summary["layers"] == {"efficientnet_lite0": ["stages"],
                                        "resnet18": ["avgpool"]}
    assert bundle.summary["n_features"] == (embedding_size("efficientnet_lite0", "stages")
                                            + embedding_size("resnet18", width=TINY.width))
    images = outcome.data.images["test"]
    loaded = load_image_bundle(save_image_bundle(bundle, tmp_path / "f.cadx"))
    assert np.allclose(loaded.predict(images), bundle.predict(images))


def test_feature_model_keeps_the_size_with_the_best_validation_auc(cohort, ensemble):
    dataset = load_image_dataset(cohort, progress=False)
    tried = train_feature_model(dataset, [], ["avgpool"], ["rf"], True, TINY,
                                candidate_sizes=(32, 48), progress=False, n_boot=20)
    aucs = {int(k): v for k, v in tried.bundle.summary["size_validation_auc"].items()}
    assert set(aucs) == {32, 48}
    kept = max(aucs, key=lambda size: (aucs[size], -size))  # ties: the first candidate
    assert tried.bundle.size_px == kept == tried.bundle.summary["config"]["size_px"]
    assert tried.data.images["test"].shape[-1] == kept
    # Each size's AUC is that of a model fitted at that size alone, on the same split.
    for size, auc in aucs.items():
        alone = train_feature_model(dataset, [], ["avgpool"], ["rf"], True,
                                    replace(TINY, size_px=size), progress=False, n_boot=20)
        assert alone.bundle.summary["split"] == tried.bundle.summary["split"]
        assert alone.bundle.summary["size_validation_auc"] == {str(size): pytest.approx(auc)}
    with pytest.raises(ConfigError, match="source bundle's size"):
        train_feature_model(dataset, ["resnet18"], ["avgpool"], ["rf"], False, TINY,
                            source_bundle=ensemble.bundle, candidate_sizes=(32, 48),
                            progress=False)


def test_feature_sizes_on_the_command_line(cohort, tmp_path, capsys):
    out = tmp_path / "t.cadx"
    assert main(["train-features", str(cohort), "--backbones", "none", "--texture",
                 "--classifier", "rf", "--size", "32,40", "--out", str(out), "--quiet"]) == 0
    assert "validation image AUC by size: 32 px" in capsys.readouterr().out
    assert load_image_bundle(out).size_px in (32, 40)
    with pytest.raises(SystemExit):
        main(["train-features", str(cohort), "--size", "big", "--out", str(out)])
    assert "expected sizes in px" in capsys.readouterr().err


def test_train_features_default_sizes():
    """The sizes train-features tries and its config's size (the first it reads at)."""
    from cadx.cli import _feature_sizes_px, _image_model_config, build_parser
    from cadx.config import FEATURE_SIZES_PX, PRETRAINED_SIZE_PX

    def decided(*argv: str) -> tuple[list[int], int]:
        args = build_parser().parse_args(["train-features", "d", "--out", "m.cadx", *argv])
        backbones = [] if args.backbones == ["none"] else args.backbones
        sizes = _feature_sizes_px(args, backbones)
        return sizes, _image_model_config(args, backbones, sizes[0] if sizes else None).size_px

    assert decided() == (FEATURE_SIZES_PX, FEATURE_SIZES_PX[0])  # pretrained by default
    assert decided("--size", "32,40") == ([32, 40], 32)
    default = ImageModelConfig().size_px
    assert decided("--backbones", "none", "--texture") == ([default], default)
    assert decided("--backbones", "resnet18") == ([default], default)
    # The source bundle's size is used (train_feature_model reads it there).
    assert decided("--backbones-from", "s.cadx") == ([], PRETRAINED_SIZE_PX)


def test_patient_across_splits_is_refused(cohort, tmp_path):
    rows = (cohort / "manifest.csv").read_text().splitlines()
    header, first, second = rows[0], rows[1], rows[2]
    assert first.split(",")[1] == second.split(",")[1]  # two images of one patient
    text = "\n".join([header + ",split", first + ",train", second + ",test"]
                     + [row + ",train" for row in rows[3:]])
    manifest = cohort / "split.csv"
    manifest.write_text(text + "\n")
    with pytest.raises(SplitError, match="US0001"):
        load_image_dataset(manifest, progress=False)
    manifest.unlink()


def test_duplicate_images_across_patients_are_warned(cohort, tmp_path):
    dataset = load_image_dataset(cohort, progress=False)
    first, second = dataset.records[0], next(r for r in dataset.records
                                             if r.patient_id != dataset.records[0].patient_id)
    records = list(dataset.records)
    records[records.index(second)] = replace(second, sha256=first.sha256)
    outcome = train_feature_model(replace(dataset, records=tuple(records)), [], ["avgpool"],
                                  ["rf"], True, replace(TINY, test_fraction=0.0),
                                  progress=False)
    assert any("byte-identical" in w for w in outcome.bundle.summary["warnings"])
    assert outcome.test_levels == []


def test_validation_split_with_one_class_is_refused(cohort):
    dataset = load_image_dataset(cohort, progress=False)
    benign_only = replace(dataset, records=tuple(
        replace(r, split="validation" if r.label == 0 and int(r.patient_id[2:]) % 2 else "train")
        for r in dataset.records))
    with pytest.raises(SplitError, match="validation split"):
        train_feature_model(benign_only, [], ["avgpool"], ["rf"], True, TINY, progress=False)


def test_cli_synth_train_diagnose(tmp_path, capsys):
    data = tmp_path / "us"
    assert main(["synth", "us", "--out", str(data), "--patients", "20", "--size", "48",
                 "--seed", "1"]) == 0
    model = tmp_path / "us.cadx"
    assert main(["train-images", str(data), "--arch", "darknet19", "--out", str(model),
                 "--size", "32", "--width", "0.125", "--epochs", "1", "--quiet",
                 "--report", str(tmp_path / "report")]) == 0
    out = capsys.readouterr().out
    assert "Held-out test patients" in out and "AUC" in out
    assert (tmp_path / "report" / "report.html").exists()
    images = sorted((data / "benign").glob("*.png"))[:2]
    result = tmp_path / "r.json"
    assert main(["diagnose", str(model), *map(str, images), "--patient", "P9",
                 "--cam", str(tmp_path / "cam"), "--out", str(result)]) == 0
    written = json.loads(result.read_text())
    assert written["patient_id"] == "P9" and len(written["images"]) == 2
    assert all(Path(r["cam_png"]).exists() for r in written["images"])


def test_cli_lesion_mask_guidance_reads_the_manifest_masks(tmp_path, capsys):
    data = tmp_path / "us"
    assert main(["synth", "us", "--out", str(data), "--patients", "20", "--size", "48",
                 "--seed", "1"]) == 0
    common = ["--arch", "darknet19", "--size", "32", "--width", "0.125", "--epochs", "2",
              "--quiet", "--lesion-mask-weight", "1"]
    model = tmp_path / "guided.cadx"
    assert main(["train-images", str(data / "manifest.csv"), *common, "--out", str(model)]) == 0
    histories = load_image_bundle(model).summary["histories"]
    assert all(len(h["lesion_loss"]) == len(h["train_loss"]) > 0 for h in histories.values())
    # Class folders carry no masks: a one-line error, no bundle.
    assert main(["train-images", str(data), *common, "--out", str(tmp_path / "x.cadx")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cadx: error:") and "none of the" in err and "Traceback" not in err
    assert not (tmp_path / "x.cadx").exists()
    assert main(["train-images", str(data), "--lesion-mask-weight", "-1",
                 "--out", str(tmp_path / "x.cadx")]) == 2
    assert "lesion-mask weight" in capsys.readouterr().err


def test_cli_bad_image_inputs_are_one_line_errors(tmp_path, capsys, ensemble):
    model = save_image_bundle(ensemble.bundle, tmp_path / "us.cadx")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "junk.png").write_bytes(b"not a png at all")
    for bad, problem in ((tmp_path / "empty.png", "empty file"),
                         (tmp_path / "junk.png", "junk.png"),
                         (tmp_path / "missing.png", "not found")):
        assert main(["diagnose", str(model), str(bad)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("cadx: error:") and problem in err and "Traceback" not in err
    (tmp_path / "data" / "benign").mkdir(parents=True)
    (tmp_path / "data" / "malignant").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "data" / "benign" / "a_1.png")
    assert main(["train-images", str(tmp_path / "data"), "--out", str(tmp_path / "x.cadx")]) == 2
    assert "malignant" in capsys.readouterr().err
    assert not (tmp_path / "x.cadx").exists()


def test_images_a_model_cannot_judge_get_a_reason_not_a_decision(tmp_path, capsys, ensemble):
    model = save_image_bundle(ensemble.bundle, tmp_path / "us.cadx")
    rng = np.random.default_rng(0)
    Image.fromarray(np.full((1, 1), 200, np.uint8)).save(tmp_path / "tiny.png")
    mask = np.zeros((64, 64), np.uint8)
    mask[20:40, 20:40] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    rgba = rng.integers(0, 256, (64, 64, 4), dtype=np.uint8)
    rgba[..., 3] = 0
    rgba[:8, :8, 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "cutout.png")
    Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8)).save(tmp_path / "ok.png")
    for bad, reason in (("tiny.png", "too small"), ("mask.png", "binary mask"),
                        ("cutout.png", "transparent")):
        assert main(["diagnose", str(model), str(tmp_path / bad)]) == 2
        err = " ".join(capsys.readouterr().err.split())
        assert "no image can be judged" in err and reason in err and "Traceback" not in err
    diagnosis = diagnose_image_files(ensemble.bundle, [tmp_path / "ok.png",
                                                       tmp_path / "tiny.png"], "P1")
    ok, tiny = diagnosis.images
    assert ok.probability is not None and tiny.probability is None
    assert "too small" in tiny.not_judged
    only_ok = diagnose_image_files(ensemble.bundle, [tmp_path / "ok.png"], "P1")
    assert diagnosis.exam_score == pytest.approx(only_ok.exam_score)


def test_diagnose_image_files_decodes_each_file_once(ensemble, cohort, tmp_path, monkeypatch):
    bundle = ensemble.bundle
    rgba = np.random.default_rng(1).integers(0, 256, (64, 64, 4), dtype=np.uint8)
    rgba[..., 3] = 0
    rgba[:8, :8, 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "cutout.png")
    files = sorted((cohort / "malignant").glob("*.png"))[:2] + [tmp_path / "cutout.png"]
    opened = []
    real_open = Image.open

    def counting_open(fp, *args, **kwargs):
        opened.append(fp)
        return real_open(fp, *args, **kwargs)

    monkeypatch.setattr(Image, "open", counting_open)
    diagnosis = diagnose_image_files(bundle, files, "P1", cam_dir=tmp_path / "cam")
    monkeypatch.undo()
    # One decode per file serves the transparency check, the scoring and the CAM overlay.
    assert len(opened) == len(files)
    # ...with the result of scoring the arrays `read_image` gives, the cut-out refused.
    expected = diagnose_images(bundle, [read_image(f, channels=bundle.channels) for f in files],
                               [f.name for f in files], "P1",
                               problems=[None, None, "98% of its pixels are transparent: not "
                                                     "a scan"])
    assert diagnosis.exam_score == expected.exam_score
    assert [(r.name, r.probability, r.not_judged) for r in diagnosis.images] == \
        [(r.name, r.probability, r.not_judged) for r in expected.images]
    assert [r.cam_png is not None for r in diagnosis.images] == [True, True, False]
