"""Augmentation and the 2D classifier training loop (tiny network, tiny images)."""

import numpy as np
import pytest
import torch
from torch import nn

from cadx.errors import ConfigError, SplitError
from cadx.train.augment import augment_batch, augment_batch_with_masks, image_augmentation
from cadx.train.image_fit import ImageTrainConfig, fit_image_model, predict_image_probabilities


def _images(n: int, seed: int):
    """Class 1 has a bright blob; class 0 does not."""
    rng = np.random.default_rng(seed)
    images = rng.normal(0.3, 0.05, (n, 1, 24, 24)).astype(np.float32)
    labels = np.arange(n) % 2
    for i in np.flatnonzero(labels):
        y, x = rng.integers(6, 18, 2)
        images[i, 0, y - 3:y + 3, x - 3:x + 3] += 0.5
    return np.clip(images, 0, 1), labels


def _tiny_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(8, 1))


def test_augmentation_keeps_shape_and_range_is_seeded_and_changes_images():
    images = torch.rand(4, 1, 32, 32)
    first = augment_batch(images, image_augmentation(32, seed=1))
    again = augment_batch(images, image_augmentation(32, seed=1))
    assert first.shape == images.shape and type(first) is torch.Tensor
    assert float(first.min()) >= 0.0 and float(first.max()) <= 1.0
    torch.testing.assert_close(first, again)
    assert not torch.allclose(first, images)


def test_masks_follow_their_images_through_augmentation():
    # A bright square off centre, and its mask: after crop, affine and flips the bright pixels
    # must still be where the mask is; the images come out as augment_batch makes them.
    images = torch.full((16, 3, 64, 64), 0.2)
    masks = torch.zeros(16, 64, 64)
    images[:, :, 20:34, 4:18], masks[:, 20:34, 4:18] = 0.8, 1.0
    plain = augment_batch(images, image_augmentation(64, seed=3))
    augmented, moved = augment_batch_with_masks(images, masks, image_augmentation(64, seed=3))
    torch.testing.assert_close(augmented, plain)
    assert moved.shape == masks.shape and float(moved.min()) >= 0 and float(moved.max()) <= 1
    for image, mask in zip(augmented, moved, strict=True):
        assert float(image[:, mask > 0.5].mean()) > float(image[:, mask < 0.5].mean()) + 0.3


class _NamedNet(nn.Module):
    """A tiny network whose convolutional map is a named module, as a CAM layer is."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(8, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x))


def _blob_masks(images: np.ndarray) -> np.ndarray:
    return (images[:, 0] > 0.6).astype(np.float32)


def test_lesion_mask_guidance_trains_the_layer_and_keeps_the_network():
    x_train, y_train = _images(64, 0)
    x_val, y_val = _images(32, 1)
    masks = _blob_masks(x_train)
    masks[::4] = np.nan  # images without a mask take no lesion loss
    config = ImageTrainConfig(batch_size=16, max_epochs=5, learning_rate=1e-2,
                              early_stop_patience=5, seed=0, lesion_mask_weight=1.0)
    torch.manual_seed(0)
    model, history = fit_image_model(_NamedNet(), x_train, y_train, x_val, y_val, config,
                                     lesion_masks=masks, lesion_layer="conv", progress=False)
    assert len(history.lesion_loss) == 5 and history.lesion_loss[-1] < history.lesion_loss[0]
    assert set(model.state_dict()) == set(_NamedNet().state_dict())
    assert not model.conv[0]._forward_hooks  # the hook is removed after training


def test_without_weight_masks_change_nothing_and_guidance_needs_masks():
    x_train, y_train = _images(32, 0)
    x_val, y_val = _images(16, 1)
    config = ImageTrainConfig(batch_size=16, max_epochs=2, seed=0)
    states = []
    for masks in (None, _blob_masks(x_train)):
        torch.manual_seed(0)
        model, _ = fit_image_model(_NamedNet(), x_train, y_train, x_val, y_val, config,
                                   lesion_masks=masks, lesion_layer="conv", progress=False)
        states.append(model.state_dict())
    for key, value in states[0].items():
        torch.testing.assert_close(states[1][key], value)
    guided = ImageTrainConfig(batch_size=16, max_epochs=1, lesion_mask_weight=1.0)
    with pytest.raises(ConfigError, match="one mask per training image"):
        fit_image_model(_NamedNet(), x_train, y_train, x_val, y_val, guided, progress=False)
    with pytest.raises(ConfigError, match="lesion-mask weight"):
        ImageTrainConfig(lesion_mask_weight=-1.0)


def test_training_learns_a_separable_task_and_keeps_the_best_epoch():
    torch.manual_seed(0)
    x_train, y_train = _images(64, 0)
    x_val, y_val = _images(32, 1)
    config = ImageTrainConfig(batch_size=16, max_epochs=6, learning_rate=1e-2,
                              early_stop_patience=3, seed=0)
    model, history = fit_image_model(_tiny_net(), x_train, y_train, x_val, y_val, config,
                                     progress=False)
    assert history.best_validation_auc == max(history.validation_auc)
    assert history.best_validation_auc > 0.9
    from sklearn.metrics import roc_auc_score

    kept = roc_auc_score(y_val, predict_image_probabilities(model, x_val))
    assert kept == pytest.approx(history.best_validation_auc)


def test_one_class_training_set_is_refused():
    x, y = _images(8, 0)
    with pytest.raises(SplitError, match="training images are all of one class"):
        fit_image_model(_tiny_net(), x, np.zeros(8), x, y, ImageTrainConfig(), progress=False)


def test_bf16_without_cpu_support_falls_back_to_fp32_with_one_warning(monkeypatch):
    from cadx.train import precision

    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)
    with pytest.warns(RuntimeWarning, match="no bf16 instructions; training in fp32"):
        assert precision.resolve_precision("bf16") == "fp32"
    assert precision.resolve_precision("fp32") == "fp32"
