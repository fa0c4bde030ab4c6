"""Resampling geometry, in-plane dilation, windowing, the preprocessing of a case."""

import numpy as np
import pytest

from cadx.case import Case
from cadx.config import PreprocessConfig
from cadx.errors import ConfigError, InputError
from cadx.preprocess.dilate import dilate_in_plane
from cadx.preprocess.intensity import percentiles_to_unit, window_to_unit
from cadx.preprocess.pipeline import preprocess_case
from cadx.preprocess.resample import resample_z, resampled_slice_count


def test_resample_to_5mm_keeps_extent_and_interpolates_linearly():
    # 9 slices at 2.5 mm span 20 mm -> 5 slices at 5 mm; values = slice index.
    volume = np.arange(9, dtype=np.float32)[:, None, None] * np.ones((9, 6, 7), np.float32)
    out = resample_z(volume, (2.5, 0.8, 0.8), 5.0, is_label=False)
    assert out.shape == (5, 6, 7)
    np.testing.assert_allclose(out[:, 0, 0], [0, 2, 4, 6, 8], atol=1e-5)


def test_resample_thick_to_thin_interpolates_between_slices():
    volume = np.array([0.0, 10.0], dtype=np.float32)[:, None, None] * np.ones((2, 3, 3))
    out = resample_z(volume, (5.0, 1, 1), 2.5, is_label=False)
    np.testing.assert_allclose(out[:, 1, 1], [0, 5, 10], atol=1e-4)


def test_resample_label_is_nearest_and_stays_binary():
    mask = np.zeros((10, 4, 4), bool)
    mask[3:6] = True  # slices at 3, 4, 5 (x 1 mm = 3..5 mm)
    out = resample_z(mask, (1.0, 1, 1), 2.0, is_label=True)
    assert out.dtype == bool and out.shape == (5, 4, 4)
    # New slices sit at 0, 2, 4, 6, 8 mm: only 4 mm falls in the mask.
    assert out[:, 0, 0].tolist() == [False, False, True, False, False]


def test_resampled_slice_count():
    assert resampled_slice_count(40, 2.5, 5.0) == 20
    assert resampled_slice_count(1, 2.5, 5.0) == 1
    assert resampled_slice_count(11, 1.0, 5.0) == 3


def test_single_slice_is_not_resampled():
    image = np.ones((1, 5, 5), np.float32)
    assert resample_z(image, (1.0, 1, 1), 5.0, is_label=False) is image


def test_dilation_is_in_plane_3x3():
    mask = np.zeros((3, 7, 7), bool)
    mask[1, 3, 3] = True
    out = dilate_in_plane(mask, 3)
    assert out[1].sum() == 9 and out[1, 2:5, 2:5].all()
    assert not out[0].any() and not out[2].any()  # never across slices
    assert dilate_in_plane(mask, 5)[1].sum() == 25


@pytest.mark.parametrize(("hu", "expected"), [
    (-1000, 0.0), (-50, 0.0), (75, 0.5), (200, 1.0), (1000, 1.0), (12.5, 0.25)])
def test_window_75_250(hu, expected):
    out = window_to_unit(np.array([hu], np.float32), 75.0, 250.0)
    assert out[0] == pytest.approx(expected, abs=1e-6)


def test_percentile_normalisation_for_mr():
    image = np.arange(100, dtype=np.float32).reshape(1, 10, 10)
    organ = np.ones_like(image, bool)
    out = percentiles_to_unit(image, organ)
    assert out.min() == 0.0 and out.max() == 1.0


def test_preprocess_case_resamples_dilates_and_windows():
    image = np.full((8, 20, 20), 75.0, np.float32)
    organ = np.zeros((8, 20, 20), bool)
    organ[:, 8:12, 8:12] = True
    tumour = np.zeros_like(organ)
    tumour[4, 9, 9] = True
    case = Case("p1", image, (2.5, 0.7, 0.7), organ, tumour, source="p1.nii.gz")
    out = preprocess_case(case, PreprocessConfig())
    assert out.image.shape == (4, 20, 20)
    assert out.spacing_zyx_mm == (5.0, 0.7, 0.7)
    np.testing.assert_allclose(out.image, 0.5)
    assert out.organ_mask[0].sum() == 36  # 4x4 organ dilated by a 3x3 kernel -> 6x6
    assert out.tumour_mask.sum() == 1  # the tumour is resampled but never dilated
    assert case.image.shape == (8, 20, 20)  # the input is not modified


def test_preprocess_without_organ_mask_is_a_clear_error():
    case = Case("p1", np.zeros((2, 5, 5), np.float32), (5, 1, 1), source="scan.nii.gz")
    with pytest.raises(InputError, match="scan.nii.gz: no organ mask"):
        preprocess_case(case, PreprocessConfig())


def test_config_rejects_bad_values():
    with pytest.raises(ConfigError):
        PreprocessConfig(dilation_kernel_px=4)
    with pytest.raises(ConfigError):
        PreprocessConfig(window_width_hu=0)
