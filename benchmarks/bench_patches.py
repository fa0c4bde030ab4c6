"""Patch extraction: cadx's vectorised crop vs a naive per-patch loop, vs MONAI's GridPatch and
PatchIter on the same volume, vs a plain numpy copy of the same bytes (the memory-bandwidth
floor). Inference throughput: bench_inference.py.

Run: python benchmarks/bench_patches.py [--repeats 3]
Everything is measured in this one process and printed as ratios, since absolute times on a
shared 2-core machine are noisy.
"""

from __future__ import annotations

import argparse

import numpy as np
from monai.data import PatchIter
from monai.transforms import GridPatch
from timing import best_of

from cadx.case import Case
from cadx.config import PatchConfig
from cadx.patches.grid import extract_patches, grid_positions


def naive_extract(case: Case, config: PatchConfig) -> tuple[np.ndarray, np.ndarray]:
    """The obvious loop: visit every window, test the masks, copy the patch."""
    size = config.size_px
    ys = grid_positions(case.image.shape[1], size, config.stride_px)
    xs = grid_positions(case.image.shape[2], size, config.stride_px)
    patches, labels = [], []
    for z in range(case.image.shape[0]):
        for y in ys:
            for x in xs:
                window = (z, slice(y, y + size), slice(x, x + size))
                tumour = case.tumour_mask[window].any()
                if case.organ_mask[window].any() or tumour:
                    patches.append(case.image[window].copy())
                    labels.append(int(tumour))
    return np.stack(patches), np.array(labels)


def monai_grid_patch(case: Case, config: PatchConfig) -> np.ndarray:
    """MONAI GridPatch over all slices at once (slices as channels), then the windows touching
    the organ or tumour kept. MONAI's grid has no extra window flush with the far border."""
    grid = GridPatch(patch_size=(config.size_px, config.size_px),
                     overlap=1.0 - config.stride_px / config.size_px)
    image = grid(case.image)  # (windows, z, size, size)
    masks = grid((case.organ_mask | case.tumour_mask).astype(np.uint8))
    window, z = np.nonzero(masks.as_tensor().flatten(2).any(-1).numpy())
    return image.as_tensor().numpy()[window, z]


def monai_patch_iter(case: Case, config: PatchConfig) -> np.ndarray:
    """MONAI PatchIter (non-overlapping windows only), one window at a time, filtered."""
    size = config.size_px
    masks = case.organ_mask | case.tumour_mask
    keep = []
    for patch, coords in PatchIter(patch_size=(size, size), mode=None)(case.image):
        window = (slice(None), slice(*coords[1]), slice(*coords[2]))
        touched = np.flatnonzero(masks[window].any(axis=(1, 2)))
        keep.append(patch[touched])
    return np.concatenate(keep)



def phantom_volume(shape=(40, 512, 512)) -> Case:
    """A 512x512x40 volume with a pancreas-sized organ band and a tumour."""
    rng = np.random.default_rng(0)
    image = rng.random(shape, dtype=np.float32)
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    organ = (((y - 280) / 40.0) ** 2 + ((x - 256) / 150.0) ** 2 <= 1) & (z >= 8) & (z < 32)
    tumour = organ & ((y - 280) ** 2 + (x - 300) ** 2 <= 20**2) & (z >= 14) & (z < 20)
    return Case("bench", image, (5.0, 0.8, 0.8), organ, tumour)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    case = phantom_volume()
    print(f"volume {case.image.shape} (z, y, x), float32")
    print("\n1. patch extraction, 50 px window (times: best of the repeats)")
    for stride in (50, 25):
        config = PatchConfig(size_px=50, stride_px=stride)
        vector = extract_patches(case, config)
        naive_patches, naive_labels = naive_extract(case, config)
        assert np.array_equal(vector.patches, naive_patches)
        assert np.array_equal(vector.labels, naive_labels)
        source = np.random.default_rng(2).random(vector.patches.shape, dtype=np.float32)
        target = np.empty_like(source)
        times = {
            "cadx vectorised": best_of(args.repeats, lambda c=config: extract_patches(case, c)),
            "naive loop": best_of(args.repeats, lambda c=config: naive_extract(case, c)),
            "MONAI GridPatch": best_of(args.repeats, lambda c=config: monai_grid_patch(case, c)),
            "numpy copy of the bytes": best_of(args.repeats,
                                               lambda s=source, t=target: np.copyto(t, s)),
        }
        counts = {"MONAI GridPatch": len(monai_grid_patch(case, config))}
        if stride == 50:
            times["MONAI PatchIter"] = best_of(args.repeats,
                                               lambda c=config: monai_patch_iter(case, c))
            counts["MONAI PatchIter"] = len(monai_patch_iter(case, config))
        print(f"  stride {stride}: {len(vector)} patches ({vector.patches.nbytes / 1e6:.1f} MB); "
              "cadx = naive loop's patches and labels exactly")
        cadx_s = times["cadx vectorised"]
        for name, seconds in times.items():
            note = f" ({counts[name]} patches on MONAI's grid)" if name in counts else ""
            print(f"    {name:<24} {seconds * 1e3:8.1f} ms  {seconds / cadx_s:6.2f}x "
                  f"cadx's time{note}")


if __name__ == "__main__":
    main()
