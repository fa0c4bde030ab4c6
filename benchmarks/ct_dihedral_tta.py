"""A dense CT bundle scored with all eight symmetries of the square at test time, on validation
phantoms.

cadx averages each patch's probability over four views (as is, left-right, up-down and both
flipped: `--tta`). The square has eight symmetries; the other four are the same flips of the
transposed patch (the 90-degree rotations). A tumour-free gland's brightest window is partly
noise, which more views average down, while a tumour answers in every view, so eight views
might separate them better than four, even for a network trained with flips only. This scores
the validation phantoms both ways with the same network and patches (inside the organ, as the
bundle does) and prints the pooled top-1 patient AUC (DeLong 95 % CI) of each, the paired
difference, the same for tumours under 2 cm against the tumour-free phantoms, and the tumours
under 2 cm found at specificity 0.90. Validation cohorts only (seeds 202 and 303 by default);
no test phantom is read.

Run:
    python benchmarks/ct_dihedral_tta.py --data bench_ct \\
        --bundle run16=ct_ref_run16/reference.cadx --bundle run19=ct_ref_run19/reference.cadx
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from bench_ct_learning_curve import (
    SMALL_MM,
    generator_diameters,
    sensitivity_at_specificity,
    validation_cohort,
)
from ct_centre_scored import _auc_line
from rich.progress import track

from cadx.bundle import load_bundle
from cadx.models.dense_patch_net import largest_logit
from cadx.train.precision import autocast

BATCH = 128
FLIPS = [(), (-1,), (-2,), (-2, -1)]  # cadx's four test-time views


@torch.inference_mode()
def four_and_eight_view_probabilities(model: torch.nn.Module, patches: np.ndarray,
                                      organ: np.ndarray, precision: str
                                      ) -> tuple[np.ndarray, np.ndarray]:
    """Each patch's probability averaged over cadx's four flip views, and over those and the
    same four of the transposed patch (each view scored inside its own view of the organ)."""
    model.eval()
    four, eight = [], []
    for i in range(0, len(patches), BATCH):
        x = torch.from_numpy(patches[i:i + BATCH])
        x = x[:, None] if x.ndim == 3 else x
        region = torch.from_numpy(organ[i:i + BATCH])
        views, regions = [], []
        for transpose in (False, True):
            xt = x.transpose(-1, -2) if transpose else x
            rt = region.transpose(-1, -2) if transpose else region
            views += [xt.flip(d) if d else xt for d in FLIPS]
            regions += [rt.flip(d) if d else rt for d in FLIPS]
        with autocast(precision):
            logits = largest_logit(model(torch.cat(views).contiguous(), pixels=True).float(),
                                   torch.cat(regions))
        probabilities = torch.sigmoid(logits).view(8, len(x))
        four.append(probabilities[:4].mean(dim=0))
        eight.append(probabilities.mean(dim=0))
    return (torch.cat(four).numpy().astype(np.float64),
            torch.cat(eight).numpy().astype(np.float64))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="cohort and patch-store cache folder")
    parser.add_argument("--bundle", action="append", required=True,
                        help="NAME=BUNDLE (dense, scored inside the organ, with --tta)")
    parser.add_argument("--cohorts", default="202:60,303:200",
                        help="validation SEED:N,... (default %(default)s)")
    args = parser.parse_args()
    bundles = {name: load_bundle(path) for name, path in
               (item.split("=", 1) for item in args.bundle)}
    if not all(b.config.model.organ_scored and b.config.decide.test_time_flips
               for b in bundles.values()):
        parser.error("every bundle must be dense, scored inside the organ, with --tta")
    variants = ("4 views", "8 views")
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
                probabilities = four_and_eight_view_probabilities(
                    model, np.asarray(case.patches.patches[:], dtype=np.float32),
                    np.asarray(case.patches.organ_masks[:], dtype=bool),
                    bundle.config.train.precision)
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
            small_line = _auc_line(small[in_small_set], s[in_small_set],
                                   base[in_small_set] if paired else None)
            found, total = sensitivity_at_specificity(y, small, s)
            print(f"  {name:8s} {v:7s} AUC {_auc_line(y, s, base if paired else None)}  "
                  f"< 2 cm vs tumour-free {small_line}  SN < 2 cm at SP >= 0.90: "
                  f"{found}/{total}", flush=True)


if __name__ == "__main__":
    main()
