"""The fused level of a report: a bundle's fusion model (`cadx fuse`) evaluated on the patients
that have every value it needs, beside the image-only patient (exam) level, and DeLong's paired
test of the two AUCs on those same patients. `evaluate-images` (2D) and `evaluate` (CT) both
report it through `fused_level`."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np

from cadx.decide.fusion import FusionModel
from cadx.errors import InputError
from cadx.evaluate.levels import LevelResult, evaluate_level
from cadx.evaluate.stats import delong_test


def fused_level(fusion: FusionModel, y_true: Sequence[int], image_scores: Sequence[float],
                clinical: Sequence[Mapping[str, float | str | None]], *, name: str,
                image_name: str, n_boot: int = 1000, seed: int = 0,
                ) -> tuple[LevelResult | None, dict[str, object] | None, list[str]]:
    """The level `name` of `fusion` on the patients (one entry each in `y_true`, their
    image-only scores in [0, 1] and their checked clinical values), its DeLong comparison with
    the image-only level `image_name` on the same patients, and notes (patients not fused and
    why). No level (None, None, notes) when the fused patients are of one class."""
    y = np.asarray(y_true, dtype=int)
    scores = np.asarray(image_scores, dtype=float)
    fused, reasons = fusion.predict_many(scores, clinical)
    notes = []
    left_out = Counter(r for r in reasons if r is not None)
    if left_out:
        notes.append(f"{sum(left_out.values())} of {y.size} patients not fused (image-only "
                     "score only): " + "; ".join(f"{n} x {reason}"
                                                 for reason, n in left_out.most_common(3)))
    keep = ~np.isnan(fused)
    if len(set(y[keep].tolist())) < 2:
        notes.append("fusion not evaluated: the fused patients are of one class")
        return None, None, notes
    level = evaluate_level(
        name, y[keep], fused[keep], fusion.threshold, unit="patients",
        threshold_note="Youden on the validation patients the fusion was fitted on",
        score_description=fusion.describe(), n_boot=n_boot, seed=seed)
    comparison: dict[str, object] = {
        "model_a": name, "model_b": image_name + ("" if keep.all() else ", same patients"),
        "n": int(keep.sum()), "n_positive": int(y[keep].sum()),
        "n_negative": int((1 - y[keep]).sum())}
    try:
        test = delong_test(y[keep], fused[keep], scores[keep])
    except InputError as exc:
        comparison["error"] = str(exc)
    else:
        if not math.isfinite(test["z"]):
            test["z"] = None
        comparison.update(test)
    return level, comparison, notes


__all__ = ["fused_level"]
