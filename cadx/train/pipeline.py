"""Train the two-level detector from patched cases: split, fit, pick both thresholds, test."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from cadx.bundle import PatchModelBundle
from cadx.config import PipelineConfig
from cadx.decide.aggregate import patient_scores
from cadx.decide.roc import OperatingPoint, youden_operating_point
from cadx.errors import SplitError
from cadx.evaluate.cohort import CohortEvaluation, evaluate_cohort
from cadx.patches.cohort import PatchedCase
from cadx.patches.store import join_patches
from cadx.train.fit import TrainingHistory, fit_patch_cnn, predict_patch_probabilities
from cadx.train.splits import PatientSplit, assert_disjoint, split_patients


@dataclass
class TrainingOutcome:
    """The bundle plus what the caller may want to report without recomputing."""

    bundle: PatchModelBundle
    split: PatientSplit
    history: TrainingHistory
    test_cases: list[PatchedCase]
    test_evaluation: CohortEvaluation | None


def score_cases(model: torch.nn.Module, cases: Sequence[PatchedCase]) -> list[np.ndarray]:
    """Score all cases' patches in one batched pass; one score array per case."""
    if not cases:
        return []
    scores = predict_patch_probabilities(model, join_patches(cases).patches)
    bounds = np.cumsum([len(c.patches) for c in cases])[:-1]
    return np.split(scores, bounds)


def _select(cases: Sequence[PatchedCase], ids: Sequence[str]) -> list[PatchedCase]:
    wanted = set(ids)
    return [c for c in cases if c.patient_id in wanted]


def _patch_counts(cases: Sequence[PatchedCase]) -> dict[str, int]:
    labels = np.concatenate([c.patches.labels for c in cases]) if cases else np.zeros(0)
    return {"patients": len(cases), "patients_with_tumour": sum(c.has_tumour for c in cases),
            "patches": int(labels.size), "cancerous_patches": int(labels.sum())}


def choose_thresholds(model: torch.nn.Module, validation: Sequence[PatchedCase]
                      ) -> tuple[OperatingPoint, OperatingPoint]:
    """Patch threshold by max Youden on validation patches, then the patient threshold by max
    Youden on validation patients' scores (fraction of patches above the patch threshold)."""
    scores = np.concatenate(score_cases(model, validation))
    labels = np.concatenate([c.patches.labels for c in validation])
    patch_point = youden_operating_point(labels, scores, "validation patches")
    ids = np.concatenate([c.patches.patient_ids for c in validation])
    score_of = patient_scores(ids, scores, patch_point.threshold)
    truth = np.array([c.has_tumour for c in validation])
    p_scores = np.array([score_of[c.patient_id] for c in validation])
    patient_point = youden_operating_point(truth, p_scores, "validation patients")
    return patch_point, patient_point


def train_patch_model(cases: Sequence[PatchedCase], config: PipelineConfig,
                      progress: bool = True, checkpoint_path: str | Path | None = None,
                      resume: bool = False) -> TrainingOutcome | None:
    """Split patients, train the CNN, choose thresholds on validation, evaluate the test part.

    Under torch.distributed every rank trains (cadx.train.fit); only rank 0 goes on to the
    thresholds and the test evaluation, the other ranks return None.
    """
    if not cases:
        raise SplitError("no cases to train on")
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
                                   checkpoint_path=checkpoint_path, resume=resume)
    if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
        return None
    patch_point, patient_point = choose_thresholds(model, parts["validation"])

    test_evaluation = None
    if parts["test"]:
        test_evaluation = evaluate_cohort(parts["test"], score_cases(model, parts["test"]),
                                          patch_point.threshold, patient_point.threshold)
    summary = {
        "split": {"train": list(split.train), "validation": list(split.validation),
                  "test": list(split.test)},
        "counts": {name: _patch_counts(part) for name, part in parts.items()},
        "training": history.to_dict(),
        "validation": {"patch_auc": patch_point.auc, "patient_auc": patient_point.auc},
        "test": None if test_evaluation is None else {
            "patch": test_evaluation.patch, "patient": test_evaluation.patient,
            "by_tumour_size": test_evaluation.by_tumour_size},
    }
    bundle = PatchModelBundle(config=config, state_dict=model.state_dict(),
                              patch_operating_point=patch_point,
                              patient_operating_point=patient_point, summary=summary)
    return TrainingOutcome(bundle, split, history, parts["test"], test_evaluation)
