"""Phantom synthesis: one process against one per core, on the same cohort.

Each patient is drawn from its own child seed, so the worker processes write the same bytes as
one process does (tests/test_synth_ct.py); the demo and the benchmarks' cohorts use the default.

Run: python benchmarks/bench_synthesis.py [--patients 16]
Both are measured in this one process and printed as a ratio, since absolute times on a shared
2-core machine are noisy.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from cadx.synth.ct_phantom import CohortSpec, default_synthesis_workers, write_msd_cohort


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--patients", type=int, default=16)
    args = parser.parse_args()
    spec = CohortSpec(n_patients=args.patients, seed=7)
    workers = default_synthesis_workers(args.patients)
    seconds = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, n in (("1 process", 1), (f"{workers} processes", workers)):
            start = time.perf_counter()
            write_msd_cohort(Path(tmp) / name.replace(" ", "_"), spec, progress=False,
                             workers=n)
            seconds[name] = time.perf_counter() - start
    base = seconds["1 process"]
    print(f"{args.patients} phantoms {spec.shape_zyx} (default shape)")
    for name, value in seconds.items():
        print(f"  {name:12s} {value:6.1f} s  {base / value:4.2f}x")


if __name__ == "__main__":
    main()
