"""Vectorised sliding-window patch extraction (seed 000, FIG. 2C/2D).

A square window moves along x, then y, with a stride; windows that touch the dilated organ
label are kept, and a window is cancerous if it holds any tumour voxel. Which windows touch what
is computed for all windows at once from summed-area tables; the kept windows are gathered with
one fancy index into a strided view, so there is no per-patch Python loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from cadx.case import Case
from cadx.config import PatchConfig
from cadx.errors import ConfigError, EmptyMaskError


@dataclass
class PatchSet:
    """Patches of one or more patients with their (patient, slice, y, x) coordinates.

    `patches` is (N, P, P), or (N, C, P, P) for 2.5D patches whose C channels are the slice and
    its neighbours (centre slice in the middle channel). `coords` holds (slice, y, x) of each
    patch's top-left corner on the preprocessed grid; `labels` is 1 for cancerous patches, 0
    otherwise, or None when the truth is unknown. `masks` (N, P, P) uint8 holds each patch's
    tumour mask (the centre slice's) where a dense patch network trains on it, else None;
    `organ_masks` (N, P, P) uint8 the (dilated) organ mask's, where patches are scored inside
    the organ only, else None.
    """

    patches: np.ndarray
    patient_ids: np.ndarray
    coords: np.ndarray
    labels: np.ndarray | None = None
    masks: np.ndarray | None = None
    organ_masks: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.patches.shape[0])

    @property
    def patch_size_px(self) -> int:
        return int(self.patches.shape[-1])

    @property
    def channels(self) -> int:
        """Input channels of the network: 1, or C of (N, C, P, P) 2.5D patches."""
        return int(self.patches.shape[1]) if len(self.patches.shape) == 4 else 1

    def subset(self, keep: np.ndarray) -> PatchSet:
        """The patches selected by a boolean mask or an index array."""
        return PatchSet(self.patches[keep], self.patient_ids[keep], self.coords[keep],
                        None if self.labels is None else self.labels[keep],
                        None if self.masks is None else self.masks[keep],
                        None if self.organ_masks is None else self.organ_masks[keep])

    @staticmethod
    def concat(sets: list[PatchSet]) -> PatchSet:
        """Join patch sets (all labelled or all unlabelled) into one; tumour and organ masks
        are kept when every set has them."""
        if not sets:
            raise ValueError("no patch sets to join")
        labelled = [s.labels is not None for s in sets]
        if any(labelled) and not all(labelled):
            raise ValueError("cannot join labelled and unlabelled patch sets")
        return PatchSet(
            np.concatenate([s.patches for s in sets]),
            np.concatenate([s.patient_ids for s in sets]),
            np.concatenate([s.coords for s in sets]),
            np.concatenate([s.labels for s in sets]) if all(labelled) else None,
            (np.concatenate([s.masks for s in sets])
             if all(s.masks is not None for s in sets) else None),
            (np.concatenate([s.organ_masks for s in sets])
             if all(s.organ_masks is not None for s in sets) else None),
        )


def grid_positions(length_px: int, size_px: int, stride_px: int, start_px: int = 0,
                   cover_edges: bool = True) -> np.ndarray:
    """Top-left window positions along one axis of `length_px` pixels.

    Starts at `start_px` (clamped so the window fits) and steps by `stride_px`; with
    `cover_edges` a last window flush with the far border is added when the steps miss it.
    """
    if size_px > length_px:
        raise ConfigError(f"patch size {size_px} px is larger than the image ({length_px} px)")
    last = length_px - size_px
    start_px = min(max(start_px, 0), last)
    positions = np.arange(start_px, last + 1, stride_px, dtype=np.int64)
    if cover_edges and positions[-1] != last:
        positions = np.append(positions, last)
    return positions


def _window_sums(mask: np.ndarray, ys: np.ndarray, xs: np.ndarray, size: int) -> np.ndarray:
    """Number of true voxels in every window, shape (z, len(ys), len(xs)), via summed areas.

    Only the box spanned by the windows is summed, so callers pass just the windows that can
    touch the mask.
    """
    y_low, x_low = int(ys[0]), int(xs[0])
    region = mask[:, y_low:int(ys[-1]) + size, x_low:int(xs[-1]) + size]
    z, h, w = region.shape
    table = np.zeros((z, h + 1, w + 1), dtype=np.int32)
    np.cumsum(region, axis=1, dtype=np.int32, out=table[:, 1:, 1:])
    np.cumsum(table[:, 1:, 1:], axis=2, out=table[:, 1:, 1:])
    y0, x0 = (ys - y_low)[:, None], (xs - x_low)[None, :]
    y1, x1 = y0 + size, x0 + size
    return table[:, y1, x1] - table[:, y0, x1] - table[:, y1, x0] + table[:, y0, x0]


def _touching(positions: np.ndarray, size: int, first: int, last: int) -> np.ndarray:
    """The window positions whose [p, p + size) span meets the pixel range [first, last]."""
    return positions[(positions + size > first) & (positions <= last)]


def extract_patches(case: Case, config: PatchConfig, with_masks: bool = False,
                    with_organ: bool = False) -> PatchSet:
    """Crop the patches of a preprocessed case that touch its (dilated) organ mask.

    A patch holding tumour is kept even where the organ mask misses it; non-cancerous patches
    outside the organ mask are dropped. Works slice by slice on (z, y, x) volumes; a 2D image is
    a one-slice volume. `with_masks` also crops each patch's tumour mask (for a dense patch
    network; needs the case's tumour mask), `with_organ` its organ mask (for a patch score
    inside the organ only).
    """
    if case.organ_mask is None:
        raise ConfigError(f"{case.source or case.patient_id}: patch extraction needs an organ mask")
    image, organ = case.image, case.organ_mask
    _, height, width = image.shape
    size = config.size_px
    if size > height or size > width:
        raise ConfigError(f"{case.source or case.patient_id}: patch size {size} px is larger "
                          f"than the image ({height} x {width} px)")
    # Only slices and windows that can touch the organ or tumour are examined: the masks'
    # bounding box is found in one pass, the summed-area tables are built inside it.
    masks = organ if case.tumour_mask is None else organ | case.tumour_mask
    slices = np.flatnonzero(masks.any(axis=(1, 2)))
    if slices.size == 0:
        raise EmptyMaskError(f"{case.source or case.patient_id}: organ mask is empty")
    rows = np.flatnonzero(masks[slices].any(axis=(0, 2)))
    cols = np.flatnonzero(masks[slices].any(axis=(0, 1)))
    start_y, start_x = (int(rows[0]), int(cols[0])) if config.start == "organ" else (0, 0)
    ys = grid_positions(height, size, config.stride_px, start_y, config.cover_edges)
    xs = grid_positions(width, size, config.stride_px, start_x, config.cover_edges)
    ys = _touching(ys, size, rows[0], rows[-1])
    xs = _touching(xs, size, cols[0], cols[-1])
    keep = _window_sums(organ[slices], ys, xs, size) > 0
    tumour_counts = None
    if case.tumour_mask is not None:
        tumour_counts = _window_sums(case.tumour_mask[slices], ys, xs, size)
        keep |= tumour_counts > 0
    # np.nonzero walks z, then y, then x: the window order of the seed (along x, then y).
    slice_pos, iy, ix = np.nonzero(keep)
    slice_idx = slices[slice_pos]
    windows = sliding_window_view(image, (size, size), axis=(1, 2))
    if config.context_slices:
        offsets = np.arange(-config.context_slices, config.context_slices + 1)
        neighbours = np.clip(slice_idx[:, None] + offsets[None, :], 0, image.shape[0] - 1)
        patches = np.ascontiguousarray(
            windows[neighbours, ys[iy][:, None], xs[ix][:, None]], dtype=np.float32)
    else:
        patches = np.ascontiguousarray(windows[slice_idx, ys[iy], xs[ix]], dtype=np.float32)
    coords = np.stack([slice_idx, ys[iy], xs[ix]], axis=1).astype(np.int32)
    labels, masks, organ_masks = None, None, None
    if tumour_counts is not None:
        labels = (tumour_counts[slice_pos, iy, ix] > 0).astype(np.uint8)
        if with_masks:
            tumour = sliding_window_view(case.tumour_mask, (size, size), axis=(1, 2))
            masks = np.ascontiguousarray(tumour[slice_idx, ys[iy], xs[ix]], dtype=np.uint8)
    if with_organ:
        organ_windows = sliding_window_view(organ, (size, size), axis=(1, 2))
        organ_masks = np.ascontiguousarray(organ_windows[slice_idx, ys[iy], xs[ix]],
                                           dtype=np.uint8)
    patient_ids = np.full(len(patches), case.patient_id, dtype=object)
    return PatchSet(patches, patient_ids, coords, labels, masks, organ_masks)
