"""Seconds per CT patient, read -> preprocess -> patches -> score -> decide, stage by stage.

Run: python benchmarks/bench_end_to_end.py [--patients 3] [--model model.cadx]
Writes synthetic abdominal CT phantoms (cadx.synth, 40 x 384 x 384 at 2.5 x 0.9 x 0.9 mm) and
diagnoses each with `cadx.workflows.diagnose_file`, the path of `cadx diagnose`, the organ
label as the mask. Without --model the network has random weights (speed does not depend on
them). The first patient is a warm-up and is not counted.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from cadx.bundle import PatchModelBundle, save_bundle
from cadx.decide.roc import OperatingPoint
from cadx.io.dataset import load_dataset
from cadx.models.patch_network import build_patch_network
from cadx.synth.ct_phantom import CohortSpec, write_msd_cohort
from cadx.workflows import DEMO_CONFIG, diagnose_file

STAGES = ("read", "preprocess", "patches", "score", "decide")


def random_bundle(path: Path) -> Path:
    """A bundle with the demo's settings and an untrained network."""
    torch.manual_seed(0)
    point = OperatingPoint(0.5, 0.0, 0.0, 0.0, 0.5, (0.0, 1.0), (0.0, 1.0))
    network = build_patch_network(DEMO_CONFIG.model, DEMO_CONFIG.patches.size_px,
                                  DEMO_CONFIG.patches.channels, pretrained=False)
    bundle = PatchModelBundle(config=DEMO_CONFIG, state_dict=network.state_dict(),
                              patch_operating_point=point, patient_operating_point=point)
    return save_bundle(bundle, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--patients", type=int, default=3)
    parser.add_argument("--model", help="a trained bundle (default: random weights)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_msd_cohort(root / "ct", CohortSpec(n_patients=args.patients + 1, seed=3),
                         progress=False)
        model = Path(args.model) if args.model else random_bundle(root / "model.cadx")
        quiet = Console(quiet=True)
        rows, totals, patches = [], [], []
        for i, ref in enumerate(load_dataset(root / "ct")):
            start = time.perf_counter()
            diagnosis = diagnose_file(model, ref.image_path, ref.label_path, None, console=quiet)
            if i == 0:
                continue  # warm-up: imports, first allocation, oneDNN kernel selection
            totals.append(time.perf_counter() - start)
            rows.append([diagnosis.timings_s.get(stage, 0.0) for stage in STAGES])
            patches.append(diagnosis.n_patches)
    stage_s = np.mean(rows, axis=0)
    total_s = float(np.mean(totals))
    print(f"{len(totals)} patients, 40 x 384 x 384 voxels, mean {np.mean(patches):.0f} "
          f"patches of 50 px (stride 25); torch threads {torch.get_num_threads()}")
    print(f"{'stage':<12} {'s / patient':>11} {'share':>6}")
    for stage, seconds in zip(STAGES, stage_s, strict=True):
        print(f"{stage:<12} {seconds:11.3f} {seconds / total_s:6.0%}")
    other = total_s - stage_s.sum()
    print(f"{'other':<12} {other:11.3f} {other / total_s:6.0%}  (bundle load, checks)")
    print(f"{'total':<12} {total_s:11.3f}   -> {3600 / total_s:.0f} patients/hour on this "
          "machine, one process")


if __name__ == "__main__":
    main()
