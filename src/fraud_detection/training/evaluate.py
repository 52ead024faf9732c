"""Model quality on a test set: metrics at the operating threshold and across thresholds.

Everything here is pure: arrays of labels and scores in, plain dicts and arrays out.

* :func:`classification_metrics` — recall, precision, F1 and the confusion matrix at the
  threshold, plus the threshold-free PR-AUC (average precision) and ROC-AUC;
* :func:`card_precision_at_k` — the handbook's Card Precision@k: per day, the share of truly
  compromised cards among the k cards with the highest score, averaged over days, cards found
  on one day being left out of the following days (an analyst team checks k cards a day);
* :func:`threshold_curve` and :func:`expected_cost` — what each threshold would give, and cost:
  every flagged transaction costs one analyst review, every missed fraud its amount;
* :func:`alert_rate` and :func:`fraud_value_caught` — the analysts' workload (alerts a day) and
  the share of the stolen amount the alerts cover;
* :func:`confidence_intervals` — how far the point estimates can be trusted when the test set
  holds few frauds: Wilson intervals for recall and precision (:func:`wilson_interval`), seeded
  bootstrap percentile intervals for F1 and PR-AUC (:func:`bootstrap_intervals`);
* :func:`score_histogram` — the score distribution of each class;
* :func:`reliability` — the reliability diagram: per score bin, the mean score against the
  observed fraud rate (with its Wilson interval), which says whether a score of 0.1 means
  about one fraud in ten;
* :func:`permutation_importances` — the drop in average precision on (a bounded sample of) the
  test set when one feature's values are shuffled.
"""

from __future__ import annotations

from collections.abc import Sequence
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd

from fraud_detection.schema import PROBABILITY_DECIMALS, flag_scores

#: Thresholds of the curves in the report.
CURVE_THRESHOLDS = np.round(np.arange(0.01, 1.0, 0.01), 2)
#: Categories of the confusion matrix, in row/column order.
CLASS_NAMES: tuple[str, str] = ("legitimate", "fraud")
#: Two-sided level of the confidence intervals.
CONFIDENCE = 0.95
#: Bootstrap resamples of the F1 and PR-AUC intervals.
BOOTSTRAP_RESAMPLES = 1000
#: Bins of the score histograms (width 0.02, so 0.1 and every multiple of 0.02 is an edge).
SCORE_BINS = 50
#: Edges of the reliability diagram's bins: fine where the scores and the 0.1 threshold are.
RELIABILITY_EDGES: tuple[float, ...] = (
    0.0,
    0.01,
    0.02,
    0.05,
    0.1,
    0.2,
    0.3,
    0.4,
    0.5,
    0.6,
    0.7,
    0.8,
    0.9,
    1.0,
)
#: Rows of the test sample permutation importance is measured on, and shuffles per feature.
PERMUTATION_MAX_ROWS = 5_000
PERMUTATION_REPEATS = 5
_DAY_NS = 86_400 * 10**9


class EvaluationError(ValueError):
    """The test set cannot measure the model (for example, it holds no fraud)."""


def _check(labels: np.ndarray, scores: np.ndarray) -> None:
    if len(labels) != len(scores):
        raise EvaluationError(f"{len(labels)} labels but {len(scores)} scores")
    positives = int(labels.sum())
    if positives == 0 or positives == len(labels):
        raise EvaluationError(
            f"the test set has a single class ({len(labels)} rows, {positives} fraudulent); "
            "recall and AUC are undefined"
        )


def classification_metrics(
    labels: np.ndarray, scores: np.ndarray, threshold: float
) -> dict[str, Any]:
    """Metrics of fraud ``scores`` (probabilities) against 0/1 ``labels`` at ``threshold``.

    A transaction is flagged when its score is at or above the threshold, compared as serving
    compares it (:func:`~fraud_detection.schema.flag_scores`).
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    labels = np.asarray(labels, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    _check(labels, scores)
    flagged = flag_scores(scores, threshold)
    tp = int(np.sum(flagged & (labels == 1)))
    fp = int(np.sum(flagged & (labels == 0)))
    fn = int(np.sum(~flagged & (labels == 1)))
    tn = int(np.sum(~flagged & (labels == 0)))
    recall = tp / (tp + fn)
    precision = tp / (tp + fp) if tp + fp else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "threshold": float(threshold),
        "recall": recall,
        "precision": precision,
        "f1": f1,
        "pr_auc": float(average_precision_score(labels, scores)),
        "roc_auc": float(roc_auc_score(labels, scores)),
        "confusion_matrix": [[tn, fp], [fn, tp]],
        "test_rows": len(labels),
        "test_frauds": int(labels.sum()),
        "flagged": int(flagged.sum()),
    }


def card_precision_at_k(
    days: np.ndarray, cards: np.ndarray, labels: np.ndarray, scores: np.ndarray, k: int = 100
) -> float:
    """Mean over days of the share of compromised cards among the day's k top-scored cards.

    A card's score for a day is its highest transaction score that day, and it counts as
    compromised when any of its transactions that day is fraud. Cards detected on a day are
    removed from the following days. Always divides by ``k`` (the handbook's definition).
    """
    frame = pd.DataFrame({"day": days, "card": cards, "label": labels, "score": scores})
    detected: set[Any] = set()
    precisions = []
    for _, rows in frame.groupby("day", sort=True):
        rows = rows[~rows["card"].isin(detected)]
        per_card = rows.groupby("card").agg(score=("score", "max"), label=("label", "max"))
        top = per_card.sort_values("score", ascending=False, kind="stable").head(k)
        found = top.index[top["label"] == 1]
        precisions.append(len(found) / k)
        detected.update(found)
    return float(np.mean(precisions)) if precisions else 0.0


def roc_points(
    labels: np.ndarray, scores: np.ndarray, max_points: int = 201
) -> tuple[list[float], list[float], list[float]]:
    """The ROC curve as (false-positive rates, recalls, thresholds), thinned to ``max_points``.

    The first threshold (sklearn's ``inf``) is reported as 1.0 so the curve serialises to JSON.
    """
    from sklearn.metrics import roc_curve

    fpr, tpr, thresholds = roc_curve(labels, scores)
    thresholds = np.minimum(thresholds, 1.0)
    if len(fpr) > max_points:
        keep = np.unique(np.linspace(0, len(fpr) - 1, max_points).round().astype(int))
        fpr, tpr, thresholds = fpr[keep], tpr[keep], thresholds[keep]
    return fpr.tolist(), tpr.tolist(), thresholds.tolist()


def threshold_curve(
    labels: np.ndarray, scores: np.ndarray, thresholds: np.ndarray = CURVE_THRESHOLDS
) -> dict[str, list[float]]:
    """Recall, precision, F1 and the counts of each outcome at every threshold."""
    labels = np.asarray(labels, dtype=np.int64)
    scores = np.round(np.asarray(scores, dtype=np.float64), PROBABILITY_DECIMALS)
    order = np.sort(scores[labels == 1])
    legit = np.sort(scores[labels == 0])
    positives = len(order)
    # Flagged = rounded score >= t (as flag_scores): count through sorted scores.
    tp = positives - np.searchsorted(order, thresholds, side="left")
    fp = len(legit) - np.searchsorted(legit, thresholds, side="left")
    fn = positives - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 0.0)
        recall = tp / max(positives, 1)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return {
        "threshold": [float(t) for t in thresholds],
        "recall": recall.tolist(),
        "precision": precision.tolist(),
        "f1": f1.tolist(),
        "tp": tp.tolist(),
        "fp": fp.tolist(),
        "fn": fn.tolist(),
    }


def expected_cost(
    curve: dict[str, list[float]], review_cost: float, fraud_amount: float
) -> list[float]:
    """Cost at every threshold of a :func:`threshold_curve`: reviews plus missed fraud."""
    tp, fp, fn = (np.asarray(curve[key], dtype=np.float64) for key in ("tp", "fp", "fn"))
    return ((tp + fp) * review_cost + fn * fraud_amount).tolist()


def mean_fraud_amount(amounts: np.ndarray, labels: np.ndarray) -> float:
    """Average amount of the fraudulent transactions (0 when there are none)."""
    fraud = np.asarray(amounts, dtype=np.float64)[np.asarray(labels) == 1]
    return float(fraud.mean()) if len(fraud) else 0.0


def alert_rate(flagged: int, timestamps: Sequence[Any] | np.ndarray | pd.Series) -> dict[str, Any]:
    """Alerts a day: ``flagged`` test transactions over the days the test set spans.

    The span counts UTC calendar days, from the first test transaction's day to the last one's,
    both included (a 7-day window of whole days spans 7 days).
    """
    days = pd.to_datetime(pd.Series(timestamps), utc=True).dt.floor("D")
    if days.empty:
        raise EvaluationError("the test set is empty")
    span = int((days.max() - days.min()).value // _DAY_NS) + 1
    return {"alerts_per_day": flagged / span, "test_span_days": span}


def fraud_value_caught(
    amounts: np.ndarray, labels: np.ndarray, flagged: np.ndarray
) -> dict[str, float]:
    """The amount of the frauds flagged, of all frauds, and its share (0 when no fraud amount)."""
    amounts = np.asarray(amounts, dtype=np.float64)
    fraud = np.asarray(labels) == 1
    total = float(amounts[fraud].sum())
    caught = float(amounts[fraud & np.asarray(flagged, dtype=bool)].sum())
    return {
        "fraud_amount_total": total,
        "fraud_amount_caught": caught,
        "fraud_value_caught_share": caught / total if total > 0 else 0.0,
    }


def wilson_interval(
    successes: int, trials: int, confidence: float = CONFIDENCE
) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``successes / trials`` (no continuity correction).

    Unlike the normal approximation it stays inside [0, 1] and keeps a useful width when the
    proportion is near 0 or 1 or the count is small. No trials: ``(0.0, 1.0)``, nothing known.
    """
    if not 0 <= successes <= trials:
        raise ValueError(f"successes must be in [0, trials], got {successes} of {trials}")
    if trials == 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    share = successes / trials
    denominator = 1 + z * z / trials
    centre = (share + z * z / (2 * trials)) / denominator
    half = z * np.sqrt(share * (1 - share) / trials + z * z / (4 * trials * trials)) / denominator
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == trials else min(1.0, centre + half)
    return float(low), float(high)


def weighted_f1_and_average_precision(
    labels: np.ndarray, scores: np.ndarray, threshold: float, weights: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """F1 at ``threshold`` and average precision under each row of ``weights``, vectorised.

    ``weights`` has one row per weighting and one column per transaction (bootstrap counts);
    each row gives what :func:`sklearn.metrics.f1_score` and
    :func:`~sklearn.metrics.average_precision_score` give with that ``sample_weight``. Average
    precision is NaN for a row that gives the frauds no weight.
    """
    labels = np.asarray(labels, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    fraud = labels == 1
    flagged = flag_scores(scores, threshold)
    outcomes = np.stack([fraud & flagged, ~fraud & flagged, fraud & ~flagged], axis=1)
    tp, fp, fn = (weights @ outcomes.astype(np.float64)).T
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)

    if not fraud.any():
        return f1, np.full(len(weights), np.nan)
    # Average precision = sum over score thresholds of (recall gained) x (precision there),
    # thresholds taken at each distinct score, highest first; only those that hold a fraud add.
    order = np.argsort(-scores, kind="stable")
    ranked, fraud_ranked = scores[order], fraud[order]
    ranked_weights = weights[:, order]
    ends = np.r_[np.flatnonzero(np.diff(ranked)), len(ranked) - 1]  # last row of each score
    group = np.r_[0, np.cumsum(np.diff(ranked) != 0)]
    ends = ends[np.bincount(group, weights=fraud_ranked, minlength=len(ends)) > 0]
    starts = np.r_[0, ends[:-1] + 1]
    through_last = ranked_weights[:, : ends[-1] + 1]
    flagged_weight = np.cumsum(np.add.reduceat(through_last, starts, axis=1), axis=1)
    fraud_positions = np.flatnonzero(fraud_ranked)
    fraud_cumulative = np.cumsum(ranked_weights[:, fraud_positions], axis=1)
    caught = fraud_cumulative[:, np.searchsorted(fraud_positions, ends, side="right") - 1]
    total = fraud_cumulative[:, -1]
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(flagged_weight > 0, caught / flagged_weight, 0.0)
        gained = np.diff(caught, axis=1, prepend=0.0) / total[:, None]
        average_precision = np.where(total > 0, np.sum(gained * precision, axis=1), np.nan)
    return f1, np.clip(average_precision, 0.0, 1.0)


def bootstrap_intervals(
    labels: np.ndarray,
    scores: np.ndarray,
    threshold: float,
    seed: int,
    resamples: int = BOOTSTRAP_RESAMPLES,
    confidence: float = CONFIDENCE,
    chunk: int = 100,
) -> dict[str, tuple[float, float]]:
    """Bootstrap percentile intervals of F1 (at ``threshold``) and PR-AUC (average precision).

    Each resample draws as many test transactions as there are, with replacement, from
    ``numpy.random.default_rng(seed)``; resamples are scored ``chunk`` at a time as weight
    matrices (:func:`weighted_f1_and_average_precision`), so memory stays bounded. The same data
    and seed give the same interval.
    """
    labels = np.asarray(labels, dtype=np.int64)
    rows = len(labels)
    rng = np.random.default_rng(seed)
    f1_values, ap_values = [], []
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        drawn = rng.integers(0, rows, size=(size, rows))
        drawn += np.arange(size)[:, None] * rows
        counts = np.bincount(drawn.ravel(), minlength=size * rows).reshape(size, rows)
        f1, average_precision = weighted_f1_and_average_precision(labels, scores, threshold, counts)
        f1_values.append(f1)
        ap_values.append(average_precision)
    quantiles = [(1 - confidence) / 2, (1 + confidence) / 2]
    out = {}
    for name, values in (("f1", f1_values), ("pr_auc", ap_values)):
        low, high = np.nanquantile(np.concatenate(values), quantiles)
        out[name] = (float(low), float(high))
    return out


def confidence_intervals(
    labels: np.ndarray,
    scores: np.ndarray,
    threshold: float,
    seed: int,
    resamples: int = BOOTSTRAP_RESAMPLES,
    confidence: float = CONFIDENCE,
) -> dict[str, Any]:
    """Intervals of recall and precision (Wilson) and of F1 and PR-AUC (seeded bootstrap)."""
    labels = np.asarray(labels, dtype=np.int64)
    flagged = flag_scores(np.asarray(scores, dtype=np.float64), threshold)
    tp = int(np.sum(flagged & (labels == 1)))
    wilson = {"method": "wilson"}
    bootstrap = {"method": "bootstrap percentile", "resamples": resamples, "seed": seed}
    intervals: dict[str, Any] = {"level": confidence}
    for name, trials in (("recall", int(labels.sum())), ("precision", int(flagged.sum()))):
        low, high = wilson_interval(tp, trials, confidence)
        intervals[name] = {"low": low, "high": high, **wilson}
    for name, (low, high) in bootstrap_intervals(
        labels, scores, threshold, seed, resamples, confidence
    ).items():
        intervals[name] = {"low": low, "high": high, **bootstrap}
    return intervals


def score_histogram(
    labels: np.ndarray, scores: np.ndarray, bins: int = SCORE_BINS
) -> dict[str, list[float]]:
    """Counts of each class's scores in ``bins`` equal bins over [0, 1].

    Scores are rounded as serving rounds them and bins include their left edge, so a score equal
    to a threshold on an edge lands on the flagged side, as it is counted.
    """
    labels = np.asarray(labels)
    rounded = np.round(np.asarray(scores, dtype=np.float64), PROBABILITY_DECIMALS)
    edges = np.round(np.linspace(0.0, 1.0, bins + 1), 10)
    histogram: dict[str, list[float]] = {"edges": edges.tolist()}
    for value, name in enumerate(CLASS_NAMES):
        counts, _ = np.histogram(rounded[labels == value], bins=edges)
        histogram[name] = counts.tolist()
    return histogram


def reliability(
    labels: np.ndarray, scores: np.ndarray, edges: Sequence[float] = RELIABILITY_EDGES
) -> dict[str, list[float]]:
    """Per score bin: rows, frauds, mean score, observed fraud rate and its Wilson interval.

    Bins are ``[edge, next edge)``, the last one closed; empty bins are left out. A calibrated
    model has an observed rate close to the mean score in every bin.
    """
    labels = np.asarray(labels, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    bounds = np.asarray(edges, dtype=np.float64)
    index = np.clip(np.searchsorted(bounds, scores, side="right") - 1, 0, len(bounds) - 2)
    out: dict[str, list[float]] = {
        key: [] for key in ("low", "high", "rows", "frauds", "mean_score", "fraud_rate")
    }
    out["fraud_rate_low"], out["fraud_rate_high"] = [], []
    for position in range(len(bounds) - 1):
        members = index == position
        rows = int(members.sum())
        if rows == 0:
            continue
        frauds = int(labels[members].sum())
        low, high = wilson_interval(frauds, rows)
        for key, value in (
            ("low", bounds[position]),
            ("high", bounds[position + 1]),
            ("rows", rows),
            ("frauds", frauds),
            ("mean_score", float(scores[members].mean())),
            ("fraud_rate", frauds / rows),
            ("fraud_rate_low", low),
            ("fraud_rate_high", high),
        ):
            out[key].append(float(value))
    return out


def permutation_importances(
    model: Any,
    features: np.ndarray,
    labels: np.ndarray,
    names: Sequence[str],
    seed: int,
    max_rows: int = PERMUTATION_MAX_ROWS,
    repeats: int = PERMUTATION_REPEATS,
) -> dict[str, Any]:
    """Drop in average precision when each feature is shuffled, on a bounded test sample.

    Above ``max_rows`` test rows, a seeded sample keeps every fraud (up to half the sample) and
    fills the rest with legitimate transactions; each kept row is weighted by how many test rows
    of its class it stands for, so the sample's average precision estimates the test set's.
    """
    from sklearn.inspection import permutation_importance

    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    weights = None
    rows = np.arange(len(labels))
    if len(labels) > max_rows:
        frauds, legitimate = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
        kept_frauds = min(len(frauds), max_rows // 2)
        kept = [
            rng.choice(frauds, kept_frauds, replace=False),
            rng.choice(legitimate, max_rows - kept_frauds, replace=False),
        ]
        rows = np.sort(np.concatenate(kept))
        weights = np.where(
            labels[rows] == 1, len(frauds) / kept_frauds, len(legitimate) / len(kept[1])
        )
    result = permutation_importance(
        model,
        features[rows],
        labels[rows],
        scoring="average_precision",
        n_repeats=repeats,
        random_state=seed,
        sample_weight=weights,
    )
    return {
        "scoring": "average_precision",
        "repeats": repeats,
        "seed": seed,
        "rows": len(rows),
        "frauds": int(labels[rows].sum()),
        "test_rows": len(labels),
        "mean": {name: float(v) for name, v in zip(names, result.importances_mean, strict=True)},
        "std": {name: float(v) for name, v in zip(names, result.importances_std, strict=True)},
    }
