"""A patient-level ensemble of CT bundles, tested once on a fresh phantom cohort (issue 14).

The ensemble's patient score is the mean of its bundles' top-1 patient scores (bundles of other
slice thicknesses or patch sizes combine this way; their patches need not line up). Its patient
threshold is the Youden point of the same ensemble on the pooled validation phantoms, read from
the scores `ct_ensemble_validation.py` saved: nothing is chosen on the test cohort. Prints the
test patient AUC (DeLong 95 % CI), sensitivity, specificity and sensitivity for tumours under
2 cm (Wilson CIs) and the detections by size.

Run (after ct_ensemble_validation.py with the same bundle names):
    python benchmarks/ct_ensemble_test.py --data bench_ct --test-seed 20020 \\
        --bundle run1=ct_reference/reference.cadx --bundle run6=ct_ref_st25/reference.cadx \\
        --val-scores bench_ct/ensemble_validation_scores.npz
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from bench_ct_learning_curve import cached_cohort, patch_store_path
from ct_ensemble_validation import top1_scores

from cadx.bundle import load_bundle
from cadx.decide.roc import youden_operating_point
from cadx.evaluate.stats import delong_auc_ci, wilson_interval
from cadx.io.dataset import load_dataset
from cadx.scale.distributed import patched_cases
from cadx.train.pipeline import score_cases

SIZE_BINS = ((0.0, 10.0, "< 1 cm"), (10.0, 20.0, "1-2 cm"), (20.0, 40.0, "2-4 cm"),
             (40.0, np.inf, "> 4 cm"))


def rate(hits: int, total: int) -> str:
    """`hits`/`total` as a proportion with its Wilson 95 % CI."""
    ci = wilson_interval(hits, total)
    return f"{ci.estimate:.3f} [{ci.low:.3f}, {ci.high:.3f}] ({hits}/{total})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="cohort and patch-store cache folder")
    parser.add_argument("--bundle", action="append", required=True, help="NAME=BUNDLE")
    parser.add_argument("--val-scores", required=True,
                        help="ct_ensemble_validation.py's saved patient scores (.npz)")
    parser.add_argument("--test-seed", type=int, required=True,
                        help="a phantom seed no training, lever or threshold used")
    parser.add_argument("--test-patients", type=int, default=80)
    args = parser.parse_args()
    bundles = dict(item.split("=", 1) for item in args.bundle)
    saved = np.load(args.val_scores)
    if missing := sorted(set(bundles) - set(saved.files)):
        parser.error(f"{args.val_scores} holds no validation scores of {', '.join(missing)}")
    val_truth = saved["truth"]
    val_scores = np.mean([saved[name] for name in bundles], axis=0)
    threshold = youden_operating_point(val_truth, val_scores).threshold
    data = Path(args.data)
    folder = cached_cohort(data, f"test_seed{args.test_seed}_n{args.test_patients}",
                           args.test_patients, args.test_seed, False)
    refs = load_dataset(folder)
    per_bundle, cases = [], []
    for path in bundles.values():
        bundle = load_bundle(path)
        cases = patched_cases(refs, bundle.config,
                              patch_store=patch_store_path(data, folder, bundle.config),
                              progress=False)
        per_bundle.append(top1_scores(score_cases(
            bundle.build_model(), cases, bundle.config.decide.test_time_flips,
            bundle.config.train.precision, bundle.config.model)))
    scores = np.mean(per_bundle, axis=0)
    truth = np.array([c.has_tumour for c in cases])
    size = np.array([c.tumour_diameter_mm or 0.0 for c in cases])
    positive = scores > threshold
    auc = delong_auc_ci(truth, scores)
    print(f"ensemble {'+'.join(bundles)} (mean top-1), test seed {args.test_seed}: "
          f"{len(cases)} phantoms ({truth.sum()} with tumour); patient threshold {threshold:.4f} "
          f"(Youden on {len(val_truth)} pooled validation phantoms)")
    print(f"  patient AUC   {auc.estimate:.3f} [{auc.low:.3f}, {auc.high:.3f}]")
    print(f"  SN            {rate(int((positive & truth).sum()), int(truth.sum()))}")
    print(f"  SP            {rate(int((~positive & ~truth).sum()), int((~truth).sum()))}")
    small = truth & (size < 20.0)
    print(f"  SN < 2 cm     {rate(int((positive & small).sum()), int(small.sum()))}")
    for low, high, name in SIZE_BINS:
        group = truth & (size >= low) & (size < high)
        print(f"  {name:<7} {int((positive & group).sum())}/{int(group.sum())}")


if __name__ == "__main__":
    main()
