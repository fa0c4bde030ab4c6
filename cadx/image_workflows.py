"""What the 2D-track commands do, as functions: synth us, train-images, train-features and
diagnose of image bundles (the CLI calls these)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from cadx.diagnose.images import ImageDiagnosis, diagnose_image_files
from cadx.errors import InputError
from cadx.evaluate.report import print_levels, write_report
from cadx.image_bundle import load_image_bundle, save_image_bundle
from cadx.io.atomic import write_json_atomic
from cadx.io.images import load_image_dataset, patient_id_from_filename
from cadx.synth.us_lesions import UltrasoundCohortSpec, write_us_cohort
from cadx.train.image_pipeline import (
    ImageModelConfig,
    ImageTrainingOutcome,
    train_feature_model,
    train_image_ensemble,
)


def synth_us(out_dir: str | Path, spec: UltrasoundCohortSpec, console: Console | None = None,
             progress: bool = True) -> Path:
    """Write a synthetic ultrasound cohort (class folders + manifest.csv)."""
    console = console or Console()
    out = write_us_cohort(out_dir, spec, progress=progress)
    console.print(f"wrote {spec.n_patients} synthetic ultrasound patients "
                  f"({round(spec.n_patients * spec.malignant_fraction)} malignant) to {out}")
    return out


def _print_outcome(outcome: ImageTrainingOutcome, console: Console) -> None:
    bundle = outcome.bundle
    for warning in bundle.summary.get("warnings", []):
        console.print(f"[yellow]warning[/]: {escape(warning)}")
    for split, counts in bundle.summary["counts"].items():
        console.print(f"  {split:<10} {counts['patients']:>4} patients "
                      f"({counts['malignant_patients']} malignant), {counts['images']:>5} images")
    for name, history in outcome.histories.items():
        console.print(f"  {name}: {len(history.train_loss)} epochs, best validation AUC "
                      f"{history.best_validation_auc:.3f} at epoch {history.best_epoch + 1}"
                      + (" (early stop)" if history.stopped_early else ""))
    for spec in bundle.networks:
        if spec.weight is not None:
            console.print(f"  ensemble weight of {spec.arch}: {spec.weight:.3f} "
                          f"(validation AUC {spec.validation_auc:.3f})")
    for label, point in (("image", bundle.image_operating_point),
                         (f"exam ({bundle.aggregation})", bundle.exam_operating_point)):
        console.print(f"  validation {label}: AUC {point.auc:.3f}, threshold "
                      f"{point.threshold:.4f} (SN {point.sensitivity:.3f}, "
                      f"SP {point.specificity:.3f})")


def _report(outcome: ImageTrainingOutcome, out_path: Path, report_dir: str | Path | None,
            console: Console) -> None:
    if not outcome.test_levels:
        console.print("no held-out test patients (test fraction 0 or one class): "
                      "no test metrics")
        return
    title = f"Held-out test patients ({out_path.name})"
    print_levels(outcome.test_levels, console, title)
    if report_dir is not None:
        write_report(report_dir, outcome.test_levels, title=title,
                     meta={"model": str(out_path), "dataset": outcome.bundle.summary["dataset"],
                           "split": "test"},
                     warnings=outcome.bundle.summary.get("warnings", []))
        console.print(f"test report written to {report_dir}")


def train_images(dataset: str | Path, out_path: str | Path, archs: Sequence[str],
                 config: ImageModelConfig, *, init_weights: Mapping[str, str] | None = None,
                 report_dir: str | Path | None = None, console: Console | None = None,
                 progress: bool = True) -> ImageTrainingOutcome:
    """Train an AUC-weighted CNN ensemble on an image dataset and write the bundle."""
    console = console or Console()
    data = load_image_dataset(dataset, progress=progress)
    console.print(f"[bold]cadx train-images[/]: {len(data)} images of "
                  f"{len(data.patient_ids)} patients from {dataset}; {', '.join(archs)} at "
                  f"{config.size_px} px, width x{config.width}")
    outcome = train_image_ensemble(data, archs, config, init_weights=init_weights,
                                   progress=progress)
    save_image_bundle(outcome.bundle, out_path)
    _print_outcome(outcome, console)
    _report(outcome, Path(out_path), report_dir, console)
    console.print(f"model bundle written to {out_path}")
    return outcome


def train_features(dataset: str | Path, out_path: str | Path, backbones: Sequence[str],
                   layers: Sequence[str], classifiers: Sequence[str], texture: bool,
                   config: ImageModelConfig, *, backbones_from: str | Path | None = None,
                   init_weights: Mapping[str, str] | None = None,
                   report_dir: str | Path | None = None, console: Console | None = None,
                   progress: bool = True) -> ImageTrainingOutcome:
    """Deep (and/or texture) features + SVM / random forest on an image dataset; write the
    bundle."""
    console = console or Console()
    source = load_image_bundle(backbones_from) if backbones_from else None
    data = load_image_dataset(dataset, progress=progress)
    what = [f"{', '.join(backbones)} {'/'.join(layers)}"] if backbones else []
    what += ["GLCM + wavelet texture"] if texture else []
    console.print(f"[bold]cadx train-features[/]: {len(data)} images of "
                  f"{len(data.patient_ids)} patients from {dataset}; features: "
                  f"{' + '.join(what)}; classifier: {' + '.join(classifiers)}")
    outcome = train_feature_model(data, backbones, layers, classifiers, texture, config,
                                  source_bundle=source, init_weights=init_weights,
                                  progress=progress)
    save_image_bundle(outcome.bundle, out_path)
    for arch, origin in outcome.bundle.summary["backbones"].items():
        console.print(f"  {arch} weights: {origin}")
    console.print(f"  {outcome.bundle.summary['n_features']} features per image")
    _print_outcome(outcome, console)
    _report(outcome, Path(out_path), report_dir, console)
    console.print(f"model bundle written to {out_path}")
    return outcome


def diagnose_images_command(model_path: str | Path, image_paths: Sequence[str | Path],
                            patient_id: str | None, cam_dir: str | Path | None,
                            out_path: str | Path | None,
                            console: Console | None = None) -> ImageDiagnosis:
    """Diagnose one patient's exam from image files; JSON written atomically to `out_path`."""
    console = console or Console()
    if not image_paths:
        raise InputError("no images given: cadx diagnose MODEL IMAGE [IMAGE ...]")
    bundle = load_image_bundle(model_path)
    patient_id = patient_id or patient_id_from_filename(image_paths[0])
    diagnosis = diagnose_image_files(bundle, image_paths, patient_id, cam_dir)
    if out_path is not None:
        write_json_atomic(out_path, diagnosis.to_dict())
    for result in diagnosis.images:
        line = f"  {escape(result.name)}: p = {result.probability:.3f}"
        if result.cam_png:
            line += f"  CAM {escape(result.cam_png)}"
        console.print(line)
    for note in diagnosis.notes:
        console.print(f"  note: {note}")
    console.print(f"{escape(patient_id)}: [bold]{diagnosis.decision}[/] (exam score "
                  f"{diagnosis.aggregation} = {diagnosis.exam_score:.3f} vs threshold "
                  f"{diagnosis.exam_threshold:.3f}; {len(diagnosis.images)} images)")
    if out_path is not None:
        console.print(f"result written to {out_path}")
    return diagnosis
