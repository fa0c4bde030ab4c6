"""Class-weighted binary cross-entropy (seed 000: w1:w2 = N_noncancerous : N_cancerous)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


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
