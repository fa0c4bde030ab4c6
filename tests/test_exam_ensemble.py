"""Exam score theta and its alternatives; validation-AUC ensemble weights."""

import math

import numpy as np
import pytest

from cadx.decide.ensemble import auc_weights, weighted_ensemble
from cadx.decide.exam import exam_scores
from cadx.errors import ConfigError


def test_theta_is_minus_mean_log_of_one_minus_p():
    ids = ["a", "a", "b"]
    p = [0.5, 0.9, 0.2]
    scores = exam_scores(ids, p, "theta")
    assert scores["a"] == pytest.approx(-(math.log(0.5) + math.log(0.1)) / 2)
    assert scores["b"] == pytest.approx(-math.log(0.8))


def test_theta_of_probability_one_is_finite():
    assert math.isfinite(exam_scores(["a"], [1.0], "theta")["a"])
    assert exam_scores(["a"], [1.0], "theta")["a"] == pytest.approx(-math.log(1e-6))


def test_mean_and_max_alternatives():
    ids = ["a", "b", "a", "b"]
    p = [0.1, 0.4, 0.7, 0.2]
    assert exam_scores(ids, p, "mean") == {"a": pytest.approx(0.4), "b": pytest.approx(0.3)}
    assert exam_scores(ids, p, "max") == {"a": 0.7, "b": 0.4}


def test_one_confident_image_outweighs_several_doubtful_ones_under_theta():
    confident = exam_scores(["x"] * 3, [0.99, 0.05, 0.05], "theta")["x"]
    doubtful = exam_scores(["y"] * 3, [0.45, 0.45, 0.45], "theta")["y"]
    assert confident > doubtful


def test_bad_exam_inputs():
    with pytest.raises(ConfigError, match="one of"):
        exam_scores(["a"], [0.5], "median")
    with pytest.raises(ConfigError, match="within"):
        exam_scores(["a"], [1.5])
    with pytest.raises(ConfigError, match="2 patient ids for 1"):
        exam_scores(["a", "b"], [0.5])


def test_auc_weights_and_weighted_ensemble():
    weights = auc_weights({"resnet18": 0.8, "darknet19": 0.6})
    assert weights == {"resnet18": pytest.approx(0.8 / 1.4), "darknet19": pytest.approx(0.6 / 1.4)}
    combined = weighted_ensemble({"resnet18": [1.0, 0.0], "darknet19": [0.0, 1.0]}, weights)
    np.testing.assert_allclose(combined, [0.8 / 1.4, 0.6 / 1.4])


def test_ensemble_bad_inputs():
    with pytest.raises(ConfigError, match="outside"):
        auc_weights({"a": 1.2})
    with pytest.raises(ConfigError, match="different numbers"):
        weighted_ensemble({"a": [0.1], "b": [0.1, 0.2]}, {"a": 0.5, "b": 0.5})
    with pytest.raises(ConfigError, match="no scores"):
        weighted_ensemble({"a": [0.1]}, {"a": 0.5, "b": 0.5})
