"""CT heat map: the most suspicious slice, max score per pixel, a PNG of the right size."""

import io

import numpy as np
import torch
from PIL import Image

from cadx.diagnose.heatmap import (
    MIN_DISPLAY_PX,
    choose_slice,
    pixel_score_map,
    render_slice,
    score_map,
)
from cadx.diagnose.patient import Diagnosis, PositivePatch


def _diagnosis(patches):
    return Diagnosis("p", "ct.nii.gz", 0.5, "cancer suspected", 0.4, 0.2, 10, len(patches),
                     "given", {}, patches)


def test_slice_with_most_positive_score_and_max_per_pixel():
    patches = [PositivePatch(1, 5.0, 0, 0, 4, 0.6), PositivePatch(1, 5.0, 2, 2, 4, 0.9),
               PositivePatch(2, 10.0, 0, 0, 4, 0.95)]
    diagnosis = _diagnosis(patches)
    assert choose_slice(diagnosis, np.ones((3, 8, 8), bool)) == 1  # 1.5 summed beats 0.95
    heat = score_map(diagnosis, 1, (8, 8))
    assert heat[0, 0] == np.float32(0.6) and heat[3, 3] == np.float32(0.9)  # overlap: max
    assert heat[7, 7] == 0 and heat[1, 3] == np.float32(0.6) and heat[5, 5] == np.float32(0.9)
    organ = np.zeros((3, 8, 8), bool)
    organ[2, 2:6, 2:6] = True
    assert choose_slice(_diagnosis([]), organ) == 2  # no positives: the largest organ slice


def test_render_marks_hot_pixels_and_enlarges_small_slices():
    image = np.full((16, 16), 0.5)
    organ = np.zeros((16, 16), bool)
    organ[4:12, 4:12] = True
    heat = np.zeros((16, 16), np.float32)
    heat[0:4, 0:4] = 0.9
    with Image.open(io.BytesIO(render_slice(image, organ, heat, threshold=0.4))) as picture:
        rgb = np.asarray(picture.convert("RGB"))
    factor = rgb.shape[0] // 16
    assert rgb.shape[0] >= MIN_DISPLAY_PX and rgb.shape[0] == 16 * factor
    grey, hot = rgb[15 * factor, 15 * factor], rgb[0, 0]
    assert grey[0] == grey[1] == grey[2] == 128
    assert hot[0] > hot[2]  # warm colour over the positive patch
    outline = rgb[4 * factor, 8 * factor]
    assert tuple(outline) == (0, 200, 255)  # organ outline


class _CentreSliceLogits(torch.nn.Module):
    """A stand-in dense network: the centre channel's pixel values as logits."""

    def forward(self, patches: torch.Tensor, pixels: bool = False) -> torch.Tensor:
        middle = patches[:, patches.shape[1] // 2: patches.shape[1] // 2 + 1]
        return middle if pixels else middle.flatten(1).amax(dim=1)


def test_dense_heat_is_the_networks_pixel_probability_inside_positive_patches():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(3, 12, 12)).astype(np.float32)
    patches = [PositivePatch(1, 5.0, 0, 0, 4, 0.7), PositivePatch(1, 5.0, 2, 2, 4, 0.8),
               PositivePatch(2, 10.0, 6, 6, 4, 0.9)]  # another slice: not drawn
    heat = pixel_score_map(_diagnosis(patches), 1, image, 1, _CentreSliceLogits())
    expected = 1 / (1 + np.exp(-image[1]))
    covered = np.zeros((12, 12), bool)
    covered[0:6, 0:6] = True
    covered[0:2, 4:6] = covered[4:6, 0:2] = False  # outside both squares
    np.testing.assert_allclose(heat[covered], expected[covered], rtol=1e-6)
    assert (heat[~covered] == 0).all()
    assert (pixel_score_map(_diagnosis(patches), 0, image, 1, _CentreSliceLogits()) == 0).all()
