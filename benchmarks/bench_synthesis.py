"""Phantom synthesis: one process against one per core, on the same cohort.

Each patient is drawn from its own child seed, so the worker processes write the same bytes as
one process does (tests/test_synth_ct.py); the demo and the benchmarks' cohorts use the default.

Run: python benchmarks/bench_synthesis.py [--patients 16] [--repeats 2]
Both are measured in this one process (the best of --repeats runs after one warm-up, as every
benchmark here) and printed as a ratio, since absolute times on a shared 2-core machine are noisy.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
from pathlib import Path

from timing import best_of

from cadx.synth.ct_phantom import CohortSpec, default_synthesis_workers, write_msd_cohort


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--patients", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    spec = CohortSpec(n_patients=args.patients, seed=7)
    workers = default_synthesis_workers(args.patients)
    seconds = {}
    folders = itertools.count()
    with tempfile.TemporaryDirectory() as tmp:
        for name, n in (("1 process", 1), (f"{workers} processes", workers)):
            seconds[name] = best_of(args.repeats, lambda n=n: write_msd_cohort(
                Path(tmp) / str(next(folders)), spec, progress=False, workers=n))
    base = seconds["1 process"]
    print(f"{args.patients} phantoms {spec.shape_zyx} (default shape)")
    for name, value in seconds.items():
        print(f"  {name:12s} {value:6.1f} s  {base / value:4.2f}x")


if __name__ == "__main__":
    main()
