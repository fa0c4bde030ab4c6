"""Resample a volume along z to a uniform slice thickness and, optionally, in-plane to a given
pixel size (images linear, labels nearest)."""

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


def resampled_shape(shape_zyx: tuple[int, ...], spacing_zyx_mm: tuple[float, ...],
                    thickness_mm: float, in_plane_mm: float | None, source: str = "",
                    max_voxels: int | None = None) -> tuple[int, int, int]:
    """The (z, y, x) size after resampling to `thickness_mm` slices and `in_plane_mm` pixels
    (None: the scan's own pixels), each axis covering the same extent (first to last voxel
    centre) from the first voxel; checked against `max_voxels` before anything is allocated.

    InputError for a spacing, thickness or pixel size that is not a finite positive number;
    VolumeTooLargeError if the grid would exceed `max_voxels` (default: `--max-voxels`).
    """
    name = source or "volume"
    n_z = check_resampled_size(shape_zyx, spacing_zyx_mm, thickness_mm, source, max_voxels)
    if in_plane_mm is None:
        return (n_z, int(shape_zyx[1]), int(shape_zyx[2]))
    if not (math.isfinite(in_plane_mm) and in_plane_mm > 0):
        raise InputError(f"{name}: in-plane pixel size {in_plane_mm:g} mm is not a finite "
                         "positive number")
    n_y, n_x = (1 if n == 1 else resampled_slice_count(n, s, in_plane_mm)
                for n, s in zip(shape_zyx[1:], spacing_zyx_mm[1:], strict=True))
    max_voxels = max_voxels or default_volume_limits().max_voxels
    voxels = n_z * n_y * n_x
    if voxels > max_voxels:
        raise VolumeTooLargeError(
            f"{name}: resampling {spacing_zyx_mm[1]:g} x {spacing_zyx_mm[2]:g} mm pixels to "
            f"{in_plane_mm:g} mm would make {n_z} x {n_y} x {n_x} = {voxels:,} voxels, more "
            f"than the limit of {max_voxels:,} voxels (--max-voxels)")
    return (n_z, n_y, n_x)


def resampled_spacing(shape_zyx: tuple[int, ...], spacing_zyx_mm: tuple[float, ...],
                      thickness_mm: float, in_plane_mm: float | None
                      ) -> tuple[float, float, float]:
    """The voxel spacing after `resample_grid`: an axis already (nearly) at its target keeps
    its own spacing and is not resampled, as does z of a one-slice volume."""
    sz, sy, sx = (float(s) for s in spacing_zyx_mm)
    z = sz if shape_zyx[0] == 1 or np.isclose(sz, thickness_mm) else float(thickness_mm)
    if in_plane_mm is None:
        return (z, sy, sx)
    return (z, *(s if np.isclose(s, in_plane_mm) else float(in_plane_mm) for s in (sy, sx)))


def resample_grid(
    volume: np.ndarray, spacing_zyx_mm: tuple[float, float, float], thickness_mm: float,
    in_plane_mm: float | None, *, is_label: bool, source: str = "",
    max_voxels: int | None = None,
) -> np.ndarray:
    """Resample a (z, y, x) array to `thickness_mm` slices and `in_plane_mm` pixels, starting
    at the first voxel; `in_plane_mm` None resamples z only (exactly `resample_z`).

    Images use linear interpolation, label masks nearest neighbour (SimpleITK, one pass). An
    axis whose spacing already matches is left alone, so a scan on the target grid comes back
    unchanged (the same array). The size is checked first (see `resampled_shape`).
    """
    if in_plane_mm is None:
        return resample_z(volume, spacing_zyx_mm, thickness_mm, is_label=is_label,
                          source=source, max_voxels=max_voxels)
    size_zyx = resampled_shape(volume.shape, spacing_zyx_mm, thickness_mm, in_plane_mm,
                               source, max_voxels)
    sz, sy, sx = spacing_zyx_mm
    target_zyx = resampled_spacing(volume.shape, spacing_zyx_mm, thickness_mm, in_plane_mm)
    if target_zyx == tuple(spacing_zyx_mm):
        return volume
    size_zyx = tuple(n if t == s else m for n, m, s, t in zip(
        volume.shape, size_zyx, spacing_zyx_mm, target_zyx, strict=True))
    source_image = sitk.GetImageFromArray(volume.astype(np.uint8 if is_label else np.float32))
    source_image.SetSpacing((sx, sy, sz))
    interpolator = sitk.sitkNearestNeighbor if is_label else sitk.sitkLinear
    resampled = sitk.Resample(
        source_image, tuple(int(n) for n in reversed(size_zyx)), sitk.Transform(),
        interpolator, source_image.GetOrigin(), tuple(float(t) for t in reversed(target_zyx)),
        source_image.GetDirection(), 0, source_image.GetPixelID(),
    )
    out = sitk.GetArrayFromImage(resampled)
    return out.astype(bool) if is_label else out
