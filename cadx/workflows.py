"""What each command does, as functions: train, diagnose, evaluate, demo (the CLI calls these)."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console

from cadx.bundle import PatchModelBundle, load_bundle, save_bundle
from cadx.config import PatchConfig, PipelineConfig, TrainConfig
from cadx.diagnose.patient import Diagnosis, diagnose_case
from cadx.errors import InputError
from cadx.evaluate.cohort import CohortEvaluation, evaluate_cohort
from cadx.evaluate.report import print_evaluation, print_levels, write_cohort_report
from cadx.io.atomic import write_json_atomic
from cadx.io.dataset import load_dataset
from cadx.io.volumes import read_case
from cadx.patches.cohort import patch_cohort
from cadx.train.pipeline import TrainingOutcome, score_cases, train_patch_model

# Scaled-down callbacks and a smaller batch so the demo trains in minutes on 2 CPU cores.
DEMO_CONFIG = PipelineConfig(
    patches=PatchConfig(size_px=50, stride_px=25),
    train=TrainConfig(batch_size=64, max_epochs=12, learning_rate=3e-4, reduce_lr_patience=3,
                      early_stop_patience=5, seed=0, monitor="auc"),
)


def _print_training(outcome: TrainingOutcome, console: Console) -> None:
    summary = outcome.bundle.summary
    for name, counts in summary["counts"].items():
        console.print(f"  {name:<10} {counts['patients']:>3} patients "
                      f"({counts['patients_with_tumour']} with tumour), {counts['patches']:>6} "
                      f"patches ({counts['cancerous_patches']} cancerous)")
    history = outcome.history
    monitor = outcome.bundle.config.train.monitor
    console.print(f"  trained {len(history.train_loss)} epochs, best validation {monitor} at "
                  f"epoch {history.best_epoch + 1}"
                  + (" (early stop)" if history.stopped_early else ""))
    patch_point = outcome.bundle.patch_operating_point
    patient_point = outcome.bundle.patient_operating_point
    console.print(f"  validation: patch AUC {patch_point.auc:.3f}, patch threshold "
                  f"{patch_point.threshold:.4f} (SN {patch_point.sensitivity:.3f}, "
                  f"SP {patch_point.specificity:.3f})")
    console.print(f"  validation: patient AUC {patient_point.auc:.3f}, patient threshold "
                  f"{patient_point.threshold:.4f} (SN {patient_point.sensitivity:.3f}, "
                  f"SP {patient_point.specificity:.3f})")


def train_from_dataset(dataset: str | Path, out_path: str | Path, config: PipelineConfig,
                       console: Console | None = None, progress: bool = True
                       ) -> TrainingOutcome:
    """Read a labelled dataset, train with patient-level splits, write the bundle."""
    console = console or Console()
    refs = load_dataset(dataset)
    console.print(f"[bold]cadx train[/]: {len(refs)} cases from {dataset}")
    cases = patch_cohort(refs, config, progress=progress)
    outcome = train_patch_model(cases, config, progress=progress)
    outcome.bundle.summary["dataset"] = str(dataset)
    save_bundle(outcome.bundle, out_path)
    _print_training(outcome, console)
    if outcome.test_evaluation is not None:
        print_evaluation(outcome.test_evaluation, console, "Held-out test patients")
    console.print(f"model bundle written to {out_path}")
    return outcome


def diagnose_file(model_path: str | Path, image_path: str | Path,
                  organ_mask_path: str | Path | None, out_path: str | Path | None,
                  console: Console | None = None) -> Diagnosis:
    """Diagnose one patient from files; write JSON atomically when `out_path` is given."""
    console = console or Console()
    bundle = load_bundle(model_path)
    if organ_mask_path is None:
        raise InputError(f"{image_path}: --organ-mask is required: this model crops patches "
                         "inside the organ label and automatic organ segmentation is not "
                         "available yet")
    start = time.perf_counter()
    case = read_case(image_path, organ_mask_path=organ_mask_path)
    read_s = time.perf_counter() - start
    diagnosis = diagnose_case(bundle, case, organ_mask_source="given")
    diagnosis.timings_s = {"read": round(read_s, 4), **diagnosis.timings_s}
    if out_path is not None:
        write_json_atomic(out_path, diagnosis.to_dict())
    console.print(f"{diagnosis.patient_id}: [bold]{diagnosis.decision}[/] (patient score "
                  f"{diagnosis.patient_score:.3f} vs threshold {diagnosis.patient_threshold:.3f}; "
                  f"{diagnosis.n_positive_patches}/{diagnosis.n_patches} patches above "
                  f"{diagnosis.patch_threshold:.3f})")
    if out_path is not None:
        console.print(f"result written to {out_path}")
    return diagnosis


def _evaluated_training_patients(bundle: PatchModelBundle, patient_ids: list[str]) -> list[str]:
    split = bundle.summary.get("split", {})
    seen = set(split.get("train", [])) | set(split.get("validation", []))
    return sorted(seen & set(patient_ids))


def evaluate_dataset(model_path: str | Path, dataset: str | Path, out_dir: str | Path,
                     console: Console | None = None, progress: bool = True, n_boot: int = 1000,
                     seed: int = 0) -> CohortEvaluation:
    """Score a labelled dataset with a bundle and write the report folder (95 % CIs from
    `n_boot` bootstrap resamples where needed, seeded)."""
    console = console or Console()
    bundle = load_bundle(model_path)
    refs = load_dataset(dataset)
    overlap = _evaluated_training_patients(bundle, [r.patient_id for r in refs])
    warnings = []
    if overlap:
        warnings.append(f"{len(overlap)} of these patients were used to train or tune this "
                        f"model (e.g. {', '.join(overlap[:3])}); metrics will be optimistic")
        console.print(f"[yellow]warning[/]: {warnings[0]}")
    cases = patch_cohort(refs, bundle.config, progress=progress)
    evaluation = evaluate_cohort(cases, score_cases(bundle.build_model(), cases),
                                 bundle.patch_threshold, bundle.patient_threshold)
    title = f"Evaluation of {model_path} on {dataset}"
    levels = write_cohort_report(out_dir, evaluation, title=title, warnings=warnings,
                                 meta={"model": str(model_path), "dataset": str(dataset),
                                       "training_patients_evaluated": overlap},
                                 source=str(dataset), n_boot=n_boot, seed=seed)
    print_levels(levels, console, title)
    console.print(f"report written to {out_dir}")
    return evaluation


def run_demo(out_dir: Path, n_patients: int = 60, seed: int = 0,
             console: Console | None = None, progress: bool = True) -> TrainingOutcome:
    """Synthetic cohort -> train -> thresholds -> held-out report -> one diagnosis."""
    from cadx.synth.ct_phantom import CohortSpec, write_msd_cohort

    console = console or Console()
    started = time.perf_counter()
    data_dir = out_dir / "data"
    console.rule("[bold]cadx demo[/]: synthetic abdominal CT cohort")
    write_msd_cohort(data_dir, CohortSpec(n_patients=n_patients, seed=seed), progress=progress)
    console.print(f"{n_patients} patients written to {data_dir} (MSD layout)")
    console.rule("training the patch CNN (patient-level split 60/20/20)")
    model_path = out_dir / "model.cadx"
    outcome = train_from_dataset(data_dir, model_path, DEMO_CONFIG, console=console,
                                 progress=progress)
    evaluation = outcome.test_evaluation
    write_cohort_report(out_dir / "report", evaluation, title="cadx demo: held-out test patients",
                        meta={"model": str(model_path), "dataset": str(data_dir), "split": "test"})
    console.print(f"test report written to {out_dir / 'report'}")
    console.rule("diagnosing one held-out patient from its files")
    patient = next(r for r in load_dataset(data_dir) if r.patient_id == outcome.split.test[0])
    diagnose_file(model_path, patient.image_path, patient.label_path,
                  out_dir / f"diagnosis_{patient.patient_id}.json", console=console)
    console.print(f"demo finished in {time.perf_counter() - started:.0f} s")
    return outcome
