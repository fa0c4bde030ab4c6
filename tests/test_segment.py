"""Organ segmenter: grid round trip, post-processing, bundle, training on toy cases, and the
diagnose paths with a predicted organ mask and with no organ found."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from cadx.bundle import PatchModelBundle, load_bundle, save_bundle
from cadx.cli import main
from cadx.config import ModelConfig, PatchConfig, PipelineConfig
from cadx.decide.roc import OperatingPoint
from cadx.errors import BundleError, ConfigError
from cadx.io.dataset import load_dataset
from cadx.models.patch_cnn import PatchCNN
from cadx.segment.bundle import SegmenterBundle, load_segmenter, save_segmenter
from cadx.segment.config import SegConfig
from cadx.segment.grid import context_stack, mask_to_seg_grid, probability_to_native_grid
from cadx.segment.infer import segment_organ
from cadx.segment.network import build_network
from cadx.segment.postprocess import keep_largest_component, mask_volume_ml
from cadx.segment.train import dice, train_segmenter
from tests.conftest import toy_case, write_toy_dataset, write_volume

TINY = SegConfig(in_plane_spacing_mm=2.0, channels=(8, 16), roi_px=16, batch_size=8,
                 steps_per_epoch=10, max_epochs=3, learning_rate=1e-2, min_organ_volume_ml=0.5)


def _constant_segmenter(organ_everywhere: bool, config: SegConfig = TINY) -> SegmenterBundle:
    """A segmenter whose output ignores the image: organ everywhere, or nowhere."""
    network = build_network(config)
    state = {k: torch.zeros_like(v) for k, v in network.state_dict().items()}
    for name, value in network.named_parameters():
        if name.endswith("bias") and value.shape == (2,):  # the output convolutions
            state[name] = torch.tensor([-5.0, 5.0] if organ_everywhere else [5.0, -5.0])
    return SegmenterBundle(config=config, state_dict=state)


def _patch_bundle(segmenter: SegmenterBundle | None) -> PatchModelBundle:
    torch.manual_seed(0)
    point = OperatingPoint(0.5, 0.9, 0.8, 0.7, 0.95, (0.0, 1.0), (0.0, 1.0))
    return PatchModelBundle(
        config=PipelineConfig(patches=PatchConfig(size_px=16, stride_px=8),
                              model=ModelConfig(batch_norm=False)),
        state_dict=PatchCNN(16, batch_norm=False).state_dict(),
        patch_operating_point=point, patient_operating_point=point, segmenter=segmenter)


def test_keep_largest_component_drops_the_smaller_blob():
    mask = np.zeros((6, 20, 20), dtype=bool)
    mask[1:5, 2:10, 2:10] = True  # 256 voxels
    mask[2:4, 14:17, 14:17] = True  # 18 voxels, not touching
    kept = keep_largest_component(mask)
    assert kept.sum() == 256 and not kept[2:4, 14:17, 14:17].any()
    assert not keep_largest_component(np.zeros((3, 4, 4), dtype=bool)).any()
    assert mask_volume_ml(kept, (5.0, 1.0, 2.0)) == pytest.approx(256 * 10 / 1000)


def test_context_stack_repeats_edge_slices():
    volume = np.arange(4, dtype=np.float32)[:, None, None] * np.ones((4, 2, 2), np.float32)
    stack = context_stack(volume, 1)
    assert stack.shape == (3, 4, 2, 2)
    assert stack[:, 0, 0, 0].tolist() == [0, 0, 1] and stack[:, 3, 0, 0].tolist() == [2, 3, 3]


def test_mask_survives_the_trip_to_the_coarse_grid_and_back():
    z, y, x = np.ogrid[:20, :64, :64]
    mask = ((z - 10) / 7.0) ** 2 + ((y - 30) / 15.0) ** 2 + ((x - 34) / 20.0) ** 2 <= 1
    spacing = (2.5, 0.8, 0.8)
    coarse = mask_to_seg_grid(mask, spacing, TINY)
    assert coarse.shape == (10, 26, 26)
    back = probability_to_native_grid(torch.from_numpy(coarse.astype(np.float32)), mask.shape,
                                      spacing[0], TINY).numpy() > 0.5
    assert dice(back, mask) > 0.9


def test_config_round_trip_and_bad_values():
    assert SegConfig.from_dict(TINY.to_dict()) == TINY
    with pytest.raises(ConfigError, match="divisible"):
        SegConfig(channels=(8, 16, 32), roi_px=30)
    with pytest.raises(ConfigError, match="unknown"):
        SegConfig.from_dict({**TINY.to_dict(), "colour": 1})


def test_segmenter_bundle_round_trip_and_checksum(tmp_path):
    segmenter = _constant_segmenter(True)
    path = save_segmenter(segmenter, tmp_path / "seg.cadx")
    loaded = load_segmenter(path)
    assert loaded.config == TINY
    x = torch.rand(1, TINY.in_channels, 16, 16)
    torch.testing.assert_close(loaded.build_network()(x), segmenter.build_network()(x))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / "bad.cadx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="bad.cadx"):
        load_segmenter(tmp_path / "bad.cadx")


def test_patch_bundle_embeds_the_segmenter_and_old_bundles_still_load(tmp_path):
    with_seg = load_bundle(save_bundle(_patch_bundle(_constant_segmenter(True)),
                                       tmp_path / "a.cadx"))
    assert with_seg.segmenter is not None and with_seg.segmenter.config == TINY
    without = load_bundle(save_bundle(_patch_bundle(None), tmp_path / "b.cadx"))
    assert without.segmenter is None
    with pytest.raises(BundleError, match="not an organ segmenter"):
        load_segmenter(tmp_path / "b.cadx")


def test_training_on_toy_cases_finds_the_organ(tmp_path):
    refs = load_dataset(write_toy_dataset(tmp_path / "toy", n_patients=6))
    outcome = train_segmenter(refs, TINY, progress=False)
    assert len(outcome.validation_dice) == len(outcome.split.validation) >= 2
    assert not set(outcome.split.train) & set(outcome.split.validation)
    # Untrained networks (seeds 0-2) score Dice 0.20-0.54 on these cases; trained 0.81-0.84.
    assert min(outcome.validation_dice.values()) > 0.75
    image, label = toy_case(np.random.default_rng(7), with_tumour=True)
    result = segment_organ(outcome.bundle, image.astype(np.float32), (2.5, 1.0, 1.0))
    assert result.found and dice(result.mask, label > 0) > 0.75


def _toy_ct(tmp_path):
    image, _ = toy_case(np.random.default_rng(3), with_tumour=True)
    return write_volume(tmp_path / "ct.nii.gz", image)


def test_diagnose_without_mask_uses_the_predicted_organ(tmp_path):
    model = save_bundle(_patch_bundle(_constant_segmenter(True)), tmp_path / "m.cadx")
    out = tmp_path / "result.json"
    assert main(["diagnose", str(model), str(_toy_ct(tmp_path)), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["organ_mask"] == "predicted"
    assert result["n_patches"] > 0 and 0.0 <= result["patient_score"] <= 1.0
    assert "segment" in result["timings_s"]


def test_organ_not_found_is_a_result_not_a_crash_nor_a_negative(tmp_path, capsys):
    model = save_bundle(_patch_bundle(_constant_segmenter(False)), tmp_path / "m.cadx")
    out = tmp_path / "result.json"
    assert main(["diagnose", str(model), str(_toy_ct(tmp_path)), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["decision"] == "organ not found"
    assert result["patient_score"] is None and result["n_patches"] == 0
    assert result["organ_mask"] == "predicted"
    assert "organ not found" in capsys.readouterr().out


def test_a_speck_below_the_minimum_volume_is_no_organ():
    segmenter = _constant_segmenter(True, replace(TINY, min_organ_volume_ml=1e6))
    image, _ = toy_case(np.random.default_rng(0), with_tumour=False)
    result = segment_organ(segmenter, image.astype(np.float32), (2.5, 1.0, 1.0))
    assert not result.found and not result.mask.any() and result.volume_ml > 0


def test_train_seg_command_writes_a_bundle(tmp_path, capsys):
    dataset = write_toy_dataset(tmp_path / "toy", n_patients=6)
    out = tmp_path / "seg.cadx"
    assert main(["train-seg", str(dataset), "--organ", "1", "--out", str(out), "--epochs", "1",
                 "--steps-per-epoch", "2", "--batch-size", "4", "--pixel-spacing", "4",
                 "--quiet"]) == 0
    assert "validation Dice per case" in capsys.readouterr().out
    assert set(load_segmenter(out).summary["validation_dice"]) == set(
        load_segmenter(out).summary["split"]["validation"])
