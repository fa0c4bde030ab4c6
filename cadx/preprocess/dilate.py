"""Dilate an organ label in-plane so that a slightly misaligned contour still covers the organ."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def dilate_in_plane(mask: np.ndarray, kernel_px: int) -> np.ndarray:
    """Binary dilation of each (y, x) slice of a (z, y, x) mask by a square `kernel_px` kernel."""
    if kernel_px <= 1:
        return mask.astype(bool)
    structure = np.ones((1, kernel_px, kernel_px), dtype=bool)
    return ndimage.binary_dilation(mask.astype(bool), structure=structure)
