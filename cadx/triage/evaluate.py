"""How well triage did against known answers: routing accuracy (with the unrouted and wrongly
routed images and a confusion table) and QC removal (injected images removed, good images
lost, each flag's sensitivity and specificity)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import roc_auc_score

from cadx.evaluate.stats import wilson_interval
from cadx.triage.router import UNROUTED, Routing


def _rate(successes: int, total: int) -> dict[str, object]:
    interval = wilson_interval(successes, total)
    return {"count": successes, "of": total, "rate": interval.estimate,
            "ci95": [interval.low, interval.high]}


def routing_metrics(true_categories: Sequence[str], routed: Sequence[Routing],
                    categories: Sequence[str]) -> dict[str, object]:
    """Accuracy of the most probable category (floor ignored), then at the confidence floor:
    images routed correctly, routed to a wrong category, and left unrouted; the confusion
    table true -> decided (Wilson 95 % intervals)."""
    argmax = [max(r.scores, key=r.scores.__getitem__) for r in routed]
    n = len(routed)
    correct_top = sum(a == t for a, t in zip(argmax, true_categories, strict=True))
    right = sum(r.category == t for r, t in zip(routed, true_categories, strict=True))
    unrouted = sum(not r.routed for r in routed)
    confusion = {t: {c: 0 for c in (*categories, UNROUTED)} for t in categories}
    for r, t in zip(routed, true_categories, strict=True):
        confusion.setdefault(t, {c: 0 for c in (*categories, UNROUTED)})[r.category] += 1
    return {"images": n, "top1_accuracy": _rate(correct_top, n),
            "routed_correctly": _rate(right, n), "routed_wrongly": _rate(n - right - unrouted, n),
            "unrouted": _rate(unrouted, n),
            "accuracy_of_routed": _rate(right, n - unrouted), "confusion": confusion}


def flag_metrics(truth: np.ndarray, probabilities: np.ndarray, thresholds: Sequence[float],
                 flags: Sequence[str]) -> dict[str, dict[str, object]]:
    """Per flag: AUC (None if one class only), sensitivity and specificity at the threshold."""
    out = {}
    for k, flag in enumerate(flags):
        y, p = truth[:, k].astype(bool), probabilities[:, k]
        raised = p > thresholds[k]
        out[flag] = {
            "positives": int(y.sum()), "negatives": int((~y).sum()),
            "auc": float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else None,
            "sensitivity": _rate(int((raised & y).sum()), int(y.sum())),
            "specificity": _rate(int((~raised & ~y).sum()), int((~y).sum())),
        }
    return out


def removal_metrics(should_drop: Sequence[bool], dropped: Sequence[bool]) -> dict[str, object]:
    """Images that the drop rules applied to the true flags would remove, against those QC
    removed: removed of those to remove, and good images lost."""
    should, did = np.asarray(should_drop, bool), np.asarray(dropped, bool)
    return {"images": len(should), "to_remove": int(should.sum()),
            "removed_of_to_remove": _rate(int((should & did).sum()), int(should.sum())),
            "good_images_removed": _rate(int((~should & did).sum()), int((~should).sum()))}
