"""Combine several models' scores, weighted by their validation AUC (seed 002)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from cadx.errors import ConfigError


def auc_weights(validation_aucs: Mapping[str, float]) -> dict[str, float]:
    """w_k = AUC_k / sum_j AUC_j for each model k."""
    if not validation_aucs:
        raise ConfigError("an ensemble needs at least one model")
    aucs = {name: float(auc) for name, auc in validation_aucs.items()}
    bad = [name for name, auc in aucs.items() if not 0.0 <= auc <= 1.0]
    if bad:
        raise ConfigError(f"validation AUC outside [0, 1] for {bad}")
    total = sum(aucs.values())
    if total == 0:
        raise ConfigError("all validation AUCs are 0; cannot weight the ensemble")
    return {name: auc / total for name, auc in aucs.items()}


def weighted_ensemble(scores: Mapping[str, Sequence[float]],
                      weights: Mapping[str, float]) -> np.ndarray:
    """Sum over models of weight x score; every model must score the same items."""
    missing = sorted(set(weights) - set(scores))
    if missing:
        raise ConfigError(f"no scores for ensemble member(s) {missing}")
    arrays = {name: np.asarray(scores[name], dtype=np.float64) for name in weights}
    lengths = {name: a.shape for name, a in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise ConfigError(f"ensemble members scored different numbers of items: {lengths}")
    return sum(weights[name] * arrays[name] for name in weights)
