"""One CT bundle's test figures pooled over several `cadx evaluate` reports (issue 14).

A single 80- or 200-phantom test cohort moves a detector's AUC by several hundredths; pooling
every fresh test cohort a bundle was evaluated on gives its steadiest test estimate. Reads each
report's `patients.csv` (patient score, truth, the tumour's longest axial diameter measured on
its label, as the report's size rows use it), and prints per cohort and
pooled: patient AUC (DeLong 95 % CI), specificity and sensitivity for tumours under 2 cm and
under 1 cm at the bundle's own patient threshold (Wilson 95 % CIs), and, descriptively, the
sensitivity under 2 cm at the thresholds that give specificity 0.85 / 0.90 / 0.93 on the pooled
phantoms themselves (chosen on test phantoms, so a description of the ROC, not an operating
point). Chooses nothing.

Run:
    python benchmarks/ct_pooled_test.py ct_ref_run16/reference.cadx \\
        ct_ref_run16/report ct_ref_run16/report_test34034 ct_ref_run16/report_test37037
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from cadx.bundle import load_bundle
from cadx.decide.roc import specificity_operating_point
from cadx.evaluate.stats import delong_auc_ci, wilson_interval

SMALL_MM, TINY_MM = 20.0, 10.0


def read_report(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Truth, patient scores and measured tumour diameters (nan: no tumour) of one report."""
    with open(folder / "patients.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    truth = np.array([r["has_tumour"] == "True" for r in rows])
    scores = np.array([float(r["patient_score"]) for r in rows])
    diameters = np.array([float(r["tumour_diameter_mm"] or "nan") for r in rows])
    return truth, scores, diameters


def _count(hits: np.ndarray) -> str:
    ci = wilson_interval(int(hits.sum()), len(hits))
    return f"{ci.estimate:.3f} [{ci.low:.3f}, {ci.high:.3f}] ({int(hits.sum())}/{len(hits)})"


def summary(truth: np.ndarray, scores: np.ndarray, diameters: np.ndarray,
            threshold: float) -> str:
    """AUC, SP, SN < 2 cm and SN < 1 cm at `threshold`, one line."""
    auc = delong_auc_ci(truth, scores)
    called = scores > threshold
    small, tiny = truth & (diameters < SMALL_MM), truth & (diameters < TINY_MM)
    return (f"n {len(truth)}  AUC {auc.estimate:.3f} [{auc.low:.3f}, {auc.high:.3f}]  "
            f"SP {_count(~called[~truth])}  SN < 2 cm {_count(called[small])}  "
            f"< 1 cm {int(called[tiny].sum())}/{int(tiny.sum())}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", help="the evaluated bundle (its patient threshold)")
    parser.add_argument("reports", nargs="+", help="`cadx evaluate` output folders")
    args = parser.parse_args()
    threshold = load_bundle(args.bundle).patient_threshold
    parts = [read_report(Path(folder)) for folder in args.reports]
    print(f"{args.bundle}: patient threshold {threshold:.4f}")
    for folder, (truth, scores, diameters) in zip(args.reports, parts, strict=True):
        print(f"  {folder}: {summary(truth, scores, diameters, threshold)}")
    truth, scores, diameters = (np.concatenate(column) for column in zip(*parts, strict=True))
    print(f"  pooled: {summary(truth, scores, diameters, threshold)}")
    small = truth & (diameters < SMALL_MM)
    for specificity in (0.85, 0.90, 0.93):
        point = specificity_operating_point(truth, scores, specificity)
        called = scores > point.threshold
        print(f"  pooled, threshold set on these phantoms at SP >= {specificity:.2f} "
              f"(descriptive): SP {(~called[~truth]).mean():.3f}, SN < 2 cm "
              f"{called[small].mean():.3f} ({int(called[small].sum())}/{int(small.sum())})")


if __name__ == "__main__":
    main()
