"""Ensembles of CT bundles on pooled validation phantoms (issue 14).

Scores every bundle's patches on the validation cohorts (each bundle with its own flips and
precision), averages the patch probabilities of each named ensemble, and prints the pooled top-1
patient AUC (DeLong 95 % CI) of every bundle and ensemble with the paired difference to the
first bundle, overall and for tumours under 2 cm (the generator's diameter) against the
tumour-free phantoms, and how many tumours under 2 cm each finds at the threshold that keeps
specificity >= 0.90 on the same phantoms. Each bundle is scored on its own crop of the
cohorts; an ensemble's bundles must share their patch settings, so that their patches line up.
Validation cohorts only (seeds 202 and 303 by default); no test phantom is read.

Run:
    python benchmarks/ct_ensemble_validation.py --data bench_ct \\
        --bundle run1=ct_reference/reference.cadx --bundle run4=ct_ref_ptw/reference.cadx \\
        --ensemble E2=run1,run4
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from bench_ct_learning_curve import (
    SMALL_MM,
    generator_diameters,
    sensitivity_at_specificity,
    validation_cohort,
)

from cadx.bundle import load_bundle
from cadx.evaluate.stats import delong_auc_ci, delong_test
from cadx.train.pipeline import score_cases


def top1_scores(patch_scores: list[np.ndarray]) -> np.ndarray:
    """Each patient's highest patch probability."""
    return np.array([float(s.max()) for s in patch_scores])


def mean_patch_scores(members: list[list[np.ndarray]]) -> list[np.ndarray]:
    """Per patient, the patch probabilities averaged over the ensemble's members."""
    return [np.mean(np.stack(per_model), axis=0) for per_model in zip(*members, strict=True)]


def _versus(truth: np.ndarray, scores: np.ndarray, reference: np.ndarray, paired: bool) -> str:
    """AUC [DeLong CI] of `scores`, and its paired difference to `reference`'s if `paired`."""
    auc = delong_auc_ci(truth, scores)
    text = f"{auc.estimate:.3f} [{auc.low:.3f}, {auc.high:.3f}]"
    if paired:
        diff = delong_test(truth, scores, reference)
        text += f" ({diff['difference']:+.3f}, p = {diff['p_value']:.2f})"
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="cohort and patch-store cache folder")
    parser.add_argument("--bundle", action="append", required=True, help="NAME=BUNDLE")
    parser.add_argument("--ensemble", action="append", default=[],
                        help="NAME=MEMBER,MEMBER,... (bundle names)")
    parser.add_argument("--cohorts", default="202:60,303:200",
                        help="validation SEED:N,... (default %(default)s)")
    args = parser.parse_args()
    bundles = dict(item.split("=", 1) for item in args.bundle)
    ensembles = {name: members.split(",") for name, members in
                 (item.split("=", 1) for item in args.ensemble)}
    for name, members in ensembles.items():
        if unknown := set(members) - set(bundles):
            parser.error(f"ensemble {name}: no bundle named {', '.join(sorted(unknown))}")
    loaded = {name: load_bundle(path) for name, path in bundles.items()}
    for name, members in ensembles.items():
        if len({loaded[m].config.patches for m in members}) > 1:
            parser.error(f"ensemble {name}: its bundles' patch settings differ, so their "
                         "patches do not line up")
    truth: list[bool] = []
    diameters: list[float] = []
    scores: dict[str, list[np.ndarray]] = {name: [] for name in loaded}
    for cohort in args.cohorts.split(","):
        seed, n = (int(v) for v in cohort.split(":"))
        cohort_args = argparse.Namespace(data=args.data, val_seed=seed, val_patients=n)
        cohort_truth = None
        for name, bundle in loaded.items():  # each bundle on its own crop of the cohort
            folder, cases = validation_cohort(cohort_args, bundle.config)
            scores[name] += score_cases(bundle.build_model(), cases,
                                        bundle.config.decide.test_time_flips,
                                        bundle.config.train.precision,
                                        bundle.config.model)
            if cohort_truth is None:
                cohort_truth = [(c.patient_id, c.has_tumour) for c in cases]
            elif cohort_truth != [(c.patient_id, c.has_tumour) for c in cases]:
                raise SystemExit(f"{name}: not the same patients in cohort {cohort}")
        truth += [has_tumour for _, has_tumour in cohort_truth]
        size = generator_diameters(folder)
        diameters += [size[patient_id] for patient_id, _ in cohort_truth]
    patient = {name: top1_scores(s) for name, s in scores.items()}
    for name, members in ensembles.items():
        patient[name] = top1_scores(mean_patch_scores([scores[m] for m in members]))
    y = np.array(truth, dtype=bool)
    diameter = np.array(diameters)
    small = y & (diameter < SMALL_MM)
    in_small_set = small | ~y  # tumours under 2 cm and the tumour-free phantoms
    print(f"{len(y)} validation phantoms ({y.sum()} with tumour, {small.sum()} under 2 cm), "
          f"cohorts {args.cohorts}, patient score top-1")
    reference = next(iter(patient))
    for name, s in patient.items():
        line = f"  {name:<8} AUC {_versus(y, s, patient[reference], name != reference)}"
        line += "  < 2 cm vs tumour-free " + _versus(
            small[in_small_set], s[in_small_set], patient[reference][in_small_set],
            name != reference)
        found, total = sensitivity_at_specificity(y, small, s)
        print(f"{line}  SN < 2 cm at SP >= 0.90: {found}/{total}", flush=True)
    out = Path(args.data) / "ensemble_validation_scores.npz"
    np.savez(out, truth=y, diameter=diameter, **patient)
    print(f"patient scores: {out}")


if __name__ == "__main__":
    main()
