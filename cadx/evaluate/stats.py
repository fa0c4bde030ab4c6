"""Confidence intervals and tests for evaluation reports.

Methods and references:

* Wilson score interval for a proportion (Wilson 1927, JASA 22:209; recommended by
  Newcombe 1998, Stat Med 17:857).
* ROC AUC variance from DeLong's structural components (DeLong, DeLong & Clarke-Pearson 1988,
  Biometrics 44:837), computed in O(n log n) with midranks (Sun & Xu 2014, IEEE SPL 21:1389);
  plain normal CI for one AUC and the paired z-test for two correlated AUCs.
* Cluster (patient-level) percentile bootstrap: resample patients with replacement and keep all
  of their rows, so correlated patches do not shrink the interval (Field & Welsh 2007,
  JRSS-B 69:369; Davison & Hinkley 1997, sec. 3.8).
* Cohen's kappa (Cohen 1960) with the large-sample standard error of Fleiss, Cohen & Everitt
  1969 (Psychol Bull 72:323).
* Expected calibration error over equal-width bins (Naeini, Cooper & Hauskrecht 2015, AAAI).

Every function takes plain arrays, validates them at the door (raising `cadx.errors.InputError`
for bad data and `cadx.errors.ConfigError` for bad parameters) and returns plain Python values.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import norm, rankdata
from sklearn.metrics import cohen_kappa_score

from cadx.errors import ConfigError, InputError

_MAX_LISTED_ROWS = 5
_BOOT_CHUNK_ELEMENTS = 2**20  # resamples are drawn in chunks of about this many weights
_COUNT_METRICS = ("accuracy", "sensitivity", "specificity", "ppv", "npv", "f1", "kappa")


@dataclass(frozen=True)
class Interval:
    """A point estimate with its confidence interval; None where undefined."""

    estimate: float | None
    low: float | None
    high: float | None
    method: str

    def to_dict(self) -> dict:
        """Plain dict, ready for JSON."""
        return asdict(self)


# --------------------------------------------------------------------------- validation


def _prefix(source: str) -> str:
    return f"{source}: " if source else ""


def _rows(mask: np.ndarray) -> str:
    """'row 3' / 'rows 3, 7, ... (12 in all)', 1-based."""
    rows = np.flatnonzero(mask) + 1
    shown = ", ".join(str(r) for r in rows[:_MAX_LISTED_ROWS])
    more = f", ... ({rows.size} in all)" if rows.size > _MAX_LISTED_ROWS else ""
    return f"row{'s' if rows.size > 1 else ''} {shown}{more}"


def _one_dimensional(values, what: str, source: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise InputError(f"{_prefix(source)}{what} must be one-dimensional, "
                         f"got shape {array.shape}")
    if array.size == 0:
        raise InputError(f"{_prefix(source)}{what} is empty")
    return array


def _labels(values, *, name: str = "label", source: str = "") -> np.ndarray:
    """0/1 labels (bools, 0/1 numbers or '0'/'1' strings) as an int array."""
    array = _one_dimensional(values, f"column '{name}'", source)
    if array.dtype.kind == "b":
        return array.astype(int)
    if array.dtype.kind in "iuf":
        ok = np.isin(array, (0, 1))
        ones = array == 1
    elif array.dtype.kind in "US":
        text = np.char.strip(array.astype(str))
        ok = np.isin(text, ("0", "1"))
        ones = text == "1"
    else:
        parsed = [_label_value(v) for v in array]
        ok = np.array([v is not None for v in parsed], dtype=bool)
        ones = np.array([v == 1 for v in parsed], dtype=bool)
    if not ok.all():
        examples = ", ".join(repr(v.item() if isinstance(v, np.generic) else v)
                             for v in array[~ok][:3])
        raise InputError(f"{_prefix(source)}column '{name}' must hold 0/1 labels, "
                         f"found {examples} at {_rows(~ok)}")
    return ones.astype(int)


def _label_value(value) -> int | None:
    """0 or 1 for an accepted label (bool, 0/1 number, '0'/'1' string), else None."""
    if isinstance(value, str):
        text = value.strip()
        return int(text) if text in ("0", "1") else None
    if isinstance(value, bool | np.bool_ | int | np.integer | float | np.floating):
        return int(value) if value in (0, 1) else None
    return None


def _scores(values, *, name: str, source: str, unit_interval: bool) -> np.ndarray:
    """Finite float scores, optionally restricted to [0, 1]."""
    array = _one_dimensional(values, f"column '{name}'", source)
    try:
        scores = array.astype(float)
    except (TypeError, ValueError):
        bad = np.array([not _is_number(v) for v in array], dtype=bool)
        raise InputError(f"{_prefix(source)}column '{name}' is not numeric "
                         f"at {_rows(bad)}") from None
    checks = [(np.isnan(scores), "NaN"), (np.isinf(scores), "an infinite value")]
    if unit_interval:
        checks.append((np.isfinite(scores) & ((scores < 0) | (scores > 1)),
                       "a value outside [0, 1]"))
    for bad, what in checks:
        if bad.any():
            raise InputError(f"{_prefix(source)}column '{name}' holds {what} at {_rows(bad)}")
    return scores


def _is_number(value) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def _same_length(source: str, **columns) -> None:
    lengths = {name: len(values) for name, values in columns.items()}
    if len(set(lengths.values())) > 1:
        listed = ", ".join(f"'{name}' has {n}" for name, n in lengths.items())
        raise InputError(f"{_prefix(source)}columns differ in length: {listed} rows")


def _require_both_classes(y: np.ndarray, source: str, minimum: int = 1) -> None:
    n_pos = int(y.sum())
    for count, cls, other in ((y.size - n_pos, 0, "negative"), (n_pos, 1, "positive")):
        if count < minimum:
            if count == 0:
                raise InputError(f"{_prefix(source)}only class {1 - cls} is present in the labels "
                                 f"(no {other} case); both 0 and 1 are needed")
            raise InputError(f"{_prefix(source)}need at least {minimum} {other} cases, "
                             f"found {count}")


def validate_scores(y_true, scores, *, name: str = "score", label_name: str = "label",
                    source: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Check 0/1 labels and probabilities in [0, 1]; return (labels as int, scores as float).

    Raises InputError naming `source`, the column (`name` for scores, `label_name` for labels)
    and the 1-based row(s) for mismatched lengths, non-numeric, NaN, infinite or out-of-range
    scores, labels other than 0/1 (bools, 0/1 numbers and '0'/'1' strings are accepted), and for
    labels holding one class only.
    """
    _same_length(source, **{label_name: y_true, name: scores})
    y = _labels(y_true, name=label_name, source=source)
    s = _scores(scores, name=name, source=source, unit_interval=True)
    _require_both_classes(y, source)
    return y, s


def _confidence(confidence: float) -> float:
    """Two-sided normal quantile for `confidence`."""
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence must lie strictly between 0 and 1, got {confidence}")
    return float(norm.ppf(0.5 + confidence / 2))


def _positive_int(value: int, what: str) -> int:
    try:
        value = operator.index(value)
    except TypeError:
        raise ConfigError(f"{what} must be an integer, got {value!r}") from None
    if value < 1:
        raise ConfigError(f"{what} must be at least 1, got {value}")
    return value


def _finite_or_none(value) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


# --------------------------------------------------------------------------- proportions


def wilson_interval(successes: int, total: int, confidence: float = 0.95) -> Interval:
    """Wilson score interval of successes/total; all None when total is 0."""
    z = _confidence(confidence)
    try:
        successes, total = operator.index(successes), operator.index(total)
    except TypeError:
        raise InputError(f"successes and total must be integers, got {successes!r}, "
                         f"{total!r}") from None
    if not 0 <= successes <= total:
        raise InputError(f"need 0 <= successes <= total, got {successes} of {total}")
    if total == 0:
        return Interval(None, None, None, "wilson")
    p = successes / total
    denominator = 1 + z**2 / total
    centre = (p + z**2 / (2 * total)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / total + z**2 / (4 * total**2))
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == total else min(1.0, centre + half)
    return Interval(p, low, high, "wilson")


# --------------------------------------------------------------------------- DeLong


def _delong_components(y: np.ndarray,
                       scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AUCs and DeLong structural components of k scorers (Sun & Xu 2014 midrank algorithm).

    `scores` is (k, n). Returns auc (k,), V10 (k, n_pos) and V01 (k, n_neg), where V10[i] is the
    fraction of negatives ranked below positive i (ties count 1/2) and V01[j] the fraction of
    positives ranked above negative j.
    """
    positives, negatives = scores[:, y == 1], scores[:, y == 0]
    m, n = positives.shape[1], negatives.shape[1]
    rank_pos = rankdata(positives, axis=1)
    rank_neg = rankdata(negatives, axis=1)
    rank_all = rankdata(np.hstack([positives, negatives]), axis=1)
    v10 = (rank_all[:, :m] - rank_pos) / n
    v01 = 1.0 - (rank_all[:, m:] - rank_neg) / m
    return v10.mean(axis=1), v10, v01


def _delong_inputs(y_true, score_columns: dict) -> tuple[np.ndarray, np.ndarray]:
    """Labels with at least two cases per class and a (k, n) stack of finite scores."""
    _same_length("", label=y_true, **score_columns)
    y = _labels(y_true)
    _require_both_classes(y, "", minimum=2)
    scores = np.vstack([_scores(values, name=name, source="", unit_interval=False)
                        for name, values in score_columns.items()])
    return y, scores


def delong_auc_variance(y_true, scores) -> tuple[float, float]:
    """ROC AUC and its DeLong variance, in O(n log n).

    Scores may be on any scale (probabilities, logits, ratings); at least two cases of each class.
    """
    y, s = _delong_inputs(y_true, {"score": scores})
    auc, v10, v01 = _delong_components(y, s)
    variance = v10[0].var(ddof=1) / v10.shape[1] + v01[0].var(ddof=1) / v01.shape[1]
    return float(auc[0]), float(variance)


def delong_auc_ci(y_true, scores, confidence: float = 0.95) -> Interval:
    """AUC with the normal-approximation DeLong interval (no logit transform), clipped to [0, 1]."""
    z = _confidence(confidence)
    auc, variance = delong_auc_variance(y_true, scores)
    half = z * math.sqrt(variance)
    return Interval(auc, max(0.0, auc - half), min(1.0, auc + half), "delong")


def delong_test(y_true, scores_a, scores_b, confidence: float = 0.95) -> dict:
    """DeLong's paired test of two correlated ROC AUCs measured on the same cases.

    Returns auc_a, auc_b, difference (a - b), its standard error se, z, the two-sided p_value and
    the `confidence` (default 95 %) interval ci_low..ci_high of the difference. When the difference
    has zero variance (e.g. identical scorers), z is 0 and p is 1 for a zero difference, and
    z is +/-inf and p is 0 otherwise.
    """
    z_crit = _confidence(confidence)
    y, s = _delong_inputs(y_true, {"scores_a": scores_a, "scores_b": scores_b})
    auc, v10, v01 = _delong_components(y, s)
    d10, d01 = v10[0] - v10[1], v01[0] - v01[1]
    se = math.sqrt(d10.var(ddof=1) / d10.size + d01.var(ddof=1) / d01.size)
    difference = float(auc[0] - auc[1])
    if se > 0:
        z = difference / se
        p_value = float(2 * norm.sf(abs(z)))
    elif difference == 0:
        z, p_value = 0.0, 1.0
    else:
        z, p_value = math.copysign(math.inf, difference), 0.0
    return {"auc_a": float(auc[0]), "auc_b": float(auc[1]), "difference": difference, "se": se,
            "z": z, "p_value": p_value,
            "ci_low": max(-1.0, difference - z_crit * se),
            "ci_high": min(1.0, difference + z_crit * se)}


# --------------------------------------------------------------------------- bootstrap


def _cluster_codes(clusters, n_rows: int) -> tuple[np.ndarray, int]:
    """Cluster ids -> (code per row in 0..C-1, C)."""
    ids = _one_dimensional(clusters, "column 'cluster'", "")
    if ids.size != n_rows:
        raise InputError(f"columns differ in length: 'label' has {n_rows}, "
                         f"'cluster' has {ids.size} rows")
    if ids.dtype.kind == "f" and np.isnan(ids).any():
        raise InputError(f"column 'cluster' is missing at {_rows(np.isnan(ids))}")
    unique, codes = np.unique(ids, return_inverse=True)
    return codes.ravel(), unique.size


def _cluster_weights(rng: np.random.Generator, n_clusters: int, n_rows: int,
                     n_boot: int) -> Iterator[np.ndarray]:
    """How often each cluster is drawn, (chunk, n_clusters) at a time, for n_boot resamples.

    Drawing C clusters with replacement gives multiplicities ~ Multinomial(C, 1/C each).
    """
    chunk = max(1, _BOOT_CHUNK_ELEMENTS // max(n_clusters, n_rows))
    uniform = np.full(n_clusters, 1.0 / n_clusters)
    for start in range(0, n_boot, chunk):
        yield rng.multinomial(n_clusters, uniform, size=min(chunk, n_boot - start))


def _percentile_interval(estimate: float | None, replicates: np.ndarray, confidence: float,
                         method: str) -> Interval:
    """Percentile interval over the defined (finite) replicates; says how many were undefined."""
    defined = replicates[np.isfinite(replicates)]
    label = f"{method} ({replicates.size} resamples, {replicates.size - defined.size} undefined)"
    if defined.size == 0:
        return Interval(estimate, None, None, label)
    alpha = 1 - confidence
    low, high = np.quantile(defined, [alpha / 2, 1 - alpha / 2])
    return Interval(estimate, float(low), float(high), label)


def cluster_bootstrap_ci(y_true, y_pred_or_scores, clusters,
                         statistic: Callable[[np.ndarray, np.ndarray], float | None],
                         n_boot: int = 1000, confidence: float = 0.95, seed: int = 0) -> Interval:
    """Percentile interval of `statistic(y, pred)` resampling whole clusters (e.g. patients).

    Each resample draws as many clusters as there are, with replacement, and keeps all rows of each
    drawn cluster (rows of a cluster drawn twice appear twice). Resamples where the statistic is
    undefined (None or NaN, e.g. one class only) are skipped and counted in `Interval.method`.
    The estimate is the statistic on the full data.
    """
    n_boot = _positive_int(n_boot, "n_boot")
    _confidence(confidence)
    _same_length("", label=y_true, prediction=y_pred_or_scores)
    y = _labels(y_true)
    values = _one_dimensional(y_pred_or_scores, "column 'prediction'", "")
    codes, n_clusters = _cluster_codes(clusters, y.size)
    rows = np.arange(y.size)
    replicates = np.full(n_boot, np.nan)
    done = 0
    for weights in _cluster_weights(np.random.default_rng(seed), n_clusters, y.size, n_boot):
        for w in weights:
            index = np.repeat(rows, w[codes])
            value = _finite_or_none(statistic(y[index], values[index]))
            replicates[done] = np.nan if value is None else value
            done += 1
    estimate = _finite_or_none(statistic(y, values))
    return _percentile_interval(estimate, replicates, confidence, "cluster-bootstrap")


def _counts(y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Per-row one-hot of the confusion cell, columns (tp, fp, tn, fn)."""
    cell = np.where(pred == 1, np.where(y == 1, 0, 1), np.where(y == 0, 2, 3))
    return np.eye(4, dtype=np.int64)[cell]


def _metrics_from_counts(counts: np.ndarray) -> dict[str, np.ndarray]:
    """Confusion-matrix metrics from (..., 4) counts (tp, fp, tn, fn); NaN where undefined."""
    tp, fp, tn, fn = (counts[..., i].astype(float) for i in range(4))
    n = tp + fp + tn + fn
    chance = (tp + fp) * (tp + fn) + (tn + fn) * (tn + fp)  # n^2 * expected agreement

    def ratio(numerator, denominator):
        return np.divide(numerator, denominator, out=np.full(np.shape(n), np.nan),
                         where=denominator > 0)

    return {"accuracy": ratio(tp + tn, n), "sensitivity": ratio(tp, tp + fn),
            "specificity": ratio(tn, tn + fp), "ppv": ratio(tp, tp + fp),
            "npv": ratio(tn, tn + fn), "f1": ratio(2 * tp, 2 * tp + fp + fn),
            "kappa": ratio(n * (tp + tn) - chance, n * n - chance)}


def _weighted_auc(row_weights: np.ndarray, y_sorted: np.ndarray,
                  tie_starts: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUC of each weighted resample; rows sorted by score, ties grouped."""
    positives = np.add.reduceat(row_weights * y_sorted, tie_starts, axis=1)
    negatives = np.add.reduceat(row_weights * (1 - y_sorted), tie_starts, axis=1)
    below = np.cumsum(negatives, axis=1) - negatives
    numerator = (positives * (below + 0.5 * negatives)).sum(axis=1)
    denominator = positives.sum(axis=1) * negatives.sum(axis=1)
    return np.divide(numerator, denominator, out=np.full(numerator.shape, np.nan),
                     where=denominator > 0)


def _cluster_bootstrap_all(y: np.ndarray, pred: np.ndarray, scores: np.ndarray | None,
                           codes: np.ndarray, n_clusters: int, n_boot: int,
                           seed: int) -> dict[str, np.ndarray]:
    """Cluster-bootstrap replicates of every metric, vectorised over resamples.

    Confusion metrics: resampled counts = cluster multiplicities @ per-cluster (tp, fp, tn, fn).
    AUC: weighted Mann-Whitney statistic with each row weighted by its cluster's multiplicity.
    """
    per_cluster = np.zeros((n_clusters, 4))
    np.add.at(per_cluster, codes, _counts(y, pred))
    count_reps, auc_reps = [], []
    if scores is not None:
        order = np.argsort(scores, kind="stable")
        sorted_scores, y_sorted, codes_sorted = scores[order], y[order].astype(float), codes[order]
        tie_starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    for weights in _cluster_weights(np.random.default_rng(seed), n_clusters, y.size, n_boot):
        count_reps.append(weights @ per_cluster)
        if scores is not None:
            auc_reps.append(_weighted_auc(weights[:, codes_sorted].astype(float), y_sorted,
                                          tie_starts))
    replicates = _metrics_from_counts(np.vstack(count_reps))
    if scores is not None:
        replicates["auc"] = np.concatenate(auc_reps)
    return replicates


# --------------------------------------------------------------------------- agreement


def cohen_kappa_ci(y_true, y_pred, confidence: float = 0.95) -> Interval:
    """Cohen's kappa (scikit-learn) with the Fleiss-Cohen-Everitt (1969) large-sample CI.

    Labels may be any categories. The interval is kappa +/- z * SE, clipped to [-1, 1]; all None
    when kappa is undefined (both raters use one and the same category throughout).
    """
    z = _confidence(confidence)
    _same_length("", label=y_true, prediction=y_pred)
    a = _one_dimensional(y_true, "column 'label'", "")
    b = _one_dimensional(y_pred, "column 'prediction'", "")
    labels, codes = np.unique(np.concatenate([a, b]), return_inverse=True)
    table = np.zeros((labels.size, labels.size))
    np.add.at(table, (codes[: a.size], codes[a.size:]), 1)
    n = a.size
    p = table / n
    rows, cols = p.sum(axis=1), p.sum(axis=0)
    p_chance = float(rows @ cols)
    if p_chance >= 1:
        return Interval(None, None, None, "asymptotic")
    kappa = float(cohen_kappa_score(a, b, labels=labels))
    # Fleiss, Cohen & Everitt (1969): large-sample variance of kappa (not only under kappa = 0).
    diagonal = np.diag(p) @ (1 - (rows + cols) * (1 - kappa)) ** 2
    off = p * (cols[:, None] + rows[None, :]) ** 2
    off_diagonal = (1 - kappa) ** 2 * (off.sum() - np.trace(off))
    variance = (diagonal + off_diagonal - (kappa - p_chance * (1 - kappa)) ** 2) / (
        n * (1 - p_chance) ** 2)
    half = z * math.sqrt(max(variance, 0.0))
    return Interval(kappa, max(-1.0, kappa - half), min(1.0, kappa + half), "asymptotic")


# --------------------------------------------------------------------------- report


def binary_metrics_with_ci(y_true, y_pred, scores=None, clusters=None, confidence: float = 0.95,
                           n_boot: int = 1000, seed: int = 0) -> dict[str, Interval]:
    """Accuracy, sensitivity, specificity, PPV, NPV, F1, kappa (and AUC with scores), with CIs.

    Without `clusters` (one row per patient): Wilson intervals for the proportions, a row
    bootstrap for F1, the asymptotic interval for kappa and DeLong for AUC. With `clusters`
    (several correlated rows per patient): a patient-level cluster bootstrap for every metric.
    Estimates are always the full-data values; undefined ones (e.g. sensitivity without positives)
    are None.
    """
    _confidence(confidence)
    n_boot = _positive_int(n_boot, "n_boot")
    columns = {"label": y_true, "prediction": y_pred}
    if scores is not None:
        columns["score"] = scores
    _same_length("", **columns)
    y = _labels(y_true)
    pred = _labels(y_pred, name="prediction")
    s = None if scores is None else _scores(scores, name="score", source="", unit_interval=False)
    counts = _counts(y, pred).sum(axis=0)
    estimates = {name: _finite_or_none(value)
                 for name, value in _metrics_from_counts(counts).items()}
    if s is not None:
        both = 0 < y.sum() < y.size
        estimates["auc"] = float(_delong_components(y, s[None])[0][0]) if both else None

    if clusters is not None:
        codes, n_clusters = _cluster_codes(clusters, y.size)
        replicates = _cluster_bootstrap_all(y, pred, s, codes, n_clusters, n_boot, seed)
        return {name: _percentile_interval(estimates[name], replicates[name], confidence,
                                           "cluster-bootstrap")
                for name in estimates}

    tp, fp, tn, fn = (int(c) for c in counts)
    result = {
        "accuracy": wilson_interval(tp + tn, y.size, confidence),
        "sensitivity": wilson_interval(tp, tp + fn, confidence),
        "specificity": wilson_interval(tn, tn + fp, confidence),
        "ppv": wilson_interval(tp, tp + fp, confidence),
        "npv": wilson_interval(tn, tn + fn, confidence),
    }
    # Resampling n rows with replacement = multinomial counts over the four confusion cells.
    boot_counts = np.random.default_rng(seed).multinomial(y.size, counts / y.size, size=n_boot)
    result["f1"] = _percentile_interval(estimates["f1"], _metrics_from_counts(boot_counts)["f1"],
                                        confidence, "bootstrap")
    result["kappa"] = cohen_kappa_ci(y, pred, confidence)
    if s is not None:
        n_pos = int(y.sum())
        if min(n_pos, y.size - n_pos) >= 2:
            result["auc"] = delong_auc_ci(y, s, confidence)
        else:
            result["auc"] = Interval(estimates["auc"], None, None, "delong")
    return result


# --------------------------------------------------------------------------- calibration


def calibration_curve_ece(y_true, probabilities, n_bins: int = 10) -> dict:
    """Reliability table over equal-width bins on [0, 1] and the expected calibration error.

    Bin b covers [b/n_bins, (b+1)/n_bins), the last one includes 1.
    ECE = sum_b n_b / N * |fraction_positive_b - mean_predicted_b|. Empty bins are listed with
    n = 0 and None for the mean prediction and the fraction of positives.
    """
    n_bins = _positive_int(n_bins, "n_bins")
    _same_length("", label=y_true, probability=probabilities)
    y = _labels(y_true)
    p = _scores(probabilities, name="probability", source="", unit_interval=True)
    edges = np.arange(n_bins + 1) / n_bins
    index = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, n_bins - 1)
    n = np.bincount(index, minlength=n_bins)
    sum_p = np.bincount(index, weights=p, minlength=n_bins)
    sum_y = np.bincount(index, weights=y, minlength=n_bins)
    bins, ece = [], 0.0
    for b in range(n_bins):
        mean_p = sum_p[b] / n[b] if n[b] else None
        frac = sum_y[b] / n[b] if n[b] else None
        if n[b]:
            ece += n[b] / y.size * abs(frac - mean_p)
        bins.append({"low": float(edges[b]), "high": float(edges[b + 1]), "n": int(n[b]),
                     "mean_predicted": None if mean_p is None else float(mean_p),
                     "fraction_positive": None if frac is None else float(frac)})
    return {"ece": float(ece), "bins": bins}
