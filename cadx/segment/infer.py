"""Find the organ on a raw CT: coarse grid, slice-wise sliding-window UNet, back to the CT grid,
largest connected component."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from monai.inferers import SliceInferer

from cadx.case import Case
from cadx.segment.bundle import SegmenterBundle
from cadx.segment.config import SegConfig
from cadx.segment.grid import context_stack, image_to_seg_grid, probability_to_native_grid
from cadx.segment.postprocess import keep_largest_component, mask_volume_ml

SW_BATCH_SIZE = 16  # windows per forward pass: batches slices, bounded memory on a big CT


@dataclass
class OrganSegmentation:
    """The predicted organ mask on the CT's own (z, y, x) grid; `found` is False when nothing
    of at least the configured minimum volume was found (`mask` is then empty)."""

    mask: np.ndarray
    volume_ml: float
    found: bool
    timings_s: dict[str, float] = field(default_factory=dict)


def predict_probability(network: torch.nn.Module, seg_image: np.ndarray,
                        config: SegConfig) -> torch.Tensor:
    """Organ probability of every voxel of a (z, y, x) volume on the segmenter grid."""
    inputs = torch.from_numpy(context_stack(seg_image, config.context_slices))[None]
    inferer = SliceInferer(spatial_dim=0, roi_size=(config.roi_px, config.roi_px),
                           sw_batch_size=SW_BATCH_SIZE, overlap=0.25, mode="gaussian")
    with torch.inference_mode():
        logits = inferer(inputs, network)
    return torch.softmax(logits[0], dim=0)[1]


def segment_organ(segmenter: SegmenterBundle, image_hu: np.ndarray,
                  spacing_zyx_mm: tuple[float, float, float],
                  network: torch.nn.Module | None = None, source: str = ""
                  ) -> OrganSegmentation:
    """Segment the organ on a (z, y, x) HU volume; the mask comes back on the same grid
    (`source` names the file in errors)."""
    config = segmenter.config
    network = network if network is not None else segmenter.build_network()
    timings: dict[str, float] = {}
    start = time.perf_counter()
    seg_image = image_to_seg_grid(image_hu, spacing_zyx_mm, config, source)
    timings["resample"] = time.perf_counter() - start
    start = time.perf_counter()
    probability = predict_probability(network, seg_image, config)
    timings["network"] = time.perf_counter() - start
    start = time.perf_counter()
    with torch.inference_mode():
        native = probability_to_native_grid(probability, image_hu.shape, spacing_zyx_mm[0],
                                            config)
        mask = keep_largest_component((native > 0.5).numpy())
    volume_ml = mask_volume_ml(mask, spacing_zyx_mm)
    found = bool(mask.any()) and volume_ml >= config.min_organ_volume_ml
    timings["postprocess"] = time.perf_counter() - start
    return OrganSegmentation(mask=mask if found else np.zeros_like(mask), volume_ml=volume_ml,
                             found=found, timings_s={k: round(v, 4) for k, v in timings.items()})



def with_predicted_organ(segmenter: SegmenterBundle, case: Case,
                         network: torch.nn.Module | None = None
                         ) -> tuple[Case, OrganSegmentation]:
    """A copy of `case` whose organ mask is the segmenter's (empty when no organ was found)."""
    segmentation = segment_organ(segmenter, case.image, case.spacing_zyx_mm, network=network,
                                 source=case.source or case.patient_id)
    return replace(case, organ_mask=segmentation.mask), segmentation
