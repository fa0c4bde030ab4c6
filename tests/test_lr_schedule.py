"""The patch network's learning-rate schedules: the seed's reduce-on-plateau and one-cycle
(warm-up, then cosine decay per step), their step counts, resume, and the CLI flag."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler

import cadx.train.fit as fit
from cadx.cli import _pipeline_config, build_parser
from cadx.config import ModelConfig, TrainConfig
from cadx.errors import ConfigError
from cadx.train.fit import (
    _batches_per_epoch,
    _distributed_batches,
    _single_process_batches,
    fit_patch_cnn,
)
from tests.conftest import random_patch_set

PLAIN = ModelConfig(batch_norm=False)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(1)
    return random_patch_set(rng, 100), random_patch_set(rng, 30)


def _onecycle(epochs: int, **changes) -> TrainConfig:
    return TrainConfig(batch_size=32, max_epochs=epochs, learning_rate=1e-2,
                       lr_schedule="onecycle", early_stop_patience=epochs, seed=2, **changes)


@pytest.mark.parametrize("balanced", [False, True])
def test_steps_per_epoch_are_the_batches_the_epoch_takes(balanced):
    labels = (np.arange(101) % 4 == 0).astype(np.uint8)
    config = TrainConfig(batch_size=16, balanced_sampling=balanced, augment_flips=False)
    generator = torch.Generator().manual_seed(0)
    assert _batches_per_epoch(labels, config, None, 1) == len(
        list(_single_process_batches(labels, config, generator))) == math.ceil(101 / 16)
    for rank in (0, 1):  # torchrun: each of 2 ranks takes half of every global batch
        sampler = DistributedSampler(labels, num_replicas=2, rank=rank, shuffle=True, seed=0)
        assert _batches_per_epoch(labels, config, sampler, 2) == len(
            list(_distributed_batches(sampler, 0, 8, config)))


def test_onecycle_decays_to_near_zero_and_plateau_stays(data):
    train, validation = data
    _, cycle = fit_patch_cnn(train, validation, _onecycle(4), model_config=PLAIN,
                             progress=False)
    rates = cycle.learning_rate  # read after each epoch: past the 15 % warm-up from epoch 1 on
    assert len(rates) == 4 and max(rates) <= 1e-2
    assert all(a > b for a, b in zip(rates, rates[1:], strict=False))
    assert rates[-1] < 1e-6
    flat = TrainConfig(batch_size=32, max_epochs=2, learning_rate=1e-2, seed=2)
    _, plateau = fit_patch_cnn(train, validation, flat, model_config=PLAIN, progress=False)
    assert plateau.learning_rate == [1e-2, 1e-2]


def test_onecycle_with_balanced_batches_takes_every_planned_step(data):
    train, validation = data
    _, history = fit_patch_cnn(train, validation, _onecycle(2, balanced_sampling=True),
                               model_config=PLAIN, progress=False)
    assert history.learning_rate[-1] < 1e-6  # the last planned step was taken, none beyond


class _Interrupt(Exception):
    pass


def test_onecycle_resumes_exactly_and_refuses_another_length(data, tmp_path, monkeypatch):
    train, validation = data
    whole_model, whole = fit_patch_cnn(train, validation, _onecycle(3), model_config=PLAIN,
                                       progress=False)
    checkpoint = tmp_path / "m.ckpt"
    save = fit._save_checkpoint

    def save_then_stop(path, state):
        save(path, state)
        raise _Interrupt

    monkeypatch.setattr(fit, "_save_checkpoint", save_then_stop)
    with pytest.raises(_Interrupt):  # stopped after the first epoch, as by Ctrl-C
        fit_patch_cnn(train, validation, _onecycle(3), model_config=PLAIN, progress=False,
                      checkpoint_path=checkpoint, resume=True)
    monkeypatch.setattr(fit, "_save_checkpoint", save)
    for other in (_onecycle(4), replace(_onecycle(3), lr_schedule="plateau")):
        with pytest.raises(ConfigError, match="another learning-rate schedule or number of"):
            fit_patch_cnn(train, validation, other, model_config=PLAIN, progress=False,
                          checkpoint_path=checkpoint, resume=True)
    model, resumed = fit_patch_cnn(train, validation, _onecycle(3), model_config=PLAIN,
                                   progress=False, checkpoint_path=checkpoint, resume=True)
    assert resumed.learning_rate == whole.learning_rate
    assert resumed.train_loss == whole.train_loss
    for a, b in zip(model.state_dict().values(), whole_model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_cli_flag_reaches_the_training_config():
    def train_config(*flags):
        args = build_parser().parse_args(["train", "d", "--out", "m", *flags])
        return _pipeline_config(args).train

    assert train_config().lr_schedule == "plateau"  # the seed's
    assert train_config("--lr-schedule", "onecycle").lr_schedule == "onecycle"
    with pytest.raises(ConfigError, match="learning-rate schedule must be one of"):
        TrainConfig(lr_schedule="cosine")
