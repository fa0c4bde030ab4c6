"""Service hardening (issue 15, items 3, 4 and 6), in process: the token, the model and a pool
slot are checked on the headers before an upload is read; a stalled upload is cut off with a
408; every error, an unexpected one included, is `{"error": ...}` JSON."""

from __future__ import annotations

import asyncio
import logging
import tempfile
import threading
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from cadx.serve import app as app_module
from cadx.serve.app import create_app
from cadx.serve.registry import load_model_folder
from tests.serve_support import write_ct_bundle, write_ct_upload

TOKEN = "a-long-enough-test-token"
DECLARED_BYTES = 200 << 20
BOUNDARY = "cadxtestboundary"


@pytest.fixture
def models(tmp_path: Path) -> dict:
    write_ct_bundle(tmp_path / "models" / "pancreas_ct.cadx")
    return load_model_folder(tmp_path / "models")


class BodyMeter:
    """A 200 MiB multipart upload, produced chunk by chunk, that counts what was pulled."""

    def __init__(self, chunk_bytes: int = 1 << 20, stall_after: int | None = None) -> None:
        self.pulled, self.chunk_bytes, self.stall_after = 0, chunk_bytes, stall_after

    async def chunks(self):
        head = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"files\"; "
                "filename=\"ct.nii.gz\"\r\n\r\n").encode()
        yield head
        self.pulled += len(head)
        while self.pulled < DECLARED_BYTES:
            if self.stall_after is not None and self.pulled >= self.stall_after:
                await asyncio.sleep(30)  # the client stops sending
            chunk = b"\0" * min(self.chunk_bytes, DECLARED_BYTES - self.pulled)
            yield chunk
            self.pulled += len(chunk)


def _post(app, meter: BodyMeter, url: str = "/v1/diagnose?model=pancreas_ct",
          headers: dict[str, str] | None = None) -> httpx.Response:
    """POST the meter's body to `app` through httpx's ASGI transport, which hands the body
    to the app only as the app asks for it."""
    async def scenario() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.post(url, content=meter.chunks(), headers={
                "Content-Length": str(DECLARED_BYTES),
                "Content-Type": f"multipart/form-data; boundary={BOUNDARY}", **(headers or {})})

    return asyncio.run(scenario())


@pytest.mark.parametrize(("case", "status", "words"), [
    ("no_token", 401, ["bearer token"]),
    ("wrong_token", 401, ["bearer token"]),
    ("unknown_model", 404, ["unknown model", "pancreas_ct"]),
    ("too_large", 413, ["200.0 MiB", "limit"]),
])
def test_refused_on_the_headers_without_reading_the_upload(models, tmp_path, monkeypatch,
                                                            case, status, words):
    spool = tmp_path / "spool"
    spool.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool))  # where an upload would be spooled
    app = create_app(models, token=TOKEN)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    url = "/v1/diagnose?model=pancreas_ct"
    if case == "no_token":
        headers = {}
    elif case == "wrong_token":
        headers = {"Authorization": "Bearer not-the-right-token"}
    elif case == "unknown_model":
        url = "/v1/diagnose?model=lung_ct"
    elif case == "too_large":
        app = create_app(models, token=TOKEN, limits=app_module.UploadLimits(
            max_request_bytes=100 << 20))
    meter = BodyMeter()
    response = _post(app, meter, url, headers)
    assert response.status_code == status, response.text
    assert all(word in response.json()["error"] for word in words)
    assert response.headers["connection"] == "close"  # the server need not drain the upload
    assert meter.pulled == 0
    assert list(spool.iterdir()) == []


def test_a_full_pool_refuses_the_next_upload_before_reading_it(models, tmp_path, monkeypatch):
    release, started = threading.Event(), threading.Event()

    def slow_job(request, limits):
        started.set()
        release.wait(10)
        return {"done": True}

    monkeypatch.setattr(app_module, "run_diagnosis", slow_job)
    app = create_app(models, workers=1, queue_size=0)
    image, _ = write_ct_upload(tmp_path / "upload")
    meter = BodyMeter()

    async def scenario() -> tuple[httpx.Response, httpx.Response, dict]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            first = asyncio.create_task(client.post(
                "/v1/diagnose?model=pancreas_ct",
                files=[("files", (image.name, image.read_bytes()))]))
            while not started.is_set():
                await asyncio.sleep(0.01)
            second = await client.post(
                "/v1/diagnose?model=pancreas_ct", content=meter.chunks(),
                headers={"Content-Length": str(DECLARED_BYTES),
                         "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})
            health = (await client.get("/healthz")).json()
            release.set()
            return await first, second, health

    first, second, health = asyncio.run(scenario())
    assert first.status_code == 200 and health["jobs"] == 1
    assert second.status_code == 503 and "busy" in second.json()["error"]
    assert int(second.headers["retry-after"]) >= 1
    assert meter.pulled == 0


def test_an_admitted_upload_is_read_and_its_slot_released(models, tmp_path):
    image, mask = write_ct_upload(tmp_path / "upload")
    client = TestClient(create_app(models, token=TOKEN, workers=1, queue_size=0))
    auth = {"Authorization": f"Bearer {TOKEN}"}
    for _ in range(2):  # the second finds the first's slot free again
        response = client.post("/v1/diagnose?model=pancreas_ct", headers=auth, files=[
            ("files", (image.name, image.read_bytes())),
            ("organ_mask", (mask.name, mask.read_bytes()))])
        assert response.status_code == 200, response.text
        assert response.json()["model"]["id"] == "pancreas_ct"
    assert client.get("/healthz").json()["jobs"] == 0
    clash = client.post("/v1/diagnose?model=pancreas_ct", headers=auth,
                        data={"model": "other"}, files=[("files", ("ct.nii.gz", b"x"))])
    assert clash.status_code == 422 and "differ" in clash.json()["error"]


def test_a_stalled_upload_is_cut_off_with_408(models):
    app = create_app(models, body_timeout_s=0.3)
    meter = BodyMeter(chunk_bytes=64 << 10, stall_after=256 << 10)
    response = _post(app, meter)
    assert response.status_code == 408, response.text
    assert "stalled" in response.json()["error"]
    assert response.headers["connection"] == "close"
    assert app.state.pool.admitted == 0  # the slot was given back


def test_an_unexpected_error_is_a_json_500_with_a_request_id(models, tmp_path, monkeypatch,
                                                              caplog):
    def crash(request, limits):
        raise OverflowError("cannot convert float infinity to integer in /srv/cadx/secret.py")

    monkeypatch.setattr(app_module, "run_diagnosis", crash)
    image, _ = write_ct_upload(tmp_path / "upload")
    client = TestClient(create_app(models), raise_server_exceptions=False)
    with caplog.at_level(logging.ERROR, logger="cadx.serve"):
        response = client.post("/v1/diagnose?model=pancreas_ct",
                               files=[("files", (image.name, image.read_bytes()))])
    assert response.status_code == 500
    body = response.json()
    assert body == {"error": "internal error", "request_id": response.headers["x-request-id"]}
    assert "secret" not in response.text and "Traceback" not in response.text
    logged = "\n".join(r.getMessage() + str(r.exc_info) for r in caplog.records)
    assert body["request_id"] in logged and "OverflowError" in logged


@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", "/v1/diagnose", 405),
    ("GET", "/no/such/page", 404),
    ("DELETE", "/v1/models", 405),
])
def test_router_errors_are_json(models, method, path, status):
    response = TestClient(create_app(models)).request(method, path)
    assert response.status_code == status
    assert set(response.json()) == {"error"}


def test_malformed_body_and_invalid_host_are_json(models):
    client = TestClient(create_app(models, allowed_hosts=["localhost", "testserver"]))
    broken = client.post("/v1/diagnose?model=pancreas_ct", content=b"--x\r\ngarbage",
                         headers={"Content-Type": "multipart/form-data; boundary=x"})
    assert broken.status_code in (400, 422) and set(broken.json()) == {"error"}
    host = client.get("/healthz", headers={"Host": "evil.example"})
    assert host.status_code == 400 and "host" in host.json()["error"]
    assert client.get("/healthz", headers={"Host": "localhost:8000"}).status_code == 200
