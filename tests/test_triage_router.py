"""The router: multiclass training, the confidence floor, its bundle, training from a
category dataset with patient-level splits."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from cadx.config import ImageModelConfig, ImageTrainConfig
from cadx.errors import BundleError, ConfigError, SplitError
from cadx.io.images import ImageDataset, load_image_dataset
from cadx.synth.categories import CATEGORIES, CategoryCohortSpec, write_category_cohort
from cadx.train.image_fit import fit_image_model, predict_image_probabilities
from cadx.triage.bundle import TriageBundle, load_triage_bundle, save_triage_bundle
from cadx.triage.router import UNROUTED, routings
from cadx.triage.train import train_router


def _three_classes(n: int, seed: int):
    """Class k has a bright square in the k-th third of the image."""
    rng = np.random.default_rng(seed)
    images = rng.normal(0.3, 0.05, (n, 1, 24, 24)).astype(np.float32)
    labels = np.arange(n) % 3
    for i, k in enumerate(labels):
        y = rng.integers(4, 20)
        images[i, 0, y - 3:y + 3, 8 * k + 1:8 * k + 7] += 0.5
    return np.clip(images, 0, 1), labels


def _tiny_net(outputs: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveMaxPool2d(3),
                         nn.Flatten(), nn.Linear(72, outputs))


def test_multiclass_training_learns_and_returns_softmax_rows():
    torch.manual_seed(0)
    x_train, y_train = _three_classes(90, 0)
    x_val, y_val = _three_classes(30, 1)
    config = ImageTrainConfig(batch_size=16, max_epochs=8, learning_rate=1e-2,
                              early_stop_patience=3, augment=False)
    model, history = fit_image_model(_tiny_net(3), x_train, y_train, x_val, y_val, config,
                                     task="multiclass", progress=False)
    probabilities = predict_image_probabilities(model, x_val, task="multiclass")
    assert probabilities.shape == (30, 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert history.best_validation_auc > 0.9
    assert (probabilities.argmax(axis=1) == y_val).mean() > 0.8


def test_multiclass_refuses_a_missing_class_and_a_one_logit_model():
    x, y = _three_classes(12, 0)
    config = ImageTrainConfig(max_epochs=1)
    with pytest.raises(SplitError, match=r"no image of class\(es\) \[2\]"):
        fit_image_model(_tiny_net(3), x, np.where(y == 2, 0, y), x, y, config,
                        task="multiclass", progress=False)
    with pytest.raises(ConfigError, match="one logit per class"):
        fit_image_model(_tiny_net(1), x, y, x, y, config, task="multiclass", progress=False)


def test_confidence_floor_leaves_uncertain_images_unrouted_with_their_scores():
    probabilities = np.array([[0.9, 0.05, 0.05], [0.4, 0.35, 0.25], [0.6, 0.1, 0.3]])
    routed = routings(probabilities, ("a", "b", "c"), confidence_floor=0.6)
    assert [r.category for r in routed] == ["a", UNROUTED, UNROUTED]  # 0.6 is not above 0.6
    assert routed[1].scores == {"a": 0.4, "b": 0.35, "c": 0.25} and not routed[1].routed
    assert [r.category for r in routings(probabilities, ("a", "b", "c"), 0.0)] == ["a"] * 3
    with pytest.raises(ConfigError, match="expected"):
        routings(probabilities, ("a", "b"), 0.5)


def _router_bundle(floor: float = 0.5) -> TriageBundle:
    from cadx.models.backbones import build_backbone

    torch.manual_seed(0)
    model = build_backbone("resnet18", 3, 3, 0.125)
    return TriageBundle("router", ("a", "b", "c"), "resnet18", 0.125, 32, 3,
                        model.state_dict(), confidence_floor=floor)


def test_bundle_round_trip_and_refusals(tmp_path):
    bundle = _router_bundle(0.55)
    path = save_triage_bundle(bundle, tmp_path / "router.cadx")
    loaded = load_triage_bundle(path, "router")
    images = np.random.default_rng(0).random((4, 3, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(loaded.predict(images), bundle.predict(images), rtol=1e-5)
    assert loaded.labels == ("a", "b", "c") and loaded.confidence_floor == 0.55
    with pytest.raises(BundleError, match="a router model, not a qc model"):
        load_triage_bundle(path, "qc")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / "bad.cadx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="bad.cadx"):
        load_triage_bundle(tmp_path / "bad.cadx")
    with pytest.raises(ConfigError, match="two distinct labels"):
        TriageBundle("router", ("a", "a"), "resnet18", 0.125, 32, 3, {})


def test_train_router_on_a_tiny_category_cohort(tmp_path):
    root = write_category_cohort(tmp_path / "tri", CategoryCohortSpec(
        patients_per_category=3, images_per_patient=(2, 2), unreadable_fraction=0.0,
        image_size_px=40), progress=False)
    dataset = load_image_dataset(root / "categories", progress=False)
    assert dataset.class_names == tuple(sorted(CATEGORIES))
    split_of = {"1": "test", "2": "validation", "3": "train"}
    records = tuple(replace(r, split=split_of[r.patient_id[-1]]) for r in dataset.records)
    config = ImageModelConfig(size_px=32, channels=3, width=0.125,
                              train=ImageTrainConfig(batch_size=8, max_epochs=1))
    outcome = train_router(ImageDataset(records, dataset.class_names, dataset.source), config,
                           confidence_floor=0.3, progress=False)
    bundle = outcome.bundle
    assert bundle.kind == "router" and bundle.labels == dataset.class_names
    assert bundle.summary["counts"]["test"] == {"images": 10, "patients": 5}
    assert outcome.test["images"] == 10 and set(outcome.test["confusion"]) == set(CATEGORIES)
    assert sum(sum(row.values()) for row in outcome.test["confusion"].values()) == 10
    missing = tuple(r for r in records if not (r.split == "validation" and
                                               r.patient_id.startswith("other")))
    with pytest.raises(SplitError, match="validation split has no image of other"):
        train_router(ImageDataset(missing, dataset.class_names, dataset.source), config,
                     progress=False)
    with pytest.raises(ConfigError, match="unknown network"):
        train_router(dataset, config, arch="vgg", progress=False)
