"""Loopback load test of `cadx serve`: requests/s and latency percentiles of POST /v1/diagnose.

Run: python benchmarks/bench_service.py [--requests 40] [--concurrency 4] [--workers 1]
                                        [--queue 8] [--max-seconds 180]
     [--model M.cadx --image ct.nii.gz --mask organ.nii.gz]   # your own bundle and case

Without --model it writes, in a temporary folder, a CT patch bundle of the default
architecture (Table-1 CNN + BatchNorm, 50 px patches; random weights: the cost of inference does
not depend on them) and one synthetic abdominal CT phantom (40 x 384 x 384 voxels) with its
organ mask. The service runs as a separate `cadx serve` process on 127.0.0.1; the client keeps
`--concurrency` requests in flight until `--requests` have been sent or `--max-seconds` have
passed, and polls GET /healthz meanwhile to show whether the event loop stays responsive.
Nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np


def write_volume(path: Path, array: np.ndarray, spacing_zyx_mm: tuple[float, ...]) -> Path:
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(float(v) for v in spacing_zyx_mm[::-1]))
    sitk.WriteImage(image, str(path))
    return path


def write_default_inputs(folder: Path) -> tuple[Path, Path, Path]:
    """A default-architecture CT bundle and one phantom case with its organ mask."""
    import torch

    from cadx.bundle import PatchModelBundle, save_bundle
    from cadx.config import PipelineConfig
    from cadx.decide.roc import OperatingPoint
    from cadx.models.patch_cnn import PatchCNN
    from cadx.synth.ct_phantom import make_ct_phantom

    torch.manual_seed(0)
    config = PipelineConfig()
    network = PatchCNN(config.patches.size_px, config.model.batch_norm)
    point = (0.9, 0.8, 0.7, 0.95, (0.0, 1.0), (0.0, 1.0))
    bundle = PatchModelBundle(config=config, state_dict=network.state_dict(),
                              patch_operating_point=OperatingPoint(0.5, *point),
                              patient_operating_point=OperatingPoint(0.2, *point))
    model = save_bundle(bundle, folder / "models" / "ct_default.cadx")
    phantom = make_ct_phantom(np.random.default_rng(0), 20.0)
    image = write_volume(folder / "ct.nii.gz", phantom.image_hu, phantom.spacing_zyx_mm)
    mask = write_volume(folder / "ct_mask.nii.gz", (phantom.label > 0).astype(np.uint8),
                        phantom.spacing_zyx_mm)
    return model, image, mask


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    """A `cadx serve` process answering on 127.0.0.1:`port`."""

    process: subprocess.Popen
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextmanager
def serving(models_dir: Path, *options: str, token: str = "",
            start_timeout_s: float = 90.0) -> Iterator[Server]:
    """Run `cadx serve --models models_dir --port <free port> *options` (CADX_SERVE_TOKEN =
    `token`, "" for none) as a separate process, yielded once GET /healthz answers 200, and
    stopped on leaving; SystemExit if it exits or does not answer within `start_timeout_s`."""
    port = free_port()
    command = [sys.executable, "-m", "cadx.cli", "serve", "--models", str(models_dir),
               "--port", str(port), *options]
    process = subprocess.Popen(command, env={**os.environ, "CADX_SERVE_TOKEN": token},
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_until_answering(process, port, start_timeout_s)
        yield Server(process, port)
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_until_answering(process: subprocess.Popen, port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"cadx serve exited: {process.stderr.read()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    raise SystemExit(f"cadx serve did not start within {timeout_s:g} s")


async def load(base_url: str, model_id: str, files: list[tuple[str, tuple[str, bytes]]],
               n_requests: int, concurrency: int, max_seconds: float) -> dict[str, object]:
    latencies: list[float] = []
    statuses: list[int] = []
    health: list[float] = []
    sent = 0
    deadline = time.monotonic() + max_seconds
    done = asyncio.Event()

    async with httpx.AsyncClient(base_url=base_url, timeout=max_seconds) as client:
        async def worker() -> None:
            nonlocal sent
            while sent < n_requests and time.monotonic() < deadline:
                sent += 1
                started = time.perf_counter()
                response = await client.post("/v1/diagnose", data={"model": model_id},
                                             files=files)
                statuses.append(response.status_code)
                if response.status_code == 200:
                    latencies.append(time.perf_counter() - started)

        async def prober() -> None:
            while not done.is_set():
                started = time.perf_counter()
                await client.get("/healthz")
                health.append(time.perf_counter() - started)
                await asyncio.sleep(0.2)

        probe = asyncio.create_task(prober())
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
        done.set()
        await probe
    return {"latencies": np.array(latencies), "statuses": statuses, "wall_s": wall,
            "health": np.array(health)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--workers", type=int, default=1, help="cadx serve --workers")
    parser.add_argument("--queue", type=int, default=8, help="cadx serve --queue")
    parser.add_argument("--max-seconds", type=float, default=180.0)
    parser.add_argument("--model", type=Path, help="a CT patch bundle (.cadx)")
    parser.add_argument("--image", type=Path, help="CT volume for --model")
    parser.add_argument("--mask", type=Path, help="organ mask for --image")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="cadx-bench-") as tmp:
        folder = Path(tmp)
        if args.model is None:
            model, image, mask = write_default_inputs(folder)
        else:
            (folder / "models").mkdir()
            model = folder / "models" / args.model.name
            model.symlink_to(args.model.resolve())
            image, mask = args.image, args.mask
        files = [("files", (image.name, image.read_bytes())),
                 ("organ_mask", (mask.name, mask.read_bytes()))]
        with serving(model.parent, "--workers", str(args.workers),
                     "--queue", str(args.queue)) as server:
            result = asyncio.run(load(server.url, model.stem, files,
                                      args.requests, args.concurrency, args.max_seconds))

    latencies, statuses = result["latencies"], result["statuses"]
    ok = len(latencies)
    busy = statuses.count(503)
    upload_mb = sum(len(f[1][1]) for f in files) / 2**20
    print(f"cadx serve on 127.0.0.1 --workers {args.workers} --queue {args.queue} "
          f"({os.cpu_count()} CPU cores on this machine)")
    print(f"upload {upload_mb:.1f} MiB per request ({image.name} + {mask.name}); "
          f"{args.concurrency} requests in flight")
    print(f"{len(statuses)} requests in {result['wall_s']:.1f} s: {ok} x 200, {busy} x 503, "
          f"{len(statuses) - ok - busy} other")
    if ok:
        p50, p95 = np.percentile(latencies, [50, 95])
        print(f"throughput {ok / result['wall_s']:.2f} requests/s; latency p50 {p50:.2f} s, "
              f"p95 {p95:.2f} s, max {latencies.max():.2f} s")
    if len(result["health"]):
        print(f"GET /healthz during the load: p95 {np.percentile(result['health'], 95) * 1e3:.0f}"
              f" ms over {len(result['health'])} probes")


if __name__ == "__main__":
    main()
