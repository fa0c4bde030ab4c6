"""One evaluated level (patches, patients, or one model's predictions) at a fixed threshold.

A level holds what a report shows: metrics with 95 % confidence intervals, the confusion counts,
ROC and precision-recall curves, the calibration table with its ECE, and subgroup tables.
The decision rule is the seed's: a score strictly greater than the threshold is positive.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_curve

from cadx.errors import ConfigError
from cadx.evaluate.stats import (
    Interval,
    binary_metrics_with_ci,
    calibration_curve_ece,
    validate_scores,
)

METRIC_NAMES = ("accuracy", "sensitivity", "specificity", "ppv", "npv", "kappa", "f1", "auc")
METRIC_LABELS = {"accuracy": "Accuracy (ACC)", "sensitivity": "Sensitivity (SN)",
                 "specificity": "Specificity (SP)", "ppv": "PPV", "npv": "NPV",
                 "kappa": "Cohen's kappa", "f1": "F1", "auc": "AUC"}
MISSING_GROUP = "(missing)"
# A column with more distinct values than this is an identifier or a number, not a subgroup:
# it is skipped with a note rather than turned into a table of one-row groups.
MAX_SUBGROUP_VALUES = 20
CALIBRATION_BINS = 10


@dataclass
class LevelResult:
    """Everything a report shows about one level, at one threshold."""

    name: str
    unit: str  # what the rows are, plural: "patients", "patches", "rows"
    threshold: float
    threshold_note: str  # where the threshold comes from
    threshold_optimistic: bool  # chosen on the evaluated data itself
    score_kind: str  # "probability", or "score" when it is not a calibrated probability
    metrics: dict[str, Interval]
    counts: dict[str, int]  # n, n_positive, n_negative, tp, fp, tn, fn (and n_patients)
    roc: dict[str, list[float]]  # fpr, tpr
    pr: dict[str, object]  # precision, recall, average_precision
    calibration: dict[str, object]  # ece, bins (see stats.calibration_curve_ece)
    subgroups: dict[str, list[dict[str, object]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    score_description: str = ""  # what the score is, in words, for a score_kind "score"

    def to_dict(self) -> dict[str, object]:
        """Plain dict, ready for JSON."""
        return {
            "name": self.name, "unit": self.unit, "threshold": self.threshold,
            "threshold_note": self.threshold_note,
            "threshold_optimistic": self.threshold_optimistic, "score_kind": self.score_kind,
            **self.counts,
            "metrics": {name: interval.to_dict() for name, interval in self.metrics.items()},
            "roc": self.roc, "pr": self.pr, "calibration": self.calibration,
            "subgroups": self.subgroups, "notes": self.notes,
            "score_description": self.score_description,
        }


def _group_labels(values: Sequence[object]) -> np.ndarray:
    """Per-row group names as strings; None and blank cells become MISSING_GROUP."""
    return np.array([MISSING_GROUP if v is None or str(v).strip() == "" else str(v).strip()
                     for v in values], dtype=object)


def _ordered_groups(labels: np.ndarray, order: Sequence[str]) -> list[str]:
    """Groups named in `order` first (in that order), then the rest sorted, missing last."""
    present = set(labels.tolist())
    first = [g for g in order if g in present]
    rest = sorted(present - set(first) - {MISSING_GROUP})
    return first + rest + ([MISSING_GROUP] if MISSING_GROUP in present - set(first) else [])


def _subgroup_rows(y: np.ndarray, predicted: np.ndarray, scores: np.ndarray,
                   labels: np.ndarray, groups: list[str], clusters: np.ndarray | None,
                   n_boot: int, seed: int) -> list[dict[str, object]]:
    """n, positives, detected, sensitivity, specificity and AUC (with CIs) for each group; the
    AUC is None in a group of one class."""
    rows = []
    for group in groups:
        member = labels == group
        y_g, pred_g = y[member], predicted[member]
        ci = binary_metrics_with_ci(y_g, pred_g, scores[member], clusters=None if clusters is None
                                    else clusters[member], n_boot=n_boot, seed=seed)
        positives, negatives = int(y_g.sum()), int((1 - y_g).sum())
        rows.append({
            "group": group, "n": int(member.sum()), "positives": positives,
            "detected": int((y_g & pred_g).sum()), "sensitivity": ci["sensitivity"].to_dict(),
            "negatives": negatives, "true_negatives": int(((1 - y_g) & (1 - pred_g)).sum()),
            "specificity": ci["specificity"].to_dict(), "auc": ci["auc"].to_dict(),
        })
    return rows


def evaluate_level(name: str, y_true, scores, threshold: float, *, unit: str = "patients",
                   clusters=None, subgroups: Mapping[str, Sequence[object]] | None = None,
                   subgroup_order: Mapping[str, Sequence[str]] | None = None,
                   score_kind: str = "probability", threshold_note: str = "",
                   threshold_optimistic: bool = False, source: str = "",
                   n_boot: int = 1000, seed: int = 0,
                   score_description: str = "") -> LevelResult:
    """Evaluate 0/1 labels `y_true` and scores in [0, 1] at `threshold` (score > threshold).

    `clusters` (e.g. the patient id of each patch) switches every metric's interval to a
    patient-level cluster bootstrap; without it proportions get Wilson intervals and the AUC
    DeLong's. `subgroups` maps a column name to a group name per row (None/blank = missing);
    each column gets a table of sensitivity, specificity and AUC per group, its groups listed in
    `subgroup_order[column]` first. Bad labels or scores raise InputError naming `source`.
    """
    if not math.isfinite(threshold):
        raise ConfigError(f"{name}: threshold must be a finite number, got {threshold}")
    y, s = validate_scores(y_true, scores, source=source)
    cluster_ids = None if clusters is None else np.asarray(clusters).astype(str)
    predicted = (s > threshold).astype(int)
    metrics = binary_metrics_with_ci(y, predicted, s, clusters=cluster_ids, n_boot=n_boot,
                                     seed=seed)
    tp = int((y & predicted).sum())
    fp = int(((1 - y) & predicted).sum())
    fn = int((y & (1 - predicted)).sum())
    counts = {"n": int(y.size), "n_positive": int(y.sum()), "n_negative": int(y.size - y.sum()),
              "tp": tp, "fp": fp, "tn": int(y.size) - tp - fp - fn, "fn": fn}
    if cluster_ids is not None:
        counts["n_patients"] = int(np.unique(cluster_ids).size)

    fpr, tpr, _ = roc_curve(y, s)
    precision, recall, _ = precision_recall_curve(y, s)
    result = LevelResult(
        name=name, unit=unit, threshold=float(threshold), threshold_note=threshold_note,
        threshold_optimistic=threshold_optimistic, score_kind=score_kind,
        metrics={metric: metrics[metric] for metric in METRIC_NAMES}, counts=counts,
        roc={"fpr": fpr.tolist(), "tpr": tpr.tolist()},
        pr={"precision": precision.tolist(), "recall": recall.tolist(),
            "average_precision": float(average_precision_score(y, s))},
        calibration=calibration_curve_ece(y, s, n_bins=CALIBRATION_BINS),
        score_description=score_description,
    )
    for column, values in (subgroups or {}).items():
        labels = _group_labels(values)
        if labels.size != y.size:
            raise ConfigError(f"{name}: subgroup column '{column}' has {labels.size} values "
                              f"for {y.size} rows")
        groups = _ordered_groups(labels, (subgroup_order or {}).get(column, ()))
        if len(groups) > MAX_SUBGROUP_VALUES:
            result.notes.append(f"column '{column}' not tabulated: {len(groups)} distinct values "
                                f"(more than {MAX_SUBGROUP_VALUES}); bin it first")
            continue
        result.subgroups[column] = _subgroup_rows(y, predicted, s, labels, groups, cluster_ids,
                                                  n_boot, seed)
    return result
