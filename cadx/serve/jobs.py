"""One diagnosis request as it runs in a worker: uploads -> model input -> result JSON."""

from __future__ import annotations

import base64
import logging
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cadx.bundle import PatchModelBundle
from cadx.case import Case
from cadx.diagnose.clinical import add_fusion
from cadx.diagnose.fna import RULE, SOURCE, fna_advice
from cadx.diagnose.heatmap import ct_heatmap
from cadx.diagnose.images import diagnose_image_files
from cadx.diagnose.patient import Diagnosis, diagnose_case, organ_not_found
from cadx.errors import CadxError, ConfigError, InputError
from cadx.image_bundle import ImageModelBundle
from cadx.io.clinical import parse_clinical_items
from cadx.segment.infer import with_predicted_organ
from cadx.serve.inputs import (
    Upload,
    UploadLimits,
    clean_name,
    ct_case_from_uploads,
    image_files_from_uploads,
    public_text,
    save_uploads,
)
from cadx.serve.registry import CT_PATCH, ServedModel

FNA_ORGANS = ("thyroid",)
# Each request's temporary folder: cadx-serve-<pid of the service>-<random>.
WORKDIR_PREFIX = "cadx-serve-"
_WORKDIR_PID = re.compile(re.escape(WORKDIR_PREFIX) + r"(\d+)-")
# Folders of an older naming (no pid) are removed once they are this old.
_UNNAMED_STALE_S = 3600.0
# The clinical form field(s) of one request: a few NAME=VALUE pairs, never a document.
MAX_CLINICAL_CHARS = 2000
log = logging.getLogger("cadx.serve")


@dataclass(frozen=True)
class DiagnoseRequest:
    """What the client sent: the model, its files, an optional organ mask and nodule size, and
    the patient's clinical values (column -> text) for a bundle with a fusion model."""

    model: ServedModel
    uploads: list[Upload]
    organ_mask: Upload | None = None
    lesion_size_mm: float | None = None
    clinical: dict[str, str] = field(default_factory=dict)


def parse_size_mm(text: str | None) -> float | None:
    """The lesion-size form field in mm (blank = not given); InputError if malformed."""
    if text is None or not text.strip():
        return None
    try:
        size = float(text.strip().replace(",", "."))
    except ValueError:
        raise InputError(f"lesion size: {text.strip()[:40]!r} is not a number of mm") from None
    if not math.isfinite(size) or not 0 < size <= 150:
        raise InputError(f"lesion size: {size:g} mm is outside (0, 150] mm")
    return size


def parse_clinical_field(items: Sequence[str] | None, model: ServedModel) -> dict[str, str]:
    """The `clinical` form field(s), each NAME=VALUE[,NAME=VALUE...] as `diagnose --clinical`
    takes them, -> {column: text} (blank = none given). InputError, one line, when malformed or
    too long. Values sent to a model without a fusion model (2D or CT) are ignored with a note
    in the answer's details, as `diagnose --clinical` does."""
    items = [item for item in items or [] if item.strip()]
    if not items:
        return {}
    if sum(len(item) for item in items) > MAX_CLINICAL_CHARS:
        raise InputError(f"clinical: more than {MAX_CLINICAL_CHARS} characters")
    try:
        return parse_clinical_items(items, option="clinical")
    except ConfigError as exc:
        raise InputError(" ".join(str(exc).split())) from None


def png_data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _fna(model: ServedModel, positive: bool, size_mm: float | None) -> dict[str, Any]:
    if model.organ not in FNA_ORGANS:
        return {"advice": None, "note": "FNA advice is given for thyroid models only"}
    if size_mm is None:
        return {"advice": None, "note": "enter the nodule size (mm) to get FNA advice",
                "rule": RULE, "source": SOURCE}
    return {"advice": fna_advice(positive, size_mm).to_dict(), "note": None, "rule": RULE,
            "source": SOURCE}


def _ct_diagnosis(model: ServedModel, case: Case) -> tuple[Case, Diagnosis]:
    """Diagnose inside the given organ mask, or inside the embedded segmenter's prediction;
    returns the case as diagnosed (with the predicted mask) and the diagnosis."""
    bundle = model.bundle
    assert isinstance(bundle, PatchModelBundle)
    if case.organ_mask is not None:
        source = str(case.meta.get("organ_mask_source", "given"))
        return case, diagnose_case(bundle, case, organ_mask_source=source,
                                   model=model.patch_network)
    start = time.perf_counter()
    case, segmentation = with_predicted_organ(bundle.segmenter, case, model.segmenter_network)
    segment_s = round(time.perf_counter() - start, 4)
    if segmentation.found:
        diagnosis = diagnose_case(bundle, case, organ_mask_source="predicted",
                                  model=model.patch_network)
    else:
        diagnosis = organ_not_found(bundle, case)
    diagnosis.timings_s = {"segment": segment_s, **diagnosis.timings_s}
    return case, diagnosis


def _ct_result(request: DiagnoseRequest, paths: list[Path], mask: Path | None,
               limits: UploadLimits) -> dict[str, Any]:
    model = request.model
    bundle = model.bundle
    assert isinstance(bundle, PatchModelBundle)
    case = ct_case_from_uploads(paths, mask, limits, mask_required=model.needs_organ_mask)
    case.source = Path(case.source).name
    # What reading a DICOM upload skipped or set aside, as `cadx diagnose` reports it.
    read_warnings = list(case.meta.get("warnings", []))
    case, diagnosis = _ct_diagnosis(model, case)
    diagnosis.warnings[:0] = read_warnings
    # The same fusion as `cadx diagnose --clinical` (see _image_result).
    add_fusion(bundle, diagnosis, request.clinical, source="clinical")
    result: dict[str, Any] = {
        "patient_id": diagnosis.patient_id, "score": diagnosis.patient_score,
        "score_name": bundle.config.decide.description,
        "threshold": diagnosis.patient_threshold, "decision": diagnosis.decision,
        "positive": False, "heatmap": None, "images": [],
        "fna": _fna(model, False, request.lesion_size_mm), "fusion": diagnosis.fusion,
        "details": diagnosis.to_dict(),
    }
    if diagnosis.patient_score is None:  # the segmenter found no organ: no decision
        return result
    positive = diagnosis.patient_score > diagnosis.patient_threshold
    heat = ct_heatmap(case, diagnosis, bundle.config, model.patch_network)
    thickness = bundle.config.preprocess.slice_thickness_mm
    organ = "predicted" if diagnosis.organ_mask == "predicted" else "given"
    colouring = ("tumour probability per pixel above it" if heat.per_pixel
                 else "coloured by score")
    result.update(
        positive=positive, fna=_fna(model, positive, request.lesion_size_mm),
        heatmap={"png": png_data_url(heat.png), "slice_index": heat.slice_index,
                 "per_pixel": heat.per_pixel,
                 "caption": f"slice {heat.slice_index} of the {thickness:g} mm grid: "
                            f"{heat.n_positive_patches_on_slice} patches above the patch "
                            f"threshold {diagnosis.patch_threshold:.3f}, {colouring}; "
                            f"{organ} organ outline in cyan"})
    return result


def _image_result(request: DiagnoseRequest, paths: list[Path], cam_dir: Path,
                  limits: UploadLimits) -> dict[str, Any]:
    bundle = request.model.bundle
    assert isinstance(bundle, ImageModelBundle)
    # The same reading and checks as `cadx diagnose`: an image the model cannot judge (too
    # small, a binary mask, mostly transparent) gets its reason instead of a probability.
    files = image_files_from_uploads(paths, limits)
    diagnosis = diagnose_image_files(bundle, files, patient_id="exam", cam_dir=cam_dir)
    # The same fusion as `cadx diagnose --clinical`: a value missing or refused leaves the
    # image-only result standing and `fusion.not_fused` says why.
    add_fusion(bundle, diagnosis, request.clinical, source="clinical")
    # CAM files live in the request's temporary folder, removed when the request ends: send
    # the overlays inline and name no file of it (the raw .npy maps are a CLI output only).
    per_image = [{"name": image.name, "probability": image.probability,
                  "not_judged": image.not_judged,
                  "above_image_threshold": image.above_image_threshold,
                  "cam_png": png_data_url(Path(image.cam_png).read_bytes())
                  if image.cam_png else None} for image in diagnosis.images]
    details = diagnosis.to_dict()
    for image in details["images"]:
        image.pop("cam_png")
        image.pop("cam_npy")
    positive = diagnosis.exam_score > diagnosis.exam_threshold
    return {
        "patient_id": None, "score": diagnosis.exam_score,
        "score_name": f"exam score ({diagnosis.aggregation}) over {len(per_image)} image(s)",
        "threshold": diagnosis.exam_threshold, "decision": diagnosis.decision,
        "positive": positive, "heatmap": None, "images": per_image,
        "fna": _fna(request.model, positive, request.lesion_size_mm),
        "fusion": diagnosis.fusion, "details": details,
    }


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def clear_stale_workdirs(tmp_root: str | Path | None = None) -> int:
    """Remove the request folders (`cadx-serve-<pid>-*` in the temporary directory) of
    services that no longer run, e.g. killed mid-request; returns how many were removed.

    Folders of running services (this one included) and of other users are left alone.
    """
    root = Path(tmp_root or tempfile.gettempdir())
    removed = 0
    for folder in root.glob(f"{WORKDIR_PREFIX}*"):
        try:
            info = folder.lstat()
            if not folder.is_dir() or folder.is_symlink() or info.st_uid != os.geteuid():
                continue
            match = _WORKDIR_PID.match(folder.name)
            if match:
                stale = not _process_alive(int(match.group(1)))
            else:
                stale = time.time() - info.st_mtime > _UNNAMED_STALE_S
            if stale:
                shutil.rmtree(folder)
                removed += 1
        except OSError as exc:  # e.g. removed meanwhile by another service starting up
            log.warning("could not remove %s: %s", folder, exc.strerror or exc)
    return removed


def _public(value: Any, workdir: Path, names: list[str]) -> Any:
    """Every text in an answer (nested dicts and lists) through `public_text`."""
    if isinstance(value, str):
        return public_text(value, workdir, names)
    if isinstance(value, dict):
        return {key: _public(item, workdir, names) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_public(item, workdir, names) for item in value]
    return value


def run_diagnosis(request: DiagnoseRequest, limits: UploadLimits) -> dict[str, Any]:
    """Save the uploads in a temporary folder (removed on return), run the model, build JSON.

    The answer, or the error's message, names the user's files, never that folder: every text
    in it goes through `public_text`."""
    with tempfile.TemporaryDirectory(prefix=f"{WORKDIR_PREFIX}{os.getpid()}-") as tmp:
        workdir = Path(tmp)
        extra = [request.organ_mask] if request.organ_mask is not None else []
        uploads = [*request.uploads, *extra]
        names = [clean_name(upload.filename) for upload in uploads]  # as save_uploads names them
        try:
            paths = save_uploads(uploads, workdir, limits)
            mask = paths.pop() if extra else None
            if request.model.kind == CT_PATCH:
                result = _ct_result(request, paths, mask, limits)
            else:
                result = _image_result(request, paths, workdir / "cam", limits)
        except CadxError as exc:
            raise type(exc)(public_text(str(exc), workdir, names)) from None
        result = _public(result, workdir, names)
    model = request.model
    return {"model": {"id": model.model_id, "name": model.bundle.name, "kind": model.kind,
                      "organ": model.organ}, **result}
