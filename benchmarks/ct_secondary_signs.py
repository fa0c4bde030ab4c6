"""Secondary signs through a patient-label network, measured on validation phantoms (issue 14).

The patch CNN learns "this patch touches tumour"; a patch showing a dilated common bile duct or
main pancreatic duct away from the tumour is a negative to it, although radiologists find small
pancreatic cancers by exactly those signs (the double-duct sign). This lever fine-tunes a copy
of a bundle's network on the same training patches with every patch labelled by its *patient's*
label (naive multiple-instance learning), so it may learn whatever in a gland goes with cancer,
and scores patients by that network alone or combined with the bundle's top-1 score. The
candidate is chosen on one validation cohort (seed 202) and measured once on another (seed 303,
no bundle trains on either). Nothing here may see a test cohort.

Run (the reference run's bundle and training cohort; `--data` the reference run's cache):
    python benchmarks/ct_secondary_signs.py BUNDLE --data bench_ct --json secondary.json
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from bench_ct_learning_curve import (
    add_bundle_cohort_options,
    bundle_split_cases,
    clipped_logit,
    small_tumours,
    validation_cases,
)
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from cadx.bundle import load_bundle
from cadx.evaluate.stats import delong_auc_ci, delong_test
from cadx.patches.grid import PatchSet
from cadx.patches.store import join_patches
from cadx.train.fit import fit_patch_cnn
from cadx.train.pipeline import score_cases


def patient_labelled(patches: PatchSet, label_of: dict[str, int]) -> PatchSet:
    """The same patches, each labelled with its patient's label."""
    labels = np.array([label_of[str(p)] for p in patches.patient_ids], dtype=np.int64)
    return PatchSet(patches.patches, patches.patient_ids, patches.coords, labels)


def aggregates(per_case: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Per-patient scores of one network's patch probabilities."""
    return {"mean": np.array([s.mean() for s in per_case]),
            "top10": np.array([np.sort(s)[-10:].mean() for s in per_case]),
            "top1": np.array([s.max() for s in per_case])}


def scores(bundle, tuned, cases) -> dict[str, np.ndarray]:
    config = bundle.config
    flips, precision = config.decide.test_time_flips, config.train.precision
    base = np.array([s.max() for s in score_cases(bundle.build_model(), cases, flips,
                                                   precision, config.model)])
    out = {"run top-1": base}
    for name, values in aggregates(score_cases(tuned, cases, flips, precision)).items():
        out[f"PL {name}"] = values
    return out


def _auc_line(name: str, truth: np.ndarray, values: np.ndarray, small: np.ndarray) -> str:
    auc = delong_auc_ci(truth, values)
    keep = small | ~truth
    small_auc = delong_auc_ci(truth[keep], values[keep]).estimate
    return (f"  {name:<24} AUC {auc.estimate:.3f} [{auc.low:.3f}, {auc.high:.3f}]  "
            f"< 2 cm vs tumour-free {small_auc:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_bundle_cohort_options(parser)
    parser.add_argument("--choose-seed", type=int, default=202)
    parser.add_argument("--choose-patients", type=int, default=60)
    parser.add_argument("--measure-seed", type=int, default=303)
    parser.add_argument("--measure-patients", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--json", help="write the scores and choices as JSON")
    args = parser.parse_args()
    bundle = load_bundle(args.bundle)
    config = bundle.config
    data = Path(args.data)
    parts = bundle_split_cases(bundle, data, args.train_patients, args.train_seed)
    label_of = {c.patient_id: int(c.has_tumour) for part in parts.values() for c in part}
    started = time.perf_counter()
    train_cfg = replace(config.train, learning_rate=args.lr, max_epochs=args.epochs,
                        monitor="auc", early_stop_patience=args.epochs,
                        reduce_lr_patience=args.epochs)
    tuned, history = fit_patch_cnn(patient_labelled(join_patches(parts["train"]), label_of),
                                   patient_labelled(join_patches(parts["validation"]), label_of),
                                   train_cfg, model_config=config.model,
                                   initial_state=bundle.state_dict, progress=False)
    print(f"patient-label network: {len(parts['train'])} training phantoms, best epoch "
          f"{history.best_epoch + 1} of {len(history.validation_auc)}; val patch AUC against "
          f"patient labels by epoch {[round(a, 3) for a in history.validation_auc]} "
          f"({(time.perf_counter() - started) / 60:.1f} min)")
    results: dict[str, object] = {"args": vars(args)}
    chosen_scores = {}
    for role, seed, n in (("choose", args.choose_seed, args.choose_patients),
                          ("measure", args.measure_seed, args.measure_patients)):
        val_cases = validation_cases(data, seed, n, config)
        truth = np.array([c.has_tumour for c in val_cases])
        small = small_tumours(val_cases)
        values = scores(bundle, tuned, val_cases)
        chosen_scores[role] = (truth, small, values)
        results[role] = {"seed": seed, "truth": truth.tolist(),
                         **{k: v.tolist() for k, v in values.items()}}
    truth, small, values = chosen_scores["choose"]
    # Combinations: logistic regression on the two logits, fitted on the choosing cohort.
    combos = {}
    for agg in ("mean", "top10", "top1"):
        features = clipped_logit(np.column_stack([values["run top-1"], values[f"PL {agg}"]]))
        combos[f"run top-1 + PL {agg}"] = make_pipeline(StandardScaler(), LogisticRegression(
            C=1.0)).fit(features, truth)
    for name, model in combos.items():
        agg = name.rsplit(" ", 1)[1]
        for role in ("choose", "measure"):
            _, _, vals = chosen_scores[role]
            features = clipped_logit(np.column_stack([vals["run top-1"], vals[f"PL {agg}"]]))
            vals[name] = model.predict_proba(features)[:, 1]
    candidates = [k for k in values if k != "run top-1"]
    choose_auc = {k: delong_auc_ci(truth, values[k]).estimate for k in values}
    chosen = max(candidates, key=lambda k: choose_auc[k])
    print(f"seed {args.choose_seed} ({len(truth)} phantoms, choosing):")
    for name in values:
        print(_auc_line(name, truth, values[name], small))
    print(f"chosen on seed {args.choose_seed}: {chosen}")
    truth, small, values = chosen_scores["measure"]
    print(f"seed {args.measure_seed} ({len(truth)} phantoms, measuring):")
    for name in values:
        print(_auc_line(name, truth, values[name], small))
    diff = delong_test(truth, values[chosen], values["run top-1"])
    print(f"  chosen vs run top-1: {diff['difference']:+.3f} (paired DeLong p = "
          f"{diff['p_value']:.2f})")
    results["chosen"] = chosen
    results["measure_difference"] = diff
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=float))


if __name__ == "__main__":
    main()
