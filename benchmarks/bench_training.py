"""Training throughput of the patch CNN (patches/s) at batch 256 (cadx's default) and 2560 (the
seed's), as a fraction of this machine's peak.

Run: python benchmarks/bench_training.py [--steps 3] [--ddp 2]
One training step = forward + backward + Adam update in channels_last, the loop of
cadx.train.fit; its FLOPs are counted by torch's FlopCounterMode. Peak as in
bench_inference.py (the faster of torch.matmul and the same GEMM as a oneDNN 1x1 convolution).
With --ddp N the batch-256 step is also timed as N DistributedDataParallel processes (gloo, one
thread each, 256 / N patches each), spawned from this run.
"""

from __future__ import annotations

import argparse
import os
import socket
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from bench_inference import matmul_peak_flops
from torch.utils.flop_counter import FlopCounterMode

from cadx.models.patch_cnn import PatchCNN
from cadx.train.loss import WeightedBCELoss


def step_function(batch_size: int):
    """A closure running one training step on a fixed random batch; and its FLOPs."""
    torch.manual_seed(0)
    model = PatchCNN(50).to(memory_format=torch.channels_last).train()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = WeightedBCELoss(n_positive=1, n_negative=9)
    x = torch.rand(batch_size, 1, 50, 50).contiguous(memory_format=torch.channels_last)
    y = (torch.rand(batch_size) < 0.1).float()

    def step() -> None:
        optimiser.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        optimiser.step()

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return step, float(counter.get_total_flops())


def _ddp_worker(rank: int, world: int, port: int, batch_size: int, steps: int,
                results: dict) -> None:
    """One DDP rank: time `steps` steps on its batch_size / world patches; rank 0 reports."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = torch.nn.parallel.DistributedDataParallel(
        PatchCNN(50).to(memory_format=torch.channels_last).train())
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = WeightedBCELoss(n_positive=1, n_negative=9)
    local = batch_size // world
    x = torch.rand(local, 1, 50, 50).contiguous(memory_format=torch.channels_last)
    y = (torch.rand(local) < 0.1).float()
    times = []
    for _ in range(steps + 1):  # the first is a warm-up
        dist.barrier()
        start = time.perf_counter()
        optimiser.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        optimiser.step()
        times.append(time.perf_counter() - start)
    if rank == 0:
        results["seconds"] = min(times[1:])
    dist.destroy_process_group()


def ddp_rate(world: int, batch_size: int, steps: int) -> float:
    """Global patches/s of `world` DDP processes on one global batch of `batch_size`."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_ddp_worker, args=(world, port, batch_size, steps, results), nprocs=world)
        return batch_size / results["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per batch size")
    parser.add_argument("--ddp", type=int, default=0, metavar="N",
                        help="also time batch 256 as N DDP processes")
    args = parser.parse_args()
    mkl_peak, onednn_peak = matmul_peak_flops(3)
    peak = max(mkl_peak, onednn_peak)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; GEMM peak "
          f"{peak / 1e9:.0f} GFLOP/s (torch.matmul {mkl_peak / 1e9:.0f}, oneDNN "
          f"{onednn_peak / 1e9:.0f})")
    rates = {}
    for batch_size in (256, 2560):
        step, flops = step_function(batch_size)
        step()  # warm-up
        times = []
        for _ in range(args.steps):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        seconds = min(times)
        rates[batch_size] = batch_size / seconds
        print(f"batch {batch_size:>4}: {rates[batch_size]:6.0f} patches/s (best of "
              f"{args.steps} steps, {seconds:.2f} s/step); {flops / batch_size / 1e6:.0f} "
              f"MFLOP per patch per step -> {flops / seconds / peak:.0%} of peak")
    print(f"batch 2560 / batch 256 throughput: {rates[2560] / rates[256]:.2f}x")
    if args.ddp:
        rate = ddp_rate(args.ddp, 256, args.steps)
        print(f"batch  256 as {args.ddp} DDP processes x 1 thread: {rate:6.0f} patches/s -> "
              f"{rate / rates[256]:.2f}x one process with {torch.get_num_threads()} threads")


if __name__ == "__main__":
    main()
