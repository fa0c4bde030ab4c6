"""Organ segmentation: CPU time on a 512 x 512 x 80-slice CT at 5 mm, and the end-to-end effect
of predicted instead of drawn organ masks on a labelled test cohort.

Run:
  python benchmarks/bench_segment.py timing [--seg seg.cadx] [--threads 2] [--repeats 3]
  python benchmarks/bench_segment.py compare model.cadx TEST_DATASET [--seg seg.cadx]
  python benchmarks/bench_segment.py mask CT ORGAN_MASK --seg seg.cadx

`timing` segments a synthetic phantom of 80 x 512 x 512 voxels (5 x 0.8 x 0.8 mm) and prints the
best of `repeats` runs per stage (an untrained network when no --seg is given: same cost).
`compare` diagnoses every test patient twice, inside its label's organ and inside the
segmenter's organ (the model's embedded one unless --seg is given), and prints Dice per case and
the patient-level AUC of both with DeLong's paired test. `mask` segments one CT and prints the
Dice against a reference organ mask (e.g. a real CT's).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from cadx.bundle import load_bundle
from cadx.config import LabelConvention
from cadx.diagnose.patient import diagnose_case
from cadx.evaluate.stats import delong_test
from cadx.io.dataset import load_dataset
from cadx.io.volumes import read_case
from cadx.segment.bundle import SegmenterBundle, load_segmenter
from cadx.segment.config import SegConfig
from cadx.segment.infer import segment_organ, with_predicted_organ
from cadx.segment.network import build_network
from cadx.segment.postprocess import mask_volume_ml
from cadx.segment.train import dice
from cadx.synth.ct_phantom import make_ct_phantom


def timing(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    if args.seg:
        segmenter = load_segmenter(args.seg)
    else:
        config = SegConfig()
        segmenter = SegmenterBundle(config, build_network(config).state_dict())
    phantom = make_ct_phantom(np.random.default_rng(0), 25.0, shape_zyx=(80, 512, 512),
                              spacing_zyx_mm=(5.0, 0.8, 0.8))
    image = phantom.image_hu.astype(np.float32)
    network = segmenter.build_network()
    print(f"CT {image.shape} (z, y, x) voxels of {phantom.spacing_zyx_mm} mm; torch threads "
          f"{torch.get_num_threads()}; segmenter {args.seg or 'untrained (default config)'}; "
          f"grid {segmenter.config.slice_thickness_mm} x {segmenter.config.in_plane_spacing_mm} "
          f"mm, roi {segmenter.config.roi_px} px")
    runs = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        result = segment_organ(segmenter, image, phantom.spacing_zyx_mm, network=network)
        runs.append((time.perf_counter() - start, result))
    total, best = min(runs, key=lambda run: run[0])
    stages = ", ".join(f"{k} {v:.2f} s" for k, v in best.timings_s.items())
    print(f"best of {args.repeats}: {total:.2f} s ({stages}); all runs: "
          + ", ".join(f"{t:.2f}" for t, _ in runs) + " s")
    organ = np.isin(phantom.label, [1, 2])
    print(f"organ found: {best.found} ({best.volume_ml:.1f} ml; label "
          f"{mask_volume_ml(organ, phantom.spacing_zyx_mm):.1f} ml); Dice vs label "
          f"{dice(best.mask, organ):.3f}")


def compare(args: argparse.Namespace) -> None:
    bundle = load_bundle(args.model)
    segmenter = load_segmenter(args.seg) if args.seg else bundle.segmenter
    if segmenter is None:
        raise SystemExit(f"{args.model} embeds no segmenter; give --seg")
    network, model = segmenter.build_network(), bundle.build_model()
    labels = LabelConvention(segmenter.config.organ_values, segmenter.config.tumour_values)
    rows = []
    for ref in load_dataset(args.dataset):
        case = read_case(ref.image_path, ref.label_path, labels=labels,
                         patient_id=ref.patient_id)
        truth = case.organ_mask
        given = diagnose_case(bundle, case, organ_mask_source="given", model=model)
        predicted_case, segmentation = with_predicted_organ(segmenter, case, network=network)
        predicted = (diagnose_case(bundle, predicted_case, organ_mask_source="predicted",
                                   model=model) if segmentation.found else None)
        rows.append((ref.patient_id, bool(case.has_tumour), dice(segmentation.mask, truth),
                     given.patient_score, None if predicted is None else predicted.patient_score,
                     sum(segmentation.timings_s.values())))
        print(f"{rows[-1][0]}: tumour {rows[-1][1]!s:5}  Dice {rows[-1][2]:.3f}  score given "
              f"{rows[-1][3]:.3f}  predicted "
              + ("organ not found" if predicted is None else f"{rows[-1][4]:.3f}")
              + f"  segmentation {rows[-1][5]:.2f} s", flush=True)
    dices = np.array([r[2] for r in rows])
    print(f"\n{len(rows)} patients ({sum(r[1] for r in rows)} with tumour); Dice mean "
          f"{dices.mean():.3f}, median {np.median(dices):.3f}, min {dices.min():.3f}, max "
          f"{dices.max():.3f}; organ not found in {sum(r[4] is None for r in rows)}")
    kept = [r for r in rows if r[4] is not None]
    y = [r[1] for r in kept]
    test = delong_test(y, [r[4] for r in kept], [r[3] for r in kept])
    print(f"patient AUC on {len(kept)} patients: predicted masks {test['auc_a']:.3f}, "
          f"ground-truth masks {test['auc_b']:.3f}; difference {test['difference']:+.3f} "
          f"[{test['ci_low']:+.3f}, {test['ci_high']:+.3f}] (DeLong, p = {test['p_value']:.2f})")


def mask(args: argparse.Namespace) -> None:
    segmenter = load_segmenter(args.seg)
    case = read_case(args.ct, organ_mask_path=args.organ_mask)
    result = segment_organ(segmenter, case.image, case.spacing_zyx_mm)
    print(f"{args.ct}: {case.image.shape} (z, y, x) of {case.spacing_zyx_mm} mm; organ found "
          f"{result.found} ({result.volume_ml:.1f} ml; reference "
          f"{mask_volume_ml(case.organ_mask, case.spacing_zyx_mm):.1f} ml); Dice "
          f"{dice(result.mask, case.organ_mask):.3f}; {sum(result.timings_s.values()):.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("timing")
    p.add_argument("--seg", help="segmenter bundle (default: untrained default network)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.set_defaults(func=timing)
    p = sub.add_parser("compare")
    p.add_argument("model", help="patch model bundle")
    p.add_argument("dataset", help="labelled test dataset (patients not used in training)")
    p.add_argument("--seg", help="segmenter bundle (default: the model's embedded one)")
    p.set_defaults(func=compare)
    p = sub.add_parser("mask")
    p.add_argument("ct", help="CT volume")
    p.add_argument("organ_mask", help="reference organ mask on the CT's grid")
    p.add_argument("--seg", required=True, help="segmenter bundle")
    p.set_defaults(func=mask)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
