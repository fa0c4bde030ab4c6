"""The segmenter's coarse grid on a real abdominal CT (TotalSegmentator's example, 3 mm): a real
pancreas survives the trip to the grid and back, and segmentation returns a mask on the CT's own
grid. Slow/real-data: skipped when ../shared/data is absent."""

from pathlib import Path

import numpy as np
import pytest
import torch

from cadx.io.volumes import read_case
from cadx.segment.bundle import SegmenterBundle
from cadx.segment.config import SegConfig
from cadx.segment.grid import mask_to_seg_grid, probability_to_native_grid
from cadx.segment.infer import segment_organ
from cadx.segment.network import build_network
from cadx.segment.train import dice

DATA = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "totalseg-example-ct"
        / "tests" / "reference_files")

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not DATA.exists(), reason="real CT example not present")]


def test_real_pancreas_survives_the_segmenter_grid():
    case = read_case(DATA / "example_ct_sm.nii.gz",
                     organ_mask_path=DATA / "example_seg_fast" / "pancreas.nii.gz")
    config = SegConfig()
    coarse = mask_to_seg_grid(case.organ_mask, case.spacing_zyx_mm, config)
    back = probability_to_native_grid(torch.from_numpy(coarse.astype(np.float32)),
                                      case.image.shape, case.spacing_zyx_mm[0], config)
    # 0.75 measured: 3 mm slices -> 5 mm and back is the loss, not the 2.5 mm pixels.
    assert dice(back.numpy() > 0.5, case.organ_mask) > 0.7


def test_segmentation_of_a_real_ct_lies_on_its_grid():
    case = read_case(DATA / "example_ct.nii.gz")
    torch.manual_seed(0)
    config = SegConfig()
    segmenter = SegmenterBundle(config, build_network(config).state_dict())
    result = segment_organ(segmenter, case.image, case.spacing_zyx_mm)
    assert result.mask.shape == case.image.shape and result.mask.dtype == bool
    assert result.found == (result.volume_ml >= config.min_organ_volume_ml)
