"""The dense-supervision lever at the demo's scale: does a network that trains twice as fast
buy the demo accuracy within its time budget? (issue 14)

`cadx demo` is limited by training steps (see the learning curve). The dense UNet of
`ct_dense_supervision.py` takes about twice the Table-1 network's patches per second, so in
the same wall time it can train twice the epochs. This script trains, on the learning curve's
training phantoms (the first N/2 tumour and N/2 tumour-free of seed 101), the demo's 2.5D
Table-1 network with the demo's schedule and the dense UNet with `--dense-epochs`; each picks
its epoch on the seed-202 validation phantoms (Table-1: the demo's early stopping on patch
AUC; dense: top-1 patient AUC) and both are measured on the seed-303 validation phantoms
(top-1 patient score, flips at test time), with their training wall times. No test cohort.

Run:
    python benchmarks/ct_dense_demo_scale.py --data bench_ct --patients 36 --json demo_scale.json
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from bench_ct_learning_curve import (
    _balanced_subset,
    cached_cohort,
    patch_store_path,
    small_tumours,
    validation_cases,
)
from ct_dense_supervision import fit_dense, patient_top1, tumour_mask_patches

from cadx.evaluate.stats import delong_auc_ci, delong_test
from cadx.io.dataset import load_dataset
from cadx.patches.store import join_patches
from cadx.scale.distributed import patched_cases
from cadx.train.fit import fit_patch_cnn
from cadx.train.precision import resolve_precision
from cadx.workflows import DEMO_CONFIG


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="cohort and patch-store cache folder")
    parser.add_argument("--patients", type=int, default=36, help="training phantoms")
    parser.add_argument("--pool", type=int, default=36,
                        help="the cached training cohort they are taken from (seed 101)")
    parser.add_argument("--dense-epochs", type=int, default=24)
    parser.add_argument("--json", help="write the scores as JSON")
    args = parser.parse_args()
    config = replace(DEMO_CONFIG, train=replace(
        DEMO_CONFIG.train, precision=resolve_precision(DEMO_CONFIG.train.precision)))
    data = Path(args.data)
    folder = cached_cohort(data, f"train_seed101_n{args.pool}", args.pool, 101, False)
    train_cases = _balanced_subset(
        patched_cases(load_dataset(folder), config,
                      patch_store=patch_store_path(data, folder, config), progress=False),
        args.patients)
    select = validation_cases(data, 202, 60, config)
    measure = validation_cases(data, 303, 200, config)
    train_set = join_patches(train_cases)
    print(f"{len(train_cases)} training phantoms, {len(train_set)} patches "
          f"({int(train_set.labels.sum())} cancerous)", flush=True)

    started = time.perf_counter()
    table1, history = fit_patch_cnn(train_set, join_patches(select), config.train,
                                    model_config=config.model, progress=False)
    table1_wall = time.perf_counter() - started
    print(f"Table-1: {len(history.train_loss)} epochs (best {history.best_epoch}), "
          f"{table1_wall / 60:.1f} min", flush=True)

    masks = tumour_mask_patches(train_cases, folder, config)
    started = time.perf_counter()
    dense, dense_history, kept = fit_dense(train_cases, masks, select, config,
                                           (16, 32, 64, 128), args.dense_epochs,
                                           config.train.learning_rate, config.train.batch_size)
    dense_wall = time.perf_counter() - started
    print(f"dense: {args.dense_epochs} epochs (kept {kept}), {dense_wall / 60:.1f} min",
          flush=True)

    truth = np.array([c.has_tumour for c in measure])
    small = small_tumours(measure)
    keep = small | ~truth
    scores = {"table1": patient_top1(table1, measure, config),
              "dense": patient_top1(dense, measure, config)}
    print(f"seed 303 ({len(truth)} phantoms, {int(truth.sum())} with tumour), top-1:")
    for name, wall in (("table1", table1_wall), ("dense", dense_wall)):
        auc = delong_auc_ci(truth, scores[name])
        print(f"  {name:<7} AUC {auc.estimate:.3f} [{auc.low:.3f}, {auc.high:.3f}]  < 2 cm vs "
              f"tumour-free {delong_auc_ci(truth[keep], scores[name][keep]).estimate:.3f}  "
              f"training {wall / 60:.1f} min")
    diff = delong_test(truth, scores["dense"], scores["table1"])
    print(f"  difference {diff['difference']:+.3f} (paired DeLong p = {diff['p_value']:.2f})")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"args": vars(args), "truth": truth.tolist(), "small": small.tolist(),
             "dense_selection_auc": dense_history, "dense_kept_epoch": kept,
             "wall_s": {"table1": table1_wall, "dense": dense_wall}, "difference": diff,
             **{k: v.tolist() for k, v in scores.items()}}, indent=2, default=float))


if __name__ == "__main__":
    main()
