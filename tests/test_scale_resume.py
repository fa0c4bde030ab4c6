"""Checkpoint and resume: stopping after an epoch and going on gives the uninterrupted run."""

import numpy as np
import pytest
import torch

from cadx.config import ModelConfig, TrainConfig
from cadx.errors import ConfigError
from cadx.patches.grid import PatchSet
from cadx.train.fit import fit_patch_cnn


def _patches(rng: np.random.Generator, n: int) -> PatchSet:
    labels = (rng.random(n) < 0.3).astype(np.uint8)
    patches = rng.random((n, 16, 16), dtype=np.float32) * 0.5 + labels[:, None, None] * 0.02
    return PatchSet(patches, np.full(n, "p", dtype=object), np.zeros((n, 3), np.int32), labels)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return _patches(rng, 128), _patches(rng, 32)


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
