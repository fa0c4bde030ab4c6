"""Patch-CNN inference: patches/s of each execution option, as a fraction of this machine's peak.

Run: python benchmarks/bench_inference.py [--repeats 3] [--patches 2048] [--no-compile]
Peak = torch.matmul float32 FLOP/s measured here (2048x2048, all torch threads); a network's
ceiling in patches/s is peak / (its FLOPs per patch, counted by torch's FlopCounterMode). Every
number is measured in this one process; on a shared machine absolute rates are noisy, ratios
less so.
"""

from __future__ import annotations

import argparse
import io
import time
from collections.abc import Callable

import numpy as np
import torch
from timing import best_of
from torch.fx.experimental import optimization as fx_optimization
from torch.utils.flop_counter import FlopCounterMode

from cadx.models.patch_cnn import PatchCNN
from cadx.train.fit import INFERENCE_BATCH, predict_patch_probabilities


def batched(run: Callable[[torch.Tensor], object], x: torch.Tensor, batch: int) -> Callable:
    return lambda: [run(x[i:i + batch]) for i in range(0, len(x), batch)]


def matmul_peak_flops(repeats: int) -> tuple[float, float]:
    """Float32 FLOP/s of a 2048x2048 GEMM on all torch threads: torch.matmul (MKL), and the
    same GEMM as a 1x1 channels_last convolution (oneDNN, the library the CNN runs on)."""
    a = torch.rand(2048, 2048)
    mkl = 2 * 2048**3 / best_of(repeats, lambda: torch.matmul(a, a))
    image = torch.rand(1, 2048, 32, 64).contiguous(memory_format=torch.channels_last)
    weight = torch.rand(2048, 2048, 1, 1).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        onednn = 2 * 2048**3 / best_of(
            repeats, lambda: torch.nn.functional.conv2d(image, weight))
    return mkl, onednn


def fold_batch_norm(model: torch.nn.Module) -> torch.nn.Module:
    """An eval-mode copy of `model` with each BatchNorm folded into its convolution."""
    folded = fx_optimization.fuse(model.eval())
    return folded.to(memory_format=torch.channels_last)


def flops_per_patch(model: torch.nn.Module, patch_size_px: int) -> float:
    """Multiply-adds x 2 of one forward pass, from torch's FLOP counter."""
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model(torch.zeros(1, 1, patch_size_px, patch_size_px))
    return float(counter.get_total_flops())


def onnx_session(model: torch.nn.Module, example: torch.Tensor):
    """An ONNX Runtime CPU session of `model` (legacy TorchScript exporter, dynamic batch)."""
    import onnxruntime as ort

    buffer = io.BytesIO()
    torch.onnx.export(model, (example,), buffer, dynamo=False, input_names=["patches"],
                      output_names=["logits"], dynamic_axes={"patches": {0: "n"}})
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    return ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--patches", type=int, default=2048)
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = PatchCNN(50).eval()
    numpy_patches = np.random.default_rng(1).random((args.patches, 50, 50), dtype=np.float32)
    x = torch.from_numpy(numpy_patches).unsqueeze(1)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    mkl_peak, onednn_peak = matmul_peak_flops(args.repeats)
    peak = max(mkl_peak, onednn_peak)
    flops = flops_per_patch(model, 50)
    ceiling = peak / flops
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; bf16 kernels: "
          f"{torch.backends.mkldnn.is_available()}")
    print(f"2048^3 float32 GEMM: torch.matmul (MKL) {mkl_peak / 1e9:.0f} GFLOP/s, as a 1x1 conv "
          f"(oneDNN) {onednn_peak / 1e9:.0f} GFLOP/s; peak = the larger")
    print(f"peak {peak / 1e9:.0f} GFLOP/s; PatchCNN(50) {flops / 1e6:.0f} MFLOP/patch "
          f"-> ceiling {ceiling:.0f} patches/s")

    cl_model = PatchCNN(50).eval().to(memory_format=torch.channels_last)
    cl_model.load_state_dict(model.state_dict())
    folded = fold_batch_norm(cl_model)
    reference = model(x[:64]).detach()
    options: dict[str, Callable[[], object]] = {}
    with torch.inference_mode():
        options["eager NCHW, batch 1024"] = batched(model, x, 1024)
        options["eager NCHW, batch 32"] = batched(model, x, 32)
        options["eager channels_last, batch 32"] = batched(cl_model, x_cl, 32)
        options["eager channels_last, batch 256"] = batched(cl_model, x_cl, 256)
        options["channels_last + BN folded, batch 32"] = batched(folded, x_cl, 32)
        options["channels_last + BN folded, batch 64"] = batched(folded, x_cl, 64)

        def bf16(batch: torch.Tensor) -> torch.Tensor:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return folded(batch)

        options["bf16 autocast, BN folded, batch 32"] = batched(bf16, x_cl, 32)
        traced = torch.jit.optimize_for_inference(torch.jit.freeze(
            torch.jit.trace(cl_model, x_cl[:32])))
        options["TorchScript frozen (oneDNN fusion), batch 32"] = batched(traced, x_cl, 32)
        if not args.no_compile:
            compiled = torch.compile(folded)
            start = time.perf_counter()
            compiled(x_cl[:32])
            print(f"torch.compile warm-up {time.perf_counter() - start:.0f} s")
            options["torch.compile (inductor), BN folded, batch 32"] = batched(compiled, x_cl, 32)
        try:
            start = time.perf_counter()
            session = onnx_session(model, x[:32])
            export_s = time.perf_counter() - start
            print(f"ONNX export + session start: {export_s:.2f} s, paid once per model object")
        except ImportError as exc:
            print(f"ONNX Runtime unavailable: {exc}")
        else:
            np_x = x.numpy()
            for batch in (32, 256):
                options[f"ONNX Runtime, batch {batch}"] = batched(
                    lambda b: session.run(None, {"patches": b})[0], np_x, batch)
            onnx_out = session.run(None, {"patches": np_x[:64]})[0]
            print(f"ONNX max |logit difference| {np.abs(onnx_out - reference.numpy()).max():.1e}")
        folded_diff = (folded(x_cl[:64]) - reference).abs().max()
        print(f"BN folding max |logit difference| {float(folded_diff):.1e}")
        bf16_diff = (torch.sigmoid(bf16(x_cl[:256]).float()) - torch.sigmoid(model(x[:256])))
        print(f"bf16 max |probability difference| {float(bf16_diff.abs().max()):.1e} "
              "(an untrained net; decisions are taken at float32-tuned thresholds)")
        rates = {name: len(x) / best_of(args.repeats, run) for name, run in options.items()}
    rates[f"cadx default predict_patch_probabilities (batch {INFERENCE_BATCH})"] = (
        len(x) / best_of(args.repeats, lambda: predict_patch_probabilities(model, numpy_patches)))
    baseline = rates["eager NCHW, batch 1024"]
    print(f"\n{'option':<60} {'patches/s':>9} {'vs NCHW-1024':>12} {'of peak':>8}")
    for name, rate in rates.items():
        print(f"{name:<60} {rate:9.0f} {rate / baseline:11.2f}x {rate / ceiling:7.0%}")


if __name__ == "__main__":
    main()
