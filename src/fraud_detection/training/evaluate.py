"""Model quality on a test set: metrics at the operating threshold and across thresholds.

Everything here is pure: arrays of labels and scores in, plain dicts and arrays out.

* :func:`classification_metrics` — recall, precision, F1 and the confusion matrix at the
  threshold, plus the threshold-free PR-AUC (average precision) and ROC-AUC;
* :func:`card_precision_at_k` — the handbook's Card Precision@k: per day, the share of truly
  compromised cards among the k cards with the highest score, averaged over days, cards found
  on one day being left out of the following days (an analyst team checks k cards a day);
* :func:`threshold_curve` and :func:`expected_cost` — what each threshold would give, and cost:
  every flagged transaction costs one analyst review, every missed fraud its amount.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from fraud_detection.schema import PROBABILITY_DECIMALS, flag_scores

#: Thresholds of the curves in the report.
CURVE_THRESHOLDS = np.round(np.arange(0.01, 1.0, 0.01), 2)
#: Categories of the confusion matrix, in row/column order.
CLASS_NAMES: tuple[str, str] = ("legitimate", "fraud")


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
