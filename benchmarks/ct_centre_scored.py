"""A dense CT bundle's patch score taken in each window's centre only, on validation phantoms.

The dense UNet sees each 50 px window alone (padded), so the pixels near a window's border are
judged with half their context: a duct or bowel wall cut by the border can look like a small
dark blob there. With stride 25 the windows' central 25 x 25 px squares tile the plane, so every
pixel is the centre of one window: scoring a patch by its largest pixel logit inside the organ
*and* inside its central square (`centre`) still looks at every organ pixel once, always with
full context (what MONAI's Gaussian-weighted sliding window does softly). A window whose centre
holds no organ pixel scores 0 (its organ pixels are the centre of a neighbouring window).
Prints, per bundle, the pooled top-1 patient AUC (DeLong 95 % CI) of the bundle's own score
(`organ`) and of `centre`, the paired difference, the same for tumours under 2 cm against the
tumour-free phantoms, and the tumours under 2 cm found at specificity 0.90.
Validation cohorts only (seeds 202 and 303 by default); no test phantom is read.

Run:
    python benchmarks/ct_centre_scored.py --data bench_ct \\
        --bundle run16=ct_ref_run16/reference.cadx --bundle run19=ct_ref_run19/reference.cadx
"""

from __future__ import annotations

import numpy as np
import torch
from ct_organ_restricted_score import restricted_probabilities
from ct_patch_score_variants import run

from cadx.bundle import PatchModelBundle


def centre_square(size_px: int, stride_px: int) -> np.ndarray:
    """(P, P) mask of a window's central stride x stride square (the windows' centres tile
    the plane when the stride is at most the size)."""
    lo = (size_px - stride_px) // 2
    mask = np.zeros((size_px, size_px), dtype=bool)
    mask[lo:lo + stride_px, lo:lo + stride_px] = True
    return mask


def organ_and_centre(bundle: PatchModelBundle, model: torch.nn.Module, patches: np.ndarray,
                     organ: np.ndarray) -> list[np.ndarray]:
    """Patch probabilities inside the organ (the bundle's score) and inside the organ and the
    window's centre square (0 where that holds no organ pixel), flip-averaged as the bundle."""
    in_centre = organ & centre_square(bundle.config.patches.size_px,
                                      bundle.config.patches.stride_px)
    probabilities = restricted_probabilities(model, patches, [organ, in_centre],
                                             bundle.config.decide.test_time_flips,
                                             bundle.config.train.precision)
    probabilities[1][~in_centre.any(axis=(1, 2))] = 0.0
    return probabilities


def main() -> None:
    run(__doc__, ("organ", "centre"), organ_and_centre)


if __name__ == "__main__":
    main()
