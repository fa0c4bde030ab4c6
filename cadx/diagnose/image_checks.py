"""Images a 2D model cannot judge, found before scoring so that they get a reason instead of a
probability: too small to hold a lesion at the model's scale, a binary mask rather than an
image, or mostly transparent pixels (an overlay or a cut-out, not a scan)."""

from __future__ import annotations

import numpy as np

MIN_SIDE_PX = 32
MAX_TRANSPARENT_FRACTION = 0.5


def array_problem(image: np.ndarray) -> str | None:
    """Why an (H, W), (H, W, C) or (C, H, W) image cannot be judged, or None."""
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
        array = array.transpose(1, 2, 0)
    height, width = array.shape[:2]
    if min(height, width) < MIN_SIDE_PX:
        return f"too small to judge ({width} x {height} px; at least {MIN_SIDE_PX} px a side)"
    if np.unique(array).size <= 2:
        return "only two grey levels: a binary mask or blank frame, not an ultrasound image"
    return None


def alpha_problem(alpha: np.ndarray | None) -> str | None:
    """Why an image cannot be judged because of its (H, W) alpha channel (0..255, as
    `cadx.io.images.read_image_with_alpha` gives it; None for no transparency), or None
    (other problems are found on its pixels by `array_problem`)."""
    if alpha is None:
        return None
    transparent = float((np.asarray(alpha) < 128).mean())
    if transparent > MAX_TRANSPARENT_FRACTION:
        return f"{transparent:.0%} of its pixels are transparent: not a scan"
    return None
