"""A dense CT bundle scored with all eight symmetries of the square at test time, on validation
phantoms.

cadx averages each patch's probability over four views (as is, left-right, up-down and both
flipped: `--tta`). The square has eight symmetries; the other four are the same flips of the
transposed patch (the 90-degree rotations). A tumour-free gland's brightest window is partly
noise, which more views average down, while a tumour answers in every view, so eight views
might separate them better than four, even for a network trained with flips only. This scores
the validation phantoms both ways with the same network and patches (inside the organ, as the
bundle does) and prints the pooled top-1 patient AUC (DeLong 95 % CI) of each, the paired
difference, the same for tumours under 2 cm against the tumour-free phantoms, and the tumours
under 2 cm found at specificity 0.90. Validation cohorts only (seeds 202 and 303 by default);
no test phantom is read.

Run:
    python benchmarks/ct_dihedral_tta.py --data bench_ct \\
        --bundle run16=ct_ref_run16/reference.cadx --bundle run19=ct_ref_run19/reference.cadx
"""

from __future__ import annotations

import numpy as np
import torch
from ct_patch_score_variants import run

from cadx.models.dense_patch_net import largest_logit
from cadx.train.precision import autocast

BATCH = 128
FLIPS = [(), (-1,), (-2,), (-2, -1)]  # cadx's four test-time views


@torch.inference_mode()
def four_and_eight_view_probabilities(model: torch.nn.Module, patches: np.ndarray,
                                      organ: np.ndarray, precision: str
                                      ) -> tuple[np.ndarray, np.ndarray]:
    """Each patch's probability averaged over cadx's four flip views, and over those and the
    same four of the transposed patch (each view scored inside its own view of the organ)."""
    model.eval()
    four, eight = [], []
    for i in range(0, len(patches), BATCH):
        x = torch.from_numpy(patches[i:i + BATCH])
        x = x[:, None] if x.ndim == 3 else x
        region = torch.from_numpy(organ[i:i + BATCH])
        views, regions = [], []
        for transpose in (False, True):
            xt = x.transpose(-1, -2) if transpose else x
            rt = region.transpose(-1, -2) if transpose else region
            views += [xt.flip(d) if d else xt for d in FLIPS]
            regions += [rt.flip(d) if d else rt for d in FLIPS]
        with autocast(precision):
            logits = largest_logit(model(torch.cat(views).contiguous(), pixels=True).float(),
                                   torch.cat(regions))
        probabilities = torch.sigmoid(logits).view(8, len(x))
        four.append(probabilities[:4].mean(dim=0))
        eight.append(probabilities.mean(dim=0))
    return (torch.cat(four).numpy().astype(np.float64),
            torch.cat(eight).numpy().astype(np.float64))


def main() -> None:
    run(__doc__, ("4 views", "8 views"),
        lambda bundle, model, patches, organ: list(four_and_eight_view_probabilities(
            model, patches, organ, bundle.config.train.precision)), needs_tta=True)


if __name__ == "__main__":
    main()
