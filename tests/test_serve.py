"""The REST API with FastAPI's TestClient: models, CT diagnosis, bad input, auth, busy pool."""

from __future__ import annotations

import asyncio
import base64
import io
import tempfile
import threading
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydicom.uid import generate_uid

from cadx.bundle import load_bundle, save_bundle
from cadx.cli import main
from cadx.diagnose.fna import fna_advice
from cadx.diagnose.images import diagnose_image_files
from cadx.diagnose.patient import diagnose_case
from cadx.image_bundle import load_image_bundle
from cadx.io.dicom import read_dicom_case
from cadx.io.volumes import read_case
from cadx.serve import app as app_module
from cadx.serve.app import create_app
from cadx.serve.inputs import UploadLimits
from cadx.serve.jobs import WORKDIR_PREFIX
from cadx.serve.registry import load_model_folder
from cadx.synth.dicom_series import write_dicom_study
from tests.conftest import toy_case, write_volume
from tests.serve_support import (
    write_ct_bundle,
    write_ct_upload,
    write_fused_image_bundle,
    write_image_bundle,
    write_png_images,
)
from tests.test_segment import _constant_segmenter
from tests.test_segment import _patch_bundle as _segmenting_bundle

TOKEN = "a-long-enough-test-token"


@pytest.fixture
def served(tmp_path: Path) -> dict:
    models_dir = tmp_path / "models"
    bundle_path = write_ct_bundle(models_dir / "pancreas_ct.cadx")
    image, mask = write_ct_upload(tmp_path / "upload")
    return {"models": load_model_folder(models_dir), "bundle": bundle_path, "image": image,
            "mask": mask}


def _files(*paths: Path, mask: Path | None = None) -> list[tuple[str, tuple[str, bytes]]]:
    files = [("files", (p.name, p.read_bytes())) for p in paths]
    if mask is not None:
        files.append(("organ_mask", (mask.name, mask.read_bytes())))
    return files


def test_health_and_models(served):
    client = TestClient(create_app(served["models"]))
    assert client.get("/healthz").json()["status"] == "ok"
    body = client.get("/v1/models").json()
    (model,) = body["models"]
    assert model["id"] == "pancreas_ct" and model["kind"] == "ct-patch"
    assert model["needs_organ_mask"] is True and model["threshold"] == pytest.approx(0.2)
    assert "TI-RADS" in body["fna_rule"]["source"]
    assert "/v1/diagnose" in client.get("/openapi.json").json()["paths"]
    page = client.get("/")
    assert page.status_code == 200 and "/static/app.js" in page.text
    assert "http" not in client.get("/static/app.js").text  # no outside resources


def test_ct_diagnosis_matches_the_pipeline_and_leaves_no_files(served, tmp_path, monkeypatch):
    upload_tmp = tmp_path / "service_tmp"
    upload_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(upload_tmp))
    client = TestClient(create_app(served["models"]))
    response = client.post("/v1/diagnose", data={"model": "pancreas_ct"},
                           files=_files(served["image"], mask=served["mask"]))
    assert response.status_code == 200, response.text
    result = response.json()
    expected = diagnose_case(load_bundle(served["bundle"]),
                             read_case(served["image"], organ_mask_path=served["mask"]))
    assert 0 < expected.n_positive_patches < expected.n_patches  # a mixed, informative case
    assert result["score"] == pytest.approx(expected.patient_score)
    assert result["positive"] == (expected.patient_score > 0.2)
    assert result["decision"] == expected.decision
    # named as the bundle scores patients (the served toy bundle: the seed's fraction)
    assert result["score_name"] == load_bundle(served["bundle"]).config.decide.description
    assert result["details"]["n_positive_patches"] == expected.n_positive_patches
    assert result["details"]["source"] == "patient_ct.nii.gz"  # no temporary path leaks
    png = base64.b64decode(result["heatmap"]["png"].removeprefix("data:image/png;base64,"))
    with Image.open(io.BytesIO(png)) as picture:
        assert picture.format == "PNG" and min(picture.size) >= 384
    assert result["fna"]["advice"] is None  # not a thyroid model
    assert list(upload_tmp.iterdir()) == []  # the request's temporary folder is gone


def test_zip_with_image_and_mask_gives_the_same_result(served, tmp_path):
    archive = tmp_path / "study.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(served["image"], "study/ct.nii.gz")
        zf.write(served["mask"], "study/organ_mask.nii.gz")
    client = TestClient(create_app(served["models"]))
    direct = client.post("/v1/diagnose", data={"model": "pancreas_ct"},
                         files=_files(served["image"], mask=served["mask"])).json()
    zipped = client.post("/v1/diagnose", data={"model": "pancreas_ct"}, files=_files(archive))
    assert zipped.status_code == 200, zipped.text
    assert zipped.json()["score"] == pytest.approx(direct["score"])


def test_zipped_dicom_series_with_organ_seg(served, tmp_path):
    image, label = toy_case(np.random.default_rng(0), with_tumour=True)
    study = write_dicom_study(image.astype(np.float32), label > 0, (2.5, 1.0, 1.0),
                              tmp_path / "dicom", patient_id="ANON1", localizer=False)
    archive = tmp_path / "series.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in study.folder.iterdir():
            zf.write(path, f"series/{path.name}")
    client = TestClient(create_app(served["models"]))
    response = client.post("/v1/diagnose", data={"model": "pancreas_ct"}, files=_files(archive))
    assert response.status_code == 200, response.text
    expected = diagnose_case(load_bundle(served["bundle"]), read_dicom_case(study.folder))
    assert response.json()["score"] == pytest.approx(expected.patient_score)
    assert response.json()["details"]["n_patches"] == expected.n_patches


@pytest.mark.parametrize("organ_found", [True, False])
def test_ct_model_with_segmenter_needs_no_mask(tmp_path, organ_found):
    bundle = _segmenting_bundle(_constant_segmenter(organ_found))
    save_bundle(bundle, tmp_path / "models" / "auto_ct.cadx")
    image, _ = write_ct_upload(tmp_path / "upload")
    client = TestClient(create_app(load_model_folder(tmp_path / "models")))
    (model,) = client.get("/v1/models").json()["models"]
    assert model["needs_organ_mask"] is False
    response = client.post("/v1/diagnose", data={"model": "auto_ct"}, files=_files(image))
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["details"]["organ_mask"] == "predicted"
    if organ_found:
        assert 0 <= result["score"] <= 1 and result["details"]["n_patches"] > 0
        assert result["heatmap"]["png"].startswith("data:image/png;base64,")
        assert "predicted organ outline" in result["heatmap"]["caption"]
    else:  # a result, not a crash and not a negative
        assert result["decision"] == "organ not found" and result["score"] is None
        assert result["positive"] is False and result["heatmap"] is None


@pytest.fixture
def image_models(tmp_path: Path) -> dict:
    models_dir = tmp_path / "image_models"
    thyroid = write_image_bundle(models_dir / "thyroid_us.cadx")
    write_image_bundle(models_dir / "breast_us.cadx", organ=None)
    return {"models": load_model_folder(models_dir), "bundle": thyroid,
            "pngs": write_png_images(tmp_path / "pngs")}


def test_image_exam_with_cams_and_fna_advice(image_models):
    client = TestClient(create_app(image_models["models"]))
    kinds = {m["id"]: (m["kind"], m["needs_organ_mask"]) for m in
             client.get("/v1/models").json()["models"]}
    assert kinds["thyroid_us"] == ("image", False)
    response = client.post("/v1/diagnose", data={"model": "thyroid_us", "lesion_size_mm": "12"},
                           files=_files(*image_models["pngs"]))
    assert response.status_code == 200, response.text
    result = response.json()
    expected = diagnose_image_files(load_image_bundle(image_models["bundle"]),
                                    image_models["pngs"], "exam")
    assert result["score"] == pytest.approx(expected.exam_score)
    assert result["decision"] == expected.decision
    assert [i["name"] for i in result["images"]] == ["nodule_1.png", "nodule_2.png"]
    for image, want in zip(result["images"], expected.images, strict=True):
        assert image["probability"] == pytest.approx(want.probability)
        assert image["cam_png"].startswith("data:image/png;base64,")
    advice = result["fna"]["advice"]
    assert advice == fna_advice(result["positive"], 12.0).to_dict()
    assert "TI-RADS" in result["fna"]["source"]
    no_size = client.post("/v1/diagnose", data={"model": "thyroid_us"},
                          files=_files(image_models["pngs"][0])).json()
    assert no_size["fna"]["advice"] is None and "size" in no_size["fna"]["note"]
    other = client.post("/v1/diagnose", data={"model": "breast_us", "lesion_size_mm": "12"},
                        files=_files(image_models["pngs"][0])).json()
    assert other["fna"]["advice"] is None and "thyroid" in other["fna"]["note"]


def test_image_exam_answer_names_no_server_path(image_models, tmp_path, monkeypatch):
    """The CAMs are written in the request's temporary folder: the answer sends the overlays
    inline and names no file there (details carries no cam_png / cam_npy path)."""
    service_tmp = tmp_path / "service_tmp"
    service_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(service_tmp))
    client = TestClient(create_app(image_models["models"]))
    response = client.post("/v1/diagnose", data={"model": "thyroid_us"},
                           files=_files(*image_models["pngs"]))
    assert response.status_code == 200, response.text
    result = response.json()
    assert all(image["cam_png"].startswith("data:image/png;base64,")
               for image in result["images"])
    assert str(service_tmp) not in response.text and WORKDIR_PREFIX not in response.text
    assert all("cam_npy" not in image and "cam_png" not in image
               for image in result["details"]["images"])
    assert list(service_tmp.iterdir()) == []
    # `cadx diagnose --cam` still writes the raw map beside the overlay.
    written = diagnose_image_files(load_image_bundle(image_models["bundle"]),
                                   image_models["pngs"][:1], "exam", cam_dir=tmp_path / "cam")
    assert np.load(written.images[0].cam_npy).shape == (32, 32)


@pytest.fixture
def dicom_series(tmp_path: Path) -> dict:
    """A toy CT series with an organ SEG and no PatientID, its slices in z order."""
    image, label = toy_case(np.random.default_rng(0), with_tumour=True)
    study = write_dicom_study(image.astype(np.float32), label > 0, (2.5, 1.0, 1.0),
                              tmp_path / "dicom", patient_id="", localizer=False)
    by_z = sorted(study.ct_files, key=lambda p: float(
        pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]))
    return {"study": study, "slices": by_z, "label": label}


def _zip_upload(name: str, members: dict[str, bytes]) -> tuple[str, tuple[str, bytes]]:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for member, data in members.items():
            zf.writestr(member, data)
    return ("files", (name, buffer.getvalue()))


def _no_server_path(response: httpx.Response, service_tmp: Path) -> None:
    assert str(service_tmp) not in response.text, response.text
    assert WORKDIR_PREFIX not in response.text, response.text


def test_ct_answer_warnings_name_the_uploaded_file(served, dicom_series, tmp_path,
                                                   monkeypatch):
    """A DICOM series sent as separate files, its last slice's pixel data cut off: the slice is
    skipped and the answer's warning names it as sent, as `cadx diagnose` does; the patient
    (no PatientID) is named after the upload; nothing names the request's temporary folder."""
    service_tmp = tmp_path / "service_tmp"
    service_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(service_tmp))
    last = dicom_series["slices"][-1]
    last.write_bytes(last.read_bytes()[:-500])
    client = TestClient(create_app(served["models"]))
    response = client.post("/v1/diagnose", data={"model": "pancreas_ct"},
                           files=_files(*sorted(dicom_series["study"].folder.iterdir())))
    assert response.status_code == 200, response.text
    details = response.json()["details"]
    assert any(warning.startswith(f"skipped {last.name}: pixel data cannot be decoded")
               for warning in details["warnings"]), details["warnings"]
    first = sorted(dicom_series["study"].folder.iterdir())[0]
    assert details["patient_id"] == first.name
    _no_server_path(response, service_tmp)
    assert list(service_tmp.iterdir()) == []


def _bad_ct_upload(case: str, served: dict, series: dict, tmp_path: Path) -> list:
    slices, seg = series["slices"], series["study"].seg_file
    if case == "corrupt_nifti":
        return [("files", ("broken.nii.gz", b"\x1f\x8b not really gzip")),
                *_files(mask=served["mask"])]
    if case == "empty_mask":
        empty = write_volume(tmp_path / "bad" / "empty_mask.nii.gz",
                             np.zeros(series["label"].shape, np.uint8))
        return _files(served["image"], mask=empty)
    if case == "mismatched_mask":
        small = write_volume(tmp_path / "bad" / "small_mask.nii.gz", np.ones((4, 8, 8), np.uint8))
        return _files(served["image"], mask=small)
    if case == "corrupt_dicom":  # a slice cut inside its header: no DICOM left to read
        return [("files", (slices[0].name, slices[0].read_bytes()[:300]))]
    if case == "single_slice":
        return _files(slices[0])
    if case in ("wrong_modality_files", "wrong_modality_zip"):
        relabelled = {}
        for path in slices:
            ds = pydicom.dcmread(path)
            ds.Modality = "US"
            buffer = io.BytesIO()
            ds.save_as(buffer)
            relabelled[path.name] = buffer.getvalue()
        if case == "wrong_modality_zip":
            return [_zip_upload("us_series.zip", relabelled)]
        return [("files", (name, data)) for name, data in relabelled.items()]
    if case in ("two_series_tie", "stacked_phases"):
        members = {f"series/{p.name}": p.read_bytes() for p in [*slices, seg]}
        copies = slices if case == "two_series_tie" else slices[:1]
        copy_series_uid = generate_uid()
        for path in copies:  # a second series of the same slices, or a slice acquired twice
            ds = pydicom.dcmread(path)
            if case == "two_series_tie":
                ds.SeriesInstanceUID = copy_series_uid
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            buffer = io.BytesIO()
            ds.save_as(buffer)
            members[f"series/copy_{path.name}"] = buffer.getvalue()
        return [_zip_upload("series.zip", members)]
    gap = [p for p in slices if p != slices[len(slices) // 2]] + [seg]
    if case == "gap_in_files":
        return _files(*gap)
    if case == "gap_in_zip":
        return [_zip_upload("series.zip", {f"series/{p.name}": p.read_bytes() for p in gap})]
    assert case == "dicom_mismatched_mask"
    small = write_volume(tmp_path / "bad" / "small_mask.nii.gz", np.ones((4, 8, 8), np.uint8))
    return [_zip_upload("series.zip", {f"series/{p.name}": p.read_bytes() for p in slices}),
            *_files(mask=small)]


@pytest.mark.parametrize("case, words", [
    ("corrupt_nifti", ["broken.nii.gz: not a readable image"]),
    ("empty_mask", ["empty_mask.nii.gz: label map has no organ voxels"]),
    ("mismatched_mask", ["small_mask.nii.gz: shape", "image patient_ct.nii.gz shape"]),
    ("corrupt_dicom", ["{first}: no DICOM files found"]),
    ("single_slice", ["{first}: no CT/MR", "a single slice"]),
    ("wrong_modality_files", ["the uploaded files: no CT/MR", "modality US"]),
    ("wrong_modality_zip", ["us_series.zip: no CT/MR", "modality US"]),
    ("gap_in_files", ["the uploaded files: irregular slice spacing"]),
    ("gap_in_zip", ["series.zip/series: irregular slice spacing"]),
    ("dicom_mismatched_mask", ["small_mask.nii.gz: shape", "image series.zip/series shape"]),
    ("two_series_tie", ["series.zip/series: 2 series tie for selection",
                        "; upload the series to score without the others"]),
    ("stacked_phases", ["series.zip/series: 2 slices share a position",
                        "; upload one acquisition, phase or echo per series"]),
])
def test_a_bad_ct_upload_error_names_the_upload_not_the_temporary_folder(
        served, dicom_series, tmp_path, monkeypatch, case, words):
    """A 4xx for a bad CT upload names the file as the user sent it (a zip member under the
    zip's name; several files, whose common folder is the request's, as `the uploaded files`),
    never a path in the request's temporary folder; its advice is what a service user can do
    (a different upload), not the command line's `--series`."""
    service_tmp = tmp_path / "service_tmp"
    service_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(service_tmp))
    client = TestClient(create_app(served["models"]))
    response = client.post("/v1/diagnose", data={"model": "pancreas_ct"},
                           files=_bad_ct_upload(case, served, dicom_series, tmp_path))
    assert 400 <= response.status_code < 500, response.text
    error = response.json()["error"]
    first = dicom_series["slices"][0].name
    assert all(word.format(first=first) in error for word in words), error
    assert "--series" not in error and "\n" not in error, error
    _no_server_path(response, service_tmp)


def test_image_model_bad_files(image_models, tmp_path):
    client = TestClient(create_app(image_models["models"]))
    corrupt = client.post("/v1/diagnose", data={"model": "thyroid_us"},
                          files=[("files", ("scan.png", b"\x89PNG broken"))])
    assert corrupt.status_code == 422 and "scan.png" in corrupt.json()["error"]
    volume = client.post("/v1/diagnose", data={"model": "thyroid_us"},
                         files=[("files", ("ct.nii.gz", b"\x1f\x8b"))])
    assert volume.status_code == 415 and "not a 2D image" in volume.json()["error"]


def _unjudgeable_pngs(folder: Path) -> dict[str, Path]:
    """A mostly transparent RGBA cut-out and a 2 x 2 image, as PNG files."""
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (64, 64, 4), dtype=np.uint8)
    rgba[..., 3] = 0
    rgba[:8, :8, 3] = 255
    Image.fromarray(rgba, "RGBA").save(folder / "cutout.png")
    Image.fromarray(np.array([[10, 200], [90, 250]], np.uint8)).save(folder / "tiny.png")
    return {"cutout.png": folder / "cutout.png", "tiny.png": folder / "tiny.png"}


@pytest.mark.parametrize(("name", "reason"), [("cutout.png", "transparent"),
                                              ("tiny.png", "too small")])
def test_an_image_the_model_cannot_judge_gets_its_reason_as_diagnose_does(
        image_models, tmp_path, name, reason):
    client = TestClient(create_app(image_models["models"]))
    bad = _unjudgeable_pngs(tmp_path)[name]
    alone = client.post("/v1/diagnose", data={"model": "thyroid_us"}, files=_files(bad))
    assert alone.status_code == 422, alone.text
    error = alone.json()["error"]
    assert "no image can be judged" in error and name in error and reason in error
    assert "\n" not in error and "/tmp" not in error
    ok = image_models["pngs"][0]
    mixed = client.post("/v1/diagnose", data={"model": "thyroid_us"}, files=_files(ok, bad))
    assert mixed.status_code == 200, mixed.text
    judged, not_judged = mixed.json()["images"]
    assert judged["probability"] is not None and not_judged["probability"] is None
    assert reason in not_judged["not_judged"] and not_judged["cam_png"] is None
    expected = diagnose_image_files(load_image_bundle(image_models["bundle"]), [ok], "exam")
    assert mixed.json()["score"] == pytest.approx(expected.exam_score)


@pytest.mark.parametrize(("case", "status", "words"), [
    ("missing_mask", 422, ["patient_ct.nii.gz", "organ mask"]),
    ("wrong_type", 415, ["notes.txt", "not a CT/MR volume"]),
    ("corrupt", 422, ["broken.nii.gz", "not a readable image"]),
    ("unknown_model", 404, ["unknown model", "pancreas_ct"]),
    ("bad_size", 422, ["lesion size", "twelve"]),
    ("negative_size", 422, ["lesion size", "outside"]),
    ("no_model_field", 422, ["model"]),
    ("oversized", 413, ["exceeds the limit"]),
    ("too_many_files", 413, ["at most 2"]),
])
def test_bad_input_is_a_readable_4xx(served, tmp_path, case, status, words):
    limits = UploadLimits(max_request_bytes=200_000, max_files=2)
    client = TestClient(create_app(served["models"], limits=limits))
    data = {"model": "pancreas_ct"}
    files = _files(served["image"], mask=served["mask"])
    if case == "missing_mask":
        files = _files(served["image"])
    elif case == "wrong_type":
        files = [("files", ("notes.txt", b"hello")), *files[1:]]
    elif case == "corrupt":
        files = [("files", ("broken.nii.gz", b"\x1f\x8b not really gzip")), *files[1:]]
    elif case == "unknown_model":
        data["model"] = "lung_ct"
    elif case == "bad_size":
        data["lesion_size_mm"] = "twelve"
    elif case == "negative_size":
        data["lesion_size_mm"] = "-3"
    elif case == "no_model_field":
        data = {}
    elif case == "oversized":
        files = [("files", ("big.nii.gz", b"\0" * 300_000))]
    elif case == "too_many_files":
        files = files + files
    response = client.post("/v1/diagnose", data=data, files=files)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert all(word in error for word in words), error
    assert "Traceback" not in error and "/tmp" not in error


def test_bearer_token_guards_the_api_but_not_health(served):
    client = TestClient(create_app(served["models"], token=TOKEN))
    assert client.get("/healthz").status_code == 200
    refused = client.get("/v1/models")
    assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
    wrong = client.get("/v1/models", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    ok = client.get("/v1/models", headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200
    post = client.post("/v1/diagnose", data={"model": "pancreas_ct"},
                       files=_files(served["image"], mask=served["mask"]))
    assert post.status_code == 401


def test_full_pool_answers_503_with_retry_after(served, monkeypatch):
    release = threading.Event()
    started = threading.Event()

    def slow_job(request, limits):
        started.set()
        release.wait(10)
        return {"done": True}

    monkeypatch.setattr(app_module, "run_diagnosis", slow_job)
    app = create_app(served["models"], workers=1, queue_size=0)
    form = {"data": {"model": "pancreas_ct"}, "files": _files(served["image"])}

    async def scenario() -> tuple[httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            first = asyncio.create_task(client.post("/v1/diagnose", **form))
            while not started.is_set():
                await asyncio.sleep(0.01)
            second = await client.post("/v1/diagnose", **form)
            health = await client.get("/healthz")  # the event loop stays responsive
            assert health.json()["jobs"] == 1
            release.set()
            return await first, second

    first, second = asyncio.run(scenario())
    assert first.status_code == 200 and first.json() == {"done": True}
    assert second.status_code == 503
    assert int(second.headers["retry-after"]) >= 1
    assert "busy" in second.json()["error"]


def test_cli_refuses_public_bind_without_token(served, monkeypatch, capsys):
    monkeypatch.delenv("CADX_SERVE_TOKEN", raising=False)
    models_dir = str(served["bundle"].parent)
    assert main(["serve", "--models", models_dir, "--host", "0.0.0.0"]) == 2
    assert "without a token" in capsys.readouterr().err
    assert main(["serve", "--models", str(served["image"].parent / "none")]) == 2
    assert "model folder not found" in capsys.readouterr().err


# ----------------------------------------------------------- clinical values (issue 17)


@pytest.fixture
def fused_models(tmp_path: Path) -> dict:
    """A 2D bundle with a fusion model on age and device, beside a CT bundle."""
    models_dir = tmp_path / "fused_models"
    path = write_fused_image_bundle(models_dir / "breast_us.cadx")
    write_ct_bundle(models_dir / "pancreas_ct.cadx")
    return {"models": load_model_folder(models_dir), "bundle": path,
            "pngs": write_png_images(tmp_path / "pngs")}


def test_models_listing_names_the_fusion_columns(fused_models):
    client = TestClient(create_app(fused_models["models"]))
    listed = {m["id"]: m for m in client.get("/v1/models").json()["models"]}
    assert listed["pancreas_ct"]["fusion"] is None
    fusion = listed["breast_us"]["fusion"]
    assert [c["name"] for c in fusion["columns"]] == ["age", "device"]
    age, device = fusion["columns"]
    assert age["kind"] == "numeric" and age["unit"] == "years" and age["range"] == [0, 120]
    assert device["kind"] == "categorical" and device["values"] == ["GE", "Toshiba"]
    assert 0.0 < fusion["threshold"] < 1.0 and "age, device" in fusion["model"]


def test_clinical_values_give_both_scores_as_diagnose_does(fused_models):
    from cadx.diagnose.clinical import add_fusion

    client = TestClient(create_app(fused_models["models"]))
    pngs = fused_models["pngs"]
    bundle = load_image_bundle(fused_models["bundle"])
    diagnosis = add_fusion(bundle, diagnose_image_files(bundle, pngs, "exam"),
                           {"age": "61", "device": "GE"})
    expected = diagnosis.fusion
    # One field as `diagnose --clinical` takes it, or one field per column: the same answer.
    for clinical in (["age=61,device=GE"], ["age=61 years", "device=GE"]):
        response = client.post("/v1/diagnose?model=breast_us", data={"clinical": clinical},
                               files=_files(*pngs))
        assert response.status_code == 200, response.text
        result = response.json()
        fusion = result["fusion"]
        assert result["score"] == pytest.approx(diagnosis.exam_score)
        assert result["decision"] == diagnosis.decision
        assert fusion["values"] == {"age": 61.0, "device": "GE"}
        assert fusion["score"] == pytest.approx(expected["score"])
        assert fusion["decision"] == expected["decision"] and fusion["not_fused"] is None
        assert fusion["image_only_score"] == pytest.approx(expected["image_only_score"])
    # A value the fusion needs is missing: the image-only score stands, saying why.
    response = client.post("/v1/diagnose?model=breast_us", data={"clinical": "age=61"},
                           files=_files(*pngs))
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["score"] is not None and result["fusion"]["score"] is None
    assert result["fusion"]["not_fused"] == ("image-only score given: the fusion model needs "
                                             "device: missing")
    out_of_range = client.post("/v1/diagnose?model=breast_us",
                               data={"clinical": "age=130,device=GE"}, files=_files(*pngs))
    assert out_of_range.status_code == 200, out_of_range.text
    assert out_of_range.json()["fusion"]["not_fused"] == (
        "image-only score given: clinical, column 'age': '130' is outside the plausible range "
        "0..120 years")
    none_given = client.post("/v1/diagnose?model=breast_us", files=_files(*pngs)).json()
    assert none_given["fusion"]["not_fused"] == ("image-only score given: the fusion model "
                                                 "needs age, device: missing")
    assert none_given["score"] == result["score"]


@pytest.mark.parametrize(("model", "clinical", "words"), [
    ("breast_us", "age54", ["clinical expects NAME=VALUE", "'age54'"]),
    ("breast_us", "age=54,age=60", ["clinical names 'age' twice"]),
    ("breast_us", "x=" + "9" * 3000, ["clinical: more than 2000 characters"]),
])
def test_a_malformed_clinical_field_is_a_one_line_422(fused_models, model, clinical, words):
    client = TestClient(create_app(fused_models["models"]))
    response = client.post(f"/v1/diagnose?model={model}", data={"clinical": clinical},
                           files=_files(fused_models["pngs"][0]))
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert all(word in error for word in words), error
    assert "\n" not in error and len(error) < 300
