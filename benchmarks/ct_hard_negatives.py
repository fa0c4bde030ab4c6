"""Hard-negative fine-tuning of a trained CT bundle, measured on validation phantoms (issue 14).

With the top-1 patient score a tumour-free patient is a false positive as soon as one of its
hundreds of patches scores high, and tumours under 2 cm are missed because their best patch
does not outscore those. This lever mines the training patients' negatives the bundle scores
highest, fine-tunes the same network on all cancerous patches + those hard negatives + as many
random negatives (so the easy ones are not forgotten) at a lower learning rate, re-chooses the
thresholds on the bundle's own validation patients, and compares both bundles on a validation
cohort no bundle trains on (the learning curve's seed 202). Nothing here may see a test cohort.

Run (the reference run's bundle and training cohort; `--data` the reference run's cache):
    python benchmarks/ct_hard_negatives.py BUNDLE --data bench_ct --train-patients 300 \\
        --val-patients 60 --out hard.cadx
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from bench_ct_learning_curve import (
    add_validation_cohort_options,
    bundle_split_cases,
    small_tumours,
    validation_cohort,
)

from cadx.bundle import PatchModelBundle, load_bundle, save_bundle
from cadx.evaluate.cohort import cohort_patient_scores
from cadx.evaluate.stats import delong_auc_ci, delong_test
from cadx.patches.grid import PatchSet
from cadx.patches.store import join_patches
from cadx.train.fit import fit_patch_cnn, predict_patch_probabilities
from cadx.train.pipeline import choose_thresholds, score_cases


def mined_training_set(model, train: PatchSet, hard_per_positive: float,
                       random_per_positive: float, precision: str, seed: int) -> PatchSet:
    """All cancerous patches, the negatives the model scores highest and random others."""
    scores = predict_patch_probabilities(model, train.patches, precision=precision)
    positives = np.flatnonzero(train.labels == 1)
    negatives = np.flatnonzero(train.labels == 0)
    n_hard = min(int(hard_per_positive * len(positives)), len(negatives))
    hard = negatives[np.argsort(-scores[negatives], kind="stable")[:n_hard]]
    rest = np.setdiff1d(negatives, hard)
    rng = np.random.default_rng(seed)
    n_random = min(int(random_per_positive * len(positives)), len(rest))
    easy = rng.choice(rest, size=n_random, replace=False)
    print(f"mined: {len(positives)} cancerous, {n_hard} hard negatives (p >= "
          f"{scores[hard].min():.3f}), {n_random} random negatives of {len(negatives)}")
    # subset() reads the selected rows of a patch store into memory
    return train.subset(np.sort(np.concatenate([positives, hard, easy])))


def _rows(bundle: PatchModelBundle, cases, label: str) -> dict[str, object]:
    config = bundle.config
    per_case = score_cases(bundle.build_model(), cases, config.decide.test_time_flips,
                           config.train.precision, config.model)
    truth = np.array([c.has_tumour for c in cases])
    scores = cohort_patient_scores(cases, per_case, bundle.patch_threshold, config)
    auc = delong_auc_ci(truth, scores)
    small = small_tumours(cases)
    free = ~truth
    keep = small | free
    small_auc = delong_auc_ci(truth[keep], scores[keep])
    positive = scores >= bundle.patient_threshold
    row = {"bundle": label, "patient_auc": auc.estimate, "low": auc.low, "high": auc.high,
           "small_vs_free_auc": small_auc.estimate,
           "sn": float(positive[truth].mean()), "sp": float((~positive[free]).mean()),
           "sn_small": float(positive[small].mean()), "n_small": int(small.sum()),
           "scores": scores.tolist()}
    print(f"  {label:<10} patient AUC {auc.estimate:.3f} [{auc.low:.3f}, {auc.high:.3f}]  "
          f"< 2 cm vs tumour-free AUC {small_auc.estimate:.3f}  SN {row['sn']:.2f}  "
          f"SP {row['sp']:.2f}  SN < 2 cm {row['sn_small']:.2f} ({int(positive[small].sum())}"
          f"/{int(small.sum())})")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle")
    add_validation_cohort_options(parser)
    parser.add_argument("--train-patients", type=int, default=300)
    parser.add_argument("--train-seed", type=int, default=101)
    parser.add_argument("--hard-per-positive", type=float, default=3.0)
    parser.add_argument("--random-per-positive", type=float, default=3.0)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--out", help="write the fine-tuned bundle here")
    parser.add_argument("--json", help="write the rows as JSON")
    args = parser.parse_args()
    bundle = load_bundle(args.bundle)
    config = bundle.config
    data = Path(args.data)
    parts = bundle_split_cases(bundle, data, args.train_patients, args.train_seed)
    print(f"bundle split: {len(parts['train'])} train, {len(parts['validation'])} validation")
    started = time.perf_counter()
    model = bundle.build_model()
    mined = mined_training_set(model, join_patches(parts["train"]), args.hard_per_positive,
                               args.random_per_positive, config.train.precision,
                               config.train.seed)
    val_patches = join_patches(parts["validation"])
    train_cfg = replace(config.train, learning_rate=args.lr, max_epochs=args.epochs,
                        monitor="auc", early_stop_patience=args.epochs,
                        reduce_lr_patience=args.epochs)
    tuned, history = fit_patch_cnn(mined, val_patches, train_cfg, model_config=config.model,
                                   initial_state=bundle.state_dict, progress=False)
    print(f"fine-tuned {history.best_epoch + 1} of {len(history.validation_auc)} epochs; "
          f"val patch AUC by epoch {[round(a, 3) for a in history.validation_auc]} "
          f"({(time.perf_counter() - started) / 60:.1f} min)")
    patch_point, patient_point, points = choose_thresholds(tuned, parts["validation"], config)
    tuned_bundle = replace(bundle, state_dict=tuned.state_dict(),
                           patch_operating_point=patch_point,
                           patient_operating_point=patient_point,
                           patient_operating_points=points)
    print(f"internal validation: patch AUC {bundle.patch_operating_point.auc:.3f} -> "
          f"{patch_point.auc:.3f}, patient AUC {bundle.patient_operating_point.auc:.3f} -> "
          f"{patient_point.auc:.3f}")
    if args.out:
        save_bundle(tuned_bundle, args.out)
    _, val_cases = validation_cohort(args, config)
    print(f"validation cohort seed {args.val_seed}: {len(val_cases)} phantoms")
    rows = [_rows(bundle, val_cases, "before"), _rows(tuned_bundle, val_cases, "hard-neg")]
    truth = np.array([c.has_tumour for c in val_cases])
    diff = delong_test(truth, np.array(rows[1]["scores"]), np.array(rows[0]["scores"]))
    print(f"  difference {diff['difference']:+.3f} (paired DeLong p = {diff['p_value']:.2f})")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
