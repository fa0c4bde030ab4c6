"""PACS round trip against a real Orthanc (Debian `orthanc` + `orthanc-dicomweb`) on loopback:
upload a synthetic study (STOW-RS), pull and score it (QIDO-RS/WADO-RS), answer with an SR
that Orthanc stores and pydicom reads back; `cadx watch` scores studies as they arrive."""

import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pydicom
import pytest
import requests

from cadx.bundle import load_bundle
from cadx.cli import main
from cadx.errors import InputError
from cadx.io.dicom_results import SR_SERIES_DESCRIPTION, read_sr_result
from cadx.pacs.client import PacsClient, PacsError
from cadx.pacs.study import diagnose_study
from tests.test_dicom_cli import random_bundle, write_toy_study

ORTHANC = shutil.which("Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
pytestmark = pytest.mark.skipif(
    ORTHANC is None or not DICOMWEB_PLUGIN.exists(),
    reason="Orthanc with its DICOMweb plugin is not installed "
           "(apt-get install orthanc orthanc-dicomweb)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def orthanc(tmp_path):
    """A throw-away Orthanc (own config and storage in tmp_path); yields its DICOMweb URL."""
    storage = tmp_path / "orthanc-db"
    port = _free_port()
    config = {
        "Name": "cadx-test", "StorageDirectory": str(storage), "IndexDirectory": str(storage),
        "HttpPort": port, "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
        "DicomServerEnabled": False, "DicomPort": _free_port(),
        "Plugins": [str(DICOMWEB_PLUGIN)], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    config_path = tmp_path / "orthanc.json"
    config_path.write_text(json.dumps(config))
    log = (tmp_path / "orthanc.log").open("w")
    process = subprocess.Popen([ORTHANC, str(config_path)], stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                if requests.get(f"{base}/dicom-web/studies", timeout=1).ok:
                    break
            except requests.ConnectionError:
                pass
            if process.poll() is not None:
                pytest.fail(f"Orthanc exited: {(tmp_path / 'orthanc.log').read_text()[-800:]}")
            time.sleep(0.1)
        else:
            pytest.fail("Orthanc did not answer within 10 s")
        yield f"{base}/dicom-web"
    finally:
        process.kill()  # throw-away storage: no clean shutdown needed
        process.wait(timeout=10)
        log.close()


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return random_bundle(tmp_path_factory.mktemp("pacs_bundle") / "model.cadx")


def upload(url: str, folder: Path, patient_id: str, seed: int):
    """Write a toy study and store it with STOW-RS; returns the study files."""
    study, _, _ = write_toy_study(folder, patient_id, seed)
    datasets = [pydicom.dcmread(path) for path in study.files]
    PacsClient(url).store(datasets, study.study_uid)
    return study


def _cadx_srs(client: PacsClient, study_uid: str) -> list[pydicom.Dataset]:
    series = [s for s in client.series(study_uid)
              if s.Modality == "SR" and s.SeriesDescription == SR_SERIES_DESCRIPTION]
    return [ds for s in series for ds in client.retrieve_series(study_uid, s.SeriesInstanceUID)]


def test_study_is_pulled_scored_and_answered_with_an_sr(orthanc, model, tmp_path):
    study = upload(orthanc, tmp_path / "study", "p1", seed=1)
    out = tmp_path / "result.json"
    assert main(["diagnose", str(model), "--pacs", orthanc, "--study", study.study_uid,
                 "--push-results", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["series_uid"] == study.ct_series_uid
    assert result["organ_mask"].startswith("DICOM SEG")  # found in the study automatically
    client = PacsClient(orthanc)
    srs = _cadx_srs(client, study.study_uid)
    assert len(srs) == 1
    stored = read_sr_result(srs[0])  # as Orthanc stored it, read with pydicom
    assert stored["patient_score"] == result["patient_score"]
    assert stored["decision"] == result["decision"]
    assert stored["patient_threshold"] == result["patient_threshold"]
    # the source series is untouched: same instances as uploaded
    ct = client.series_metadata(study.study_uid, study.ct_series_uid)
    assert len(ct) == len(study.ct_files)


def test_diagnose_without_push_stores_nothing(orthanc, model, tmp_path):
    study = upload(orthanc, tmp_path / "study", "p2", seed=2)
    result = diagnose_study(PacsClient(orthanc), load_bundle(model), study.study_uid)
    assert result.pushed == [] and 0.0 <= result.diagnosis.patient_score <= 1.0
    assert _cadx_srs(PacsClient(orthanc), study.study_uid) == []


def test_unreachable_pacs_is_retried_then_one_clear_error():
    client = PacsClient(f"http://127.0.0.1:{_free_port()}/dicom-web", retries=2, backoff_s=0.05)
    start = time.perf_counter()
    with pytest.raises(PacsError, match="PACS unreachable during study query after 3 "
                                        "attempts .*refused"):
        client.studies()
    assert time.perf_counter() - start >= 0.05  # it backed off before giving up


def test_server_errors_are_retried_with_backoff_then_one_clear_error():
    """A PACS answering 503 is asked `retries` + 1 times, then the error names the failure."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    hits = []

    class Busy(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's naming)
            hits.append(time.perf_counter())
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Busy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = PacsClient(f"http://127.0.0.1:{server.server_port}/dicom-web", retries=2,
                            backoff_s=0.1)
        with pytest.raises(PacsError, match="study query failed after 3 attempts"):
            client.studies()
    finally:
        server.shutdown()
    assert len(hits) == 3
    assert hits[2] - hits[1] >= 0.15  # exponential backoff: the second wait is the longer


def test_refused_store_is_an_error_and_leaves_no_result(orthanc, model, tmp_path):
    study = upload(orthanc, tmp_path / "study", "p3", seed=3)
    client = PacsClient(orthanc, retries=1, backoff_s=0.01)
    result = diagnose_study(client, load_bundle(model), study.study_uid)
    from cadx.io.dicom_results import diagnosis_sr

    sr = diagnosis_sr(result.diagnosis, result.case)
    with pytest.raises(PacsError, match="storing results"):
        client.store([sr], "1.2.3.4")  # a study UID the SR does not belong to
    assert _cadx_srs(client, study.study_uid) == []


def test_unknown_study_is_a_clear_cli_error(orthanc, model, capsys):
    assert main(["diagnose", str(model), "--pacs", orthanc, "--study", "1.2.3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"cadx: error: {orthanc}: no study 1.2.3 (or it holds no series)"


# Only a guard against a hung run, never a budget the test expects to use: every wait below ends
# on an event (a line of the watcher's output, the process's exit).
_HANG_GUARD_S = 900


def _lines_of(process: subprocess.Popen) -> queue.Queue:
    """The process's output, line by line (None at its end), read in a thread."""
    lines: queue.Queue = queue.Queue()

    def read() -> None:
        for line in process.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    return lines


def _wait_for_line(lines: queue.Queue, seen: list[str], wanted, what: str) -> None:
    """Read lines into `seen` until one satisfies `wanted`; fail at the output's end."""
    while True:
        try:
            line = lines.get(timeout=_HANG_GUARD_S)
        except queue.Empty:
            pytest.fail(f"no {what} in {_HANG_GUARD_S} s:\n" + "".join(seen))
        if line is None:
            pytest.fail(f"the watcher ended before {what}:\n" + "".join(seen))
        seen.append(line)
        if wanted(line):
            return


def test_watch_scores_two_arriving_studies_and_stops_on_ctrl_c(orthanc, model, tmp_path):
    out = tmp_path / "watch_out"
    process = subprocess.Popen(
        [sys.executable, "-m", "cadx.cli", "watch", "--pacs", orthanc, str(model),
         "--interval", "0.3", "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "COLUMNS": "200", "PYTHONUNBUFFERED": "1"})
    seen: list[str] = []
    try:
        lines = _lines_of(process)
        _wait_for_line(lines, seen, lambda line: line.startswith("watching "),
                       "'watching' line (bundle loaded, PACS answered)")
        studies = [upload(orthanc, tmp_path / f"s{i}", f"w{i}", seed=10 + i) for i in range(2)]
        for study in studies:  # in any order: each study's own result line
            if not any(line.startswith(f"study {study.study_uid} ") for line in seen):
                _wait_for_line(lines, seen, lambda line, uid=study.study_uid: line.startswith(
                    f"study {uid} "), f"result line of study {study.study_uid}")
        process.send_signal(signal.SIGINT)
        process.wait(timeout=_HANG_GUARD_S)
        while (line := lines.get(timeout=_HANG_GUARD_S)) is not None:
            seen.append(line)
    finally:
        if process.poll() is None:
            process.kill()
    output = "".join(seen)
    assert process.returncode == 0, output
    assert "2 studies scored, 0 failed" in output
    for study in studies:
        written = json.loads((out / f"{study.study_uid}.json").read_text())
        [sr] = _cadx_srs(PacsClient(orthanc), study.study_uid)
        assert read_sr_result(sr)["patient_score"] == written["patient_score"]


def _constant_segmenter(organ_everywhere: bool):
    """An embedded organ segmenter whose output ignores the image: organ everywhere or nowhere."""
    import torch

    from cadx.segment.bundle import SegmenterBundle
    from cadx.segment.config import SegConfig
    from cadx.segment.network import build_network

    config = SegConfig(in_plane_spacing_mm=2.0, channels=(8, 16), roi_px=16,
                       min_organ_volume_ml=0.5)
    network = build_network(config)
    state = {k: torch.zeros_like(v) for k, v in network.state_dict().items()}
    for name, value in network.named_parameters():
        if name.endswith("bias") and value.shape == (2,):  # the output convolutions
            state[name] = torch.tensor([-5.0, 5.0] if organ_everywhere else [5.0, -5.0])
    return SegmenterBundle(config=config, state_dict=state)


@pytest.mark.parametrize("organ_everywhere", [True, False])
def test_study_without_organ_seg_uses_the_embedded_segmenter(orthanc, model, tmp_path,
                                                              organ_everywhere):
    study, _, _ = write_toy_study(tmp_path / "study", "p5", seed=5)
    client = PacsClient(orthanc)
    client.store([pydicom.dcmread(p) for p in study.ct_files], study.study_uid)
    bundle = load_bundle(model)
    with pytest.raises(InputError, match="no organ mask: no DICOM SEG in the study references"):
        diagnose_study(client, bundle, study.study_uid)
    bundle.segmenter = _constant_segmenter(organ_everywhere)
    result = diagnose_study(client, bundle, study.study_uid, push=True)
    [sr] = _cadx_srs(client, study.study_uid)
    stored = read_sr_result(sr)
    assert stored["decision"] == result.diagnosis.decision
    if organ_everywhere:
        assert result.diagnosis.organ_mask == "predicted"
        assert stored["patient_score"] == result.diagnosis.patient_score
    else:
        assert result.diagnosis.decision == "organ not found"
        assert "patient_score" not in stored and len(result.pushed) == 1


def _spy_on_retrievals(monkeypatch) -> list[str]:
    """The series UIDs whose pixel data (WADO-RS retrieval) any PacsClient asks for."""
    retrieved: list[str] = []
    real = PacsClient.retrieve_series

    def spy(self, study_uid, series_uid):
        retrieved.append(series_uid)
        return real(self, study_uid, series_uid)

    monkeypatch.setattr(PacsClient, "retrieve_series", spy)
    return retrieved


def _upload_ct_only(url: str, folder: Path, patient_id: str, seed: int):
    """A toy study stored without its organ SEG; returns the study files (SEG file kept)."""
    study, _, _ = write_toy_study(folder, patient_id, seed)
    PacsClient(url).store([pydicom.dcmread(p) for p in study.ct_files], study.study_uid)
    return study


def test_a_study_without_an_organ_mask_is_refused_before_any_pixel_data(orthanc, model,
                                                                         tmp_path, capsys,
                                                                         monkeypatch):
    """No organ SEG in the study, no --organ-mask, no segmenter in the bundle: one line, as for
    a DICOM folder, and not one series retrieved (the user does not wait for a download)."""
    study = _upload_ct_only(orthanc, tmp_path / "study", "p6", seed=6)
    retrieved = _spy_on_retrievals(monkeypatch)
    assert main(["diagnose", str(model), "--pacs", orthanc, "--study", study.study_uid]) == 2
    err = capsys.readouterr().err
    assert retrieved == []
    assert err == (f"cadx: error: {orthanc} study {study.study_uid}: no organ mask: no DICOM "
                   f"SEG in the study references series {study.ct_series_uid}; give "
                   "--organ-mask (NIfTI or DICOM SEG) or store the organ SEG of this series in "
                   f"the study: {model} embeds no organ segmenter\n")
    # The watcher refuses such a study the same way, from its metadata, and goes on.
    from io import StringIO

    from rich.console import Console

    from cadx.pacs.watch import watch

    summary = watch(PacsClient(orthanc), load_bundle(model), interval_s=0.0, push=False,
                    console=Console(file=StringIO()), max_polls=3)
    assert list(summary.failed) == [study.study_uid] and summary.scored == []
    assert "no organ mask: no DICOM SEG in the study" in summary.failed[study.study_uid]
    assert retrieved == []


def test_a_series_over_the_voxel_limit_is_refused_before_any_pixel_data(orthanc, model,
                                                                         tmp_path, capsys,
                                                                         monkeypatch):
    study = upload(orthanc, tmp_path / "study", "p7", seed=7)
    retrieved = _spy_on_retrievals(monkeypatch)
    assert main(["diagnose", str(model), "--pacs", orthanc, "--study", study.study_uid,
                 "--max-voxels", "1000"]) == 2
    err = capsys.readouterr().err
    assert retrieved == []
    assert err.count("\n") == 1 and err.startswith(f"cadx: error: {orthanc} study ")
    assert "exceeds the limit of 1,000 voxels (--max-voxels)" in err


def test_organ_mask_file_serves_a_pacs_study_without_an_organ_seg(orthanc, model, tmp_path):
    """--organ-mask with --pacs is used (it was ignored): here the study's own SEG, kept as a
    local file but not stored in the PACS."""
    study = _upload_ct_only(orthanc, tmp_path / "study", "p8", seed=8)
    out = tmp_path / "result.json"
    assert main(["diagnose", str(model), "--pacs", orthanc, "--study", study.study_uid,
                 "--organ-mask", str(study.seg_file), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["organ_mask"] == "given" and result["series_uid"] == study.ct_series_uid
    local = tmp_path / "local.json"
    assert main(["diagnose", str(model), str(study.folder), "--out", str(local)]) == 0
    assert result["patient_score"] == json.loads(local.read_text())["patient_score"]


@pytest.fixture(scope="module")
def fused_model(tmp_path_factory) -> Path:
    """The random-weight bundle with a fusion model on age (fixed numbers, not fitted)."""
    from cadx.bundle import save_bundle
    from cadx.decide.fusion import SCORE_FEATURE, FusionModel
    from cadx.decide.roc import OperatingPoint

    path = random_bundle(tmp_path_factory.mktemp("pacs_fused") / "fused.cadx")
    bundle = load_bundle(path)
    bundle.fusion = FusionModel(
        columns=("age",), kinds={"age": "numeric"}, units={"age": "years"}, score_mean=0.0,
        score_scale=1.0, numeric_scaling={"age": (50.0, 10.0)}, levels={},
        coefficients={SCORE_FEATURE: 1.0, "age": 0.8}, intercept=0.0,
        operating_point=OperatingPoint(0.5, 0.5, 0.5, 0.0, 0.5, (0.0, 1.0), (0.0, 1.0)),
        column_specs={"age": {"kind": "numeric", "unit": "years", "range": [0, 120]}})
    save_bundle(bundle, path)
    return path


def test_clinical_values_feed_the_fusion_model_of_a_pacs_study(orthanc, fused_model, tmp_path,
                                                               capsys):
    """--clinical with --pacs takes the fusion path of a DICOM folder: the same fused result."""
    study = upload(orthanc, tmp_path / "study", "p9", seed=9)
    out, local = tmp_path / "result.json", tmp_path / "local.json"
    assert main(["diagnose", str(fused_model), "--pacs", orthanc, "--study", study.study_uid,
                 "--clinical", "age=61", "--push-results", "--out", str(out)]) == 0
    shown = capsys.readouterr().out
    result = json.loads(out.read_text())
    fusion = result["fusion"]
    assert fusion["values"] == {"age": 61.0} and fusion["score"] is not None
    assert fusion["not_fused"] is None
    assert f"with age: {fusion['decision']} (fused score {fusion['score']:.3f}" in shown
    assert main(["diagnose", str(fused_model), str(study.folder), "--clinical", "age=61",
                 "--out", str(local)]) == 0
    assert fusion == json.loads(local.read_text())["fusion"]
    # the SR holds the image-only result, as for a folder's --dicom-out
    [sr] = _cadx_srs(PacsClient(orthanc), study.study_uid)
    assert read_sr_result(sr)["patient_score"] == result["patient_score"]
    # without the values, the image-only result stands and the JSON says why
    assert main(["diagnose", str(fused_model), "--pacs", orthanc, "--study", study.study_uid,
                 "--out", str(out)]) == 0
    assert json.loads(out.read_text())["fusion"]["not_fused"] == (
        "image-only score given: the fusion model needs age: missing")
    # the watcher, which takes no values, says so in each result of a fused bundle
    from io import StringIO

    from rich.console import Console

    from cadx.pacs.watch import watch

    other = upload(orthanc, tmp_path / "other", "p10", seed=10)
    summary = watch(PacsClient(orthanc), load_bundle(fused_model), interval_s=0.0, push=False,
                    out_dir=tmp_path / "watched", console=Console(file=StringIO()), max_polls=3)
    assert summary.scored == [other.study_uid] and summary.skipped == [study.study_uid]
    watched = json.loads((tmp_path / "watched" / f"{other.study_uid}.json").read_text())
    assert watched["fusion"]["not_fused"] == (
        "image-only score given: the fusion model needs age: missing")
