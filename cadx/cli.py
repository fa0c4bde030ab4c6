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
    CADX_DECIDE,
    DEMO_PATIENTS,
    DENSE_PATCH_ARCHS,
    DICE_REDUCTIONS,
    EXAM_SCORES,
    FEATURE_SIZES_PX,
    IMAGE_CLI_EPOCHS,
    IMAGE_CLI_SCHEDULE,
    LR_SCHEDULES,
    PATCH_ARCHS,
    PATCH_LR_SCHEDULES,
    PATIENT_SCORES,
    POSITIVE_WEIGHTINGS,
    PRECISIONS,
    PRETRAINED_SIZE_PX,
    SCORE_REGIONS,
    DecideConfig,
    ImageModelConfig,
    ImageTrainConfig,
    LabelConvention,
    ModelConfig,
    PatchConfig,
    PipelineConfig,
    PreprocessConfig,
    TrainConfig,
)
from cadx.errors import CadxError, InputError
from cadx.io.limits import (
    DEFAULT_MAX_VOXELS,
    VolumeLimits,
    default_volume_limits,
    set_default_volume_limits,
)
from cadx.triage.commands import add_synth_categories_parser, add_triage_parsers

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
                   help="label values of the organ, comma-separated (default 1)")
    g.add_argument("--tumour-labels", type=_int_tuple, default=LabelConvention().tumour_values,
                   help="label values of the tumour, comma-separated (default 2)")
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
                   help="'window' for CT, 'percentile' (organ 1-99 %%) for MR (default "
                        "%(default)s)")
    g.add_argument("--in-plane-spacing", type=float, default=None, metavar="MM",
                   help="resample every scan to pixels this wide before cropping (default: "
                        "train on each scan's own pixels; the bundle records their median, "
                        "to which diagnose and evaluate resample new scans)")
    g = parser.add_argument_group("patches")
    g.add_argument("--patch-size", type=int, default=d_patch.size_px,
                   help="px (default %(default)s)")
    g.add_argument("--stride", type=int, default=None,
                   help="px; default = patch size (no overlap); 20-80 %% overlap allowed")
    g.add_argument("--patch-start", choices=("corner", "organ"), default=d_patch.start,
                   help="start the window grid at the image corner or the organ's bounding box "
                        "(default %(default)s)")
    g.add_argument("--context-slices", type=int, default=d_patch.context_slices, metavar="N",
                   help="2.5D input: N neighbouring slices on each side as extra channels "
                        "(default 0: the seed's single slice)")
    g = parser.add_argument_group("model and training")
    g.add_argument("--patch-network", choices=PATCH_ARCHS, default=ModelConfig().arch,
                   help="table1: seed 000's Table-1 CNN; efficientnet_lite0: ImageNet-pretrained "
                        "EfficientNet-Lite0 fine-tuned on the patches (1 or 3 input channels); "
                        "unet: a small UNet trained on each patch's tumour mask, scoring a "
                        "patch by its largest pixel probability (default %(default)s)")
    g.add_argument("--patch-score-region", choices=SCORE_REGIONS, default=None,
                   help="where a dense patch network takes a patch's score, its largest pixel "
                        "probability: 'organ' (inside the dilated organ mask; the default for "
                        "a dense network) or 'window' (anywhere in the patch; the only choice "
                        "for the others)")
    g.add_argument("--patch-loss-region", choices=SCORE_REGIONS, default=d_train.patch_loss_region,
                   help="where a dense patch network's patch loss takes the patch's largest "
                        "pixel logit while training: anywhere in the window, or inside the "
                        "organ mask where it is scored (needs --patch-score-region organ; "
                        "default %(default)s)")
    g.add_argument("--dice-reduction", choices=DICE_REDUCTIONS, default=d_train.dice_reduction,
                   help="a dense patch network's soft Dice loss over all pixels of the batch, "
                        "or per cancerous patch and averaged ('patch': a small tumour's mask "
                        "counts as much as a large one's) (default %(default)s)")
    g.add_argument("--unet-width", type=int, default=ModelConfig().unet_width,
                   help="the dense UNet's channels at its first level, doubled at each of its "
                        "four levels (default %(default)s: 16/32/64/128; compute grows with its "
                        "square)")
    g.add_argument("--no-batch-norm", action="store_true",
                   help="the Table-1 network exactly, without BatchNorm after each convolution")
    g.add_argument("--batch-size", type=int, default=d_train.batch_size,
                   help="patches per step (default %(default)s; the seed used 2560)")
    g.add_argument("--epochs", type=int, default=d_train.max_epochs,
                   help="maximum epochs (default %(default)s)")
    g.add_argument("--lr", type=float, default=d_train.learning_rate,
                   help="Adam learning rate (default %(default)s)")
    g.add_argument("--reduce-lr-patience", type=int, default=d_train.reduce_lr_patience,
                   help="epochs without improvement of the --monitor quantity (validation loss "
                        "or AUC) before halving the LR (default %(default)s)")
    g.add_argument("--lr-schedule", choices=PATCH_LR_SCHEDULES, default=d_train.lr_schedule,
                   help="plateau: constant --lr, halved after --reduce-lr-patience stale "
                        "epochs (the seed); onecycle: warm-up to --lr, then cosine decay over "
                        "--epochs, per step (default %(default)s)")
    g.add_argument("--early-stop-patience", type=int, default=d_train.early_stop_patience,
                   help="epochs without improvement of the --monitor quantity (validation loss "
                        "or AUC) before stopping (default %(default)s)")
    g.add_argument("--monitor", choices=("loss", "auc"), default=d_train.monitor,
                   help="what reduce-LR and early stopping watch on the validation patches "
                        "(default %(default)s, as the seed)")
    g.add_argument("--val-fraction", type=float, default=d_train.validation_fraction,
                   help="share of the patients held out for validation (default %(default)s)")
    g.add_argument("--test-fraction", type=float, default=d_train.test_fraction,
                   help="share of the patients held out for the test report (default "
                        "%(default)s)")
    g.add_argument("--seed", type=int, default=d_train.seed,
                   help="seed of the split, initialisation and batches (default %(default)s)")
    g.add_argument("--augment-patches", choices=tuple(_AUGMENTATIONS), default="flips",
                   help="none (the seed), flips (random left-right / up-down flips) or "
                        "dihedral (flips and 90-degree rotations) (default %(default)s)")
    g.add_argument("--balanced-sampling", action="store_true",
                   help="class-balanced batches (cancerous patches oversampled) instead of a "
                        "plain shuffle")
    g.add_argument("--positive-weighting", choices=POSITIVE_WEIGHTINGS,
                   default=d_train.positive_weighting,
                   help="patch: every cancerous patch weighs the same (the seed); tumour: "
                        "every patient's tumour weighs the same in total, so a small "
                        "tumour's few patches count as much as a large one's many (default "
                        "%(default)s)")
    g.add_argument("--batch-positive-fraction", type=float,
                   default=d_train.batch_positive_fraction,
                   help="share of cancerous patches per balanced batch (default %(default)s)")
    g.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="bf16: bfloat16 autocast of the forward passes on CPUs with bf16 "
                        "instructions (fp32 with a warning elsewhere); auto: bf16 where the "
                        "CPU has them, fp32 silently elsewhere (2.35x faster, validation patch "
                        "AUC not lower: docs/benchmarks.md); the bundle records what ran and "
                        "its thresholds, diagnose and evaluate score in it (default "
                        "%(default)s)")
    g = parser.add_argument_group("patient decision")
    _add_patient_score_options(g, CADX_DECIDE)
    g.add_argument("--tta", action=argparse.BooleanOptionalAction,
                   default=CADX_DECIDE.test_time_flips,
                   help="test-time augmentation: average each patch's probability over its "
                        "flips (stored in the bundle, used by diagnose and evaluate; --no-tta "
                        "for the seed's single pass) (default %(default)s)")


# --augment-patches: (random flips, random transposes), flips and transposes giving all 8
# symmetries of the square.
_AUGMENTATIONS = {"none": (False, False), "flips": (True, False), "dihedral": (True, True)}


def _add_patient_score_options(group: argparse._ArgumentGroup, default: DecideConfig) -> None:
    group.add_argument("--patient-score", choices=PATIENT_SCORES, default=default.patient_score,
                       help="fraction: share of patches above the patch threshold (the seed), "
                            "topk: mean of the top-k patch probabilities, cluster: patches in "
                            "the largest 3D cluster of positive patches (default %(default)s)")
    group.add_argument("--top-k", type=int, default=default.top_k, metavar="K",
                       help="k of --patient-score topk (default %(default)s)")


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _specificity(text: str) -> float:
    """A specificity in (0, 1] (argparse type)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}")
    return value


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(name) for name in _names(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected sizes in px like 160,224, got {text!r}") from None
    if not sizes:
        raise argparse.ArgumentTypeError("expected at least one size")
    return sizes


def _add_image_options(parser: argparse.ArgumentParser, *, trains_networks: bool = True) -> None:
    """The options of train-images and train-features; `trains_networks` False (train-features)
    says in the help that the CNN-training options are ignored."""
    d_model, d_train = ImageModelConfig(), ImageTrainConfig()
    parser.add_argument("--out", required=True, help="model bundle to write (.cadx)")
    parser.add_argument("--report", metavar="DIR", help="also write the test report folder")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--init-weights", action="append", default=[], metavar="ARCH=FILE",
                        help="start ARCH from a local state dict (repeatable); nothing is "
                             "downloaded, without it networks train from scratch")
    g = parser.add_argument_group(
        "images and networks", None if trains_networks else
        "--frozen-blocks only matters when networks are fine-tuned: train-features ignores it")
    if trains_networks:
        g.add_argument("--size", type=int, default=None,
                       help=f"images are resized to size x size px (default "
                            f"{PRETRAINED_SIZE_PX} with a pretrained network, else "
                            f"{d_model.size_px})")
    else:
        g.add_argument("--size", type=_sizes, default=None, metavar="PX[,PX...]",
                       help="images are resized to size x size px; several sizes: each is "
                            "tried and the one with the best validation AUC kept (default "
                            f"{','.join(map(str, FEATURE_SIZES_PX))} with a pretrained "
                            f"backbone, else {d_model.size_px})")
    g.add_argument("--channels", type=int, choices=(1, 3), default=d_model.channels,
                   help="1 = grey (colour converted), 3 = RGB (default %(default)s)")
    g.add_argument("--width", type=float, default=d_model.width,
                   help="network width multiplier (default %(default)s)")
    g.add_argument("--exam-score", choices=EXAM_SCORES, default=d_model.aggregation,
                   help="exam score over a patient's images (default %(default)s)")
    g.add_argument("--from-scratch", action="store_true",
                   help="EfficientNet-Lite: random initialisation instead of ImageNet weights")
    g.add_argument("--frozen-blocks", type=int, default=d_model.frozen_blocks,
                   help="EfficientNet-Lite: the stem and this many early blocks stay frozen "
                        "while fine-tuning (0 = train all; default %(default)s of 16)")
    g = parser.add_argument_group(
        "CNN training", None if trains_networks else
        "train-features trains no network (its backbones are used as they are): these options "
        "are accepted and ignored")
    # The 2D commands' recipe as measured on BUS-BRA (docs/images-2d.md): 8 one-cycle epochs.
    g.add_argument("--epochs", type=int, default=IMAGE_CLI_EPOCHS,
                   help="maximum epochs (default %(default)s)")
    g.add_argument("--batch-size", type=int, default=d_train.batch_size,
                   help="images per step (default %(default)s)")
    g.add_argument("--lr", type=float, default=d_train.learning_rate,
                   help="AdamW learning rate (default %(default)s)")
    g.add_argument("--weight-decay", type=float, default=d_train.weight_decay,
                   help="AdamW weight decay (default %(default)s)")
    g.add_argument("--early-stop-patience", type=int, default=d_train.early_stop_patience,
                   help="epochs without validation-AUC improvement before stopping (default "
                        "%(default)s)")
    g.add_argument("--no-augment", action="store_true", help="train without augmentation")
    g.add_argument("--vertical-flip", action="store_true",
                   help="also flip images upside down when augmenting (off: ultrasound has a "
                        "top and a bottom)")
    g.add_argument("--precision", choices=PRECISIONS, default=d_train.precision,
                   help="bf16: autocast training to bfloat16 on CPUs with bf16 instructions "
                        "(fp32 with a warning elsewhere); validation and inference stay fp32 "
                        "(default %(default)s)")
    g.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=IMAGE_CLI_SCHEDULE,
                   help="constant, or onecycle: warm-up then cosine decay (default "
                        "%(default)s)")
    g.add_argument("--lesion-mask-weight", type=float, default=d_train.lesion_mask_weight,
                   metavar="W",
                   help="> 0: also train the Grad-CAM layer to segment the lesion masks of the "
                        "manifest's `mask` column, this loss weighted W (default %(default)s: "
                        "off)")
    g = parser.add_argument_group("split")
    g.add_argument("--val-fraction", type=float, default=d_model.validation_fraction,
                   help="share of the patients held out for validation (default %(default)s)")
    g.add_argument("--test-fraction", type=float, default=d_model.test_fraction,
                   help="share of the patients held out for the test report (default "
                        "%(default)s)")
    g.add_argument("--group-near-duplicates", action="store_true",
                   help="merge near-duplicate images (16x16 thumbnail correlation >= 0.95) "
                        "into one patient before splitting; for data without patient ids")
    g.add_argument("--test-fold", metavar="K",
                   help="the manifest's fold K is the test set (one round of the dataset's "
                        "own cross-validation); the other folds give train and validation")
    g.add_argument("--seed", type=int, default=d_model.seed,
                   help="seed of the split, initialisation and batches (default %(default)s)")


def _add_keep_in_plane_spacing(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--keep-in-plane-spacing", action="store_true",
                        help="CT/MR patch models: score each scan's own pixels (the seed) "
                             "instead of resampling them to the model's training pixel size")


def _add_max_voxels(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-voxels", type=int, default=DEFAULT_MAX_VOXELS, metavar="N",
                        help="refuse CT/MR volumes (and resampled grids) of more voxels, read "
                             "from the header before any data (default %(default)s = "
                             "512 x 512 x 2000)")


# Arguments that name files or folders a command writes: checked before any work is done.
_OUTPUT_ARGS = {"out": "--out", "report": "--report", "cam": "--cam",
                "dicom_out": "--dicom-out", "patch_store": "--patch-store"}


def _check_outputs(args: argparse.Namespace) -> None:
    from cadx.io.outputs import check_writable

    outputs = dict(_OUTPUT_ARGS)
    if args.command == "pipeline":
        outputs["file"] = "FILE"
    for attr, option in outputs.items():
        if getattr(args, attr, None):
            check_writable(getattr(args, attr), option)


# Arguments that name files or folders a command reads, per command: checked before anything
# heavy (torch, MONAI, pandas) is imported, so a mistyped path is answered at once.
_INPUT_ARGS: dict[str, dict[str, str]] = {
    "train": {"dataset": "dataset", "seg": "segmenter bundle"},
    "train-seg": {"dataset": "dataset"},
    "diagnose": {"model": "model bundle", "images": "file", "organ_mask": "organ mask"},
    "watch": {"model": "model bundle"},
    "score-batch": {"model": "model bundle", "input": "input"},
    "evaluate": {"model": "model bundle", "dataset": "dataset",
                 "clinical_schema": "clinical schema"},
    "report": {"predictions": "file"},
    "compare": {"predictions": "file"},
    "manifest": {"root": "dataset folder"},
    "train-images": {"dataset": "dataset", "backbones_from": "model bundle"},
    "train-features": {"dataset": "dataset", "backbones_from": "model bundle"},
    "evaluate-images": {"model": "model bundle", "dataset": "dataset",
                        "clinical_schema": "clinical schema"},
    "fuse": {"model": "model bundle", "dataset": "dataset", "clinical_schema": "clinical schema"},
    "calibrate": {"model": "model bundle", "dataset": "dataset"},
    "train-router": {"dataset": "dataset"},
    "train-qc": {"dataset": "dataset"},
    "triage-train": {"data_root": "data folder"},
    "run": {"pipeline": "pipeline file", "inputs": "input", "truth": "truth file"},
    "clean": {"dataset": "dataset", "qc": "QC bundle"},
    "serve": {"models": "model folder", "token_file": "token file",
              "signing_key_file": "signing key file"},
    "sign": {"bundles": "model bundle", "signing_key_file": "signing key file"},
}


def _check_inputs(args: argparse.Namespace) -> None:
    """InputError naming the first input path of this command that does not exist."""
    for attr, what in _INPUT_ARGS.get(args.command, {}).items():
        value = getattr(args, attr, None)
        for path in value if isinstance(value, list) else [value]:
            if path and not Path(path).exists():
                raise InputError(f"{path}: {what} not found")


def _add_clinical_options(parser: argparse.ArgumentParser, *, bins: bool = True,
                          schema: bool = True) -> None:
    """--subgroup-bins, --clinical-schema and --out-of-range (see cadx.io.clinical)."""
    g = parser.add_argument_group("clinical columns")
    if bins:
        g.add_argument("--subgroup-bins", action="append", default=[],
                       metavar="COLUMN=EDGE,EDGE,...",
                       help="tabulate a numeric column in bins [a, b) (below the first edge and "
                            "at or above the last are groups too), e.g. lesion_size_mm=0,20,40; "
                            "repeatable (default: none)")
    if schema:
        g.add_argument("--clinical-schema", metavar="YAML",
                       help="schema of the clinical columns (type, unit, plausible range, "
                            "leaks_label); their values are checked against it (default: none, "
                            "columns read as categories)")
        g.add_argument("--out-of-range", choices=("error", "missing"), default="error",
                       help="a value outside the schema's range is refused (error) or set "
                            "missing with a warning each (default %(default)s)")


def _subgroup_bins(args: argparse.Namespace) -> dict[str, tuple[float, ...]]:
    from cadx.evaluate.subgroups import parse_subgroup_bins

    return parse_subgroup_bins(getattr(args, "subgroup_bins", None) or [])


def _add_bootstrap_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n-boot", type=int, default=1000,
                        help="bootstrap resamples for the intervals (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0,
                        help="bootstrap seed (default %(default)s)")


def _pipeline_config(args: argparse.Namespace) -> PipelineConfig:
    return PipelineConfig(
        labels=LabelConvention(args.organ_labels, args.tumour_labels),
        preprocess=PreprocessConfig(args.slice_thickness, args.dilation, args.window_level,
                                    args.window_width, args.intensity,
                                    in_plane_spacing_mm=args.in_plane_spacing),
        patches=PatchConfig(args.patch_size, args.stride or args.patch_size, args.patch_start,
                            context_slices=args.context_slices),
        model=ModelConfig(batch_norm=not args.no_batch_norm, arch=args.patch_network,
                          score_region=args.patch_score_region or (
                              "organ" if args.patch_network in DENSE_PATCH_ARCHS else "window"),
                          unet_width=args.unet_width),
        train=TrainConfig(batch_size=args.batch_size, max_epochs=args.epochs,
                          learning_rate=args.lr, reduce_lr_patience=args.reduce_lr_patience,
                          lr_schedule=args.lr_schedule,
                          early_stop_patience=args.early_stop_patience,
                          validation_fraction=args.val_fraction,
                          test_fraction=args.test_fraction, seed=args.seed,
                          monitor=args.monitor,
                          augment_flips=_AUGMENTATIONS[args.augment_patches][0],
                          augment_rotations=_AUGMENTATIONS[args.augment_patches][1],
                          balanced_sampling=args.balanced_sampling,
                          batch_positive_fraction=args.batch_positive_fraction,
                          positive_weighting=args.positive_weighting,
                          patch_loss_region=args.patch_loss_region,
                          dice_reduction=args.dice_reduction,
                          precision=args.precision),
        decide=DecideConfig(args.patient_score, args.top_k, test_time_flips=args.tta),
    )


def _cmd_synth(args: argparse.Namespace) -> int:
    from cadx.synth.ct_phantom import CohortSpec, write_msd_cohort

    spec = CohortSpec(n_patients=args.patients, tumour_fraction=args.tumour_fraction,
                      seed=args.seed)
    if args.shape:
        spec = replace(spec, shape_zyx=args.shape)
    if args.spacing:
        spec = replace(spec, spacing_zyx_mm=args.spacing)
    if args.dicom:
        from cadx.synth.dicom_series import write_dicom_cohort

        write_dicom_cohort(args.out, spec)
        console.print(f"wrote {spec.n_patients} synthetic CT studies (DICOM CT series + organ "
                      f"SEG, one folder per patient) to {args.out}")
        return 0
    out = write_msd_cohort(args.out, spec)
    console.print(f"wrote {spec.n_patients} synthetic CT patients to {out}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from cadx.workflows import train_from_dataset

    if not args.ddp:
        train_from_dataset(args.dataset, args.out, _pipeline_config(args), console=console,
                           progress=not args.quiet, seg=args.seg, patch_store=args.patch_store,
                           resume=args.resume)
        return 0
    from cadx.scale.distributed import process_group

    with process_group() as rank:
        train_from_dataset(args.dataset, args.out, _pipeline_config(args),
                           console=console if rank == 0 else Console(quiet=True),
                           progress=not args.quiet and rank == 0, seg=args.seg,
                           patch_store=args.patch_store, resume=args.resume)
    return 0


def _cmd_score_batch(args: argparse.Namespace) -> int:
    from cadx.scale.batch_score import score_batch

    score_batch(args.model, args.input, args.out, scheduler=args.dask_scheduler,
                n_workers=args.workers, console=console, progress=not args.quiet,
                max_voxels=args.max_voxels, keep_in_plane_spacing=args.keep_in_plane_spacing)
    return 0


def _cmd_train_seg(args: argparse.Namespace) -> int:
    from cadx.segment.config import SegConfig
    from cadx.workflows import train_segmenter_from_dataset

    config = SegConfig(organ_values=args.organ, tumour_values=args.tumour_labels,
                       slice_thickness_mm=args.slice_thickness,
                       in_plane_spacing_mm=args.pixel_spacing, max_epochs=args.epochs,
                       steps_per_epoch=args.steps_per_epoch, batch_size=args.batch_size,
                       learning_rate=args.lr, validation_fraction=args.val_fraction,
                       seed=args.seed, min_organ_volume_ml=args.min_organ_volume,
                       precision=args.precision)
    train_segmenter_from_dataset(args.dataset, args.out, config, console=console,
                                 progress=not args.quiet)
    return 0


def _cmd_diagnose(args: argparse.Namespace) -> int:
    from cadx.bundle import read_manifest
    from cadx.image_bundle import IMAGE_BUNDLE_FORMAT

    if read_manifest(args.model).get("format") == IMAGE_BUNDLE_FORMAT:
        from cadx.image_workflows import diagnose_images_command
        from cadx.io.clinical import parse_clinical_items

        diagnose_images_command(args.model, args.images, args.patient, args.cam, args.out,
                                console=console,
                                clinical=parse_clinical_items(args.clinical))
        return 0
    from cadx.workflows import diagnose_file

    if args.pacs:
        from cadx.pacs.commands import diagnose_from_pacs

        if args.images or not args.study:
            raise InputError("--pacs takes --study STUDY_UID instead of image files")
        if args.dicom_out:
            raise InputError("--dicom-out writes the DICOM results of a local folder; with "
                             "--pacs, --push-results stores them in the PACS")
        from cadx.io.clinical import parse_clinical_items

        diagnose_from_pacs(args.model, args.pacs, args.study, series_uid=args.series,
                           push=args.push_results, out_path=args.out, console=console,
                           keep_in_plane_spacing=args.keep_in_plane_spacing,
                           organ_mask_path=args.organ_mask,
                           clinical=parse_clinical_items(args.clinical))
        return 0
    if args.push_results or args.study:
        raise InputError("--study and --push-results need --pacs URL")
    if len(args.images) != 1:
        raise InputError(f"{args.model} is a CT/MR patch model: give one volume, "
                         f"not {len(args.images)} files")
    from cadx.io.clinical import parse_clinical_items

    diagnose_file(args.model, args.images[0], args.organ_mask, args.out, console=console,
                  series_uid=args.series, dicom_out=args.dicom_out,
                  keep_in_plane_spacing=args.keep_in_plane_spacing,
                  clinical=parse_clinical_items(args.clinical))
    return 0


def _cmd_watch(args: argparse.Namespace) -> int:
    from cadx.pacs.commands import watch_pacs

    if args.clinical:  # refused, not ignored: a user who gives values expects them used
        raise InputError("watch takes no --clinical: it scores every new study, of many "
                         "patients, and one patient's values would be fused into the others' "
                         "scores; score one study with its values by `cadx diagnose MODEL "
                         "--pacs URL --study UID --clinical NAME=VALUE,...`")
    watch_pacs(args.model, args.pacs, interval_s=args.interval, push=not args.no_push,
               out_dir=args.out, console=console)
    return 0


def _default_size_px(archs: Sequence[str]) -> int:
    """The image size without --size: PRETRAINED_SIZE_PX with a pretrained network among
    `archs`, else ImageModelConfig's."""
    from cadx.models.backbones import is_pretrained_arch

    if any(map(is_pretrained_arch, archs)):
        return PRETRAINED_SIZE_PX
    return ImageModelConfig().size_px


def _feature_sizes_px(args: argparse.Namespace, backbones: Sequence[str]) -> list[int]:
    """The sizes `cadx train-features` reads the images at (several: each is tried and the
    best validation AUC kept): --size; without it FEATURE_SIZES_PX with a pretrained backbone,
    else the one size of `_default_size_px`; none with --backbones-from (the source bundle's
    size is used)."""
    from cadx.models.backbones import is_pretrained_arch

    if args.size or args.backbones_from:
        return list(args.size or [])
    if any(map(is_pretrained_arch, backbones)):
        return list(FEATURE_SIZES_PX)
    return [_default_size_px(backbones)]


def _image_model_config(args: argparse.Namespace, archs: Sequence[str],
                        size_px: int | None = None) -> ImageModelConfig:
    """The image model settings from the command line; `size_px` (default: train-images'
    --size, else `_default_size_px`) the image size."""
    train = ImageTrainConfig(batch_size=args.batch_size, max_epochs=args.epochs,
                             learning_rate=args.lr, weight_decay=args.weight_decay,
                             early_stop_patience=args.early_stop_patience,
                             augment=not args.no_augment, vertical_flip=args.vertical_flip,
                             schedule=args.lr_schedule, precision=args.precision,
                             seed=args.seed, lesion_mask_weight=args.lesion_mask_weight)
    size_px = size_px or args.size or _default_size_px(archs)
    return ImageModelConfig(size_px=size_px, channels=args.channels, width=args.width,
                            aggregation=args.exam_score, validation_fraction=args.val_fraction,
                            test_fraction=args.test_fraction, seed=args.seed, train=train,
                            pretrained=not args.from_scratch, frozen_blocks=args.frozen_blocks,
                            test_fold=args.test_fold,
                            group_near_duplicates=args.group_near_duplicates)


def _init_weights(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        arch, sep, path = item.partition("=")
        if not sep or not arch or not path:
            raise InputError(f"--init-weights expects ARCH=FILE (e.g. resnet18=r18.pt), "
                             f"got {item!r}")
        out[arch] = path
    return out


def _cmd_synth_us(args: argparse.Namespace) -> int:
    from cadx.image_workflows import synth_us
    from cadx.synth.us_lesions import UltrasoundCohortSpec

    lo, hi = args.images_per_patient
    spec = UltrasoundCohortSpec(n_patients=args.patients, images_per_patient=(lo, hi),
                                malignant_fraction=args.malignant_fraction,
                                image_size_px=args.size, seed=args.seed)
    synth_us(args.out, spec, console=console)
    return 0


def _cmd_manifest(args: argparse.Namespace) -> int:
    from cadx.io.public_datasets import busbra_manifest, ddti_manifest, mmotu_manifest

    write = {"ddti": ddti_manifest, "mmotu": mmotu_manifest,
             "busbra": busbra_manifest}[args.dataset]
    out = write(args.root, args.out)
    console.print(f"{args.dataset} manifest written to {out}")
    return 0


def _cmd_train_images(args: argparse.Namespace) -> int:
    from cadx.image_workflows import train_images

    train_images(args.dataset, args.out, args.arch, _image_model_config(args, args.arch),
                 init_weights=_init_weights(args.init_weights), report_dir=args.report,
                 console=console, progress=not args.quiet)
    return 0


def _cmd_evaluate_images(args: argparse.Namespace) -> int:
    from cadx.image_workflows import evaluate_images_command

    evaluate_images_command(args.model, args.dataset, args.out, split=args.split,
                            fold=args.fold,
                            subgroup_columns=args.subgroups or [],
                            subgroup_bins=_subgroup_bins(args),
                            schema_path=args.clinical_schema, out_of_range=args.out_of_range,
                            each_image_a_patient=args.each_image_a_patient,
                            with_cam=not args.no_cam, n_boot=args.n_boot, seed=args.seed,
                            console=console, progress=not args.quiet)
    return 0


def _cmd_train_features(args: argparse.Namespace) -> int:
    from cadx.image_workflows import train_features

    backbones = [] if args.backbones == ["none"] else args.backbones
    sizes = _feature_sizes_px(args, backbones)
    config = _image_model_config(args, backbones, size_px=sizes[0] if sizes else None)
    train_features(args.dataset, args.out, backbones, args.layers, args.classifier,
                   args.texture, config, candidate_sizes=sizes,
                   backbones_from=args.backbones_from,
                   init_weights=_init_weights(args.init_weights),
                   feature_cache=args.feature_cache, report_dir=args.report,
                   console=console, progress=not args.quiet)
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    decide = None  # checked before the heavy import below, so a bad value is answered at once
    if args.patient_score is not None or args.top_k is not None:
        decide = DecideConfig(args.patient_score or "topk",
                              DecideConfig().top_k if args.top_k is None else args.top_k)
    from cadx.workflows import evaluate_dataset

    evaluate_dataset(args.model, args.dataset, args.out, console=console, decide=decide,
                     progress=not args.quiet, n_boot=args.n_boot, seed=args.seed,
                     keep_in_plane_spacing=args.keep_in_plane_spacing,
                     subgroup_bins=_subgroup_bins(args), schema_path=args.clinical_schema,
                     out_of_range=args.out_of_range)
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from cadx.evaluate.predictions import report_predictions

    report_predictions(args.predictions, args.out, threshold=args.threshold, n_boot=args.n_boot,
                       seed=args.seed, console=console, subgroup_bins=_subgroup_bins(args))
    return 0


def _cmd_fuse(args: argparse.Namespace) -> int:
    from cadx.bundle import BUNDLE_FORMAT, read_manifest

    if read_manifest(args.model).get("format") == BUNDLE_FORMAT:
        from cadx.workflows import fuse_ct_command as fuse_command
    else:
        from cadx.image_workflows import fuse_command
    fuse_command(args.model, args.dataset, args.clinical, args.out,
                 schema_path=args.clinical_schema, out_of_range=args.out_of_range,
                 seed=args.seed, console=console, progress=not args.quiet)
    return 0


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from cadx.bundle import BUNDLE_FORMAT, read_manifest

    if read_manifest(args.model).get("format") != BUNDLE_FORMAT:
        raise InputError(f"{args.model}: not a CT/MR patch bundle (cadx train); cadx calibrate "
                         "re-chooses a CT/MR model's patient threshold")
    from cadx.workflows import calibrate_command

    calibrate_command(args.model, args.dataset, args.out,
                      target_specificity=args.target_specificity, console=console,
                      progress=not args.quiet)
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


def _cmd_serve(args: argparse.Namespace) -> int:
    from cadx.serve.app import serve
    from cadx.serve.connections import ConnectionLimits

    connections = ConnectionLimits(args.max_connections, args.header_timeout,
                                   args.body_timeout)
    serve(args.models, args.host, args.port, token_file=args.token_file, workers=args.workers,
          queue_size=args.queue, max_upload_mb=args.max_upload_mb, max_voxels=args.max_voxels,
          connections=connections, require_signed=args.require_signed,
          signing_key_file=args.signing_key_file)
    return 0


def _cmd_sign(args: argparse.Namespace) -> int:
    from cadx.bundle import (
        load_signing_key,
        sign_bundle,
        signing_key_id,
        verify_bundle_signature,
    )

    key = load_signing_key(args.signing_key_file)
    for bundle in args.bundles:
        if args.check:
            verify_bundle_signature(bundle, key)
            console.print(f"{bundle}: signature valid (key id {signing_key_id(key)})")
        else:
            sign_bundle(bundle, key)
            console.print(f"{bundle}: signed (key id {signing_key_id(key)})")
    return 0


def _add_train_seg_parser(sub: argparse._SubParsersAction) -> None:
    from cadx.segment.config import SegConfig

    d = SegConfig()
    p = sub.add_parser("train-seg", help="train the organ segmenter (2.5D UNet) on an MSD/nnU-Net "
                                         "folder or CSV")
    p.add_argument("dataset", help="folder with dataset.json, or a CSV manifest (image,label)")
    p.add_argument("--out", required=True, help="segmenter bundle to write (seg.cadx)")
    p.add_argument("--organ", type=_int_tuple, default=d.organ_values,
                   help="label value(s) of the organ, comma-separated (default 1)")
    p.add_argument("--tumour-labels", type=_int_tuple, default=d.tumour_values,
                   help="label value(s) of tumour, counted as organ, comma-separated "
                        "(default 2)")
    p.add_argument("--slice-thickness", type=float, default=d.slice_thickness_mm,
                   help="segment on slices this thick, mm (default %(default)s)")
    p.add_argument("--pixel-spacing", type=float, default=d.in_plane_spacing_mm,
                   help="segment on pixels this wide, mm (default %(default)s)")
    p.add_argument("--epochs", type=int, default=d.max_epochs, help="default %(default)s")
    p.add_argument("--steps-per-epoch", type=int, default=d.steps_per_epoch,
                   help="default %(default)s")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="default %(default)s")
    p.add_argument("--lr", type=float, default=d.learning_rate, help="default %(default)s")
    p.add_argument("--val-fraction", type=float, default=d.validation_fraction,
                   help="share of the scans held out for validation (default %(default)s)")
    p.add_argument("--min-organ-volume", type=float, default=d.min_organ_volume_ml,
                   help="smaller predictions mean 'organ not found', ml (default %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed, help="default %(default)s")
    p.add_argument("--precision", choices=PRECISIONS, default=d.precision,
                   help="bf16: bfloat16 autocast of the training forward pass on CPUs with "
                        "bf16 instructions (fp32 with a warning elsewhere); validation and "
                        "segmentation stay fp32 (default %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_max_voxels(p)
    p.set_defaults(func=_cmd_train_seg)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cadx", description=_DESCRIPTION, epilog=_EPILOG)
    parser.add_argument("--version", action="version", version=f"cadx {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="synthetic cohort -> train -> thresholds -> test report")
    p.add_argument("--out", default="demo_out", help="output folder (default %(default)s)")
    p.add_argument("--patients", type=int, default=DEMO_PATIENTS,
                   help="cohort size (default %(default)s; 35 %% are test patients)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the synthetic cohort and of training (default %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("synth", help="make a synthetic cohort")
    synth = p.add_subparsers(dest="kind", required=True)
    p = synth.add_parser("ct", help="abdominal CT phantoms with pancreas and tumours (MSD layout)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--patients", type=int, default=60, help="default %(default)s")
    p.add_argument("--tumour-fraction", type=float, default=0.5,
                   help="share of patients with a tumour (default %(default)s)")
    p.add_argument("--shape", type=_int_tuple, help="z,y,x voxels (default: the phantom's own)")
    p.add_argument("--spacing", type=_float_tuple, help="z,y,x mm (default: the phantom's own)")
    p.add_argument("--seed", type=int, default=0,
                   help="the same seed draws the same cohort (default %(default)s)")
    p.add_argument("--dicom", action="store_true",
                   help="write DICOM studies (CT series + organ SEG per patient) instead")
    p.set_defaults(func=_cmd_synth)
    p = synth.add_parser("us", help="ultrasound-like lesion images, benign vs malignant, "
                                    "several per patient (class folders + manifest.csv)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--patients", type=int, default=200, help="default %(default)s")
    p.add_argument("--images-per-patient", type=_int_tuple, default=(2, 4),
                   help="lo,hi (inclusive; default 2,4)")
    p.add_argument("--malignant-fraction", type=float, default=0.5,
                   help="share of patients with a malignant lesion (default %(default)s)")
    p.add_argument("--size", type=int, default=128, help="image size, px (default %(default)s)")
    p.add_argument("--seed", type=int, default=0,
                   help="the same seed draws the same cohort (default %(default)s)")
    p.set_defaults(func=_cmd_synth_us)
    add_synth_categories_parser(synth, console)

    p = sub.add_parser("train", help="train a patch model on an MSD/nnU-Net folder or CSV")
    p.add_argument("dataset", help="folder with dataset.json, or a CSV manifest (image,label)")
    p.add_argument("--out", required=True, help="model bundle to write (.cadx)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--seg", metavar="SEG_BUNDLE",
                   help="embed this organ segmenter (cadx train-seg) so that diagnose needs "
                        "no organ mask")
    p.add_argument("--ddp", action="store_true",
                   help="distributed data-parallel training; run under torchrun "
                        "--nproc_per_node N (gloo on CPU, nccl on GPU)")
    p.add_argument("--patch-store", metavar="DIR",
                   help="crop into (or reuse) a memory-mapped patch store here and train "
                        "from it, for more patches than fit in memory")
    p.add_argument("--resume", action="store_true",
                   help="go on from the checkpoint beside --out (OUT with suffix .ckpt, "
                        "written after every epoch with --resume or --ddp)")
    _add_pipeline_options(p)
    _add_max_voxels(p)
    p.set_defaults(func=_cmd_train)

    _add_train_seg_parser(sub)

    p = sub.add_parser("diagnose", help="score one patient with a trained bundle")
    p.add_argument("model", help="model bundle (.cadx)")
    p.add_argument("images", nargs="*", metavar="IMAGE",
                   help="patch model: one CT/MR volume (.nii/.nii.gz, .nrrd, .mha) or DICOM "
                        "folder (or none with --pacs); image model: one or more 2D images "
                        "(PNG, JPEG, ...) of one patient")
    p.add_argument("--organ-mask",
                   help="organ mask on the volume's grid (non-zero = organ; NIfTI, or a DICOM "
                        "SEG file; also for a --pacs study). Required for a CT/MR patch model "
                        "unless its bundle embeds a segmenter (cadx train --seg) or the DICOM "
                        "folder (the --pacs study) holds an organ SEG; ignored by image models")
    p.add_argument("--patient", help="patient id of the images (image models; default: the "
                                     "first file's name up to its last '_')")
    p.add_argument("--cam", metavar="DIR",
                   help="image models: write a Grad-CAM overlay PNG per image into DIR")
    p.add_argument("--out", help="write the result as JSON here (default: print only)")
    p.add_argument("--clinical", action="append", default=[], metavar="NAME=VALUE,...",
                   help="models with a fusion model (cadx fuse; 2D image or CT): the patient's "
                        "clinical values, e.g. age=54,device=GE (also with --pacs); the fused "
                        "score is shown beside the image-only one, which stands alone when a "
                        "value is missing (default: none)")
    g = p.add_argument_group("DICOM and PACS")
    g.add_argument("--series", metavar="UID",
                   help="DICOM: score this SeriesInstanceUID (default: the CT/MR "
                        "ORIGINAL/PRIMARY axial series with the most slices)")
    g.add_argument("--dicom-out", metavar="DIR",
                   help="DICOM folder input: also write the result as a DICOM SR (+ SEG of the "
                        "positive patches) into DIR")
    g.add_argument("--pacs", metavar="URL",
                   help="DICOMweb root of a PACS (e.g. http://127.0.0.1:8042/dicom-web)")
    g.add_argument("--study", metavar="UID", help="with --pacs: the StudyInstanceUID to score")
    g.add_argument("--push-results", action="store_true",
                   help="with --pacs: store a DICOM SR (and a SEG of the positive patches) in "
                        "the study")
    _add_keep_in_plane_spacing(p)
    _add_max_voxels(p)
    p.set_defaults(func=_cmd_diagnose)

    p = sub.add_parser("watch", help="score each new CT/MR study of a PACS, push results back")
    p.add_argument("model", help="model bundle (.cadx)")
    p.add_argument("--pacs", required=True, metavar="URL", help="DICOMweb root of the PACS")
    p.add_argument("--interval", type=float, default=5.0,
                   help="seconds between polls (default %(default)s)")
    p.add_argument("--no-push", action="store_true", help="score only; store nothing")
    p.add_argument("--out", metavar="DIR", help="also write <StudyInstanceUID>.json here")
    # Accepted only to be refused in one clear line (see _cmd_watch), so not listed in --help.
    p.add_argument("--clinical", action="append", default=[], help=argparse.SUPPRESS)
    _add_max_voxels(p)
    p.set_defaults(func=_cmd_watch)

    p = sub.add_parser("score-batch", help="score many studies on a Dask cluster (resumable)")
    p.add_argument("model", help="model bundle (.cadx), readable from every worker")
    p.add_argument("input", help="CSV manifest (image[,organ_mask][,study_id]), a dataset "
                                 "folder (labels as organ masks) or a folder of volumes "
                                 "(organ masks in its masks/ subfolder)")
    p.add_argument("--out", required=True, help="results (.parquet); studies already ok in it "
                                                "are skipped")
    p.add_argument("--dask-scheduler", default="local",
                   help="scheduler address (tcp://host:8786), or 'local' for a LocalCluster "
                        "on this machine (default)")
    p.add_argument("--workers", type=int,
                   help="worker processes of the local cluster (default: one per core)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_keep_in_plane_spacing(p)
    _add_max_voxels(p)
    p.set_defaults(func=_cmd_score_batch)

    p = sub.add_parser("evaluate", help="patch- and patient-level metrics on a labelled set")
    p.add_argument("model", help="model bundle (.cadx)")
    p.add_argument("dataset", help="folder with dataset.json, or a CSV manifest")
    p.add_argument("--out", required=True, help="report folder")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--patient-score", choices=PATIENT_SCORES,
                   help="decide with this patient score at its threshold chosen on the "
                        "validation patients at training time (default: the bundle's)")
    p.add_argument("--top-k", type=int, metavar="K", help="k of --patient-score topk")
    _add_keep_in_plane_spacing(p)
    _add_bootstrap_options(p)
    _add_clinical_options(p)
    _add_max_voxels(p)
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("calibrate", help="CT/MR model: re-choose its patient threshold on a "
                                         "labelled cohort it has never seen (a site's "
                                         "operating point)")
    p.add_argument("model", help="model bundle (.cadx) from cadx train")
    p.add_argument("dataset", help="labelled patients new to the model: folder with "
                                   "dataset.json, or a CSV manifest")
    p.add_argument("--out", required=True, help="calibrated bundle to write (.cadx)")
    p.add_argument("--target-specificity", type=_specificity, metavar="SP",
                   help="the most sensitive threshold whose specificity on these patients is "
                        ">= SP (default: max Youden, the seed's rule)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_max_voxels(p)
    p.set_defaults(func=_cmd_calibrate)

    p = sub.add_parser("report", help="report any model's scores from a predictions CSV")
    p.add_argument("predictions",
                   help="CSV with patient_id, y_true, score[, model][, subgroup columns...]")
    p.add_argument("--out", required=True, help="report folder")
    p.add_argument("--threshold", type=float,
                   help="score > threshold is positive (default: max Youden on these data, "
                        "which is optimistic)")
    _add_bootstrap_options(p)
    _add_clinical_options(p, schema=False)
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("compare", help="DeLong test of two models' AUCs, paired by patient")
    p.add_argument("predictions", help="CSV with patient_id, y_true, score, model")
    p.add_argument("--models", required=True, type=lambda text: text.split(","),
                   help="the two models to compare, as a,b")
    p.add_argument("--out", help="also write the result as JSON here")
    p.set_defaults(func=_cmd_compare)

    p = sub.add_parser("manifest", help="image manifest CSV for a public ultrasound dataset")
    p.add_argument("dataset", choices=("busbra", "ddti", "mmotu"),
                   help="busbra: BUS-BRA breast ultrasound (patient = Case; the authors' "
                        "5 folds as the fold column; masks, device, histology kept); "
                        "ddti: DDTI thyroid crops (patient = case N); mmotu: MMOTU OTU_2D "
                        "(each image its own case; published validation split = test)")
    p.add_argument("root", help="the dataset's folder")
    p.add_argument("--out", required=True, help="manifest CSV to write")
    p.set_defaults(func=_cmd_manifest)

    p = sub.add_parser("train-images", help="2D images: CNN ensemble weighted by validation AUC")
    p.add_argument("dataset", help="folder with one sub-folder per class, or a CSV "
                                   "(path, patient_id, label[, split])")
    p.add_argument("--arch", type=_names, default=["efficientnet_lite0"],
                   help="comma-separated, from efficientnet_lite0/1/2 (ImageNet-pretrained; "
                        "lite1/2 need their -pytorch-model package), resnet18, resnet50, "
                        "darknet19 (from scratch); one listed k times gives k members "
                        "trained with seeds seed..seed+k-1 (default efficientnet_lite0)")
    _add_image_options(p)
    p.set_defaults(func=_cmd_train_images)

    p = sub.add_parser("train-features", help="2D images: deep and/or texture features + "
                                              "SVM / random forest")
    p.add_argument("dataset", help="folder with one sub-folder per class, or a CSV")
    p.add_argument("--backbones", type=_names, default=["efficientnet_lite0"],
                   help="comma-separated, from efficientnet_lite0/1/2 (ImageNet-pretrained), "
                        "resnet18, resnet50, darknet19, or 'none' for texture features only "
                        "(default efficientnet_lite0)")
    p.add_argument("--layers", type=_names, default=None,
                   help="feature layers of each backbone: avgpool, fc and/or stages (pretrained "
                        "backbones: every stage from stride 8 on, globally pooled) (default "
                        "stages for pretrained backbones, avgpool for the others)")
    p.add_argument("--classifier", type=_names, default=["svm"],
                   help="svm, rf, logreg (L2 logistic regression), or several (e.g. svm,rf) "
                        "for their average (default svm)")
    p.add_argument("--texture", action="store_true",
                   help="add GLCM + wavelet texture features (alone with --backbones none)")
    p.add_argument("--backbones-from", metavar="MODEL",
                   help="take the backbones' weights from a train-images bundle (otherwise "
                        "--init-weights files, or random initialisation)")
    _add_image_options(p, trains_networks=False)
    p.add_argument("--feature-cache", metavar="DIR",
                   help="keep the feature matrices here and reuse them when the images, "
                        "backbones and settings are the same (re-runs take seconds)")
    p.set_defaults(func=_cmd_train_features)

    p = sub.add_parser("evaluate-images",
                       help="2D model on a labelled image set, thresholds as stored "
                            "(external validation): CIs, subgroups, Grad-CAM vs masks")
    p.add_argument("model", help="a train-images or train-features bundle (.cadx)")
    p.add_argument("dataset", help="class folders, or a CSV (path, patient_id, label[, split, "
                                   "fold, mask, other columns])")
    p.add_argument("--out", metavar="DIR", help="write the report folder here")
    p.add_argument("--split", choices=("train", "validation", "test"),
                   help="only the images of this split of the manifest (default all)")
    p.add_argument("--fold", metavar="K",
                   help="only the images of the manifest's fold K (e.g. the test fold of "
                        "train-images --test-fold K)")
    p.add_argument("--subgroups", type=_names, metavar="COLS",
                   help="manifest columns to tabulate by, e.g. device,histology")
    p.add_argument("--each-image-a-patient", action="store_true",
                   help="ignore patient ids: each image is its own exam (said in the report)")
    p.add_argument("--no-cam", action="store_true",
                   help="skip the Grad-CAM check against the manifest's mask column")
    p.add_argument("--n-boot", type=int, default=1000,
                   help="bootstrap resamples (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_clinical_options(p)
    p.set_defaults(func=_cmd_evaluate_images)

    p = sub.add_parser("fuse", help="2D or CT model + clinical columns: logistic regression on "
                                    "the exam (patient) score, fitted on the model's validation "
                                    "patients")
    p.add_argument("model", help="a train-images, train-features or (CT) train bundle (.cadx)")
    p.add_argument("dataset", help="the manifest (2D) or dataset (CT: folder with dataset.json "
                                   "and cases.csv, or CSV manifest) it was trained on, with the "
                                   "clinical columns (only its validation patients are used)")
    p.add_argument("--clinical", required=True, type=_names, metavar="COLS",
                   help="clinical columns to fuse, e.g. age,device (label, BI-RADS, histology, "
                        "pathology and schema leaks_label columns are refused)")
    p.add_argument("--out", required=True, help="bundle to write, with the fusion model (.cadx)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the logistic regression (default %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_clinical_options(p, bins=False)
    p.set_defaults(func=_cmd_fuse)

    add_triage_parsers(sub, console)

    p = sub.add_parser("serve", help="REST service and web page for every bundle in a folder")
    p.add_argument("--models", required=True, help="folder of model bundles (*.cadx)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default %(default)s; any other address needs "
                        "a token)")
    p.add_argument("--port", type=int, default=8000, help="default %(default)s")
    p.add_argument("--token-file", help="file holding the bearer token (default: "
                                        "$CADX_SERVE_TOKEN; none = no auth, loopback only)")
    p.add_argument("--workers", type=int, default=1,
                   help="inference threads (default %(default)s)")
    p.add_argument("--queue", type=int, default=4,
                   help="requests that may wait for a worker; more get 503 (default "
                        "%(default)s)")
    p.add_argument("--max-upload-mb", type=float, default=512,
                   help="largest upload per request, MiB (default %(default)s)")
    p.add_argument("--max-connections", type=int, default=256, metavar="N",
                   help="open connections at once; more are answered 503 (default %(default)s)")
    p.add_argument("--header-timeout", type=float, default=10.0, metavar="S",
                   help="seconds a request's headers may take to arrive; then 408 "
                        "(default %(default)s)")
    p.add_argument("--body-timeout", type=float, default=15.0, metavar="S",
                   help="seconds an upload may stall (no data); then 408 (default %(default)s)")
    p.add_argument("--require-signed", action="store_true",
                   help="load only bundles signed with the site key (cadx sign); else refuse "
                        "to start")
    _add_signing_key(p)
    _add_max_voxels(p)
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("sign", help="sign model bundles with the site key (HMAC-SHA256), or "
                                    "check their signatures")
    p.add_argument("bundles", nargs="+", metavar="BUNDLE", help="model bundle(s) (*.cadx)")
    p.add_argument("--check", action="store_true",
                   help="check the signatures instead of signing (exit 2 if one fails)")
    _add_signing_key(p)
    p.set_defaults(func=_cmd_sign)
    _show_defaults(parser)
    return parser


_DESCRIPTION = ("cadx: computer-aided diagnosis research software. Train a model on labelled "
                "CT/MR scans or 2D images, evaluate it with confidence intervals, and score "
                "new patients. A cadx model is not a medical device.")
_EPILOG = ("Start with `cadx demo` (synthetic data, minutes on a laptop); `cadx COMMAND --help` "
           "describes each command. Documentation: docs/index.md.")


def _default_text(value: object) -> str:
    """A default as the user would type it: comma-separated for tuples and lists."""
    if isinstance(value, (tuple, list)):
        return ",".join(str(item) for item in value)
    return str(value)


def _show_defaults(parser: argparse.ArgumentParser) -> None:
    """Append "(default X)" to the help of every option, in every sub-command, whose help does
    not already state its default, so that no default is known only to the code. Flags (off by
    default) and options without a default are left as they are."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                _show_defaults(sub)
            continue
        default = action.default
        if (not action.option_strings or action.help == argparse.SUPPRESS or default is None
                or default is False or default == argparse.SUPPRESS or default == []):
            continue
        if "default" in (action.help or ""):
            continue
        shown = _default_text(default).replace("%", "%%")
        action.help = f"{action.help} (default {shown})" if action.help else f"default {shown}"


def _add_signing_key(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--signing-key-file", metavar="FILE",
                        help="file holding the site's signing key, at least 32 bytes (default: "
                             "$CADX_SIGNING_KEY)")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    previous_limits = default_volume_limits()
    try:
        if getattr(args, "max_voxels", None) is not None:
            set_default_volume_limits(VolumeLimits(max_voxels=args.max_voxels))
        _check_outputs(args)
        _check_inputs(args)
        return args.func(args)
    except CadxError as exc:
        print(f"cadx: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file system refusal is the user's to fix: one line, no traceback
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"cadx: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cadx: interrupted; no partial outputs were kept", file=sys.stderr)
        return 130
    finally:  # main() called in-process (tests, notebooks) leaves the limits as they were
        set_default_volume_limits(previous_limits)


if __name__ == "__main__":
    sys.exit(main())
