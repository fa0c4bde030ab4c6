"""Patient scores from a dense CT bundle's voxel map, on validation phantoms.

The dense (UNet) patch network scores a patch by its largest pixel logit (inside the organ):
the patient score top-1 is one voxel's value, the noisiest statistic of the map. This script
runs the bundle's network once over each validation phantom's patches (with its flips), puts
the flip-averaged pixel logits back into a voxel map (each voxel the largest logit of the
patches covering it, inside the preprocessed organ mask) and scores the patient several ways
from that one map:

* `top1`: the bundle's own patient score (largest in-organ pixel logit per flip view, sigmoid,
  averaged over the flips; the reference);
* `voxel`: the largest voxel of the flip-averaged map (the same statistic, averaged first);
* `smooth S`: the largest voxel after a Gaussian of S mm in-plane (and S mm along z);
* `z-support`: a voxel counts as far as the slice above or below confirms it (min of the voxel
  and the larger of its two z-neighbours), then the largest;
* `blob mm3`: the volume of the largest 3D connected component of voxels with probability
  >= 0.5 (as n / (n + 1) of its voxel count: a monotone score).

Prints each score's pooled patient AUC (DeLong 95 % CI) with the paired difference to `top1`,
its sensitivity for tumours < 2 cm at the threshold giving specificity >= 0.90 on the same
patients (descriptive), and keeps the per-patient scores in --out (npz) for later analysis.
Validation cohorts only (seeds 202 and 303 by default); no test phantom is read.

Run:
    python benchmarks/ct_voxel_scores.py ct_ref_run13/reference.cadx --data bench_ct \\
        --out voxel_scores_run13.npz
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from bench_ct_learning_curve import (
    SMALL_MM,
    cached_cohort,
    generator_diameters,
    sensitivity_at_specificity,
)
from ct_organ_restricted_score import flipped_back_pixel_logits
from rich.progress import track
from scipy import ndimage

from cadx.bundle import load_bundle
from cadx.evaluate.stats import delong_auc_ci, delong_test
from cadx.io.dataset import load_dataset
from cadx.io.volumes import read_case
from cadx.models.dense_patch_net import largest_logit
from cadx.patches.grid import extract_patches
from cadx.preprocess.pipeline import preprocess_case

BATCH = 256
SMOOTH_MM = (1.0, 2.0, 3.0)


@torch.inference_mode()
def pixel_logits(model: torch.nn.Module, patches: np.ndarray, regions: np.ndarray,
                 flips: bool, precision: str) -> tuple[np.ndarray, np.ndarray]:
    """(n, P, P) pixel logits averaged over the flip views (flipped back), and the bundle's
    patch probabilities (sigmoid of each view's largest in-region logit, averaged)."""
    model.eval()
    maps, probs = [], []
    for i in range(0, len(patches), BATCH):
        x = torch.from_numpy(np.asarray(patches[i:i + BATCH], dtype=np.float32))
        x = x[:, None] if x.ndim == 3 else x
        views = flipped_back_pixel_logits(model, x, flips, precision)
        inside = torch.from_numpy(regions[i:i + BATCH])
        probs.append(torch.sigmoid(torch.stack([largest_logit(v, inside) for v in views]))
                     .mean(dim=0))
        maps.append(views.mean(dim=0))
    return torch.cat(maps).numpy(), torch.cat(probs).numpy().astype(np.float64)


def voxel_map(logits: np.ndarray, coords: np.ndarray, shape: tuple[int, int, int]
              ) -> np.ndarray:
    """(z, y, x) map: each voxel the largest logit of the patches covering it (-inf: none)."""
    size = logits.shape[-1]
    volume = np.full(shape, -np.inf, dtype=np.float32)
    # Patches on one grid offset never overlap, so each offset is one vectorised maximum.
    offsets = coords[:, 1:] % size
    for offset in np.unique(offsets, axis=0):
        pick = (offsets == offset).all(axis=1)
        z, y, x = coords[pick].T
        rows = y[:, None, None] + np.arange(size)[None, :, None]
        cols = x[:, None, None] + np.arange(size)[None, None, :]
        zz = np.broadcast_to(z[:, None, None], rows.shape[:1] + (size, size))
        rr = np.broadcast_to(rows, zz.shape)
        cc = np.broadcast_to(cols, zz.shape)
        volume[zz, rr, cc] = np.maximum(volume[zz, rr, cc], logits[pick])
    return volume


def map_scores(volume: np.ndarray, organ: np.ndarray, spacing_zyx: tuple[float, float, float]
               ) -> dict[str, float]:
    """Patient scores from the in-organ voxel logit map (see the module docstring)."""
    inside = organ & np.isfinite(volume)
    filled = np.where(np.isfinite(volume), volume, volume[inside].min())
    scores = {"voxel": float(filled[inside].max())}
    for s in SMOOTH_MM:
        sigma = [s / d for d in spacing_zyx]
        scores[f"smooth {s:g}"] = float(ndimage.gaussian_filter(filled, sigma)[inside].max())
    up = np.concatenate([filled[1:], filled[-1:] - np.inf], axis=0)
    down = np.concatenate([filled[:1] - np.inf, filled[:-1]], axis=0)
    scores["z-support"] = float(np.minimum(filled, np.maximum(up, down))[inside].max())
    labels, n = ndimage.label((filled > 0) & inside)
    voxels = np.bincount(labels.ravel())[1:].max() if n else 0
    scores["blob mm3"] = float(voxels / (voxels + 1.0))
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", help="a dense bundle scored inside the organ")
    parser.add_argument("--data", required=True, help="cohort cache folder")
    parser.add_argument("--cohorts", default="202:60,303:200",
                        help="validation SEED:N,... (default %(default)s)")
    parser.add_argument("--out", help="per-patient scores (npz)")
    args = parser.parse_args()
    bundle = load_bundle(args.bundle)
    config = bundle.config
    if not config.model.organ_scored:
        parser.error(f"{args.bundle}: not a dense bundle scored inside the organ")
    model = bundle.build_model()
    rows: list[dict[str, float]] = []
    truth, diameters = [], []
    for cohort in args.cohorts.split(","):
        seed, n = (int(v) for v in cohort.split(":"))
        folder = cached_cohort(Path(args.data), f"val_seed{seed}_n{n}", n, seed, False)
        size = generator_diameters(folder)
        for ref in track(load_dataset(folder), description=f"cohort {cohort}"):
            case = read_case(ref.image_path, ref.label_path, labels=config.labels,
                             patient_id=ref.patient_id)
            processed = preprocess_case(case, config.preprocess)
            patches = extract_patches(processed, config.patches, with_organ=True)
            logits, probs = pixel_logits(model, patches.patches, patches.organ_masks,
                                         config.decide.test_time_flips, config.train.precision)
            volume = voxel_map(logits, patches.coords, processed.image.shape)
            row = {"top1": float(probs.max())}
            row.update(map_scores(volume, processed.organ_mask, processed.spacing_zyx_mm))
            rows.append(row)
            truth.append(bool(case.tumour_mask.any()))
            diameters.append(size[ref.patient_id])
    y = np.array(truth)
    table = {k: np.array([r[k] for r in rows]) for k in rows[0]}
    if args.out:
        np.savez(args.out, truth=y, diameter=np.array(diameters), **table)
    small = y & (np.array(diameters) < SMALL_MM)
    print(f"{len(y)} validation phantoms ({y.sum()} with tumour, {small.sum()} under 2 cm), "
          f"cohorts {args.cohorts}")
    for name, s in table.items():
        auc = delong_auc_ci(y, s)
        line = f"  {name:10s} AUC {auc.estimate:.3f} [{auc.low:.3f}, {auc.high:.3f}]"
        if name != "top1":
            diff = delong_test(y, s, table["top1"])
            line += f"  vs top1 {diff['difference']:+.3f} (p = {diff['p_value']:.2f})"
        found, total = sensitivity_at_specificity(y, small, s)
        line += f"  SN < 2 cm at SP >= 0.90: {found}/{total}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
