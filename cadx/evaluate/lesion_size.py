"""Tumour size from a label mask: the longest in-plane diameter of the largest lesion, in mm."""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.measure import regionprops

SIZE_BINS_MM = ((0.0, 10.0, "< 1 cm"), (10.0, 20.0, "1-2 cm"), (20.0, 40.0, "2-4 cm"),
                (40.0, float("inf"), "> 4 cm"))
# The seed reports sensitivity for tumours under 2 cm (its two smallest bins here together).
SMALL_TUMOUR_MM, SMALL_TUMOUR_GROUP, LARGER_TUMOUR_GROUP = 20.0, "< 2 cm", ">= 2 cm"
# Every size group a report may show, smallest first.
SIZE_GROUP_ORDER = ("< 1 cm", "1-2 cm", SMALL_TUMOUR_GROUP, "2-4 cm", LARGER_TUMOUR_GROUP,
                    "> 4 cm")


def largest_tumour_diameter_mm(tumour_mask: np.ndarray | None,
                               spacing_zyx_mm: tuple[float, float, float]) -> float | None:
    """Longest axial (Feret) diameter over slices of the largest 3D tumour component.

    Radiologists report a pancreatic tumour's size as its longest axial diameter; None when
    there is no tumour. In-plane spacing is taken as the mean of y and x spacing.
    """
    if tumour_mask is None or not tumour_mask.any():
        return None
    components, n = ndimage.label(tumour_mask)
    sizes = np.bincount(components.ravel(), minlength=n + 1)[1:]
    largest = components == (int(np.argmax(sizes)) + 1)
    pixel_mm = float(np.mean(spacing_zyx_mm[1:]))
    diameters = [
        max(regionprops(largest[z].astype(np.uint8))[0].feret_diameter_max, 1.0)
        for z in np.flatnonzero(largest.any(axis=(1, 2)))
    ]
    return float(max(diameters) * pixel_mm)


def size_bin(diameter_mm: float | None) -> str | None:
    """The size bin (< 1 cm, 1-2 cm, 2-4 cm, > 4 cm) of a diameter; None without a tumour."""
    if diameter_mm is None:
        return None
    for low, high, name in SIZE_BINS_MM:
        if low <= diameter_mm < high:
            return name
    return None
