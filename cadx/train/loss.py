"""Patch losses: class-weighted binary cross-entropy (seed 000: w1:w2 = N_noncancerous :
N_cancerous) and a dense network's soft Dice on the patches' tumour masks."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceLoss


class WeightedBCELoss(torch.nn.Module):
    """Mean of -(w1 y log p + w2 (1 - y) log(1 - p)) over a batch of logits.

    Weights are set from the training counts so that w1 : w2 = n_negative : n_positive and each
    class contributes half of the total weight.
    """

    def __init__(self, n_positive: int, n_negative: int) -> None:
        super().__init__()
        if n_positive < 1 or n_negative < 1:
            raise ValueError("weighted BCE needs at least one positive and one negative example")
        total = n_positive + n_negative
        self.positive_weight = total / (2.0 * n_positive)
        self.negative_weight = total / (2.0 * n_negative)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor,
                patch_weights: torch.Tensor | None = None) -> torch.Tensor:
        """`patch_weights` (optional, one per patch) multiply the class weights."""
        weights = torch.where(targets > 0.5, self.positive_weight, self.negative_weight)
        if patch_weights is not None:
            weights = weights * patch_weights
        return F.binary_cross_entropy_with_logits(logits, targets, weight=weights)


def per_tumour_weights(labels: np.ndarray, patient_ids: np.ndarray) -> np.ndarray:
    """Patch weights under which every patient's cancerous patches weigh the same in total.

    A cancerous patch of a patient with n cancerous patches weighs 1/n, rescaled so that the
    cancerous patches' mean weight is 1 (the class keeps its share of the loss); other patches
    weigh 1.
    """
    labels = np.asarray(labels).astype(bool).ravel()
    weights = np.ones(len(labels), dtype=np.float32)
    if not labels.any():
        return weights
    _, inverse, counts = np.unique(np.asarray(patient_ids)[labels].astype(str),
                                   return_inverse=True, return_counts=True)
    positive = 1.0 / counts[inverse.ravel()]
    weights[labels] = positive / positive.mean()
    return weights


class TumourDiceLoss(torch.nn.Module):
    """Soft Dice of a dense network's pixel logits against the patches' tumour masks.

    `reduction` "batch": one Dice over every pixel of the batch (large tumours dominate);
    "patch": each cancerous patch's own Dice, averaged over the batch's cancerous patches, so a
    1 cm tumour's mask counts as much as a 4 cm one's (tumour-free patches are left to the
    pixel and patch BCE; a batch without a cancerous patch contributes 0).
    """

    def __init__(self, reduction: str = "batch") -> None:
        super().__init__()
        if reduction not in ("batch", "patch"):
            raise ValueError(f"Dice reduction must be 'batch' or 'patch', got {reduction!r}")
        self.reduction = reduction
        self.dice = DiceLoss(sigmoid=True, batch=reduction == "batch",
                             reduction="mean" if reduction == "batch" else "none")

    def forward(self, logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        loss = self.dice(logits, masks)
        if self.reduction == "batch":
            return loss
        cancerous = masks.flatten(1).amax(1) > 0.5
        if not bool(cancerous.any()):
            return logits.sum() * 0.0  # keeps the graph; no mask to learn from
        return loss.flatten()[cancerous].mean()
