"""Map scanner intensities to 0..1: a CT window (level/width in HU) or organ percentiles (MR)."""

from __future__ import annotations

import numpy as np
from monai.transforms import ScaleIntensityRange

from cadx.errors import InputError


def window_to_unit(image_hu: np.ndarray, level_hu: float, width_hu: float) -> np.ndarray:
    """Clip to [level - width/2, level + width/2] HU and scale linearly to [0, 1]."""
    low = level_hu - width_hu / 2.0
    scale = ScaleIntensityRange(a_min=low, a_max=low + width_hu, b_min=0.0, b_max=1.0, clip=True)
    return np.asarray(scale(image_hu.astype(np.float32)), dtype=np.float32)


def percentiles_to_unit(
    image: np.ndarray, organ_mask: np.ndarray, low_pct: float = 1.0, high_pct: float = 99.0
) -> np.ndarray:
    """Scale the organ's [low_pct, high_pct] intensity percentiles to [0, 1] and clip (for MR)."""
    low, high = np.percentile(image[organ_mask], [low_pct, high_pct])
    if high <= low:
        raise InputError("organ intensities are constant; cannot normalise by percentiles")
    scale = ScaleIntensityRange(a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=True)
    return np.asarray(scale(image.astype(np.float32)), dtype=np.float32)
