"""--precision on the CT patch trainer (issue 18): fp32 is the plain loop bit for bit, bf16
autocasts the forward passes only, a CPU without bf16 falls back with one warning, and the
bundle records the precision in which its thresholds were chosen, so diagnose and evaluate
score in it."""

from __future__ import annotations

import json
import warnings
from dataclasses import replace

import numpy as np
import pytest
import torch

from cadx.bundle import load_bundle, read_archive, save_bundle, write_archive
from cadx.cli import main
from cadx.config import PipelineConfig, TrainConfig
from cadx.errors import ConfigError
from cadx.models.patch_cnn import PatchCNN
from cadx.patches.grid import PatchSet
from cadx.segment.config import SegConfig
from cadx.train import fit, pipeline, precision
from cadx.train.fit import (
    _batch_tensor,
    _single_process_batches,
    augment_patches,
    fit_patch_cnn,
    predict_logits,
)
from cadx.train.loss import WeightedBCELoss
from tests.conftest import write_toy_dataset

_FALLBACK = "no bf16 instructions; training in fp32"


def _patches(rng: np.random.Generator, n: int) -> PatchSet:
    labels = (rng.random(n) < 0.3).astype(np.uint8)
    patches = rng.random((n, 16, 16), dtype=np.float32) * 0.5
    patches[labels == 1, 4:10, 2:8] += 0.3
    return PatchSet(patches, np.full(n, "p", dtype=object), np.zeros((n, 3), np.int32), labels)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return _patches(rng, 128), _patches(rng, 48)


_ONE_EPOCH = TrainConfig(batch_size=32, max_epochs=1, seed=5, augment_rotations=True)


def _plain_epoch(train: PatchSet, config: TrainConfig) -> tuple[dict, float]:
    """One epoch of the patch trainer as it was before --precision: no autocast, the loss
    read after every step. Same seeds, batches and augmentations as fit_patch_cnn."""
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    model = PatchCNN(train.patch_size_px, True, train.channels).to(
        memory_format=torch.channels_last)
    n_pos = int(train.labels.sum())
    loss_fn = WeightedBCELoss(n_positive=n_pos, n_negative=len(train) - n_pos)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    y_train = torch.from_numpy(train.labels.astype(np.float32))
    model.train()
    total = 0.0
    for index, augmentation in _single_process_batches(train.labels, config, generator):
        batch = augment_patches(_batch_tensor(train.patches, index.numpy()), augmentation)
        optimiser.zero_grad(set_to_none=True)
        loss = loss_fn(model(batch), y_train[index])
        loss.backward()
        optimiser.step()
        total += float(loss.detach()) * len(index)
    return model.state_dict(), total / len(train)


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_fp32_training_is_the_plain_loop_bit_for_bit(data):
    train, validation = data
    model, history = fit_patch_cnn(train, validation, _ONE_EPOCH, progress=False)
    weights, train_loss = _plain_epoch(train, _ONE_EPOCH)
    assert _same_weights(model.state_dict(), weights)
    assert history.train_loss == [train_loss]


def test_bf16_autocasts_the_forward_pass_and_keeps_fp32_weights(data, monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)  # emulated where absent
    train, validation = data
    seen = []
    original = PatchCNN.forward

    def recording_forward(self, patches):
        out = original(self, patches)
        seen.append((self.training, out.dtype))
        return out

    monkeypatch.setattr(PatchCNN, "forward", recording_forward)
    config = replace(_ONE_EPOCH, precision="bf16")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning when the CPU has bf16
        model, history = fit_patch_cnn(train, validation, config, progress=False)
    assert (True, torch.bfloat16) in seen and (False, torch.bfloat16) in seen  # train + val
    assert all(v.dtype in (torch.float32, torch.int64) for v in model.state_dict().values())
    fp32_model, _ = fit_patch_cnn(train, validation, _ONE_EPOCH, progress=False)
    assert not _same_weights(model.state_dict(), fp32_model.state_dict())
    assert np.isfinite(history.train_loss[0]) and np.isfinite(history.validation_loss[0])
    logits = predict_logits(model, validation.patches, precision="bf16")
    assert logits.dtype == torch.float32 and logits.shape == (len(validation),)


def test_bf16_on_a_cpu_without_bf16_is_fp32_with_one_warning(data, monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)
    train, validation = data
    with pytest.warns(RuntimeWarning, match=_FALLBACK) as caught:
        model, _ = fit_patch_cnn(train, validation, replace(_ONE_EPOCH, precision="bf16"),
                                 progress=False)
    assert sum(_FALLBACK in str(w.message) for w in caught) == 1
    fp32_model, _ = fit_patch_cnn(train, validation, _ONE_EPOCH, progress=False)
    assert _same_weights(model.state_dict(), fp32_model.state_dict())


def test_precision_is_validated_and_old_configs_are_fp32():
    with pytest.raises(ConfigError, match="precision must be one of"):
        TrainConfig(precision="fp16")
    stored = PipelineConfig().to_dict()
    del stored["train"]["precision"]
    assert PipelineConfig.from_dict(stored).train.precision == "fp32"
    seg = SegConfig().to_dict()
    del seg["precision"]
    assert SegConfig.from_dict(seg).precision == "fp32"


def _spy(monkeypatch, module, log: list[str]) -> None:
    """Record the precision every patch scoring of `module` runs in."""
    original = fit.predict_patch_probabilities

    def spy(*args, **kwargs):
        log.append(kwargs.get("precision", "fp32"))
        return original(*args, **kwargs)

    monkeypatch.setattr(module, "predict_patch_probabilities", spy)


def _train(dataset, out, *flags) -> None:
    assert main(["train", str(dataset), "--out", str(out), "--patch-size", "16",
                 "--stride", "8", "--epochs", "1", "--batch-size", "32", "--quiet",
                 *flags]) == 0


def test_bundle_records_the_precision_and_every_scoring_uses_it(tmp_path, monkeypatch):
    from cadx.diagnose import patient

    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)
    dataset = write_toy_dataset(tmp_path / "data", n_patients=10)
    model = tmp_path / "bf16.cadx"
    thresholds: list[str] = []
    _spy(monkeypatch, pipeline, thresholds)
    _train(dataset, model, "--precision", "bf16")
    bundle = load_bundle(model)
    assert bundle.precision == "bf16" and bundle.config.train.precision == "bf16"
    assert thresholds and set(thresholds) == {"bf16"}  # validation thresholds and test

    diagnosed: list[str] = []
    _spy(monkeypatch, patient, diagnosed)
    image = dataset / "imagesTr" / "toy_000.nii.gz"
    label = dataset / "labelsTr" / "toy_000.nii.gz"
    assert main(["diagnose", str(model), str(image), "--organ-mask", str(label)]) == 0
    assert diagnosed == ["bf16"]

    thresholds.clear()
    assert main(["evaluate", str(model), str(dataset), "--out", str(tmp_path / "rep"),
                 "--quiet", "--n-boot", "20"]) == 0
    assert thresholds == ["bf16"]

    # A bundle written before the field existed is fp32, and is scored so.
    parts = read_archive(model, ["manifest.json", "weights.pt"])
    manifest = json.loads(parts["manifest.json"])
    del manifest["config"]["train"]["precision"]
    old = write_archive(tmp_path / "old.cadx", {"manifest.json": json.dumps(manifest).encode(),
                                                "weights.pt": parts["weights.pt"]})
    assert load_bundle(old).precision == "fp32"
    diagnosed.clear()
    assert main(["diagnose", str(old), str(image), "--organ-mask", str(label)]) == 0
    assert diagnosed == ["fp32"]


def test_auto_is_bf16_where_the_cpu_has_it_and_fp32_silently_elsewhere(tmp_path, monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)
    assert precision.resolve_precision("auto") == "bf16"
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)
    dataset = write_toy_dataset(tmp_path / "data", n_patients=8)
    model = tmp_path / "m.cadx"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning: auto asked for either
        _train(dataset, model, "--test-fraction", "0")  # cadx train's default is auto
    assert load_bundle(model).precision == "fp32"


def test_bundle_records_fp32_when_bf16_fell_back(tmp_path, monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)
    dataset = write_toy_dataset(tmp_path / "data", n_patients=8)
    model = tmp_path / "m.cadx"
    with pytest.warns(RuntimeWarning, match=_FALLBACK) as caught:
        _train(dataset, model, "--precision", "bf16", "--test-fraction", "0")
    assert sum(_FALLBACK in str(w.message) for w in caught) == 1
    assert load_bundle(model).precision == "fp32"
    assert save_bundle(load_bundle(model), tmp_path / "again.cadx").exists()


def test_every_training_command_takes_precision(tmp_path, monkeypatch):
    from cadx import workflows
    from cadx.cli import _image_model_config, _pipeline_config, build_parser
    from cadx.triage.commands import _config as triage_config

    parser = build_parser()

    def parsed(*argv):
        return parser.parse_args([*argv, "--precision", "bf16"])

    assert _pipeline_config(parsed("train", "d", "--out", "m.cadx")).train.precision == "bf16"
    # cadx train defaults to auto (bf16 measured 2.35x faster, validation AUC not lower)
    assert parser.parse_args(["train", "d", "--out", "m"]).precision == "auto"
    args = parsed("train-images", "d", "--out", "m.cadx")
    assert _image_model_config(args, args.arch).train.precision == "bf16"
    for command in ("train-router", "train-qc"):
        extra = ["--flags", "a"] if command == "train-qc" else []
        assert triage_config(parsed(command, "d", "--out", "m", *extra)).train.precision \
            == "bf16"
    seen = {}
    monkeypatch.setattr(workflows, "train_segmenter_from_dataset",
                        lambda dataset, out, config, **_: seen.setdefault("config", config))
    dataset = write_toy_dataset(tmp_path / "d", n_patients=2)
    assert main(["train-seg", str(dataset), "--out", str(tmp_path / "s.cadx"),
                 "--precision", "bf16"]) == 0
    assert seen["config"].precision == "bf16"


def test_segmenter_trains_in_bf16_and_records_it(tmp_path, monkeypatch):
    from cadx.io.dataset import load_dataset
    from cadx.segment.bundle import load_segmenter, save_segmenter
    from cadx.segment.train import train_segmenter

    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)
    refs = load_dataset(write_toy_dataset(tmp_path / "toy", n_patients=4))
    config = SegConfig(in_plane_spacing_mm=2.0, channels=(8, 16), roi_px=16, batch_size=8,
                       steps_per_epoch=2, max_epochs=1, precision="bf16")
    outcome = train_segmenter(refs, config, progress=False)
    assert np.isfinite(outcome.bundle.summary["history"]["train_loss"][0])
    assert all(v.dtype != torch.bfloat16 for v in outcome.bundle.state_dict.values())
    save_segmenter(outcome.bundle, tmp_path / "s.cadx")
    assert load_segmenter(tmp_path / "s.cadx").config.precision == "bf16"


_EMULATED = "trained in bf16, and this CPU has no bf16 instructions"


def _untrained_bundle(train_precision: str):
    from cadx.bundle import PatchModelBundle
    from cadx.config import ModelConfig, PatchConfig
    from cadx.decide.roc import OperatingPoint

    torch.manual_seed(0)
    config = PipelineConfig(patches=PatchConfig(size_px=16, stride_px=8),
                            model=ModelConfig(batch_norm=False),
                            train=TrainConfig(precision=train_precision))
    point = OperatingPoint(0.5, 1.0, 0.9, 0.9, 0.99, (0.0, 1.0), (0.0, 1.0))
    return PatchModelBundle(config=config,
                            state_dict=PatchCNN(16, batch_norm=False).state_dict(),
                            patch_operating_point=point, patient_operating_point=point,
                            summary={})


def test_scoring_a_bf16_bundle_on_a_cpu_without_bf16_says_so_once(tmp_path, monkeypatch):
    """Scores stay bf16 (emulated) so that they match the thresholds; the result.json that
    diagnose writes says so among its warnings, which diagnose prints (no RuntimeWarning as
    well: see the terminal test below)."""
    from cadx.diagnose import patient

    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)
    dataset = write_toy_dataset(tmp_path / "data", n_patients=1)
    image = dataset / "imagesTr" / "toy_000.nii.gz"
    label = dataset / "labelsTr" / "toy_000.nii.gz"
    results = {}
    for name in ("bf16", "fp32"):
        model = save_bundle(_untrained_bundle(name), tmp_path / f"{name}.cadx")
        scored: list[str] = []
        _spy(monkeypatch, patient, scored)
        out = tmp_path / f"{name}.json"
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert main(["diagnose", str(model), str(image), "--organ-mask", str(label),
                         "--out", str(out)]) == 0
        notes = [w for w in caught if _EMULATED in str(w.message)]
        assert scored == [name]  # the scores themselves are unchanged
        results[name] = json.loads(out.read_text())
        kept = [line for line in results[name]["warnings"] if _EMULATED in line]
        assert notes == []
        if name == "bf16":
            assert len(kept) == 1 and "emulated bf16" in kept[0]
        else:
            assert kept == []
    # Where the CPU has bf16, the same bundle's score is the same and the note is absent.
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)
    native = tmp_path / "native.json"
    assert main(["diagnose", str(tmp_path / "bf16.cadx"), str(image), "--organ-mask",
                 str(label), "--out", str(native)]) == 0
    native_result = json.loads(native.read_text())
    assert native_result["patient_score"] == results["bf16"]["patient_score"]
    assert not any(_EMULATED in line for line in native_result["warnings"])


def _times_on_terminal(note: str, capsys, caught: list[warnings.WarningMessage]) -> int:
    """How often a terminal would show `note`: in what the command printed (rich wraps long
    lines, hence the whitespace joined) and as a warning (Python prints those to stderr)."""
    captured = capsys.readouterr()
    printed = " ".join((captured.out + captured.err).split())
    return printed.count(note) + sum(note in str(w.message) for w in caught)


def test_a_terminal_shows_the_emulated_bf16_note_once_per_diagnosis(tmp_path, monkeypatch,
                                                                     capsys):
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)
    dataset = write_toy_dataset(tmp_path / "data", n_patients=1)
    model = save_bundle(_untrained_bundle("bf16"), tmp_path / "bf16.cadx")
    out = tmp_path / "result.json"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["diagnose", str(model), str(dataset / "imagesTr" / "toy_000.nii.gz"),
                     "--organ-mask", str(dataset / "labelsTr" / "toy_000.nii.gz"),
                     "--out", str(out)]) == 0
    assert _times_on_terminal(_EMULATED, capsys, caught) == 1
    assert sum(_EMULATED in line for line in json.loads(out.read_text())["warnings"]) == 1


def test_build_model_warns_a_library_caller_unless_it_reports_the_note_itself(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)
    bundle = _untrained_bundle("bf16")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bundle.build_model()
        assert [w.category for w in caught if _EMULATED in str(w.message)] == [RuntimeWarning]
        bundle.build_model(warn_bf16_emulated=False)
        assert len([w for w in caught if _EMULATED in str(w.message)]) == 1


def test_the_emulated_bf16_note_is_in_the_evaluation_report(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)
    dataset = write_toy_dataset(tmp_path / "data", n_patients=4)
    model = save_bundle(_untrained_bundle("bf16"), tmp_path / "bf16.cadx")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["evaluate", str(model), str(dataset), "--out", str(tmp_path / "rep"),
                     "--quiet", "--n-boot", "20"]) == 0
    assert _times_on_terminal(_EMULATED, capsys, caught) == 1
    metrics = json.loads((tmp_path / "rep" / "metrics.json").read_text())
    assert sum(_EMULATED in line for line in metrics["warnings"]) == 1
    assert _EMULATED in (tmp_path / "rep" / "report.txt").read_text()
