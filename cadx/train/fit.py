"""Train the patch CNN: weighted BCE, reduce-LR-on-plateau, early stopping, seeded."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from sklearn.metrics import roc_auc_score
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler

from cadx.config import ModelConfig, TrainConfig
from cadx.errors import ConfigError, SplitError
from cadx.io.atomic import atomic_path
from cadx.models.dense_patch_net import largest_logit
from cadx.models.patch_network import build_patch_network
from cadx.patches.grid import PatchSet
from cadx.train.loss import TumourDiceLoss, WeightedBCELoss, per_tumour_weights
from cadx.train.precision import autocast, resolve_precision
from cadx.train.sampling import BalancedBatchSampler


@dataclass
class TrainingHistory:
    """Per-epoch losses and learning rates, and where the best validation loss was."""

    train_loss: list[float] = field(default_factory=list)
    validation_loss: list[float] = field(default_factory=list)
    validation_auc: list[float] = field(default_factory=list)
    learning_rate: list[float] = field(default_factory=list)
    best_epoch: int = 0
    stopped_early: bool = False

    def to_dict(self) -> dict[str, object]:
        return {
            "epochs_run": len(self.train_loss), "best_epoch": self.best_epoch,
            "stopped_early": self.stopped_early, "train_loss": self.train_loss,
            "validation_loss": self.validation_loss, "validation_auc": self.validation_auc,
            "learning_rate": self.learning_rate,
        }


class EarlyStopping:
    """Stop when the monitored value has not improved for `patience` epochs; keep the best model.

    `mode` is "min" for a loss, "max" for an AUC.
    """

    def __init__(self, patience: int, mode: str = "min") -> None:
        self.patience = patience
        self.sign = 1.0 if mode == "min" else -1.0
        self.best_value = float("inf")
        self.best_epoch = -1
        self.best_state: dict[str, torch.Tensor] | None = None

    def update(self, value: float, epoch: int, model: torch.nn.Module) -> bool:
        """Record this epoch's value; return True when training should stop."""
        if self.sign * value < self.best_value:
            self.best_value, self.best_epoch = self.sign * value, epoch
            self.best_state = copy.deepcopy(model.state_dict())
        return epoch - self.best_epoch >= self.patience


def epoch_progress(progress: bool) -> Progress:
    """A rich progress bar over epochs with a free-text status field (disabled when quiet)."""
    columns = [TextColumn("training"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TextColumn("{task.fields[status]}"), TimeElapsedColumn()]
    return Progress(*columns, disable=not progress)


def patch_regions(patches: PatchSet, model_config: ModelConfig, what: str
                  ) -> np.ndarray | None:
    """The organ masks inside which `model_config`'s network scores `patches` (None: the
    whole window); a one-line error when they are needed and the patches carry none."""
    if not model_config.organ_scored:
        return None
    if patches.organ_masks is None:
        raise ConfigError(f"these {what} patches carry no organ masks, and the patch network "
                          "scores inside the organ (crop them with --patch-score-region organ)")
    return patches.organ_masks


def _batch_tensor(patches: np.ndarray, index: np.ndarray | slice) -> torch.Tensor:
    """(n, C, P, P) float32 channels_last tensor of the indexed (n, P, P) or (n, C, P, P) patches.

    Only these rows are read, so `patches` may be a memory-mapped store larger than RAM.
    """
    batch = torch.from_numpy(np.asarray(patches[index], dtype=np.float32))
    if batch.dim() == 3:
        batch = batch.unsqueeze(1)
    return batch.contiguous(memory_format=torch.channels_last)


# Which of a patch's symmetries to apply: flip left-right, flip up-down, transpose. With all
# three drawn at random every one of the square's 8 symmetries (flips and 90-degree rotations)
# is equally likely.
Augmentation = torch.Tensor  # (3, n) bool


def augment_patches(batch: torch.Tensor, augmentation: Augmentation | None) -> torch.Tensor:
    """Apply the per-patch flips / transposes of `augmentation` to (n, C, P, P) `batch` at once
    (label-preserving: a tumour is a tumour in any orientation)."""
    if augmentation is None:
        return batch
    flip_x, flip_y, transpose = (row[:, None, None, None] for row in augmentation)
    batch = torch.where(flip_x, batch.flip(-1), batch)
    batch = torch.where(flip_y, batch.flip(-2), batch)
    if bool(transpose.any()):
        batch = torch.where(transpose, batch.transpose(-1, -2), batch)
    return batch.contiguous(memory_format=torch.channels_last)


def _draw_augmentation(n: int, config: TrainConfig, generator: torch.Generator
                       ) -> Augmentation | None:
    """Per-patch flips (and transposes with rotations) for `n` patches, or None for none."""
    if not config.augment_flips and not config.augment_rotations:
        return None
    draws = torch.zeros(3, n, dtype=torch.bool)
    if config.augment_flips:  # drawn first and alone as before, so seeded runs stay the same
        draws[0] = torch.rand(n, generator=generator) < 0.5
        draws[1] = torch.rand(n, generator=generator) < 0.5
    if config.augment_rotations:
        draws[2] = torch.rand(n, generator=generator) < 0.5
    return draws


def _single_process_batches(labels: np.ndarray, config: TrainConfig, generator: torch.Generator
                            ) -> Iterator[tuple[torch.Tensor, Augmentation | None]]:
    """One epoch of (index, augmentation): a fresh permutation (or class-balanced batches),
    augmentations drawn per batch."""
    if config.balanced_sampling:
        batches = iter(BalancedBatchSampler(labels, config.batch_size,
                                            config.batch_positive_fraction, generator))
    else:
        order = torch.randperm(len(labels), generator=generator)
        batches = (order[start:start + config.batch_size]
                   for start in range(0, len(labels), config.batch_size))
    for index in batches:
        yield index, _draw_augmentation(len(index), config, generator)


def _distributed_batches(sampler: DistributedSampler, epoch: int, local_batch: int,
                         config: TrainConfig
                         ) -> Iterator[tuple[torch.Tensor, Augmentation | None]]:
    """This rank's share of one epoch: DistributedSampler's slice of a seeded permutation.

    Augmentations are drawn per patch from a generator seeded by (seed, epoch), identical on
    every rank, so rank r's k-th batch plus the other ranks' k-th batches are exactly the k-th
    batch of the same run on one rank with N times the batch size: N ranks train as one
    process would.
    """
    sampler.set_epoch(epoch)
    local = torch.tensor(list(sampler), dtype=torch.int64)
    draws = None
    if config.augment_flips or config.augment_rotations:
        draws = torch.rand(3 if config.augment_rotations else 2, len(sampler.dataset),
                           generator=torch.Generator().manual_seed(config.seed * 100_003 + epoch)
                           ) < 0.5
        if not config.augment_flips:
            draws[:2] = False
        if not config.augment_rotations:
            draws = torch.cat([draws, torch.zeros_like(draws[:1])])
    for start in range(0, len(local), local_batch):
        index = local[start:start + local_batch]
        yield index, None if draws is None else draws[:, index]


def _batches_per_epoch(labels: np.ndarray, config: TrainConfig,
                       sampler: DistributedSampler | None, world: int) -> int:
    """How many optimiser steps one epoch takes on this rank (as the batch iterators above)."""
    if sampler is not None:
        return math.ceil(len(sampler) / (config.batch_size // world))
    if config.balanced_sampling:
        return len(BalancedBatchSampler(labels, config.batch_size,
                                        config.batch_positive_fraction))
    return math.ceil(len(labels) / config.batch_size)


def _check_labelled(patch_set: PatchSet, name: str) -> None:
    if patch_set.labels is None or len(patch_set) == 0:
        raise SplitError(f"{name} split has no labelled patches")
    n_pos = int(patch_set.labels.sum())
    if n_pos == 0 or n_pos == len(patch_set):
        kind = "cancerous" if n_pos else "non-cancerous"
        raise SplitError(f"{name} split has only {kind} patches ({len(patch_set)}); "
                         "need both classes")


def fit_patch_cnn(
    train: PatchSet, validation: PatchSet, config: TrainConfig, *,
    model_config: ModelConfig | None = None, progress: bool = True,
    checkpoint_path: str | Path | None = None, resume: bool = False,
    device: str | None = None, initial_state: dict[str, torch.Tensor] | None = None,
) -> tuple[torch.nn.Module, TrainingHistory]:
    """Train the patch network `model_config` names on `train`, monitoring loss on
    `validation`; returns the best model (on the CPU).

    Patches are read batch by batch, so `train.patches` may be memory-mapped (a PatchStore).
    Inside an initialised torch.distributed process group (torchrun) the model is wrapped in
    DistributedDataParallel and each of the N ranks trains on batch_size / N patches of every
    global batch; rank 0 writes `checkpoint_path` (if given) after every epoch. With `resume`
    an existing checkpoint is loaded and training goes on after its epoch, exactly as if it
    had not stopped. `device` ("cuda", "cuda:1", "cpu"; default the CPU) trains a single
    process there; under torch.distributed each rank uses its own (nccl: its GPU).
    `initial_state` starts from those weights (a trained model's state dict: fine-tuning)
    instead of a fresh initialisation.

    `config.lr_schedule` "plateau" halves the learning rate after `reduce_lr_patience` stale
    epochs (the seed); "onecycle" warms up to `learning_rate` over the first 15 % of the steps
    and decays it (cosine) to near zero by the last step of `max_epochs`.

    `config.precision` "bf16" runs the forward passes under bfloat16 autocast (weights, the
    optimiser, BatchNorm and the loss stay fp32), the validation scores too; on a device
    without bf16 instructions it warns once and trains in fp32. "fp32" is the plain loop.
    """
    _check_labelled(train, "training")
    _check_labelled(validation, "validation")
    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    if config.batch_size % world:
        raise ConfigError(f"batch size {config.batch_size} does not split over {world} "
                          "processes; use a multiple of the process count")
    if distributed and config.balanced_sampling:
        raise ConfigError("balanced sampling is not available with --ddp; train on one "
                          "process or without --balanced-sampling")
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    # channels_last is ~1.3x faster for training and ~1.5x for inference on CPU (benchmarks/).
    model_config = model_config or ModelConfig()
    # A dense network learns each patch's tumour mask (soft Dice + pixel BCE)
    # beside the patch loss on its largest pixel logit.
    dense = model_config.dense
    if dense and train.masks is None:
        raise ConfigError(f"the {model_config.arch} patch network trains on each patch's tumour "
                          "mask, and these training patches carry none (crop them with "
                          f"--patch-network {model_config.arch})")
    # Validation patches are scored as the bundle will score them: inside the organ, if so.
    val_regions = patch_regions(validation, model_config, "validation")
    # The patch loss takes the largest pixel logit inside the organ too, with that setting.
    loss_regions = (patch_regions(train, model_config, "training")
                    if dense and config.patch_loss_region == "organ" else None)
    dice_loss = TumourDiceLoss(config.dice_reduction)
    # One GPU per rank under nccl (torchrun sets the device); the CPU otherwise.
    on_gpu = distributed and dist.get_backend() == "nccl"
    device = torch.device("cuda", torch.cuda.current_device()) if on_gpu else torch.device(
        device if device is not None and not distributed else "cpu")
    precision = resolve_precision(config.precision, device.type)
    # ImageNet weights where the architecture has them; initial_state or a checkpoint replace them.
    model = build_patch_network(model_config, train.patch_size_px, train.channels,
                                pretrained=True)
    if initial_state is not None:
        _load_state(model, initial_state, "initial weights",
                    "start from a bundle trained with the same patch settings")
    saved = _read_checkpoint(checkpoint_path) if resume and checkpoint_path else None
    if saved is not None:
        _load_state(model, saved["model"], checkpoint_path)
    model = model.to(device, memory_format=torch.channels_last)
    # DDP broadcasts rank 0's initial weights, then averages gradients over the ranks.
    network = (DistributedDataParallel(model, device_ids=[device.index] if on_gpu else None)
               if distributed else model)
    sampler = (DistributedSampler(train.labels, num_replicas=world, rank=rank, shuffle=True,
                                  seed=config.seed) if distributed else None)
    n_pos = int(train.labels.sum())
    # Validation loss weighs the classes by the training counts (the seed's w1 : w2); balanced
    # batches already hold the classes in the requested share, so their loss weighs the
    # patches by that share instead of correcting a second time.
    loss_fn = WeightedBCELoss(n_positive=n_pos, n_negative=len(train) - n_pos)
    train_loss_fn = loss_fn
    if config.balanced_sampling:
        k = BalancedBatchSampler(train.labels, config.batch_size,
                                 config.batch_positive_fraction).n_positive
        train_loss_fn = WeightedBCELoss(n_positive=k, n_negative=config.batch_size - k)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    mode = "min" if config.monitor == "loss" else "max"
    per_step = config.lr_schedule == "onecycle"
    scheduler = (torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=config.learning_rate, pct_start=0.15,
        total_steps=config.max_epochs * _batches_per_epoch(train.labels, config, sampler, world))
        if per_step else torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimiser, mode=mode, factor=config.reduce_lr_factor,
            patience=config.reduce_lr_patience))
    stopper = EarlyStopping(config.early_stop_patience, mode)
    history = TrainingHistory()
    first_epoch = 0
    if saved is not None:
        optimiser.load_state_dict(saved["optimiser"])
        # A one-cycle schedule is laid out over the run's total steps: only the same run can go on.
        if saved["scheduler"].get("total_steps") != getattr(scheduler, "total_steps", None):
            raise ConfigError(f"{checkpoint_path}: written with another learning-rate schedule "
                              "or number of epochs; resume with the same --lr-schedule and "
                              "--epochs, or delete it")
        scheduler.load_state_dict(saved["scheduler"])
        stopper.best_value, stopper.best_epoch = saved["best_value"], saved["best_epoch"]
        stopper.best_state = saved["best_model"]
        history = TrainingHistory(**{k: list(v) for k, v in saved["history"].items()})
        generator.set_state(saved["generator"])
        first_epoch = saved["epoch"] + 1
    y_train = torch.from_numpy(train.labels.astype(np.float32))
    patch_weights = (torch.from_numpy(per_tumour_weights(train.labels, train.patient_ids))
                     if config.positive_weighting == "tumour" else None)
    y_val = torch.from_numpy(validation.labels.astype(np.float32))

    with epoch_progress(progress and rank == 0) as bar:
        task = bar.add_task("epochs", total=config.max_epochs, completed=first_epoch, status="")
        for epoch in range(first_epoch, config.max_epochs):
            network.train()
            batches = (_distributed_batches(sampler, epoch, config.batch_size // world, config)
                       if distributed else
                       _single_process_batches(train.labels, config, generator))
            # Summed on the device and read once per epoch: reading it every step would wait
            # for each step to finish on a GPU.
            summed_loss = torch.zeros((), dtype=torch.float64, device=device)
            n_seen = 0
            for index, augmentation in batches:
                batch = _batch_tensor(train.patches, index.numpy()).to(device)
                augmentation = None if augmentation is None else augmentation.to(device)
                region = None
                if dense:  # tumour (and organ) masks as more channels: they move with the patch
                    masks = [train.masks] + ([] if loss_regions is None else [loss_regions])
                    both = augment_patches(torch.cat(
                        [batch] + [_batch_tensor(m, index.numpy()).to(device) for m in masks],
                        1), augmentation)
                    batch, target = both[:, :-len(masks)], both[:, -len(masks):][:, :1]
                    if loss_regions is not None:
                        region = both[:, -1] > 0.5
                else:
                    batch = augment_patches(batch, augmentation)
                optimiser.zero_grad(set_to_none=True)
                with autocast(precision, device.type):
                    outputs = network(batch, pixels=True) if dense else network(batch)
                outputs = outputs.float()
                logits = largest_logit(outputs, region) if dense else outputs
                loss = train_loss_fn(logits, y_train[index].to(device),
                                     None if patch_weights is None
                                     else patch_weights[index].to(device))
                if dense:  # outputs are the pixel logits
                    loss = (loss + dice_loss(outputs, target)
                            + F.binary_cross_entropy_with_logits(outputs, target))
                loss.backward()
                optimiser.step()
                step_lr = optimiser.param_groups[0]["lr"]  # recorded: the epoch's last step's
                if per_step:
                    scheduler.step()
                summed_loss += loss.detach().to(torch.float64) * len(index)
                n_seen += len(index)
            loss_sum = torch.stack([summed_loss.cpu(),
                                    torch.tensor(n_seen, dtype=torch.float64)])
            val_logits = predict_logits(model, validation.patches, precision=precision,
                                        regions=val_regions)
            scores = torch.tensor([float(loss_fn(val_logits, y_val)),
                                   roc_auc_score(validation.labels, val_logits.numpy())],
                                  dtype=torch.float64)
            if distributed:
                loss_sum, scores = loss_sum.to(device), scores.to(device)
                dist.all_reduce(loss_sum)
                # Every rank must take the same scheduler and stopping decisions: use rank 0's
                # validation (BatchNorm buffers may differ slightly between ranks).
                dist.broadcast(scores, src=0)
                loss_sum, scores = loss_sum.cpu(), scores.cpu()
            val_loss, val_auc = float(scores[0]), float(scores[1])
            history.train_loss.append(float(loss_sum[0] / loss_sum[1]))
            history.validation_loss.append(val_loss)
            history.validation_auc.append(val_auc)
            history.learning_rate.append(step_lr)
            monitored = val_loss if config.monitor == "loss" else val_auc
            if not per_step:
                scheduler.step(monitored)
            stop = stopper.update(monitored, epoch, model)
            if checkpoint_path is not None and rank == 0:
                _save_checkpoint(checkpoint_path, {
                    "epoch": epoch, "model": model.state_dict(),
                    "optimiser": optimiser.state_dict(), "scheduler": scheduler.state_dict(),
                    "best_value": stopper.best_value, "best_epoch": stopper.best_epoch,
                    "best_model": stopper.best_state, "generator": generator.get_state(),
                    "history": {k: getattr(history, k) for k in _HISTORY_LISTS}})
            bar.update(task, advance=1, status=f"loss {history.train_loss[-1]:.3f} "
                                               f"val {val_loss:.3f} AUC {val_auc:.3f}")
            if stop:
                history.stopped_early = True
                break
    model.load_state_dict(stopper.best_state)
    history.best_epoch = stopper.best_epoch
    return model.cpu().eval(), history


_HISTORY_LISTS = ("train_loss", "validation_loss", "validation_auc", "learning_rate")


def _save_checkpoint(path: str | Path, state: dict[str, object]) -> None:
    """Everything needed to go on after this epoch, written atomically."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _read_checkpoint(path: str | Path) -> dict | None:
    """A checkpoint written by `_save_checkpoint`, or None when there is none yet."""
    if not Path(path).exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError) as exc:
        raise ConfigError(f"{path}: unreadable training checkpoint ({exc})") from None


def _load_state(model: torch.nn.Module, state: dict[str, torch.Tensor], path: str | Path,
                advice: str = "delete it or train without --resume") -> None:
    try:
        model.load_state_dict(state)
    except RuntimeError:
        raise ConfigError(f"{path}: weights are from a different network (patch size, input "
                          f"channels or BatchNorm setting); {advice}") from None


# Small batches keep the conv activations in cache: on 2 cores batch 32 in channels_last runs
# ~4x faster than batch 1024 in NCHW (benchmarks/bench_patches.py).
INFERENCE_BATCH = 32


def _flip_views(batch: torch.Tensor) -> torch.Tensor:
    """The batch, flipped left-right, up-down and both, stacked: (4n, C, P, P)."""
    return torch.cat([batch, batch.flip(-1), batch.flip(-2), batch.flip(-2, -1)]).contiguous(
        memory_format=torch.channels_last)


def _region_kwargs(regions: np.ndarray | None, index: slice, device: torch.device,
                   flipped: bool = False) -> dict[str, torch.Tensor]:
    """`region=` for a dense network scoring inside (N, P, P) organ masks (nothing without);
    with `flipped`, the masks of the four flip views of `_flip_views`."""
    if regions is None:
        return {}
    region = torch.from_numpy(np.asarray(regions[index], dtype=bool))
    if flipped:
        region = torch.cat([region, region.flip(-1), region.flip(-2), region.flip(-2, -1)])
    return {"region": region.to(device)}


@torch.inference_mode()
def predict_logits(model: torch.nn.Module, patches: np.ndarray | torch.Tensor,
                   batch_size: int = INFERENCE_BATCH, *, precision: str = "fp32",
                   regions: np.ndarray | None = None) -> torch.Tensor:
    """fp32 logits for (N, P, P) or (N, C, P, P) patches (array, memory map or tensor), batch
    by batch, in eval mode; `precision` "bf16" runs the network under bfloat16 autocast (as a
    bundle trained in bf16 had its thresholds chosen). `regions`: (N, P, P) organ masks inside
    which a dense network takes its patch logit."""
    was_training = model.training
    model.eval().to(memory_format=torch.channels_last)
    device = next(model.parameters()).device
    if isinstance(patches, torch.Tensor):
        patches = patches.cpu().numpy()
    with autocast(precision, device.type):
        outputs = [model(_batch_tensor(patches, slice(i, i + batch_size)).to(device),
                         **_region_kwargs(regions, slice(i, i + batch_size), device)
                         ).float().cpu()
                   for i in range(0, len(patches), batch_size)]
    model.train(was_training)
    if not outputs:
        return torch.empty(0)
    return torch.cat(outputs)


@torch.inference_mode()
def _flip_averaged_probabilities(model: torch.nn.Module, patches: np.ndarray,
                                 batch_size: int, precision: str = "fp32",
                                 regions: np.ndarray | None = None) -> torch.Tensor:
    """Mean probability over each patch and its three flips, the four views in one forward
    pass per batch (each view scored inside its flipped region, with `regions`)."""
    was_training = model.training
    model.eval().to(memory_format=torch.channels_last)
    device = next(model.parameters()).device
    outputs = []
    for i in range(0, len(patches), batch_size):
        batch = _batch_tensor(patches, slice(i, i + batch_size)).to(device)
        with autocast(precision, device.type):
            logits = model(_flip_views(batch),
                           **_region_kwargs(regions, slice(i, i + batch_size), device, True))
        views = torch.sigmoid(logits.float()).cpu()
        outputs.append(views.view(4, len(batch)).mean(dim=0))
    model.train(was_training)
    return torch.cat(outputs) if outputs else torch.empty(0)


def predict_patch_probabilities(model: torch.nn.Module, patches: np.ndarray,
                                batch_size: int = INFERENCE_BATCH,
                                flip_average: bool = False, *,
                                precision: str = "fp32",
                                regions: np.ndarray | None = None) -> np.ndarray:
    """Cancer probability of each (N, P, P) or (N, C, P, P) patch; with `flip_average` the mean
    over the patch and its left-right, up-down and double flips (test-time augmentation).
    `precision`: the bundle's (`PatchModelBundle.precision`), so that scores are computed as
    when its thresholds were chosen. `regions`: (N, P, P) organ masks inside which a dense
    network takes each patch's score (`ModelConfig.score_region` "organ")."""
    if flip_average:
        if isinstance(patches, torch.Tensor):
            patches = patches.cpu().numpy()
        probabilities = _flip_averaged_probabilities(model, patches, batch_size, precision,
                                                     regions)
    else:
        probabilities = torch.sigmoid(predict_logits(model, patches, batch_size,
                                                     precision=precision, regions=regions))
    return probabilities.numpy().astype(np.float64)
