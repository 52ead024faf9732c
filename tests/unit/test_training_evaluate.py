"""Evaluation metrics, worked by hand."""

from __future__ import annotations

import numpy as np
import pytest

from fraud_detection.training.evaluate import (
    EvaluationError,
    card_precision_at_k,
    classification_metrics,
    expected_cost,
    roc_points,
    threshold_curve,
)

LABELS = np.array([0, 0, 0, 0, 1, 1, 1, 0])
SCORES = np.array([0.01, 0.10, 0.30, 0.05, 0.10, 0.90, 0.02, 0.0])


def test_metrics_at_the_threshold_count_a_score_equal_to_it_as_flagged() -> None:
    metrics = classification_metrics(LABELS, SCORES, threshold=0.1)
    # Flagged: 0.10 (legit), 0.30 (legit), 0.10 (fraud), 0.90 (fraud) -> tp 2, fp 2, fn 1, tn 3.
    assert metrics["confusion_matrix"] == [[3, 2], [1, 2]]
    assert metrics["recall"] == pytest.approx(2 / 3)
    assert metrics["precision"] == pytest.approx(0.5)
    assert metrics["f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    assert metrics["flagged"] == 4 and metrics["test_frauds"] == 3
    assert 0.0 < metrics["pr_auc"] <= 1.0 and 0.5 < metrics["roc_auc"] <= 1.0


def test_a_single_class_test_set_is_refused() -> None:
    with pytest.raises(EvaluationError, match="single class"):
        classification_metrics(np.zeros(5), np.linspace(0, 1, 5), 0.1)


def test_the_threshold_curve_agrees_with_the_metrics() -> None:
    curve = threshold_curve(LABELS, SCORES, np.array([0.1, 0.5]))
    assert curve["tp"] == [2, 1] and curve["fp"] == [2, 0] and curve["fn"] == [1, 2]
    assert curve["recall"][0] == pytest.approx(2 / 3)
    assert curve["precision"][1] == 1.0
    assert expected_cost(curve, review_cost=5.0, fraud_amount=100.0) == [
        4 * 5.0 + 1 * 100.0,
        1 * 5.0 + 2 * 100.0,
    ]


def test_card_precision_at_k_by_hand() -> None:
    days = np.array([1, 1, 1, 1, 2, 2, 2])
    cards = np.array(["a", "a", "b", "c", "a", "b", "d"])
    labels = np.array([0, 1, 0, 0, 1, 1, 0])
    scores = np.array([0.9, 0.2, 0.8, 0.1, 0.99, 0.5, 0.7])
    # Day 1: top-2 cards by max score are a (0.9, compromised) and b (0.8, clean) -> 1/2.
    # Day 2: a was detected on day 1 and is left out; top-2 are d (clean), b (fraud) -> 1/2.
    assert card_precision_at_k(days, cards, labels, scores, k=2) == pytest.approx(0.5)
    # With k=1: day 1 finds a (1/1); day 2 without a: d (0.7) beats b -> 0.
    assert card_precision_at_k(days, cards, labels, scores, k=1) == pytest.approx(0.5)


def test_roc_points_are_thinned_and_finite() -> None:
    rng = np.random.default_rng(0)
    labels = (rng.random(5000) < 0.1).astype(int)
    scores = rng.random(5000) * 0.5 + labels * 0.3
    fpr, tpr, thresholds = roc_points(labels, scores, max_points=50)
    assert len(fpr) <= 50 and fpr[0] == 0.0 and tpr[-1] == 1.0
    assert all(np.isfinite(thresholds)) and max(thresholds) <= 1.0


def test_a_float32_score_at_the_threshold_is_flagged_offline_as_online() -> None:
    """ONNX scores in float32: ten votes of a hundred trees can arrive as 0.09999998658895493."""
    from fraud_detection.schema import is_flagged

    float32_tenth = float(np.float32(0.1) - np.float32(1.5e-8))
    assert float32_tenth < 0.1
    labels = np.array([1, 0, 1, 0])
    scores = np.array([float32_tenth, 0.0999994, 0.1, 0.0])
    metrics = classification_metrics(labels, scores, threshold=0.1)
    assert metrics["confusion_matrix"] == [[2, 0], [0, 2]]
    assert [is_flagged(score, 0.1) for score in scores] == [True, False, True, False]
    curve = threshold_curve(labels, scores, np.array([0.1]))
    assert curve["tp"] == [2] and curve["fp"] == [0]


def test_one_score_is_rounded_exactly_as_an_array_of_scores() -> None:
    from fraud_detection.schema import PROBABILITY_DECIMALS, round_probability

    rng = np.random.default_rng(5)
    halfway = (np.arange(0, 100_001) + 0.5) / 10**PROBABILITY_DECIMALS
    scores = np.concatenate([rng.random(100_000), halfway, rng.random(10_000).astype(np.float32)])
    expected = np.round(scores.astype(np.float64), PROBABILITY_DECIMALS)
    assert [round_probability(score) for score in scores.tolist()] == expected.tolist()
