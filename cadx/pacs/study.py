"""One study through the PACS: query its series, pick one, check from its headers that it can
be scored, retrieve it (and its organ SEG), score it, answer with an SR (and a SEG of the
positive patches) in one STOW-RS request."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset

from cadx.bundle import PatchModelBundle
from cadx.case import Case
from cadx.diagnose.clinical import add_fusion
from cadx.diagnose.patient import Diagnosis, diagnose_case, organ_not_found
from cadx.errors import InputError
from cadx.io.dicom import (
    IMAGE_MODALITIES,
    SeriesInfo,
    case_from_datasets,
    check_series_size,
    find_organ_seg,
    organ_mask_from_file,
    organ_mask_from_seg,
    select_series,
)
from cadx.io.dicom_results import SR_SERIES_DESCRIPTION, diagnosis_sr, positive_patches_seg
from cadx.pacs.client import PacsClient

# Why a study without an organ SEG cannot be scored by a bundle without a segmenter, and what
# to do (the end of the refusal; callers that know the bundle's file name say it instead).
NO_SEGMENTER = ("store the organ SEG of this series in the study: the model embeds no organ "
                "segmenter")


@dataclass
class StudyResult:
    """A scored study: the diagnosis and the DICOM objects sent back (empty if not pushed)."""

    study_uid: str
    diagnosis: Diagnosis
    case: Case
    pushed: list[Dataset]


def pull_case(client: PacsClient, study_uid: str, series_uid: str | None = None, *,
              organ_mask_path: str | Path | None = None,
              organ_mask_required: str | None = None) -> Case:
    """The study's image series (chosen by the rules of `select_series`) as a Case in HU, with
    the organ mask from `organ_mask_path` (DICOM SEG or volume file on the series' grid) or
    else from a SEG of the study that references that series, if there is one.

    Everything that the series' metadata can decide is decided before any pixel data is
    retrieved: the choice of series, its size against the volume limits and, when
    `organ_mask_required` (the reason one is needed) is given, that an organ mask exists; a
    refusal then costs no download.
    """
    source = f"{client.url} study {study_uid}"
    listed = client.series(study_uid)
    if not listed:
        raise InputError(f"{client.url}: no study {study_uid} (or it holds no series)")
    wanted = [str(s.SeriesInstanceUID) for s in listed
              if str(s.get("Modality", "")) in (*IMAGE_MODALITIES, "SEG")]
    infos = [SeriesInfo(uid, client.series_metadata(study_uid, uid)) for uid in wanted]
    chosen = select_series([i for i in infos if i.datasets], series_uid, source=source)
    check_series_size(chosen.datasets, source)
    if organ_mask_path is not None and not Path(organ_mask_path).exists():
        raise InputError(f"{organ_mask_path}: file not found")
    seg_info = find_organ_seg(infos, chosen.series_uid)
    if organ_mask_required is not None and organ_mask_path is None and seg_info is None:
        raise InputError(f"{source}: no organ mask: no DICOM SEG in the study references "
                         f"series {chosen.series_uid}; {organ_mask_required}")
    case = case_from_datasets(client.retrieve_series(study_uid, chosen.series_uid), source)
    if organ_mask_path is not None:
        case.organ_mask = organ_mask_from_file(organ_mask_path, case)
        case.meta["organ_mask_source"] = "given"
    elif seg_info is not None:
        seg = client.retrieve_series(study_uid, seg_info.series_uid)[0]
        case.organ_mask = organ_mask_from_seg(seg, case, f"{source} SEG {seg_info.series_uid}")
        case.meta["organ_mask_source"] = f"DICOM SEG {seg_info.series_uid}"
    return case


def has_cadx_result(client: PacsClient, study_uid: str) -> bool:
    """True if the study already holds an SR series written by cadx."""
    return any(str(s.get("Modality", "")) == "SR"
               and str(s.get("SeriesDescription", "")) == SR_SERIES_DESCRIPTION
               for s in client.series(study_uid))


def summary_line(diagnosis: Diagnosis) -> str:
    """The decision with the score and threshold, for the console (rich markup)."""
    if diagnosis.patient_score is None:
        return f"[bold yellow]{diagnosis.decision}[/] (no score)"
    return (f"[bold]{diagnosis.decision}[/] (patient score {diagnosis.patient_score:.3f} vs "
            f"threshold {diagnosis.patient_threshold:.3f}; {diagnosis.n_positive_patches}/"
            f"{diagnosis.n_patches} patches above {diagnosis.patch_threshold:.3f})")


def _diagnose(bundle: PatchModelBundle, case: Case) -> Diagnosis:
    """Inside the given organ mask or the one from the study's SEG, else inside the bundle's
    segmenter's prediction (ORGAN_NOT_FOUND when it finds none; `pull_case` has refused a
    study with neither before retrieving it)."""
    if case.organ_mask is not None:
        return diagnose_case(bundle, case,
                             organ_mask_source=str(case.meta.get("organ_mask_source", "given")))
    from cadx.segment.infer import with_predicted_organ

    with_organ, segmentation = with_predicted_organ(bundle.segmenter, case)
    if not segmentation.found:
        return organ_not_found(bundle, case)
    return diagnose_case(bundle, with_organ, organ_mask_source="predicted")


def diagnose_study(client: PacsClient, bundle: PatchModelBundle, study_uid: str, *,
                   series_uid: str | None = None, push: bool = False,
                   with_seg: bool = True, organ_mask_path: str | Path | None = None,
                   organ_mask_required: str = NO_SEGMENTER,
                   clinical: Mapping[str, str] | None = None) -> StudyResult:
    """Pull, score and (if `push`) answer one study; results are built completely before the
    single STOW-RS request, so a failure leaves the PACS without any cadx object. Without an
    organ SEG in the study (or `organ_mask_path`), the bundle's embedded organ segmenter (if
    any) finds the organ. For the other arguments see `score_study`."""
    result = score_study(client, bundle, study_uid, series_uid=series_uid,
                         organ_mask_path=organ_mask_path,
                         organ_mask_required=organ_mask_required, clinical=clinical)
    if push:
        push_result(client, bundle, result, with_seg=with_seg)
    return result


def score_study(client: PacsClient, bundle: PatchModelBundle, study_uid: str, *,
                series_uid: str | None = None, organ_mask_path: str | Path | None = None,
                organ_mask_required: str = NO_SEGMENTER,
                clinical: Mapping[str, str] | None = None) -> StudyResult:
    """Pull and score one study; nothing is stored (`pushed` is empty).

    A bundle without an organ segmenter refuses a study without an organ SEG (and no
    `organ_mask_path`) from the metadata, before any pixel data is retrieved; the refusal ends
    with `organ_mask_required`. `clinical` values (column -> text) feed the bundle's fusion
    model, if it has one, as `cadx diagnose --clinical` does for files (see
    `cadx.diagnose.clinical.add_fusion`).
    """
    required = None if bundle.segmenter is not None else organ_mask_required
    case = pull_case(client, study_uid, series_uid, organ_mask_path=organ_mask_path,
                     organ_mask_required=required)
    diagnosis = add_fusion(bundle, _diagnose(bundle, case), clinical or {})
    return StudyResult(study_uid, diagnosis, case, [])


def push_result(client: PacsClient, bundle: PatchModelBundle, result: StudyResult, *,
                with_seg: bool = True) -> None:
    """Build the SR (and the SEG of the positive patches) of a scored study, then store them in
    one STOW-RS request; they are listed in `result.pushed`."""
    pushed = [diagnosis_sr(result.diagnosis, result.case)]
    thickness_mm = bundle.config.preprocess.slice_thickness_mm
    seg = (positive_patches_seg(result.diagnosis, result.case, thickness_mm) if with_seg
           else None)
    if seg is not None:
        pushed.append(seg)
    client.store(pushed, result.study_uid)
    result.pushed = pushed
