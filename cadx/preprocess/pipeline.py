"""The full preprocessing of one case: resample, dilate the organ label, window, normalise."""

from __future__ import annotations

from dataclasses import replace

from cadx.case import Case
from cadx.config import PreprocessConfig
from cadx.errors import EmptyMaskError, InputError
from cadx.preprocess.dilate import dilate_in_plane
from cadx.preprocess.intensity import percentiles_to_unit, window_to_unit
from cadx.preprocess.resample import resample_z


def preprocess_case(case: Case, config: PreprocessConfig) -> Case:
    """Return a new Case on a uniform-thickness grid with a 0..1 image and a dilated organ mask.

    The tumour mask (if known) is resampled with nearest neighbour but not dilated.
    """
    if case.organ_mask is None:
        raise InputError(f"{case.source or case.patient_id}: no organ mask; the patch pipeline "
                         "crops inside the organ label (give --organ-mask)")
    thickness = config.slice_thickness_mm
    source = case.source or case.patient_id
    image = resample_z(case.image, case.spacing_zyx_mm, thickness, is_label=False,
                       source=source)
    organ = resample_z(case.organ_mask, case.spacing_zyx_mm, thickness, is_label=True,
                       source=source)
    tumour = None
    if case.tumour_mask is not None:
        tumour = resample_z(case.tumour_mask, case.spacing_zyx_mm, thickness, is_label=True,
                            source=source)
    if not organ.any():
        raise EmptyMaskError(f"{case.source or case.patient_id}: organ mask is empty after "
                             f"resampling to {thickness} mm slices")
    organ = dilate_in_plane(organ, config.dilation_kernel_px)
    if config.intensity == "window":
        unit_image = window_to_unit(image, config.window_level_hu, config.window_width_hu)
    else:
        unit_image = percentiles_to_unit(image, organ)
    spacing = case.spacing_zyx_mm if case.n_slices == 1 else (
        thickness, case.spacing_zyx_mm[1], case.spacing_zyx_mm[2])
    return replace(case, image=unit_image, organ_mask=organ, tumour_mask=tumour,
                   spacing_zyx_mm=spacing)
