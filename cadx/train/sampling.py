"""Which training patches go into each batch: a plain shuffle, or class-balanced batches."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch

from cadx.errors import ConfigError


def _stream(pool: torch.Tensor, length: int, generator: torch.Generator) -> torch.Tensor:
    """`length` draws from `pool`, one fresh permutation after another: every member is drawn
    once before any is drawn again."""
    rounds = math.ceil(length / len(pool))
    orders = [pool[torch.randperm(len(pool), generator=generator)] for _ in range(rounds)]
    return torch.cat(orders)[:length]


class BalancedBatchSampler:
    """Batches of patch indices with a fixed share of cancerous patches.

    Each of the `n_batches` batches (default: as many as a plain shuffle of all patches gives)
    holds round(`positive_fraction` x `batch_size`) positives, at least one, and negatives for
    the rest. Both classes are drawn without replacement within a pass over that class, so the
    rare positives are repeated across an epoch and the negatives, most of them easy, are not
    all seen every epoch. Iterating draws from `generator`, so a seeded generator gives the
    same batches.
    """

    def __init__(self, labels: np.ndarray, batch_size: int, positive_fraction: float = 0.5,
                 generator: torch.Generator | None = None, n_batches: int | None = None) -> None:
        labels = np.asarray(labels).astype(bool).ravel()
        if batch_size < 2:
            raise ConfigError(f"balanced batches need a batch size >= 2, got {batch_size}")
        if not 0.0 < positive_fraction < 1.0:
            raise ConfigError(f"positive fraction must be in (0, 1), got {positive_fraction}")
        self.positives = torch.from_numpy(np.flatnonzero(labels))
        self.negatives = torch.from_numpy(np.flatnonzero(~labels))
        if not len(self.positives) or not len(self.negatives):
            raise ConfigError("balanced batches need both cancerous and non-cancerous patches")
        self.batch_size = batch_size
        self.n_positive = min(max(round(positive_fraction * batch_size), 1), batch_size - 1)
        self.n_batches = n_batches or math.ceil(len(labels) / batch_size)
        self.generator = generator or torch.Generator()

    def __len__(self) -> int:
        return self.n_batches

    def __iter__(self) -> Iterator[torch.Tensor]:
        n_neg = self.batch_size - self.n_positive
        pos = _stream(self.positives, self.n_batches * self.n_positive, self.generator)
        neg = _stream(self.negatives, self.n_batches * n_neg, self.generator)
        batches = torch.cat([pos.view(self.n_batches, self.n_positive),
                             neg.view(self.n_batches, n_neg)], dim=1)
        yield from batches
