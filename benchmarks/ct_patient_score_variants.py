"""Patient scores compared on validation phantoms (issue 14): one trained CT bundle scores a
validation cohort's patches once; every candidate patient score is then computed from those
patch probabilities and its patient AUC printed with a DeLong 95 % CI and the paired DeLong
difference to the bundle's own score. Nothing here may be run on a test cohort.

Run (the learning curve's validation cohort, seed 202, which no bundle trains on):
    python benchmarks/ct_patient_score_variants.py BUNDLE --data bench_ct --val-patients 60

Candidates: cadx's patient scores (fraction, cluster, top-k) and two z-smoothed top-k scores
measured here as levers (not in cadx: they did not win, docs/ct-pipeline.md):
* zmean:K, the mean of the K highest patch probabilities after averaging each with those of
  the patches at the same place on the slices above and below (those that exist);
* zsupport:K, the same with min(p, the larger of the two neighbours' p; 0 without one): a
  patch counts only as far as a neighbouring slice confirms it.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
from bench_ct_learning_curve import add_validation_cohort_options, validation_cohort

from cadx.bundle import load_bundle
from cadx.config import DecideConfig
from cadx.decide.aggregate import top_k_mean_scores
from cadx.evaluate.cohort import cohort_patient_scores
from cadx.evaluate.stats import delong_auc_ci, delong_test
from cadx.train.pipeline import score_cases

CANDIDATES = [DecideConfig(patient_score="fraction"), DecideConfig(patient_score="cluster"),
              *(DecideConfig(patient_score="topk", top_k=k) for k in (1, 3, 5, 10))]
Z_CANDIDATES = [(name, k) for name in ("zmean", "zsupport") for k in (1, 3)]


def _z_neighbours(patient_ids: np.ndarray, scores: np.ndarray,
                  coords: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The probabilities at the same (y, x) on the slice below and above each patch (NaN where
    the patient has no patch there): one sorted-key lookup for all patches."""
    _, inverse = np.unique(patient_ids.astype(str), return_inverse=True)
    grid = coords.astype(np.int64) - coords.astype(np.int64).min(axis=0) + 1
    n_slices, n_y, n_x = (grid.max(axis=0) + 2).tolist()
    keys = ((inverse.ravel() * n_slices + grid[:, 0]) * n_y + grid[:, 1]) * n_x + grid[:, 2]
    order = np.argsort(keys)
    sorted_keys = keys[order]
    found_scores = []
    for step in (-n_y * n_x, n_y * n_x):
        at = np.minimum(np.searchsorted(sorted_keys, keys + step), len(keys) - 1)
        found = sorted_keys[at] == keys + step
        found_scores.append(np.where(found, scores[order][at], np.nan))
    return found_scores[0], found_scores[1]


def z_smoothed_patient_scores(cases, per_case, name: str, top_k: int) -> np.ndarray:
    """zmean:K or zsupport:K (module docstring) of each case, in `cases` order."""
    ids = np.concatenate([c.patches.patient_ids for c in cases])
    coords = np.concatenate([np.asarray(c.patches.coords).reshape(-1, 3) for c in cases])
    scores = np.concatenate(per_case).astype(np.float64)
    below, above = _z_neighbours(ids, scores, coords)
    if name == "zmean":
        stacked = np.stack([scores, below, above])
        smoothed = np.nansum(stacked, axis=0) / np.sum(~np.isnan(stacked), axis=0)
    else:
        smoothed = np.minimum(scores, np.nan_to_num(np.fmax(below, above), nan=0.0))
    by_patient = top_k_mean_scores(ids, smoothed, top_k)
    return np.array([by_patient[c.patient_id] for c in cases])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle")
    add_validation_cohort_options(parser)
    parser.add_argument("--stride", type=int,
                        help="crop the validation patches at this stride instead of the "
                             "bundle's (a test-time lever: denser windows for small tumours)")
    parser.add_argument("--json", help="also write the rows as JSON")
    args = parser.parse_args()
    bundle = load_bundle(args.bundle)
    config = bundle.config
    if args.stride:
        config = replace(config, patches=replace(config.patches, stride_px=args.stride))
        bundle = replace(bundle, config=config)
    _, cases = validation_cohort(args, config)
    per_case = score_cases(bundle.build_model(), cases, config.decide.test_time_flips,
                           config.train.precision, config.model)
    truth = np.array([c.has_tumour for c in cases])
    own = cohort_patient_scores(cases, per_case, bundle.patch_threshold, config)
    rows = []
    print(f"{len(cases)} validation patients ({truth.sum()} with tumour); bundle's score "
          f"{config.decide.score_name}, tta={config.decide.test_time_flips}")
    candidates = {decide.score_name: cohort_patient_scores(
        cases, per_case, bundle.patch_threshold, replace(config, decide=decide))
        for decide in CANDIDATES}
    candidates.update({f"{name}:{k}": z_smoothed_patient_scores(cases, per_case, name, k)
                       for name, k in Z_CANDIDATES})
    for name, scores in candidates.items():
        auc = delong_auc_ci(truth, scores)
        diff = delong_test(truth, scores, own)
        rows.append({"score": name, "auc": auc.estimate, "low": auc.low,
                     "high": auc.high, "diff": diff["difference"], "p": diff["p_value"]})
        print(f"  {name:<12} AUC {auc.estimate:.3f} [{auc.low:.3f}, {auc.high:.3f}]"
              f"  vs own {diff['difference']:+.3f} (p = {diff['p_value']:.2f})")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
