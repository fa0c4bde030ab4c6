"""Heat map of a CT diagnosis: positive-patch scores over one preprocessed slice, as PNG (per
pixel where the patch network is dense: its tumour probabilities inside the positive patches)."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
from matplotlib import colormaps
from PIL import Image
from scipy.ndimage import binary_erosion

from cadx.case import Case
from cadx.config import PipelineConfig
from cadx.diagnose.patient import Diagnosis
from cadx.preprocess.pipeline import preprocess_case

OVERLAY_ALPHA = 0.5
ORGAN_OUTLINE_RGB = (0, 200, 255)
MIN_DISPLAY_PX = 384


@dataclass(frozen=True)
class HeatMap:
    """A rendered slice: PNG bytes and which slice of the resampled grid it shows."""

    png: bytes
    slice_index: int
    n_positive_patches_on_slice: int
    per_pixel: bool = False  # a dense network's pixel probabilities, not patch scores


def choose_slice(diagnosis: Diagnosis, organ_mask: np.ndarray) -> int:
    """The slice with the largest summed positive-patch score, else the largest organ area."""
    if diagnosis.positive_patches:
        slices = np.array([p.slice_index for p in diagnosis.positive_patches])
        scores = np.array([p.score for p in diagnosis.positive_patches])
        return int(np.argmax(np.bincount(slices, weights=scores)))
    return int(np.argmax(organ_mask.reshape(organ_mask.shape[0], -1).sum(axis=1)))


def score_map(diagnosis: Diagnosis, slice_index: int, shape_yx: tuple[int, int]) -> np.ndarray:
    """Per-pixel maximum score of the positive patches covering it on one slice (0 elsewhere)."""
    heat = np.zeros(shape_yx, dtype=np.float32)
    for patch in diagnosis.positive_patches:
        if patch.slice_index == slice_index:
            window = heat[patch.y_px:patch.y_px + patch.size_px,
                          patch.x_px:patch.x_px + patch.size_px]
            np.maximum(window, patch.score, out=window)
    return heat


@torch.no_grad()
def pixel_score_map(diagnosis: Diagnosis, slice_index: int, image_zyx: np.ndarray,
                    context_slices: int, network: torch.nn.Module) -> np.ndarray:
    """Per-pixel maximum tumour probability of a dense patch network (`forward(x,
    pixels=True)`) over the positive patches on one slice of the preprocessed image (0
    elsewhere); each patch is cut with its neighbouring slices as the network was trained."""
    heat = np.zeros(image_zyx.shape[1:], dtype=np.float32)
    on_slice = [p for p in diagnosis.positive_patches if p.slice_index == slice_index]
    if not on_slice:
        return heat
    size = on_slice[0].size_px
    offsets = np.arange(-context_slices, context_slices + 1)
    planes = image_zyx[np.clip(slice_index + offsets, 0, image_zyx.shape[0] - 1)]
    windows = np.lib.stride_tricks.sliding_window_view(planes, (size, size), axis=(1, 2))
    ys = np.array([p.y_px for p in on_slice])
    xs = np.array([p.x_px for p in on_slice])
    batch = torch.from_numpy(np.ascontiguousarray(
        windows[:, ys, xs].transpose(1, 0, 2, 3), dtype=np.float32))
    network.eval()
    pixels = torch.sigmoid(network(batch, pixels=True).float())[:, 0].numpy()
    for y, x, probabilities in zip(ys, xs, pixels, strict=True):
        window = heat[y:y + size, x:x + size]
        np.maximum(window, probabilities, out=window)
    return heat


def render_slice(image_yx: np.ndarray, organ_yx: np.ndarray, heat_yx: np.ndarray,
                 threshold: float) -> bytes:
    """Grey slice (0..1), organ outline, and scores above `threshold` in a colour map -> PNG."""
    rgb = np.repeat(np.clip(image_yx, 0, 1)[..., None], 3, axis=2)
    hot = heat_yx > threshold
    if hot.any():
        level = (heat_yx - threshold) / max(1.0 - threshold, 1e-6)
        colours = colormaps["inferno"](0.35 + 0.65 * np.clip(level, 0, 1))[..., :3]
        rgb[hot] = (1 - OVERLAY_ALPHA) * rgb[hot] + OVERLAY_ALPHA * colours[hot]
    outline = organ_yx & ~binary_erosion(organ_yx)
    rgb[outline] = np.array(ORGAN_OUTLINE_RGB) / 255.0
    picture = Image.fromarray((rgb * 255).round().astype(np.uint8))
    # Small grids are enlarged by an integer factor so that patch edges stay sharp on screen.
    factor = max(1, -(-MIN_DISPLAY_PX // max(image_yx.shape)))
    if factor > 1:
        picture = picture.resize((picture.width * factor, picture.height * factor),
                                 Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def ct_heatmap(case: Case, diagnosis: Diagnosis, config: PipelineConfig,
               network: torch.nn.Module | None = None) -> HeatMap:
    """Render the most suspicious slice of `case` as diagnosed with a bundle using `config`;
    with the bundle's `network` and a dense patch network, its pixel probabilities.

    The case is preprocessed again (the Diagnosis keeps patch positions, not the volume), so
    positions on the resampled grid land on the same pixels as during scoring.
    """
    processed = preprocess_case(case, config.preprocess)
    slice_index = choose_slice(diagnosis, processed.organ_mask)
    per_pixel = network is not None and config.model.dense
    if per_pixel:
        heat = pixel_score_map(diagnosis, slice_index, processed.image,
                               config.patches.context_slices, network)
        if config.model.organ_scored:  # the network was scored inside the organ only
            heat[~processed.organ_mask[slice_index]] = 0.0
    else:
        heat = score_map(diagnosis, slice_index, processed.image.shape[1:])
    png = render_slice(processed.image[slice_index], processed.organ_mask[slice_index], heat,
                       diagnosis.patch_threshold)
    on_slice = sum(p.slice_index == slice_index for p in diagnosis.positive_patches)
    return HeatMap(png, slice_index, on_slice, per_pixel)
