"""Pool validation cohorts to compare CT bundles on more patients (issue 14).

Each bundle's per-patient scores come from `ct_miss_analysis.py --json` on the same validation
cohorts (one JSON per cohort); this prints each bundle's pooled patient AUC with its DeLong
95 % CI and the paired DeLong difference to the first bundle. Validation cohorts only.

Run:
    python benchmarks/ct_pool_validation.py run1=r1_202.json,r1_303.json \\
        run2=r2_202.json,r2_303.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from cadx.evaluate.stats import delong_auc_ci, delong_test


def pooled(files: list[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Patient keys (file index + id), truth and scores of the cohorts in `files`."""
    keys, truth, scores = [], [], []
    for k, name in enumerate(files):
        for patient in json.loads(Path(name).read_text())["patients"]:
            keys.append(f"{k}:{patient['patient_id']}")
            truth.append(patient["has_tumour"])
            scores.append(patient["score"])
    return keys, np.array(truth, dtype=bool), np.array(scores)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="NAME=cohort1.json,cohort2.json,...")
    args = parser.parse_args()
    runs = {}
    for item in args.runs:
        name, _, files = item.partition("=")
        if not files:
            parser.error(f"{item!r}: expected NAME=FILE[,FILE...]")
        runs[name] = pooled(files.split(","))
    first = next(iter(runs))
    keys0, truth0, scores0 = runs[first]
    print(f"{len(truth0)} validation patients pooled ({truth0.sum()} with tumour)")
    for name, (keys, truth, scores) in runs.items():
        if keys != keys0 or not np.array_equal(truth, truth0):
            raise SystemExit(f"{name}: not the same patients as {first}")
        auc = delong_auc_ci(truth, scores)
        line = f"  {name:<12} AUC {auc.estimate:.3f} [{auc.low:.3f}, {auc.high:.3f}]"
        if name != first:
            diff = delong_test(truth, scores, scores0)
            line += f"  vs {first} {diff['difference']:+.3f} (p = {diff['p_value']:.2f})"
        print(line)


if __name__ == "__main__":
    main()
