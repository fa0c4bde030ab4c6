"""Resample a volume along z to a uniform slice thickness (image linear, labels nearest)."""

from __future__ import annotations

import math

import numpy as np
import SimpleITK as sitk

from cadx.errors import InputError
from cadx.io.limits import VolumeTooLargeError, default_volume_limits


def resampled_slice_count(n_slices: int, spacing_z_mm: float, thickness_mm: float) -> int:
    """Slices needed to cover the same z extent (first to last slice centre) at `thickness_mm`."""
    extent_mm = (n_slices - 1) * spacing_z_mm
    return int(np.floor(extent_mm / thickness_mm + 1e-6)) + 1


def check_resampled_size(shape_zyx: tuple[int, ...], spacing_zyx_mm: tuple[float, ...],
                         thickness_mm: float, source: str = "",
                         max_voxels: int | None = None) -> int:
    """The slice count after resampling `shape_zyx` to `thickness_mm` slices, checked first.

    InputError if a spacing or the thickness is not a finite positive number;
    VolumeTooLargeError if the resampled grid would exceed `max_voxels` (default: the process'
    `--max-voxels`), so nothing is allocated for an absurd header.
    """
    name = source or "volume"
    if not all(math.isfinite(s) and s > 0 for s in spacing_zyx_mm):
        spacing = ", ".join(f"{s:g}" for s in spacing_zyx_mm)
        raise InputError(f"{name}: voxel spacing ({spacing}) mm (z,y,x) is not a finite "
                         "positive number; cannot resample")
    if not (math.isfinite(thickness_mm) and thickness_mm > 0):
        raise InputError(f"{name}: slice thickness {thickness_mm:g} mm is not a finite positive "
                         "number")
    n_slices = shape_zyx[0]
    if n_slices == 1:
        return 1
    new_n = resampled_slice_count(n_slices, spacing_zyx_mm[0], thickness_mm)
    max_voxels = max_voxels or default_volume_limits().max_voxels
    voxels = new_n * math.prod(shape_zyx[1:])
    if voxels > max_voxels:
        raise VolumeTooLargeError(
            f"{name}: resampling {n_slices} slices {spacing_zyx_mm[0]:g} mm apart to "
            f"{thickness_mm:g} mm would make {new_n:,} slices ({voxels:,} voxels), more than "
            f"the limit of {max_voxels:,} voxels (--max-voxels)")
    return new_n


def resample_z(
    volume: np.ndarray, spacing_zyx_mm: tuple[float, float, float], thickness_mm: float,
    *, is_label: bool, source: str = "", max_voxels: int | None = None,
) -> np.ndarray:
    """Resample a (z, y, x) array to `thickness_mm` slices, starting at the first slice.

    Images use linear interpolation, label masks nearest neighbour (SimpleITK). A one-slice
    volume (a 2D image) is returned unchanged. The resampled size is checked before anything
    is allocated (see `check_resampled_size`; `source` names the file in its errors).
    """
    new_n = check_resampled_size(volume.shape, spacing_zyx_mm, thickness_mm, source, max_voxels)
    if volume.shape[0] == 1 or np.isclose(spacing_zyx_mm[0], thickness_mm):
        return volume
    source_image = sitk.GetImageFromArray(volume.astype(np.uint8 if is_label else np.float32))
    sz, sy, sx = spacing_zyx_mm
    source_image.SetSpacing((sx, sy, sz))
    size = (volume.shape[2], volume.shape[1], new_n)
    interpolator = sitk.sitkNearestNeighbor if is_label else sitk.sitkLinear
    resampled = sitk.Resample(
        source_image, size, sitk.Transform(), interpolator, source_image.GetOrigin(),
        (sx, sy, thickness_mm), source_image.GetDirection(), 0, source_image.GetPixelID(),
    )
    out = sitk.GetArrayFromImage(resampled)
    return out.astype(bool) if is_label else out
