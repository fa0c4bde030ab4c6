"""Diagnose one patient's exam from its 2D images (seed 002): a probability per image, the exam
score (theta = -mean ln(1 - p_i) by default), the decision against the validation-Youden exam
threshold, and optionally Grad-CAM overlays (PNG) with the raw maps (.npy, model input size)."""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from torch import nn

from cadx.decide.exam import exam_scores
from cadx.diagnose.cam import grad_cam, write_cam_npy, write_overlay_png
from cadx.diagnose.image_checks import alpha_problem, array_problem
from cadx.errors import InputError
from cadx.image_bundle import ImageModelBundle
from cadx.io.images import fit_image, read_image_with_alpha

POSITIVE, NEGATIVE = "malignancy suspected", "no malignancy detected"


@dataclass
class ImageResult:
    """One image's malignancy probability and, if asked for, its CAM overlay file."""

    name: str
    probability: float | None
    above_image_threshold: bool
    cam_png: str | None = None
    cam_npy: str | None = None
    not_judged: str | None = None


@dataclass
class ImageDiagnosis:
    """The result for one exam, ready to be written as JSON."""

    patient_id: str
    exam_score: float
    aggregation: str
    exam_threshold: float
    decision: str
    image_threshold: float
    images: list[ImageResult]
    model: dict[str, str]
    notes: list[str] = field(default_factory=list)
    timings_s: dict[str, float] = field(default_factory=dict)
    # The exam score fused with clinical values (cadx.diagnose.clinical), when the bundle has a
    # fusion model: its score and decision, or why the image-only score is the answer.
    fusion: dict[str, object] | None = None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _safe_stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).stem) or "image"


def diagnose_images(bundle: ImageModelBundle, images: Sequence[np.ndarray],
                    names: Sequence[str], patient_id: str,
                    cam_dir: str | Path | None = None,
                    models: list[nn.Module] | None = None,
                    problems: Sequence[str | None] | None = None) -> ImageDiagnosis:
    """Score one patient's images ((H, W), (H, W, 3) or (C, H, W) arrays of any size, 0..1 or
    uint8) with `bundle`; write a Grad-CAM overlay PNG per image into `cam_dir` if given.
    `models` are the bundle's networks already built (`bundle.build_networks()`), for a service
    that scores many requests. Images the model cannot judge (too small, a binary mask, or a
    problem given in `problems`, e.g. transparency found on the file) get no probability but
    the reason, and do not count in the exam score; InputError if none can be judged."""
    if len(images) == 0:
        raise InputError(f"patient {patient_id}: no images to diagnose")
    if len(names) != len(images):
        raise InputError(f"{len(names)} names for {len(images)} images")
    problems = [given or array_problem(image)
                for given, image in zip(problems or [None] * len(images), images, strict=True)]
    judged = [k for k, problem in enumerate(problems) if problem is None]
    if not judged:
        raise InputError(f"patient {patient_id}: no image can be judged: " + "; ".join(
            f"{name}: {problem}" for name, problem in zip(names, problems, strict=True)))
    timings: dict[str, float] = {}
    start = time.perf_counter()
    batch = np.stack([fit_image(images[k], bundle.size_px, bundle.channels) for k in judged])
    models = models if models is not None else bundle.build_networks()
    probabilities = bundle.predict(batch, models)
    score = exam_scores([patient_id] * len(batch), probabilities, bundle.aggregation)[patient_id]
    timings["score"] = time.perf_counter() - start
    results = [ImageResult(name, None, False, not_judged=problem)
               for name, problem in zip(names, problems, strict=True)]
    for k, p in zip(judged, probabilities, strict=True):
        results[k] = ImageResult(names[k], round(float(p), 6), bool(p > bundle.image_threshold))
    notes = [f"{result.name} not judged: {result.not_judged}" for result in results
             if result.not_judged]
    if cam_dir is not None:
        if bundle.method != "cnn-ensemble":
            notes.append("no CAM: this model classifies features with an SVM/random forest, "
                         "which has no spatial map; use a CNN ensemble model for CAMs")
        else:
            start = time.perf_counter()
            cams = grad_cam(models, [s.arch for s in bundle.networks],
                            [s.weight for s in bundle.networks], batch)
            stems = [_safe_stem(result.name) for result in results]
            for k, cam in zip(judged, cams, strict=True):
                result, image = results[k], images[k]
                # Unique names even when two uploads share a file name.
                stem = stems[k] if stems.count(stems[k]) == 1 else f"{stems[k]}_{k + 1}"
                path = Path(cam_dir) / f"{stem}_cam.png"
                source = image if np.issubdtype(np.asarray(image).dtype, np.floating) else \
                    np.asarray(image, dtype=np.float32) / 255.0
                result.cam_png = str(write_overlay_png(path, source, cam))
                result.cam_npy = str(write_cam_npy(path.with_suffix(".npy"), cam))
            timings["cam"] = time.perf_counter() - start
    return ImageDiagnosis(
        patient_id=patient_id, exam_score=round(float(score), 6),
        aggregation=bundle.aggregation, exam_threshold=bundle.exam_threshold,
        decision=POSITIVE if score > bundle.exam_threshold else NEGATIVE,
        image_threshold=bundle.image_threshold, images=results,
        model={"name": bundle.name, "method": bundle.method,
               "cadx_version": bundle.cadx_version, "created_utc": bundle.created_utc},
        notes=notes, timings_s={k: round(v, 4) for k, v in timings.items()},
    )


def diagnose_image_files(bundle: ImageModelBundle, paths: Sequence[str | Path],
                         patient_id: str, cam_dir: str | Path | None = None) -> ImageDiagnosis:
    """`diagnose_images` on image files (PNG, JPEG, ...); InputError names an unreadable one.
    Each file is read and decoded once: the checks, the resize and the CAM overlay all work
    from that one array (and its alpha channel, for the transparency check)."""
    decoded = [read_image_with_alpha(path, channels=bundle.channels) for path in paths]
    return diagnose_images(bundle, [image for image, _ in decoded],
                           [Path(p).name for p in paths], patient_id, cam_dir,
                           problems=[alpha_problem(alpha) for _, alpha in decoded])
