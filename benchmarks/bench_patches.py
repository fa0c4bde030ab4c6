"""Patch extraction (vectorised vs a naive per-patch loop) and patch-CNN inference throughput.

Run: python benchmarks/bench_patches.py [--repeats 3]
Everything is measured in this one process and printed as ratios, since absolute times on a
shared 2-core machine are noisy.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from cadx.case import Case
from cadx.config import PatchConfig
from cadx.models.patch_cnn import PatchCNN
from cadx.patches.grid import extract_patches, grid_positions
from cadx.train.fit import INFERENCE_BATCH, predict_patch_probabilities


def naive_extract(case: Case, config: PatchConfig) -> tuple[np.ndarray, np.ndarray]:
    """The obvious loop: visit every window, test the masks, copy the patch."""
    size = config.size_px
    ys = grid_positions(case.image.shape[1], size, config.stride_px)
    xs = grid_positions(case.image.shape[2], size, config.stride_px)
    patches, labels = [], []
    for z in range(case.image.shape[0]):
        for y in ys:
            for x in xs:
                window = (z, slice(y, y + size), slice(x, x + size))
                tumour = case.tumour_mask[window].any()
                if case.organ_mask[window].any() or tumour:
                    patches.append(case.image[window].copy())
                    labels.append(int(tumour))
    return np.stack(patches), np.array(labels)


def best_of(repeats: int, func) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return min(times)


def phantom_volume(shape=(40, 512, 512)) -> Case:
    """A 512x512x40 volume with a pancreas-sized organ band and a tumour."""
    rng = np.random.default_rng(0)
    image = rng.random(shape, dtype=np.float32)
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    organ = (((y - 280) / 40.0) ** 2 + ((x - 256) / 150.0) ** 2 <= 1) & (z >= 8) & (z < 32)
    tumour = organ & ((y - 280) ** 2 + (x - 300) ** 2 <= 20**2) & (z >= 14) & (z < 20)
    return Case("bench", image, (5.0, 0.8, 0.8), organ, tumour)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    case = phantom_volume()
    print(f"volume {case.image.shape} (z, y, x), torch threads {torch.get_num_threads()}")
    print("\n1. patch extraction, 50 px window")
    for stride in (50, 25):
        config = PatchConfig(size_px=50, stride_px=stride)
        vector = extract_patches(case, config)
        naive_patches, naive_labels = naive_extract(case, config)
        assert np.array_equal(vector.patches, naive_patches)
        assert np.array_equal(vector.labels, naive_labels)
        t_vec = best_of(args.repeats, lambda config=config: extract_patches(case, config))
        t_naive = best_of(args.repeats, lambda config=config: naive_extract(case, config))
        print(f"  stride {stride:>2}: {len(vector):>5} patches; vectorised {t_vec * 1e3:7.1f} ms, "
              f"naive loop {t_naive * 1e3:7.1f} ms -> vectorised is {t_naive / t_vec:5.1f}x "
              "faster (same patches and labels)")

    print("\n2. patch CNN inference (Table 1 network + BatchNorm, the default; 50x50 patches)")
    torch.manual_seed(0)
    model = PatchCNN(50).eval()
    patches = np.random.default_rng(1).random((2048, 50, 50), dtype=np.float32)
    nchw = torch.from_numpy(patches).unsqueeze(1)
    rates = {}
    with torch.inference_mode():
        model(nchw[:64])  # warm-up
        for batch in (1024, 1):
            count = len(nchw) if batch > 1 else 128
            seconds = best_of(args.repeats, lambda b=batch, n=count: [
                model(nchw[i:i + b]) for i in range(0, n, b)])
            rates[f"NCHW, batch {batch}"] = count / seconds
    predict_patch_probabilities(model, patches[:256])  # warm-up (converts to channels_last)
    seconds = best_of(args.repeats, lambda: predict_patch_probabilities(model, patches))
    rates[f"cadx default (channels_last, batch {INFERENCE_BATCH})"] = len(patches) / seconds
    baseline = rates["NCHW, batch 1024"]
    convs = [m for m in model.features if isinstance(m, torch.nn.Conv2d)]
    sides = (50, 50, 25, 25, 12, 12)
    flops = sum(2 * conv.weight.numel() * side * side for conv, side in zip(convs, sides,
                                                                             strict=True))
    a = torch.rand(2048, 2048)
    torch.matmul(a, a)
    peak = 2 * 2048**3 / best_of(args.repeats, lambda: torch.matmul(a, a))
    print(f"  conv FLOPs per patch {flops / 1e6:.0f} M; float32 2048x2048 matmul reaches "
          f"{peak / 1e9:.0f} GFLOP/s here")
    for name, rate in rates.items():
        print(f"  {name:<40} {rate:7.0f} patches/s  {rate / baseline:5.2f}x the NCHW-1024 "
              f"baseline, {rate * flops / peak:4.2f}x matmul peak")
    print("  (peak ratio counts direct-convolution FLOPs; above 1 means oneDNN's convolution "
          "does fewer\n   multiplications than direct convolution, e.g. Winograd)")


if __name__ == "__main__":
    main()
