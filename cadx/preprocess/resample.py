"""Resample a volume along z to a uniform slice thickness (image linear, labels nearest)."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk


def resampled_slice_count(n_slices: int, spacing_z_mm: float, thickness_mm: float) -> int:
    """Slices needed to cover the same z extent (first to last slice centre) at `thickness_mm`."""
    extent_mm = (n_slices - 1) * spacing_z_mm
    return int(np.floor(extent_mm / thickness_mm + 1e-6)) + 1


def resample_z(
    volume: np.ndarray, spacing_zyx_mm: tuple[float, float, float], thickness_mm: float,
    *, is_label: bool,
) -> np.ndarray:
    """Resample a (z, y, x) array to `thickness_mm` slices, starting at the first slice.

    Images use linear interpolation, label masks nearest neighbour (SimpleITK). A one-slice
    volume (a 2D image) is returned unchanged.
    """
    n_slices = volume.shape[0]
    if n_slices == 1 or np.isclose(spacing_zyx_mm[0], thickness_mm):
        return volume
    source = sitk.GetImageFromArray(volume.astype(np.uint8 if is_label else np.float32))
    sz, sy, sx = spacing_zyx_mm
    source.SetSpacing((sx, sy, sz))
    new_n = resampled_slice_count(n_slices, sz, thickness_mm)
    size = (volume.shape[2], volume.shape[1], new_n)
    interpolator = sitk.sitkNearestNeighbor if is_label else sitk.sitkLinear
    resampled = sitk.Resample(
        source, size, sitk.Transform(), interpolator, source.GetOrigin(),
        (sx, sy, thickness_mm), source.GetDirection(), 0, source.GetPixelID(),
    )
    out = sitk.GetArrayFromImage(resampled)
    return out.astype(bool) if is_label else out
