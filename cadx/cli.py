"""The `cadx` command line: parses arguments and calls the stages; user errors print one line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from rich.console import Console

from cadx import __version__
from cadx.config import (
    LabelConvention,
    ModelConfig,
    PatchConfig,
    PipelineConfig,
    PreprocessConfig,
    TrainConfig,
)
from cadx.errors import CadxError

console = Console(stderr=False)


def _int_tuple(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        message = f"expected comma-separated integers, got {text!r}"
        raise argparse.ArgumentTypeError(message) from None


def _float_tuple(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        message = f"expected comma-separated numbers, got {text!r}"
        raise argparse.ArgumentTypeError(message) from None


def _add_pipeline_options(parser: argparse.ArgumentParser) -> None:
    d_pre, d_patch, d_train = PreprocessConfig(), PatchConfig(), TrainConfig()
    g = parser.add_argument_group("labels")
    g.add_argument("--organ-labels", type=_int_tuple, default=LabelConvention().organ_values,
                   help="label values of the organ (default 1)")
    g.add_argument("--tumour-labels", type=_int_tuple, default=LabelConvention().tumour_values,
                   help="label values of the tumour (default 2)")
    g = parser.add_argument_group("preprocessing")
    g.add_argument("--slice-thickness", type=float, default=d_pre.slice_thickness_mm,
                   help="resample to this slice thickness, mm (default %(default)s)")
    g.add_argument("--dilation", type=int, default=d_pre.dilation_kernel_px,
                   help="in-plane dilation kernel of the organ label, px (default %(default)s)")
    g.add_argument("--window-level", type=float, default=d_pre.window_level_hu,
                   help="HU (default %(default)s)")
    g.add_argument("--window-width", type=float, default=d_pre.window_width_hu,
                   help="HU (default %(default)s)")
    g.add_argument("--intensity", choices=("window", "percentile"), default=d_pre.intensity,
                   help="'window' for CT, 'percentile' (organ 1-99 %%) for MR")
    g = parser.add_argument_group("patches")
    g.add_argument("--patch-size", type=int, default=d_patch.size_px, help="px (default 50)")
    g.add_argument("--stride", type=int, default=None,
                   help="px; default = patch size (no overlap); 20-80 %% overlap allowed")
    g.add_argument("--patch-start", choices=("corner", "organ"), default=d_patch.start,
                   help="start the window grid at the image corner or the organ's bounding box")
    g = parser.add_argument_group("model and training")
    g.add_argument("--no-batch-norm", action="store_true",
                   help="the Table-1 network exactly, without BatchNorm after each convolution")
    g.add_argument("--batch-size", type=int, default=d_train.batch_size,
                   help="patches per step (default %(default)s; the seed used 2560)")
    g.add_argument("--epochs", type=int, default=d_train.max_epochs, help="maximum epochs")
    g.add_argument("--lr", type=float, default=d_train.learning_rate, help="Adam learning rate")
    g.add_argument("--reduce-lr-patience", type=int, default=d_train.reduce_lr_patience,
                   help="epochs without validation-loss improvement before halving the LR")
    g.add_argument("--early-stop-patience", type=int, default=d_train.early_stop_patience,
                   help="epochs without validation-loss improvement before stopping")
    g.add_argument("--monitor", choices=("loss", "auc"), default=d_train.monitor,
                   help="what reduce-LR and early stopping watch on validation (seed: loss)")
    g.add_argument("--val-fraction", type=float, default=d_train.validation_fraction)
    g.add_argument("--test-fraction", type=float, default=d_train.test_fraction)
    g.add_argument("--seed", type=int, default=d_train.seed)


def _add_bootstrap_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n-boot", type=int, default=1000,
                        help="bootstrap resamples for the intervals (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")


def _pipeline_config(args: argparse.Namespace) -> PipelineConfig:
    return PipelineConfig(
        labels=LabelConvention(args.organ_labels, args.tumour_labels),
        preprocess=PreprocessConfig(args.slice_thickness, args.dilation, args.window_level,
                                    args.window_width, args.intensity),
        patches=PatchConfig(args.patch_size, args.stride or args.patch_size, args.patch_start),
        model=ModelConfig(batch_norm=not args.no_batch_norm),
        train=TrainConfig(batch_size=args.batch_size, max_epochs=args.epochs,
                          learning_rate=args.lr, reduce_lr_patience=args.reduce_lr_patience,
                          early_stop_patience=args.early_stop_patience,
                          validation_fraction=args.val_fraction,
                          test_fraction=args.test_fraction, seed=args.seed,
                          monitor=args.monitor),
    )


def _cmd_synth(args: argparse.Namespace) -> int:
    from cadx.synth.ct_phantom import CohortSpec, write_msd_cohort

    spec = CohortSpec(n_patients=args.patients, tumour_fraction=args.tumour_fraction,
                      seed=args.seed)
    if args.shape:
        spec = replace(spec, shape_zyx=args.shape)
    if args.spacing:
        spec = replace(spec, spacing_zyx_mm=args.spacing)
    out = write_msd_cohort(args.out, spec)
    console.print(f"wrote {spec.n_patients} synthetic CT patients to {out}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from cadx.workflows import train_from_dataset

    train_from_dataset(args.dataset, args.out, _pipeline_config(args), console=console,
                       progress=not args.quiet)
    return 0


def _cmd_diagnose(args: argparse.Namespace) -> int:
    from cadx.workflows import diagnose_file

    diagnose_file(args.model, args.image, args.organ_mask, args.out, console=console)
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from cadx.workflows import evaluate_dataset

    evaluate_dataset(args.model, args.dataset, args.out, console=console,
                     progress=not args.quiet, n_boot=args.n_boot, seed=args.seed)
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from cadx.evaluate.predictions import report_predictions

    report_predictions(args.predictions, args.out, threshold=args.threshold, n_boot=args.n_boot,
                       seed=args.seed, console=console)
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from cadx.evaluate.predictions import compare_predictions

    compare_predictions(args.predictions, args.models, out_path=args.out, console=console)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from cadx.workflows import run_demo

    run_demo(Path(args.out), n_patients=args.patients, seed=args.seed, console=console,
             progress=not args.quiet)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cadx", description=__doc__)
    parser.add_argument("--version", action="version", version=f"cadx {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="synthetic cohort -> train -> thresholds -> test report")
    p.add_argument("--out", default="demo_out", help="output folder (default %(default)s)")
    p.add_argument("--patients", type=int, default=60, help="cohort size (default 60)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("synth", help="make a synthetic cohort")
    synth = p.add_subparsers(dest="kind", required=True)
    p = synth.add_parser("ct", help="abdominal CT phantoms with pancreas and tumours (MSD layout)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--patients", type=int, default=60)
    p.add_argument("--tumour-fraction", type=float, default=0.5)
    p.add_argument("--shape", type=_int_tuple, help="z,y,x voxels")
    p.add_argument("--spacing", type=_float_tuple, help="z,y,x mm")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_synth)

    p = sub.add_parser("train", help="train a patch model on an MSD/nnU-Net folder or CSV")
    p.add_argument("dataset", help="folder with dataset.json, or a CSV manifest (image,label)")
    p.add_argument("--out", required=True, help="model bundle to write (.cadx)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_pipeline_options(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("diagnose", help="score one patient with a trained bundle")
    p.add_argument("model", help="model bundle (.cadx)")
    p.add_argument("image", help="CT/MR volume (.nii/.nii.gz) or a 2D image")
    p.add_argument("--organ-mask", help="organ mask on the image's grid (non-zero = organ)")
    p.add_argument("--out", help="write the result as JSON here (default: print only)")
    p.set_defaults(func=_cmd_diagnose)

    p = sub.add_parser("evaluate", help="patch- and patient-level metrics on a labelled set")
    p.add_argument("model", help="model bundle (.cadx)")
    p.add_argument("dataset", help="folder with dataset.json, or a CSV manifest")
    p.add_argument("--out", required=True, help="report folder")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_bootstrap_options(p)
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("report", help="report any model's scores from a predictions CSV")
    p.add_argument("predictions",
                   help="CSV with patient_id, y_true, score[, model][, subgroup columns...]")
    p.add_argument("--out", required=True, help="report folder")
    p.add_argument("--threshold", type=float,
                   help="score > threshold is positive (default: max Youden on these data, "
                        "which is optimistic)")
    _add_bootstrap_options(p)
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("compare", help="DeLong test of two models' AUCs, paired by patient")
    p.add_argument("predictions", help="CSV with patient_id, y_true, score, model")
    p.add_argument("--models", required=True, type=lambda text: text.split(","),
                   help="the two models to compare, as a,b")
    p.add_argument("--out", help="also write the result as JSON here")
    p.set_defaults(func=_cmd_compare)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CadxError as exc:
        print(f"cadx: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cadx: interrupted; no partial outputs were kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
