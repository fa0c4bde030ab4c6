"""One study through the PACS: query its series, pick one, retrieve it (and its organ SEG),
score it, answer with an SR (and a SEG of the positive patches) in one STOW-RS request."""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.dataset import Dataset

from cadx.bundle import PatchModelBundle
from cadx.case import Case
from cadx.diagnose.patient import Diagnosis, diagnose_case, organ_not_found
from cadx.errors import InputError
from cadx.io.dicom import (
    IMAGE_MODALITIES,
    SeriesInfo,
    case_from_datasets,
    find_organ_seg,
    organ_mask_from_seg,
    select_series,
)
from cadx.io.dicom_results import SR_SERIES_DESCRIPTION, diagnosis_sr, positive_patches_seg
from cadx.pacs.client import PacsClient


@dataclass
class StudyResult:
    """A scored study: the diagnosis and the DICOM objects sent back (empty if not pushed)."""

    study_uid: str
    diagnosis: Diagnosis
    case: Case
    pushed: list[Dataset]


def pull_case(client: PacsClient, study_uid: str, series_uid: str | None = None) -> Case:
    """The study's image series (chosen by the rules of `select_series`) as a Case in HU, with
    the organ mask from a SEG of the study that references that series, if there is one."""
    source = f"{client.url} study {study_uid}"
    listed = client.series(study_uid)
    if not listed:
        raise InputError(f"{client.url}: no study {study_uid} (or it holds no series)")
    wanted = [str(s.SeriesInstanceUID) for s in listed
              if str(s.get("Modality", "")) in (*IMAGE_MODALITIES, "SEG")]
    infos = [SeriesInfo(uid, client.series_metadata(study_uid, uid)) for uid in wanted]
    chosen = select_series([i for i in infos if i.datasets], series_uid, source=source)
    case = case_from_datasets(client.retrieve_series(study_uid, chosen.series_uid), source)
    seg_info = find_organ_seg(infos, chosen.series_uid)
    if seg_info is not None:
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
    """Inside the organ mask from the study's SEG, else inside the bundle's segmenter's
    prediction (ORGAN_NOT_FOUND when it finds none); neither is an InputError."""
    if case.organ_mask is not None:
        return diagnose_case(bundle, case,
                             organ_mask_source=str(case.meta.get("organ_mask_source", "given")))
    if bundle.segmenter is None:
        raise InputError(f"{case.source}: no organ mask: the study holds no organ SEG of series "
                         f"{case.meta['dicom']['series_uid']} and the model embeds no organ "
                         "segmenter")
    from cadx.segment.infer import with_predicted_organ

    with_organ, segmentation = with_predicted_organ(bundle.segmenter, case)
    if not segmentation.found:
        return organ_not_found(bundle, case)
    return diagnose_case(bundle, with_organ, organ_mask_source="predicted")


def diagnose_study(client: PacsClient, bundle: PatchModelBundle, study_uid: str, *,
                   series_uid: str | None = None, push: bool = False,
                   with_seg: bool = True) -> StudyResult:
    """Pull, score and (if `push`) answer one study; results are built completely before the
    single STOW-RS request, so a failure leaves the PACS without any cadx object. Without an
    organ SEG in the study, the bundle's embedded organ segmenter (if any) finds the organ."""
    result = score_study(client, bundle, study_uid, series_uid=series_uid)
    if push:
        push_result(client, bundle, result, with_seg=with_seg)
    return result


def score_study(client: PacsClient, bundle: PatchModelBundle, study_uid: str, *,
                series_uid: str | None = None) -> StudyResult:
    """Pull and score one study; nothing is stored (`pushed` is empty)."""
    case = pull_case(client, study_uid, series_uid)
    return StudyResult(study_uid, _diagnose(bundle, case), case, [])


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
