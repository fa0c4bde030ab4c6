"""Train the organ segmenter: patient-level split, Dice + cross-entropy on 2.5D slice crops
centred on organ or body voxels, best epoch by validation Dice, Dice per validation case."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from monai.losses import DiceCELoss
from monai.transforms import RandCropByPosNegLabel, SpatialPad
from monai.transforms.utils import map_binary_to_indices
from rich.progress import track

from cadx.config import LabelConvention
from cadx.errors import EmptyMaskError
from cadx.io.dataset import CaseRef
from cadx.io.volumes import read_case
from cadx.segment.bundle import SegmenterBundle
from cadx.segment.config import SegConfig
from cadx.segment.grid import context_stack, image_to_seg_grid, mask_to_seg_grid
from cadx.segment.infer import predict_probability, segment_organ
from cadx.segment.network import build_network
from cadx.train.fit import EarlyStopping, epoch_progress
from cadx.train.precision import autocast, resolve_precision
from cadx.train.splits import PatientSplit, split_patients

CASES_PER_STEP = 4  # a batch draws its crops from this many patients


@dataclass
class SegVolume:
    """One labelled case on the segmenter grid: (2k+1, z, y, x) input and (z, y, x) organ."""

    patient_id: str
    inputs: np.ndarray
    organ: np.ndarray
    has_tumour: bool


@dataclass
class SegTrainingOutcome:
    """The trained segmenter bundle, the split, and Dice per validation case (CT grid)."""

    bundle: SegmenterBundle
    split: PatientSplit
    validation_dice: dict[str, float]


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Dice overlap of two boolean masks (1.0 when both are empty)."""
    total = int(prediction.sum()) + int(truth.sum())
    return 1.0 if total == 0 else 2.0 * float(np.logical_and(prediction, truth).sum()) / total


def _labels(config: SegConfig) -> LabelConvention:
    return LabelConvention(config.organ_values, config.tumour_values)


def load_seg_volume(ref: CaseRef, config: SegConfig) -> SegVolume:
    """Read a labelled case and move it to the segmenter grid (organ = organ + tumour labels)."""
    case = read_case(ref.image_path, ref.label_path, labels=_labels(config),
                     patient_id=ref.patient_id)
    image = image_to_seg_grid(case.image, case.spacing_zyx_mm, config)
    organ = mask_to_seg_grid(case.organ_mask, case.spacing_zyx_mm, config)
    if not organ.any():
        raise EmptyMaskError(f"{ref.label_path}: the organ vanishes on the segmenter's "
                             f"{config.in_plane_spacing_mm} mm grid")
    return SegVolume(ref.patient_id, context_stack(image, config.context_slices), organ,
                     bool(case.has_tumour))


class _CropSampler:
    """Random (2k+1, roi, roi) crops of random slices, centred half on organ voxels and half
    on body voxels (MONAI RandCropByPosNegLabel), with their organ masks."""

    def __init__(self, volumes: Sequence[SegVolume], config: SegConfig) -> None:
        pad = SpatialPad(spatial_size=(-1, config.roi_px, config.roi_px))
        self.stacks, self.labels, self.indices = [], [], []
        for volume in volumes:
            stack = pad(np.concatenate([volume.inputs, volume.organ[None].astype(np.float32)]))
            label = stack[-1:]
            body = stack[config.context_slices:config.context_slices + 1]  # windowed > -200 HU
            self.stacks.append(stack)
            self.labels.append(label)
            self.indices.append(map_binary_to_indices(label, image=body, image_threshold=0.0))
        per_case = max(1, config.batch_size // CASES_PER_STEP)
        self.crop = RandCropByPosNegLabel(spatial_size=(1, config.roi_px, config.roi_px),
                                          pos=1.0, neg=1.0, num_samples=per_case)
        self.crop.set_random_state(config.seed)
        self.rng = np.random.default_rng(config.seed)

    def batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        picks = self.rng.choice(len(self.stacks), size=CASES_PER_STEP)
        crops = []
        for i in picks:
            fg, bg = self.indices[i]
            crops += self.crop(self.stacks[i], label=self.labels[i], fg_indices=fg,
                                bg_indices=bg)
        joined = torch.stack([torch.as_tensor(np.asarray(c))[:, 0] for c in crops])
        return joined[:, :-1].float(), joined[:, -1:].round()


def _seg_grid_dice(network: torch.nn.Module, volumes: Sequence[SegVolume],
                   config: SegConfig) -> float:
    """Mean Dice on the segmenter grid (no post-processing): the epoch-selection signal."""
    scores = []
    for volume in volumes:
        probability = predict_probability(network, volume.inputs[config.context_slices], config)
        scores.append(dice(probability.numpy() > 0.5, volume.organ))
    return float(np.mean(scores))


def train_segmenter(refs: Sequence[CaseRef], config: SegConfig,
                    progress: bool = True) -> SegTrainingOutcome:
    """Train on a labelled dataset's cases; keep the epoch with the best validation Dice."""
    volumes = [load_seg_volume(ref, config) for ref in
               track(refs, description="reading cases", disable=not progress)]
    split = split_patients([v.patient_id for v in volumes], [v.has_tumour for v in volumes],
                           config.validation_fraction, 0.0, config.seed)
    train = [v for v in volumes if v.patient_id in set(split.train)]
    validation = [v for v in volumes if v.patient_id in set(split.validation)]
    precision = resolve_precision(config.precision)
    if precision != config.precision:  # the bundle records what training ran in
        config = replace(config, precision=precision)
    torch.manual_seed(config.seed)
    network = build_network(config)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, batch=True)
    optimiser = torch.optim.AdamW(network.parameters(), lr=config.learning_rate)
    total_steps = config.max_epochs * config.steps_per_epoch
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimiser, config.learning_rate,
                                                    total_steps=total_steps)
    sampler = _CropSampler(train, config)
    best = EarlyStopping(patience=config.max_epochs, mode="max")
    train_loss, validation_dice = [], []
    with epoch_progress(progress) as bar:
        task = bar.add_task("epochs", total=config.max_epochs, status="")
        for epoch in range(config.max_epochs):
            network.train()
            losses = []
            for _ in range(config.steps_per_epoch):
                inputs, target = sampler.batch()
                optimiser.zero_grad(set_to_none=True)
                with autocast(precision):
                    logits = network(inputs)
                loss = loss_fn(logits.float(), target)
                loss.backward()
                optimiser.step()
                scheduler.step()
                losses.append(loss.detach())
            network.eval()
            validation_dice.append(_seg_grid_dice(network, validation, config))
            train_loss.append(float(np.mean([float(loss) for loss in losses])))
            best.update(validation_dice[-1], epoch, network)
            bar.update(task, advance=1, status=f"loss {train_loss[-1]:.3f} "
                                               f"val Dice {validation_dice[-1]:.3f}")
    network.load_state_dict(best.best_state)
    bundle = SegmenterBundle(config=config, state_dict=network.eval().state_dict())
    case_dice = validation_dice_per_case(bundle, [r for r in refs
                                                  if r.patient_id in set(split.validation)])
    bundle.summary = {
        "split": {"train": list(split.train), "validation": list(split.validation)},
        "history": {"train_loss": train_loss, "validation_dice_seg_grid": validation_dice,
                    "best_epoch": best.best_epoch},
        "validation_dice": case_dice,
        "validation_dice_mean": float(np.mean(list(case_dice.values()))),
    }
    return SegTrainingOutcome(bundle=bundle, split=split, validation_dice=case_dice)


def validation_dice_per_case(segmenter: SegmenterBundle,
                             refs: Sequence[CaseRef]) -> dict[str, float]:
    """Dice of the full segmentation (with post-processing) against each case's organ +
    tumour label, on the CT's own grid."""
    network = segmenter.build_network()
    scores = {}
    for ref in refs:
        case = read_case(ref.image_path, ref.label_path, labels=_labels(segmenter.config),
                         patient_id=ref.patient_id)
        result = segment_organ(segmenter, case.image, case.spacing_zyx_mm, network=network)
        scores[ref.patient_id] = round(dice(result.mask, case.organ_mask), 4)
    return scores
