"""Shared by the benchmarks that score the same validation patches of dense CT bundles several
ways (`ct_centre_scored.py`, `ct_dihedral_tta.py`): the pooled top-1 of each way, and the
printed comparison with the bundle's own score. Validation cohorts only."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

import numpy as np
import torch
from bench_ct_learning_curve import (
    SMALL_MM,
    generator_diameters,
    sensitivity_at_specificity,
    validation_cohort,
)
from ct_ensemble_validation import _versus
from rich.progress import track

from cadx.bundle import PatchModelBundle, load_bundle

# (bundle, its network, the case's (N, C, P, P) patches, its (N, P, P) organ masks) -> one
# patch-probability array per variant.
ScoreVariants = Callable[[PatchModelBundle, torch.nn.Module, np.ndarray, np.ndarray],
                         list[np.ndarray]]


def run(description: str, variants: Sequence[str], score: ScoreVariants, *,
        needs_tta: bool = False) -> None:
    """A benchmark's command line (--data, --bundle NAME=BUNDLE repeated, --cohorts): loads
    the bundles, each dense and scored inside the organ (and with test-time flips if
    `needs_tta`), and runs `compare_variants`."""
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="cohort and patch-store cache folder")
    parser.add_argument("--bundle", action="append", required=True,
                        help="NAME=BUNDLE (dense, scored inside the organ)")
    parser.add_argument("--cohorts", default="202:60,303:200",
                        help="validation SEED:N,... (default %(default)s)")
    args = parser.parse_args()
    bundles = {name: load_bundle(path) for name, path in
               (item.split("=", 1) for item in args.bundle)}
    if not all(b.config.model.organ_scored for b in bundles.values()):
        parser.error("every bundle must be dense and scored inside the organ")
    if needs_tta and not all(b.config.decide.test_time_flips for b in bundles.values()):
        parser.error("every bundle must score with test-time flips (--tta)")
    compare_variants(args, bundles, variants, score)


def compare_variants(args: argparse.Namespace, bundles: dict[str, PatchModelBundle],
                     variants: Sequence[str], score: ScoreVariants) -> None:
    """Score every validation phantom's patches with each bundle the ways `score` gives,
    then print per bundle and variant the pooled top-1 patient AUC, the same for tumours under
    2 cm against the tumour-free phantoms (both paired against the first variant) and the
    tumours under 2 cm found at specificity 0.90."""
    top1 = {(name, v): [] for name in bundles for v in variants}
    truth: list[bool] = []
    diameters: list[float] = []
    for cohort in args.cohorts.split(","):
        seed, n = (int(v) for v in cohort.split(":"))
        cohort_args = argparse.Namespace(data=args.data, val_seed=seed, val_patients=n)
        cohort_truth = None
        for name, bundle in bundles.items():
            folder, cases = validation_cohort(cohort_args, bundle.config)
            model = bundle.build_model()
            for case in track(cases, description=f"{name} {cohort}"):
                probabilities = score(bundle, model,
                                      np.asarray(case.patches.patches[:], dtype=np.float32),
                                      np.asarray(case.patches.organ_masks[:], dtype=bool))
                for v, p in zip(variants, probabilities, strict=True):
                    top1[(name, v)].append(float(p.max()))
            ids = [(c.patient_id, c.has_tumour) for c in cases]
            if cohort_truth is None:
                cohort_truth = ids
            elif cohort_truth != ids:
                raise SystemExit(f"{name}: not the same patients in cohort {cohort}")
        truth += [has_tumour for _, has_tumour in cohort_truth]
        size = generator_diameters(folder)
        diameters += [size[patient_id] for patient_id, _ in cohort_truth]
    y = np.array(truth, dtype=bool)
    small = y & (np.array(diameters) < SMALL_MM)
    in_small_set = small | ~y
    print(f"{len(y)} validation phantoms ({y.sum()} with tumour, {small.sum()} under 2 cm), "
          f"cohorts {args.cohorts}, patient score top-1")
    for name in bundles:
        base = np.array(top1[(name, variants[0])])
        for v in variants:
            s = np.array(top1[(name, v)])
            paired = v != variants[0]
            small_line = _versus(small[in_small_set], s[in_small_set], base[in_small_set],
                                 paired)
            found, total = sensitivity_at_specificity(y, small, s)
            print(f"  {name:8s} {v:7s} AUC {_versus(y, s, base, paired)}  < 2 cm vs "
                  f"tumour-free {small_line}  SN < 2 cm at SP >= 0.90: {found}/{total}",
                  flush=True)
