"""The full preprocessing of one case: resample, dilate the organ label, window, normalise."""

from __future__ import annotations

import math
from dataclasses import replace

from cadx.case import Case
from cadx.config import PreprocessConfig
from cadx.errors import EmptyMaskError, InputError
from cadx.preprocess.dilate import dilate_in_plane
from cadx.preprocess.intensity import percentiles_to_unit, window_to_unit
from cadx.preprocess.resample import resample_grid, resampled_spacing

# A scan's pixel size this close (relative) to the training range counts as inside it.
SPACING_RANGE_TOLERANCE = 0.02


def preprocess_case(case: Case, config: PreprocessConfig) -> Case:
    """Return a new Case on a uniform-thickness grid (and, when `config.in_plane_spacing_mm`
    is set, on pixels of that size) with a 0..1 image and a dilated organ mask.

    The tumour mask (if known) is resampled with nearest neighbour but not dilated.
    """
    if case.organ_mask is None:
        raise InputError(f"{case.source or case.patient_id}: no organ mask; the patch pipeline "
                         "crops inside the organ label (give --organ-mask)")
    thickness = config.slice_thickness_mm
    in_plane = config.in_plane_spacing_mm
    source = case.source or case.patient_id

    def resample(volume, is_label):
        return resample_grid(volume, case.spacing_zyx_mm, thickness, in_plane,
                             is_label=is_label, source=source)

    image = resample(case.image, False)
    organ = resample(case.organ_mask, True)
    tumour = None if case.tumour_mask is None else resample(case.tumour_mask, True)
    if not organ.any():
        grid = f"{thickness} mm slices" + ("" if in_plane is None else
                                           f" and {in_plane:g} mm pixels")
        raise EmptyMaskError(f"{source}: organ mask is empty after resampling to {grid}")
    organ = dilate_in_plane(organ, config.dilation_kernel_px)
    if config.intensity == "window":
        unit_image = window_to_unit(image, config.window_level_hu, config.window_width_hu)
    else:
        unit_image = percentiles_to_unit(image, organ)
    spacing = resampled_spacing(case.image.shape, case.spacing_zyx_mm, thickness, in_plane)
    if case.n_slices > 1:  # as the seed reports it: the slice thickness asked for
        spacing = (thickness, *spacing[1:])
    return replace(case, image=unit_image, organ_mask=organ, tumour_mask=tumour,
                   spacing_zyx_mm=spacing)


def in_plane_spacing_warning(spacing_zyx_mm: tuple[float, float, float],
                             training_range_mm: tuple[float, float] | None,
                             training_grid_mm: float, resampled: bool, patch_size_px: int,
                             source: str = "") -> str | None:
    """One line when a scan's pixel size lies outside the training patients' range (2 %
    tolerance), saying what happens to it: `resampled` to the model's `training_grid_mm`
    pixels, or kept, so that a patch covers other millimetres than in training. None when
    inside, or when the range is unknown (a bundle from before cadx recorded it)."""
    if training_range_mm is None:
        return None
    low, high = training_range_mm
    pixel = spacing_zyx_mm[1:]
    if all(low * (1 - SPACING_RANGE_TOLERANCE) <= s <= high * (1 + SPACING_RANGE_TOLERANCE)
           for s in pixel):
        return None
    trained = f"{low:.3g} mm" if math.isclose(low, high) else f"{low:.3g}-{high:.3g} mm"
    own = " x ".join(f"{s:.3g}" for s in pixel)
    if resampled:
        what = f"resampled to the model's {training_grid_mm:.3g} mm pixels"
    else:
        what = (f"kept (--keep-in-plane-spacing), so a {patch_size_px} px patch covers "
                f"{patch_size_px * min(pixel):.0f} mm here, "
                f"{patch_size_px * training_grid_mm:.0f} mm in training")
    name = f"{source}: " if source else ""
    return (f"{name}in-plane pixel spacing {own} mm is outside the training range "
            f"{trained}; {what}")
