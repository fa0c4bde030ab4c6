"""Diagnose one patient: preprocess, crop, score patches in batches, aggregate, decide."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from cadx.bundle import PatchModelBundle
from cadx.case import Case
from cadx.config import ModelConfig
from cadx.decide.aggregate import score_patients
from cadx.patches.grid import PatchSet, extract_patches
from cadx.preprocess.pipeline import preprocess_case
from cadx.train.fit import patch_regions, predict_patch_probabilities
from cadx.train.precision import bf16_emulated_warning

POSITIVE, NEGATIVE = "cancer suspected", "no cancer detected"
# The organ segmenter found no organ: nothing was scored, so this is no negative result.
ORGAN_NOT_FOUND = "organ not found"


@dataclass
class PositivePatch:
    """A patch scored above the patch threshold, on the preprocessed grid (pixels of
    `Diagnosis.in_plane_spacing_mm` when the scan was resampled in-plane)."""

    slice_index: int
    slice_offset_mm: float
    y_px: int
    x_px: int
    size_px: int
    score: float


@dataclass
class Diagnosis:
    """The result for one patient, ready to be written as JSON (`patient_score` is None when
    the decision is ORGAN_NOT_FOUND)."""

    patient_id: str
    source: str
    patient_score: float | None
    decision: str
    patch_threshold: float
    patient_threshold: float
    n_patches: int
    n_positive_patches: int
    organ_mask: str
    model: dict[str, str]
    positive_patches: list[PositivePatch] = field(default_factory=list)
    timings_s: dict[str, float] = field(default_factory=dict)
    # The (y, x) pixel size of the grid the patches lie on; None: the scan's own pixels.
    in_plane_spacing_mm: tuple[float, float] | None = None
    warnings: list[str] = field(default_factory=list)
    # The patient score fused with clinical values (cadx.diagnose.clinical), when the bundle has
    # a fusion model: its score and decision, or why the image-only score is the answer.
    fusion: dict[str, object] | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def score_patches(model: torch.nn.Module, patches: PatchSet,
                  flip_average: bool = False, precision: str = "fp32",
                  model_config: ModelConfig | None = None) -> np.ndarray:
    """Cancer probability of every patch, batched (averaged over flips with `flip_average`,
    in `precision`: the bundle's, in which its thresholds were chosen; inside the organ where
    `model_config` says so)."""
    return predict_patch_probabilities(
        model, patches.patches, flip_average=flip_average, precision=precision,
        regions=patch_regions(patches, model_config or ModelConfig(), "scored"))


def organ_not_found(bundle: PatchModelBundle, case: Case) -> Diagnosis:
    """The result for a CT on which the predicted organ mask is empty: no score, no decision."""
    return Diagnosis(
        patient_id=case.patient_id, source=case.source, patient_score=None,
        decision=ORGAN_NOT_FOUND, patch_threshold=bundle.patch_threshold,
        patient_threshold=bundle.patient_threshold, n_patches=0, n_positive_patches=0,
        organ_mask="predicted",
        model={"name": bundle.name, "cadx_version": bundle.cadx_version,
               "created_utc": bundle.created_utc},
    )


def diagnose_case(bundle: PatchModelBundle, case: Case, *, organ_mask_source: str = "given",
                  model: torch.nn.Module | None = None) -> Diagnosis:
    """Run the trained pipeline on a patient `case` (image in HU + organ mask).

    The scan is resampled in-plane to the bundle's training pixel size when the bundle holds
    one (see `PatchModelBundle.with_native_in_plane_spacing`); a pixel size outside the
    training range is one line in `Diagnosis.warnings`, and so is a bf16 bundle scored in
    emulated bf16 on a CPU without bf16 instructions (its scores are the same either way).
    """
    timings: dict[str, float] = {}
    start = time.perf_counter()
    # Said in the result, not as a RuntimeWarning (the model is built without one): a kept
    # result.json (or a service answer) should tell how its score was computed, and the CLI
    # prints the result's warnings, so a terminal shows the note once.
    warnings = [line for line in (bundle.in_plane_spacing_warning(case.spacing_zyx_mm),
                                  bf16_emulated_warning(bundle.precision))
                if line is not None]
    processed = preprocess_case(case, bundle.config.preprocess)
    timings["preprocess"] = time.perf_counter() - start
    start = time.perf_counter()
    # A new patient's tumour status is unknown: crop by the organ mask alone.
    processed.tumour_mask = None
    patches = extract_patches(processed, bundle.config.patches,
                              with_organ=bundle.config.model.organ_scored)
    timings["patches"] = time.perf_counter() - start
    start = time.perf_counter()
    model = model if model is not None else bundle.build_model(warn_bf16_emulated=False)
    scores = score_patches(model, patches, bundle.config.decide.test_time_flips,
                           bundle.precision, bundle.config.model)
    timings["score"] = time.perf_counter() - start
    start = time.perf_counter()
    score = score_patients(bundle.config.decide, patches.patient_ids, scores,
                           bundle.patch_threshold, patches.coords,
                           bundle.config.patches.stride_px)[case.patient_id]
    positive = np.flatnonzero(scores > bundle.patch_threshold)
    thickness = processed.spacing_zyx_mm[0]
    positive_patches = [
        PositivePatch(int(z), float(z * thickness), int(y), int(x), patches.patch_size_px,
                      round(float(s), 6))
        for (z, y, x), s in zip(patches.coords[positive], scores[positive], strict=True)
    ]
    timings["decide"] = time.perf_counter() - start
    return Diagnosis(
        patient_id=case.patient_id, source=case.source, patient_score=score,
        decision=POSITIVE if score > bundle.patient_threshold else NEGATIVE,
        patch_threshold=bundle.patch_threshold, patient_threshold=bundle.patient_threshold,
        n_patches=len(patches), n_positive_patches=len(positive), organ_mask=organ_mask_source,
        model={"name": bundle.name, "cadx_version": bundle.cadx_version,
               "created_utc": bundle.created_utc},
        positive_patches=positive_patches,
        timings_s={k: round(v, 4) for k, v in timings.items()},
        in_plane_spacing_mm=(None if bundle.config.preprocess.in_plane_spacing_mm is None
                             else tuple(processed.spacing_zyx_mm[1:])),
        warnings=warnings,
    )
