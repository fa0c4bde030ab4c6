"""Route images to a category (seed 001): the router's softmax scores for every category, the
decision = the most probable category, and "unrouted" when that probability is at or below the
confidence floor, so an uncertain image is shown with its scores instead of reaching the wrong
analysers."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cadx.errors import ConfigError
from cadx.triage.bundle import TriageBundle

UNROUTED = "unrouted"


@dataclass(frozen=True)
class Routing:
    """One image's routing: its category (or "unrouted"), the top probability, every score."""

    category: str
    confidence: float
    scores: dict[str, float]

    @property
    def routed(self) -> bool:
        return self.category != UNROUTED

    def to_dict(self) -> dict[str, object]:
        return {"category": self.category, "confidence": self.confidence,
                "scores": self.scores}


def routings(probabilities: np.ndarray, categories: tuple[str, ...],
             confidence_floor: float) -> list[Routing]:
    """Routings of (N, K) softmax `probabilities`: argmax category if its probability is above
    `confidence_floor`, else "unrouted"."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim != 2 or probabilities.shape[1] != len(categories):
        raise ConfigError(f"expected (N, {len(categories)}) probabilities, got shape "
                          f"{probabilities.shape}")
    if not 0.0 <= confidence_floor < 1.0:
        raise ConfigError(f"confidence floor must be in [0, 1), got {confidence_floor}")
    best = probabilities.argmax(axis=1)
    confidence = probabilities[np.arange(len(best)), best]
    return [Routing(categories[k] if p > confidence_floor else UNROUTED, round(float(p), 6),
                    {c: round(float(v), 6) for c, v in zip(categories, row, strict=True)})
            for k, p, row in zip(best.tolist(), confidence, probabilities, strict=True)]


def route(bundle: TriageBundle, images: np.ndarray,
          confidence_floor: float | None = None) -> list[Routing]:
    """Route (N, C, size_px, size_px) images with a router bundle, in batches; the floor is
    the bundle's unless given."""
    if bundle.kind != "router":
        raise ConfigError(f"{bundle.name} is a {bundle.kind} model, not a router")
    floor = bundle.confidence_floor if confidence_floor is None else confidence_floor
    return routings(bundle.predict(images), bundle.labels, floor)
