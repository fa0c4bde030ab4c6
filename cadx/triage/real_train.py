"""`cadx triage-train`: the router and the QC model from real images (issue 19).

Recipe (frozen ImageNet features + linear heads, the cheapest transfer learning on a CPU):

1. Real frames of each category (:mod:`cadx.triage.real_sources`), split by patient into
   train / validation / test and capped per category; CT adds synthetic phantom slices;
   "other" is synthetic (text screens, blank screens, 3D renderings) since no real source exists.
2. QC images: every good frame, plus one defective copy of each organ frame (a realistic defect
   of :mod:`cadx.triage.defects`, or for ultrasound a colour-Doppler overlay), plus the real
   colour-Doppler frames of MMOTU.
3. The pooled 1280-d features of the ImageNet-pretrained EfficientNet-Lite0 at 160 px, once per
   image, cached (``DIR/cache/``) so that a second build only refits the heads.
4. Router: multinomial logistic regression (C chosen on validation log loss); confidence floor:
   the lowest of 0.50, 0.55, ..., 0.95 whose validation wrong-category rate is at most 1 %.
   QC: one logistic regression per flag (target, doppler, unreadable); each threshold allows at
   most 1 % of the validation good frames to be dropped by that flag.
5. The heads are written into the network's ``fc`` layer: each bundle is an ordinary triage
   network bundle (``cadx run`` needs nothing else), checked against the feature path.
6. Held-out test frames: routing per category, wrong-category rate, QC false drops per category
   and catches per defect, project-made non-medical images (:data:`OOD_KINDS`), with Wilson 95 %
   intervals; written to ``DIR/triage-report.json`` and stored in both bundles.
"""

from __future__ import annotations

import csv
import hashlib
import io
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from rich.progress import track
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss, roc_auc_score, roc_curve

from cadx.decide.roc import OperatingPoint
from cadx.errors import ConfigError, InputError, SplitError
from cadx.io.atomic import atomic_path, write_json_atomic, write_text_atomic
from cadx.io.images import fit_image
from cadx.models.backbones import build_backbone
from cadx.synth.categories import CATEGORIES, OTHER_LOOKS, make_category_image
from cadx.triage.bundle import TriageBundle, save_triage_bundle
from cadx.triage.defects import DEFECTS, DEFECTS_VERSION, OOD_KINDS, apply_defect, make_ood_image
from cadx.triage.evaluate import _rate
from cadx.triage.pipeline_file import init_pipeline
from cadx.triage.real_sources import (
    BMODE_FRACTION,
    CT_WINDOW_HU,
    DOPPLER_FRACTION,
    MIN_IMAGES,
    SPLITS,
    Frame,
    RealSources,
    cap_per_split,
    check_counts,
    check_cross_category_duplicates,
    doppler_pixel_fraction,
    find_real_sources,
    split_by_patient,
)

QC_FLAGS = ("target", "doppler", "unreadable")
DROP_IF = ("not target", "unreadable", "doppler")
ARCH = "efficientnet_lite0"
_C_GRID = (0.01, 0.03, 0.1, 0.3, 1.0)
_ROUTER_KINDS = ("good", "doppler-real", "unclear-colour", "other")
_FLOORS = tuple(round(0.5 + 0.05 * k, 2) for k in range(10))


@dataclass(frozen=True)
class TriageBuildSpec:
    """How much data and which operating constraints a real triage build uses."""

    size_px: int = 160
    work_px: int = 256  # defects are drawn at this size, then resized like a file
    max_per_category: int = 240
    extra_doppler_frames: int = 80
    phantom_ct_slices: int = 80
    other_per_look: int = 30
    ood_per_kind: int = 8
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
    max_validation_false_drop: float = 0.01
    max_validation_wrong_route: float = 0.01
    min_images: int = MIN_IMAGES
    seed: int = 0

    def __post_init__(self) -> None:
        if self.size_px < 32 or self.work_px < self.size_px:
            raise ConfigError(f"size_px must be >= 32 and <= work_px, got {self.size_px} "
                              f"and {self.work_px}")
        if self.max_per_category < self.min_images:
            raise ConfigError(f"max_per_category ({self.max_per_category}) is below the "
                              f"minimum of {self.min_images} images per category")
        if abs(sum(self.fractions) - 1.0) > 1e-6 or min(self.fractions) <= 0:
            raise ConfigError(f"split fractions must be positive and sum to 1, got "
                              f"{self.fractions}")


@dataclass(frozen=True)
class Item:
    """One image a model sees: a frame, as is or with a defect; `kind` says which
    ("good", a defect name, "doppler-real", "doppler-overlay", "other", "ood-<kind>")."""

    key: str
    frame: Frame
    kind: str
    defect: str | None = None

    @property
    def split(self) -> str:
        return self.frame.split or "test"

    @property
    def category(self) -> str:
        return self.frame.category


@dataclass
class TriageBuildResult:
    """What a build wrote and measured."""

    out_dir: Path
    router_file: Path
    qc_file: Path
    pipeline_file: Path
    report: dict[str, object] = field(default_factory=dict)


def _seed_of(text: str, seed: int) -> int:
    return int(hashlib.sha1(f"{seed}:{text}".encode()).hexdigest()[:12], 16)


def _synthetic_frames(category: str, looks: Sequence[str], count: int, size_px: int,
                      seed: int) -> list[Frame]:
    frames = []
    for i in range(count):
        look = looks[i % len(looks)]
        key = f"synthetic/{look}/{seed}/{i:04d}"

        def load(look=look, key=key) -> np.ndarray:
            rng = np.random.default_rng(_seed_of(key, seed))
            return make_category_image(rng, look, size_px).pixels / 255.0

        frames.append(Frame(key, category, f"synthetic {look}", f"{look}-{seed}-{i:04d}", load))
    return frames


def _ood_frames(spec: TriageBuildSpec) -> list[Frame]:
    frames = []
    for kind in OOD_KINDS:
        for i in range(spec.ood_per_kind):
            key = f"ood/{kind}/{spec.seed}/{i:02d}"
            rng_seed = _seed_of(key, spec.seed)
            frames.append(Frame(key, "ood", kind, key,
                                lambda s=rng_seed, k=kind: make_ood_image(
                                    np.random.default_rng(s), k, spec.work_px) / 255.0,
                                split="test"))
    return frames


def _label_doppler(frames: list[Frame], progress: bool) -> list[Frame]:
    """MMOTU frames: colour Doppler (True), plain B-mode (False) or unclear (None)."""
    out = []
    for frame in track(frames, description="finding colour-Doppler frames",
                       disable=not progress):
        if frame.doppler is None and frame.path is not None:
            share = doppler_pixel_fraction(frame.path)
            frame = replace(frame, doppler=True if share >= DOPPLER_FRACTION else
                            False if share < BMODE_FRACTION else None)
        out.append(frame)
    return out


def _more_doppler(frames: Sequence[Frame], wanted: int, seed: int) -> list[Frame]:
    """Up to `wanted` colour-Doppler frames among `frames`, looked at in random order."""
    found: list[Frame] = []
    for index in np.random.default_rng(seed).permutation(len(frames)):
        if len(found) >= wanted:
            break
        frame = _label_doppler([frames[index]], False)[0]
        if frame.doppler:
            found.append(frame)
    return found


def select_frames(sources: RealSources, spec: TriageBuildSpec, progress: bool = True
                  ) -> dict[str, list[Frame]]:
    """The router's frames per category (real, capped, split by patient; phantom CT; synthetic
    other). Real colour-Doppler frames beyond the cap are added for QC (kind "doppler-real")."""
    chosen: dict[str, list[Frame]] = {}
    for k, (category, frames) in enumerate(sources.frames.items()):
        frames = split_by_patient(frames, spec.fractions, spec.seed + k)
        if any(f.doppler is None for f in frames):
            capped = cap_per_split(frames, spec.max_per_category, spec.seed)
            picked = {f.key for f in capped}
            rest = [f for f in frames if f.key not in picked]
            frames = _label_doppler(capped, progress) + _more_doppler(
                rest, spec.extra_doppler_frames, spec.seed)
        else:
            frames = cap_per_split(frames, spec.max_per_category, spec.seed)
        chosen[category] = frames
    if "ct-abdomen" in chosen:
        chosen["ct-abdomen"] += split_by_patient(
            _synthetic_frames("ct-abdomen", ("ct-abdomen",), spec.phantom_ct_slices,
                              spec.size_px, spec.seed), spec.fractions, spec.seed)
    chosen["other"] = split_by_patient(
        _synthetic_frames("other", OTHER_LOOKS, spec.other_per_look * len(OTHER_LOOKS),
                          spec.size_px, spec.seed), spec.fractions, spec.seed)
    return chosen


def build_items(chosen: dict[str, list[Frame]], spec: TriageBuildSpec) -> list[Item]:
    """Every image of the build: good frames, one defective copy per organ B-mode frame
    (defects cycled so that each type is equally common; ultrasound also gets Doppler
    overlays), and the non-medical images."""
    items: list[Item] = []
    # A defect's key carries the defects' version, so a changed defect is not read from cache.
    good_tag, defect_tag = f"{spec.size_px}px", f"v{DEFECTS_VERSION}-{spec.size_px}-{spec.work_px}"
    cycle: Counter = Counter()  # per split, across categories: each split sees every defect
    for category, frames in chosen.items():
        kinds = (*DEFECTS, "doppler") if category.startswith("us-") else DEFECTS
        for frame in frames:
            good_kind = ("other" if category == "other" else
                         "unclear-colour" if frame.doppler is None else
                         "doppler-real" if frame.doppler else "good")
            items.append(Item(f"{frame.key}|good|{good_tag}", frame, good_kind))
            if category != "other" and frame.doppler is False:
                defect = kinds[cycle[frame.split] % len(kinds)]
                cycle[frame.split] += 1
                items.append(Item(f"{frame.key}|{defect}|{defect_tag}", frame,
                                  "doppler-overlay" if defect == "doppler" else defect, defect))
    items += [Item(f"{frame.key}|good|{good_tag}", frame, f"ood-{frame.source}")
              for frame in _ood_frames(spec)]
    return items


def render_item(item: Item, spec: TriageBuildSpec) -> np.ndarray:
    """The item as the model sees it: (3, size_px, size_px) float32."""
    pixels = item.frame.load()
    if item.defect is None:
        return fit_image(pixels, spec.size_px, 3)
    work = fit_image(pixels, spec.work_px, 3).transpose(1, 2, 0)
    rng = np.random.default_rng(_seed_of(item.key, spec.seed))
    return fit_image(apply_defect(rng, work, item.defect).astype(np.float32), spec.size_px, 3)


# --------------------------------------------------------------------------------------------
# Features
# --------------------------------------------------------------------------------------------


class FeatureCache:
    """Pooled features and 16 x 16 thumbnails by item key, in one .npz written atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.features: dict[str, np.ndarray] = {}
        self.thumbs: dict[str, np.ndarray] = {}
        if path.is_file():
            with np.load(path, allow_pickle=False) as data:
                for key, feature, thumb in zip(data["keys"].tolist(), data["features"],
                                               data["thumbs"], strict=True):
                    self.features[key], self.thumbs[key] = feature, thumb

    def save(self) -> None:
        keys = sorted(self.features)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.path) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, keys=np.array(keys),
                     features=np.stack([self.features[k] for k in keys]),
                     thumbs=np.stack([self.thumbs[k] for k in keys]))


def pretrained_network(n_outputs: int) -> torch.nn.Module:
    return build_backbone(ARCH, 3, n_outputs, pretrained=True).eval()


def extract_features(items: Sequence[Item], spec: TriageBuildSpec, cache: FeatureCache,
                     progress: bool = True, batch_size: int = 32) -> None:
    """Fill `cache` with every item's pooled feature and thumbnail (saved every few batches,
    so an interrupted build resumes)."""
    from cadx.io.near_duplicates import thumbnails

    todo = [item for item in items if item.key not in cache.features]
    if not todo:
        return
    model = pretrained_network(1)
    pooled: list[torch.Tensor] = []
    hook = model.avgpool.register_forward_hook(lambda module, inputs, output:
                                               pooled.append(output.detach()))
    batches = [todo[i:i + batch_size] for i in range(0, len(todo), batch_size)]
    try:
        for n, batch in enumerate(track(batches, description=f"features of {len(todo)} images",
                                        disable=not progress)):
            images = np.stack([render_item(item, spec) for item in batch])
            with torch.no_grad():
                model(torch.from_numpy(images))
            features = pooled.pop().numpy().astype(np.float32)
            for item, feature, thumb in zip(batch, features, thumbnails(images), strict=True):
                cache.features[item.key], cache.thumbs[item.key] = feature, thumb
            if n % 8 == 7:
                cache.save()
    finally:
        hook.remove()
        cache.save()


# --------------------------------------------------------------------------------------------
# Heads
# --------------------------------------------------------------------------------------------


@dataclass
class LinearHead:
    """A linear layer on the pooled features: logits = features @ weight.T + bias."""

    weight: np.ndarray
    bias: np.ndarray
    c: float

    def logits(self, features: np.ndarray) -> np.ndarray:
        return features @ self.weight.T + self.bias


def _fit_logistic(x: np.ndarray, y: np.ndarray, c: float, seed: int) -> LinearHead:
    """Logistic regression on standardised features, folded back into one linear layer."""
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-6
    model = LogisticRegression(C=c, max_iter=3000, class_weight="balanced", random_state=seed)
    model.fit((x - mean) / std, y)
    weight = model.coef_ / std[None, :]
    bias = model.intercept_ - weight @ mean
    return LinearHead(weight.astype(np.float32), bias.astype(np.float32), c)


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-logits))


def fit_router_head(x: dict[str, np.ndarray], y: dict[str, np.ndarray], n_classes: int,
                    seed: int) -> LinearHead:
    """The multinomial head with the C of lowest validation log loss."""
    best = None
    for c in _C_GRID:
        head = _fit_logistic(x["train"], y["train"], c, seed)
        loss = log_loss(y["validation"], _softmax(head.logits(x["validation"])),
                        labels=np.arange(n_classes))
        if best is None or loss < best[0]:
            best = (loss, head)
    return best[1]


def fit_flag_head(x: dict[str, np.ndarray], y: dict[str, np.ndarray], seed: int) -> LinearHead:
    """A binary head (one logit) with the C of highest validation AUC."""
    best = None
    for c in _C_GRID:
        head = _fit_logistic(x["train"], y["train"], c, seed)
        auc = roc_auc_score(y["validation"], head.logits(x["validation"])[:, 0])
        if best is None or auc > best[0] + 1e-9:
            best = (auc, head)
    return best[1]


def choose_floor(probabilities: np.ndarray, labels: np.ndarray, max_wrong: float) -> float:
    """The lowest floor in 0.50..0.95 at which at most `max_wrong` of the validation frames
    are routed to a wrong category (0.95 if none is that low)."""
    best = probabilities.argmax(axis=1)
    top = probabilities.max(axis=1)
    for floor in _FLOORS:
        wrong = np.mean((top > floor) & (best != labels))
        if wrong <= max_wrong:
            return floor
    return _FLOORS[-1]


def _operating_point(y: np.ndarray, scores: np.ndarray, threshold: float) -> OperatingPoint:
    fpr, tpr, _ = roc_curve(y, scores, drop_intermediate=True)
    raised = scores > threshold
    sensitivity = float(raised[y == 1].mean())
    specificity = float((~raised[y == 0]).mean())
    return OperatingPoint(float(threshold), sensitivity, specificity,
                          sensitivity + specificity - 1.0, float(roc_auc_score(y, scores)),
                          tuple(float(v) for v in fpr), tuple(float(v) for v in tpr))


def false_drop_threshold(good_scores: np.ndarray, max_false: float, negated: bool) -> float:
    """A threshold that drops at most `max_false` of the good frames: for a flag that drops
    when raised (p > t), at most that share of good frames above t; for "not FLAG" (drops
    when p <= t), at most that share at or below t."""
    scores = np.sort(np.asarray(good_scores, dtype=np.float64))
    if not len(scores):
        raise SplitError("no good validation frames to set a QC threshold on")
    allowed = int(np.floor(max_false * len(scores)))
    if negated:  # drop p <= t: t just below the (allowed)-th smallest score
        return float(np.nextafter(scores[min(allowed, len(scores) - 1)], -np.inf))
    return float(scores[::-1][min(allowed, len(scores) - 1)])  # drop p > t


def _network_with_head(head: LinearHead) -> torch.nn.Module:
    model = pretrained_network(head.weight.shape[0])
    with torch.no_grad():
        model.fc.weight.copy_(torch.from_numpy(head.weight))
        model.fc.bias.copy_(torch.from_numpy(head.bias))
    return model


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------------------------
# The build
# --------------------------------------------------------------------------------------------


def _arrays(items: Sequence[Item], cache: FeatureCache) -> np.ndarray:
    return np.stack([cache.features[item.key] for item in items]).astype(np.float64)


def _check_near_duplicates(items: Sequence[Item], cache: FeatureCache) -> None:
    """InputError with examples when real frames of different categories have near-identical
    thumbnails (correlation >= 0.97: the same image re-encoded or resized), a mislabelled
    folder."""
    real = [i for i in items if i.kind in _ROUTER_KINDS and i.frame.path is not None]
    if len(real) < 2:
        return
    vectors = np.stack([cache.thumbs[i.key] for i in real])  # zero-mean, unit-norm
    pairs = []
    for start in range(0, len(real), 1024):
        block = vectors[start:start + 1024] @ vectors.T
        rows, cols = np.nonzero(block >= 0.97)
        for r, c in zip((rows + start).tolist(), cols.tolist(), strict=True):
            if r < c and real[r].category != real[c].category:
                pairs.append((real[r], real[c]))
    if pairs:
        examples = "; ".join(f"{a.frame.path} ({a.category}) ~ {b.frame.path} ({b.category})"
                             for a, b in pairs[:3])
        raise InputError(f"{len(pairs)} near-identical image pair(s) in different categories, "
                         f"e.g. {examples}; remove them from all but one category")


def build_triage(data_root: str | Path, out_dir: str | Path,
                 spec: TriageBuildSpec | None = None, *, progress: bool = True,
                 cache_path: str | Path | None = None) -> TriageBuildResult:
    """Build the router, the QC model and ``pipeline.yaml`` in `out_dir` from the real images
    under `data_root`; InputError for a data folder with no category, a category with too
    few images, or images shared between categories."""
    spec = spec or TriageBuildSpec()
    started = time.perf_counter()
    out = Path(out_dir)
    sources = find_real_sources(data_root)
    check_counts(sources, spec.min_images)
    check_cross_category_duplicates(sources)
    chosen = select_frames(sources, spec, progress)
    categories = tuple(c for c in CATEGORIES if c in chosen)
    items = build_items(chosen, spec)
    out.mkdir(parents=True, exist_ok=True)
    cache = FeatureCache(Path(cache_path) if cache_path else
                         out / "cache" / f"features-{ARCH}-{spec.size_px}px.npz")
    extract_features(items, spec, cache, progress)
    _check_near_duplicates(items, cache)
    features_done = time.perf_counter()

    # Router: good frames (real B-mode and Doppler, phantom CT, synthetic other).
    index = {c: k for k, c in enumerate(categories)}
    router_items = {s: [i for i in items if i.kind in _ROUTER_KINDS and i.split == s]
                    for s in SPLITS}
    for split in ("train", "validation"):
        missing = [c for c in categories if not any(i.category == c for i in router_items[split])]
        if missing:
            raise SplitError(f"the {split} split has no frame of {', '.join(missing)}; add "
                             "patients of those categories")
    rx = {s: _arrays(v, cache) for s, v in router_items.items()}
    ry = {s: np.array([index[i.category] for i in v]) for s, v in router_items.items()}
    router_head = fit_router_head(rx, ry, len(categories), spec.seed)
    floor = choose_floor(_softmax(router_head.logits(rx["validation"])), ry["validation"],
                         spec.max_validation_wrong_route)

    # QC: good frames, defective copies, real Doppler; MMOTU frames of unclear colour left out.
    qc_items = {s: [i for i in items if i.split == s and not i.kind.startswith("ood")
                    and i.frame.doppler is not None] for s in SPLITS}
    qx = {s: _arrays(v, cache) for s, v in qc_items.items()}
    qy = {s: np.array([_flags(i) for i in v]) for s, v in qc_items.items()}
    good = {s: np.array([i.kind == "good" for i in v]) for s, v in qc_items.items()}
    flag_heads, points = [], {}
    for k, flag in enumerate(QC_FLAGS):
        head = fit_flag_head(qx, {s: y[:, k] for s, y in qy.items()}, spec.seed)
        scores = _sigmoid(head.logits(qx["validation"])[:, 0])
        threshold = false_drop_threshold(scores[good["validation"]],
                                         spec.max_validation_false_drop, flag == "target")
        points[flag] = _operating_point(qy["validation"][:, k], scores, threshold)
        flag_heads.append(head)
    qc_head = LinearHead(np.concatenate([h.weight for h in flag_heads]),
                         np.concatenate([h.bias for h in flag_heads]), 0.0)

    report = _evaluate(items, cache, categories, router_head, floor, qc_head, points)
    report.update({
        "data_root": str(data_root), "spec": asdict(spec), "categories": list(categories),
        "absent_categories": sources.absent, "backbone": f"{ARCH} (ImageNet, frozen) at "
        f"{spec.size_px} px; logistic-regression heads written into fc",
        "router_c": router_head.c, "qc_c": {f: h.c for f, h in zip(QC_FLAGS, flag_heads,
                                                                    strict=True)},
        "confidence_floor": floor, "drop_if": list(DROP_IF),
        "qc_thresholds": {f: p.threshold for f, p in points.items()},
        "ct_window_hu": {"level": CT_WINDOW_HU[0], "width": CT_WINDOW_HU[1]},
        "counts": _counts(items),
        "notes": ["MMOTU publishes no patient ids: each image is its own case.",
                  "Real CT is one patient (TotalSegmentator example): its held-out slices are "
                  "other slabs of a seen patient, not an unseen patient.",
                  "'other' is synthetic (text screens, blank screens, 3D renderings); the "
                  "out-of-distribution images are drawn by generators it never trains on."],
    })

    router_model, qc_model = _network_with_head(router_head), _network_with_head(qc_head)
    router = TriageBundle("router", categories, ARCH, 1.0, spec.size_px, 3, _state(router_model),
                          confidence_floor=floor, name="cadx-router-real",
                          summary={"recipe": "cadx triage-train", "test": report["routing"],
                                   "counts": report["counts"]})
    qc = TriageBundle("qc", QC_FLAGS, ARCH, 1.0, spec.size_px, 3, _state(qc_model),
                      flag_points=points, name="cadx-qc-real",
                      summary={"recipe": "cadx triage-train", "test": report["qc"],
                               "drop_if": list(DROP_IF)})
    _self_check(items, spec, cache, router, router_head, qc, qc_head)
    router_file = save_triage_bundle(router, out / "router.cadx")
    qc_file = save_triage_bundle(qc, out / "qc.cadx")
    pipeline_file = init_pipeline(out / "pipeline.yaml", router_file, qc_file=qc_file,
                                  drop_if=list(DROP_IF))
    _write_ood_examples(items, spec, out / "ood-examples")
    _write_test_truth(items, out / "test-truth.csv")
    report["wall_time_s"] = {"features": round(features_done - started, 1),
                             "total": round(time.perf_counter() - started, 1)}
    write_json_atomic(out / "triage-report.json", report)
    return TriageBuildResult(out, router_file, qc_file, pipeline_file, report)


def _flags(item: Item) -> tuple[int, int, int]:
    target = int(item.category != "other")
    doppler = int(item.kind in ("doppler-real", "doppler-overlay"))
    unreadable = int(item.kind in DEFECTS or item.frame.source == "synthetic blank-screen")
    return target, doppler, unreadable


def _counts(items: Sequence[Item]) -> dict[str, dict[str, int]]:
    counts: dict[str, Counter] = {}
    for item in items:
        group = item.category if not item.kind.startswith("ood") else "ood"
        counts.setdefault(f"{group}/{item.kind}", Counter())[item.split] += 1
    return {key: dict(value) for key, value in sorted(counts.items())}


def _evaluate(items: Sequence[Item], cache: FeatureCache, categories: tuple[str, ...],
              router_head: LinearHead, floor: float, qc_head: LinearHead,
              points: dict[str, OperatingPoint]) -> dict[str, object]:
    """Held-out test figures from the heads (the bundles compute the same numbers)."""
    test = [i for i in items if i.split == "test"]
    x = _arrays(test, cache)
    route_p = _softmax(router_head.logits(x))
    qc_p = _sigmoid(qc_head.logits(x))
    thresholds = np.array([points[f].threshold for f in QC_FLAGS])
    raised = qc_p > thresholds[None, :]
    dropped = ~raised[:, 0] | raised[:, 1] | raised[:, 2]
    best = route_p.argmax(axis=1)
    decided = np.where(route_p.max(axis=1) > floor, best, -1)
    names = np.array([*categories, "unrouted"])
    kinds = np.array([i.kind for i in test])
    cats = np.array([i.category for i in test])
    real = np.array([i.frame.path is not None for i in test])

    routing: dict[str, object] = {"confidence_floor": floor, "per_category": {}}
    router_set = np.isin(kinds, _ROUTER_KINDS)
    for c in categories:
        for label, mask in ((c, router_set & (cats == c) & (real | (c == "other"))),
                            (f"{c} (phantom)", router_set & (cats == c) & ~real
                             & (c == "ct-abdomen"))):
            n = int(mask.sum())
            if not n:
                continue
            right = int((names[decided[mask]] == c).sum())
            unrouted = int((decided[mask] == -1).sum())
            routing["per_category"][label] = {
                "images": n, "routed_correctly": _rate(right, n),
                "routed_wrongly": _rate(n - right - unrouted, n),
                "unrouted": _rate(unrouted, n),
                "top1": _rate(int((names[best[mask]] == c).sum()), n)}
    real_frames = router_set & real
    wrong = int(((decided != -1) & (names[decided] != cats))[real_frames].sum())
    routing["real_frames_wrong_category"] = _rate(wrong, int(real_frames.sum()))

    qc: dict[str, object] = {"thresholds": {f: p.threshold for f, p in points.items()},
                             "good_frames_dropped": {}, "caught": {}}
    for c in categories:
        if c == "other":
            continue
        mask = (kinds == "good") & (cats == c)
        for label, sub in ((c, mask & real), (f"{c} (phantom)", mask & ~real)):
            if sub.any():
                qc["good_frames_dropped"][label] = _rate(int(dropped[sub].sum()),
                                                         int(sub.sum()))
    all_good = (kinds == "good") & real
    qc["good_frames_dropped"]["all real"] = _rate(int(dropped[all_good].sum()),
                                                  int(all_good.sum()))
    for kind in (*DEFECTS, "doppler-overlay", "doppler-real", "other"):
        mask = kinds == kind
        if mask.any():
            qc["caught"][kind] = _rate(int(dropped[mask].sum()), int(mask.sum()))

    end_to_end = all_good & ~dropped & (names[decided] == cats)
    ood: dict[str, object] = {}
    for kind in OOD_KINDS:
        mask = kinds == f"ood-{kind}"
        organ = np.isin(names[decided], [c for c in categories if c != "other"])
        ood[kind] = {"images": int(mask.sum()),
                     "router_sent_to_organ_category": int((organ & mask).sum()),
                     "qc_dropped": int((dropped & mask).sum()),
                     "reached_organ_analyser": int((organ & ~dropped & mask).sum()),
                     "router_decisions": dict(Counter(names[decided[mask]].tolist()))}
    ood_all = np.char.startswith(kinds.astype(str), "ood-")
    organ_all = np.isin(names[decided], [c for c in categories if c != "other"])
    return {"routing": routing, "qc": qc,
            "end_to_end_real_good_frames_reaching_right_category":
                _rate(int(end_to_end.sum()), int(all_good.sum())),
            "ood": {"per_kind": ood,
                    "reached_organ_analyser": _rate(int((organ_all & ~dropped & ood_all).sum()),
                                                    int(ood_all.sum())),
                    "router_sent_to_organ_category": _rate(int((organ_all & ood_all).sum()),
                                                           int(ood_all.sum()))}}


def _self_check(items: Sequence[Item], spec: TriageBuildSpec, cache: FeatureCache,
                router: TriageBundle, router_head: LinearHead, qc: TriageBundle,
                qc_head: LinearHead) -> None:
    """The saved networks must give the heads' probabilities on real pixels."""
    sample = [i for i in items if i.split == "test"][:6]
    images = np.stack([render_item(i, spec) for i in sample])
    x = _arrays(sample, cache)
    for bundle, expected in ((router, _softmax(router_head.logits(x))),
                             (qc, _sigmoid(qc_head.logits(x)))):
        got = bundle.predict(images)
        if np.abs(got - expected).max() > 1e-3:
            raise RuntimeError(f"{bundle.kind} bundle disagrees with its feature head "
                               f"(max difference {np.abs(got - expected).max():.4f})")


def _write_test_truth(items: Sequence[Item], path: Path) -> None:
    """The held-out real frames that are files (all but CT slices), with their category and
    flags, as a truth CSV for `cadx run --truth` (absolute paths)."""
    rows = [(str(i.frame.path.resolve()), i.category, *_flags(i)) for i in items
            if i.split == "test" and i.defect is None and i.frame.path is not None
            and i.kind in ("good", "doppler-real") and i.frame.path.suffix != ".gz"
            and i.frame.path.suffix != ".nii"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(("path", "category", *QC_FLAGS))
    writer.writerows(rows)
    write_text_atomic(path, buffer.getvalue())


def _write_ood_examples(items: Sequence[Item], spec: TriageBuildSpec, folder: Path) -> None:
    """The non-medical test images as PNG files, to try `cadx run` on."""
    folder.mkdir(parents=True, exist_ok=True)
    for item in items:
        if item.kind.startswith("ood-"):
            pixels = np.round(item.frame.load() * 255).astype(np.uint8)
            name = item.frame.key.replace("ood/", "").replace("/", "_") + ".png"
            with atomic_path(folder / name) as tmp:
                Image.fromarray(pixels).save(tmp, format="PNG")
