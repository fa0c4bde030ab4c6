"""Images a 2D model cannot judge, found before scoring so that they get a reason instead of a
probability: too small to hold a lesion at the model's scale, a binary mask rather than an
image, or mostly transparent pixels (an overlay or a cut-out, not a scan)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

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


def file_problem(path: str | Path) -> str | None:
    """Why an image file cannot be judged because of its transparency, or None (other
    problems are found on its pixels by `array_problem`)."""
    try:
        with Image.open(path) as image:
            if image.mode not in ("RGBA", "LA", "PA") and "transparency" not in image.info:
                return None
            alpha = np.asarray(image.convert("RGBA"))[..., 3]
    except Exception:  # unreadable files are reported by the reader, with their own message
        return None
    transparent = float((alpha < 128).mean())
    if transparent > MAX_TRANSPARENT_FRACTION:
        return f"{transparent:.0%} of its pixels are transparent: not a scan"
    return None
