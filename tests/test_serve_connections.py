"""Slow and stalled connections against a real `cadx serve` on loopback (issue 15, items 3
and 4), with raw sockets: an upload that stops arriving, headers that never end, a silent
connection and a declared length larger than the body are answered 408 within the (short)
timeouts; connections beyond the limit get a 503 at once; a stranger's 200 MiB upload is
refused with 401 on its headers; /healthz stays fast meanwhile."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from tests.serve_support import write_ct_bundle

TOKEN = "a-long-enough-test-token"
TIMEOUT_S = 0.6
MAX_CONNECTIONS = 12


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[int]:
    """`cadx serve` with a token, short timeouts and a small connection limit."""
    models = tmp_path_factory.mktemp("models")
    write_ct_bundle(models / "pancreas_ct.cadx")
    port = _free_port()
    env = {**os.environ, "CADX_SERVE_TOKEN": TOKEN}
    process = subprocess.Popen(
        [sys.executable, "-m", "cadx.cli", "serve", "--models", str(models), "--port",
         str(port), "--header-timeout", str(TIMEOUT_S), "--body-timeout", str(TIMEOUT_S),
         "--max-connections", str(MAX_CONNECTIONS), "--queue", "2"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while True:
        try:
            if _request(port, "GET /healthz")[0] == 200:
                break
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail("cadx serve did not start: " + process.stderr.read().decode()[-2000:])
        time.sleep(0.2)
    yield port
    process.terminate()
    process.wait(20)


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def _read_response(sock: socket.socket) -> tuple[int, dict]:
    """Status and JSON body of the response on `sock`, read until the server closes."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def _request(port: int, line: str, headers: str = "", body: bytes = b"") -> tuple[int, dict]:
    with _connect(port) as sock:
        sock.sendall(f"{line} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{headers}"
                     "\r\n".encode() + body)
        return _read_response(sock)


def _upload_head(length: int, token: str | None = TOKEN) -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return (f"POST /v1/diagnose?model=pancreas_ct HTTP/1.1\r\nHost: localhost\r\n{auth}"
            "Content-Type: multipart/form-data; boundary=x\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


def test_a_stalled_upload_is_answered_408(server):
    with _connect(server) as sock:
        started = time.monotonic()
        sock.sendall(_upload_head(100_000) + b"--x\r\n")  # then nothing more
        status, body = _read_response(sock)
        elapsed = time.monotonic() - started
    assert status == 408 and "stalled" in body["error"]
    assert TIMEOUT_S <= elapsed < TIMEOUT_S + 2


def test_headers_that_never_end_are_answered_408(server):
    for partial in (b"POST /v1/diagnose HTTP/1.1\r\nHost: local", b""):
        with _connect(server) as sock:
            started = time.monotonic()
            sock.sendall(partial)
            status, body = _read_response(sock)
            assert status == 408 and "headers" in body["error"]
            assert time.monotonic() - started < TIMEOUT_S + 2


def test_no_token_200_mib_upload_is_refused_on_its_headers(server):
    with _connect(server) as sock:
        started = time.monotonic()
        sock.sendall(_upload_head(200 << 20, token=None) + b"\0" * 65536)
        status, body = _read_response(sock)  # the server closes: the rest is never sent
        assert time.monotonic() - started < 1.0
    assert status == 401 and "token" in body["error"]


def test_connections_beyond_the_limit_get_503_and_health_stays_fast(server):
    held = []
    try:
        for _ in range(MAX_CONNECTIONS):  # slowloris: open, send a little, stall
            sock = _connect(server)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHo")
            held.append(sock)
        time.sleep(0.1)
        with _connect(server) as extra:
            extra.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
            status, body = _read_response(extra)
        assert status == 503 and "too many connections" in body["error"]
        for sock in held:  # each is cut off at its header deadline
            assert _read_response(sock)[0] == 408
    finally:
        for sock in held:
            sock.close()
    started = time.monotonic()
    assert _request(server, "GET /healthz")[0] == 200
    assert time.monotonic() - started < 0.5


def test_uvicorn_level_errors_are_json(server):
    with _connect(server) as sock:
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        status, body = _read_response(sock)
    assert status == 400 and body == {"error": "malformed HTTP request"}


def test_lingering_close_falls_back_when_the_client_is_gone():
    from cadx.serve.connections import LingeringTransport

    class GoneTransport:
        closed = False

        def is_closing(self) -> bool:
            return self.closed

        def can_write_eof(self) -> bool:
            return True

        def write_eof(self) -> None:
            raise OSError(107, "Transport endpoint is not connected")

        def close(self) -> None:
            self.closed = True

    inner = GoneTransport()
    transport = LingeringTransport(inner, loop=None)  # type: ignore[arg-type]
    transport.close()
    assert inner.closed and transport.is_closing()
