"""`cadx diagnose` on a DICOM folder and the DICOM results (SR, SEG) it can produce.

The bundle here has random weights and fixed thresholds: these tests pin the DICOM plumbing
(same image -> same score whatever the container; the SR holds exactly the JSON's values),
not the model's accuracy, and need no training time.
"""

import io
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch

from cadx.bundle import PatchModelBundle, load_bundle, save_bundle
from cadx.cli import main
from cadx.config import PatchConfig, PipelineConfig
from cadx.decide.roc import OperatingPoint
from cadx.diagnose.patient import diagnose_case
from cadx.io.dicom import read_dicom_case
from cadx.io.dicom_results import diagnosis_sr, positive_patches_seg, read_sr_result
from cadx.models.patch_cnn import PatchCNN
from cadx.synth.dicom_series import ct_series_datasets, write_dicom_study
from tests.conftest import toy_case, write_volume

SPACING = (2.5, 1.0, 1.0)


def random_bundle(path: Path, patch_threshold: float = 0.5,
                  patient_threshold: float = 0.05) -> Path:
    """A patch-CNN bundle with seeded random weights and fixed thresholds (no training)."""
    torch.manual_seed(0)
    config = PipelineConfig(patches=PatchConfig(size_px=16, stride_px=8))
    point = OperatingPoint(patch_threshold, 0.5, 0.5, 0.0, 0.5, (0.0, 1.0), (0.0, 1.0))
    patient = OperatingPoint(patient_threshold, 0.5, 0.5, 0.0, 0.5, (0.0, 1.0), (0.0, 1.0))
    model = PatchCNN(config.patches.size_px, config.model.batch_norm)
    bundle = PatchModelBundle(config, model.state_dict(), point, patient,
                              summary={"note": "random weights, for tests"})
    save_bundle(bundle, path)
    return path


def write_toy_study(folder: Path, patient_id: str, seed: int, **kwargs):
    """A toy CT (with a tumour) as a DICOM study with its organ SEG; returns (study, label)."""
    image, label = toy_case(np.random.default_rng(seed), with_tumour=True)
    return write_dicom_study(image, label > 0, SPACING, folder, patient_id=patient_id,
                             seed=seed, **kwargs), image, label


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return random_bundle(tmp_path_factory.mktemp("bundle") / "model.cadx")


def test_dicom_folder_scores_like_the_same_image_as_nifti(model, tmp_path):
    study, image, label = write_toy_study(tmp_path / "dicom", "p7", seed=7)
    (study.folder / "README.txt").write_text("exported by hand")
    nifti_image = write_volume(tmp_path / "p7.nii.gz", image, spacing_zyx=SPACING)
    nifti_label = write_volume(tmp_path / "p7_organ.nii.gz", (label > 0).astype(np.uint8),
                               spacing_zyx=SPACING)
    from_dicom, from_nifti = tmp_path / "dicom.json", tmp_path / "nifti.json"
    results = tmp_path / "dicom_results"
    assert main(["diagnose", str(model), str(study.folder), "--out", str(from_dicom),
                 "--dicom-out", str(results)]) == 0
    assert main(["diagnose", str(model), str(nifti_image), "--organ-mask", str(nifti_label),
                 "--out", str(from_nifti)]) == 0
    dicom, nifti = json.loads(from_dicom.read_text()), json.loads(from_nifti.read_text())
    [sr_path] = results.glob("SR_*.dcm")
    assert read_sr_result(pydicom.dcmread(sr_path))["patient_score"] == dicom["patient_score"]
    assert len(list(results.glob("SEG_*.dcm"))) == (dicom["n_positive_patches"] > 0)
    assert dicom["patient_id"] == "p7"
    assert dicom["organ_mask"].startswith("DICOM SEG")
    assert dicom["n_patches"] == nifti["n_patches"] > 0
    assert dicom["patient_score"] == pytest.approx(nifti["patient_score"], abs=1e-6)
    assert dicom["positive_patches"] == nifti["positive_patches"]


def test_series_option_and_clear_errors(model, tmp_path, capsys):
    study, _, _ = write_toy_study(tmp_path / "s", "p1", seed=1)
    assert main(["diagnose", str(model), str(study.folder), "--series",
                 study.ct_series_uid]) == 0
    capsys.readouterr()
    assert main(["diagnose", str(model), str(study.folder), "--series", "1.2.3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cadx: error: ") and len(err.splitlines()) == 1
    assert "no series 1.2.3; found" in err and study.ct_series_uid in err
    study.seg_file.unlink()
    assert main(["diagnose", str(model), str(study.folder)]) == 2
    assert "no organ mask" in capsys.readouterr().err
    assert main(["diagnose", str(model), "--push-results"]) == 2
    assert "need --pacs" in capsys.readouterr().err
    nifti = write_volume(tmp_path / "x.nii.gz", np.zeros((2, 4, 4), np.int16))
    assert main(["diagnose", str(model), str(nifti), "--organ-mask", str(nifti),
                 "--dicom-out", str(tmp_path / "out")]) == 2
    assert "--dicom-out needs DICOM input" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_sr_holds_the_diagnosis_and_references_the_source_series(model, tmp_path):
    study, _, _ = write_toy_study(tmp_path / "sr", "p3", seed=3)
    case = read_dicom_case(study.folder)
    bundle = load_bundle(model)
    diagnosis = diagnose_case(bundle, case)
    sr = diagnosis_sr(diagnosis, case)
    buffer = io.BytesIO()
    sr.save_as(buffer, enforce_file_format=True)
    back = pydicom.dcmread(io.BytesIO(buffer.getvalue()))
    assert back.Modality == "SR" and back.StudyInstanceUID == case.meta["dicom"]["study_uid"]
    assert back.SeriesInstanceUID != study.ct_series_uid  # a new series: sources untouched
    assert back.PatientID == "p3"
    values = read_sr_result(back)
    assert values["patient_score"] == diagnosis.patient_score
    assert values["patient_threshold"] == bundle.patient_threshold
    assert values["patch_threshold"] == bundle.patch_threshold
    assert values["n_positive_patches"] == diagnosis.n_positive_patches
    assert values["decision"] == diagnosis.decision
    assert values["model"] == bundle.name and values["model_version"] == bundle.cadx_version
    evidence = back.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.SeriesInstanceUID == study.ct_series_uid
    assert {i.ReferencedSOPInstanceUID for i in evidence.ReferencedSOPSequence} == set(
        case.meta["dicom"]["sop_instance_uids"])


def test_positive_patches_seg_marks_each_patch_on_the_source_slices(model, tmp_path):
    study, _, _ = write_toy_study(tmp_path / "seg", "p4", seed=4)
    case = read_dicom_case(study.folder)
    bundle = load_bundle(random_bundle(tmp_path / "low.cadx", patch_threshold=0.0))
    diagnosis = diagnose_case(bundle, case)
    assert diagnosis.n_positive_patches == diagnosis.n_patches > 0
    seg = positive_patches_seg(diagnosis, case, bundle.config.preprocess.slice_thickness_mm)
    import highdicom as hd

    mask = hd.seg.Segmentation.from_dataset(seg).get_pixels_by_source_instance(
        case.meta["dicom"]["sop_instance_uids"], assert_missing_frames_are_empty=True)[..., 0]
    boxes = np.zeros(mask.shape[1:], dtype=bool)
    for patch in diagnosis.positive_patches:
        assert mask[:, patch.y_px:patch.y_px + patch.size_px,
                    patch.x_px:patch.x_px + patch.size_px].any()
        boxes[patch.y_px:patch.y_px + patch.size_px, patch.x_px:patch.x_px + patch.size_px] = 1
    assert not (mask.any(axis=0) & ~boxes).any()
    none = diagnose_case(load_bundle(random_bundle(tmp_path / "high.cadx", 1.0)), case)
    assert positive_patches_seg(none, case, 5.0) is None


def test_synth_dicom_studies_hold_the_same_phantoms_as_the_msd_layout(tmp_path):
    from cadx.io.dataset import load_dataset
    from cadx.io.volumes import read_case

    grid = ["--patients", "2", "--shape", "3,72,72", "--spacing", "5,4.5,4.5", "--seed", "3"]
    assert main(["synth", "ct", "--out", str(tmp_path / "msd"), *grid]) == 0
    assert main(["synth", "ct", "--dicom", "--out", str(tmp_path / "dicom"), *grid]) == 0
    for ref in load_dataset(tmp_path / "msd"):
        nifti = read_case(ref.image_path, ref.label_path)
        dicom = read_dicom_case(tmp_path / "dicom" / ref.patient_id)
        assert dicom.patient_id == ref.patient_id
        np.testing.assert_array_equal(dicom.image, nifti.image)
        np.testing.assert_array_equal(dicom.organ_mask, nifti.organ_mask)
        assert dicom.spacing_zyx_mm == pytest.approx(nifti.spacing_zyx_mm)


def test_sources_without_frame_of_reference_still_get_the_sr_and_a_seg(tmp_path, capsys):
    # Real exports without FrameOfReferenceUID: highdicom refuses such sources for a SEG.
    study, _, _ = write_toy_study(tmp_path / "s", "p5", seed=5)
    for path in study.ct_files:
        ds = pydicom.dcmread(path)
        del ds.FrameOfReferenceUID
        ds.save_as(path)
    model = random_bundle(tmp_path / "low.cadx", patch_threshold=0.0)  # every patch positive
    results, out = tmp_path / "results", tmp_path / "result.json"
    assert main(["diagnose", str(model), str(study.folder), "--out", str(out),
                 "--dicom-out", str(results)]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    [sr_path] = results.glob("SR_*.dcm")
    result = json.loads(out.read_text())
    assert read_sr_result(pydicom.dcmread(sr_path))["patient_score"] == result["patient_score"]
    [seg_path] = results.glob("SEG_*.dcm")
    seg = pydicom.dcmread(seg_path)
    assert seg.FrameOfReferenceUID  # a new one, said in a warning (printed and in the JSON)
    [warning] = [w for w in result["warnings"] if "FrameOfReferenceUID" in w]
    assert str(seg.FrameOfReferenceUID) in warning and " ".join(warning.split()) in printed


def test_a_seg_that_cannot_be_built_leaves_the_sr_and_one_line(model, tmp_path, capsys,
                                                               monkeypatch):
    import highdicom as hd

    def refuse(*args, **kwargs):
        raise ValueError("Source images are not what the IOD wants.")

    study, _, _ = write_toy_study(tmp_path / "s", "p6", seed=6)
    monkeypatch.setattr(hd.seg.Segmentation, "__init__", refuse)  # reading a SEG still works
    low = random_bundle(tmp_path / "low.cadx", patch_threshold=0.0)
    results, out = tmp_path / "results", tmp_path / "result.json"
    assert main(["diagnose", str(low), str(study.folder), "--out", str(out),
                 "--dicom-out", str(results)]) == 0
    assert len(list(results.glob("SR_*.dcm"))) == 1 and not list(results.glob("SEG_*.dcm"))
    [warning] = [w for w in json.loads(out.read_text())["warnings"] if "no SEG" in w]
    assert "not what the IOD wants" in warning
    assert "no SEG" in " ".join(capsys.readouterr().out.split())


def test_result_json_names_the_series_scored_not_a_mask_that_ties(model, tmp_path, capsys):
    study, _, label = write_toy_study(tmp_path / "s", "p8", seed=8)
    first = pydicom.dcmread(study.ct_files[0], stop_before_pixels=True)
    mask = ct_series_datasets((label > 0) * 255, SPACING, patient_id="p8",
                              study_uid=str(first.StudyInstanceUID))
    for i, (ds, plane) in enumerate(zip(mask, (label > 0).astype(np.uint16) * 255,
                                        strict=True)):
        ds.RescaleIntercept, ds.PixelData = 0, plane.tobytes()
        ds.save_as(study.folder / f"a_{i:03d}.dcm", enforce_file_format=True)
    out = tmp_path / "result.json"
    assert main(["diagnose", str(model), str(study.folder), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["series_uid"] == study.ct_series_uid
    assert result["study_uid"] == str(first.StudyInstanceUID)
    assert str(mask[0].SeriesInstanceUID) in " ".join(capsys.readouterr().out.split())


def test_no_mask_and_no_segmenter_is_refused_before_the_pixels_are_read(model, tmp_path,
                                                                        capsys, monkeypatch):
    import cadx.io.dicom

    study, _, _ = write_toy_study(tmp_path / "s", "p9", seed=9)
    study.seg_file.unlink()

    def read_pixels(info):
        raise AssertionError("the series was read before the bundle was checked")

    monkeypatch.setattr(cadx.io.dicom, "read_series_files", read_pixels)
    assert main(["diagnose", str(model), str(study.folder)]) == 2
    err = capsys.readouterr().err
    assert "no organ mask" in err and study.ct_series_uid in err and "segmenter" in err


def test_watch_refuses_clinical_values_in_one_line_before_asking_the_pacs(model, capsys):
    """One patient's --clinical values cannot serve a watcher that scores every patient: one
    line saying why and what to use instead, before any connection (the port is closed)."""
    assert main(["watch", str(model), "--pacs", "http://127.0.0.1:9/dicom-web",
                 "--clinical", "age=61"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("cadx: error: watch takes no --clinical: it scores every new study")
    assert "cadx diagnose MODEL --pacs URL --study UID --clinical" in err


def test_pacs_study_with_dicom_out_is_refused_in_one_line_before_asking_the_pacs(model, tmp_path,
                                                                                 capsys):
    """--dicom-out was silently ignored with --pacs: now one line naming --push-results, before
    any connection (the port is closed) and without creating the folder."""
    out = tmp_path / "sr"
    assert main(["diagnose", str(model), "--pacs", "http://127.0.0.1:9/dicom-web", "--study",
                 "1.2.3", "--dicom-out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--push-results" in err and "--dicom-out" in err
    assert not out.exists()
