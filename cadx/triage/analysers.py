"""The analyser registry (seed 001): each category has a group of computer-aided-diagnosis
analysers, each looking at different features (a CNN ensemble, a texture-feature SVM, ...);
an image routed to the category is given to every one of them and each returns its own finding.

An analyser *type* turns a pipeline-file entry into an object with `analyse(images)` (a
probability per image) and `exam(patient_ids, probabilities)` (a score and decision per
patient). "image-model" (a bundle of `cadx train-images` / `cadx train-features`) is built in;
other types are added with `register_analyser_type`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from cadx.decide.exam import exam_scores
from cadx.errors import ConfigError
from cadx.image_bundle import ImageModelBundle, load_image_bundle
from cadx.io.images import fit_image


@dataclass(frozen=True)
class AnalyserSpec:
    """One analyser entry of a pipeline file; thresholds None = the bundle's own."""

    name: str
    category: str
    bundle: Path
    type: str = "image-model"
    image_threshold: float | None = None
    exam_threshold: float | None = None


class Analyser(Protocol):
    """What the run needs from an analyser."""

    spec: AnalyserSpec

    def analyse(self, images: Sequence[np.ndarray]) -> np.ndarray: ...

    def image_findings(self, probabilities: np.ndarray) -> list[dict[str, object]]: ...

    def exam(self, patient_ids: Sequence[str],
             probabilities: np.ndarray) -> dict[str, dict[str, object]]: ...

    def model_info(self) -> dict[str, object]: ...


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _finding_names(class_names: Sequence[str]) -> tuple[str, str]:
    """Negative and positive finding names: the class names, unless they are bare indices."""
    negative, positive = class_names[0], class_names[-1]
    if negative.isdecimal() or positive.isdecimal():
        return "negative", "positive"
    return negative, positive


class ImageModelAnalyser:
    """A 2D image model bundle as an analyser: probability per image against the image
    threshold, exam score (the bundle's aggregation) against the exam threshold."""

    def __init__(self, spec: AnalyserSpec, bundle: ImageModelBundle) -> None:
        self.spec, self.bundle = spec, bundle
        self.image_threshold = (bundle.image_threshold if spec.image_threshold is None
                                else spec.image_threshold)
        self.exam_threshold = (bundle.exam_threshold if spec.exam_threshold is None
                               else spec.exam_threshold)
        self.negative, self.positive = _finding_names(bundle.class_names)
        self._sha256 = _file_sha256(spec.bundle)

    @classmethod
    def from_spec(cls, spec: AnalyserSpec) -> ImageModelAnalyser:
        return cls(spec, load_image_bundle(spec.bundle))

    def analyse(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Probability of the positive class for each image (any size; batched)."""
        if not len(images):
            return np.zeros(0)
        batch = np.stack([fit_image(image, self.bundle.size_px, self.bundle.channels)
                          for image in images])
        return self.bundle.predict(batch)

    def image_findings(self, probabilities: np.ndarray) -> list[dict[str, object]]:
        return [{"analyser": self.spec.name, "probability": round(float(p), 6),
                 "threshold": self.image_threshold,
                 "finding": self.positive if p > self.image_threshold else self.negative}
                for p in probabilities]

    def exam(self, patient_ids: Sequence[str],
             probabilities: np.ndarray) -> dict[str, dict[str, object]]:
        scores = exam_scores(list(patient_ids), probabilities, self.bundle.aggregation)
        return {pid: {"analyser": self.spec.name, "exam_score": round(float(score), 6),
                      "aggregation": self.bundle.aggregation, "threshold": self.exam_threshold,
                      "finding": self.positive if score > self.exam_threshold
                      else self.negative}
                for pid, score in scores.items()}

    def model_info(self) -> dict[str, object]:
        return {"analyser": self.spec.name, "type": self.spec.type,
                "category": self.spec.category, "file": str(self.spec.bundle),
                "sha256": self._sha256, "name": self.bundle.name,
                "method": self.bundle.method, "cadx_version": self.bundle.cadx_version,
                "created_utc": self.bundle.created_utc,
                "image_threshold": self.image_threshold, "exam_threshold": self.exam_threshold}


AnalyserFactory = Callable[[AnalyserSpec], Analyser]
_TYPES: dict[str, AnalyserFactory] = {"image-model": ImageModelAnalyser.from_spec}


def register_analyser_type(name: str, factory: AnalyserFactory) -> None:
    """Make `type: name` usable in pipeline files; `factory` builds the analyser from its spec."""
    if name in _TYPES:
        raise ConfigError(f"analyser type {name!r} is already registered")
    _TYPES[name] = factory


def analyser_types() -> tuple[str, ...]:
    return tuple(sorted(_TYPES))


def build_analyser(spec: AnalyserSpec) -> Analyser:
    """The analyser of `spec`; ConfigError for an unknown type, BundleError for a bad file."""
    if spec.type not in _TYPES:
        raise ConfigError(f"analyser {spec.name}: unknown type {spec.type!r}; one of "
                          f"{', '.join(analyser_types())}")
    return _TYPES[spec.type](spec)
