"""Service hardening (issue 15, items 9 and 10): in tokenless loopback mode only this machine's
names are accepted in the Host header (DNS rebinding), and request folders left behind by a
killed service are removed at start-up."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from cadx.serve.app import create_app, serve
from cadx.serve.auth import loopback_host_names
from cadx.serve.jobs import clear_stale_workdirs
from cadx.serve.registry import load_model_folder
from tests.serve_support import write_ct_bundle

TOKEN = "a-long-enough-test-token"


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    write_ct_bundle(tmp_path / "models" / "pancreas_ct.cadx")
    return tmp_path / "models"


def _served_app(models_dir: Path, monkeypatch, **kwargs):
    """The app `serve` would run (uvicorn.run is replaced by a capture)."""
    import uvicorn

    captured = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **_: captured.setdefault("app", app))
    serve(models_dir, **kwargs)
    return captured["app"]


@pytest.mark.parametrize("host", ["localhost:8000", "127.0.0.1:8000", "[::1]:8000", "127.0.0.1"])
def test_tokenless_loopback_accepts_this_machines_names(models_dir, monkeypatch, host):
    monkeypatch.delenv("CADX_SERVE_TOKEN", raising=False)
    client = TestClient(_served_app(models_dir, monkeypatch))
    response = client.get("/v1/models", headers={"Host": host})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "127.0.0.1.evil.example",
                                  "localhost.evil.example", ""])
def test_tokenless_loopback_refuses_other_host_names(models_dir, monkeypatch, host):
    monkeypatch.delenv("CADX_SERVE_TOKEN", raising=False)
    client = TestClient(_served_app(models_dir, monkeypatch))
    for method, path in (("GET", "/v1/models"), ("GET", "/healthz"), ("POST", "/v1/diagnose")):
        response = client.request(method, path, headers={"Host": host})
        assert response.status_code == 400, (method, path, host)


def test_with_a_token_any_host_name_is_served(models_dir, monkeypatch):
    monkeypatch.setenv("CADX_SERVE_TOKEN", TOKEN)
    client = TestClient(_served_app(models_dir, monkeypatch, host="0.0.0.0"))
    response = client.get("/v1/models", headers={"Host": "cadx.hospital.example",
                                                 "Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200


def test_loopback_names_include_the_bind_address():
    assert loopback_host_names("127.0.0.2")[-1] == "127.0.0.2"
    assert loopback_host_names("::1") == ["localhost", "127.0.0.1", "[::1]"]


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_folders_of_stopped_services_are_removed_at_start_up(models_dir, tmp_path,
                                                              monkeypatch):
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    dead = root / f"cadx-serve-{_dead_pid()}-abc123"
    (dead / "0").mkdir(parents=True)
    (dead / "0" / "ct.nii.gz").write_bytes(b"x" * 1000)
    mine = root / f"cadx-serve-{os.getpid()}-def456"  # a running service's request
    mine.mkdir()
    old_unnamed, new_unnamed = root / "cadx-serve-k2j4h5g6", root / "cadx-serve-q8w7e6r5"
    old_unnamed.mkdir()
    new_unnamed.mkdir()
    two_hours_ago = time.time() - 7200
    os.utime(old_unnamed, (two_hours_ago, two_hours_ago))
    other = root / "unrelated-folder"
    other.mkdir()
    with TestClient(create_app(load_model_folder(models_dir))):  # runs the start-up
        pass
    assert sorted(p.name for p in root.iterdir()) == sorted(
        [mine.name, new_unnamed.name, other.name])


def test_clear_stale_workdirs_ignores_files_and_links(tmp_path):
    (tmp_path / f"cadx-serve-{_dead_pid()}-file").write_text("not a folder")
    target = tmp_path / "target"
    target.mkdir()
    (tmp_path / f"cadx-serve-{_dead_pid()}-link").symlink_to(target)
    assert clear_stale_workdirs(tmp_path) == 0
    assert target.exists() and len(list(tmp_path.iterdir())) == 3


def test_request_folders_carry_the_service_pid(models_dir, tmp_path, monkeypatch):
    seen = []
    real = tempfile.TemporaryDirectory

    def spy(*args, **kwargs):
        seen.append(kwargs.get("prefix"))
        return real(*args, **kwargs)

    monkeypatch.setattr(tempfile, "TemporaryDirectory", spy)
    client = TestClient(create_app(load_model_folder(models_dir)))
    client.post("/v1/diagnose", data={"model": "pancreas_ct"},
                files=[("files", ("ct.nii.gz", b"not a volume"))])
    assert seen == [f"cadx-serve-{os.getpid()}-"]
