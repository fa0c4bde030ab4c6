"""The CT benchmarks' own scoring paths (organ-restricted probabilities, voxel-map logits)
give the same patch probabilities as cadx's scoring of a dense network inside the organ."""

import sys
from pathlib import Path

import numpy as np
import torch

from cadx.models.dense_patch_net import DensePatchNet
from cadx.train.fit import predict_patch_probabilities

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from ct_organ_restricted_score import restricted_probabilities  # noqa: E402
from ct_voxel_scores import pixel_logits  # noqa: E402


def test_benchmark_scores_match_cadx_scoring_inside_the_organ():
    torch.manual_seed(0)
    model = DensePatchNet(patch_size_px=16, in_channels=1).eval()
    rng = np.random.default_rng(0)
    patches = rng.random((6, 1, 16, 16), dtype=np.float32)
    regions = np.zeros((6, 16, 16), dtype=bool)
    regions[:, 3:9, 2:12] = True
    regions[5] = False  # an empty region: scored over the whole window
    cadx_scores = predict_patch_probabilities(model, patches, flip_average=True,
                                              regions=regions)
    restricted = restricted_probabilities(model, patches, [regions, None], True, "fp32")
    maps, voxel_path = pixel_logits(model, patches, regions, True, "fp32")
    np.testing.assert_allclose(restricted[0], cadx_scores, rtol=1e-5)
    np.testing.assert_allclose(voxel_path, cadx_scores, rtol=1e-5)
    assert maps.shape == (6, 16, 16)
    # the window score is another number than the organ score for some patch
    assert not np.allclose(restricted[1], restricted[0])
    # the map averages the four flipped-back views: a flip of the input flips the map
    flipped_maps, _ = pixel_logits(model, patches[..., ::-1].copy(), regions[..., ::-1].copy(),
                                   True, "fp32")
    np.testing.assert_allclose(flipped_maps, maps[..., ::-1], rtol=1e-4, atol=1e-5)
