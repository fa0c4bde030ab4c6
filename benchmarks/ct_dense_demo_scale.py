"""The dense-supervision lever at the demo's scale: the dense UNet patch network
(`--patch-network unet`) against the demo's Table-1 network, both trained the way `cadx demo`
trains (issue 14).

`cadx demo` is limited by training steps (see the learning curve), and the dense UNet of
`ct_dense_supervision.py` takes about twice the Table-1 network's patches per second. This
script takes the learning curve's training phantoms (the first N/2 tumour and N/2 tumour-free
of seed 101), trains the demo's 2.5D Table-1 network and the UNet with cadx's own
`fit_patch_cnn` and the demo's schedule (12 epochs, early stopping on the patch AUC of the
seed-202 validation phantoms), and measures both on the seed-303 validation phantoms (top-1
patient score, flips at test time), with their training wall times. cadx's cropped tumour masks
are checked against the label resampled here. No test cohort.

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
    patient_top1,
    small_tumours,
    validation_cases,
)
from ct_dense_supervision import tumour_mask_patches

from cadx.config import ModelConfig
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
    parser.add_argument("--seed", type=int, default=DEMO_CONFIG.train.seed,
                        help="training seed of both networks (default the demo's, %(default)s)")
    parser.add_argument("--table1-scores", metavar="JSON",
                        help="this script's earlier --json: reuse its Table-1 scores")
    parser.add_argument("--json", help="write the scores as JSON")
    args = parser.parse_args()
    # the demo's settings with the Table-1 network (the demo's network until this measurement)
    config = replace(DEMO_CONFIG, model=ModelConfig(), train=replace(
        DEMO_CONFIG.train, seed=args.seed,
        precision=resolve_precision(DEMO_CONFIG.train.precision)))
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

    truth = np.array([c.has_tumour for c in measure])
    if args.table1_scores:  # a previous run's Table-1 network, same phantoms and seed
        saved = json.loads(Path(args.table1_scores).read_text())
        if saved["truth"] != truth.tolist() or saved["args"].get("seed", 0) != args.seed:
            raise SystemExit(f"{args.table1_scores}: scored another cohort or seed")
        table1_scores, table1_wall = np.array(saved["table1"]), saved["wall_s"]["table1"]
    else:
        started = time.perf_counter()
        table1, history = fit_patch_cnn(train_set, join_patches(select), config.train,
                                        model_config=config.model, progress=False)
        table1_wall = time.perf_counter() - started
        print(f"Table-1: {len(history.train_loss)} epochs (best {history.best_epoch}), "
              f"{table1_wall / 60:.1f} min", flush=True)
        table1_scores = patient_top1(table1, measure, config)

    # The dense network through cadx's own path: cropped with its masks, trained by
    # fit_patch_cnn with the demo's schedule, monitor and early stopping.
    dense_config = replace(config, model=replace(config.model, arch="unet"))
    dense_cases = _balanced_subset(
        patched_cases(load_dataset(folder), dense_config, progress=False), args.patients)
    dense_set = join_patches(dense_cases)
    if not np.array_equal(dense_set.masks, tumour_mask_patches(dense_cases, folder, config)):
        raise SystemExit("cadx's cropped tumour masks differ from the label resampled here")
    started = time.perf_counter()
    dense, dense_history = fit_patch_cnn(dense_set, join_patches(select), dense_config.train,
                                         model_config=dense_config.model, progress=False)
    dense_wall = time.perf_counter() - started
    print(f"dense: {len(dense_history.train_loss)} epochs (best {dense_history.best_epoch}), "
          f"{dense_wall / 60:.1f} min", flush=True)

    small = small_tumours(measure)
    keep = small | ~truth
    scores = {"table1": table1_scores, "dense": patient_top1(dense, measure, dense_config)}
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
             "dense_history": dense_history.to_dict(),
             "wall_s": {"table1": table1_wall, "dense": dense_wall}, "difference": diff,
             **{k: v.tolist() for k, v in scores.items()}}, indent=2, default=float))


if __name__ == "__main__":
    main()
