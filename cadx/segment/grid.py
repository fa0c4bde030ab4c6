"""Move volumes between the CT's own grid and the segmenter's coarse grid, and back.

The segmenter grid has the patch pipeline's slice thickness (resampled with the same
`resample_z`, starting at the first slice) and `in_plane_spacing_mm` pixels (antialiased
bilinear downsampling). Probabilities go back to the CT grid by linear interpolation in z and
bilinear in-plane, so the returned organ mask lies on the image's own voxels like a manual one.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from cadx.io.limits import VolumeTooLargeError, default_volume_limits
from cadx.preprocess.intensity import window_to_unit
from cadx.preprocess.resample import check_resampled_size, resample_z
from cadx.segment.config import SegConfig


def seg_grid_shape_yx(shape_yx: tuple[int, int], spacing_yx_mm: tuple[float, float],
                      config: SegConfig) -> tuple[int, int]:
    """In-plane size of the segmenter grid for an image of `shape_yx` pixels."""
    return tuple(max(1, int(round(n * s / config.in_plane_spacing_mm)))
                 for n, s in zip(shape_yx, spacing_yx_mm, strict=True))


def _resize_in_plane(volume: torch.Tensor, shape_yx: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of every (y, x) slice of a (z, y, x) tensor, antialiased when shrinking."""
    if tuple(volume.shape[1:]) == tuple(shape_yx):
        return volume
    shrinking = shape_yx[0] < volume.shape[1] or shape_yx[1] < volume.shape[2]
    return F.interpolate(volume[:, None], size=shape_yx, mode="bilinear", align_corners=False,
                         antialias=shrinking)[:, 0]


def image_to_seg_grid(image_hu: np.ndarray, spacing_zyx_mm: tuple[float, float, float],
                      config: SegConfig, source: str = "") -> np.ndarray:
    """(z, y, x) HU volume -> windowed 0..1 float32 volume on the segmenter grid.

    The grid's size is checked against --max-voxels before anything is resampled (`source`
    names the file in the error).
    """
    n_z = check_resampled_size(image_hu.shape, spacing_zyx_mm, config.slice_thickness_mm,
                               source)
    shape_yx = seg_grid_shape_yx(image_hu.shape[1:], spacing_zyx_mm[1:], config)
    max_voxels = default_volume_limits().max_voxels
    if n_z * math.prod(shape_yx) > max_voxels:
        raise VolumeTooLargeError(
            f"{source or 'volume'}: the segmenter's {config.in_plane_spacing_mm:g} mm grid "
            f"would have {n_z} x {shape_yx[0]} x {shape_yx[1]} voxels, more than the limit of "
            f"{max_voxels:,} voxels (--max-voxels)")
    image = resample_z(image_hu, spacing_zyx_mm, config.slice_thickness_mm, is_label=False,
                       source=source)
    unit = window_to_unit(np.asarray(image), config.window_level_hu, config.window_width_hu)
    with torch.no_grad():
        return _resize_in_plane(torch.from_numpy(unit), shape_yx).numpy()


def mask_to_seg_grid(mask: np.ndarray, spacing_zyx_mm: tuple[float, float, float],
                     config: SegConfig) -> np.ndarray:
    """(z, y, x) boolean mask -> boolean mask on the segmenter grid (area fraction > 0.5)."""
    mask_z = resample_z(mask, spacing_zyx_mm, config.slice_thickness_mm, is_label=True)
    shape_yx = seg_grid_shape_yx(mask_z.shape[1:], spacing_zyx_mm[1:], config)
    with torch.no_grad():
        fraction = F.adaptive_avg_pool2d(torch.from_numpy(mask_z.astype(np.float32))[:, None],
                                         shape_yx)[:, 0]
    return fraction.numpy() > 0.5


def context_stack(volume: np.ndarray, context_slices: int) -> np.ndarray:
    """(z, y, x) -> (2k+1, z, y, x): each slice with its k neighbours each side as channels
    (edge slices repeated)."""
    n = volume.shape[0]
    offsets = np.arange(-context_slices, context_slices + 1)
    index = np.clip(np.arange(n)[None, :] + offsets[:, None], 0, n - 1)
    return volume[index]


def probability_to_native_grid(probability: torch.Tensor, native_shape_zyx: tuple[int, ...],
                               spacing_z_mm: float, config: SegConfig) -> torch.Tensor:
    """(z', y', x') probabilities on the segmenter grid -> (z, y, x) on the CT's own grid."""
    in_plane = _resize_in_plane(probability, tuple(native_shape_zyx[1:]))
    n_seg, n_native = in_plane.shape[0], native_shape_zyx[0]
    if n_seg == n_native:
        return in_plane
    position = torch.arange(n_native, dtype=torch.float32) * (
        spacing_z_mm / config.slice_thickness_mm)
    lower = position.floor().long().clamp(0, n_seg - 1)
    upper = (lower + 1).clamp(max=n_seg - 1)
    weight = (position - lower).clamp(0, 1)[:, None, None]
    return in_plane[lower] * (1 - weight) + in_plane[upper] * weight
