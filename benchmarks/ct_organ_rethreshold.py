"""A dense CT bundle scored inside the organ: thresholds re-chosen on its own validation patients,
then tested once beside the bundle as trained (issue 14, the organ-restricted patch score).

The bundle's network is kept; its patch score becomes the largest pixel logit inside the organ
mask (`--patch-score-region organ`), and both thresholds are chosen again, by max Youden, on the
validation patients recorded in the bundle (re-cropped from the training cohort with organ
masks). The new bundle is written to --out; with --test-seed both bundles are evaluated on
that phantom cohort (`cadx evaluate`'s report for each, under --out's folder).

Run:
    python benchmarks/ct_organ_rethreshold.py ct_ref_run9b/reference.cadx --data bench_ct \\
        --out ct_ref_run9b_organ/reference.cadx --test-seed 26026
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from bench_ct_learning_curve import cached_cohort
from ct_reference_run import small_tumour_sensitivity

from cadx.bundle import load_bundle, save_bundle
from cadx.io.dataset import load_dataset
from cadx.patches.cohort import patch_cohort
from cadx.train.pipeline import choose_thresholds
from cadx.workflows import evaluate_dataset


def _patient_line(report: Path) -> str:
    patient = json.loads((report / "metrics.json").read_text())["levels"]["patient"]
    m = patient["metrics"]
    small = small_tumour_sensitivity(patient)
    return (f"patient AUC {m['auc']['estimate']:.3f} [{m['auc']['low']:.3f}, "
            f"{m['auc']['high']:.3f}], SN {m['sensitivity']['estimate']:.3f}, SP "
            f"{m['specificity']['estimate']:.3f}, SN < 2 cm "
            f"{small.get('detected')}/{small.get('positives')} at {patient['threshold']:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", help="a dense CT bundle (--patch-network unet)")
    parser.add_argument("--data", required=True, help="cohort cache folder")
    parser.add_argument("--out", required=True, help="the organ-scored bundle to write")
    parser.add_argument("--train-seed", type=int, default=101)
    parser.add_argument("--train-patients", type=int, default=300)
    parser.add_argument("--test-seed", type=int, help="evaluate both bundles on this cohort")
    parser.add_argument("--test-patients", type=int, default=80)
    args = parser.parse_args()
    data = Path(args.data)
    bundle = load_bundle(args.bundle)
    if not bundle.config.model.dense:
        parser.error(f"{args.bundle}: not a dense patch network")
    config = replace(bundle.config, model=replace(bundle.config.model, score_region="organ"))
    folder = cached_cohort(data, f"train_seed{args.train_seed}_n{args.train_patients}",
                           args.train_patients, args.train_seed, False)
    wanted = set(bundle.summary["split"]["validation"])
    refs = [ref for ref in load_dataset(folder) if ref.patient_id in wanted]
    if len(refs) != len(wanted):
        parser.error(f"{folder}: holds {len(refs)} of the bundle's {len(wanted)} validation "
                     "patients; give the cohort it was trained on")
    validation = patch_cohort(refs, config, progress=False)
    patch_point, patient_point, points = choose_thresholds(bundle.build_model(), validation,
                                                           config)
    summary = dict(bundle.summary)
    summary["validation"] = dict(summary["validation"], patch_auc=patch_point.auc,
                                 patient_auc=patient_point.auc,
                                 patient_auc_by_score={k: p.auc for k, p in points.items()},
                                 rethresholded_from=str(args.bundle))
    organ = replace(bundle, config=config, patch_operating_point=patch_point,
                    patient_operating_point=patient_point, patient_operating_points=points,
                    summary=summary)
    out = save_bundle(organ, args.out)
    print(f"{len(validation)} validation patients of {args.bundle}: window-scored patch AUC "
          f"{bundle.summary['validation']['patch_auc']:.3f}, patient AUC "
          f"{bundle.summary['validation']['patient_auc']:.3f}; organ-scored patch AUC "
          f"{patch_point.auc:.3f}, patient AUC {patient_point.auc:.3f} -> {out}", flush=True)
    if args.test_seed is None:
        return
    test = cached_cohort(data, f"test_seed{args.test_seed}_n{args.test_patients}",
                         args.test_patients, args.test_seed, False)
    for name, path in (("window", Path(args.bundle)), ("organ", out)):
        report = out.parent / f"report_{name}_seed{args.test_seed}"
        evaluate_dataset(path, test, report, progress=False)
        print(f"test seed {args.test_seed}, {name}-scored: {_patient_line(report)}", flush=True)


if __name__ == "__main__":
    main()
