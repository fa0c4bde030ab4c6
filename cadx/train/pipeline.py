"""Train the two-level detector from patched cases: split, fit, pick both thresholds, test."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from cadx.bundle import PatchModelBundle
from cadx.config import ModelConfig, PipelineConfig
from cadx.decide.aggregate import candidate_patient_scores
from cadx.decide.roc import OperatingPoint, youden_operating_point
from cadx.errors import SplitError
from cadx.evaluate.cohort import CohortEvaluation, cohort_patient_scores, evaluate_cohort
from cadx.patches.cohort import PatchedCase
from cadx.patches.store import join_patches
from cadx.train.fit import (
    TrainingHistory,
    fit_patch_cnn,
    patch_regions,
    predict_patch_probabilities,
)
from cadx.train.precision import resolve_precision
from cadx.train.splits import PatientSplit, assert_disjoint, split_patients


@dataclass
class TrainingOutcome:
    """The bundle plus what the caller may want to report without recomputing."""

    bundle: PatchModelBundle
    split: PatientSplit
    history: TrainingHistory
    test_cases: list[PatchedCase]
    test_evaluation: CohortEvaluation | None


def score_cases(model: torch.nn.Module, cases: Sequence[PatchedCase],
                flip_average: bool = False, precision: str = "fp32",
                model_config: ModelConfig | None = None) -> list[np.ndarray]:
    """Score all cases' patches in one batched pass (averaged over flips with `flip_average`,
    in `precision`: a bundle's `precision`; inside the organ where `model_config` says so);
    one score array per case."""
    if not cases:
        return []
    joined = join_patches(cases)
    scores = predict_patch_probabilities(
        model, joined.patches, flip_average=flip_average, precision=precision,
        regions=patch_regions(joined, model_config or ModelConfig(), "scored"))
    bounds = np.cumsum([len(c.patches) for c in cases])[:-1]
    return np.split(scores, bounds)


def _select(cases: Sequence[PatchedCase], ids: Sequence[str]) -> list[PatchedCase]:
    wanted = set(ids)
    return [c for c in cases if c.patient_id in wanted]


def _patch_counts(cases: Sequence[PatchedCase]) -> dict[str, int]:
    labels = np.concatenate([c.patches.labels for c in cases]) if cases else np.zeros(0)
    return {"patients": len(cases), "patients_with_tumour": sum(c.has_tumour for c in cases),
            "patches": int(labels.size), "cancerous_patches": int(labels.sum())}


def training_in_plane_spacing(cases: Sequence[PatchedCase], config: PipelineConfig
                              ) -> dict[str, float | bool] | None:
    """The in-plane pixel size the model learnt on and the training patients' range:
    {"grid": mm, "training_min": mm, "training_max": mm, "training_resampled": bool}.

    The grid is `config.preprocess.in_plane_spacing_mm` when training resampled to it, else
    the median pixel size of the training patients (all of them, when they share one). None
    when a case's spacing is unknown (patches from a store written before cadx kept it).
    """
    spacings = [c.spacing_zyx_mm for c in cases]
    if not spacings or any(s is None for s in spacings):
        return None
    pixels = np.array([s[1:] for s in spacings], dtype=float)
    grid = config.preprocess.in_plane_spacing_mm
    return {"grid": float(np.median(pixels)) if grid is None else float(grid),
            "training_min": float(pixels.min()), "training_max": float(pixels.max()),
            "training_resampled": grid is not None}


def choose_thresholds(model: torch.nn.Module, validation: Sequence[PatchedCase],
                      config: PipelineConfig | None = None
                      ) -> tuple[OperatingPoint, OperatingPoint, dict[str, OperatingPoint]]:
    """Patch threshold by max Youden on validation patches, then the patient threshold by max
    Youden on validation patients' scores (`config.decide`, default the seed's fraction of
    patches above the patch threshold).

    Also returns the validation operating point of every candidate patient score (fraction,
    cluster, top-k for k in STORED_TOP_K), keyed by `DecideConfig.score_name`. The patches are
    scored in `config.train.precision`, as diagnose and evaluate will score them.
    """
    config = config or PipelineConfig()
    per_case = score_cases(model, validation, config.decide.test_time_flips,
                           config.train.precision, config.model)
    scores = np.concatenate(per_case)
    labels = np.concatenate([c.patches.labels for c in validation])
    patch_point = youden_operating_point(labels, scores, "validation patches")
    truth = np.array([c.has_tumour for c in validation])
    points = {}
    for decide in candidate_patient_scores(config.decide):
        p_scores = cohort_patient_scores(validation, per_case, patch_point.threshold,
                                         replace(config, decide=decide))
        points[decide.score_name] = youden_operating_point(
            truth, p_scores, f"validation patients ({decide.score_name})")
    return patch_point, points[config.decide.score_name], points


def train_patch_model(cases: Sequence[PatchedCase], config: PipelineConfig,
                      progress: bool = True, checkpoint_path: str | Path | None = None,
                      resume: bool = False, device: str | None = None
                      ) -> TrainingOutcome | None:
    """Split patients, train the CNN, choose thresholds on validation, evaluate the test part.

    Under torch.distributed every rank trains (cadx.train.fit); only rank 0 goes on to the
    thresholds and the test evaluation, the other ranks return None. `device`: train on this
    torch device (e.g. "cuda"; default the CPU); thresholds and the test part are scored on
    the CPU.
    """
    if not cases:
        raise SplitError("no cases to train on")
    # The bundle records the precision training ran in (fp32 where bf16 was asked for on a
    # device without it), and its thresholds and every later score use that one.
    device_type = "cpu" if device is None else torch.device(device).type
    config = replace(config, train=replace(
        config.train, precision=resolve_precision(config.train.precision, device_type)))
    train_cfg = config.train
    split = split_patients([c.patient_id for c in cases], [c.has_tumour for c in cases],
                           train_cfg.validation_fraction, train_cfg.test_fraction, train_cfg.seed)
    parts = {name: _select(cases, getattr(split, name))
             for name in ("train", "validation", "test")}
    # Guard at the patch level too: the patches themselves must not cross the split.
    assert_disjoint({name: sorted({str(p) for c in part for p in c.patches.patient_ids})
                     for name, part in parts.items()})
    train_patches = join_patches(parts["train"])
    val_patches = join_patches(parts["validation"])
    model, history = fit_patch_cnn(train_patches, val_patches, train_cfg,
                                   model_config=config.model, progress=progress,
                                   checkpoint_path=checkpoint_path, resume=resume,
                                   device=device)
    if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
        return None
    patch_point, patient_point, all_points = choose_thresholds(model, parts["validation"],
                                                               config)

    test_evaluation = None
    if parts["test"]:
        test_evaluation = evaluate_cohort(
            parts["test"], score_cases(model, parts["test"], config.decide.test_time_flips,
                                       train_cfg.precision, config.model),
            patch_point.threshold, patient_point.threshold, config=config)
    summary = {
        "split": {"train": list(split.train), "validation": list(split.validation),
                  "test": list(split.test)},
        "counts": {name: _patch_counts(part) for name, part in parts.items()},
        "training": history.to_dict(),
        "validation": {"patch_auc": patch_point.auc, "patient_auc": patient_point.auc,
                       "patient_score": config.decide.score_name,
                       "patient_auc_by_score": {name: point.auc
                                                for name, point in all_points.items()}},
        "test": None if test_evaluation is None else {
            "patch": test_evaluation.patch, "patient": test_evaluation.patient,
            "by_tumour_size": test_evaluation.by_tumour_size},
    }
    in_plane = training_in_plane_spacing(parts["train"], config)
    if in_plane is not None:
        summary["in_plane_spacing_mm"] = in_plane
        # New patients are resampled to the training pixels by default (diagnose, evaluate,
        # the service, score-batch); `--keep-in-plane-spacing` keeps their own.
        config = replace(config, preprocess=replace(config.preprocess,
                                                    in_plane_spacing_mm=in_plane["grid"]))
    bundle = PatchModelBundle(config=config, state_dict=model.state_dict(),
                              patch_operating_point=patch_point,
                              patient_operating_point=patient_point, summary=summary,
                              patient_operating_points=all_points)
    return TrainingOutcome(bundle, split, history, parts["test"], test_evaluation)
