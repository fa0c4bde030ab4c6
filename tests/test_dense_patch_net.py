"""The dense patch network (`--patch-network unet`): patches carry their tumour masks, the
store keeps them, the UNet trains on them and scores patches by its largest pixel logit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cadx.bundle import load_bundle
from cadx.case import Case
from cadx.cli import main
from cadx.config import ModelConfig, PatchConfig, PipelineConfig, TrainConfig
from cadx.diagnose.heatmap import ct_heatmap
from cadx.diagnose.patient import diagnose_case
from cadx.errors import ConfigError, InputError
from cadx.io.dataset import load_dataset
from cadx.io.volumes import read_case
from cadx.models.dense_patch_net import DensePatchNet
from cadx.patches.cohort import patch_cohort
from cadx.patches.grid import PatchSet, extract_patches
from cadx.patches.store import StoredRows, join_patches, open_patch_store
from cadx.scale.distributed import patched_cases
from cadx.train.fit import fit_patch_cnn, predict_patch_probabilities
from cadx.train.loss import TumourDiceLoss
from tests.conftest import write_toy_dataset
from tests.test_ct_levers import _diagnoses_a_toy_patient

DENSE = PipelineConfig(patches=PatchConfig(size_px=16, stride_px=8),
                       model=ModelConfig(arch="unet"))


def _case_with_tumour() -> Case:
    rng = np.random.default_rng(0)
    image = rng.random((3, 40, 40)).astype(np.float32)
    organ = np.zeros(image.shape, bool)
    organ[:, 8:32, 8:32] = True
    tumour = np.zeros(image.shape, bool)
    tumour[1, 14:19, 20:26] = True
    return Case("p", image, (5, 1, 1), organ, tumour)


def test_patches_carry_their_centre_slice_tumour_masks():
    case = _case_with_tumour()
    config = PatchConfig(size_px=16, stride_px=8, context_slices=1)
    assert extract_patches(case, config).masks is None
    patches = extract_patches(case, config, with_masks=True)
    assert patches.masks.shape == (len(patches), 16, 16) and patches.masks.dtype == np.uint8
    np.testing.assert_array_equal(patches.masks.any(axis=(1, 2)), patches.labels.astype(bool))
    for (z, y, x), mask in zip(patches.coords, patches.masks, strict=True):
        np.testing.assert_array_equal(mask, case.tumour_mask[z, y:y + 16, x:x + 16])
    assert 0 < patches.labels.sum() < len(patches)
    keep = np.flatnonzero(patches.labels)
    np.testing.assert_array_equal(patches.subset(keep).masks, patches.masks[keep])
    joined = PatchSet.concat([patches, patches])
    assert len(joined.masks) == 2 * len(patches)
    assert PatchSet.concat([patches, extract_patches(case, config)]).masks is None


def test_store_keeps_the_masks_and_is_recropped_for_a_dense_network(tmp_path):
    refs = load_dataset(write_toy_dataset(tmp_path / "d", 4))
    table1 = PipelineConfig(patches=DENSE.patches)
    folder = tmp_path / "store"
    assert patched_cases(refs, table1, patch_store=folder, progress=False)[0].patches.masks is None
    stored = patched_cases(refs, DENSE, patch_store=folder, progress=False)  # re-cropped
    in_memory = patch_cohort(refs, DENSE, progress=False)
    for a, b in zip(in_memory, stored, strict=True):
        assert isinstance(b.patches.masks, StoredRows)
        np.testing.assert_array_equal(a.patches.masks, np.asarray(b.patches.masks))
    joined = join_patches(stored)
    assert isinstance(joined.masks, StoredRows) and len(joined.masks) == len(joined)
    # a store with masks serves the Table-1 network too, without re-cropping
    written = (folder / "patches.f32").stat().st_mtime_ns
    patched_cases(refs, table1, patch_store=folder, progress=False)
    assert (folder / "patches.f32").stat().st_mtime_ns == written
    # a store whose masks went missing or were cut short is refused in one line
    masks = (folder / "masks.u8").read_bytes()
    (folder / "masks.u8").write_bytes(masks[:-1])
    with pytest.raises(InputError, match="masks.u8: size does not match"):
        open_patch_store(folder)
    (folder / "masks.u8").unlink()
    with pytest.raises(InputError, match="masks.u8: missing"):
        open_patch_store(folder)


def test_patch_logit_is_the_largest_pixel_logit():
    model = DensePatchNet(50, 3).eval()
    patches = torch.rand(4, 3, 50, 50)
    pixels = model(patches, pixels=True)
    assert pixels.shape == (4, 1, 50, 50) and model.pad == (3, 3)
    torch.testing.assert_close(model(patches), pixels.flatten(1).amax(dim=1))
    assert DensePatchNet(16, 5)(torch.rand(2, 5, 16, 16)).shape == (2,)


def _bright_square_patches(n: int = 128, size: int = 16) -> PatchSet:
    rng = np.random.default_rng(1)
    patches = (rng.random((n, 3, size, size)) * 0.3).astype(np.float32)
    masks = np.zeros((n, size, size), np.uint8)
    for i in range(0, n, 2):
        y, x = rng.integers(0, size - 5, 2)
        masks[i, y:y + 5, x:x + 5] = 1
        patches[i, :, y:y + 5, x:x + 5] += 0.5
    labels = masks.any(axis=(1, 2)).astype(np.uint8)
    return PatchSet(patches, np.array([f"p{i % 8}" for i in range(n)], dtype=object),
                    np.zeros((n, 3), np.int32), labels, masks)


def test_dense_training_learns_where_the_tumour_is_and_needs_masks():
    train = _bright_square_patches()
    config = TrainConfig(batch_size=32, max_epochs=6, learning_rate=3e-3, precision="fp32")
    model, history = fit_patch_cnn(train, train, config, model_config=ModelConfig(arch="unet"),
                                   progress=False)
    assert history.validation_auc[-1] > 0.9
    with torch.no_grad():
        pixels = torch.sigmoid(model(torch.from_numpy(train.patches), pixels=True))[:, 0]
    inside = pixels.numpy()[train.masks == 1].mean()
    outside = pixels.numpy()[(train.masks == 0) & (train.labels[:, None, None] == 1)].mean()
    assert inside > outside + 0.2, (inside, outside)
    assert predict_patch_probabilities(model, train.patches, flip_average=True).shape == (128,)
    no_masks = PatchSet(train.patches, train.patient_ids, train.coords, train.labels)
    with pytest.raises(ConfigError, match="tumour mask"):
        fit_patch_cnn(no_masks, train, config, model_config=ModelConfig(arch="unet"),
                      progress=False)


def test_cli_trains_stores_and_diagnoses_with_the_dense_network(tmp_path):
    dataset = write_toy_dataset(tmp_path / "data", n_patients=8)
    model = tmp_path / "unet.cadx"
    assert main(["train", str(dataset), "--out", str(model), "--patch-size", "16",
                 "--stride", "8", "--epochs", "1", "--batch-size", "32", "--quiet",
                 "--context-slices", "2", "--patch-network", "unet"]) == 0
    bundle = load_bundle(model)
    assert bundle.config.model.arch == "unet" and bundle.config.model.dense
    network = bundle.build_model()
    assert isinstance(network, DensePatchNet) and network.in_channels == 5
    _diagnoses_a_toy_patient(model, dataset, tmp_path)
    # the heat map shows the network's pixel probabilities (patch scores without the network)
    case = read_case(dataset / "imagesTr" / "toy_000.nii.gz",
                     organ_mask_path=dataset / "labelsTr" / "toy_000.nii.gz")
    diagnosis = diagnose_case(bundle, case)
    assert ct_heatmap(case, diagnosis, bundle.config, network).per_pixel
    assert not ct_heatmap(case, diagnosis, bundle.config).per_pixel


# --- the organ-restricted patch score (`--patch-score-region organ`) ------------------------

ORGAN = PipelineConfig(patches=PatchConfig(size_px=16, stride_px=8),
                       model=ModelConfig(arch="unet", score_region="organ"))


def test_patches_carry_their_organ_masks_when_scored_inside_the_organ():
    case = _case_with_tumour()
    config = PatchConfig(size_px=16, stride_px=8, context_slices=1)
    assert extract_patches(case, config).organ_masks is None
    patches = extract_patches(case, config, with_organ=True)
    assert patches.organ_masks.shape == (len(patches), 16, 16)
    for (z, y, x), organ in zip(patches.coords, patches.organ_masks, strict=True):
        np.testing.assert_array_equal(organ, case.organ_mask[z, y:y + 16, x:x + 16])
    # windows that only touch the organ's edge hold organ pixels on part of the window only
    share = patches.organ_masks.mean(axis=(1, 2))
    assert share.min() < 0.5 < share.max() == 1.0
    keep = np.flatnonzero(share < 1)
    np.testing.assert_array_equal(patches.subset(keep).organ_masks, patches.organ_masks[keep])
    assert PatchSet.concat([patches, extract_patches(case, config)]).organ_masks is None


def test_region_score_is_the_largest_pixel_logit_inside_the_region():
    model = DensePatchNet(16, 1).eval()
    patches = torch.rand(3, 1, 16, 16)
    with torch.no_grad():
        pixels = model(patches, pixels=True)[:, 0]
        region = torch.zeros(3, 16, 16, dtype=torch.bool)
        region[0, :4, :4] = True  # a corner
        region[1, 8:, :] = True  # the lower half
        # patch 2: an empty region (organ mask missed it): scored over the whole window
        scores = model(patches, region=region)
    torch.testing.assert_close(scores[0], pixels[0, :4, :4].max())
    torch.testing.assert_close(scores[1], pixels[1, 8:, :].max())
    torch.testing.assert_close(scores[2], pixels[2].max())
    assert (scores <= model(patches)).all()


def test_flip_averaged_region_scores_flip_the_region_with_the_patch():
    model = DensePatchNet(16, 1).eval()
    rng = np.random.default_rng(3)
    patches = rng.random((5, 16, 16)).astype(np.float32)
    regions = np.zeros((5, 16, 16), np.uint8)
    regions[:, 2:9, 5:14] = 1
    got = predict_patch_probabilities(model, patches, flip_average=True, regions=regions)
    expected = []
    with torch.no_grad():
        for dims in ((), (-1,), (-2,), (-2, -1)):
            x = torch.from_numpy(patches)[:, None]
            x = x.flip(dims) if dims else x
            pixels = model(x, pixels=True)[:, 0]
            pixels = pixels.flip(dims) if dims else pixels  # back onto the organ mask
            inside = pixels.masked_fill(~torch.from_numpy(regions).bool(), -1e9)
            expected.append(torch.sigmoid(inside.flatten(1).amax(dim=1)))
    np.testing.assert_allclose(got, torch.stack(expected).mean(dim=0).numpy(), atol=1e-5)
    anywhere = predict_patch_probabilities(model, patches, flip_average=True)
    assert (got <= anywhere + 1e-6).all() and not np.allclose(got, anywhere)


def test_organ_region_needs_a_dense_network_and_old_bundles_score_the_window():
    with pytest.raises(ConfigError, match="needs a dense patch network"):
        ModelConfig(arch="table1", score_region="organ")
    with pytest.raises(ConfigError, match="unknown patch score region"):
        ModelConfig(arch="unet", score_region="tumour")
    old = ORGAN.to_dict()
    del old["model"]["score_region"]  # a bundle written before the setting existed
    assert PipelineConfig.from_dict(old).model.score_region == "window"
    assert PipelineConfig.from_dict(ORGAN.to_dict()).model.organ_scored


def test_store_keeps_organ_masks_and_is_recropped_when_they_are_needed(tmp_path):
    refs = load_dataset(write_toy_dataset(tmp_path / "d", 4))
    folder = tmp_path / "store"
    window = patched_cases(refs, DENSE, patch_store=folder, progress=False)
    assert window[0].patches.organ_masks is None
    stored = patched_cases(refs, ORGAN, patch_store=folder, progress=False)  # re-cropped
    in_memory = patch_cohort(refs, ORGAN, progress=False)
    for a, b in zip(in_memory, stored, strict=True):
        assert isinstance(b.patches.organ_masks, StoredRows)
        np.testing.assert_array_equal(a.patches.organ_masks, np.asarray(b.patches.organ_masks))
    joined = join_patches(stored)
    assert isinstance(joined.organ_masks, StoredRows) and len(joined.organ_masks) == len(joined)
    (folder / "organ.u8").unlink()
    with pytest.raises(InputError, match="organ.u8: missing"):
        open_patch_store(folder)


def test_training_scores_validation_inside_the_organ_and_needs_organ_masks():
    train = _bright_square_patches()
    organ = np.ones_like(train.masks)
    with_organ = PatchSet(train.patches, train.patient_ids, train.coords, train.labels,
                          train.masks, organ)
    config = TrainConfig(batch_size=32, max_epochs=1, learning_rate=3e-3, precision="fp32")
    model_config = ModelConfig(arch="unet", score_region="organ")
    fit_patch_cnn(with_organ, with_organ, config, model_config=model_config, progress=False)
    with pytest.raises(ConfigError, match="carry no organ masks"):
        fit_patch_cnn(with_organ, train, config, model_config=model_config, progress=False)


def test_cli_scores_a_dense_network_inside_the_organ_by_default(tmp_path, capsys):
    dataset = write_toy_dataset(tmp_path / "data", n_patients=8)
    model = tmp_path / "unet.cadx"
    common = ["--patch-size", "16", "--stride", "8", "--epochs", "1", "--batch-size", "32",
              "--quiet"]
    assert main(["train", str(dataset), "--out", str(model), *common,
                 "--patch-network", "unet"]) == 0
    bundle = load_bundle(model)
    assert bundle.config.model.score_region == "organ"
    _diagnoses_a_toy_patient(model, dataset, tmp_path)
    case = read_case(dataset / "imagesTr" / "toy_000.nii.gz",
                     organ_mask_path=dataset / "labelsTr" / "toy_000.nii.gz")
    diagnosis = diagnose_case(bundle, case)
    assert ct_heatmap(case, diagnosis, bundle.config, bundle.build_model()).per_pixel
    capsys.readouterr()
    assert main(["train", str(dataset), "--out", str(tmp_path / "t1.cadx"), *common,
                 "--patch-score-region", "organ"]) == 2
    err = capsys.readouterr().err
    assert "needs a dense patch network" in err and "Traceback" not in err
    assert not (tmp_path / "t1.cadx").exists()
    assert main(["train", str(dataset), "--out", str(tmp_path / "t1.cadx"), *common,
                 "--dice-reduction", "patch"]) == 2
    err = capsys.readouterr().err
    assert "--dice-reduction patch needs a dense" in err and "Traceback" not in err
    assert main(["train", str(dataset), "--out", str(tmp_path / "t1.cadx"), *common,
                 "--patch-network", "unet", "--unet-width", "2"]) == 2
    err = capsys.readouterr().err
    assert "UNet width must be >= 4" in err and "Traceback" not in err
    assert not (tmp_path / "t1.cadx").exists()


def _trained_weights(train: PatchSet, loss_region: str) -> list[torch.Tensor]:
    config = TrainConfig(batch_size=32, max_epochs=1, learning_rate=3e-3, precision="fp32",
                         patch_loss_region=loss_region)
    model, _ = fit_patch_cnn(train, train, config, progress=False,
                             model_config=ModelConfig(arch="unet", score_region="organ"))
    return list(model.state_dict().values())


def test_patch_loss_inside_the_organ_takes_the_largest_in_organ_logit():
    train = _bright_square_patches()
    whole = np.ones_like(train.masks)
    half = whole.copy()
    half[:, :, :8] = 0  # the organ covers the right half of every window

    def with_organ(organ: np.ndarray) -> PatchSet:
        return PatchSet(train.patches, train.patient_ids, train.coords, train.labels,
                        train.masks, organ)

    window = _trained_weights(with_organ(whole), "window")
    # An organ covering the whole window is the window: the same training, step for step.
    for a, b in zip(window, _trained_weights(with_organ(whole), "organ"), strict=True):
        torch.testing.assert_close(a, b)
    moved = _trained_weights(with_organ(half), "organ")
    assert any(not torch.allclose(a, b) for a, b in zip(window, moved, strict=True)
               if a.is_floating_point())


def test_patch_loss_region_is_checked_and_old_bundles_train_on_the_window():
    with pytest.raises(ConfigError, match="patch loss region must be one of"):
        TrainConfig(patch_loss_region="tumour")
    with pytest.raises(ConfigError, match="--patch-loss-region organ needs"):
        PipelineConfig(model=ModelConfig(arch="unet", score_region="window"),
                       train=TrainConfig(patch_loss_region="organ"))
    old = ORGAN.to_dict()
    del old["train"]["patch_loss_region"]  # a bundle written before the setting existed
    assert PipelineConfig.from_dict(old).train.patch_loss_region == "window"


def _disc_mask(size: int, radius: float, centre: tuple[float, float]) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    inside = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius ** 2
    return inside.float()[None]


def test_per_patch_dice_weighs_a_small_tumour_as_much_as_a_large_one():
    large = _disc_mask(32, 12, (16, 16))
    small = _disc_mask(32, 2, (8, 8))
    masks = torch.stack([large, small, torch.zeros_like(large)])
    # The large tumour found exactly, the small one missed, the tumour-free patch clean.
    logits = torch.where(masks > 0.5, 20.0, -20.0)
    logits[1] = -20.0
    batch = float(TumourDiceLoss("batch")(logits, masks))
    per_patch = float(TumourDiceLoss("patch")(logits, masks))
    # Over the batch's pixels the 13 missed pixels hardly count against 441 found ones ...
    found, missed = float(large.sum()), float(small.sum())
    assert batch == pytest.approx(1 - 2 * found / (2 * found + missed), abs=1e-3)
    assert batch < 0.02
    # ... per patch, the missed tumour is half the loss; the tumour-free patch adds nothing.
    assert per_patch == pytest.approx(0.5, abs=0.01)
    clean = torch.full_like(masks[2:], -20.0)
    assert float(TumourDiceLoss("patch")(clean, masks[2:])) == 0.0


def test_per_patch_dice_trains_and_needs_a_dense_network():
    train = _bright_square_patches()
    config = TrainConfig(batch_size=32, max_epochs=1, learning_rate=3e-3, precision="fp32",
                         dice_reduction="patch")
    model, history = fit_patch_cnn(train, train, config, progress=False,
                                   model_config=ModelConfig(arch="unet", score_region="window"))
    assert np.isfinite(history.train_loss[0])
    with pytest.raises(ConfigError, match="Dice reduction must be one of"):
        TrainConfig(dice_reduction="tumour")
    with pytest.raises(ConfigError, match="--dice-reduction patch needs a dense"):
        PipelineConfig(train=TrainConfig(dice_reduction="patch"))
    old = ORGAN.to_dict()
    del old["train"]["dice_reduction"]  # a bundle written before the setting existed
    assert PipelineConfig.from_dict(old).train.dice_reduction == "batch"


def test_unet_width_sets_the_channels_and_is_checked():
    from cadx.models.patch_network import build_patch_network

    narrow = build_patch_network(ModelConfig(arch="unet"), 50, 3, pretrained=False)
    wide = build_patch_network(ModelConfig(arch="unet", unet_width=24), 50, 3, pretrained=False)
    first = [m for m in wide.modules() if isinstance(m, torch.nn.Conv2d)][0]
    assert first.out_channels == 24
    assert (sum(p.numel() for p in wide.parameters())
            > 2 * sum(p.numel() for p in narrow.parameters()))
    assert wide(torch.rand(2, 3, 50, 50), pixels=True).shape == (2, 1, 50, 50)
    with pytest.raises(ConfigError, match="UNet width must be >= 4"):
        ModelConfig(arch="unet", unet_width=2)
    with pytest.raises(ConfigError, match="--unet-width applies to the dense UNet only"):
        ModelConfig(arch="table1", unet_width=24)
    old = ORGAN.to_dict()
    del old["model"]["unet_width"]  # a bundle written before the setting existed
    assert PipelineConfig.from_dict(old).model.unet_width == 16
