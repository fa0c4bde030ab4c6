"""Class-weighted binary cross-entropy (seed 000: w1:w2 = N_noncancerous : N_cancerous)."""

from __future__ import annotations

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

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        weights = torch.where(targets > 0.5, self.positive_weight, self.negative_weight)
        return F.binary_cross_entropy_with_logits(logits, targets, weight=weights)
