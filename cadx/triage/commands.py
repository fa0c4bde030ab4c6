"""The triage commands (the CLI parses, these run): synth categories, train-router, train-qc,
pipeline init, run, clean. Each prints a short summary and writes its outputs atomically."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from cadx.config import PRECISIONS, ImageModelConfig, ImageTrainConfig
from cadx.errors import ConfigError

if TYPE_CHECKING:
    from cadx.triage.train import TriageTrainingOutcome

# Small networks: a router or QC model trains in a few minutes on 2 CPU cores. (The modules
# that need torch are imported inside the commands, so that `cadx --help` stays quick.)
_DEFAULT_SIZE_PX, _DEFAULT_WIDTH, _DEFAULT_ARCH, _DEFAULT_FLOOR = 64, 0.25, "resnet18", 0.6
_ARCHS = ("resnet18", "resnet50", "darknet19")


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _rate(entry: dict) -> str:
    if entry["rate"] is None:
        return "n/a"
    low, high = entry["ci95"]
    return f"{entry['rate']:.3f} ({entry['count']}/{entry['of']}; 95% CI {low:.3f}-{high:.3f})"


def _config(args: argparse.Namespace) -> ImageModelConfig:
    return ImageModelConfig(
        size_px=args.size, channels=args.channels, width=args.width,
        validation_fraction=args.val_fraction, test_fraction=args.test_fraction,
        seed=args.seed,
        train=ImageTrainConfig(batch_size=args.batch_size, max_epochs=args.epochs,
                               learning_rate=args.lr, weight_decay=args.weight_decay,
                               early_stop_patience=args.early_stop_patience,
                               augment=not args.no_augment, precision=args.precision,
                               seed=args.seed))


def _add_training_options(parser: argparse.ArgumentParser) -> None:
    d_model, d_train = ImageModelConfig(), ImageTrainConfig()
    parser.add_argument("--out", required=True, help="bundle to write (.cadx)")
    parser.add_argument("--arch", choices=_ARCHS, default=_DEFAULT_ARCH,
                        help="network (default %(default)s)")
    parser.add_argument("--size", type=int, default=_DEFAULT_SIZE_PX,
                        help="images are resized to size x size px (default %(default)s)")
    parser.add_argument("--channels", type=int, choices=(1, 3), default=3,
                        help="3 = RGB, so colour overlays count (default %(default)s)")
    parser.add_argument("--width", type=float, default=_DEFAULT_WIDTH,
                        help="network width multiplier (default %(default)s)")
    parser.add_argument("--epochs", type=int, default=20, help="default %(default)s")
    parser.add_argument("--batch-size", type=int, default=d_train.batch_size)
    parser.add_argument("--lr", type=float, default=d_train.learning_rate)
    parser.add_argument("--weight-decay", type=float, default=d_train.weight_decay)
    parser.add_argument("--early-stop-patience", type=int, default=5,
                        help="epochs without validation-loss improvement before stopping "
                             "(default %(default)s)")
    parser.add_argument("--no-augment", action="store_true", help="train without augmentation")
    parser.add_argument("--precision", choices=PRECISIONS, default=d_train.precision,
                        help="bf16: bfloat16 autocast of the training forward pass on CPUs "
                             "with bf16 instructions (fp32 with a warning elsewhere); "
                             "validation, thresholds and inference stay fp32 (default "
                             "%(default)s)")
    parser.add_argument("--val-fraction", type=float, default=d_model.validation_fraction)
    parser.add_argument("--test-fraction", type=float, default=d_model.test_fraction)
    parser.add_argument("--seed", type=int, default=d_model.seed)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _print_training(outcome: TriageTrainingOutcome, out: Path, console: Console) -> None:
    bundle, history = outcome.bundle, outcome.history
    counts = bundle.summary["counts"]
    console.print(f"{bundle.kind} model: {bundle.arch} x{bundle.width}, {bundle.size_px} px, "
                  f"labels {', '.join(bundle.labels)}")
    console.print("images (patients): " + ", ".join(
        f"{s} {c['images']} ({c['patients']})" for s, c in counts.items()))
    console.print(f"kept epoch {history.best_epoch + 1} of {len(history.validation_auc)} "
                  f"(lowest validation log loss "
                  f"{history.validation_loss[history.best_epoch]:.3f}; validation AUC "
                  f"{history.best_validation_auc:.3f})")
    test = outcome.test
    if bundle.kind == "router" and test:
        console.print(f"held-out test patients, confidence floor {bundle.confidence_floor}:")
        for key in ("top1_accuracy", "routed_correctly", "routed_wrongly", "unrouted"):
            console.print(f"  {key.replace('_', ' ')}: {_rate(test[key])}")
    elif test:
        table = Table(title="held-out test patients, per flag")
        for column in ("flag", "threshold", "AUC", "sensitivity", "specificity"):
            table.add_column(column)
        for flag, m in test.items():
            table.add_row(flag, f"{bundle.threshold(flag):.3f}",
                          "n/a" if m["auc"] is None else f"{m['auc']:.3f}",
                          _rate(m["sensitivity"]), _rate(m["specificity"]))
        console.print(table)
    console.print(f"bundle written to {out}")


def synth_categories_command(args: argparse.Namespace, console: Console) -> int:
    from cadx.synth.categories import QC_FLAGS, CategoryCohortSpec, write_category_cohort

    spec = CategoryCohortSpec(patients_per_category=args.patients,
                              images_per_patient=tuple(args.images_per_patient),
                              image_size_px=args.size, seed=args.seed)
    out = write_category_cohort(args.out, spec, progress=not args.quiet)
    console.print(f"triage cohort written to {out}: categories/ (router), qc.csv (QC flags "
                  f"{', '.join(QC_FLAGS)}), lesion-<category>.csv (analysers)")
    return 0


def train_router_command(args: argparse.Namespace, console: Console) -> int:
    from cadx.io.images import load_image_dataset
    from cadx.triage.bundle import save_triage_bundle
    from cadx.triage.train import train_router

    dataset = load_image_dataset(args.dataset, progress=not args.quiet)
    outcome = train_router(dataset, _config(args), arch=args.arch,
                           confidence_floor=args.floor, progress=not args.quiet)
    _print_training(outcome, save_triage_bundle(outcome.bundle, args.out), console)
    return 0


def train_qc_command(args: argparse.Namespace, console: Console) -> int:
    from cadx.triage.bundle import save_triage_bundle
    from cadx.triage.qc import load_qc_manifest
    from cadx.triage.train import train_qc

    data = load_qc_manifest(args.dataset, args.flags)
    outcome = train_qc(data, _config(args), arch=args.arch, progress=not args.quiet)
    _print_training(outcome, save_triage_bundle(outcome.bundle, args.out), console)
    return 0


def _analyser_pairs(texts: Sequence[str]) -> list[tuple[str, str]]:
    pairs = []
    for text in texts:
        category, sep, bundle = text.partition("=")
        if not sep or not category or not bundle:
            raise ConfigError(f"--analyser {text!r}: expected CATEGORY=BUNDLE")
        pairs.append((category.strip(), bundle.strip()))
    return pairs


def pipeline_init_command(args: argparse.Namespace, console: Console) -> int:
    from cadx.triage.pipeline_file import init_pipeline, load_pipeline

    path = init_pipeline(args.file, args.router, qc_file=args.qc,
                         analysers=_analyser_pairs(args.analyser), drop_if=args.drop_if)
    pipeline = load_pipeline(path)
    qc = (f"on (drop if {', '.join(map(str, pipeline.drop_rules))})" if pipeline.qc
          else "off")
    console.print(f"pipeline written to {path}: router {len(pipeline.router.labels)} "
                  f"categories, {sum(map(len, pipeline.analysers.values()))} analyser(s), "
                  f"QC {qc}")
    return 0


def run_command(args: argparse.Namespace, console: Console) -> int:
    from cadx.triage.pipeline_file import load_pipeline
    from cadx.triage.run import collect_images, read_inputs, run_pipeline, write_run
    from cadx.triage.truth import evaluate_against_truth, read_truth

    pipeline = load_pipeline(args.pipeline)
    truth = read_truth(args.truth) if args.truth else None
    paths = collect_images(args.inputs)
    images = read_inputs(paths, progress=not args.quiet)
    result = run_pipeline(pipeline, paths, images)
    evaluation = None
    if truth is not None:
        evaluation = evaluate_against_truth(
            paths, [o.routing for o in result.images],
            [o.status == "dropped" for o in result.images],
            [o.qc.reasons if o.qc else () for o in result.images], truth,
            pipeline.router.labels, pipeline.drop_rules if pipeline.qc else ())
    out = write_run(result, args.out, evaluation)
    summary = result.summary()
    console.print(f"{summary['images']} images of {summary['patients']} patients: "
                  f"{summary['dropped']} dropped by QC, {summary['unrouted']} unrouted, "
                  f"{summary['routed']} routed {summary['routed_by_category']}")
    if evaluation is not None:
        if "routing" in evaluation:
            routing = evaluation["routing"]
            console.print(f"routing vs truth: routed correctly {_rate(routing['routed_correctly'])}"
                          f"; wrongly {_rate(routing['routed_wrongly'])}; unrouted "
                          f"{_rate(routing['unrouted'])}")
        if "qc" in evaluation:
            qc = evaluation["qc"]
            console.print(f"QC vs truth: removed {_rate(qc['removed_of_to_remove'])} of the "
                          f"images to remove; good images removed "
                          f"{_rate(qc['good_images_removed'])}; by rule "
                          f"{qc['removed_by_rule']}")
    console.print(f"results written to {out}")
    return 0


def clean_command(args: argparse.Namespace, console: Console) -> int:
    from cadx.triage.bundle import load_triage_bundle
    from cadx.triage.clean import clean_folder
    from cadx.triage.qc import default_drop_rules, parse_drop_rules

    qc = load_triage_bundle(args.qc, "qc")
    rules = (parse_drop_rules(args.drop_if, qc.labels, "--drop-if") if args.drop_if
             else default_drop_rules(qc.labels))
    result = clean_folder(args.dataset, qc, rules, args.out, args.report,
                          progress=not args.quiet)
    console.print(f"{len(result.paths)} images: kept {result.kept}, dropped {result.dropped} "
                  f"(drop if {', '.join(map(str, rules))}; by rule {result.removed_by_rule})")
    console.print(f"cleaned copy in {result.out_dir}; report {result.report}")
    return 0


def _print_build(report: dict, console: Console) -> None:
    """The held-out figures of `cadx triage-train`, one table each."""
    routing = report["routing"]
    table = Table(title=f"routing, held-out test frames (confidence floor "
                        f"{routing['confidence_floor']})")
    for column in ("category", "images", "routed correctly", "wrong category", "unrouted"):
        table.add_column(column)
    for category, m in routing["per_category"].items():
        table.add_row(category, str(m["images"]), _rate(m["routed_correctly"]),
                      _rate(m["routed_wrongly"]), _rate(m["unrouted"]))
    console.print(table)
    console.print(f"real frames routed to a wrong category: "
                  f"{_rate(routing['real_frames_wrong_category'])}")
    qc = report["qc"]
    table = Table(title="QC, held-out test frames (drop if "
                        f"{', '.join(report['drop_if'])})")
    for column in ("frames", "dropped"):
        table.add_column(column)
    for group, entry in qc["good_frames_dropped"].items():
        table.add_row(f"good {group}", _rate(entry))
    for kind, entry in qc["caught"].items():
        table.add_row(kind, _rate(entry))
    console.print(table)
    ood = report["ood"]
    console.print("non-medical images (" + ", ".join(ood["per_kind"]) + "): reached an organ "
                  f"analyser {_rate(ood['reached_organ_analyser'])}; router alone sent to an "
                  f"organ category {_rate(ood['router_sent_to_organ_category'])}")
    console.print("real good frames reaching the right category end to end: "
                  f"{_rate(report['end_to_end_real_good_frames_reaching_right_category'])}")


def triage_train_command(args: argparse.Namespace, console: Console) -> int:
    from cadx.triage.real_sources import find_real_sources
    from cadx.triage.real_train import TriageBuildSpec, build_triage

    spec = TriageBuildSpec(size_px=args.size, max_per_category=args.max_per_category,
                           seed=args.seed)
    sources = find_real_sources(args.data_root)
    for category, why in sources.absent.items():
        console.print(f"[yellow]category {category} absent ({why}): training the others"
                      "[/yellow]")
    result = build_triage(args.data_root, args.out, spec, progress=not args.quiet,
                          cache_path=args.cache)
    _print_build(result.report, console)
    wall = result.report["wall_time_s"]
    console.print(f"router {result.router_file}, QC {result.qc_file}, pipeline "
                  f"{result.pipeline_file}, figures {result.out_dir / 'triage-report.json'}; "
                  f"{wall['total']:.0f} s ({wall['features']:.0f} s reading and features)")
    return 0


def add_synth_categories_parser(synth: argparse._SubParsersAction, console: Console) -> None:
    """`cadx synth categories`."""
    p = synth.add_parser("categories", help="triage images: CT slices, thyroid/breast/adnexa "
                                            "ultrasound (some with Doppler), text/blank screens, "
                                            "3D renderings; QC flags and lesion manifests")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--patients", type=int, default=40,
                   help="patients per category (default %(default)s)")
    p.add_argument("--images-per-patient", type=lambda t: tuple(int(v) for v in t.split(",")),
                   default=(1, 3), help="lo,hi (inclusive; default 1,3)")
    p.add_argument("--size", type=int, default=96, help="image size, px (default 96)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=lambda args: synth_categories_command(args, console))


def add_triage_parsers(sub: argparse._SubParsersAction, console: Console) -> None:
    """`cadx triage-train`, `train-router`, `train-qc`, `pipeline init`, `run` and `clean`."""
    p = sub.add_parser("triage-train", help="router + QC + pipeline.yaml from real images "
                                            "(BUS-BRA, DDTI, MMOTU, real CT volumes, or folders "
                                            "named after the categories)")
    p.add_argument("data_root", help="data folder, e.g. ../shared/data")
    p.add_argument("--out", required=True, help="folder for router.cadx, qc.cadx, "
                                                "pipeline.yaml and triage-report.json")
    p.add_argument("--max-per-category", type=int, default=240,
                   help="real frames per category, taken by whole patients (default "
                        "%(default)s)")
    p.add_argument("--size", type=int, default=160, help="network input, px (default 160)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", help="feature cache file (default OUT/cache/...npz)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=lambda args: triage_train_command(args, console))

    p = sub.add_parser("train-router", help="image router: softmax CNN over image categories")
    p.add_argument("dataset", help="folder with one sub-folder per category, or a CSV")
    p.add_argument("--floor", type=float, default=_DEFAULT_FLOOR,
                   help="top probability at or below this = unrouted (default %(default)s)")
    _add_training_options(p)
    p.set_defaults(func=lambda args: train_router_command(args, console))

    p = sub.add_parser("train-qc", help="quality control: multi-label CNN, one threshold per "
                                        "flag (Youden on validation)")
    p.add_argument("dataset", help="CSV: path, patient_id and one 0/1 column per flag")
    p.add_argument("--flags", type=_names, required=True,
                   help="comma-separated flag columns, e.g. target,lesion,doppler,is3d,"
                        "unreadable")
    _add_training_options(p)
    p.set_defaults(func=lambda args: train_qc_command(args, console))

    p = sub.add_parser("pipeline", help="triage pipeline file")
    pipeline = p.add_subparsers(dest="action", required=True)
    p = pipeline.add_parser("init", help="write a pipeline file: categories -> analysers "
                                         "with their thresholds, QC and drop rules")
    p.add_argument("file", help="pipeline file to write (.yaml)")
    p.add_argument("--router", default="router.cadx", help="router bundle (default "
                                                           "%(default)s)")
    p.add_argument("--qc", help="QC bundle (default: no QC)")
    p.add_argument("--analyser", action="append", default=[], metavar="CATEGORY=BUNDLE",
                   help="an image model for a category (repeatable; several per category)")
    p.add_argument("--drop-if", type=_names,
                   help="QC drop rules, e.g. 'not target,unreadable,is3d' (default: not "
                        "target, unreadable)")
    p.set_defaults(func=lambda args: pipeline_init_command(args, console))

    p = sub.add_parser("run", help="QC -> route -> every analyser of the category -> one "
                                   "merged result per image and patient")
    p.add_argument("pipeline", help="pipeline file (cadx pipeline init)")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders")
    p.add_argument("--out", required=True, help="results folder")
    p.add_argument("--truth", help="CSV of known answers (path, category[, QC flags]) to "
                                   "measure routing and QC (writes evaluation.json)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=lambda args: run_command(args, console))

    p = sub.add_parser("clean", help="copy a folder of images without the ones QC drops, "
                                     "with a report of every drop and its reason")
    p.add_argument("dataset", help="folder of images (sub-folders kept)")
    p.add_argument("--qc", required=True, help="QC bundle (cadx train-qc)")
    p.add_argument("--out", required=True, help="new folder for the kept images")
    p.add_argument("--report", required=True, help="CSV: every image, kept or dropped, why")
    p.add_argument("--drop-if", type=_names,
                   help="drop rules (default: not target, unreadable)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=lambda args: clean_command(args, console))
