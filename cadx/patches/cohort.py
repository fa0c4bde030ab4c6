"""Turn labelled cases into patches: read, measure the tumour, preprocess, crop."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rich.progress import track

from cadx.config import PipelineConfig
from cadx.evaluate.lesion_size import largest_tumour_diameter_mm
from cadx.io.dataset import CaseRef
from cadx.io.volumes import read_case
from cadx.patches.grid import PatchSet, extract_patches
from cadx.preprocess.pipeline import preprocess_case


@dataclass
class PatchedCase:
    """One labelled patient reduced to what training and evaluation need."""

    patient_id: str
    patches: PatchSet
    has_tumour: bool
    tumour_diameter_mm: float | None
    meta: dict[str, str]
    # The scan's own voxel spacing before preprocessing (None: unknown, e.g. an older store).
    spacing_zyx_mm: tuple[float, float, float] | None = None


def patch_case(ref: CaseRef, config: PipelineConfig) -> PatchedCase:
    """Read a labelled case and crop its patches with the pipeline's settings."""
    case = read_case(ref.image_path, ref.label_path, labels=config.labels,
                     patient_id=ref.patient_id)
    diameter = largest_tumour_diameter_mm(case.tumour_mask, case.spacing_zyx_mm)
    processed = preprocess_case(case, config.preprocess)
    patches = extract_patches(processed, config.patches, with_masks=config.model.dense,
                              with_organ=config.model.organ_scored)
    return PatchedCase(ref.patient_id, patches, bool(case.tumour_mask.any()), diameter,
                       dict(ref.meta), tuple(float(s) for s in case.spacing_zyx_mm))


def patch_cohort(refs: Sequence[CaseRef], config: PipelineConfig,
                 progress: bool = True) -> list[PatchedCase]:
    """`patch_case` for every case, with a progress bar."""
    return [patch_case(ref, config)
            for ref in track(refs, description="reading + cropping", disable=not progress)]
