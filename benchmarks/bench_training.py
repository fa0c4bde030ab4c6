"""Training throughput of the patch CNN (patches/s) at batch 256 (cadx's default) and 2560 (the
seed's), as a fraction of this machine's peak.

Run: python benchmarks/bench_training.py [--steps 3]
One training step = forward + backward + Adam update in channels_last, the loop of
cadx.train.fit; its FLOPs are counted by torch's FlopCounterMode. Peak as in
bench_inference.py (the faster of torch.matmul and the same GEMM as a oneDNN 1x1 convolution).
All numbers come from this one process.
"""

from __future__ import annotations

import argparse
import time

import torch
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per batch size")
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


if __name__ == "__main__":
    main()
