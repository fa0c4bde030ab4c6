"""Tests of cadx.evaluate.stats, pinned on published values and on slow reference versions."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from scipy.stats import norm, rankdata
from sklearn.metrics import cohen_kappa_score, roc_auc_score

from cadx.errors import ConfigError, InputError
from cadx.evaluate.stats import (
    Interval,
    binary_metrics_with_ci,
    calibration_curve_ece,
    cluster_bootstrap_ci,
    cohen_kappa_ci,
    delong_auc_ci,
    delong_auc_variance,
    delong_test,
    validate_scores,
    wilson_interval,
)

Z95 = norm.ppf(0.975)


def sensitivity(y: np.ndarray, pred: np.ndarray) -> float | None:
    positives = y == 1
    return float(pred[positives].mean()) if positives.any() else None


def scored_sample(rng: np.random.Generator, n: int, shift: float = 1.0):
    """Labels and a score that is `shift` SDs higher on positives, rounded to create ties."""
    y = (rng.random(n) < 0.4).astype(int)
    score = np.round(rng.normal(size=n) + shift * y, 1)
    return y, score


# --------------------------------------------------------------------------- Interval / Wilson


def test_interval_to_dict():
    assert Interval(0.5, 0.25, 0.75, "wilson").to_dict() == {
        "estimate": 0.5, "low": 0.25, "high": 0.75, "method": "wilson"}


@pytest.mark.parametrize(("x", "n", "low", "high"), [
    # Newcombe (1998) Stat Med 17:857, Table I, method 3 (Wilson score, no continuity correction)
    (81, 263, 0.2553, 0.3662),
    (15, 148, 0.0624, 0.1605),
    (0, 20, 0.0, 0.1611),
    (1, 29, 0.0061, 0.1718),
    (29, 29, 0.8830, 1.0),
])
def test_wilson_matches_newcombe_1998(x, n, low, high):
    interval = wilson_interval(x, n)
    assert interval.estimate == pytest.approx(x / n)
    assert (interval.low, interval.high) == pytest.approx((low, high), abs=5e-5)
    assert interval.method == "wilson"


def test_wilson_matches_closed_formula_at_90_percent():
    x, n, z = 37, 90, norm.ppf(0.95)
    p = x / n
    centre = (2 * n * p + z**2) / (2 * (n + z**2))
    half = z * math.sqrt(z**2 + 4 * n * p * (1 - p)) / (2 * (n + z**2))
    interval = wilson_interval(x, n, confidence=0.90)
    assert (interval.low, interval.high) == pytest.approx((centre - half, centre + half), rel=1e-12)


def test_wilson_edges():
    none = wilson_interval(0, 10)
    assert none.low == 0.0 and none.high == pytest.approx(Z95**2 / (10 + Z95**2))
    full = wilson_interval(10, 10)
    assert full.high == 1.0 and full.low == pytest.approx(10 / (10 + Z95**2))
    assert wilson_interval(0, 0) == Interval(None, None, None, "wilson")
    with pytest.raises(InputError):
        wilson_interval(11, 10)
    with pytest.raises(ConfigError):
        wilson_interval(1, 10, confidence=95)


# --------------------------------------------------------------------------- DeLong


def slow_delong(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """O(n^2) structural components of DeLong et al. (1988) for the rows of `scores` (k, n)."""
    v10, v01 = [], []
    for s in scores:
        x, z = s[y == 1], s[y == 0]
        psi = (x[:, None] > z[None, :]) + 0.5 * (x[:, None] == z[None, :])
        v10.append(psi.mean(axis=1))
        v01.append(psi.mean(axis=0))
    return np.array(v10), np.array(v01)


def test_delong_auc_equals_sklearn_and_variance_equals_slow_version():
    y, score = scored_sample(np.random.default_rng(1), 150)
    auc, variance = delong_auc_variance(y, score)
    assert auc == pytest.approx(roc_auc_score(y, score), abs=1e-12)
    v10, v01 = slow_delong(y, score[None])
    expected = v10[0].var(ddof=1) / v10.shape[1] + v01[0].var(ddof=1) / v01.shape[1]
    assert variance == pytest.approx(expected, rel=1e-10)


def test_delong_on_hanley_mcneil_1982_ratings():
    # Hanley & McNeil (1982) Radiology 143:29, Table 1: five-point ratings of 109 CT images.
    ratings = np.arange(1, 6)
    normal = np.repeat(ratings, [33, 6, 6, 11, 2])
    abnormal = np.repeat(ratings, [3, 2, 2, 11, 33])
    y = np.r_[np.zeros(normal.size), np.ones(abnormal.size)]
    auc, variance = delong_auc_variance(y, np.r_[normal, abnormal])
    assert auc == pytest.approx(0.893, abs=5e-4)  # published area
    # The published SE 0.032 comes from Hanley & McNeil's exponential approximation ...
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    n_a, n_n = abnormal.size, normal.size
    se_hm = math.sqrt((auc * (1 - auc) + (n_a - 1) * (q1 - auc**2) + (n_n - 1) * (q2 - auc**2))
                      / (n_a * n_n))
    assert se_hm == pytest.approx(0.032, abs=5e-4)
    # ... the nonparametric DeLong SE on the same data is a little smaller.
    assert math.sqrt(variance) == pytest.approx(0.030724, abs=1e-6)
    interval = delong_auc_ci(y, np.r_[normal, abnormal])
    assert (interval.low, interval.high) == pytest.approx(
        (auc - Z95 * 0.030724, auc + Z95 * 0.030724), abs=1e-5)
    assert interval.method == "delong"


def test_delong_ci_is_clipped_to_unit_interval():
    y = np.array([0, 0, 0, 1, 1, 1])
    interval = delong_auc_ci(y, np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9]))
    assert (interval.estimate, interval.low, interval.high) == (1.0, 1.0, 1.0)
    nearly = delong_auc_ci(y, np.array([0.1, 0.2, 0.75, 0.7, 0.8, 0.9]))
    assert nearly.high == 1.0 and nearly.low < nearly.estimate < 1.0


def test_delong_needs_two_cases_per_class():
    with pytest.raises(InputError, match="at least 2 positive"):
        delong_auc_variance([0, 0, 0, 1], [0.1, 0.2, 0.3, 0.9])


def test_delong_test_identical_scores():
    y, score = scored_sample(np.random.default_rng(2), 80)
    result = delong_test(y, score, score.copy())
    assert result["difference"] == 0.0 and result["se"] == 0.0
    assert result["z"] == 0.0 and result["p_value"] == 1.0
    assert result["ci_low"] == result["ci_high"] == 0.0


def test_delong_test_variance_equals_slow_version_and_is_symmetric():
    rng = np.random.default_rng(3)
    y, a = scored_sample(rng, 120)
    b = np.round(a + rng.normal(size=a.size), 1)
    result = delong_test(y, a, b)
    v10, v01 = slow_delong(y, np.vstack([a, b]))
    s = np.cov(v10) / v10.shape[1] + np.cov(v01) / v01.shape[1]
    assert result["se"] == pytest.approx(math.sqrt(s[0, 0] + s[1, 1] - 2 * s[0, 1]), rel=1e-10)
    assert result["auc_a"] == pytest.approx(roc_auc_score(y, a))
    assert result["auc_b"] == pytest.approx(roc_auc_score(y, b))
    assert result["ci_low"] == pytest.approx(result["difference"] - Z95 * result["se"])
    swapped = delong_test(y, b, a)
    assert swapped["z"] == pytest.approx(-result["z"])
    assert swapped["p_value"] == pytest.approx(result["p_value"])


def test_delong_test_detects_a_better_scorer():
    rng = np.random.default_rng(4)
    y = np.r_[np.zeros(100), np.ones(100)]
    good = rng.normal(size=200) + 1.5 * y
    random = rng.normal(size=200)
    result = delong_test(y, good, random)
    assert result["difference"] > 0.25
    assert result["p_value"] < 0.01


def test_delong_test_agrees_with_paired_bootstrap():
    rng = np.random.default_rng(5)
    n = 300
    y = (rng.random(n) < 0.5).astype(int)
    latent = rng.normal(size=n) + 1.0 * y
    a = latent + 0.5 * rng.normal(size=n)
    b = latent + 1.2 * rng.normal(size=n)
    result = delong_test(y, a, b)

    index = rng.integers(0, n, size=(2000, n))
    yb = y[index]
    keep = (yb.sum(axis=1) > 0) & (yb.sum(axis=1) < n)
    yb, index = yb[keep], index[keep]

    def auc_rows(scores):
        ranks = rankdata(scores[index], axis=1)
        m = yb.sum(axis=1)
        return ((ranks * yb).sum(axis=1) - m * (m + 1) / 2) / (m * (n - m))

    differences = auc_rows(a) - auc_rows(b)
    se_boot = differences.std(ddof=1)
    assert se_boot == pytest.approx(result["se"], rel=0.2)
    p_boot = 2 * norm.sf(abs(result["difference"]) / se_boot)
    assert p_boot == pytest.approx(result["p_value"], abs=0.02)
    assert result["p_value"] < 0.05


# --------------------------------------------------------------------------- cluster bootstrap


def duplicated_patients(n_patients: int = 40, copies: int = 50, seed: int = 6):
    """Each patient contributes one (label, prediction) pair, repeated `copies` times."""
    rng = np.random.default_rng(seed)
    y = np.r_[np.ones(n_patients // 2), np.zeros(n_patients - n_patients // 2)].astype(int)
    pred = np.where(rng.random(n_patients) < 0.7, y, 1 - y)
    return np.repeat(y, copies), np.repeat(pred, copies), np.repeat(np.arange(n_patients), copies)


def test_cluster_bootstrap_widens_the_interval_of_duplicated_rows():
    y, pred, patients = duplicated_patients()
    tp, positives = int(pred[y == 1].sum()), int((y == 1).sum())
    naive = wilson_interval(tp, positives)
    patient_level = wilson_interval(tp // 50, positives // 50)
    clustered = cluster_bootstrap_ci(y, pred, patients, sensitivity, n_boot=500)
    assert clustered.estimate == pytest.approx(tp / positives)
    width = clustered.high - clustered.low
    assert width > 4 * (naive.high - naive.low)
    assert width == pytest.approx(patient_level.high - patient_level.low, rel=0.35)
    assert clustered.method == "cluster-bootstrap (500 resamples, 0 undefined)"


def test_cluster_bootstrap_is_seeded_and_counts_undefined_resamples():
    y, pred, patients = duplicated_patients(n_patients=6, copies=3)
    y[patients != 0] = 0  # only patient 0 has positive rows
    first = cluster_bootstrap_ci(y, pred, patients, sensitivity, n_boot=300, seed=1)
    assert first == cluster_bootstrap_ci(y, pred, patients, sensitivity, n_boot=300, seed=1)
    undefined = int(re.fullmatch(r"cluster-bootstrap \(300 resamples, (\d+) undefined\)",
                                 first.method).group(1))
    # P(patient 0 never drawn in 6 draws) = (5/6)^6 = 0.335
    assert undefined / 300 == pytest.approx((5 / 6) ** 6, abs=0.08)


def test_cluster_bootstrap_rejects_misaligned_clusters():
    with pytest.raises(InputError, match="'cluster' has 3"):
        cluster_bootstrap_ci([0, 1], [0, 1], [1, 2, 3], sensitivity)


def test_vectorised_cluster_metrics_equal_the_generic_loop():
    rng = np.random.default_rng(7)
    patients = rng.integers(0, 15, size=300)
    y = (patients % 3 == 0).astype(int)
    score = np.round(np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0, 1), 2)
    pred = (score > 0.5).astype(int)
    fast = binary_metrics_with_ci(y, pred, score, clusters=patients, n_boot=200, seed=3)

    def auc(y_b, s_b):
        return roc_auc_score(y_b, s_b) if 0 < y_b.sum() < y_b.size else None

    def f1(y_b, p_b):
        tp = np.sum((y_b == 1) & (p_b == 1))
        denominator = tp + np.sum(y_b != p_b)
        return 2 * tp / (tp + denominator) if denominator + tp else None

    for name, stat, values in [("sensitivity", sensitivity, pred), ("f1", f1, pred),
                               ("kappa", cohen_kappa_score, pred), ("auc", auc, score)]:
        slow = cluster_bootstrap_ci(y, values, patients, stat, n_boot=200, seed=3)
        got = fast[name]
        assert got.method == slow.method
        assert (got.estimate, got.low, got.high) == pytest.approx(
            (slow.estimate, slow.low, slow.high), abs=1e-12)


def test_clustered_metrics_cover_every_metric_on_20000_patches():
    rng = np.random.default_rng(8)
    patients = rng.integers(0, 60, size=20_000)
    y = (patients < 25).astype(int)
    score = np.clip(rng.normal(0.3 + 0.3 * y, 0.2), 0, 1)
    result = binary_metrics_with_ci(y, (score > 0.45).astype(int), score, clusters=patients)
    assert set(result) == {"accuracy", "sensitivity", "specificity", "ppv", "npv", "f1",
                           "kappa", "auc"}
    assert all(r.method.startswith("cluster-bootstrap (1000 resamples") for r in result.values())


# --------------------------------------------------------------------------- kappa


def test_kappa_matches_sklearn_and_the_delta_method_se():
    rng = np.random.default_rng(9)
    a = rng.integers(0, 3, size=400)
    b = np.where(rng.random(400) < 0.6, a, rng.integers(0, 3, size=400))
    interval = cohen_kappa_ci(a, b)
    assert interval.estimate == pytest.approx(cohen_kappa_score(a, b))

    # Large-sample variance = delta method under multinomial sampling of the 3x3 table.
    table = np.zeros((3, 3))
    np.add.at(table, (a, b), 1)
    p = table.ravel() / 400

    def kappa(cells):
        q = cells.reshape(3, 3)
        chance = q.sum(axis=1) @ q.sum(axis=0)
        return (np.trace(q) - chance) / (1 - chance)

    gradient = np.array([(kappa(p + h) - kappa(p - h)) / 2e-7 for h in np.eye(9) * 1e-7])
    se = math.sqrt(gradient @ ((np.diag(p) - np.outer(p, p)) / 400) @ gradient)
    assert (interval.high - interval.low) / 2 == pytest.approx(Z95 * se, rel=1e-5)


def test_kappa_on_sas_skin_condition_example():
    # SAS/STAT PROC FREQ "Agreement Study" (SkinCondition data, two dermatologists, n = 88):
    # simple kappa 0.3449, ASE 0.0724, 95 % limits 0.2030 to 0.4868.
    table = np.array([[10, 4, 1, 0], [5, 10, 12, 2], [2, 4, 12, 5], [0, 2, 6, 13]])
    derm1 = np.repeat(np.arange(4), table.sum(axis=1))
    derm2 = np.concatenate([np.repeat(np.arange(4), row) for row in table])
    interval = cohen_kappa_ci(derm1, derm2)
    assert interval.estimate == pytest.approx(0.3449, abs=5e-5)
    assert (interval.low, interval.high) == pytest.approx((0.2030, 0.4868), abs=5e-5)


def test_kappa_perfect_and_undefined():
    perfect = cohen_kappa_ci([0, 1, 1, 0, 1], [0, 1, 1, 0, 1])
    assert (perfect.estimate, perfect.low, perfect.high) == (1.0, 1.0, 1.0)
    assert cohen_kappa_ci([1, 1, 1], [1, 1, 1]) == Interval(None, None, None, "asymptotic")


# --------------------------------------------------------------------------- metrics report


def test_patient_level_metrics_use_wilson_delong_and_asymptotic_kappa():
    rng = np.random.default_rng(10)
    y, score = scored_sample(rng, 120)
    score = 1 / (1 + np.exp(-score))
    pred = (score > 0.6).astype(int)
    result = binary_metrics_with_ci(y, pred, score)
    tp = int(((y == 1) & (pred == 1)).sum())
    fn = int(((y == 1) & (pred == 0)).sum())
    tn = int(((y == 0) & (pred == 0)).sum())
    fp = int(((y == 0) & (pred == 1)).sum())
    assert result["accuracy"] == wilson_interval(tp + tn, 120)
    assert result["sensitivity"] == wilson_interval(tp, tp + fn)
    assert result["specificity"] == wilson_interval(tn, tn + fp)
    assert result["ppv"] == wilson_interval(tp, tp + fp)
    assert result["npv"] == wilson_interval(tn, tn + fn)
    assert result["kappa"] == cohen_kappa_ci(y, pred)
    assert result["auc"] == delong_auc_ci(y, score)
    f1 = result["f1"]
    assert f1.estimate == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert f1.low < f1.estimate < f1.high
    assert f1.method == "bootstrap (1000 resamples, 0 undefined)"
    assert binary_metrics_with_ci(y, pred, score)["f1"] == f1  # seeded


def test_metrics_without_positives_are_none():
    result = binary_metrics_with_ci([0, 0, 0, 0], [0, 1, 0, 0], [0.1, 0.7, 0.2, 0.3])
    assert result["sensitivity"] == Interval(None, None, None, "wilson")
    assert result["auc"] == Interval(None, None, None, "delong")
    assert result["specificity"].estimate == 0.75


# --------------------------------------------------------------------------- calibration


def test_ece_of_a_calibrated_example_is_zero():
    # 10 cases at 0.3 with 3 positives, 4 cases at 0.75 with 3 positives.
    p = np.r_[np.full(10, 0.3), np.full(4, 0.75)]
    y = np.r_[np.ones(3), np.zeros(7), np.ones(3), np.zeros(1)]
    result = calibration_curve_ece(y, p)
    assert result["ece"] == pytest.approx(0.0, abs=1e-12)
    assert result["bins"][3] == pytest.approx({"low": 0.3, "high": 0.4, "n": 10,
                                               "mean_predicted": 0.3, "fraction_positive": 0.3})
    assert result["bins"][0] == {"low": 0.0, "high": 0.1, "n": 0, "mean_predicted": None,
                                 "fraction_positive": None}
    assert [b["n"] for b in result["bins"]] == [0, 0, 0, 10, 0, 0, 0, 4, 0, 0]


def test_ece_of_a_miscalibrated_example():
    # 10 cases at 0.2 with 5 positives (gap 0.3), 30 at 1.0 with 24 positives (gap 0.2):
    # ECE = 10/40 * 0.3 + 30/40 * 0.2 = 0.225.
    p = np.r_[np.full(10, 0.2), np.full(30, 1.0)]
    y = np.r_[np.ones(5), np.zeros(5), np.ones(24), np.zeros(6)]
    result = calibration_curve_ece(y, p, n_bins=5)
    assert result["ece"] == pytest.approx(0.225, abs=1e-12)
    assert [b["n"] for b in result["bins"]] == [0, 10, 0, 0, 30]  # 1.0 falls in the last bin


# --------------------------------------------------------------------------- validation


def test_validate_scores_accepts_bools_strings_and_floats():
    y, s = validate_scores(np.array(["0", "1", " 1"]), [0.0, 0.5, 1.0])
    assert y.tolist() == [0, 1, 1] and y.dtype.kind == "i" and s.dtype == float
    assert validate_scores([True, False], [0.2, 0.4])[0].tolist() == [1, 0]
    assert validate_scores([1.0, 0.0], np.array(["0.9", "0.1"]))[1].tolist() == [0.9, 0.1]
    assert validate_scores(np.array([1, "0"], dtype=object), [0.9, 0.1])[0].tolist() == [1, 0]


@pytest.mark.parametrize(("labels", "scores", "message"), [
    ([0, 1, 1], [0.1, 0.2], r"preds\.csv: .*'label' has 3, 'prob' has 2"),
    ([0, 1, 1], [0.1, float("nan"), 0.3], r"preds\.csv: column 'prob' holds NaN at row 2$"),
    ([0, 1, 1], [0.1, 0.2, np.inf], r"column 'prob' holds an infinite value at row 3"),
    ([0, 1, 1, 0], [1.2, 0.2, 0.5, -0.1], r"'prob' holds a value outside \[0, 1\] at rows 1, 4"),
    ([0, 1, 1], ["0.1", "high", "0.3"], r"column 'prob' is not numeric at row 2"),
    ([0, 2, 1], [0.1, 0.2, 0.3], r"column 'label' must hold 0/1 labels, found 2 at row 2"),
    (["0", "yes", "1"], [0.1, 0.2, 0.3], r"found 'yes' at row 2"),
    ([1, 1, 1], [0.1, 0.2, 0.3], r"only class 1 is present .*no negative case"),
    ([0, 0], [0.1, 0.2], r"only class 0 is present .*no positive case"),
])
def test_validate_scores_names_column_and_rows(labels, scores, message):
    with pytest.raises(InputError, match=message):
        validate_scores(labels, scores, name="prob", source="preds.csv")


def test_validate_scores_lists_many_bad_rows_briefly():
    scores = np.full(20, 0.5)
    scores[3:15] = np.nan
    with pytest.raises(InputError, match=r"rows 4, 5, 6, 7, 8, \.\.\. \(12 in all\)"):
        validate_scores(np.r_[np.zeros(10), np.ones(10)], scores)
