"""What the 2D-track commands do, as functions: synth us, train-images, train-features,
evaluate-images and diagnose of image bundles (the CLI calls these)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from cadx.decide.exam import exam_threshold_text
from cadx.diagnose.images import ImageDiagnosis, diagnose_image_files
from cadx.errors import InputError
from cadx.evaluate.images import ImageEvaluation, evaluate_image_model
from cadx.evaluate.report import print_levels, write_report
from cadx.image_bundle import ImageModelBundle, load_image_bundle, save_image_bundle
from cadx.io.atomic import write_json_atomic
from cadx.io.clinical import load_clinical_schema
from cadx.io.images import load_image_dataset, patient_id_from_filename
from cadx.models.backbones import feature_layers_of, is_pretrained_arch
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
    for label, point, threshold in (
            ("image", bundle.image_operating_point, f"{bundle.image_threshold:.4f}"),
            (f"exam ({bundle.aggregation})", bundle.exam_operating_point,
             exam_threshold_text(bundle.exam_threshold, bundle.aggregation))):
        console.print(f"  validation {label}: AUC {point.auc:.3f}, threshold {threshold} "
                      f"(SN {point.sensitivity:.3f}, SP {point.specificity:.3f})")


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
                  f"{config.size_px} px"
                  + ("" if all(map(is_pretrained_arch, archs)) else f", width x{config.width}"))
    outcome = train_image_ensemble(data, archs, config, init_weights=init_weights,
                                   progress=progress)
    save_image_bundle(outcome.bundle, out_path)
    _print_outcome(outcome, console)
    _report(outcome, Path(out_path), report_dir, console)
    console.print(f"model bundle written to {out_path}")
    return outcome


def train_features(dataset: str | Path, out_path: str | Path, backbones: Sequence[str],
                   layers: Sequence[str] | None, classifiers: Sequence[str], texture: bool,
                   config: ImageModelConfig, *, backbones_from: str | Path | None = None,
                   init_weights: Mapping[str, str] | None = None,
                   feature_cache: str | Path | None = None,
                   candidate_sizes: Sequence[int] = (),
                   report_dir: str | Path | None = None, console: Console | None = None,
                   progress: bool = True) -> ImageTrainingOutcome:
    """Deep (and/or texture) features + SVM / random forest on an image dataset; write the
    bundle. `layers` None takes each backbone's `default_feature_layers`. `feature_cache`
    keeps the feature matrices for later runs; with several `candidate_sizes` the one with the
    best validation AUC is kept."""
    console = console or Console()
    source = load_image_bundle(backbones_from) if backbones_from else None
    data = load_image_dataset(dataset, progress=progress)
    what = [", ".join(f"{arch} {'/'.join(feature_layers_of(arch, layers))}"
                      for arch in backbones)] if backbones else []
    what += ["GLCM + wavelet texture"] if texture else []
    console.print(f"[bold]cadx train-features[/]: {len(data)} images of "
                  f"{len(data.patient_ids)} patients from {dataset}; features: "
                  f"{' + '.join(what)}; classifier: {' + '.join(classifiers)}")
    outcome = train_feature_model(data, backbones, layers, classifiers, texture, config,
                                  source_bundle=source, init_weights=init_weights,
                                  feature_cache=feature_cache,
                                  candidate_sizes=candidate_sizes, progress=progress)
    save_image_bundle(outcome.bundle, out_path)
    tried = outcome.bundle.summary["size_validation_auc"]
    if len(tried) > 1:
        console.print("  validation image AUC by size: "
                      + ", ".join(f"{size} px {auc:.3f}" for size, auc in tried.items())
                      + f" -> {outcome.bundle.size_px} px kept")
    for arch, origin in outcome.bundle.summary["backbones"].items():
        console.print(f"  {arch} weights: {origin}")
    reused = outcome.bundle.summary.get("features_from_cache", [])
    console.print(f"  {outcome.bundle.summary['n_features']} features per image"
                  + (f" ({', '.join(reused)} read from {feature_cache})" if reused else ""))
    _print_outcome(outcome, console)
    _report(outcome, Path(out_path), report_dir, console)
    console.print(f"model bundle written to {out_path}")
    return outcome


def diagnose_images_command(model_path: str | Path, image_paths: Sequence[str | Path],
                            patient_id: str | None, cam_dir: str | Path | None,
                            out_path: str | Path | None, console: Console | None = None,
                            clinical: Mapping[str, str] | None = None) -> ImageDiagnosis:
    """Diagnose one patient's exam from image files; JSON written atomically to `out_path`.
    `clinical` values (column -> text) feed the bundle's fusion model, if it has one."""
    from cadx.diagnose.clinical import add_fusion

    console = console or Console()
    if not image_paths:
        raise InputError("no images given: cadx diagnose MODEL IMAGE [IMAGE ...]")
    bundle = load_image_bundle(model_path)
    patient_id = patient_id or patient_id_from_filename(image_paths[0])
    diagnosis = diagnose_image_files(bundle, image_paths, patient_id, cam_dir)
    add_fusion(bundle, diagnosis, clinical or {})
    if out_path is not None:
        write_json_atomic(out_path, diagnosis.to_dict())
    for result in diagnosis.images:
        if result.probability is None:
            console.print(f"  {escape(result.name)}: not judged ({escape(result.not_judged)})")
            continue
        line = f"  {escape(result.name)}: p = {result.probability:.3f}"
        if result.cam_png:
            line += f"  CAM {escape(result.cam_png)}"
        console.print(line)
    for note in diagnosis.notes:
        if "not judged" not in note:
            console.print(f"  note: {escape(note)}")
    console.print(f"{escape(patient_id)}: [bold]{diagnosis.decision}[/] (exam score "
                  f"{diagnosis.aggregation} = {diagnosis.exam_score:.3f} vs threshold "
                  f"{diagnosis.exam_threshold:.3f}; {len(diagnosis.images)} images)")
    fused = diagnosis.fusion
    if fused is not None and fused["score"] is not None:
        console.print(f"{escape(patient_id)} with {escape(', '.join(fused['columns']))}: "
                      f"[bold]{fused['decision']}[/] (fused score {fused['score']:.3f} vs "
                      f"threshold {fused['threshold']:.3f})")
    if out_path is not None:
        console.print(f"result written to {out_path}")
    return diagnosis


def evaluate_images_command(model_path: str | Path, dataset_path: str | Path,
                            out_dir: str | Path | None, *, split: str | None = None,
                            fold: str | None = None, subgroup_columns: Sequence[str] = (),
                            subgroup_bins: Mapping[str, Sequence[float]] | None = None,
                            schema_path: str | Path | None = None,
                            out_of_range: str = "error",
                            each_image_a_patient: bool = False, with_cam: bool = True,
                            n_boot: int = 1000, seed: int = 0, console: Console | None = None,
                            progress: bool = True) -> ImageEvaluation:
    """Apply an image bundle with its stored thresholds to a labelled dataset (an external
    validation); print the levels and write the report folder to `out_dir`."""
    console = console or Console()
    schema = load_clinical_schema(schema_path) if schema_path else None
    bundle = load_image_bundle(model_path)
    data = load_image_dataset(dataset_path, progress=progress)
    console.print(f"[bold]cadx evaluate-images[/]: {Path(model_path).name} on "
                  f"{len(data)} images of {len(data.patient_ids)} patients from {dataset_path}"
                  + (f" (split {split})" if split else "")
                  + (f" (fold {fold})" if fold else "") + "; thresholds as stored")
    result = evaluate_image_model(bundle, data, split=split, fold=fold,
                                  subgroup_columns=subgroup_columns,
                                  subgroup_bins=subgroup_bins, schema=schema,
                                  out_of_range=out_of_range,
                                  each_image_a_patient=each_image_a_patient, with_cam=with_cam,
                                  n_boot=n_boot, seed=seed, progress=progress)
    for warning in result.warnings:
        console.print(f"[yellow]warning[/]: {escape(warning)}")
    for note in result.notes:
        console.print(f"  note: {escape(note)}")
    title = f"{Path(model_path).name} on {Path(dataset_path).name}"
    print_levels(result.levels, console, title, result.comparisons)
    for name, cam in result.cam.items():
        ci = cam.pointing_game_ci
        console.print(f"  Grad-CAM on {cam.n} {name} images: pointing game "
                      f"{cam.pointing_game:.3f} [{ci.low:.3f}, {ci.high:.3f}] "
                      f"({cam.pointing_hits}/{cam.n}), CAM mass in lesion "
                      f"{cam.mass_in_mask:.3f}; chance (lesion area share) {cam.chance:.3f}")
    if out_dir is not None:
        meta = {"model": str(model_path), "dataset": str(dataset_path),
                "split": split or "all images", "fold": fold or "all folds",
                "thresholds": "as stored in the model "
                "(Youden on its validation patients)",
                "grad_cam": {name: cam.to_dict() for name, cam in result.cam.items()},
                "notes": result.notes}
        if result.clinical is not None:
            meta["clinical"] = result.clinical.to_dict()
        if bundle.fusion is not None:
            meta["fusion"] = bundle.fusion.describe()
        write_report(out_dir, result.levels, title=title, meta=meta, warnings=result.warnings,
                     comparisons=result.comparisons)
        console.print(f"report written to {out_dir}")
    return result


def fuse_command(model_path: str | Path, dataset_path: str | Path, columns: Sequence[str],
                 out_path: str | Path, *, schema_path: str | Path | None = None,
                 out_of_range: str = "error", seed: int = 0, console: Console | None = None,
                 progress: bool = True) -> ImageModelBundle:
    """`cadx fuse`: fit the fusion of the bundle's exam score with clinical `columns` on its
    validation patients (found in the manifest `dataset_path`) and write the bundle with it to
    `out_path`."""
    from cadx.decide.fusion import print_fusion_fit
    from cadx.decide.image_fusion import fit_image_fusion

    console = console or Console()
    schema = load_clinical_schema(schema_path) if schema_path else None
    bundle = load_image_bundle(model_path)
    data = load_image_dataset(dataset_path, progress=progress)
    fit = fit_image_fusion(bundle, data, columns, schema=schema, out_of_range=out_of_range,
                           seed=seed, progress=progress)
    bundle.fusion = fit.fusion
    save_image_bundle(bundle, out_path)
    print_fusion_fit(console, fit, fit.fusion.describe(), out_path, "cadx evaluate-images")
    return bundle
