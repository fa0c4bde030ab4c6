"""DICOM series reading: grouping, sorting along the normal, HU, spacing, codecs, selection,
organ masks from SEG or NIfTI, and every bad input (one clear error or a counted warning)."""

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

from cadx.errors import EmptyMaskError, GeometryError, InputError
from cadx.io.dicom import (
    case_from_datasets,
    read_dicom_case,
    scan_folder,
    select_series,
)
from cadx.synth.dicom_series import ct_series_datasets, write_dicom_study
from tests.conftest import toy_case, write_volume


@pytest.fixture(scope="module")
def toy():
    image, label = toy_case(np.random.default_rng(1), with_tumour=True)
    return image, label


@pytest.fixture
def study(tmp_path, toy):
    image, label = toy
    return write_dicom_study(image, label > 0, (2.5, 0.8, 0.8), tmp_path / "study",
                             patient_id="p1")


def _testdata(name: str) -> str:
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"pydicom test file {name} is not installed")
    return path


def test_folder_becomes_the_hu_volume_in_position_order(study, toy):
    image, label = toy
    case = read_dicom_case(study.folder)
    # file names are random and InstanceNumber runs backwards: only positions give this order
    assert case.image.shape == image.shape
    np.testing.assert_array_equal(case.image, image.astype(np.float32))
    assert case.spacing_zyx_mm == pytest.approx((2.5, 0.8, 0.8))
    assert case.patient_id == "p1"
    assert case.meta["dicom"]["series_uid"] == study.ct_series_uid
    np.testing.assert_array_equal(case.organ_mask, label > 0)  # from the SEG in the folder
    assert case.meta["organ_mask_source"].startswith("DICOM SEG")
    assert case.meta["skipped_files"] == 0


def test_selection_skips_the_localizer_and_explains_when_nothing_fits(study):
    scan = scan_folder(study.folder)
    assert {s.modality for s in scan.series} == {"CT", "SEG"}
    assert select_series(scan.series).series_uid == study.ct_series_uid
    scout = [s for s in scan.series if len(s.datasets) == 1 and s.modality == "CT"]
    assert scout[0].rejection() == "a localizer"
    with pytest.raises(InputError, match="no CT/MR ORIGINAL/PRIMARY axial series.*: a localizer"):
        select_series([s for s in scan.series if s is not select_series(scan.series)])
    assert select_series(scan.series, scout[0].series_uid) is scout[0]
    with pytest.raises(InputError, match="no series 1.2.3; found .*LOCALIZER"):
        select_series(scan.series, "1.2.3")


def test_rescale_slope_and_intercept_per_slice():
    image = np.arange(3 * 4 * 4, dtype=np.int16).reshape(3, 4, 4)
    datasets = ct_series_datasets(image, (3.0, 1.0, 1.0), patient_id="p")
    datasets[1].RescaleSlope, datasets[1].RescaleIntercept = 2, -2048
    case = case_from_datasets(datasets[::-1], "mem")
    stored = image[1] + 1024
    np.testing.assert_array_equal(case.image[1], stored * 2.0 - 2048)
    np.testing.assert_array_equal(case.image[0], image[0])


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless, JPEGLSLossless])
def test_compressed_series_decode_to_the_same_hu(tmp_path, toy, syntax):
    image, label = toy
    study = write_dicom_study(image, None, (2.5, 1.0, 1.0), tmp_path / "c", patient_id="c",
                              transfer_syntax=syntax, localizer=False)
    assert pydicom.dcmread(study.ct_files[0]).file_meta.TransferSyntaxUID == syntax
    np.testing.assert_array_equal(read_dicom_case(study.folder).image, image)


@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm",
                                  "MR_small_jpeg_ls_lossless.dcm"])
def test_pydicom_compressed_test_files_match_the_uncompressed_one(name):
    reference = pydicom.dcmread(_testdata("MR_small.dcm"))
    compressed = pydicom.dcmread(_testdata(name))
    case = case_from_datasets([compressed], name)
    np.testing.assert_array_equal(case.image[0], reference.pixel_array.astype(np.float32))


def test_single_derived_slice_is_rejected_by_the_rules_but_readable_by_uid(tmp_path):
    path = Path(_testdata("MR_small.dcm"))
    scan = scan_folder(path)
    with pytest.raises(InputError, match=r"DERIVED/SECONDARY/OTHER"):
        select_series(scan.series, source=str(path))
    case = read_dicom_case(path, series_uid=scan.series[0].series_uid)
    assert case.image.shape == (1, 64, 64)


def test_unsupported_transfer_syntax_is_named():
    ds = pydicom.dcmread(_testdata("CT_small.dcm"))
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.102"
    with pytest.raises(InputError, match="MPEG-4 AVC/H.264.*not supported"):
        case_from_datasets([ds], "mem")


def test_missing_pixel_data_names_the_file(study):
    ds = pydicom.dcmread(study.ct_files[0])
    del ds.PixelData
    with pytest.raises(InputError, match="no pixel data"):
        case_from_datasets([ds], "mem")


def test_non_dicom_and_truncated_files_are_skipped_and_counted(study, tmp_path):
    (study.folder / "notes.txt").write_text("not an image")
    (study.folder / "half.dcm").write_bytes(study.ct_files[0].read_bytes()[:200])
    case = read_dicom_case(study.folder)
    assert case.meta["skipped_files"] == 2
    assert "skipped 2 files" in case.meta["warnings"][0]


def test_truncated_pixel_data_inside_the_stack_names_the_file(study):
    middle = sorted(study.ct_files, key=lambda p: float(
        pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]))[4]
    middle.write_bytes(middle.read_bytes()[:-500])
    with pytest.raises(GeometryError, match="irregular slice spacing") as refused:
        read_dicom_case(study.folder)
    # the cause comes first: the file whose pixels could not be decoded, not only the gap
    assert str(refused.value).startswith(f"{middle}: pixel data cannot be decoded")


def test_a_slice_unreadable_even_as_a_header_is_named_with_the_gap(study):
    middle = sorted(study.ct_files, key=lambda p: float(
        pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]))[4]
    middle.write_bytes(middle.read_bytes()[:300])
    with pytest.raises(GeometryError, match=rf"irregular slice spacing.*{middle.name}"):
        read_dicom_case(study.folder)


def _save_series(datasets, folder: Path, prefix: str) -> str:
    for i, ds in enumerate(datasets):
        ds.save_as(folder / f"{prefix}{i:03d}.dcm", enforce_file_format=True)
    return str(datasets[0].SeriesInstanceUID)


def test_a_binary_mask_series_labelled_ct_is_not_scored(study, toy):
    # A 0/255 mask exported as CT ORIGINAL/PRIMARY, same slice count, names sorting first.
    image, label = toy
    first = pydicom.dcmread(study.ct_files[0], stop_before_pixels=True)
    mask = ct_series_datasets((label > 0) * 255, (2.5, 0.8, 0.8), patient_id="p1",
                              study_uid=str(first.StudyInstanceUID))
    for ds, plane in zip(mask, (label > 0).astype(np.uint16) * 255, strict=True):
        ds.RescaleIntercept, ds.PixelData = 0, plane.tobytes()
    mask_uid = _save_series(mask, study.folder, "a_")
    scan = scan_folder(study.folder)
    with pytest.raises(InputError, match="tie") as refused:
        select_series(scan.series)  # headers alone cannot tell them apart
    assert mask_uid in str(refused.value) and study.ct_series_uid in str(refused.value)
    assert "--series" in str(refused.value)
    case = read_dicom_case(study.folder)
    assert case.meta["dicom"]["series_uid"] == study.ct_series_uid
    np.testing.assert_array_equal(case.image, image.astype(np.float32))
    [note] = [w for w in case.meta["warnings"] if mask_uid in w]
    assert "binary" in note and "0, 255" in note


def test_two_image_series_that_tie_are_refused_listing_both(study, toy):
    image, _ = toy
    first = pydicom.dcmread(study.ct_files[0], stop_before_pixels=True)
    copy = ct_series_datasets(image + 1, (2.5, 0.8, 0.8), patient_id="p1",
                              study_uid=str(first.StudyInstanceUID))
    copy_uid = _save_series(copy, study.folder, "a_")
    with pytest.raises(InputError, match=r"2 series tie .*8 slices") as refused:
        read_dicom_case(study.folder)
    message = str(refused.value)
    assert copy_uid in message and study.ct_series_uid in message and "--series" in message
    case = read_dicom_case(study.folder, series_uid=copy_uid)
    np.testing.assert_array_equal(case.image, image + 1)


def test_mixed_patients_are_refused(tmp_path, toy):
    image, _ = toy
    write_dicom_study(image, None, (2.5, 1.0, 1.0), tmp_path / "mix" / "a", patient_id="A")
    write_dicom_study(image, None, (2.5, 1.0, 1.0), tmp_path / "mix" / "b", patient_id="B")
    with pytest.raises(InputError, match="holds 2 patients \\(A, B\\)"):
        read_dicom_case(tmp_path / "mix")


def test_gantry_tilt_is_refused_with_the_angle():
    datasets = ct_series_datasets(np.zeros((4, 8, 8), np.int16), (2.0, 1.0, 1.0), patient_id="p")
    for k, ds in enumerate(datasets):
        ds.ImagePositionPatient = [0.0, k * 2.0 * np.tan(np.radians(15)), k * 2.0]
        ds.GantryDetectorTilt = 15
    with pytest.raises(GeometryError, match=r"sheared by 15.0 degrees.*GantryDetectorTilt 15"):
        case_from_datasets(datasets, "mem")


def test_duplicate_positions_and_gaps_are_refused():
    datasets = ct_series_datasets(np.zeros((5, 8, 8), np.int16), (2.0, 1.0, 1.0), patient_id="p")
    with pytest.raises(GeometryError, match="2 slices share a position"):
        case_from_datasets([*datasets, datasets[2]], "mem")
    with pytest.raises(GeometryError, match=r"irregular slice spacing.*2.0->6.0 mm"):
        case_from_datasets([datasets[0], datasets[1], datasets[3], datasets[4]], "mem")


def test_organ_mask_from_a_given_seg_file_or_nifti_on_the_same_grid(study, toy, tmp_path):
    _, label = toy
    images_only = tmp_path / "ct_only"
    images_only.mkdir()
    for path in study.ct_files:
        (images_only / path.name).write_bytes(path.read_bytes())
    assert read_dicom_case(images_only).organ_mask is None
    from_seg = read_dicom_case(images_only, organ_mask_path=study.seg_file)
    np.testing.assert_array_equal(from_seg.organ_mask, label > 0)
    nifti = write_volume(tmp_path / "mask.nii.gz", label, spacing_zyx=(2.5, 0.8, 0.8))
    from_nifti = read_dicom_case(images_only, organ_mask_path=nifti)
    np.testing.assert_array_equal(from_nifti.organ_mask, label > 0)
    shifted = write_volume(tmp_path / "shifted.nii.gz", label, spacing_zyx=(2.5, 0.8, 0.8),
                           origin=(0.0, 10.0, 0.0))
    with pytest.raises(GeometryError, match="origin"):
        read_dicom_case(images_only, organ_mask_path=shifted)
    empty = write_volume(tmp_path / "empty.nii.gz", np.zeros_like(label),
                         spacing_zyx=(2.5, 0.8, 0.8))
    with pytest.raises(EmptyMaskError):
        read_dicom_case(images_only, organ_mask_path=empty)


def test_seg_of_another_series_is_refused(study, toy, tmp_path):
    image, label = toy
    other = write_dicom_study(image, label > 0, (2.5, 0.8, 0.8), tmp_path / "other",
                              patient_id="p1")
    ct_only = tmp_path / "ct_only"
    ct_only.mkdir()
    for path in study.ct_files:
        (ct_only / path.name).write_bytes(path.read_bytes())
    with pytest.raises(GeometryError, match="does not lie on the slices"):
        read_dicom_case(ct_only, organ_mask_path=other.seg_file)
