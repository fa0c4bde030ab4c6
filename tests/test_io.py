"""Dataset layouts (MSD, nnU-Net v2, CSV manifest), 2D images, geometry checks."""

import json

import numpy as np
import pytest
from PIL import Image

from cadx.cli import main
from cadx.errors import GeometryError, InputError
from cadx.io.dataset import load_dataset
from cadx.io.volumes import read_case, read_volume
from tests.conftest import toy_case, write_volume


def test_msd_layout_with_case_table(toy_dataset):
    (toy_dataset / "cases.csv").write_text("patient_id,site\ntoy_001,north\n")
    refs = load_dataset(toy_dataset)
    assert len(refs) == 12 and refs[0].patient_id == "toy_000"
    assert refs[1].meta == {"site": "north"}


def test_nnunet_v2_layout(tmp_path):
    image, label = toy_case(np.random.default_rng(0), True)
    write_volume(tmp_path / "imagesTr" / "case_a_0000.nii.gz", image)
    write_volume(tmp_path / "labelsTr" / "case_a.nii.gz", label)
    (tmp_path / "dataset.json").write_text(json.dumps(
        {"channel_names": {"0": "CT"}, "labels": {"background": 0}, "file_ending": ".nii.gz"}))
    refs = load_dataset(tmp_path)
    assert [r.patient_id for r in refs] == ["case_a"]
    assert refs[0].image_path.name == "case_a_0000.nii.gz"


def test_csv_manifest_relative_paths_and_metadata(tmp_path):
    image, label = toy_case(np.random.default_rng(0), True)
    write_volume(tmp_path / "a" / "img.nii.gz", image)
    write_volume(tmp_path / "a" / "lab.nii.gz", label)
    manifest = tmp_path / "list.csv"
    manifest.write_text("image,label,patient_id,scanner\na/img.nii.gz,a/lab.nii.gz,P1,X\n")
    (ref,) = load_dataset(manifest)
    assert ref.patient_id == "P1" and ref.meta == {"scanner": "X"}
    case = read_case(ref.image_path, ref.label_path)
    assert case.tumour_mask.any() and (case.organ_mask >= case.tumour_mask).all()


def test_duplicate_patient_ids_refused(tmp_path):
    image, label = toy_case(np.random.default_rng(0), True)
    write_volume(tmp_path / "img.nii.gz", image)
    write_volume(tmp_path / "lab.nii.gz", label)
    manifest = tmp_path / "list.csv"
    manifest.write_text("image,label,patient_id\nimg.nii.gz,lab.nii.gz,P1\n"
                        "img.nii.gz,lab.nii.gz,P1\n")
    with pytest.raises(InputError, match="patient ids repeated"):
        load_dataset(manifest)


def test_nifti_geometry_is_zyx(tmp_path):
    array = np.zeros((5, 6, 7), np.int16)
    write_volume(tmp_path / "v.nii.gz", array, spacing_zyx=(3.0, 0.7, 0.8))
    volume, geometry = read_volume(tmp_path / "v.nii.gz")
    assert volume.shape == (5, 6, 7)
    assert geometry.spacing_zyx_mm == pytest.approx((3.0, 0.7, 0.8))


def test_origin_mismatch_is_refused(tmp_path):
    image, label = toy_case(np.random.default_rng(0), True)
    write_volume(tmp_path / "img.nii.gz", image)
    write_volume(tmp_path / "lab.nii.gz", label, origin=(0.0, 0.0, 10.0))
    with pytest.raises(GeometryError, match="lab.nii.gz: origin"):
        read_case(tmp_path / "img.nii.gz", tmp_path / "lab.nii.gz")


def test_2d_png_with_mask_is_a_one_slice_case(tmp_path):
    rgb = np.zeros((60, 70, 3), np.uint8)
    rgb[..., 0] = 200
    Image.fromarray(rgb).save(tmp_path / "slice.png")
    mask = np.zeros((60, 70), np.uint8)
    mask[20:30, 20:40] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    case = read_case(tmp_path / "slice.png", organ_mask_path=tmp_path / "mask.png")
    assert case.image.shape == (1, 60, 70)
    assert case.image[0, 0, 0] == pytest.approx(200 * 0.299, abs=0.01)
    assert case.organ_mask.sum() == 200 and case.tumour_mask is None


def test_synth_ct_command_writes_a_loadable_cohort(tmp_path):
    out = tmp_path / "cohort"
    assert main(["synth", "ct", "--out", str(out), "--patients", "4", "--shape", "12,128,128",
                 "--spacing", "2.5,2.7,2.7"]) == 0
    refs = load_dataset(out)
    assert len(refs) == 4
    assert {r.meta["has_tumour"] for r in refs} == {"0", "1"}
