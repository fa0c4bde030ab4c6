"""Diagnosis results as DICOM: a Comprehensive 3D SR (TID 1500 measurement report, highdicom)
and a SEG of the positive patches, both new series in the source study.

The SR holds the patient score, the decision, both thresholds, the number of positive patches
and the model (name, version) as the algorithm identification; it lists every source image as
evidence and as the measurement group's source images. Concept names use the private coding
scheme ``99CADX`` (no standard code exists for a CAD patient score); :func:`read_sr_result`
reads them back with plain pydicom.

Source slices that break the DICOM rules highdicom enforces for a SEG do not cost the SR: a
missing FrameOfReferenceUID gets the SEG a new frame of reference, anything else leaves the
SEG out; either is one line in the diagnosis' warnings.
"""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from cadx import __version__
from cadx.case import Case
from cadx.diagnose.patient import POSITIVE, Diagnosis
from cadx.errors import InputError
from cadx.io.atomic import atomic_path

SCHEME = "99CADX"
PATIENT_SCORE = hd.sr.CodedConcept("CADX0001", SCHEME, "Patient cancer score")
PATIENT_THRESHOLD = hd.sr.CodedConcept("CADX0002", SCHEME, "Patient score threshold")
PATCH_THRESHOLD = hd.sr.CodedConcept("CADX0003", SCHEME, "Patch score threshold")
POSITIVE_PATCHES = hd.sr.CodedConcept("CADX0004", SCHEME, "Patches above threshold")
DECISION = hd.sr.CodedConcept("CADX0005", SCHEME, "CAD decision")
CANCER_SUSPECTED = hd.sr.CodedConcept("CADX0010", SCHEME, "Cancer suspected")
NO_CANCER_DETECTED = hd.sr.CodedConcept("CADX0011", SCHEME, "No cancer detected")
ORGAN_NOT_FOUND_CODE = hd.sr.CodedConcept("CADX0012", SCHEME, "Organ not found")
_NO_UNITS = hd.sr.CodedConcept("1", "UCUM", "no units")
_PATCHES_UNIT = hd.sr.CodedConcept("{patches}", "UCUM", "patches")
SR_SERIES_DESCRIPTION = "cadx CAD result"
SEG_SERIES_DESCRIPTION = "cadx positive patches"


def _headers(case: Case) -> list[Dataset]:
    headers = case.meta.get("dicom_headers")
    if not headers:
        raise InputError(f"{case.source}: DICOM results need a DICOM source series")
    return headers


def _algorithm(diagnosis: Diagnosis) -> hd.sr.AlgorithmIdentification:
    return hd.sr.AlgorithmIdentification(
        name=diagnosis.model["name"], version=diagnosis.model["cadx_version"],
        parameters=[f"created {diagnosis.model.get('created_utc', '')}"])


def diagnosis_sr(diagnosis: Diagnosis, case: Case, *, series_number: int = 901) -> Dataset:
    """A Comprehensive 3D SR of `diagnosis` in the study of `case` (a DICOM-sourced case)."""
    headers = _headers(case)
    algorithm = _algorithm(diagnosis)

    def measurement(name: hd.sr.CodedConcept, value: float,
                    unit: hd.sr.CodedConcept = _NO_UNITS) -> hd.sr.Measurement:
        return hd.sr.Measurement(name=name, value=value, unit=unit, algorithm_id=algorithm)

    if diagnosis.patient_score is None:  # the organ was not found: no score, no decision
        score, decision = [], ORGAN_NOT_FOUND_CODE
    else:
        score = [measurement(PATIENT_SCORE, diagnosis.patient_score),
                 measurement(POSITIVE_PATCHES, diagnosis.n_positive_patches, _PATCHES_UNIT)]
        decision = CANCER_SUSPECTED if diagnosis.decision == POSITIVE else NO_CANCER_DETECTED
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(),
                                                     identifier="cadx patient result"),
        algorithm_id=algorithm,
        measurements=[*score, measurement(PATIENT_THRESHOLD, diagnosis.patient_threshold),
                      measurement(PATCH_THRESHOLD, diagnosis.patch_threshold)],
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(DECISION, decision)],
        source_images=[hd.sr.SourceImageForMeasurementGroup(
            str(ds.SOPClassUID), str(ds.SOPInstanceUID)) for ds in headers],
    )
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(), name="cadx", manufacturer_name="cadx",
            model_name=diagnosis.model["name"]))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=codes.LN.CTUnspecifiedBodyRegion,
        imaging_measurements=[group])
    try:
        return hd.sr.Comprehensive3DSR(
            evidence=headers, content=report[0], series_instance_uid=generate_uid(),
            series_number=series_number, sop_instance_uid=generate_uid(), instance_number=1,
            manufacturer="cadx", is_complete=True, is_final=False, is_verified=False,
            series_description=SR_SERIES_DESCRIPTION, software_versions=__version__)
    except (ValueError, TypeError, AttributeError) as exc:  # highdicom's checks of the sources
        raise InputError(f"{case.source}: no DICOM SR can reference these source slices "
                          f"(highdicom: {str(exc)[:200]})") from None


def _content_items(items: Dataset | list) -> list[Dataset]:
    """Every content item of an SR tree, depth first."""
    found = []
    for item in items:
        found.append(item)
        found.extend(_content_items(item.get("ContentSequence", [])))
    return found


def read_sr_result(sr: Dataset) -> dict[str, object]:
    """The cadx values of an SR written by :func:`diagnosis_sr` (plain pydicom, no highdicom):
    patient_score, patient_threshold, patch_threshold, n_positive_patches, decision, model,
    model_version (no score and positive-patch count when the decision is 'organ not found')."""
    values: dict[str, object] = {}
    names = {PATIENT_SCORE.value: "patient_score", PATIENT_THRESHOLD.value: "patient_threshold",
             PATCH_THRESHOLD.value: "patch_threshold",
             POSITIVE_PATCHES.value: "n_positive_patches"}
    for item in _content_items(sr.get("ContentSequence", [])):
        if "ConceptNameCodeSequence" not in item:
            continue
        concept = item.ConceptNameCodeSequence[0]
        if item.ValueType == "NUM" and concept.CodingSchemeDesignator == SCHEME:
            measured = item.MeasuredValueSequence[0]
            number = measured.get("FloatingPointValue", measured.NumericValue)
            key = names[concept.CodeValue]
            values[key] = int(number) if key == "n_positive_patches" else float(number)
        elif item.ValueType == "CODE" and concept.CodeValue == DECISION.value:
            values["decision"] = str(item.ConceptCodeSequence[0].CodeMeaning).lower()
        elif item.ValueType == "TEXT" and concept.CodeMeaning == "Algorithm Name":
            values.setdefault("model", str(item.TextValue))
        elif item.ValueType == "TEXT" and concept.CodeMeaning == "Algorithm Version":
            values.setdefault("model_version", str(item.TextValue))
    if "decision" not in values:
        raise InputError("structured report holds no cadx result")
    return values


def _with_frame_of_reference(headers: list[Dataset], diagnosis: Diagnosis) -> list[Dataset]:
    """The headers, or copies sharing a new FrameOfReferenceUID when any lacks one (the CT and
    MR IODs require it, and so does highdicom for a SEG of them); says so in a warning."""
    if all("FrameOfReferenceUID" in ds for ds in headers):
        return headers
    frame_uid = generate_uid()
    copies = []
    for ds in headers:
        copy = Dataset({tag: ds[tag] for tag in ds.keys()})  # the sources stay as they are
        if hasattr(ds, "file_meta"):
            copy.file_meta = ds.file_meta
        copy.FrameOfReferenceUID = frame_uid
        copies.append(copy)
    diagnosis.warnings.append(
        "the source slices carry no FrameOfReferenceUID (required for CT/MR images); the SEG "
        f"of the positive patches has a new frame of reference {frame_uid}: it references "
        "the source slices by SOP instance, but a viewer that matches frames of reference "
        "will not overlay it")
    return copies


def positive_patches_seg(diagnosis: Diagnosis, case: Case, thickness_mm: float, *,
                         series_number: int = 902) -> Dataset | None:
    """A binary SEG marking the positive patches on the source slices (None if none, or if
    highdicom refuses the source slices: the reason is then a line in `diagnosis.warnings`).

    Patches live on the preprocessed grid: slices every `thickness_mm` from the first slice,
    and the source pixels in-plane, or pixels of `diagnosis.in_plane_spacing_mm` from the
    first pixel when the scan was resampled (mapped back by scaling); each patch is drawn on
    the source slices within half a preprocessed slice of its centre. Source slices without a
    FrameOfReferenceUID get the SEG a new one (also said in `diagnosis.warnings`).
    """
    if not diagnosis.positive_patches:
        return None
    headers = _headers(case)
    n_slices, rows, cols = case.image.shape
    source_offsets = np.arange(n_slices) * case.spacing_zyx_mm[0]
    grid_yx = diagnosis.in_plane_spacing_mm or case.spacing_zyx_mm[1:]
    scale_y, scale_x = (g / s for g, s in zip(grid_yx, case.spacing_zyx_mm[1:], strict=True))
    mask = np.zeros((n_slices, rows, cols), dtype=bool)
    for patch in diagnosis.positive_patches:
        near = np.abs(source_offsets - patch.slice_offset_mm) <= thickness_mm / 2
        mask[near, round(patch.y_px * scale_y):round((patch.y_px + patch.size_px) * scale_y),
             round(patch.x_px * scale_x):round((patch.x_px + patch.size_px) * scale_x)] = True
    algorithm = hd.AlgorithmIdentificationSequence(
        name=diagnosis.model["name"], version=diagnosis.model["cadx_version"],
        family=codes.cid7162.ArtificialIntelligence)
    try:
        return _segmentation(_with_frame_of_reference(headers, diagnosis), mask, algorithm,
                             diagnosis, series_number)
    except (ValueError, TypeError, AttributeError) as exc:  # highdicom's checks of the sources
        diagnosis.warnings.append(f"no SEG of the positive patches: highdicom refused the "
                                  f"source slices ({str(exc)[:200]})")
        return None


def _segmentation(headers: list[Dataset], mask: np.ndarray,
                  algorithm: hd.AlgorithmIdentificationSequence, diagnosis: Diagnosis,
                  series_number: int) -> Dataset:
    return hd.seg.Segmentation(
        source_images=headers, pixel_array=mask.astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[hd.seg.SegmentDescription(
            segment_number=1, segment_label="cadx positive patches",
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Neoplasm,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm)],
        series_instance_uid=generate_uid(), series_number=series_number,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer="cadx",
        manufacturer_model_name=diagnosis.model["name"], software_versions=__version__,
        device_serial_number="0", series_description=SEG_SERIES_DESCRIPTION)


def result_datasets(diagnosis: Diagnosis, case: Case, thickness_mm: float) -> list[Dataset]:
    """The SR, and the positive-patch SEG when there is one and highdicom accepts the source
    slices (else the reason is in `diagnosis.warnings`)."""
    datasets = [diagnosis_sr(diagnosis, case)]
    seg = positive_patches_seg(diagnosis, case, thickness_mm)
    if seg is not None:
        datasets.append(seg)
    return datasets


def write_dicom_results(out_dir: str | Path, datasets: list[Dataset]) -> list[Path]:
    """Write `datasets` (see :func:`result_datasets`) as DICOM files in `out_dir`, each
    atomically, named `<Modality>_<SOPInstanceUID>.dcm`; returns their paths."""
    paths = []
    for dataset in datasets:
        path = Path(out_dir) / f"{dataset.Modality}_{dataset.SOPInstanceUID}.dcm"
        with atomic_path(path) as tmp:
            dataset.save_as(tmp, enforce_file_format=True)
        paths.append(path)
    return paths
