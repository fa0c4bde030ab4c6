"""Clean a predicted organ mask: keep the largest connected component, reject specks."""

from __future__ import annotations

import numpy as np
import torch
from monai.transforms import KeepLargestConnectedComponent


def keep_largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected component of a boolean (z, y, x) mask (empty stays empty)."""
    if not mask.any():
        return mask.astype(bool)
    keep = KeepLargestConnectedComponent(applied_labels=1, is_onehot=False, connectivity=3)
    kept = keep(torch.from_numpy(mask.astype(np.uint8))[None])
    return np.asarray(kept[0]).astype(bool)


def mask_volume_ml(mask: np.ndarray, spacing_zyx_mm: tuple[float, float, float]) -> float:
    """Volume of a boolean mask in millilitres."""
    return float(mask.sum()) * float(np.prod(spacing_zyx_mm)) / 1000.0
