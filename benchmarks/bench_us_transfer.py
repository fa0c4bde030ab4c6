"""2D track on real ultrasound: ImageNet-pretrained EfficientNet-Lite0 fine-tuned vs networks
trained from scratch, on patient-level held-out test sets, with wall time and Grad-CAM
localisation against the lesion masks where the data has them.

Run (needs ../shared/data; each model is one `cadx train-images` run):
    python benchmarks/bench_us_transfer.py --dataset busbra --archs efficientnet_lite0 \
        --seeds 0 --test-fold 1 [--size 160 --epochs 8 --precision bf16]
    python benchmarks/bench_us_transfer.py --dataset ddti --archs efficientnet_lite0,resnet18
An ensemble is one `--archs` entry joined by '+' (one `cadx train-images --arch a,b` run); the
same architecture k times is a seed ensemble:
    python benchmarks/bench_us_transfer.py --dataset busbra --test-fold 1 \
        --archs efficientnet_lite0+efficientnet_lite0+efficientnet_lite0

Prints one Markdown row per (model, seed): validation AUC (what settings are chosen on), test
AUC per image and per exam with 95 % CIs, test sensitivity/specificity at the validation-Youden
exam threshold, the pointing game on validation (where CAM settings are chosen) and test
malignant images (with its chance level), and wall time; for an ensemble, also its first member
alone on the same validation images (the single network of that seed, trained identically).
Nothing is chosen on the test patients.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from cadx.config import PRETRAINED_SIZE_PX, ImageModelConfig, ImageTrainConfig
from cadx.evaluate.images import cam_quality
from cadx.image_bundle import ImageModelBundle, save_image_bundle
from cadx.io.images import load_image_dataset
from cadx.io.public_datasets import busbra_manifest, ddti_manifest, mmotu_manifest
from cadx.models.backbones import is_pretrained_arch
from cadx.train.image_pipeline import train_image_ensemble

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DATASETS = {"busbra": (busbra_manifest, "busbra"), "ddti": (ddti_manifest, "ddti-thyroid-crops"),
            "mmotu": (mmotu_manifest, "mmotu-otu2d")}


def _interval(metric) -> str:
    return f"{metric.estimate:.3f} [{metric.low:.3f}, {metric.high:.3f}]"


def first_member(bundle: ImageModelBundle) -> ImageModelBundle:
    """The ensemble's first network alone (weight 1)."""
    return replace(bundle, networks=[replace(bundle.networks[0], weight=1.0)],
                   state_dicts=bundle.state_dicts[:1])


def _pointing_game(outcome, part: str, bundle: ImageModelBundle | None = None) -> str:
    """Grad-CAM pointing game of `bundle` (default the outcome's) on the malignant images of
    `part` (validation: where the CAM settings are chosen; test: reported), with its CI and
    chance level; "-" without masks."""
    records = outcome.data.records[part]
    if not any(r.mask for r in records):
        return "-"
    cams = cam_quality(bundle or outcome.bundle, records, outcome.data.images[part],
                       outcome.data.labels(part))
    if "malignant" not in cams:
        return "-"
    c = cams["malignant"]
    return (f"{c.pointing_game:.2f} ({c.pointing_hits}/{c.n}) [{c.pointing_game_ci.low:.2f}, "
            f"{c.pointing_game_ci.high:.2f}] ({c.chance:.2f})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=sorted(DATASETS), required=True)
    parser.add_argument("--archs", default="efficientnet_lite0")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--test-fold", help="BUS-BRA: the authors' fold used as the test set")
    parser.add_argument("--size", type=int, default=PRETRAINED_SIZE_PX,
                        help="input size of the pretrained networks (default %(default)s)")
    parser.add_argument("--scratch-size", type=int, default=ImageModelConfig().size_px,
                        help="input size of the from-scratch networks (default %(default)s)")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--schedule", default="onecycle")
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--width", type=float, default=0.5, help="from-scratch networks")
    parser.add_argument("--lesion-mask-weight", type=float, default=0.0,
                        help="lesion-mask guidance of the CAM layer (0: off)")
    parser.add_argument("--no-cam", action="store_true")
    parser.add_argument("--out", type=Path, help="also save each bundle here "
                                                 "(<dataset>_<arch>_seed<k>.cadx)")
    args = parser.parse_args()
    make_manifest, folder = DATASETS[args.dataset]
    if not (SHARED / folder).is_dir():
        print(f"{SHARED / folder} not found: this benchmark needs the shared public data")
        return 1
    manifest = make_manifest(SHARED / folder, Path(tempfile.mkdtemp()) / "manifest.csv")
    dataset = load_image_dataset(manifest, progress=False)
    print(f"{args.dataset}: {len(dataset)} images, {len(dataset.patient_ids)} patients; "
          f"test fold {args.test_fold or '-'}; {args.epochs} epochs max, {args.schedule} LR "
          f"{args.lr}, {args.precision}, lesion-mask weight {args.lesion_mask_weight}")
    print("| model | seed | px | val AUC | val pointing game | test AUC images | test AUC exams "
          "| exam SN | exam SP | pointing game (chance) | wall |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for model in args.archs.split(","):
        members = model.split("+")
        size = args.size if any(map(is_pretrained_arch, members)) else args.scratch_size
        for seed in map(int, args.seeds.split(",")):
            config = ImageModelConfig(
                size_px=size, width=args.width, seed=seed, test_fold=args.test_fold,
                train=ImageTrainConfig(max_epochs=args.epochs, learning_rate=args.lr,
                                       schedule=args.schedule, precision=args.precision,
                                       seed=seed, lesion_mask_weight=args.lesion_mask_weight))
            start = time.perf_counter()
            outcome = train_image_ensemble(dataset, members, config, progress=False)
            wall = time.perf_counter() - start
            if args.out is not None:
                save_image_bundle(outcome.bundle,
                                  args.out / f"{args.dataset}_{model}_seed{seed}.cadx")
            images, exams = outcome.test_levels
            val_pointing, pointing = ("-" if args.no_cam else _pointing_game(outcome, part)
                                      for part in ("validation", "test"))
            if len(members) > 1 and not args.no_cam:
                print(f"first member alone: validation AUC "
                      f"{outcome.bundle.networks[0].validation_auc:.3f}, validation pointing "
                      f"game {_pointing_game(outcome, 'validation', first_member(outcome.bundle))}")
            kind = " (ImageNet)" if is_pretrained_arch(members[0]) else " (scratch)"
            print(f"| {model}{kind} "
                  f"| {seed} | {size} | {outcome.bundle.summary['validation_auc_ensemble']:.3f} "
                  f"| {val_pointing} | {_interval(images.metrics['auc'])} "
                  f"| {_interval(exams.metrics['auc'])} "
                  f"| {_interval(exams.metrics['sensitivity'])} "
                  f"| {_interval(exams.metrics['specificity'])} | {pointing} "
                  f"| {wall / 60:.1f} min |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
