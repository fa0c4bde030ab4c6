"""Hostile volumes (issue 15, items 1 and 2): headers claiming gigabytes of voxels, and absurd
voxel spacing, are refused from the header with one clear line, in the library, the CLI and the
service, before anything large is allocated."""

from __future__ import annotations

import gzip
import io
import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from fastapi.testclient import TestClient

from cadx.cli import main
from cadx.errors import InputError
from cadx.io.dicom import case_from_datasets
from cadx.io.volumes import (
    DEFAULT_MAX_VOXELS,
    VolumeLimits,
    VolumeTooLargeError,
    default_volume_limits,
    read_case,
    read_volume,
)
from cadx.preprocess.resample import resample_z
from cadx.serve.app import create_app
from cadx.serve.inputs import UploadLimits
from cadx.serve.registry import load_model_folder
from cadx.synth.dicom_series import ct_series_datasets
from tests.conftest import write_volume
from tests.serve_support import write_ct_bundle, write_ct_upload


def write_lying_nifti(path: Path, shape_xyz: tuple[int, ...], dtype=np.int8,
                      zooms_xyz: tuple[float, ...] = (1.0, 1.0, 1.0),
                      data_bytes: int = 4096) -> Path:
    """A .nii.gz whose header claims `shape_xyz` but which holds only `data_bytes` of data:
    a few KB on disk, gigabytes once decoded (a voxel bomb)."""
    header = nib.Nifti1Header()
    header.set_data_dtype(dtype)
    header.set_data_shape(shape_xyz)
    header["pixdim"][1:1 + len(zooms_xyz)] = zooms_xyz  # unchecked, so absurd values too
    header["vox_offset"] = 352
    buffer = io.BytesIO()
    header.write_to(buffer)
    buffer.write(b"\0" * (352 - buffer.tell()) + b"\0" * data_bytes)
    path.write_bytes(gzip.compress(buffer.getvalue()))
    return path


def _nifti(path: Path, array_xyz: np.ndarray, zooms_xyz=(1.0, 1.0, 2.5)) -> Path:
    image = nib.Nifti1Image(array_xyz, np.diag([*zooms_xyz, 1.0]))
    nib.save(image, str(path))
    return path


def test_voxel_bomb_is_refused_from_the_header(tmp_path):
    bomb = write_lying_nifti(tmp_path / "bomb.nii.gz", (1024, 1024, 1024))
    assert bomb.stat().st_size < 10_000
    tracemalloc.start()
    with pytest.raises(VolumeTooLargeError) as caught:
        read_volume(bomb)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 20 * 2**20  # nothing of the claimed gigabyte was allocated
    message = str(caught.value)
    assert str(bomb) in message and "1024 x 1024 x 1024" in message
    assert f"{DEFAULT_MAX_VOXELS:,} voxels" in message and "--max-voxels" in message


def test_a_4000_cubed_header_is_refused_the_same_way(tmp_path):
    bomb = write_lying_nifti(tmp_path / "huge.nii.gz", (4000, 4000, 4000), np.float32)
    with pytest.raises(VolumeTooLargeError, match="exceeds the limit"):
        read_case(bomb)


def test_limit_is_configurable_and_counts_decoded_bytes(tmp_path):
    path = _nifti(tmp_path / "small.nii.gz", np.zeros((10, 10, 10), np.int16))
    assert read_volume(path)[0].shape == (10, 10, 10)
    with pytest.raises(VolumeTooLargeError, match="limit of 999 voxels"):
        read_volume(path, limits=VolumeLimits(max_voxels=999))
    # complex128 takes 16 bytes a voxel: under the voxel limit, over the decoded-bytes limit
    wide = _nifti(tmp_path / "wide.nii.gz", np.zeros((10, 10, 10), np.complex128))
    with pytest.raises(VolumeTooLargeError, match="bytes"):
        read_volume(wide, limits=VolumeLimits(max_voxels=1000))


def test_metaimage_bomb_is_refused_before_decoding(tmp_path):
    path = tmp_path / "bomb.mha"
    path.write_bytes(b"ObjectType = Image\nNDims = 3\nDimSize = 4000 4000 4000\n"
                     b"ElementSpacing = 1 1 1\nElementType = MET_SHORT\n"
                     b"ElementDataFile = LOCAL\n" + b"\0" * 1024)
    with pytest.raises(VolumeTooLargeError, match="4000 x 4000 x 4000"):
        read_volume(path)


def test_dicom_series_is_refused_from_its_headers(tmp_path):
    datasets = ct_series_datasets(np.zeros((4, 16, 16), np.int16), (2.5, 0.8, 0.8),
                                  patient_id="p1")
    for ds in datasets:
        del ds.PixelData  # the check must not need the pixels
    with pytest.raises(VolumeTooLargeError, match="4 x 16 x 16 = 1,024 voxels"):
        case_from_datasets(datasets, "series", limits=VolumeLimits(max_voxels=1000))


# (nibabel itself repairs a zero or negative pixdim on load: 1 mm, or its absolute value)
@pytest.mark.parametrize("zoom_z", [50_000.0, np.inf, np.nan, 0.001])
def test_absurd_spacing_is_refused_when_read(tmp_path, zoom_z):
    path = write_lying_nifti(tmp_path / "odd.nii.gz", (4, 4, 4), zooms_xyz=(1.0, 1.0, zoom_z),
                             data_bytes=64)
    with pytest.raises(InputError, match="plausible range 0.05 to 50 mm") as caught:
        read_volume(path)
    assert str(path) in str(caught.value)


def test_dicom_spacing_is_checked(tmp_path):
    datasets = ct_series_datasets(np.zeros((3, 8, 8), np.int16), (2.5, 0.8, 0.8),
                                  patient_id="p1")
    for ds in datasets:
        ds.PixelSpacing = [80.0, 80.0]
    with pytest.raises(InputError, match="plausible range"):
        case_from_datasets(datasets, "series")


@pytest.mark.parametrize("spacing_z", [np.inf, np.nan, 0.0])
def test_resampling_refuses_non_finite_spacing(spacing_z):
    with pytest.raises(InputError, match="ct.nii.gz: voxel spacing"):
        resample_z(np.zeros((3, 4, 4), np.float32), (spacing_z, 1.0, 1.0), 1.0,
                   is_label=False, source="ct.nii.gz")


def test_resampled_size_is_capped_before_allocation():
    volume = np.zeros((20, 64, 64), np.float32)
    with pytest.raises(VolumeTooLargeError, match="ct.nii.gz: resampling 20 slices") as caught:
        resample_z(volume, (50.0, 1.0, 1.0), 0.05, is_label=False, source="ct.nii.gz",
                   max_voxels=10_000_000)
    assert "19,001 slices" in str(caught.value)
    out = resample_z(volume, (5.0, 1.0, 1.0), 2.5, is_label=False, max_voxels=10_000_000)
    assert out.shape == (39, 64, 64)


@pytest.fixture
def ct_model(tmp_path):
    return write_ct_bundle(tmp_path / "models" / "pancreas_ct.cadx")


def test_cli_refuses_a_bomb_in_one_line(tmp_path, ct_model, capsys):
    bomb = write_lying_nifti(tmp_path / "bomb.nii.gz", (1024, 1024, 1024))
    _, mask = write_ct_upload(tmp_path / "upload")
    assert main(["diagnose", str(ct_model), str(bomb), "--organ-mask", str(mask)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bomb.nii.gz" in err and "--max-voxels" in err


def test_cli_max_voxels_option(tmp_path, ct_model, capsys):
    image, mask = write_ct_upload(tmp_path / "upload")
    assert main(["diagnose", str(ct_model), str(image), "--organ-mask", str(mask),
                 "--max-voxels", "1000"]) == 2
    assert "limit of 1,000 voxels" in capsys.readouterr().err
    assert main(["diagnose", str(ct_model), str(image), "--organ-mask", str(mask),
                 "--max-voxels", "0"]) == 2
    assert "at least 1" in capsys.readouterr().err


@pytest.mark.parametrize("zoom_z", [50_000.0, np.inf])
def test_cli_refuses_absurd_spacing_in_one_line(tmp_path, ct_model, capsys, zoom_z):
    image = write_lying_nifti(tmp_path / "odd.nii.gz", (48, 48, 8),
                              zooms_xyz=(1.0, 1.0, zoom_z), data_bytes=48 * 48 * 8)
    mask = write_lying_nifti(tmp_path / "odd_mask.nii.gz", (48, 48, 8),
                             zooms_xyz=(1.0, 1.0, zoom_z), data_bytes=48 * 48 * 8)
    assert main(["diagnose", str(ct_model), str(image), "--organ-mask", str(mask)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "odd.nii.gz" in err and "plausible range" in err


def _post(client: TestClient, *paths: Path):
    files = [("files", (p.name, p.read_bytes())) for p in paths]
    return client.post("/v1/diagnose", data={"model": "pancreas_ct"}, files=files)


def test_service_answers_413_for_a_bomb_without_server_paths(tmp_path, ct_model):
    client = TestClient(create_app(load_model_folder(ct_model.parent)))
    bomb = write_lying_nifti(tmp_path / "ct.nii.gz", (1024, 1024, 1024))
    mask = write_lying_nifti(tmp_path / "organ_mask.nii.gz", (1024, 1024, 1024))
    response = _post(client, bomb, mask)
    assert response.status_code == 413
    error = response.json()["error"]
    assert error.startswith("ct.nii.gz: 1024 x 1024 x 1024") and "--max-voxels" in error
    assert "\n" not in error and str(tmp_path) not in error and "/tmp" not in error


def test_service_voxel_limit_is_configurable(tmp_path, ct_model):
    limits = UploadLimits(max_voxels=1000)
    client = TestClient(create_app(load_model_folder(ct_model.parent), limits=limits))
    assert client.get("/v1/models").json()["limits"]["max_voxels"] == 1000
    image, mask = write_ct_upload(tmp_path / "upload")
    response = _post(client, image, mask)
    assert response.status_code == 413 and "limit of 1,000 voxels" in response.json()["error"]


@pytest.mark.parametrize("zoom_z", [50_000.0, np.inf])
def test_service_answers_422_for_absurd_spacing(tmp_path, ct_model, zoom_z):
    client = TestClient(create_app(load_model_folder(ct_model.parent)))
    image = write_volume(tmp_path / "ct.nii.gz", np.zeros((8, 48, 48), np.int16))
    header_image = nib.load(str(image))
    array = np.asanyarray(header_image.dataobj)
    for name in ("ct.nii.gz", "organ_mask.nii.gz"):
        lying = nib.Nifti1Image(array, header_image.affine, header_image.header)
        lying.header["pixdim"][3] = zoom_z
        nib.save(lying, str(tmp_path / name))
    response = _post(client, tmp_path / "ct.nii.gz", tmp_path / "organ_mask.nii.gz")
    assert response.status_code == 422
    error = response.json()["error"]
    assert error.startswith("ct.nii.gz: voxel spacing") and "plausible range" in error
    assert str(tmp_path) not in error and "Traceback" not in error


def test_cli_leaves_the_process_limits_as_they_were(tmp_path, ct_model, capsys):
    image, mask = write_ct_upload(tmp_path / "upload")
    main(["diagnose", str(ct_model), str(image), "--organ-mask", str(mask),
          "--max-voxels", "1000"])
    assert default_volume_limits().max_voxels == DEFAULT_MAX_VOXELS


def test_score_batch_workers_apply_the_limit(tmp_path, ct_model, monkeypatch):
    import distributed

    from cadx.io import limits as limits_module
    from cadx.scale.batch_score import read_results, score_batch

    # in-process workers set this process' default: restored after the test
    monkeypatch.setattr(limits_module, "_default_limits", VolumeLimits())
    image, mask = write_ct_upload(tmp_path / "data")
    (tmp_path / "data" / "masks").mkdir()
    mask.rename(tmp_path / "data" / "masks" / image.name)
    out = tmp_path / "scores.parquet"
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  dashboard_address=":0") as cluster:
        score_batch(ct_model, tmp_path / "data", out, scheduler=cluster.scheduler_address,
                    progress=False, max_voxels=1000)
    (row,) = read_results(out)
    assert row["status"] == "error" and "limit of 1,000 voxels" in row["error"]


def test_dicom_seg_frames_are_counted_before_decoding(tmp_path):
    import pydicom

    from cadx.io.dicom import read_dicom_case
    from cadx.synth.dicom_series import write_dicom_study

    image = np.zeros((4, 16, 16), np.int16)
    organ = np.zeros((4, 16, 16), bool)
    organ[1:3, 4:12, 4:12] = True
    study = write_dicom_study(image, organ, (2.5, 0.8, 0.8), tmp_path / "study",
                              patient_id="p1", localizer=False)
    seg = pydicom.dcmread(study.seg_file)
    seg.NumberOfFrames = 3_000_000  # 3e6 frames of 16 x 16: over the default limit
    seg.save_as(study.seg_file)
    with pytest.raises(VolumeTooLargeError, match="3000000 x 16 x 16") as caught:
        read_dicom_case(study.folder)
    assert str(study.seg_file) in str(caught.value)


def test_a_high_dpi_scan_is_not_refused_for_its_pixel_size(tmp_path):
    from PIL import Image

    path = tmp_path / "scan.tif"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(path, dpi=(1200, 1200))
    _, geometry = read_volume(path)  # 0.02 mm pixels: below the CT range, fine for a photo
    assert geometry.spacing_zyx_mm[1] == pytest.approx(0.0212, abs=1e-4)
