"""What cadx agrees to read: voxel count, decoded size and voxel spacing, all checked from a
header before any voxel is decoded (a few KB of gzip can claim gigabytes, and a 50 km slice
spacing makes resampling allocate gigabytes).

Light on purpose (no imaging libraries), so the command line can show the defaults quickly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from cadx.errors import ConfigError, InputError

# A whole-body CT: 512 x 512 pixels, 2000 slices (about 1 m at 0.5 mm).
DEFAULT_MAX_VOXELS = 512 * 512 * 2000
# Stored data may use up to 8 bytes a voxel (float64) after decompression.
MAX_BYTES_PER_VOXEL = 8


class VolumeTooLargeError(InputError):
    """A volume's header claims more voxels (or decoded bytes) than the limit allows."""


@dataclass(frozen=True)
class VolumeLimits:
    """What a reader accepts, checked from the header before any voxel is decoded.

    `max_voxels` bounds the voxels of a volume (and of any grid it is resampled to); the
    decoded data may take at most `MAX_BYTES_PER_VOXEL` bytes per allowed voxel. Voxel spacing
    must be finite and within [`min_spacing_mm`, `max_spacing_mm`] on every axis.
    """

    max_voxels: int = DEFAULT_MAX_VOXELS
    min_spacing_mm: float = 0.05
    max_spacing_mm: float = 50.0

    def __post_init__(self) -> None:
        if self.max_voxels < 1:
            raise ConfigError(f"--max-voxels must be at least 1, got {self.max_voxels}")

    @property
    def max_decoded_bytes(self) -> int:
        return MAX_BYTES_PER_VOXEL * self.max_voxels


_default_limits = VolumeLimits()


def default_volume_limits() -> VolumeLimits:
    """The limits used when a reader is given none (the CLI sets them from --max-voxels)."""
    return _default_limits


def set_default_volume_limits(limits: VolumeLimits) -> None:
    """Set the process-wide limits (once, at start-up: readers in every thread see them)."""
    global _default_limits
    _default_limits = limits


def check_voxel_count(shape: tuple[int, ...], bytes_per_voxel: int, source: str | Path,
                      limits: VolumeLimits | None = None) -> None:
    """Raise VolumeTooLargeError if a header's `shape` exceeds the limits, InputError if it
    has an empty axis. Call it before decoding the data."""
    limits = limits or _default_limits
    dims = " x ".join(str(int(n)) for n in shape)
    if any(int(n) < 1 for n in shape):
        raise InputError(f"{source}: image of {dims} voxels is empty")
    voxels = math.prod(int(n) for n in shape)
    if voxels > limits.max_voxels:
        raise VolumeTooLargeError(f"{source}: {dims} = {voxels:,} voxels exceeds the limit of "
                                  f"{limits.max_voxels:,} voxels (--max-voxels)")
    decoded = voxels * int(bytes_per_voxel)
    if decoded > limits.max_decoded_bytes:
        raise VolumeTooLargeError(
            f"{source}: {dims} voxels of {bytes_per_voxel} bytes decode to {_size(decoded)}, "
            f"more than the limit of {_size(limits.max_decoded_bytes)} "
            f"({MAX_BYTES_PER_VOXEL} bytes per voxel of --max-voxels)")


def _size(n_bytes: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.1f} {unit}"
    return f"{n_bytes:,} bytes"


def check_spacing(spacing_zyx_mm: tuple[float, ...], source: str | Path,
                  limits: VolumeLimits | None = None) -> None:
    """Raise InputError unless every voxel spacing is finite and within the plausible range."""
    limits = limits or _default_limits
    lo, hi = limits.min_spacing_mm, limits.max_spacing_mm
    if all(math.isfinite(s) and lo <= s <= hi for s in spacing_zyx_mm):
        return
    spacing = ", ".join(f"{v:.3g}" for v in spacing_zyx_mm)
    raise InputError(f"{source}: voxel spacing ({spacing}) mm (z,y,x) is outside the plausible "
                     f"range {lo:g} to {hi:g} mm; check the header")
