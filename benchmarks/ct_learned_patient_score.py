"""A learned patient score for the CT detector, measured on validation phantoms only (issue 14).

Each patient's patch probabilities (a bundle's own crop, flips and precision) are summarised as
[logit top-1, logit mean of the top 3, logit mean of the top 10, share of patches at or above
the bundle's patch threshold, share at or above 0.5]; a standardised L2 logistic regression is
fitted on one validation cohort (seed 202, 60 phantoms) and scored on another (seed 303, 200),
against the bundle's top-1 score on the same phantoms (paired DeLong). No test phantom is read.

Run:
    python benchmarks/ct_learned_patient_score.py ct_reference/reference.cadx --data bench_ct
"""

from __future__ import annotations

import argparse

import numpy as np
from bench_ct_learning_curve import clipped_logit, validation_cohort
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from cadx.bundle import load_bundle
from cadx.evaluate.stats import delong_auc_ci, delong_test
from cadx.train.pipeline import score_cases


def patient_summary(probabilities: np.ndarray, patch_threshold: float) -> np.ndarray:
    """The five numbers the learned score sees for one patient's patch probabilities."""
    ranked = np.sort(probabilities)[::-1]
    tops = clipped_logit([ranked[0], ranked[:3].mean(), ranked[:10].mean()])
    return np.array([*tops, float((probabilities >= patch_threshold).mean()),
                     float((probabilities >= 0.5).mean())])


def cohort_summaries(bundle, data: str, seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(patients, 5) summaries and the truth of one validation cohort."""
    _, cases = validation_cohort(argparse.Namespace(data=data, val_seed=seed, val_patients=n),
                                 bundle.config)
    scores = score_cases(bundle.build_model(), cases, bundle.config.decide.test_time_flips,
                         bundle.config.train.precision, bundle.config.model)
    threshold = bundle.patch_operating_point.threshold
    return (np.stack([patient_summary(s, threshold) for s in scores]),
            np.array([c.has_tumour for c in cases], dtype=bool))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle")
    parser.add_argument("--data", required=True, help="cohort and patch-store cache folder")
    parser.add_argument("--fit-cohort", default="202:60", help="SEED:N the score is fitted on")
    parser.add_argument("--eval-cohort", default="303:200", help="SEED:N it is measured on")
    args = parser.parse_args()
    bundle = load_bundle(args.bundle)
    (fit_seed, fit_n), (eval_seed, eval_n) = (tuple(int(v) for v in c.split(":"))
                                              for c in (args.fit_cohort, args.eval_cohort))
    x_fit, y_fit = cohort_summaries(bundle, args.data, fit_seed, fit_n)
    x_eval, y_eval = cohort_summaries(bundle, args.data, eval_seed, eval_n)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0)).fit(x_fit, y_fit)
    learned = model.predict_proba(x_eval)[:, 1]
    top1 = x_eval[:, 0]
    print(f"fitted on seed {fit_seed} ({fit_n} phantoms), measured on seed {eval_seed} "
          f"({eval_n} phantoms, {y_eval.sum()} with tumour)")
    for name, score in (("top-1", top1), ("learned", learned)):
        auc = delong_auc_ci(y_eval, score)
        print(f"  {name:<8} AUC {auc.estimate:.3f} [{auc.low:.3f}, {auc.high:.3f}]")
    diff = delong_test(y_eval, learned, top1)
    print(f"  learned vs top-1 {diff['difference']:+.3f} (paired DeLong p = "
          f"{diff['p_value']:.2f})")
    coefficients = model[-1].coef_[0]
    names = ("logit top-1", "logit top-3", "logit top-10", "share >= patch thr", "share >= 0.5")
    print("  coefficients (standardised): " + ", ".join(
        f"{n} {c:+.2f}" for n, c in zip(names, coefficients, strict=True)))


if __name__ == "__main__":
    main()
