"""Hostile inputs against a live `cadx serve` (issue 15): what each costs the service.

Run: python benchmarks/attack_service.py [--seconds 3] [--slowloris 200] [--timeout 2]

Starts `cadx serve` (token required, `--header-timeout`/`--body-timeout` = --timeout, other
settings the defaults) on 127.0.0.1 with a small CT bundle, then replays, one after another:

  bomb           a 1024^3-voxel int8 .nii.gz (about 1 MB of gzip) as image and organ mask
  huge-spacing   a small volume whose z spacing is 50,000 mm
  no-token-200M  200 MiB uploads without a token, sent as fast as loopback allows
(each of these three by parallel clients, again and again for --seconds), then
  slowloris      --slowloris connections: half dribble their headers a byte at a time, half
                 (with the token) declare a 1 MiB upload and send 1 KiB of it

For each it prints the answers (status: count), the slowest time to refusal (from the first
byte sent to the answer; for slowloris, until the last connection was cut off), the server's
peak RSS above its idle RSS and its open file descriptors, and GET /healthz latency (fresh
connection each, every 20 ms) during the attack. Nothing leaves the machine; about 30 s in all.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import http.client
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import psutil
from bench_service import Server, serving, write_volume

TOKEN = "attack-benchmark-token-0123456789"
MODEL = "ct_toy"


class Watcher:
    """Samples the server's RSS and open files, and probes /healthz, in background threads;
    `phase()` returns what was seen since the last call."""

    def __init__(self, pid: int, port: int) -> None:
        self.process, self.port = psutil.Process(pid), port
        self.rss: list[int] = []
        self.fds: list[int] = []
        self.health_s: list[float] = []
        self.health_fail = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._sample, daemon=True),
                         threading.Thread(target=self._probe, daemon=True)]
        for thread in self._threads:
            thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.rss.append(self.process.memory_info().rss)
            self.fds.append(self.process.num_fds())

    def _probe(self) -> None:
        while not self._stop.wait(0.02):
            started = time.perf_counter()
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            try:
                connection.request("GET", "/healthz", headers={"Connection": "close"})
                status = connection.getresponse().status
            except OSError:
                status = 0
            finally:
                connection.close()
            if status == 200:
                self.health_s.append(time.perf_counter() - started)
            else:
                self.health_fail += 1

    def phase(self) -> dict[str, float]:
        rss, fds, health, fails = self.rss, self.fds, self.health_s, self.health_fail
        self.rss, self.fds, self.health_s, self.health_fail = [], [], [], 0
        latency_ms = np.array(health or [np.nan]) * 1000
        return {"rss_peak_mb": max(rss, default=0) / 2**20, "fds_peak": max(fds, default=0),
                "health_p50_ms": float(np.percentile(latency_ms, 50)),
                "health_p95_ms": float(np.percentile(latency_ms, 95)),
                "health_n": len(health), "health_failed": fails}

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()


def write_bundle(path: Path) -> Path:
    """A 16-px patch CNN bundle with random weights (the cost of refusals does not depend on
    the model)."""
    import torch

    from cadx.bundle import PatchModelBundle, save_bundle
    from cadx.config import ModelConfig, PatchConfig, PipelineConfig
    from cadx.decide.roc import OperatingPoint
    from cadx.models.patch_cnn import PatchCNN

    torch.manual_seed(0)
    config = PipelineConfig(patches=PatchConfig(size_px=16, stride_px=8),
                            model=ModelConfig(batch_norm=False))
    point = (0.9, 0.8, 0.7, 0.95, (0.0, 1.0), (0.0, 1.0))
    bundle = PatchModelBundle(config=config, state_dict=PatchCNN(16, False).state_dict(),
                              patch_operating_point=OperatingPoint(0.4, *point),
                              patient_operating_point=OperatingPoint(0.2, *point))
    return save_bundle(bundle, path)


def write_bomb(path: Path, side: int = 1024) -> Path:
    """A real `side`^3 int8 NIfTI of zeros, gzipped: about 1 MB on disk, 1 GiB decoded."""
    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_data_shape((side, side, side))
    header.set_data_dtype(np.int8)
    header.set_zooms((1.0, 1.0, 1.0))
    header.set_qform(np.eye(4), code=1)
    header.set_sform(np.eye(4), code=1)
    header["vox_offset"] = 352
    zeros = bytes(64 << 20)
    with gzip.open(path, "wb", compresslevel=6) as out:
        out.write(header.binaryblock + b"\0\0\0\0")
        for _ in range(side**3 // len(zeros)):
            out.write(zeros)
    return path


async def repeat_case(port: int, image: Path, mask: Path, clients: int, seconds: float
                      ) -> tuple[Counter, float, str]:
    """`clients` parallel clients posting `image` + `mask` again and again for `seconds`;
    the answers, the slowest answer's time and the first answer's text."""
    files = [("files", (image.name, image.read_bytes())),
             ("organ_mask", (mask.name, mask.read_bytes()))]
    statuses: Counter = Counter()
    slowest, first_text = 0.0, ""
    deadline = time.monotonic() + seconds

    async def client(http_client: httpx.AsyncClient) -> None:
        nonlocal slowest, first_text
        while time.monotonic() < deadline:
            started = time.perf_counter()
            response = await http_client.post(f"/v1/diagnose?model={MODEL}", files=files)
            slowest = max(slowest, time.perf_counter() - started)
            statuses[response.status_code] += 1
            first_text = first_text or response.text

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=600,
                                 headers={"Authorization": f"Bearer {TOKEN}"}) as http_client:
        await asyncio.gather(*(client(http_client) for _ in range(clients)))
    return statuses, slowest, first_text


async def _status_of(reader: asyncio.StreamReader) -> int:
    line = await reader.readline()
    return int(line.split()[1]) if line.startswith(b"HTTP/") else 0


async def big_upload_without_token(port: int, declared_bytes: int) -> tuple[int, float, int]:
    """Headers of a `declared_bytes` upload, then zeros as fast as the socket takes them,
    until the server answers; (status, seconds to the answer, bytes sent)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.perf_counter()
    writer.write((f"POST /v1/diagnose?model={MODEL} HTTP/1.1\r\nHost: localhost\r\n"
                  "Content-Type: multipart/form-data; boundary=x\r\n"
                  f"Content-Length: {declared_bytes}\r\n\r\n").encode())
    answer = asyncio.create_task(_status_of(reader))
    sent, chunk = 0, bytes(1 << 20)
    try:
        while sent < declared_bytes and not answer.done():
            writer.write(chunk)
            await writer.drain()
            sent += len(chunk)
    except (ConnectionError, OSError):
        pass
    status = await answer
    elapsed = time.perf_counter() - started
    writer.close()
    return status, elapsed, sent


async def slowloris(port: int, n: int) -> tuple[Counter, float]:
    """`n` slow connections; their answers and when the last one ended."""
    started = time.perf_counter()

    async def dribble_headers() -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        answer = asyncio.create_task(_status_of(reader))
        request = b"GET /v1/models HTTP/1.1\r\nHost: localhost\r\nX-Padding: " + b"a" * 200
        try:
            for byte in request:
                if answer.done():
                    break
                writer.write(bytes([byte]))
                await asyncio.sleep(0.2)
        except (ConnectionError, OSError):
            pass
        status = await answer
        writer.close()
        return status

    async def stall_body() -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write((f"POST /v1/diagnose?model={MODEL} HTTP/1.1\r\nHost: localhost\r\n"
                      f"Authorization: Bearer {TOKEN}\r\n"
                      "Content-Type: multipart/form-data; boundary=x\r\n"
                      f"Content-Length: {1 << 20}\r\n\r\n--x\r\n"
                      "Content-Disposition: form-data; name=\"files\"; "
                      "filename=\"ct.nii.gz\"\r\n\r\n").encode() + bytes(1024))
        status = await _status_of(reader)
        writer.close()
        return status

    tasks = [dribble_headers() if k % 2 == 0 else stall_body() for k in range(n)]
    statuses = await asyncio.gather(*(asyncio.wait_for(t, 60) for t in tasks),
                                    return_exceptions=True)
    counts = Counter(s if isinstance(s, int) else type(s).__name__ for s in statuses)
    return counts, time.perf_counter() - started


def report(name: str, statuses: object, refusal_s: float, seen: dict, idle_rss_mb: float,
           note: str = "") -> None:
    print(f"{name:<14} {str(statuses):<26} {refusal_s:>8.2f} s "
          f"{seen['rss_peak_mb'] - idle_rss_mb:>+9.1f} MB {seen['fds_peak']:>5} "
          f"{seen['health_p50_ms']:>7.1f} {seen['health_p95_ms']:>7.1f} ms "
          f"{seen['health_n']:>4} {seen['health_failed']:>4}  {note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slowloris", type=int, default=200, help="slow connections")
    parser.add_argument("--seconds", type=float, default=3.0,
                        help="how long each of the first three cases is repeated")
    parser.add_argument("--timeout", type=float, default=2.0,
                        help="the service's --header-timeout and --body-timeout, s")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cadx-attack-") as tmp:
        folder = Path(tmp)
        write_bundle(folder / "models" / f"{MODEL}.cadx")
        bomb = write_bomb(folder / "bomb.nii.gz")
        rng = np.random.default_rng(0)
        small = rng.normal(0, 50, (8, 48, 48)).astype(np.float32)
        organ = np.zeros((8, 48, 48), np.uint8)
        organ[2:6, 10:38, 10:38] = 1
        far = write_volume(folder / "far.nii.gz", small, (50_000.0, 1.0, 1.0))
        far_mask = write_volume(folder / "far_mask.nii.gz", organ, (50_000.0, 1.0, 1.0))
        timeout = str(args.timeout)
        with serving(folder / "models", "--header-timeout", timeout, "--body-timeout", timeout,
                     token=TOKEN) as server:
            attack(server, args, bomb, far, far_mask)


def attack(server: Server, args: argparse.Namespace, bomb: Path, far: Path,
           far_mask: Path) -> None:
    """Each case in turn against `server`, with a line of what it cost."""
    port = server.port
    watcher = Watcher(server.process.pid, port)
    try:
        time.sleep(1.0)
        idle = watcher.phase()
        idle_rss = idle["rss_peak_mb"]
        print(f"cadx serve pid {server.process.pid}: idle RSS {idle_rss:.0f} MB, "
              f"/healthz p50 {idle['health_p50_ms']:.1f} ms, p95 "
              f"{idle['health_p95_ms']:.1f} ms; bomb {bomb.stat().st_size / 2**20:.1f} MB "
              f"on disk; timeouts {args.timeout:g} s")
        print(f"{'case':<14} {'answers':<26} {'refusal':>10} {'RSS growth':>12} "
              f"{'fds':>5} {'/healthz p50':>7} {'p95':>10} {'n':>4} {'fail':>4}")
        for name, image, mask in (("bomb", bomb, bomb), ("huge-spacing", far, far_mask)):
            counts, slowest, text = asyncio.run(repeat_case(port, image, mask, 2,
                                                            args.seconds))
            report(name, dict(counts), slowest, watcher.phase(), idle_rss, text[:64])

        async def six_big() -> list[tuple[int, float, int]]:
            results, deadline = [], time.monotonic() + args.seconds

            async def client() -> None:
                while time.monotonic() < deadline:
                    results.append(await big_upload_without_token(port, 200 << 20))

            await asyncio.gather(*(client() for _ in range(6)))
            return results

        results = asyncio.run(six_big())
        sent_mb = max(sent for *_, sent in results) / 2**20
        report("no-token-200M", dict(Counter(s for s, *_ in results)),
               max(t for _, t, _ in results), watcher.phase(), idle_rss,
               f"6 clients; at most {sent_mb:.0f} of 200 MiB sent before the 401")
        counts, elapsed = asyncio.run(slowloris(port, args.slowloris))
        report("slowloris", dict(counts), elapsed, watcher.phase(), idle_rss,
               f"{args.slowloris} connections; last one cut off at {elapsed:.1f} s")
    finally:
        watcher.stop()


if __name__ == "__main__":
    main()
