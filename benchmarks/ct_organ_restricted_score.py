"""A dense CT bundle's patch score restricted to the organ, on pooled validation phantoms.

A dense (UNet) patch network scores a patch by its largest pixel logit anywhere in the window,
which reaches 45 mm beyond the gland: a fluid-filled bowel loop or a duct beside the pancreas can
outscore a small tumour inside it. This script scores each validation phantom's patches three
ways with the same network and the same patches: as the bundle does (`unrestricted`), with the
largest pixel logit inside the preprocessed (dilated) organ mask (`organ`), and inside that mask
grown a further `--margin-mm` in-plane (`organ+M`, tolerance for imperfect organ masks). Each
as the bundle's flips average it. Prints the pooled top-1 patient AUC (DeLong 95 % CI) of each,
with the paired difference to `unrestricted`.
Validation cohorts only (seeds 202 and 303 by default); no test phantom is read.

Run:
    python benchmarks/ct_organ_restricted_score.py --data bench_ct \\
        --bundle run9b=ct_ref_run9b/reference.cadx --bundle run11=ct_ref_run11/reference.cadx
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from bench_ct_learning_curve import cached_cohort
from rich.progress import track
from scipy import ndimage

from cadx.bundle import load_bundle
from cadx.evaluate.stats import delong_auc_ci, delong_test
from cadx.io.dataset import load_dataset
from cadx.io.volumes import read_case
from cadx.models.dense_patch_net import largest_logit
from cadx.patches.grid import extract_patches
from cadx.preprocess.pipeline import preprocess_case
from cadx.train.precision import autocast

BATCH = 256


def grow_in_plane(mask: np.ndarray, margin_mm: float, spacing_yx_mm: tuple[float, float]
                  ) -> np.ndarray:
    """The (z, y, x) mask dilated slice by slice by a disc of `margin_mm`."""
    ry, rx = (max(1, round(margin_mm / s)) for s in spacing_yx_mm)
    yy, xx = np.mgrid[-ry:ry + 1, -rx:rx + 1]
    disc = (yy / ry) ** 2 + (xx / rx) ** 2 <= 1.0
    return ndimage.binary_dilation(mask, structure=disc[None])


FLIPS = [(), (-1,), (-2,), (-2, -1)]  # the test-time flip views, as in `cadx` scoring


def flipped_back_pixel_logits(model: torch.nn.Module, x: torch.Tensor, flips: bool,
                              precision: str) -> torch.Tensor:
    """(V, n, P, P) pixel logits of a batch `x` (n, C, P, P), one per flip view (V = 4 with
    `flips`, else 1), each flipped back onto the patch's own pixel grid."""
    dims = FLIPS if flips else [()]
    with autocast(precision):
        pixels = model(torch.cat([x.flip(d) if d else x for d in dims]), pixels=True)
    return torch.stack([p.flip(d) if d else p for p, d in
                        zip(pixels.float()[:, 0].split(len(x)), dims, strict=True)])


@torch.inference_mode()
def restricted_probabilities(model: torch.nn.Module, patches: np.ndarray,
                             regions: list[np.ndarray | None], flips: bool, precision: str
                             ) -> list[np.ndarray]:
    """Patch probabilities from the largest pixel logit inside each region (None: anywhere),
    averaged over the four flips with `flips`, as `predict_patch_probabilities` does; one
    forward pass serves every region (`largest_logit`, the network's own reduction)."""
    model.eval()
    out: list[list[torch.Tensor]] = [[] for _ in regions]
    for i in range(0, len(patches), BATCH):
        x = torch.from_numpy(patches[i:i + BATCH])
        x = x[:, None] if x.ndim == 3 else x
        pixels = flipped_back_pixel_logits(model, x, flips, precision)
        for k, region in enumerate(regions):
            inside = None if region is None else torch.from_numpy(region[i:i + BATCH])
            views_max = torch.stack([largest_logit(view, inside) for view in pixels])
            out[k].append(torch.sigmoid(views_max).mean(dim=0))
    return [torch.cat(o).numpy().astype(np.float64) for o in out]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="cohort cache folder")
    parser.add_argument("--bundle", action="append", required=True, help="NAME=BUNDLE (dense)")
    parser.add_argument("--cohorts", default="202:60,303:200",
                        help="validation SEED:N,... (default %(default)s)")
    parser.add_argument("--margin-mm", type=float, default=5.0,
                        help="the grown organ variant's margin (default %(default)s mm)")
    args = parser.parse_args()
    bundles = {name: load_bundle(path) for name, path in
               (item.split("=", 1) for item in args.bundle)}
    configs = {(b.config.preprocess, b.config.patches, b.config.labels) for b in bundles.values()}
    if len(configs) > 1 or not all(b.config.model.dense for b in bundles.values()):
        parser.error("the bundles must be dense and share their preprocessing and patches")
    config = next(iter(bundles.values())).config
    models = {name: b.build_model() for name, b in bundles.items()}
    variants = ("unrestricted", "organ", f"organ+{args.margin_mm:g}")
    top1 = {(name, v): [] for name in bundles for v in variants}
    truth: list[bool] = []
    for cohort in args.cohorts.split(","):
        seed, n = (int(v) for v in cohort.split(":"))
        folder = cached_cohort(Path(args.data), f"val_seed{seed}_n{n}", n, seed, False)
        for ref in track(load_dataset(folder), description=f"cohort {cohort}"):
            case = read_case(ref.image_path, ref.label_path, labels=config.labels,
                             patient_id=ref.patient_id)
            processed = preprocess_case(case, config.preprocess)
            patches = extract_patches(processed, config.patches)
            size = config.patches.size_px
            z, y, x = patches.coords.T
            rows, cols = y[:, None] + np.arange(size), x[:, None] + np.arange(size)
            organ = processed.organ_mask
            grown = grow_in_plane(organ, args.margin_mm, processed.spacing_zyx_mm[1:])
            regions = [None] + [m[z[:, None, None], rows[:, :, None], cols[:, None, :]]
                                for m in (organ, grown)]
            for name, model in models.items():
                b = bundles[name]
                probs = restricted_probabilities(model, patches.patches, regions,
                                                 b.config.decide.test_time_flips,
                                                 b.config.train.precision)
                for v, p in zip(variants, probs, strict=True):
                    top1[(name, v)].append(float(p.max()))
            truth.append(bool(case.tumour_mask.any()))
    y_true = np.array(truth)
    print(f"{len(y_true)} validation phantoms ({y_true.sum()} with tumour), cohorts "
          f"{args.cohorts}, patient score top-1")
    for name in bundles:
        base = np.array(top1[(name, "unrestricted")])
        for v in variants:
            s = np.array(top1[(name, v)])
            auc = delong_auc_ci(y_true, s)
            line = f"  {name:8s} {v:14s} AUC {auc.estimate:.3f} [{auc.low:.3f}, {auc.high:.3f}]"
            if v != "unrestricted":
                diff = delong_test(y_true, s, base)
                line += (f"  vs unrestricted {diff['difference']:+.3f} "
                         f"(p = {diff['p_value']:.2f})")
            print(line, flush=True)


if __name__ == "__main__":
    main()
