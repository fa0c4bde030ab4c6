"""A gland-level patient classifier beside the patch CNN, measured on validation phantoms
(issue 14).

Patch windows see 45 mm of the gland; signs that span it — a dilated common bile duct or main
duct (the double-duct sign), an enlarged head — are split over many windows, each labelled by
whether it touches tumour. This lever gives a small 3D CNN the whole gland at once: each
phantom's windowed 5 mm volume inside the dilated pancreas is reassembled from the patch store
(the centre slice of every 2.5D patch, put back at its coordinates; the covered region is a
second channel), cropped around the gland, halved in-plane (1.8 mm) and fitted into
16 x 112 x 144; the network is trained from scratch on the reference bundle's training phantoms
with patient labels, its epoch kept by the bundle's internal validation phantoms. Patients are
scored by it alone or by a logistic regression of its logit with the bundle's top-1 score
(fitted on the seed-202 validation cohort); the candidate is chosen on seed 202 and measured
once on seed 303 (no bundle trains on either). Nothing here may see a test cohort.

Run (after `ct_secondary_signs.py --json secondary.json`, whose run top-1 scores it reuses):
    python benchmarks/ct_gland_classifier.py BUNDLE --data bench_ct --top1 secondary.json
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from bench_ct_learning_curve import (
    add_bundle_cohort_options,
    bundle_split_cases,
    clipped_logit,
    small_tumours,
    validation_cases,
)
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from cadx.bundle import load_bundle
from cadx.evaluate.stats import delong_auc_ci, delong_test

DEPTH, HEIGHT, WIDTH = 16, 112, 144


def gland_volume(case) -> np.ndarray:
    """(2, DEPTH, HEIGHT, WIDTH) float32: the reassembled windowed gland and its coverage."""
    patches = case.patches
    coords = np.asarray(patches.coords)
    size = patches.patch_size_px
    pixels = np.asarray(patches.patches[np.arange(len(patches))], dtype=np.float32)
    centre = pixels[:, pixels.shape[1] // 2] if pixels.ndim == 4 else pixels
    z0, y0, x0 = coords.min(axis=0)
    z1, y1, x1 = coords.max(axis=0) + [1, size, size]
    image = np.zeros((z1 - z0, y1 - y0, x1 - x0), np.float32)
    cover = np.zeros_like(image)
    for (z, y, x), patch in zip(coords - [z0, y0, x0], centre, strict=True):
        image[z, y:y + size, x:x + size] = patch
        cover[z, y:y + size, x:x + size] = 1.0
    volume = torch.from_numpy(np.stack([image, cover]))[None]
    volume = F.avg_pool3d(volume, (1, 2, 2), ceil_mode=True)[0]  # 0.9 -> 1.8 mm in-plane
    out = torch.zeros(2, DEPTH, HEIGHT, WIDTH)
    d, h, w = (min(a, b) for a, b in zip(volume.shape[1:], (DEPTH, HEIGHT, WIDTH), strict=True))
    sz, sy, sx = ((n - m) // 2 for n, m in zip(volume.shape[1:], (d, h, w), strict=True))
    oz, oy, ox = ((m - n) // 2 for n, m in zip((d, h, w), (DEPTH, HEIGHT, WIDTH), strict=True))
    out[:, oz:oz + d, oy:oy + h, ox:ox + w] = volume[:, sz:sz + d, sy:sy + h, sx:sx + w]
    return out.numpy()


class GlandNet(nn.Module):
    """Four 3D convolution blocks, global max + mean pooling, one logit."""

    def __init__(self) -> None:
        super().__init__()

        def block(cin: int, cout: int, kernel: tuple[int, int, int], pool: tuple[int, int, int]):
            pad = tuple(k // 2 for k in kernel)
            return [nn.Conv3d(cin, cout, kernel, padding=pad), nn.BatchNorm3d(cout), nn.ReLU(),
                    nn.MaxPool3d(pool)]

        self.features = nn.Sequential(*block(2, 8, (1, 3, 3), (1, 2, 2)),
                                      *block(8, 16, (1, 3, 3), (1, 2, 2)),
                                      *block(16, 32, (3, 3, 3), (2, 2, 2)),
                                      nn.Conv3d(32, 64, 3, padding=1), nn.BatchNorm3d(64),
                                      nn.ReLU())
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(128, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        pooled = torch.cat([f.amax(dim=(2, 3, 4)), f.mean(dim=(2, 3, 4))], dim=1)
        return self.head(pooled).squeeze(1)


def _augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random in-plane shifts (up to 8 px) and a brightness/contrast jitter of the image."""
    out = torch.empty_like(x)
    for i in range(len(x)):
        dy, dx = (int(v) for v in torch.randint(-8, 9, (2,), generator=generator))
        out[i] = torch.roll(x[i], shifts=(dy, dx), dims=(-2, -1))
    gain = 1 + 0.1 * (torch.rand(len(x), generator=generator) - 0.5)
    shift = 0.05 * (torch.rand(len(x), generator=generator) - 0.5)
    out[:, 0] = (out[:, 0] * gain[:, None, None, None] + shift[:, None, None, None]) * out[:, 1]
    return out


def _logits(model: nn.Module, x: np.ndarray) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        return np.concatenate([model(torch.from_numpy(x[k:k + 32])).numpy()
                               for k in range(0, len(x), 32)])


def _volumes(cases) -> np.ndarray:
    return np.stack([gland_volume(c) for c in cases])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_bundle_cohort_options(parser)
    parser.add_argument("--top1", required=True,
                        help="ct_secondary_signs.py's JSON (the bundle's top-1 scores)")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--json", help="write the scores as JSON")
    args = parser.parse_args()
    torch.manual_seed(0)
    bundle = load_bundle(args.bundle)
    config = bundle.config
    data = Path(args.data)

    parts = bundle_split_cases(bundle, data, args.train_patients, args.train_seed)
    started = time.perf_counter()
    x_train, x_val = _volumes(parts["train"]), _volumes(parts["validation"])
    y_train = torch.tensor([float(c.has_tumour) for c in parts["train"]])
    y_val = np.array([c.has_tumour for c in parts["validation"]])
    print(f"gland volumes {x_train.shape[1:]}: {len(x_train)} train, {len(x_val)} internal "
          f"validation ({time.perf_counter() - started:.0f} s)", flush=True)
    model = GlandNet()
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(0)
    best = (-1.0, 0, None)
    history = []
    x_t = torch.from_numpy(x_train)
    for epoch in range(1, args.epochs + 1):
        model.train()
        order = torch.randperm(len(x_t), generator=generator)
        for start in range(0, len(order), 16):
            index = order[start:start + 16]
            if len(index) < 2:
                continue
            optimiser.zero_grad(set_to_none=True)
            loss = F.binary_cross_entropy_with_logits(
                model(_augment(x_t[index], generator)), y_train[index])
            loss.backward()
            optimiser.step()
        auc = roc_auc_score(y_val, _logits(model, x_val))
        history.append(auc)
        if auc > best[0]:
            best = (auc, epoch, copy.deepcopy(model.state_dict()))
        print(f"epoch {epoch}: loss {float(loss.detach()):.3f}, internal validation AUC {auc:.3f} "
              f"({(time.perf_counter() - started) / 60:.1f} min)", flush=True)
    model.load_state_dict(best[2])
    print(f"kept epoch {best[1]} (internal validation AUC {best[0]:.3f})")
    top1 = json.loads(Path(args.top1).read_text())
    values, truths, smalls = {}, {}, {}
    for role, seed, n in (("choose", 202, 60), ("measure", 303, 200)):
        val_cases = validation_cases(data, seed, n, config)
        truth = np.array([c.has_tumour for c in val_cases])
        assert truth.tolist() == top1[role]["truth"], "cohort order differs from the JSON's"
        truths[role] = truth
        smalls[role] = small_tumours(val_cases)
        values[role] = {"run top-1": np.array(top1[role]["run top-1"]),
                        "gland": _logits(model, _volumes(val_cases))}
    fit = np.column_stack([clipped_logit(values["choose"]["run top-1"]), values["choose"]["gland"]])
    combo = make_pipeline(StandardScaler(), LogisticRegression()).fit(fit, truths["choose"])
    for role in values:
        features = np.column_stack([clipped_logit(values[role]["run top-1"]),
                                    values[role]["gland"]])
        values[role]["run top-1 + gland"] = combo.predict_proba(features)[:, 1]
    choose_auc = {k: roc_auc_score(truths["choose"], v) for k, v in values["choose"].items()}
    chosen = max(("gland", "run top-1 + gland"), key=lambda k: choose_auc[k])
    for role in ("choose", "measure"):
        truth, small = truths[role], smalls[role]
        keep = small | ~truth
        print(f"{role} cohort ({len(truth)} phantoms):")
        for name, v in values[role].items():
            auc = delong_auc_ci(truth, v)
            print(f"  {name:<18} AUC {auc.estimate:.3f} [{auc.low:.3f}, {auc.high:.3f}]  "
                  f"< 2 cm vs tumour-free {delong_auc_ci(truth[keep], v[keep]).estimate:.3f}")
        if role == "choose":
            print(f"chosen on seed 202: {chosen}")
    diff = delong_test(truths["measure"], values["measure"][chosen],
                       values["measure"]["run top-1"])
    print(f"  chosen vs run top-1 on seed 303: {diff['difference']:+.3f} (paired DeLong p = "
          f"{diff['p_value']:.2f})")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"args": vars(args), "internal_validation": history, "chosen": chosen,
             "difference": diff,
             **{role: {k: v.tolist() for k, v in vals.items()} for role, vals in values.items()}},
            indent=2, default=float))


if __name__ == "__main__":
    main()
