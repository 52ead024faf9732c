"""The forest: class weights, bounded down-sampling with weight correction, seeds."""

from __future__ import annotations

import numpy as np
import pytest

from fraud_detection.features import FEATURE_NAMES
from fraud_detection.training.train import (
    TrainingError,
    TrainParams,
    class_weights,
    downsample,
    feature_importances,
    fit_forest,
    parse_class_weight,
    parse_max_features,
)


def separable(n: int = 3000, fraud_share: float = 0.03, seed: int = 0) -> tuple[np.ndarray, ...]:
    """Features where fraud has a larger first column, plus noise columns."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < fraud_share).astype(np.int64)
    features = rng.normal(size=(n, len(FEATURE_NAMES)))
    features[:, 0] += 3.0 * labels
    return features, labels


def test_balanced_class_weights_give_both_classes_the_same_total() -> None:
    labels = np.array([1] * 10 + [0] * 990)
    weights = class_weights(labels, "balanced")
    assert weights is not None
    assert weights[1] * 10 == pytest.approx(weights[0] * 990)
    assert weights[0] * 990 + weights[1] * 10 == pytest.approx(len(labels))
    assert class_weights(labels, "none") is None
    assert class_weights(labels, "25") == {0: 1.0, 1: 25.0}


@pytest.mark.parametrize("bad", ["heavy", "-3", "0"])
def test_an_unknown_class_weight_is_refused(bad: str) -> None:
    with pytest.raises(TrainingError, match="class_weight"):
        parse_class_weight(bad)


def test_max_features_accepts_names_and_fractions() -> None:
    assert parse_max_features("sqrt") == "sqrt"
    assert parse_max_features("all") is None
    assert parse_max_features("0.5") == 0.5
    with pytest.raises(TrainingError, match="max_features"):
        parse_max_features("1.5")
    with pytest.raises(TrainingError, match="n_estimators"):
        TrainParams(n_estimators=0)


def test_downsampling_keeps_every_fraud_and_the_class_totals() -> None:
    labels = np.array([1] * 200 + [0] * 99_800)
    rows, weights, rate = downsample(labels, max_rows=10_000, seed=4)
    assert weights is not None
    assert labels[rows].sum() == 200
    assert rate == pytest.approx(9_800 / 99_800)
    assert abs(len(rows) - 10_000) < 400  # Bernoulli sampling around the bound
    legit_total = weights[labels[rows] == 0].sum()
    assert legit_total == pytest.approx(99_800, rel=0.05)  # weight correction: 1 / rate
    again, _, _ = downsample(labels, max_rows=10_000, seed=4)
    assert np.array_equal(rows, again)
    everything, no_weights, full = downsample(labels, max_rows=0, seed=4)
    assert len(everything) == len(labels) and no_weights is None and full == 1.0


def test_downsampling_needs_room_for_the_frauds() -> None:
    with pytest.raises(TrainingError, match="not above the 200 fraudulent"):
        downsample(np.array([1] * 200 + [0] * 1000), max_rows=150, seed=0)


def test_the_same_seed_gives_the_same_forest() -> None:
    features, labels = separable()
    params = TrainParams(n_estimators=15, max_depth=6, max_train_rows=1500, seed=9)
    first, info = fit_forest(features, labels, params)
    second, _ = fit_forest(features, labels, params)
    np.testing.assert_array_equal(first.predict_proba(features), second.predict_proba(features))
    other, _ = fit_forest(features, labels, TrainParams(**{**params.to_dict(), "seed": 10}))
    assert not np.array_equal(first.predict_proba(features), other.predict_proba(features))
    assert info["rows_used"] < info["rows_available"] == len(labels)
    assert info["deepest_tree"] <= 6
    assert info["class_weight"][1] > info["class_weight"][0]
    importances = feature_importances(first, FEATURE_NAMES)
    assert next(iter(importances)) == FEATURE_NAMES[0]  # the informative column ranks first


def test_a_single_class_cannot_be_trained() -> None:
    features, _ = separable(n=100)
    with pytest.raises(TrainingError, match="both classes"):
        fit_forest(features, np.zeros(100, dtype=np.int64), TrainParams(n_estimators=2))


@pytest.mark.parametrize("class_weight", ["balanced", "20"])
def test_prior_correction_divides_each_leaf_by_the_class_weights(class_weight: str) -> None:
    features, labels = separable(n=2000, fraud_share=0.05)
    features[:, 0] += np.random.default_rng(3).normal(scale=2.0, size=len(labels))  # overlap
    params = TrainParams(n_estimators=5, min_samples_leaf=20, class_weight=class_weight)
    corrected, info = fit_forest(features, labels, params)
    assert info["prior_correction"] is True
    weighted, raw_info = fit_forest(
        features, labels, TrainParams(**{**params.to_dict(), "prior_correction": False})
    )
    assert raw_info["prior_correction"] is False
    w0, w1 = info["class_weight"][0], info["class_weight"][1]
    for tree, raw_tree in zip(corrected.estimators_, weighted.estimators_, strict=True):
        raw = raw_tree.predict_proba(features)[:, 1]
        expected = (raw / w1) / (raw / w1 + (1 - raw) / w0)
        np.testing.assert_allclose(tree.predict_proba(features)[:, 1], expected, atol=1e-12)
    mixed = (raw > 0) & (raw < 1)
    assert mixed.any()  # leaves holding both classes, where the weights matter

    # The weights inflate the fraud share; corrected, the mean score is back near the base rate.
    share = labels.mean()
    assert weighted.predict_proba(features)[:, 1].mean() > 3 * share
    assert corrected.predict_proba(features)[:, 1].mean() == pytest.approx(share, rel=0.3)


def test_prior_correction_leaves_an_unweighted_forest_as_it_is() -> None:
    features, labels = separable(n=1000)
    params = TrainParams(n_estimators=4, min_samples_leaf=10, class_weight="none")
    corrected, info = fit_forest(features, labels, params)
    plain, _ = fit_forest(
        features, labels, TrainParams(**{**params.to_dict(), "prior_correction": False})
    )
    assert info["prior_correction"] is False
    np.testing.assert_array_equal(corrected.predict_proba(features), plain.predict_proba(features))
