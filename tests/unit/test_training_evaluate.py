"""Evaluation metrics, worked by hand."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fraud_detection.training.evaluate import (
    EvaluationError,
    alert_rate,
    bootstrap_intervals,
    card_precision_at_k,
    classification_metrics,
    confidence_intervals,
    expected_cost,
    fraud_value_caught,
    permutation_importances,
    reliability,
    roc_points,
    score_histogram,
    threshold_curve,
    weighted_f1_and_average_precision,
    wilson_interval,
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


# ------------------------------------------------------------------- the analyst's figures
def test_alerts_a_day_divide_by_the_calendar_days_the_test_set_spans() -> None:
    # First transaction on 1 January, last on 7 January just before midnight: 7 days.
    stamps = pd.to_datetime(
        ["2026-01-01T00:00:05Z", "2026-01-04T12:00:00Z", "2026-01-07T23:59:00Z"]
    )
    assert alert_rate(14, stamps) == {"alerts_per_day": 2.0, "test_span_days": 7}
    # A single day (naive timestamps are UTC).
    assert alert_rate(3, pd.Series(["2026-03-02 08:00", "2026-03-02 21:00"])) == {
        "alerts_per_day": 3.0,
        "test_span_days": 1,
    }
    with pytest.raises(EvaluationError, match="empty"):
        alert_rate(0, pd.Series([], dtype="datetime64[ns, UTC]"))


def test_the_share_of_fraud_value_caught_by_hand() -> None:
    amounts = np.array([10.0, 200.0, 30.0, 5.0, 1000.0])
    labels = np.array([1, 1, 1, 0, 0])
    flagged = np.array([True, False, True, True, True])
    # Frauds: 10 + 200 + 30 = 240; flagged frauds: 10 + 30 = 40 (flagged legit rows don't count).
    assert fraud_value_caught(amounts, labels, flagged) == {
        "fraud_amount_total": 240.0,
        "fraud_amount_caught": 40.0,
        "fraud_value_caught_share": pytest.approx(40 / 240),
    }
    nothing = fraud_value_caught(np.zeros(2), np.array([1, 0]), np.array([True, False]))
    assert nothing["fraud_value_caught_share"] == 0.0


# -------------------------------------------------------------------- confidence intervals
def test_wilson_intervals_by_hand_and_against_scipy() -> None:
    from scipy.stats import binomtest

    z = 1.959963984540054  # the two-sided 95 % normal quantile
    # No success in 10 trials: the interval is [0, z^2 / (n + z^2)].
    assert wilson_interval(0, 10) == (0.0, pytest.approx(z * z / (10 + z * z)))
    assert wilson_interval(0, 10)[1] == pytest.approx(0.2775328, abs=1e-7)
    # All successes: the mirror image.
    assert wilson_interval(10, 10) == (pytest.approx(10 / (10 + z * z)), 1.0)
    # 50 of 68 frauds caught (the demo's test set has 68 frauds).
    low, high = wilson_interval(50, 68)
    assert (low, high) == (pytest.approx(0.6199227, abs=1e-7), pytest.approx(0.8255026, abs=1e-7))
    for successes, trials in ((50, 68), (3, 7), (25, 163), (1, 1000), (999, 1000)):
        expected = binomtest(successes, trials).proportion_ci(0.95, method="wilson")
        got = wilson_interval(successes, trials)
        assert got == (pytest.approx(expected.low, abs=1e-12), pytest.approx(expected.high))
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(5, 4)


def tied_scores(n: int = 2000, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Labels and scores rounded to two decimals, so many scores tie (fraud share 3 %)."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.03).astype(np.int64)
    scores = np.round(np.clip(rng.random(n) * 0.5 + labels * 0.3, 0, 1), 2)
    return labels, scores


def test_weighted_f1_and_average_precision_match_sklearn_sample_weights() -> None:
    from sklearn.metrics import average_precision_score, f1_score

    labels, scores = tied_scores()
    weights = np.random.default_rng(2).integers(0, 4, size=(6, len(labels)))
    weights[0] = 1
    f1, average_precision = weighted_f1_and_average_precision(labels, scores, 0.3, weights)
    for row, weight in enumerate(weights):
        flagged = scores >= 0.3
        assert f1[row] == pytest.approx(f1_score(labels, flagged, sample_weight=weight))
        want = average_precision_score(labels, scores, sample_weight=weight)
        assert average_precision[row] == pytest.approx(want, abs=1e-12)
    assert average_precision[0] == pytest.approx(
        classification_metrics(labels, scores, 0.3)["pr_auc"]
    )
    # Weights that drop every fraud leave average precision undefined.
    none = np.where(labels == 1, 0, 1)[None, :]
    assert np.isnan(weighted_f1_and_average_precision(labels, scores, 0.3, none)[1][0])


def test_bootstrap_intervals_are_the_percentiles_of_seeded_resamples() -> None:
    from sklearn.metrics import average_precision_score, f1_score

    labels, scores = tied_scores(n=600, seed=3)
    got = bootstrap_intervals(labels, scores, 0.3, seed=7, resamples=150, chunk=100)
    # The same resamples drawn and scored one by one with scikit-learn.
    rng = np.random.default_rng(7)
    draws = np.concatenate(
        [rng.integers(0, len(labels), size=(size, len(labels))) for size in (100, 50)]
    )
    f1s = [f1_score(labels[rows], scores[rows] >= 0.3) for rows in draws]
    aps = [average_precision_score(labels[rows], scores[rows]) for rows in draws]
    assert got["f1"] == pytest.approx(tuple(np.quantile(f1s, [0.025, 0.975])))
    assert got["pr_auc"] == pytest.approx(tuple(np.quantile(aps, [0.025, 0.975])))
    assert bootstrap_intervals(labels, scores, 0.3, seed=7, resamples=150, chunk=100) == got
    assert bootstrap_intervals(labels, scores, 0.3, seed=8, resamples=150, chunk=100) != got


def test_confidence_intervals_bracket_the_point_estimates() -> None:
    labels, scores = tied_scores(n=5000, seed=4)
    metrics = classification_metrics(labels, scores, 0.3)
    intervals = confidence_intervals(labels, scores, 0.3, seed=1, resamples=200)
    assert intervals["level"] == 0.95
    tp = metrics["confusion_matrix"][1][1]
    assert (intervals["recall"]["low"], intervals["recall"]["high"]) == wilson_interval(
        tp, metrics["test_frauds"]
    )
    assert (intervals["precision"]["low"], intervals["precision"]["high"]) == wilson_interval(
        tp, metrics["flagged"]
    )
    for name in ("recall", "precision", "f1", "pr_auc"):
        assert intervals[name]["low"] <= metrics[name] <= intervals[name]["high"], name
        assert intervals[name]["high"] - intervals[name]["low"] > 0.01, name
    assert intervals["f1"]["method"] == "bootstrap percentile"
    assert intervals["f1"]["resamples"] == 200 and intervals["pr_auc"]["seed"] == 1


# ---------------------------------------------------------------- scores and importances
def test_score_histograms_put_a_score_at_the_threshold_on_the_flagged_side() -> None:
    labels = np.array([0, 0, 0, 1, 1, 1])
    scores = np.array([0.0, 0.0999994, 0.0999996, 0.1, 0.55, 1.0])
    histogram = score_histogram(labels, scores, bins=10)
    assert histogram["edges"][1] == 0.1 and len(histogram["edges"]) == 11
    # Scores are rounded to 6 decimals, as served: 0.0999994 stays below 0.1, 0.0999996 is 0.1.
    assert histogram["legitimate"] == [2, 1, 0, 0, 0, 0, 0, 0, 0, 0]
    assert histogram["fraud"] == [0, 1, 0, 0, 0, 1, 0, 0, 0, 1]  # 1.0 is in the last bin
    flagged = sum(histogram["legitimate"][1:]) + sum(histogram["fraud"][1:])
    assert flagged == classification_metrics(labels, scores, 0.1)["flagged"]


def test_reliability_bins_by_hand() -> None:
    labels = np.array([0, 0, 1, 0, 1, 1, 0])
    scores = np.array([0.0, 0.004, 0.03, 0.04, 0.1, 0.95, 1.0])
    bins = reliability(labels, scores, edges=(0.0, 0.01, 0.1, 0.5, 1.0))
    # 0.1 opens the bin it is the lower edge of; 1.0 closes the last bin.
    assert bins["low"] == [0.0, 0.01, 0.1, 0.5]
    assert bins["rows"] == [2, 2, 1, 2]
    assert bins["frauds"] == [0, 1, 1, 1]
    assert bins["mean_score"] == pytest.approx([0.002, 0.035, 0.1, 0.975])
    assert bins["fraud_rate"] == [0.0, 0.5, 1.0, 0.5]
    low, high = wilson_interval(1, 2)
    assert (bins["fraud_rate_low"][1], bins["fraud_rate_high"][1]) == (low, high)


def test_reliability_leaves_empty_bins_out_and_follows_calibrated_scores() -> None:
    rng = np.random.default_rng(5)
    scores = rng.beta(0.3, 6.0, size=200_000)
    labels = (rng.random(len(scores)) < scores).astype(np.int64)  # calibrated by construction
    bins = reliability(labels, scores)
    assert sum(bins["rows"]) == len(scores)
    for rate, low, high in zip(
        bins["mean_score"], bins["fraud_rate_low"], bins["fraud_rate_high"], strict=True
    ):
        assert low - 0.01 <= rate <= high + 0.01
    sparse = reliability(np.array([0, 1]), np.array([0.05, 0.07]))
    assert sparse["rows"] == [2] and sparse["low"] == [0.05]


def test_permutation_importance_finds_the_informative_feature_on_a_bounded_sample() -> None:
    from sklearn.tree import DecisionTreeClassifier

    rng = np.random.default_rng(0)
    labels = (rng.random(4000) < 0.02).astype(np.int64)
    features = rng.normal(size=(4000, 3))
    features[:, 1] += 4.0 * labels  # only the second column tells fraud apart
    model = DecisionTreeClassifier(max_depth=3, random_state=0).fit(features, labels)
    names = ("noise_a", "signal", "noise_b")
    result = permutation_importances(model, features, labels, names, seed=5, max_rows=1000)
    assert result["rows"] == 1000 and result["test_rows"] == 4000
    assert result["frauds"] == int(labels.sum())  # every fraud is kept in the sample
    assert result["scoring"] == "average_precision" and result["repeats"] == 5
    assert result["mean"]["signal"] > 0.3
    assert max(abs(result["mean"]["noise_a"]), abs(result["mean"]["noise_b"])) < 0.05
    assert set(result["std"]) == set(names)
    again = permutation_importances(model, features, labels, names, seed=5, max_rows=1000)
    assert again == result


# ---------------------------------------------------------------------- the evaluation step
@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A small forest trained by the train step on generated data."""
    from fraud_detection.data.generator import GeneratorConfig, generate_transactions
    from fraud_detection.training.dataset import SplitConfig
    from fraud_detection.training.steps import train_step
    from fraud_detection.training.train import TrainParams

    root = tmp_path_factory.mktemp("evaluate")
    config = GeneratorConfig(n_transactions=8000, n_cards=300, days=20, fraud_rate=0.01, seed=3)
    generate_transactions(config).to_parquet(root / "data.parquet")
    train_step(
        root / "data.parquet",
        root / "model",
        root / "table.parquet",
        SplitConfig(test_size=0.25, seed=42),
        TrainParams(n_estimators=15, max_depth=8, seed=42),
    )
    return {"root": root, "model": root / "model", "table": root / "table.parquet"}


def evaluate_once(trained: dict[str, Path], name: str) -> dict:
    from fraud_detection.training.steps import evaluate_step

    out = trained["root"] / name
    evaluate_step(trained["model"], trained["table"], 0.1, out / "evaluation", out / "predictions")
    return json.loads((out / "evaluation").read_text())


def test_the_evaluation_step_records_the_new_figures_and_keeps_the_old_keys(
    trained: dict[str, Path],
) -> None:
    evaluation = evaluate_once(trained, "first")
    metrics = evaluation["metrics"]
    old = {"threshold", "recall", "precision", "f1", "pr_auc", "roc_auc", "confusion_matrix"}
    assert old | {"test_rows", "test_frauds", "flagged", "card_precision_at_100"} <= set(metrics)
    predictions = pd.read_parquet(trained["root"] / "first" / "predictions")
    days = predictions["timestamp"].dt.floor("D")
    span = (days.max() - days.min()).days + 1
    assert metrics["test_span_days"] == span
    assert metrics["alerts_per_day"] == pytest.approx(predictions["flagged"].sum() / span)
    frauds = predictions[predictions["is_fraud"] == 1]
    caught = frauds.loc[frauds["flagged"], "amt"].sum() / frauds["amt"].sum()
    assert metrics["fraud_value_caught_share"] == pytest.approx(caught)
    intervals = metrics["confidence_intervals"]
    assert intervals["f1"]["seed"] == 42  # the training seed
    for name in ("recall", "precision", "f1", "pr_auc"):
        assert intervals[name]["low"] <= metrics[name] <= intervals[name]["high"]
    histogram = evaluation["score_histogram"]
    assert sum(histogram["fraud"]) == metrics["test_frauds"]
    assert sum(histogram["legitimate"]) + sum(histogram["fraud"]) == metrics["test_rows"]
    permutation = evaluation["permutation_importances"]
    assert set(permutation["mean"]) == set(evaluation["feature_importances"])
    assert evaluation["cost"]["fraud_amount_source"] == "test mean"


def test_the_same_data_and_seed_give_the_same_evaluation(trained: dict[str, Path]) -> None:
    first = (trained["root"] / "first" / "evaluation").read_text()
    again = evaluate_once(trained, "again")
    assert json.loads(first) == again
