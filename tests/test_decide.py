"""Youden threshold on a hand-computed ROC, patient aggregation, weighted BCE."""

import numpy as np
import pytest
import torch

from cadx.decide.aggregate import patient_scores
from cadx.decide.roc import youden_operating_point
from cadx.errors import SplitError
from cadx.train.loss import WeightedBCELoss


def test_youden_on_hand_computed_roc():
    # scores 0.1 0.2 0.3 0.4 0.5 0.6 | truth 0 0 1 0 1 1
    # thresholds (score > t): t=0.55 -> SN 1/3 SP 1; t=0.45 -> SN 2/3 SP 1 (J=0.667);
    # t=0.35 -> SN 2/3 SP 2/3; t=0.25 -> SN 1 SP 2/3 (J=0.667); t=0.15 -> SN 1 SP 1/3.
    # Max J = 2/3 twice; the tie goes to the higher (more specific) threshold, between 0.4 and 0.5.
    y = np.array([0, 0, 1, 0, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    point = youden_operating_point(y, s)
    assert point.threshold == pytest.approx(0.45)
    assert point.sensitivity == pytest.approx(2 / 3)
    assert point.specificity == pytest.approx(1.0)
    assert point.youden_index == pytest.approx(2 / 3)
    assert point.auc == pytest.approx(8 / 9)
    # The rule "score > threshold" reproduces the chosen point.
    predicted = s > point.threshold
    assert (predicted & (y == 1)).sum() / 3 == pytest.approx(point.sensitivity)


def test_youden_perfect_separation():
    point = youden_operating_point(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9]))
    assert point.threshold == pytest.approx(0.5)
    assert point.youden_index == pytest.approx(1.0) and point.auc == 1.0


def test_youden_needs_both_classes():
    with pytest.raises(SplitError, match="both positive and negative"):
        youden_operating_point(np.array([1, 1]), np.array([0.2, 0.3]), "validation patients")


def test_patient_score_is_fraction_of_patches_above_threshold():
    ids = np.array(["a", "a", "a", "a", "b", "b"], dtype=object)
    scores = np.array([0.9, 0.2, 0.6, 0.5, 0.1, 0.51])
    result = patient_scores(ids, scores, patch_threshold=0.5)
    assert result == {"a": pytest.approx(0.5), "b": pytest.approx(0.5)}
    # strictly greater: a score equal to the threshold is negative
    assert patient_scores(ids, scores, 0.6)["a"] == pytest.approx(0.25)


def test_weighted_bce_weights_are_inverse_class_counts():
    loss = WeightedBCELoss(n_positive=10, n_negative=90)
    assert loss.positive_weight / loss.negative_weight == pytest.approx(90 / 10)
    logits = torch.tensor([0.0, 0.0])
    targets = torch.tensor([1.0, 0.0])
    expected = (loss.positive_weight + loss.negative_weight) * np.log(2) / 2
    assert float(loss(logits, targets)) == pytest.approx(expected, rel=1e-6)
