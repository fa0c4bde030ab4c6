"""Patient-level (multiple-instance) fine-tuning of a trained CT bundle, measured on validation
phantoms (issue 14).

The patch loss treats every patch alike, but a patient is called positive by its best patch:
what costs patient AUC is a tumour-free gland's single brightest window, and a small tumour's
best window scoring below it. This lever fine-tunes the bundle's network on whole patients:
each step takes all patches of a few training patients and adds to the usual class-weighted
patch loss a patient loss — BCE of the mean of each patient's top-3 patch logits against the
patient's label — so the top of every tumour-free gland is pushed down and any evidence in a
cancer patient's gland (the tumour, or signs around it) pushed up. The epoch is kept by the
bundle's own validation patients (top-1 patient AUC); the result is measured on two
validation cohorts no bundle trains on (seeds 202 and 303). Nothing here may see a test cohort.

Run (the reference run's bundle and training cohort; `--data` the reference run's cache):
    python benchmarks/ct_mil_finetune.py BUNDLE --data bench_ct --json mil.json
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
    patient_top1,
    small_tumours,
    validation_cases,
)
from sklearn.metrics import roc_auc_score

from cadx.bundle import load_bundle
from cadx.evaluate.stats import delong_auc_ci, delong_test
from cadx.patches.store import join_patches
from cadx.train.fit import augment_patches
from cadx.train.loss import WeightedBCELoss
from cadx.train.precision import autocast, resolve_precision


def top_k_logit(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Mean of the k largest logits (all of them when there are fewer)."""
    return logits.topk(min(k, len(logits))).values.mean()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_bundle_cohort_options(parser)
    parser.add_argument("--patients-per-step", type=int, default=4)
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--patient-weight", type=float, default=1.0)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--json", help="write the scores as JSON")
    args = parser.parse_args()
    bundle = load_bundle(args.bundle)
    config = bundle.config
    data = Path(args.data)
    parts = bundle_split_cases(bundle, data, args.train_patients, args.train_seed)
    train = join_patches(parts["train"])
    bounds = np.cumsum([0] + [len(c.patches) for c in parts["train"]])
    patient_label = torch.tensor([float(c.has_tumour) for c in parts["train"]])
    n_pos = int(train.labels.sum())
    patch_loss = WeightedBCELoss(n_positive=n_pos, n_negative=len(train) - n_pos)
    y_patch = torch.from_numpy(train.labels.astype(np.float32))
    precision = resolve_precision(config.train.precision)
    model = bundle.build_model().to(memory_format=torch.channels_last)
    val_truth = np.array([c.has_tumour for c in parts["validation"]])
    best_auc = roc_auc_score(val_truth, patient_top1(model, parts["validation"], config))
    best_state, best_epoch, history = copy.deepcopy(model.state_dict()), 0, [best_auc]
    print(f"{len(parts['train'])} training phantoms ({len(train)} patches); internal "
          f"validation top-1 patient AUC before: {best_auc:.3f}")
    optimiser = torch.optim.Adam(model.parameters(), lr=args.lr)
    generator = torch.Generator().manual_seed(config.train.seed)
    started = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        model.train()
        order = torch.randperm(len(parts["train"]), generator=generator).tolist()
        for start in range(0, len(order), args.patients_per_step):
            chosen = order[start:start + args.patients_per_step]
            rows = np.concatenate([np.arange(bounds[i], bounds[i + 1]) for i in chosen])
            batch = torch.from_numpy(np.asarray(train.patches[rows], dtype=np.float32))
            flips = torch.rand(3, len(rows), generator=generator) < 0.5
            flips[2] = False  # flips only, as the bundle was trained
            batch = augment_patches(batch.contiguous(memory_format=torch.channels_last), flips)
            optimiser.zero_grad(set_to_none=True)
            with autocast(precision):
                logits = model(batch).float()
            loss = patch_loss(logits, y_patch[rows])
            sizes = [bounds[i + 1] - bounds[i] for i in chosen]
            pooled = torch.stack([top_k_logit(part, args.top_k)
                                  for part in torch.split(logits, sizes)])
            loss = loss + args.patient_weight * F.binary_cross_entropy_with_logits(
                pooled, patient_label[chosen])
            loss.backward()
            optimiser.step()
        auc = roc_auc_score(val_truth, patient_top1(model, parts["validation"], config))
        history.append(auc)
        if auc > best_auc:
            best_auc, best_state, best_epoch = auc, copy.deepcopy(model.state_dict()), epoch
        print(f"epoch {epoch}: internal validation top-1 patient AUC {auc:.3f} "
              f"({(time.perf_counter() - started) / 60:.1f} min)", flush=True)
    model.load_state_dict(best_state)
    model.eval()
    print(f"kept epoch {best_epoch} (0 = the bundle unchanged)")
    base = bundle.build_model()
    results: dict[str, object] = {"args": vars(args), "internal_validation": history,
                                  "kept_epoch": best_epoch}
    for seed, n in ((202, 60), (303, 200)):
        val_cases = validation_cases(data, seed, n, config)
        truth = np.array([c.has_tumour for c in val_cases])
        small = small_tumours(val_cases)
        keep = small | ~truth
        rows = {"run top-1": patient_top1(base, val_cases, config),
                "MIL-tuned top-1": patient_top1(model, val_cases, config)}
        print(f"seed {seed} ({n} phantoms):")
        for name, values in rows.items():
            auc = delong_auc_ci(truth, values)
            print(f"  {name:<16} AUC {auc.estimate:.3f} [{auc.low:.3f}, {auc.high:.3f}]  "
                  f"< 2 cm vs tumour-free {delong_auc_ci(truth[keep], values[keep]).estimate:.3f}")
        diff = delong_test(truth, rows["MIL-tuned top-1"], rows["run top-1"])
        print(f"  difference {diff['difference']:+.3f} (paired DeLong p = {diff['p_value']:.2f})")
        results[str(seed)] = {"truth": truth.tolist(), "difference": diff,
                              **{k: v.tolist() for k, v in rows.items()}}
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=float))


if __name__ == "__main__":
    main()
