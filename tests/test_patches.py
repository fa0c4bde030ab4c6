"""Patch grid positions, the keep/label rule, and vectorised == naive extraction."""

import numpy as np
import pytest

from cadx.case import Case
from cadx.config import PatchConfig
from cadx.errors import ConfigError
from cadx.patches.grid import PatchSet, extract_patches, grid_positions


def test_grid_stride_equal_to_window_tiles_without_overlap():
    assert grid_positions(200, 50, 50).tolist() == [0, 50, 100, 150]
    # 512 px: 0..450 in steps of 50, plus a last window flush with the border (seed FIG. 2C).
    assert grid_positions(512, 50, 50).tolist() == [*range(0, 451, 50), 462]
    assert grid_positions(512, 50, 50, cover_edges=False).tolist() == list(range(0, 451, 50))


def test_grid_half_window_stride_overlaps_50_percent():
    assert grid_positions(200, 50, 25).tolist() == [0, 25, 50, 75, 100, 125, 150]
    assert grid_positions(110, 50, 25).tolist() == [0, 25, 50, 60]


def test_grid_can_start_at_the_organ_and_is_clamped():
    assert grid_positions(200, 50, 50, start_px=30).tolist() == [30, 80, 130, 150]
    assert grid_positions(200, 50, 50, start_px=190).tolist() == [150]


def test_patch_larger_than_image_is_refused():
    with pytest.raises(ConfigError, match="larger than the image"):
        grid_positions(40, 50, 50)
    case = Case("p", np.zeros((1, 40, 40), np.float32), (1, 1, 1), np.ones((1, 40, 40), bool),
                source="small.png")
    with pytest.raises(ConfigError, match="small.png: patch size 50 px is larger"):
        extract_patches(case, PatchConfig())


def test_overlap_outside_20_to_80_percent_is_refused():
    with pytest.raises(ConfigError, match="overlap"):
        PatchConfig(size_px=50, stride_px=45)  # 10 % overlap
    with pytest.raises(ConfigError, match="overlap"):
        PatchConfig(size_px=50, stride_px=5)  # 90 % overlap
    assert PatchConfig(size_px=50, stride_px=25).overlap_fraction == pytest.approx(0.5)


def _case(image_shape=(2, 100, 100)):
    image = np.random.default_rng(0).random(image_shape).astype(np.float32)
    return Case("p7", image, (5, 1, 1), np.zeros(image_shape, bool), np.zeros(image_shape, bool))


def test_keep_and_label_rules():
    case = _case()
    case.organ_mask[0, 10:20, 10:20] = True  # touches only window (0, 0) on slice 0
    case.tumour_mask[0, 49, 49] = True  # one tumour voxel in the corner of window (0, 0)
    case.tumour_mask[1, 60, 60] = True  # tumour outside the organ mask: kept, cancerous
    patches = extract_patches(case, PatchConfig(size_px=50, stride_px=50))
    assert patches.coords.tolist() == [[0, 0, 0], [1, 50, 50]]
    assert patches.labels.tolist() == [1, 1]
    np.testing.assert_array_equal(patches.patches[1], case.image[1, 50:100, 50:100])
    assert patches.patient_ids.tolist() == ["p7", "p7"]


def test_patch_without_tumour_is_non_cancerous_and_order_is_x_then_y():
    case = _case((1, 100, 100))
    case.organ_mask[0, 40:60, 40:60] = True  # touches all four 50 px windows
    case.tumour_mask[0, 80, 20] = True  # in window (y=50, x=0) only
    patches = extract_patches(case, PatchConfig(size_px=50, stride_px=50))
    assert patches.coords[:, 1:].tolist() == [[0, 0], [0, 50], [50, 0], [50, 50]]
    assert patches.labels.tolist() == [0, 0, 1, 0]


def test_unlabelled_case_gives_no_labels():
    case = _case((1, 100, 100))
    case.organ_mask[0, 40:60, 40:60] = True
    case.tumour_mask = None
    assert extract_patches(case, PatchConfig()).labels is None


def _naive_extract(case: Case, size: int, stride: int) -> tuple[list, list]:
    coords, labels = [], []
    ys = grid_positions(case.image.shape[1], size, stride)
    xs = grid_positions(case.image.shape[2], size, stride)
    for z in range(case.image.shape[0]):
        for y in ys:
            for x in xs:
                window = (slice(y, y + size), slice(x, x + size))
                organ = case.organ_mask[z][window].any()
                tumour = case.tumour_mask[z][window].any()
                if organ or tumour:
                    coords.append([z, y, x])
                    labels.append(int(tumour))
    return coords, labels


@pytest.mark.parametrize("stride", [20, 25, 40])
def test_vectorised_extraction_matches_a_naive_loop(stride):
    rng = np.random.default_rng(stride)
    case = _case((3, 130, 110))
    case.organ_mask = rng.random(case.image.shape) > 0.999
    case.tumour_mask = rng.random(case.image.shape) > 0.9995
    patches = extract_patches(case, PatchConfig(size_px=40, stride_px=stride))
    coords, labels = _naive_extract(case, 40, stride)
    assert patches.coords.tolist() == coords
    assert patches.labels.tolist() == labels
    for (z, y, x), patch in zip(patches.coords, patches.patches, strict=True):
        np.testing.assert_array_equal(patch, case.image[z, y:y + 40, x:x + 40])


def test_patchset_concat_and_subset():
    a = PatchSet(np.zeros((2, 8, 8)), np.array(["a", "a"], object), np.zeros((2, 3), int),
                 np.array([0, 1], np.uint8))
    b = PatchSet(np.ones((1, 8, 8)), np.array(["b"], object), np.ones((1, 3), int),
                 np.array([1], np.uint8))
    joined = PatchSet.concat([a, b])
    assert len(joined) == 3 and joined.labels.tolist() == [0, 1, 1]
    assert joined.subset(joined.labels == 1).patient_ids.tolist() == ["a", "b"]
