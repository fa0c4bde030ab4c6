"""How well class activation maps point at the lesion, measured against lesion masks: the
pointing game (is the map's maximum inside the mask?) and the fraction of the map's mass inside
the mask, each beside its chance level (the mask's share of the image: what a map that ignores
the image would score)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from cadx.errors import InputError
from cadx.evaluate.stats import Interval, wilson_interval


@dataclass(frozen=True)
class CamLocalisation:
    """Pointing-game hits and CAM mass inside the masks of `n` images, with chance levels."""

    n: int
    pointing_hits: int
    pointing_game: float
    pointing_game_ci: Interval
    mass_in_mask: float
    chance: float

    def to_dict(self) -> dict[str, object]:
        out = asdict(self)
        out["pointing_game_ci"] = self.pointing_game_ci.to_dict()
        return out


def cam_localisation(cams: np.ndarray, masks: np.ndarray) -> CamLocalisation:
    """Score (N, H, W) maps (>= 0) against (N, H, W) lesion masks of the same size.

    Pointing game: the map's maximum pixel lies inside the mask (ties: any maximum inside; a
    flat map points nowhere and misses).
    Mass: sum of the map inside the mask / sum of the map (mean over images). Chance: the mean
    mask area fraction. Images with an empty mask are refused.
    """
    cams = np.asarray(cams, dtype=np.float64)
    masks = np.asarray(masks).astype(bool)
    if cams.ndim != 3 or cams.shape != masks.shape:
        raise InputError(f"CAMs {cams.shape} and masks {masks.shape} must both be (N, H, W)")
    if len(cams) == 0:
        raise InputError("no images to score CAMs on")
    area = masks.mean(axis=(1, 2))
    if (area == 0).any():
        raise InputError(f"{int((area == 0).sum())} mask(s) are empty: no lesion to point at")
    peak = cams.max(axis=(1, 2), keepdims=True)
    flat = (peak[:, 0, 0] <= cams.min(axis=(1, 2)))
    hits = ((cams >= peak) & masks).any(axis=(1, 2)) & ~flat
    total = cams.sum(axis=(1, 2))
    inside = (cams * masks).sum(axis=(1, 2))
    mass = np.where(total > 0, inside / np.where(total > 0, total, 1.0), area)
    n_hits = int(hits.sum())
    return CamLocalisation(n=len(cams), pointing_hits=n_hits, pointing_game=n_hits / len(cams),
                           pointing_game_ci=wilson_interval(n_hits, len(cams)),
                           mass_in_mask=float(mass.mean()), chance=float(area.mean()))
