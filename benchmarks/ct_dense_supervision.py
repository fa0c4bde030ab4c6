"""Dense (pixel) tumour supervision for the CT patch detector, measured on validation phantoms
(issue 14).

The patch CNN learns from one bit per window ("touches tumour"): a 1 cm tumour at the corner of
a 45 mm window teaches it as much as a 4 cm one filling it, and nothing tells it *where* the
evidence lies. Detectors of small pancreatic tumours are usually segmentation networks for that
reason. This lever trains a small MONAI UNet on the same 2.5D patches with each patch's tumour
mask (the label resampled to the pipeline's slices, nearest neighbour, cropped at the patch's
coordinates) as the target — soft Dice over the batch + pixel BCE + the class-weighted BCE of
the patch's largest pixel logit against its patch label — and scores a patch by its largest
pixel probability, so the rest of the pipeline (flip averaging, top-1 patient score) is
unchanged. Same training phantoms, split and schedule as the bundle it is compared with; epoch
kept by that bundle's internal validation phantoms (top-1 patient AUC); measured on the 260
pooled validation phantoms of seeds 202 and 303. Nothing here may see a test cohort.

Run (the reference run's bundle and cache):
    python benchmarks/ct_dense_supervision.py BUNDLE --data bench_ct --json dense.json
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from bench_ct_learning_curve import (
    add_bundle_cohort_options,
    bundle_split_cases,
    cached_cohort,
    patient_top1,
    small_tumours,
    validation_cases,
)
from monai.losses import DiceLoss
from numpy.lib.stride_tricks import sliding_window_view
from sklearn.metrics import roc_auc_score

from cadx.bundle import load_bundle
from cadx.config import PipelineConfig
from cadx.evaluate.stats import delong_auc_ci, delong_test
from cadx.io.dataset import load_dataset
from cadx.io.volumes import read_case
from cadx.models.dense_patch_net import DensePatchNet
from cadx.patches.cohort import PatchedCase
from cadx.patches.store import join_patches
from cadx.preprocess.resample import resample_grid
from cadx.train.fit import augment_patches
from cadx.train.loss import WeightedBCELoss
from cadx.train.precision import autocast, resolve_precision


def tumour_mask_patches(cases: list[PatchedCase], folder: Path, config: PipelineConfig
                        ) -> np.ndarray:
    """(N, P, P) uint8 tumour masks of the cases' patches, in `join_patches` order: each
    case's label resampled as the pipeline resamples it and cropped at its patches' coordinates;
    checked against the stored patch labels."""
    refs = {ref.patient_id: ref for ref in load_dataset(folder)}
    pre, size = config.preprocess, config.patches.size_px
    out = []
    for case in cases:
        ref = refs[case.patient_id]
        read = read_case(ref.image_path, ref.label_path, labels=config.labels,
                         patient_id=ref.patient_id)
        tumour = resample_grid(read.tumour_mask, read.spacing_zyx_mm, pre.slice_thickness_mm,
                               pre.in_plane_spacing_mm, is_label=True, source=ref.patient_id)
        windows = sliding_window_view(tumour, (size, size), axis=(1, 2))
        z, y, x = case.patches.coords.T
        masks = np.ascontiguousarray(windows[z, y, x], dtype=np.uint8)
        if not np.array_equal(masks.any(axis=(1, 2)), case.patches.labels.astype(bool)):
            raise SystemExit(f"{case.patient_id}: cropped masks disagree with the patch labels")
        out.append(masks)
    return np.concatenate(out)


def fit_dense(train_cases: list[PatchedCase], masks: np.ndarray, select_cases: list[PatchedCase],
              config: PipelineConfig, channels: tuple[int, ...], epochs: int, lr: float,
              batch_size: int) -> tuple[DensePatchNet, list[float], int]:
    """Train a DensePatchNet on the cases' patches and tumour `masks` (config's seed,
    precision and flips); keep the epoch with the best top-1 patient AUC on `select_cases`.
    Returns the model, that AUC after each epoch and the kept epoch."""
    torch.manual_seed(config.train.seed)
    train = join_patches(train_cases)
    n_pos = int(train.labels.sum())
    patch_loss = WeightedBCELoss(n_positive=n_pos, n_negative=len(train) - n_pos)
    dice = DiceLoss(sigmoid=True, batch=True)
    labels = torch.from_numpy(train.labels.astype(np.float32))
    model = DensePatchNet(train.patch_size_px, train.channels, channels)
    model = model.to(memory_format=torch.channels_last)
    precision = resolve_precision(config.train.precision)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(config.train.seed)
    truth = np.array([c.has_tumour for c in select_cases])
    best_auc, best_state, best_epoch, history = -1.0, None, 0, []
    started = time.perf_counter()
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(len(train), generator=generator).numpy()
        for start in range(0, len(order), batch_size):
            rows = np.sort(order[start:start + batch_size])
            both = torch.cat([torch.from_numpy(np.asarray(train.patches[rows], np.float32)),
                              torch.from_numpy(masks[rows]).float()[:, None]], dim=1)
            flips = torch.rand(3, len(rows), generator=generator) < 0.5
            flips[2] = False  # flips only, as the Table-1 bundles are trained
            both = augment_patches(both, flips)
            batch, target = both[:, :-1], both[:, -1:]
            optimiser.zero_grad(set_to_none=True)
            with autocast(precision):
                pixels = model(batch, pixels=True).float()
            loss = (dice(pixels, target) + F.binary_cross_entropy_with_logits(pixels, target)
                    + patch_loss(pixels.flatten(1).amax(dim=1), labels[rows]))
            loss.backward()
            optimiser.step()
        auc = roc_auc_score(truth, patient_top1(model, select_cases, config))
        history.append(auc)
        if auc > best_auc:
            best_auc, best_state, best_epoch = auc, copy.deepcopy(model.state_dict()), epoch
        print(f"epoch {epoch}: loss {loss.item():.3f}, selection top-1 patient AUC {auc:.3f} "
              f"({(time.perf_counter() - started) / 60:.1f} min)", flush=True)
    model.load_state_dict(best_state)
    model.eval()
    return model, history, best_epoch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_bundle_cohort_options(parser)
    parser.add_argument("--channels", default="16,32,64,128", help="UNet channels per level")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--save", help="write the kept network's state dict here")
    parser.add_argument("--json", help="write the scores as JSON")
    args = parser.parse_args()
    bundle = load_bundle(args.bundle)
    config = bundle.config
    data = Path(args.data)
    parts = bundle_split_cases(bundle, data, args.train_patients, args.train_seed)
    folder = cached_cohort(data, f"train_seed{args.train_seed}_n{args.train_patients}",
                           args.train_patients, args.train_seed, False)
    started = time.perf_counter()
    train = join_patches(parts["train"])
    masks = tumour_mask_patches(parts["train"], folder, config)
    print(f"{len(parts['train'])} training phantoms, {len(train)} patches "
          f"({int(train.labels.sum())} cancerous), masks in "
          f"{time.perf_counter() - started:.0f} s", flush=True)
    channels = tuple(int(c) for c in args.channels.split(","))
    model, history, best_epoch = fit_dense(parts["train"], masks, parts["validation"], config,
                                           channels, args.epochs, args.lr, args.batch_size)
    print(f"kept epoch {best_epoch} (internal validation AUC {max(history):.3f})")
    if args.save:
        torch.save(model.state_dict(), args.save)
    base = bundle.build_model()
    results: dict[str, object] = {"args": vars(args), "internal_validation": history,
                                  "kept_epoch": best_epoch}
    pooled: dict[str, list[np.ndarray]] = {"truth": [], "bundle": [], "dense": [], "small": []}
    for seed, n in ((202, 60), (303, 200)):
        val_cases = validation_cases(data, seed, n, config)
        truth = np.array([c.has_tumour for c in val_cases])
        small = small_tumours(val_cases)
        rows = {"bundle": patient_top1(base, val_cases, config),
                "dense": patient_top1(model, val_cases, config)}
        for key, value in (("truth", truth), ("small", small), *rows.items()):
            pooled[key].append(value)
        results[str(seed)] = {"truth": truth.tolist(), "small": small.tolist(),
                              **{k: v.tolist() for k, v in rows.items()}}
    joined = {k: np.concatenate(v) for k, v in pooled.items()}
    truth, keep = joined["truth"], joined["small"] | ~joined["truth"]
    print(f"pooled validation ({len(truth)} phantoms, {int(truth.sum())} with tumour):")
    for name in ("bundle", "dense"):
        auc = delong_auc_ci(truth, joined[name])
        small = delong_auc_ci(truth[keep], joined[name][keep]).estimate
        print(f"  {name:<7} top-1 AUC {auc.estimate:.3f} [{auc.low:.3f}, {auc.high:.3f}]  "
              f"< 2 cm vs tumour-free {small:.3f}")
    diff = delong_test(truth, joined["dense"], joined["bundle"])
    print(f"  difference {diff['difference']:+.3f} (paired DeLong p = {diff['p_value']:.2f})")
    results["pooled_difference"] = diff
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=float))


if __name__ == "__main__":
    main()
