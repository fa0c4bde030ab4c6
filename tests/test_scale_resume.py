"""Checkpoint and resume: stopping after an epoch and going on gives the uninterrupted run."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from cadx.config import ModelConfig, TrainConfig
from cadx.errors import ConfigError
from cadx.train.fit import fit_patch_cnn
from tests.conftest import random_patch_set


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return random_patch_set(rng, 128), random_patch_set(rng, 32)


def _config(epochs: int) -> TrainConfig:
    return TrainConfig(batch_size=32, max_epochs=epochs, reduce_lr_patience=1,
                       early_stop_patience=5, seed=3)


def test_resumed_run_equals_the_uninterrupted_run(data, tmp_path):
    train, validation = data
    plain = ModelConfig(batch_norm=False)
    whole_model, whole = fit_patch_cnn(train, validation, _config(2), model_config=plain,
                                       progress=False)
    checkpoint = tmp_path / "m.ckpt"
    fit_patch_cnn(train, validation, _config(1), model_config=plain, progress=False,
                  checkpoint_path=checkpoint, resume=True)
    assert torch.load(checkpoint, weights_only=True)["epoch"] == 0
    model, resumed = fit_patch_cnn(train, validation, _config(2), model_config=plain,
                                   progress=False, checkpoint_path=checkpoint, resume=True)
    assert resumed.train_loss == whole.train_loss
    assert resumed.validation_auc == whole.validation_auc
    assert resumed.learning_rate == whole.learning_rate
    for a, b in zip(model.state_dict().values(), whole_model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_checkpoint_of_another_network_is_refused(data, tmp_path):
    train, validation = data
    checkpoint = tmp_path / "m.ckpt"
    fit_patch_cnn(train, validation, _config(1), model_config=ModelConfig(batch_norm=False),
                  progress=False, checkpoint_path=checkpoint, resume=True)
    with pytest.raises(ConfigError, match="different network"):
        fit_patch_cnn(train, validation, _config(2), model_config=ModelConfig(batch_norm=True),
                      progress=False, checkpoint_path=checkpoint, resume=True)


def test_fine_tuning_starts_from_the_given_weights(data):
    """`initial_state` (hard-negative fine-tuning) starts from a trained network's weights,
    not a fresh initialisation; weights of another network are refused."""
    train, validation = data
    plain = ModelConfig(batch_norm=False)
    first, _ = fit_patch_cnn(train, validation, _config(1), model_config=plain, progress=False)
    still = replace(_config(1), learning_rate=1e-12)  # one epoch that barely moves the weights
    tuned, _ = fit_patch_cnn(train, validation, still, model_config=plain, progress=False,
                             initial_state=first.state_dict())
    fresh, _ = fit_patch_cnn(train, validation, still, model_config=plain, progress=False)
    for start, after, new in zip(first.state_dict().values(), tuned.state_dict().values(),
                                 fresh.state_dict().values(), strict=True):
        assert torch.allclose(start, after, atol=1e-6)
        assert start.numel() == 1 or not torch.allclose(start, new, atol=1e-3)
    with pytest.raises(ConfigError, match="different network"):
        fit_patch_cnn(train, validation, _config(1), model_config=ModelConfig(batch_norm=True),
                      progress=False, initial_state=first.state_dict())
