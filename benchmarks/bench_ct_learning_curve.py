"""What limits the CT patch detector: a learning curve over training patients, and the levers.

Run (the measurements of issue 14; each is long on 2 CPU cores, run one at a time):
    python benchmarks/bench_ct_learning_curve.py --patients 36,100,200,400 --data bench_ct
    python benchmarks/bench_ct_learning_curve.py --levers baseline,balanced,dihedral,context1,tta \
        --patients 100 --data bench_ct
Quick check that it runs (seconds; numbers meaningless):
    python benchmarks/bench_ct_learning_curve.py --patients 8 --val-patients 6 --epochs 1 --tiny

Training patients come from one phantom cohort (cadx.synth, seed --train-seed), validation
patients from another (--val-seed); no test patients are involved, so whatever is chosen here
(levers, patient score) is chosen on validation. For each training-set size N the first N/2
tumour and N/2 tumour-free patients of the training cohort are used, so the smaller sets are
nested in the larger. Both cohorts are written once into --data and cropped once into memory-
mapped patch stores there (reused by later runs with the same settings).

Each run trains the Table-1 patch CNN (cadx.train.fit, the demo's schedule on 2D patches
unless overridden) with the validation patients for early stopping, then prints validation
patch AUC and the validation patient AUC of every patient score (fraction: the seed; topk:K;
cluster), and the validation patch AUC after each epoch against the patch-steps taken
(--per-epoch). The epoch and both thresholds are chosen on the same validation patients, so
these AUCs are slightly optimistic; the reference run evaluates on a third cohort (`cadx evaluate`).

Levers (--levers, each a separate training run on the same N patients):
    baseline  the base settings         seed      Table 1 as the seed: no flips, no BatchNorm
    balanced  class-balanced batches    dihedral  flips + 90-degree rotations
    context1  2.5D, 1 slice each side   context2  2.5D, 2 slices each side
    tta       baseline model, patch scores averaged over flips (no extra training)
    X+tta     lever X's model (trained once per run), patch scores averaged over flips
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from scipy.special import logit

from cadx.bundle import PatchModelBundle
from cadx.config import PRECISIONS, ModelConfig, PipelineConfig, PreprocessConfig
from cadx.decide.roc import specificity_operating_point
from cadx.io.dataset import load_dataset
from cadx.patches.cohort import PatchedCase
from cadx.patches.store import join_patches
from cadx.scale.distributed import patched_cases
from cadx.synth.ct_phantom import CohortSpec, write_msd_cohort
from cadx.train.fit import fit_patch_cnn
from cadx.train.pipeline import choose_thresholds, score_cases
from cadx.train.splits import assert_disjoint
from cadx.workflows import DEMO_CONFIG

TRAINING_LEVERS = ("baseline", "seed", "balanced", "dihedral", "context1", "context2")
LEVERS = (*TRAINING_LEVERS, "tta", *(f"{lever}+tta" for lever in TRAINING_LEVERS))
TINY_SHAPE, TINY_SPACING = (12, 128, 128), (2.5, 2.7, 2.7)
SHOWN_SCORES = ("fraction", "topk:5", "cluster")


def _split_lever(lever: str) -> tuple[str, bool]:
    """(the training lever, whether patch scores are averaged over flips) of a lever name."""
    if lever == "tta":
        return "baseline", True
    training, _, scoring = lever.partition("+")
    return training, scoring == "tta"


def _lever_config(base: PipelineConfig, lever: str) -> PipelineConfig:
    """The pipeline settings of one lever (the base settings for baseline and tta)."""
    train, patches, model = base.train, base.patches, base.model
    if lever == "seed":
        train = replace(train, augment_flips=False, augment_rotations=False)
        model = replace(model, batch_norm=False)
    elif lever == "balanced":
        train = replace(train, balanced_sampling=True)
    elif lever == "dihedral":
        train = replace(train, augment_flips=True, augment_rotations=True)
    elif lever.startswith("context"):
        patches = replace(patches, context_slices=int(lever.removeprefix("context")))
    return replace(base, train=train, patches=patches, model=model)


def cached_cohort(data: Path, name: str, n: int, seed: int, tiny: bool,
                  tumour_diameter_mm: tuple[float, float] | None = None) -> Path:
    """A phantom cohort of `n` patients in data/name, written unless it is already there
    (tumour diameters over the generator's default range unless `tumour_diameter_mm`)."""
    folder = data / name
    if (folder / "dataset.json").exists() and len(load_dataset(folder)) == n:
        return folder
    spec = CohortSpec(n_patients=n, seed=seed)
    if tumour_diameter_mm is not None:
        spec = replace(spec, tumour_diameter_mm=tumour_diameter_mm)
    if tiny:
        spec = replace(spec, shape_zyx=TINY_SHAPE, spacing_zyx_mm=TINY_SPACING)
    return write_msd_cohort(folder, spec)


def patch_store_path(data: Path, folder: Path, config: PipelineConfig) -> Path:
    """Where the cohort `folder`'s patches for `config`'s patch settings are stored in `data`
    (one store per cohort and settings, shared by the CT benchmarks; a slice thickness other
    than the default is part of the name, so that runs at two thicknesses keep two stores)."""
    p = config.patches
    thickness = config.preprocess.slice_thickness_mm
    z = "" if thickness == PreprocessConfig().slice_thickness_mm else f"_z{thickness:g}"
    return data / f"store_{folder.name}_p{p.size_px}s{p.stride_px}c{p.context_slices}{z}"


# The seed's size split: sensitivity for tumours under 2 cm.
SMALL_MM = 20.0
LOGIT_EPS = 1e-6


def small_tumours(cases: Sequence[PatchedCase]) -> np.ndarray:
    """True for each case whose tumour is under SMALL_MM (False for tumour-free cases)."""
    return np.array([c.has_tumour and (c.tumour_diameter_mm or 0.0) < SMALL_MM for c in cases])


def patient_top1(model: torch.nn.Module, cases: Sequence[PatchedCase], config: PipelineConfig
                 ) -> np.ndarray:
    """Each case's highest patch probability (flip-averaged as `config` decides, in its
    precision): the top-1 patient score."""
    per_case = score_cases(model, cases, config.decide.test_time_flips, config.train.precision,
                           config.model)
    return np.array([s.max() for s in per_case])


def clipped_logit(p: np.ndarray | float) -> np.ndarray:
    """The logit of probabilities clipped to [LOGIT_EPS, 1 - LOGIT_EPS] (a probability of
    exactly 0 or 1 stays finite)."""
    return logit(np.clip(p, LOGIT_EPS, 1 - LOGIT_EPS))


def add_bundle_cohort_options(parser: argparse.ArgumentParser) -> None:
    """BUNDLE, --data and the bundle's training cohort (--train-patients, --train-seed: the
    reference run's) of the scripts that work on a trained bundle's split."""
    parser.add_argument("bundle")
    parser.add_argument("--data", required=True, help="cohort and patch-store cache folder")
    parser.add_argument("--train-patients", type=int, default=300)
    parser.add_argument("--train-seed", type=int, default=101)


def bundle_split_cases(bundle: PatchModelBundle, data: Path, train_patients: int,
                       train_seed: int) -> dict[str, list[PatchedCase]]:
    """The bundle's training and internal validation phantoms ("train", "validation"), cut
    from its training cohort (seed `train_seed`, `train_patients` phantoms, cached in `data`)
    by the split stored in the bundle; the two are checked disjoint."""
    config = bundle.config
    folder = cached_cohort(data, f"train_seed{train_seed}_n{train_patients}", train_patients,
                           train_seed, False)
    cases = patched_cases(load_dataset(folder), config,
                          patch_store=patch_store_path(data, folder, config), progress=False)
    split = bundle.summary["split"]
    parts = {name: [c for c in cases if c.patient_id in set(split[name])]
             for name in ("train", "validation")}
    assert_disjoint({name: [c.patient_id for c in part] for name, part in parts.items()})
    return parts


def add_validation_cohort_options(parser: argparse.ArgumentParser) -> None:
    """--data, --val-patients and --val-seed of the scripts that score a bundle on the
    learning curve's validation cohort (seed 202, which no bundle trains on)."""
    parser.add_argument("--data", required=True, help="cohort and patch-store cache folder")
    parser.add_argument("--val-patients", type=int, default=60)
    parser.add_argument("--val-seed", type=int, default=202,
                        help="the learning curve's validation seed (default %(default)s)")


def validation_cohort(args: argparse.Namespace, config: PipelineConfig
                      ) -> tuple[Path, list[PatchedCase]]:
    """The validation cohort of `add_validation_cohort_options`' arguments (written and cropped
    once into args.data) and its patched cases for `config`'s patch settings."""
    data = Path(args.data)
    folder = cached_cohort(data, f"val_seed{args.val_seed}_n{args.val_patients}",
                           args.val_patients, args.val_seed, False)
    return folder, validation_cases(data, args.val_seed, args.val_patients, config)


def validation_cases(data: Path, seed: int, n: int, config: PipelineConfig) -> list[PatchedCase]:
    """The patched cases of the validation cohort of `seed` and `n` phantoms (written and
    cropped once into `data`) for `config`'s patch settings."""
    folder = cached_cohort(data, f"val_seed{seed}_n{n}", n, seed, False)
    return patched_cases(load_dataset(folder), config,
                         patch_store=patch_store_path(data, folder, config), progress=False)


def generator_diameters(folder: Path) -> dict[str, float]:
    """Each phantom's tumour diameter as drawn by the generator (cases.csv; nan: no tumour)."""
    with open(folder / "cases.csv", newline="") as f:
        return {r["patient_id"]: float(r["tumour_diameter_mm"] or "nan")
                for r in csv.DictReader(f)}


def sensitivity_at_specificity(truth: np.ndarray, small: np.ndarray, scores: np.ndarray,
                               specificity: float = 0.90) -> tuple[int, int]:
    """Tumours < 2 cm found at the most sensitive threshold keeping `specificity` on the same
    patients (cadx's fixed-specificity operating point, as `cadx calibrate` sets it)."""
    threshold = specificity_operating_point(truth, scores, specificity).threshold
    return int((scores[small] > threshold).sum()), int(small.sum())


def _cases(folder: Path, config: PipelineConfig, data: Path) -> list[PatchedCase]:
    """The cohort's patched cases from a patch store in `data` (cropped once per settings)."""
    return patched_cases(load_dataset(folder), config,
                         patch_store=patch_store_path(data, folder, config))


def _balanced_subset(cases: list[PatchedCase], n: int) -> list[PatchedCase]:
    """The first n/2 tumour and n - n/2 tumour-free cases (nested as n grows)."""
    tumour = [c for c in cases if c.has_tumour][: n // 2]
    free = [c for c in cases if not c.has_tumour][: n - n // 2]
    if len(tumour) + len(free) < n:
        raise SystemExit(f"the training cohort holds too few patients for N = {n}")
    return tumour + free


def _run(train_cases: list[PatchedCase], val_cases: list[PatchedCase], config: PipelineConfig,
         flip_average: bool, progress: bool, model: torch.nn.Module | None = None
         ) -> tuple[dict[str, object], torch.nn.Module]:
    """Train (unless `model` is given), choose thresholds on validation; the result row."""
    start = time.perf_counter()
    train_set = join_patches(train_cases)
    history = None
    if model is None:
        model, history = fit_patch_cnn(train_set, join_patches(val_cases), config.train,
                                       model_config=config.model, progress=progress)
    decided = replace(config, decide=replace(config.decide, test_time_flips=flip_average))
    patch_point, _, points = choose_thresholds(model, val_cases, decided)
    steps_per_epoch = len(train_set)  # balanced batches take as many steps as a shuffle
    row: dict[str, object] = {
        "train_patients": len(train_cases), "train_patches": len(train_set),
        "train_cancerous_patches": int(train_set.labels.sum()),
        "validation_patients": len(val_cases), "validation_patch_auc": patch_point.auc,
        "validation_patient_auc": {name: p.auc for name, p in points.items()},
        "wall_s": round(time.perf_counter() - start, 1),
    }
    if history is not None:
        row |= {"epochs": len(history.train_loss), "best_epoch": history.best_epoch + 1,
                "patch_steps": steps_per_epoch * len(history.train_loss),
                "per_epoch": [{"patch_steps": steps_per_epoch * (i + 1),
                               "validation_patch_auc": auc}
                              for i, auc in enumerate(history.validation_auc)]}
    return row, model


def _print_table(rows: list[dict[str, object]], per_epoch: bool) -> None:
    head = ["run", "N train", "patches (cancer)", "epochs", "patch-steps", "val patch AUC",
            *[f"val patient AUC {s}" for s in SHOWN_SCORES], "best patient score", "wall s"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for row in rows:
        aucs = row["validation_patient_auc"]
        best = max(aucs, key=aucs.get)
        cells = [row["run"], row["train_patients"],
                 f"{row['train_patches']} ({row['train_cancerous_patches']})",
                 row.get("epochs", "-"), row.get("patch_steps", "-"),
                 f"{row['validation_patch_auc']:.3f}",
                 *[f"{aucs[s]:.3f}" for s in SHOWN_SCORES], f"{best} {aucs[best]:.3f}",
                 row["wall_s"]]
        print("| " + " | ".join(str(c) for c in cells) + " |")
    if per_epoch:
        for row in rows:
            curve = ", ".join(f"{e['patch_steps']}: {e['validation_patch_auc']:.3f}"
                              for e in row.get("per_epoch", []))
            print(f"{row['run']} (N {row['train_patients']}) patch-steps: val patch AUC  {curve}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", default="36,100,200,400",
                        help="training-set sizes, comma-separated (default %(default)s)")
    parser.add_argument("--val-patients", type=int, default=60)
    parser.add_argument("--levers", help="comma-separated from " + ", ".join(LEVERS)
                        + " (lever comparison at each N instead of the baseline alone)")
    parser.add_argument("--data", default="bench_ct", help="cohorts and patch stores (reused)")
    parser.add_argument("--train-seed", type=int, default=101)
    parser.add_argument("--val-seed", type=int, default=202)
    parser.add_argument("--epochs", type=int, default=DEMO_CONFIG.train.max_epochs)
    parser.add_argument("--batch-size", type=int, default=DEMO_CONFIG.train.batch_size)
    parser.add_argument("--lr", type=float, default=DEMO_CONFIG.train.learning_rate)
    parser.add_argument("--patch-size", type=int, default=DEMO_CONFIG.patches.size_px)
    parser.add_argument("--stride", type=int, default=DEMO_CONFIG.patches.stride_px)
    parser.add_argument("--seed", type=int, default=0, help="training seed")
    parser.add_argument("--precision", choices=PRECISIONS, default=DEMO_CONFIG.train.precision,
                        help="training and scoring precision (default %(default)s)")
    parser.add_argument("--tiny", action="store_true",
                        help="small coarse phantoms and 16 px patches: a smoke test")
    parser.add_argument("--per-epoch", action="store_true",
                        help="also print validation patch AUC against patch-steps")
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args()
    sizes = [int(v) for v in args.patients.split(",")]
    levers = args.levers.split(",") if args.levers else ["baseline"]
    unknown = sorted(set(levers) - set(LEVERS))
    if unknown or min(sizes) < 4:
        parser.error(f"unknown lever(s) {unknown}" if unknown else "N must be >= 4")
    patch_size, stride = (16, 8) if args.tiny else (args.patch_size, args.stride)
    # The baseline is the demo's schedule on 2D patches (the levers are measured against it,
    # the 2.5D input the demo now uses among them); flips at test time only in the tta levers.
    base = replace(DEMO_CONFIG, model=ModelConfig(),  # the Table-1 network, as measured
                   patches=replace(DEMO_CONFIG.patches, size_px=patch_size, stride_px=stride,
                                   context_slices=0),
                   train=replace(DEMO_CONFIG.train, max_epochs=args.epochs,
                                 batch_size=args.batch_size, learning_rate=args.lr,
                                 seed=args.seed, precision=args.precision))
    data = Path(args.data)
    pool = 2 * max((n + 1) // 2 for n in sizes)
    train_folder = cached_cohort(data, f"train_seed{args.train_seed}_n{pool}", pool,
                                 args.train_seed, args.tiny)
    val_folder = cached_cohort(data, f"val_seed{args.val_seed}_n{args.val_patients}",
                         args.val_patients, args.val_seed, args.tiny)
    rows = []
    for n in sizes:
        models: dict[str, torch.nn.Module] = {}  # trained once per lever, reused by X+tta
        for lever in levers:
            training, flips = _split_lever(lever)
            config = _lever_config(base, training)
            train_cases = _balanced_subset(_cases(train_folder, config, data), n)
            val_cases = _cases(val_folder, config, data)
            row, models[training] = _run(train_cases, val_cases, config, flips,
                                         not args.quiet, models.get(training))
            rows.append({"run": lever, **row})
            if args.json:  # after every run, so a long comparison keeps what it has measured
                Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
            print(f"N {n} {lever}: val patch AUC {row['validation_patch_auc']:.3f}, val "
                  f"patient AUC (fraction) {row['validation_patient_auc']['fraction']:.3f}, "
                  f"{row['wall_s']} s", flush=True)
    print()
    _print_table(rows, args.per_epoch)
    print(f"\nbase settings: {json.dumps(base.to_dict()['train'])}; patches "
          f"{patch_size} px stride {stride}; validation cohort seed {args.val_seed}, "
          f"{args.val_patients} patients")


if __name__ == "__main__":
    main()
