"""The PACS commands as functions (the CLI calls these): diagnose one study, watch a PACS."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from rich.console import Console

from cadx.bundle import load_bundle
from cadx.diagnose.patient import Diagnosis
from cadx.io.atomic import write_json_atomic
from cadx.pacs.client import PacsClient
from cadx.pacs.study import diagnose_study, summary_line
from cadx.pacs.watch import WatchSummary, watch
from cadx.workflows import organ_mask_advice, print_notes_and_fusion


def diagnose_from_pacs(model_path: str | Path, pacs_url: str, study_uid: str, *,
                       series_uid: str | None = None, push: bool = False,
                       out_path: str | Path | None = None,
                       console: Console | None = None,
                       keep_in_plane_spacing: bool = False,
                       organ_mask_path: str | Path | None = None,
                       clinical: Mapping[str, str] | None = None) -> Diagnosis:
    """Pull a study over DICOMweb, score it, optionally push the SR (+ SEG) back; JSON to
    `out_path` (written after a successful push, so it never claims a result the PACS lacks).
    `keep_in_plane_spacing`: score the scan's own pixels (see `cadx.workflows.diagnose_file`).
    The organ mask is `organ_mask_path` (a local DICOM SEG or volume file on the series' grid),
    else the study's organ SEG of the series, else the bundle's segmenter's; with none of them
    the study is refused before any pixel data is pulled. `clinical` values (column -> text)
    feed the bundle's fusion model, as for files: the fused score is shown beside the patient
    score (in the JSON and on the console; the SR holds the image-only result)."""
    console = console or Console()
    bundle = load_bundle(model_path)
    if keep_in_plane_spacing:
        bundle = bundle.with_native_in_plane_spacing()
    # The same advice as for a DICOM folder (cadx.workflows.diagnose_file), said of the study.
    required = organ_mask_advice(model_path, "store the organ SEG of this series in the study")
    result = diagnose_study(PacsClient(pacs_url), bundle, study_uid, series_uid=series_uid,
                            push=push, organ_mask_path=organ_mask_path,
                            organ_mask_required=required, clinical=clinical)
    diagnosis = result.diagnosis
    if out_path is not None:
        write_json_atomic(out_path, {"study_uid": study_uid,
                                     "series_uid": result.case.meta["dicom"]["series_uid"],
                                     **diagnosis.to_dict()})
    for warning in diagnosis.warnings:
        console.print(f"[yellow]warning[/]: study {study_uid}: {warning}")
    console.print(f"{diagnosis.patient_id} (study {study_uid}): {summary_line(diagnosis)}")
    print_notes_and_fusion(diagnosis, console)
    for dataset in result.pushed:
        console.print(f"stored {dataset.Modality} {dataset.SOPInstanceUID} in {pacs_url}")
    if out_path is not None:
        console.print(f"result written to {out_path}")
    return diagnosis


def watch_pacs(model_path: str | Path, pacs_url: str, *, interval_s: float = 5.0,
               push: bool = True, out_dir: str | Path | None = None,
               console: Console | None = None) -> WatchSummary:
    """Score every new CT/MR study of the PACS until Ctrl-C (see `cadx.pacs.watch`)."""
    bundle = load_bundle(model_path)
    return watch(PacsClient(pacs_url), bundle, interval_s=interval_s, push=push,
                 out_dir=out_dir, console=console)
