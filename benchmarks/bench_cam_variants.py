"""Grad-CAM variants compared by the pointing game on one trained 2D bundle's validation
patients (issue 13: CAMs that point at the lesion). CAM settings are chosen here, on the
bundle's own validation split (its summary names those patients); the test part is scored
only with `--part test` for the variant already chosen.

Run (a BUS-BRA bundle from `bench_us_transfer.py --out DIR` or `cadx train-images`):
    python benchmarks/bench_cam_variants.py DIR/busbra_efficientnet_lite0_seed0.cadx \\
        --dataset busbra
Variants: gradcam (cadx's default), gradcampp (Grad-CAM++), and either with +flip (the map
averaged with the map of the left-right mirror image, mirrored back); any of them with @PX
(e.g. gradcam@320: the map computed on the image resized to PX, a finer CAM-layer grid, and
resized back; the model's score is not involved), and any of them with *LAYER (e.g.
gradcam*blocks.10: the map multiplied by the Grad-CAM map of module LAYER, a finer block; for
EfficientNet-Lite0 blocks.10 ends the H/16 stage).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_us_transfer import DATASETS, SHARED

from cadx.evaluate.images import cam_quality
from cadx.image_bundle import load_image_bundle
from cadx.io.images import load_image_dataset, read_images

VARIANTS = ("gradcam", "gradcam+flip", "gradcampp", "gradcampp+flip")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle")
    parser.add_argument("--dataset", choices=sorted(DATASETS), required=True)
    parser.add_argument("--part", choices=("validation", "test"), default="validation")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    args = parser.parse_args()
    variants = args.variants.split(",")
    unknown = sorted({v.partition("@")[0].partition("*")[0] for v in variants} - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    make_manifest, folder = DATASETS[args.dataset]
    if not (SHARED / folder).is_dir():
        print(f"{SHARED / folder} not found: this benchmark needs the shared public data")
        return 1
    bundle = load_image_bundle(args.bundle)
    patients = set(bundle.summary["split"][args.part])
    dataset = load_image_dataset(make_manifest(SHARED / folder,
                                               Path(tempfile.mkdtemp()) / "manifest.csv"),
                                 progress=False)
    records = [r for r in dataset.records if r.patient_id in patients]
    images = read_images(records, bundle.size_px, bundle.channels, progress=False)
    labels = np.array([r.label for r in records])
    print(f"{args.bundle}: {args.part} part, {len(patients)} patients, {len(records)} images "
          f"({int(labels.sum())} malignant), {bundle.size_px} px")
    print("| CAM | malignant pointing game (chance) | malignant mass in mask "
          "| benign pointing game (chance) | wall |")
    print("|---|---|---|---|---|")
    for variant in variants:
        name, _, px = variant.partition("@")
        name, _, fuse_layer = name.partition("*")
        method, _, flip = name.partition("+")
        start = time.perf_counter()
        cams = cam_quality(bundle, records, images, labels, method, flip == "flip",
                           int(px) if px else None, fuse_layer or None)
        cells = []
        for name in ("malignant", "benign"):
            c = cams.get(name)
            cells.append("-" if c is None else
                         f"{c.pointing_game:.2f} ({c.pointing_hits}/{c.n}) "
                         f"[{c.pointing_game_ci.low:.2f}, "
                         f"{c.pointing_game_ci.high:.2f}] ({c.chance:.2f})")
        mass = cams["malignant"].mass_in_mask if "malignant" in cams else float("nan")
        print(f"| {variant} | {cells[0]} | {mass:.2f} | {cells[1]} "
              f"| {time.perf_counter() - start:.0f} s |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
