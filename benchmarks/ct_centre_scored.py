"""A dense CT bundle's patch score taken in each window's centre only, on validation phantoms.

The dense UNet sees each 50 px window alone (padded), so the pixels near a window's border are
judged with half their context: a duct or bowel wall cut by the border can look like a small
dark blob there. With stride 25 the windows' central 25 x 25 px squares tile the plane, so every
pixel is the centre of one window: scoring a patch by its largest pixel logit inside the organ
*and* inside its central square (`centre`) still looks at every organ pixel once, always with
full context (what MONAI's Gaussian-weighted sliding window does softly). A window whose centre
holds no organ pixel scores 0 (its organ pixels are the centre of a neighbouring window).
Prints, per bundle, the pooled top-1 patient AUC (DeLong 95 % CI) of the bundle's own score
(`organ`) and of `centre`, the paired difference, the same for tumours under 2 cm against the
tumour-free phantoms, and the tumours under 2 cm found at specificity 0.90.
Validation cohorts only (seeds 202 and 303 by default); no test phantom is read.

Run:
    python benchmarks/ct_centre_scored.py --data bench_ct \\
        --bundle run16=ct_ref_run16/reference.cadx --bundle run19=ct_ref_run19/reference.cadx
"""

from __future__ import annotations

import argparse

import numpy as np
from bench_ct_learning_curve import (
    SMALL_MM,
    generator_diameters,
    sensitivity_at_specificity,
    validation_cohort,
)
from ct_organ_restricted_score import restricted_probabilities
from rich.progress import track

from cadx.bundle import load_bundle
from cadx.evaluate.stats import delong_auc_ci, delong_test


def centre_square(size_px: int, stride_px: int) -> np.ndarray:
    """(P, P) mask of a window's central stride x stride square (the windows' centres tile
    the plane when the stride is at most the size)."""
    lo = (size_px - stride_px) // 2
    mask = np.zeros((size_px, size_px), dtype=bool)
    mask[lo:lo + stride_px, lo:lo + stride_px] = True
    return mask


def _auc_line(truth: np.ndarray, scores: np.ndarray, reference: np.ndarray | None) -> str:
    auc = delong_auc_ci(truth, scores)
    text = f"{auc.estimate:.3f} [{auc.low:.3f}, {auc.high:.3f}]"
    if reference is not None:
        diff = delong_test(truth, scores, reference)
        text += f" ({diff['difference']:+.3f}, p = {diff['p_value']:.2f})"
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
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
    variants = ("organ", "centre")
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
            centre = centre_square(bundle.config.patches.size_px,
                                   bundle.config.patches.stride_px)
            for case in track(cases, description=f"{name} {cohort}"):
                organ = np.asarray(case.patches.organ_masks[:], dtype=bool)
                in_centre = organ & centre
                patches = np.asarray(case.patches.patches[:], dtype=np.float32)
                probabilities = restricted_probabilities(
                    model, patches, [organ, in_centre],
                    bundle.config.decide.test_time_flips, bundle.config.train.precision)
                probabilities[1][~in_centre.any(axis=(1, 2))] = 0.0
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
        base = np.array(top1[(name, "organ")])
        for v in variants:
            s = np.array(top1[(name, v)])
            paired = v != "organ"
            small_line = _auc_line(small[in_small_set], s[in_small_set],
                                   base[in_small_set] if paired else None)
            found, total = sensitivity_at_specificity(y, small, s)
            print(f"  {name:8s} {v:7s} AUC {_auc_line(y, s, base if paired else None)}  "
                  f"< 2 cm vs tumour-free {small_line}  SN < 2 cm at SP >= 0.90: "
                  f"{found}/{total}", flush=True)


if __name__ == "__main__":
    main()
