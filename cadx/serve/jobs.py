"""One diagnosis request as it runs in a worker: uploads -> model input -> result JSON."""

from __future__ import annotations

import base64
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cadx.bundle import PatchModelBundle
from cadx.diagnose.fna import RULE, SOURCE, fna_advice
from cadx.diagnose.heatmap import ct_heatmap
from cadx.diagnose.images import diagnose_images
from cadx.diagnose.patient import diagnose_case
from cadx.errors import CadxError, InputError
from cadx.image_bundle import ImageModelBundle
from cadx.serve.inputs import (
    Upload,
    UploadLimits,
    ct_case_from_uploads,
    images_from_uploads,
    public_message,
    save_uploads,
)
from cadx.serve.registry import CT_PATCH, ServedModel

FNA_ORGANS = ("thyroid",)


@dataclass(frozen=True)
class DiagnoseRequest:
    """What the client sent: the model, its files, an optional organ mask and nodule size."""

    model: ServedModel
    uploads: list[Upload]
    organ_mask: Upload | None = None
    lesion_size_mm: float | None = None


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


def _ct_result(request: DiagnoseRequest, paths: list[Path], mask: Path | None,
               limits: UploadLimits) -> dict[str, Any]:
    model = request.model
    bundle = model.bundle
    assert isinstance(bundle, PatchModelBundle)
    case = ct_case_from_uploads(paths, mask, limits)
    case.source = Path(case.source).name
    diagnosis = diagnose_case(bundle, case, organ_mask_source="given", model=model.networks[0])
    heat = ct_heatmap(case, diagnosis, bundle.config.preprocess)
    positive = diagnosis.patient_score > diagnosis.patient_threshold
    thickness = bundle.config.preprocess.slice_thickness_mm
    return {
        "patient_id": diagnosis.patient_id, "score": diagnosis.patient_score,
        "score_name": "fraction of patches above the patch threshold",
        "threshold": diagnosis.patient_threshold, "decision": diagnosis.decision,
        "positive": positive,
        "heatmap": {"png": png_data_url(heat.png), "slice_index": heat.slice_index,
                    "caption": f"slice {heat.slice_index} of the {thickness:g} mm grid: "
                               f"{heat.n_positive_patches_on_slice} patches above the patch "
                               f"threshold {diagnosis.patch_threshold:.3f} coloured by score; "
                               "organ outline in cyan"},
        "images": [],
        "fna": _fna(model, positive, request.lesion_size_mm),
        "details": diagnosis.to_dict(),
    }


def _image_result(request: DiagnoseRequest, paths: list[Path], cam_dir: Path,
                  limits: UploadLimits) -> dict[str, Any]:
    bundle = request.model.bundle
    assert isinstance(bundle, ImageModelBundle)
    images, names = images_from_uploads(paths, bundle.channels, limits)
    diagnosis = diagnose_images(bundle, images, names, patient_id="exam", cam_dir=cam_dir)
    # CAM files live in the request's temporary folder: send them inline.
    per_image = [{"name": image.name, "probability": image.probability,
                  "above_image_threshold": image.above_image_threshold,
                  "cam_png": png_data_url(Path(image.cam_png).read_bytes())
                  if image.cam_png else None} for image in diagnosis.images]
    details = diagnosis.to_dict()
    for image in details["images"]:
        image.pop("cam_png")
    positive = diagnosis.exam_score > diagnosis.exam_threshold
    return {
        "patient_id": None, "score": diagnosis.exam_score,
        "score_name": f"exam score ({diagnosis.aggregation}) over {len(per_image)} image(s)",
        "threshold": diagnosis.exam_threshold, "decision": diagnosis.decision,
        "positive": positive, "heatmap": None, "images": per_image,
        "fna": _fna(request.model, positive, request.lesion_size_mm), "details": details,
    }


def run_diagnosis(request: DiagnoseRequest, limits: UploadLimits) -> dict[str, Any]:
    """Save the uploads in a temporary folder (removed on return), run the model, build JSON."""
    with tempfile.TemporaryDirectory(prefix="cadx-serve-") as tmp:
        workdir = Path(tmp)
        try:
            extra = [request.organ_mask] if request.organ_mask is not None else []
            paths = save_uploads([*request.uploads, *extra], workdir, limits)
            mask = paths.pop() if extra else None
            if request.model.kind == CT_PATCH:
                result = _ct_result(request, paths, mask, limits)
            else:
                result = _image_result(request, paths, workdir / "cam", limits)
        except CadxError as exc:
            raise type(exc)(public_message(exc, workdir)) from None
    model = request.model
    return {"model": {"id": model.model_id, "name": model.bundle.name, "kind": model.kind,
                      "organ": model.organ}, **result}
