"""Training throughput in fp32 and bf16 autocast (cadx --precision), as a fraction of this
machine's peak, and whether bf16 changes the validation AUC.

Run: python benchmarks/bench_training.py [--steps 3] [--ddp 2] [--data bench_ct]
Quick check that it runs (about a minute; numbers meaningless):
    python benchmarks/bench_training.py --quick --data /tmp/bench_training

1. The patch CNN (patches/s) at batch 256 (cadx's default) and 2560 (the seed's), fp32 and bf16.
   One training step = forward + backward + Adam update in channels_last, the loop of
   cadx.train.fit; its FLOPs are counted by torch's FlopCounterMode (fp32-equivalent: the same
   count for bf16, which may exceed 100 % of the fp32 peak). Peak as in bench_inference.py (the
   faster of torch.matmul and the same GEMM as a oneDNN 1x1 convolution), fp32.
2. The default pretrained 2D backbone (EfficientNet-Lite0 at 160 px, grey input, stem and 8
   blocks frozen as `cadx train-images` fine-tunes it, batch 32; random weights, which time the
   same): images/s, fp32 and bf16.
3. A short fixed patch-CNN run in both precisions (same seed, patients, epochs): training on one
   phantom cohort (the CT learning curve's, cached in --data), validation patch AUC on another,
   each scored in its own precision, and DeLong's CI of the difference bf16 - fp32.
With --ddp N the batch-256 fp32 step is also timed as N DistributedDataParallel processes (gloo,
one thread each, 256 / N patches each), spawned from this run.
"""

from __future__ import annotations

import argparse
import os
import socket
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from bench_inference import matmul_peak_flops
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

from cadx.config import PRETRAINED_SIZE_PX, ImageModelConfig, ImageTrainConfig
from cadx.models.patch_cnn import PatchCNN
from cadx.train.loss import WeightedBCELoss
from cadx.train.precision import PRECISIONS, autocast, cpu_has_bf16

BACKBONE = "efficientnet_lite0"  # the 2D track's default pretrained network


def _conv_backward_flops(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding,
                         _dilation, transposed, _output_padding, _groups, output_mask,
                         out_shape=None, **kwargs) -> int:
    """A convolution's gradients cost one forward pass each (input and weight). torch's own
    formula ignores groups and counts a depthwise convolution's backward ~channels times over
    (EfficientNet's: 12 GFLOP per 160 px image instead of ~0.8); for groups 1 both agree."""
    forward = conv_flop_count(x_shape, w_shape, grad_out_shape, transposed)
    return forward * (int(output_mask[0]) + int(output_mask[1]))


def _counted(step: Callable[[], None]) -> float:
    """FLOPs of one call of `step` (torch's FlopCounterMode, grouped backward corrected)."""
    counter = FlopCounterMode(display=False, custom_mapping={
        torch.ops.aten.convolution_backward: _conv_backward_flops})
    with counter:
        step()
    return float(counter.get_total_flops())


def step_function(batch_size: int, precision: str = "fp32"):
    """A closure running one training step on a fixed random batch; and its fp32 FLOPs."""
    torch.manual_seed(0)
    model = PatchCNN(50).to(memory_format=torch.channels_last).train()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = WeightedBCELoss(n_positive=1, n_negative=9)
    x = torch.rand(batch_size, 1, 50, 50).contiguous(memory_format=torch.channels_last)
    y = (torch.rand(batch_size) < 0.1).float()

    def step(precision: str = precision) -> None:
        optimiser.zero_grad(set_to_none=True)
        with autocast(precision):
            logits = model(x)
        loss_fn(logits.float(), y).backward()
        optimiser.step()

    return step, _counted(lambda: step("fp32"))


def backbone_step_function(batch_size: int, precision: str = "fp32"):
    """One fine-tuning step of the default 2D backbone as `cadx train-images` runs it (AdamW on
    the unfrozen layers, class-weighted BCE); and its fp32 FLOPs."""
    from cadx.models.backbones import build_backbone

    torch.manual_seed(0)
    model = build_backbone(BACKBONE, ImageModelConfig().channels, 1, 1.0, pretrained=False)
    model.freeze_early_blocks(ImageModelConfig().frozen_blocks)
    model.train()
    train = ImageTrainConfig()
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                  lr=train.learning_rate, weight_decay=train.weight_decay)
    x = torch.rand(batch_size, ImageModelConfig().channels, PRETRAINED_SIZE_PX,
                   PRETRAINED_SIZE_PX)
    y = (torch.rand(batch_size) < 0.5).float()

    def step(precision: str = precision) -> None:
        optimiser.zero_grad(set_to_none=True)
        with autocast(precision):
            logits = model(x)
        F.binary_cross_entropy_with_logits(logits.float().reshape(-1), y).backward()
        optimiser.step()

    return step, _counted(lambda: step("fp32"))


def best_step_seconds(step: Callable[[], None], steps: int) -> float:
    """The fastest of `steps` timed steps after one warm-up."""
    step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return min(times)


_ONE = {"patches": "patch", "images": "image"}


def throughput_rows(make_step: Callable, batch_sizes: tuple[int, ...], unit: str, steps: int,
                    peak: float) -> dict[tuple[int, str], float]:
    """Print one row per batch size and precision: items/s and fraction of the fp32 peak."""
    rates = {}
    for batch_size in batch_sizes:
        for precision in PRECISIONS:
            step, flops = make_step(batch_size, precision)
            seconds = best_step_seconds(step, steps)
            rates[batch_size, precision] = batch_size / seconds
            print(f"  batch {batch_size:>4} {precision}: {rates[batch_size, precision]:7.1f} "
                  f"{unit}/s (best of {steps} steps, {seconds:.2f} s/step); "
                  f"{flops / batch_size / 1e6:.0f} MFLOP per {_ONE[unit]} per step -> "
                  f"{flops / seconds / peak:.0%} of peak", flush=True)
        print(f"  batch {batch_size:>4} bf16 / fp32: "
              f"{rates[batch_size, 'bf16'] / rates[batch_size, 'fp32']:.2f}x")
    return rates


def auc_comparison(args: argparse.Namespace) -> None:
    """Train the same short run in fp32 and bf16; validation patch AUC of each, and DeLong's CI
    of the difference on the same validation patches."""
    from bench_ct_learning_curve import _balanced_subset, _cases, cached_cohort

    from cadx.config import ModelConfig
    from cadx.evaluate.stats import delong_test
    from cadx.patches.store import join_patches
    from cadx.train.fit import fit_patch_cnn, predict_patch_probabilities
    from cadx.workflows import DEMO_CONFIG

    n_train, n_val, epochs = (8, 6, 1) if args.quick else (args.auc_patients,
                                                            args.auc_val_patients,
                                                            args.auc_epochs)
    patch, stride = (16, 8) if args.quick else (DEMO_CONFIG.patches.size_px,
                                                DEMO_CONFIG.patches.stride_px)
    config = replace(DEMO_CONFIG, model=ModelConfig(),  # the Table-1 network
                     patches=replace(DEMO_CONFIG.patches, size_px=patch, stride_px=stride),
                     train=replace(DEMO_CONFIG.train, max_epochs=epochs,
                                   early_stop_patience=epochs))
    data = Path(args.data)
    pool = 2 * ((n_train + 1) // 2)
    tiny = "tiny_" if args.quick else ""  # --quick: small coarse phantoms, own folders
    train_folder = cached_cohort(data, f"{tiny}train_seed101_n{pool}", pool, 101, args.quick)
    val_folder = cached_cohort(data, f"{tiny}val_seed202_n{n_val}", n_val, 202, args.quick)
    train_set = join_patches(_balanced_subset(_cases(train_folder, config, data), n_train))
    validation = join_patches(_cases(val_folder, config, data))
    scores, seconds = {}, {}
    for precision in PRECISIONS:
        start = time.perf_counter()
        model, _ = fit_patch_cnn(train_set, validation,
                                 replace(config.train, precision=precision),
                                 model_config=config.model, progress=not args.quiet)
        scores[precision] = predict_patch_probabilities(model, validation.patches,
                                                        precision=precision)
        seconds[precision] = time.perf_counter() - start
    test = delong_test(validation.labels, scores["bf16"], scores["fp32"])
    print(f"short run: {n_train} training patients ({len(train_set)} patches), {epochs} "
          f"epoch(s), batch {config.train.batch_size}, {patch} px stride {stride}; validation "
          f"{n_val} patients ({len(validation)} patches, {int(validation.labels.sum())} "
          "cancerous)")
    for precision, key in (("fp32", "auc_b"), ("bf16", "auc_a")):
        print(f"  {precision}: validation patch AUC {test[key]:.3f}, {seconds[precision]:.0f} s "
              "(training + validation)")
    print(f"  bf16 - fp32: {test['difference']:+.4f} (95 % DeLong CI {test['ci_low']:+.4f} to "
          f"{test['ci_high']:+.4f}, p = {test['p_value']:.2f})")


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
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3,
                        help="timed steps per batch size and precision (default %(default)s)")
    parser.add_argument("--ddp", type=int, default=0, metavar="N",
                        help="also time batch 256 as N DDP processes")
    parser.add_argument("--data", default="bench_ct",
                        help="phantom cohorts and patch stores of the AUC run, reused "
                             "(default %(default)s)")
    parser.add_argument("--auc-patients", type=int, default=36,
                        help="training patients of the AUC run (default %(default)s)")
    parser.add_argument("--auc-val-patients", type=int, default=60,
                        help="validation patients of the AUC run (default %(default)s)")
    parser.add_argument("--auc-epochs", type=int, default=4,
                        help="epochs of the AUC run (default %(default)s)")
    parser.add_argument("--no-auc", action="store_true", help="skip the AUC run")
    parser.add_argument("--quick", action="store_true",
                        help="one step per row, batch 256 only, a tiny AUC run: checks that "
                             "it runs, numbers meaningless")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args()
    steps = 1 if args.quick else args.steps
    mkl_peak, onednn_peak = matmul_peak_flops(1 if args.quick else 3)
    peak = max(mkl_peak, onednn_peak)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average "
          f"{os.getloadavg()[0]:.1f}; CPU bf16 instructions: {cpu_has_bf16()} (without them "
          f"bf16 rows are emulated, and cadx trains fp32); fp32 GEMM peak {peak / 1e9:.0f} "
          f"GFLOP/s (torch.matmul {mkl_peak / 1e9:.0f}, oneDNN {onednn_peak / 1e9:.0f})")
    print("patch CNN (50 px), training step:")
    batches = (256,) if args.quick else (256, 2560)
    rates = throughput_rows(step_function, batches, "patches", steps, peak)
    if not args.quick:
        print(f"  batch 2560 / batch 256 throughput (fp32): "
              f"{rates[2560, 'fp32'] / rates[256, 'fp32']:.2f}x")
    print(f"{BACKBONE} at {PRETRAINED_SIZE_PX} px, fine-tuning step:")
    throughput_rows(backbone_step_function, (ImageTrainConfig().batch_size,), "images", steps,
                    peak)
    if args.ddp:
        rate = ddp_rate(args.ddp, 256, steps)
        print(f"batch  256 as {args.ddp} DDP processes x 1 thread: {rate:6.0f} patches/s -> "
              f"{rate / rates[256, 'fp32']:.2f}x one process with {torch.get_num_threads()} "
              "threads")
    if not args.no_auc:
        auc_comparison(args)


if __name__ == "__main__":
    main()
