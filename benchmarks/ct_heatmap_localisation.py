"""Where a CT heat map points: patch-score squares against a dense network's pixel
probabilities, on a bundle's held-out test patients with tumour.

For each test patient with a tumour the script diagnoses the scan as `cadx serve` does, takes
the slice the heat map shows, and measures on it: whether that slice holds tumour, whether the
hottest pixel lies in the tumour (pixel maps only: a patch map's maximum is a flat square),
the share of the coloured area (above the patch threshold) inside the tumour, and the share of
the slice's tumour that is coloured. Nothing is chosen here; it describes a trained bundle.

Run (the demo's bundle and data):
    python benchmarks/ct_heatmap_localisation.py demo_out/model.cadx demo_out/data
"""

from __future__ import annotations

import argparse

import numpy as np

from cadx.bundle import load_bundle
from cadx.diagnose.heatmap import choose_slice, pixel_score_map, score_map
from cadx.diagnose.patient import diagnose_case
from cadx.io.dataset import load_dataset
from cadx.io.volumes import read_case
from cadx.preprocess.pipeline import preprocess_case


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle")
    parser.add_argument("data", help="the dataset folder the bundle was trained from")
    args = parser.parse_args()
    bundle = load_bundle(args.bundle)
    config = bundle.config
    if not config.model.dense:
        raise SystemExit(f"{args.bundle}: not a dense patch network; nothing to compare")
    network = bundle.build_model()
    test_ids = set(bundle.summary["split"]["test"])
    rows = []
    for ref in load_dataset(args.data):
        if ref.patient_id not in test_ids:
            continue
        case = read_case(ref.image_path, ref.label_path, labels=config.labels,
                         patient_id=ref.patient_id)
        if not case.tumour_mask.any():
            continue
        diagnosis = diagnose_case(bundle, case)
        processed = preprocess_case(case, config.preprocess)
        index = choose_slice(diagnosis, processed.organ_mask)
        tumour = processed.tumour_mask[index]
        threshold = diagnosis.patch_threshold
        pixel = pixel_score_map(diagnosis, index, processed.image,
                                config.patches.context_slices, network)
        patch = score_map(diagnosis, index, tumour.shape)
        row = {"id": ref.patient_id, "detected": diagnosis.decision == "cancer suspected",
               "slice_has_tumour": bool(tumour.any()),
               "peak_in_tumour": bool(pixel.max() > threshold and tumour.flat[pixel.argmax()])}
        for name, heat in (("pixel", pixel), ("patch", patch)):
            hot = heat > threshold
            row[f"{name}_precision"] = (hot & tumour).sum() / hot.sum() if hot.any() else np.nan
            row[f"{name}_recall"] = (hot & tumour).sum() / tumour.sum() if tumour.any() else np.nan
        rows.append(row)
        print(f"{row['id']}: detected {row['detected']}, slice holds tumour "
              f"{row['slice_has_tumour']}, pixel peak in tumour {row['peak_in_tumour']}, "
              f"coloured area in tumour: pixel {row['pixel_precision']:.2f} / patch "
              f"{row['patch_precision']:.2f}", flush=True)
    print(f"\n{len(rows)} test patients with tumour")
    for group, members in (("all", rows), ("detected", [r for r in rows if r["detected"]])):
        if not members:
            continue
        print(f"{group} ({len(members)}): heat-map slice holds tumour "
              f"{sum(r['slice_has_tumour'] for r in members)}/{len(members)}; pixel peak in "
              f"tumour {sum(r['peak_in_tumour'] for r in members)}/{len(members)}")
        for name in ("pixel", "patch"):
            precision = np.nanmedian([r[f"{name}_precision"] for r in members])
            recall = np.nanmedian([r[f"{name}_recall"] for r in members])
            print(f"  {name} map: median share of the coloured area inside the tumour "
                  f"{precision:.2f}, of the slice's tumour coloured {recall:.2f}")


if __name__ == "__main__":
    main()
