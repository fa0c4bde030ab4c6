"""What each command does, as functions: train, diagnose, evaluate, demo (the CLI calls these)."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from rich.console import Console
from rich.markup import escape

from cadx.bundle import PatchModelBundle, load_bundle, save_bundle
from cadx.case import Case
from cadx.config import (
    CADX_DECIDE,
    DEMO_PATIENTS,
    DecideConfig,
    ModelConfig,
    PatchConfig,
    PipelineConfig,
    TrainConfig,
)
from cadx.diagnose.patient import Diagnosis, diagnose_case, organ_not_found
from cadx.errors import InputError
from cadx.evaluate.cohort import CohortEvaluation, evaluate_cohort
from cadx.evaluate.report import print_evaluation, print_levels, write_cohort_report
from cadx.io.atomic import write_json_atomic
from cadx.io.dataset import CaseRef, load_dataset
from cadx.io.dicom import is_dicom_path, read_dicom_case
from cadx.io.dicom_results import result_datasets, write_dicom_results
from cadx.io.provenance import fingerprints, seen_before
from cadx.io.volumes import read_case
from cadx.patches.cohort import PatchedCase, patch_cohort
from cadx.train.pipeline import TrainingOutcome, score_cases, train_patch_model
from cadx.train.precision import bf16_emulated_warning

if TYPE_CHECKING:
    from cadx.segment.config import SegConfig
    from cadx.segment.train import SegTrainingOutcome

# Scaled-down callbacks and a smaller batch so the demo trains in minutes on 2 CPU cores, in
# bf16 where the CPU has it (2.35x the fp32 training speed, benchmarks/bench_training.py). 35 %
# of the patients are held out for the test (56 of the default 160), so that its patient-level
# intervals mean something; 20 % validate and 45 % train. The learning curve (docs/ct-pipeline.md)
# showed both more training patients and more patch-steps raising validation AUC, so bf16's
# speed went into training patients. The levers kept are those that raised validation patient
# AUC on separate validation phantoms: 2.5D input (the slice and one neighbour on each side),
# patch probabilities averaged over flips, patients scored by their highest patch probability,
# and the dense UNet patch network trained on the patches' tumour masks (at the demo's scale
# 0.802 against the Table-1 network's 0.726 on 200 validation phantoms, in 2.9 against 5.2 min
# of training: benchmarks/ct_dense_demo_scale.py). The UNet's speed went into patients again:
# 160 phantoms (72 training) instead of 120, within the 10-minute budget (7.9 min idle).
DEMO_CONFIG = PipelineConfig(
    patches=PatchConfig(size_px=50, stride_px=25, context_slices=1),
    model=ModelConfig(arch="unet", score_region="organ"),
    train=TrainConfig(batch_size=64, max_epochs=12, learning_rate=3e-4, reduce_lr_patience=3,
                      early_stop_patience=5, seed=0, monitor="auc", validation_fraction=0.2,
                      test_fraction=0.35, precision="auto"),
    decide=CADX_DECIDE,
)


def record_training_data(bundle: PatchModelBundle, dataset: str | Path,
                         refs: Sequence[CaseRef]) -> None:
    """Record in the bundle's summary the training dataset and the content fingerprints of its
    training and validation scans, so that `cadx evaluate` recognises them under any name (and
    does not mistake a new cohort's reused ids for them)."""
    bundle.summary["dataset"] = str(dataset)
    split = bundle.summary.get("split", {})
    used = set(split.get("train", [])) | set(split.get("validation", []))
    bundle.summary["image_sha256"] = fingerprints(
        {r.patient_id: r.image_path for r in refs if r.patient_id in used})


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
    console.print(f"  validation: patient score {outcome.bundle.config.decide.score_name}, "
                  f"patient AUC {patient_point.auc:.3f}, patient threshold "
                  f"{patient_point.threshold:.4f} (SN {patient_point.sensitivity:.3f}, "
                  f"SP {patient_point.specificity:.3f})")


def train_from_dataset(dataset: str | Path, out_path: str | Path, config: PipelineConfig,
                       console: Console | None = None, progress: bool = True,
                       seg: str | Path | None = None, patch_store: str | Path | None = None,
                       resume: bool = False) -> TrainingOutcome | None:
    """Read a labelled dataset, train with patient-level splits, write the bundle (embedding
    the organ segmenter bundle `seg` when given, so `diagnose` needs no organ mask).

    `patch_store`: crop into / train from a memory-mapped patch store in this folder. Under
    torchrun (`cadx train --ddp`) every rank trains and rank 0 alone writes the checkpoint
    (beside the bundle, `.ckpt`) and the bundle; the other ranks return None. `resume`: go on
    from that checkpoint when it exists (and write one after every epoch).
    """
    from cadx.scale.distributed import is_distributed, patched_cases

    console = console or Console()
    segmenter = None
    if seg is not None:
        from cadx.segment.bundle import load_segmenter

        segmenter = load_segmenter(seg)
    refs = load_dataset(dataset)
    console.print(f"[bold]cadx train[/]: {len(refs)} cases from {dataset}")
    cases = patched_cases(refs, config, patch_store=patch_store, progress=progress)
    checkpoint = Path(out_path).with_suffix(".ckpt") if is_distributed() or resume else None
    outcome = train_patch_model(cases, config, progress=progress, checkpoint_path=checkpoint,
                                resume=resume)
    if outcome is None:
        return None
    record_training_data(outcome.bundle, dataset, refs)
    outcome.bundle.segmenter = segmenter
    save_bundle(outcome.bundle, out_path)
    _print_training(outcome, console)
    if outcome.test_evaluation is not None:
        print_evaluation(outcome.test_evaluation, console, "Held-out test patients")
    console.print(f"model bundle written to {out_path}")
    return outcome


def train_segmenter_from_dataset(dataset: str | Path, out_path: str | Path, config: SegConfig,
                                 console: Console | None = None, progress: bool = True
                                 ) -> SegTrainingOutcome:
    """Train the organ segmenter on a labelled dataset; print Dice per validation case; write
    the segmenter bundle."""
    from cadx.segment.bundle import save_segmenter
    from cadx.segment.train import train_segmenter

    console = console or Console()
    refs = load_dataset(dataset)
    console.print(f"[bold]cadx train-seg[/]: {len(refs)} cases from {dataset}")
    outcome = train_segmenter(refs, config, progress=progress)
    outcome.bundle.summary["dataset"] = str(dataset)
    save_segmenter(outcome.bundle, out_path)
    console.print(f"  train {len(outcome.split.train)} patients, validation "
                  f"{len(outcome.split.validation)}; best epoch "
                  f"{outcome.bundle.summary['history']['best_epoch'] + 1}")
    console.print("  validation Dice per case: " + ", ".join(
        f"{pid} {d:.3f}" for pid, d in outcome.validation_dice.items()))
    console.print(f"  validation Dice mean {outcome.bundle.summary['validation_dice_mean']:.3f}")
    console.print(f"segmenter bundle written to {out_path}")
    return outcome


def diagnose_file(model_path: str | Path, image_path: str | Path,
                  organ_mask_path: str | Path | None, out_path: str | Path | None,
                  console: Console | None = None, series_uid: str | None = None,
                  dicom_out: str | Path | None = None,
                  keep_in_plane_spacing: bool = False,
                  clinical: Mapping[str, str] | None = None) -> Diagnosis:
    """Diagnose one patient from files; write JSON atomically when `out_path` is given.

    `image_path` is a volume file or a DICOM folder/file (`series_uid` picks the series; an
    organ SEG in the folder that references it is used when no `organ_mask_path` is given;
    the JSON names the study and series scored); for DICOM input, `dicom_out` receives the
    result as an SR (+ SEG) file.
    `keep_in_plane_spacing`: score the scan's own pixels instead of resampling them to the
    bundle's training pixel size (the seed's behaviour; bundles from before cadx recorded that
    size always do). `clinical` values (column -> text) feed the bundle's fusion model, if it
    has one (`cadx fuse`): the fused score is shown beside the patient score.
    """
    from cadx.diagnose.clinical import add_fusion

    console = console or Console()
    bundle = load_bundle(model_path)
    if keep_in_plane_spacing:
        bundle = bundle.with_native_in_plane_spacing()
    dicom = is_dicom_path(image_path)
    if dicom_out is not None and not dicom:
        raise InputError(f"{image_path}: --dicom-out needs DICOM input (the results reference "
                         "the source series)")
    if organ_mask_path is None and bundle.segmenter is None and not dicom:
        raise InputError(f"{image_path}: --organ-mask is required: {model_path} crops patches "
                         "inside the organ and embeds no organ segmenter (train it with "
                         "`cadx train --seg seg.cadx`)")
    start = time.perf_counter()
    if dicom:
        # Without a segmenter, a missing organ mask is refused before the pixels are read.
        required = (None if bundle.segmenter is not None else
                    organ_mask_advice(model_path, "put the organ SEG of this series in the "
                                                  "folder"))
        case = read_dicom_case(image_path, series_uid=series_uid, organ_mask_path=organ_mask_path,
                               organ_mask_required=required)
        for warning in case.meta["warnings"]:
            console.print(f"[yellow]warning[/]: {image_path}: {warning}")
    else:
        case = read_case(image_path, organ_mask_path=organ_mask_path)
    read_s = time.perf_counter() - start
    diagnosis = _diagnose_given_or_predicted_organ(bundle, case, console)
    diagnosis.timings_s = {"read": round(read_s, 4), **diagnosis.timings_s}
    add_fusion(bundle, diagnosis, clinical or {})
    # Built before the JSON is written, so that its warnings (e.g. no SEG, and why) are in it.
    datasets = (None if dicom_out is None else
                result_datasets(diagnosis, case, bundle.config.preprocess.slice_thickness_mm))
    for warning in diagnosis.warnings:
        console.print(f"[yellow]warning[/]: {image_path}: {warning}")
    if out_path is not None:
        scored = ({} if not dicom else {"study_uid": case.meta["dicom"]["study_uid"],
                                        "series_uid": case.meta["dicom"]["series_uid"]})
        result = {**scored, **diagnosis.to_dict()}
        if dicom:  # what reading the folder set aside or skipped belongs to the result too
            result["warnings"] = [*case.meta["warnings"], *diagnosis.warnings]
        write_json_atomic(out_path, result)
    if datasets is not None:
        written = write_dicom_results(dicom_out, datasets)
        console.print(f"DICOM results written to {dicom_out}: "
                      f"{', '.join(path.name for path in written)}")
    if diagnosis.patient_score is not None:
        console.print(f"{diagnosis.patient_id}: [bold]{diagnosis.decision}[/] (patient score "
                      f"{diagnosis.patient_score:.3f} vs threshold "
                      f"{diagnosis.patient_threshold:.3f}; {diagnosis.n_positive_patches}/"
                      f"{diagnosis.n_patches} patches above {diagnosis.patch_threshold:.3f})")
    print_notes_and_fusion(diagnosis, console)
    if out_path is not None:
        console.print(f"result written to {out_path}")
    return diagnosis


def organ_mask_advice(model_path: str | Path, or_else: str) -> str:
    """What to do when a DICOM series comes without an organ mask and the model has no
    segmenter: give --organ-mask, or `or_else` (where to store the organ SEG)."""
    return (f"give --organ-mask (NIfTI or DICOM SEG) or {or_else}: {model_path} embeds no "
            "organ segmenter")


def print_notes_and_fusion(diagnosis: Diagnosis, console: Console) -> None:
    """The diagnosis's notes, then its fused decision when clinical values were fused."""
    for note in diagnosis.notes:
        console.print(f"  note: {escape(note)}")
    fused = diagnosis.fusion
    if fused is not None and fused["score"] is not None:
        console.print(f"{diagnosis.patient_id} with {escape(', '.join(fused['columns']))}: "
                      f"[bold]{fused['decision']}[/] (fused score {fused['score']:.3f} vs "
                      f"threshold {fused['threshold']:.3f})")


def fuse_ct_command(model_path: str | Path, dataset: str | Path, columns: Sequence[str],
                    out_path: str | Path, *, schema_path: str | Path | None = None,
                    out_of_range: str = "error", seed: int = 0, console: Console | None = None,
                    progress: bool = True) -> PatchModelBundle:
    """`cadx fuse` for a CT patch bundle: fit the fusion of its patient score with clinical
    `columns` on its validation patients (found in `dataset`, an MSD folder with cases.csv or a
    CSV manifest) and write the bundle with it to `out_path`."""
    from cadx.decide.ct_fusion import fit_ct_fusion
    from cadx.decide.fusion import print_fusion_fit
    from cadx.io.clinical import load_clinical_schema

    console = console or Console()
    schema = load_clinical_schema(schema_path) if schema_path else None
    bundle = load_bundle(model_path)
    fit = fit_ct_fusion(bundle, load_dataset(dataset), dataset, columns, schema=schema,
                        out_of_range=out_of_range, seed=seed, progress=progress)
    bundle.fusion = fit.fusion
    save_bundle(bundle, out_path)
    print_fusion_fit(console, fit, f"{fit.fusion.describe()}; patient score "
                     f"{bundle.config.decide.score_name} at the stored patch threshold "
                     f"{bundle.patch_threshold:.4f}", out_path, "cadx evaluate")
    return bundle


def calibrate_command(model_path: str | Path, dataset: str | Path, out_path: str | Path, *,
                      target_specificity: float | None = None,
                      console: Console | None = None, progress: bool = True
                      ) -> PatchModelBundle:
    """`cadx calibrate`: re-choose a CT/MR bundle's patient thresholds on a labelled cohort it
    has never seen (max Youden, or the most sensitive point with specificity >=
    `target_specificity`) and write the calibrated bundle to `out_path`. A cohort holding a
    scan the model was trained or tuned on is refused: its threshold would be optimistic."""
    from cadx.decide.calibration import calibrated_bundle

    console = console or Console()
    bundle = load_bundle(model_path)
    refs = load_dataset(dataset)
    warnings, seen = training_overlap_warnings(bundle, refs)
    if seen:
        raise InputError(f"{dataset}: {len(seen)} of its scans were used to train or tune "
                         f"{model_path} (e.g. {', '.join(seen[:3])}); calibrate on patients "
                         "the model has never seen")
    for warning in warnings:  # ids shared with training, contents unknown (older bundles)
        console.print(f"[yellow]warning[/]: {escape(warning)}")
    cases, scores, _ = scored_cohort(bundle, refs, console, progress)
    calibrated, record = calibrated_bundle(bundle, cases, scores, target_specificity,
                                           str(dataset))
    save_bundle(calibrated, out_path)
    console.print(
        f"calibrated on {record['patients']} patients of {dataset} ({record['with_tumour']} "
        f"with tumour), patient score {record['patient_score']}, {record['rule']}:\n"
        f"  previous threshold {record['previous_threshold']:.4f}: SN "
        f"{record['previous_sensitivity']:.3f}, SP {record['previous_specificity']:.3f} on "
        f"these patients\n"
        f"  new threshold      {record['threshold']:.4f}: SN {record['sensitivity']:.3f}, SP "
        f"{record['specificity']:.3f} (AUC {record['auc']:.3f}); the patch threshold "
        f"{calibrated.patch_threshold:.4f} is kept\n"
        f"calibrated bundle written to {out_path}; measure it on other patients "
        "(cadx evaluate), not on these")
    return calibrated


def _diagnose_given_or_predicted_organ(bundle: PatchModelBundle, case: Case,
                                       console: Console) -> Diagnosis:
    """Diagnose inside the case's organ mask, or inside the bundle's segmenter's prediction
    when none was given; no organ found gives the ORGAN_NOT_FOUND result, not a decision."""
    if case.organ_mask is not None:
        return diagnose_case(bundle, case,
                             organ_mask_source=str(case.meta.get("organ_mask_source", "given")))
    from cadx.segment.infer import with_predicted_organ

    start = time.perf_counter()
    case, segmentation = with_predicted_organ(bundle.segmenter, case)
    segment_s = round(time.perf_counter() - start, 4)
    if not segmentation.found:
        console.print(f"{case.patient_id}: [bold yellow]organ not found[/]: the segmenter found "
                      f"no organ of at least {bundle.segmenter.config.min_organ_volume_ml:g} ml "
                      f"(largest candidate {segmentation.volume_ml:.1f} ml); no diagnosis made")
        diagnosis = organ_not_found(bundle, case)
    else:
        diagnosis = diagnose_case(bundle, case, organ_mask_source="predicted")
    diagnosis.timings_s = {"segment": segment_s, **diagnosis.timings_s}
    return diagnosis


def training_overlap_warnings(bundle: PatchModelBundle, refs: list[CaseRef]
                              ) -> tuple[list[str], list[str]]:
    """(warnings, patients seen in training) for an evaluated cohort: patients whose scans are
    the content of a training or validation scan of `bundle` (any id), and ids shared with its
    training patients (as such only when the bundle stores no fingerprints to compare)."""
    split = bundle.summary.get("split", {})
    used_ids = [*split.get("train", []), *split.get("validation", [])]
    same, same_ids = seen_before({r.patient_id: r.image_path for r in refs}, used_ids,
                                 bundle.summary.get("image_sha256"))
    warnings = []
    if same:
        warnings.append(f"{len(same)} of these scans are the same images (by content) as scans "
                        f"used to train or tune this model (e.g. {', '.join(same[:3])}); "
                        "metrics will be optimistic")
    if same_ids and not bundle.summary.get("image_sha256"):
        warnings.append(f"{len(same_ids)} of these patients have the same ids as patients used "
                        f"to train or tune this model (e.g. {', '.join(same_ids[:3])}); this "
                        "bundle stores no image fingerprints, so whether they are the same "
                        "scans is unknown (if so, metrics will be optimistic)")
    return warnings, same


def scored_cohort(bundle: PatchModelBundle, refs: list[CaseRef], console: Console,
                  progress: bool) -> tuple[list[PatchedCase], list[np.ndarray], list[str]]:
    """A labelled cohort cropped and scored by `bundle` as `diagnose` would (its precision,
    test-time flips): (cases, patch scores per case, warnings). The warnings (in-plane spacing
    outside the training range, bf16 emulated in software) are printed once here."""
    cases = patch_cohort(refs, bundle.config, progress=progress)
    warnings = [w for w in (cohort_spacing_warning(bundle, cases),
                            bf16_emulated_warning(bundle.precision)) if w is not None]
    for warning in warnings:
        console.print(f"[yellow]warning[/]: {warning}")
    # Printed just above (and kept in evaluate's report): not a RuntimeWarning as well.
    scores = score_cases(bundle.build_model(warn_bf16_emulated=False), cases,
                         bundle.config.decide.test_time_flips, bundle.precision,
                         bundle.config.model)
    return cases, scores, warnings


def cohort_spacing_warning(bundle: PatchModelBundle, cases: list[PatchedCase]) -> str | None:
    """One line for all the cases whose in-plane pixel size lies outside the bundle's training
    range (the first one's warning, and how many), else None."""
    outside = [(case.patient_id, line) for case in cases if case.spacing_zyx_mm is not None
               and (line := bundle.in_plane_spacing_warning(case.spacing_zyx_mm)) is not None]
    if not outside:
        return None
    first_id, first = outside[0]
    more = f" (and {len(outside) - 1} more of {len(cases)} patients)" if len(outside) > 1 else ""
    return f"{first_id}: {first}{more}"


def evaluate_dataset(model_path: str | Path, dataset: str | Path, out_dir: str | Path,
                     console: Console | None = None, progress: bool = True, n_boot: int = 1000,
                     seed: int = 0, decide: DecideConfig | None = None,
                     keep_in_plane_spacing: bool = False,
                     subgroup_bins: Mapping[str, Sequence[float]] | None = None,
                     schema_path: str | Path | None = None,
                     out_of_range: str = "error") -> CohortEvaluation:
    """Score a labelled dataset with a bundle and write the report folder (95 % CIs from
    `n_boot` bootstrap resamples where needed, seeded). `decide`: decide with this
    patient score at the threshold the bundle stores for it (chosen on its validation patients)
    instead of the bundle's own. The scans are resampled in-plane to the bundle's training
    pixel size unless `keep_in_plane_spacing` (see `diagnose_file`). The dataset's clinical
    columns are checked against `schema_path` (a YAML schema, see `cadx.io.clinical`) and
    those of `subgroup_bins` (column -> edges) tabulated in bins. With a fusion model in the
    bundle (`cadx fuse`), the fused patient score is a level of its own, compared with the
    image-only one by DeLong's test on the same patients."""
    from cadx.evaluate.subgroups import clinical_subgroups
    from cadx.io.clinical import (
        case_rows,
        load_clinical_schema,
        schema_from_columns,
        validate_clinical,
        with_columns,
    )

    console = console or Console()
    schema = load_clinical_schema(schema_path) if schema_path else None
    subgroup_bins = dict(subgroup_bins or {})
    bundle = load_bundle(model_path)
    fusion_columns, fusion_notes = _fusion_to_evaluate(bundle, decide)
    if decide is not None:
        bundle = bundle.with_patient_score(decide)
    if keep_in_plane_spacing:
        bundle = bundle.with_native_in_plane_spacing()
    refs = load_dataset(dataset)
    if fusion_columns:  # the fusion's columns are read as they were when it was fitted
        fusion = bundle.fusion
        schema = with_columns(schema, schema_from_columns(
            {c: fusion.column_specs.get(c, {"kind": fusion.kinds[c]}) for c in fusion.columns},
            source=f"the fusion model of {bundle.name}"))
    clinical = None
    if schema is not None or subgroup_bins:
        clinical = validate_clinical(case_rows(refs), str(dataset), schema,
                                     columns=fusion_columns, numeric=list(subgroup_bins),
                                     out_of_range=out_of_range)
        clinical.raise_errors()
    warnings, overlap = training_overlap_warnings(bundle, refs)
    if clinical is not None:
        warnings += clinical.warnings
        fusion_notes = clinical.notes + fusion_notes
    for warning in warnings:
        console.print(f"[yellow]warning[/]: {escape(warning)}")
    cases, scores, scoring_warnings = scored_cohort(bundle, refs, console, progress)
    warnings += scoring_warnings
    evaluation = evaluate_cohort(cases, scores, bundle.patch_threshold,
                                 bundle.patient_threshold, config=bundle.config)
    fused, comparisons = [], []
    if fusion_columns:
        from cadx.evaluate.fusion import fused_level

        rows = evaluation.patients
        level, comparison, notes = fused_level(
            bundle.fusion, [int(bool(r["has_tumour"])) for r in rows],
            [r["patient_score"] for r in rows],
            [clinical.patients.get(str(r["patient_id"]), {}) for r in rows],
            name=f"patients + {', '.join(bundle.fusion.columns)} (fusion)",
            image_name="patient", n_boot=n_boot, seed=seed)
        fusion_notes += notes
        if level is not None:
            fused, comparisons = [level], [comparison]
    for note in fusion_notes:
        console.print(f"  note: {escape(note)}")
    title = f"Evaluation of {model_path} on {dataset}"
    subgroups, order = {}, {}
    if clinical is not None:
        ids = [str(row["patient_id"]) for row in evaluation.patients]
        subgroups, order = clinical_subgroups(
            [], subgroup_bins,
            {c: [clinical.patients[p].get(c) for p in ids] for c in clinical.columns},
            clinical.units, clinical.kinds)
        subgroups.update({c: [clinical.patients[p].get(c) for p in ids]
                          for c in clinical.columns
                          if c not in subgroups and clinical.kinds[c] == "categorical"})
    meta = {"model": str(model_path), "dataset": str(dataset),
            "patient_score": bundle.config.decide.score_name,
            "training_patients_evaluated": overlap,
            "in_plane_spacing_mm": bundle.config.preprocess.in_plane_spacing_mm}
    if clinical is not None:
        meta["clinical"] = clinical.to_dict()
    if bundle.fusion is not None:
        meta["fusion"] = bundle.fusion.describe()
    if "calibration" in bundle.summary:  # thresholds re-chosen by cadx calibrate
        meta["calibration"] = bundle.summary["calibration"]
    if fusion_notes:
        meta["notes"] = fusion_notes
    levels = write_cohort_report(out_dir, evaluation, title=title, warnings=warnings,
                                 subgroups=subgroups, subgroup_order=order, meta=meta,
                                 source=str(dataset), n_boot=n_boot, seed=seed,
                                 extra_levels=fused, comparisons=comparisons)
    print_levels(levels, console, title, comparisons)
    console.print(f"report written to {out_dir}")
    return evaluation


def _fusion_to_evaluate(bundle: PatchModelBundle, decide: DecideConfig | None
                        ) -> tuple[list[str], list[str]]:
    """(the columns of the bundle's fusion model, notes): none when it has no fusion model, or
    when `decide` asks for another patient score than the one the fusion was fitted on."""
    if bundle.fusion is None:
        return [], []
    fitted = str(bundle.fusion.fitted_on.get("patient_score", bundle.config.decide.score_name))
    if decide is not None and decide.score_name != fitted:
        return [], [f"fusion not evaluated: it was fitted on the patient score {fitted}, not "
                    f"{decide.score_name} (--patient-score)"]
    return list(bundle.fusion.columns), []


@dataclass(frozen=True)
class ShowcasePatient:
    """The test patient the demo diagnoses from its files, why, and where its positive patches
    lie."""

    patient_id: str
    reason: str
    patches: int
    tumour_patches: int  # patches labelled cancerous (they overlap the tumour)
    positive_patches: int  # patches scoring above the patch threshold
    positive_patches_on_tumour: int


def choose_showcase_patient(evaluation: CohortEvaluation) -> ShowcasePatient:
    """The demo's showcase, chosen by rule rather than by position: the test patient with the
    highest patient score among the true positives (cancer, and suspected); without one, the
    cancer patient with the highest score (a missed cancer, said so); without cancer
    patients, the highest-scoring patient."""
    rows = evaluation.patients
    true_positives = [r for r in rows if r["has_tumour"] and r["predicted_cancer"]]
    cancers = [r for r in rows if r["has_tumour"]]
    if true_positives:
        pool, reason = true_positives, ("the test patient with the highest patient score among "
                                        "the true positives")
    elif cancers:
        pool, reason = cancers, ("no test cancer was detected: the cancer patient with the "
                                 "highest patient score (a false negative)")
    else:
        pool, reason = rows, "no test patient has cancer: the highest patient score"
    row = max(pool, key=lambda r: (r["patient_score"], r["patient_id"]))
    mine = evaluation.patch_patient_ids == str(row["patient_id"])
    positive = evaluation.patch_scores[mine] > evaluation.patch_threshold
    tumour = evaluation.patch_labels[mine].astype(bool)
    return ShowcasePatient(str(row["patient_id"]), reason, int(mine.sum()), int(tumour.sum()),
                           int(positive.sum()), int((positive & tumour).sum()))


def run_demo(out_dir: Path, n_patients: int = DEMO_PATIENTS, seed: int = 0,
             console: Console | None = None, progress: bool = True) -> TrainingOutcome:
    """Synthetic cohort -> train -> thresholds -> held-out report -> one diagnosis."""
    from cadx.synth.ct_phantom import CohortSpec, write_msd_cohort

    console = console or Console()
    started = time.perf_counter()
    data_dir = out_dir / "data"
    console.rule("[bold]cadx demo[/]: synthetic abdominal CT cohort")
    write_msd_cohort(data_dir, CohortSpec(n_patients=n_patients, seed=seed), progress=progress)
    console.print(f"{n_patients} patients written to {data_dir} (MSD layout)")
    train = DEMO_CONFIG.train
    shares = (1 - train.validation_fraction - train.test_fraction, train.validation_fraction,
              train.test_fraction)
    console.rule("training the patch CNN (patient-level split "
                 + "/".join(f"{share:.0%}".removesuffix("%") for share in shares) + ")")
    model_path = out_dir / "model.cadx"
    outcome = train_from_dataset(data_dir, model_path, DEMO_CONFIG, console=console,
                                 progress=progress)
    evaluation = outcome.test_evaluation
    write_cohort_report(out_dir / "report", evaluation, title="cadx demo: held-out test patients",
                        meta={"model": str(model_path), "dataset": str(data_dir), "split": "test"})
    console.print(f"test report written to {out_dir / 'report'}")
    console.rule("diagnosing one held-out patient from its files")
    showcase = choose_showcase_patient(evaluation)
    console.print(f"{showcase.patient_id}: {showcase.reason}")
    console.print(f"  {showcase.positive_patches_on_tumour} of its {showcase.positive_patches} "
                  f"patches above the patch threshold overlap the tumour (which touches "
                  f"{showcase.tumour_patches} of its {showcase.patches} patches)")
    patient = next(r for r in load_dataset(data_dir) if r.patient_id == showcase.patient_id)
    diagnose_file(model_path, patient.image_path, patient.label_path,
                  out_dir / f"diagnosis_{patient.patient_id}.json", console=console)
    console.print(f"demo finished in {time.perf_counter() - started:.0f} s")
    return outcome
