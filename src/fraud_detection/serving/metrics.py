"""The servers' Prometheus metrics, exported on the ``/metrics`` endpoint KServe serves.

Every metric lives in prometheus_client's default registry (the one KServe exposes next to its
latency histograms ``request_*_seconds``), is named ``fraud_*`` and has help text. They are
created on first use, once per process (:func:`serving_metrics`,
:func:`~fraud_detection.metrics_registry.created_once`); nothing happens at import.

Label values come from small fixed sets, never from a request: ``reason`` of a refused request
is the name of its 4xx status (:data:`REJECTION_REASONS`, else ``other``), ``kind`` of a failed
predictor call one of :data:`PREDICTOR_FAILURE_KINDS`, ``version`` the served bundle's model
version (one value at a time).

=====================================  =========  ==========  ==============================
name                                   type       labels      updated by
=====================================  =========  ==========  ==============================
fraud_transactions_scored_total        counter                transformer, per answer
fraud_transactions_flagged_total       counter                transformer, per answer
fraud_probability                      histogram              transformer, per instance
fraud_requests_rejected_total          counter    reason      both servers, per 4xx answer
fraud_requests_unavailable_total       counter                both servers, per 503 answer
fraud_requests_failed_total            counter                both servers, per 500 answer
fraud_predictor_failures_total         counter    kind        transformer, per failed call
fraud_model_info                       info       version     both servers, at (re)load
fraud_model_switches_total             counter                both servers, per switch
fraud_model_switch_failures_total      counter                both servers, per refused bundle
fraud_live_cards                       gauge                  transformer, read at scrape
fraud_labels_applied_total             counter    label       labels consumer, per label
fraud_labels_skipped_total             counter    reason      labels consumer, per record
fraud_labels_lag                       gauge                  labels consumer, per poll
=====================================  =========  ==========  ==============================

The ``fraud_labels_*`` metrics belong to the transformer's labels consumer
(:mod:`fraud_detection.serving.labels_consumer`) and are created when it starts
(:func:`labels_metrics`): ``label`` is ``fraud`` or ``legit``; ``reason`` one of
:data:`LABEL_SKIP_REASONS`.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping, Sized
from typing import Any, NamedTuple

from fraud_detection.metrics_registry import created_once, show_at_zero

#: ``reason`` label of a refused request, by HTTP status; any other 4xx is ``other``.
REJECTION_REASONS: Mapping[int, str] = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
}
OTHER_REASON = "other"
#: ``kind`` label of a failed call to the predictor.
PREDICTOR_FAILURE_KINDS: tuple[str, ...] = ("timeout", "connection", "error_status", "bad_response")
#: ``reason`` label of a skipped label record: unusable (``streaming.labels.BAD_REASONS``), its
#: transaction unknown (no merchant and time in the label, none remembered), or too old to
#: matter to any feature.
LABEL_SKIP_REASONS: tuple[str, ...] = (
    "not_json",
    "missing_field",
    "invalid_value",
    "unknown_transaction",
    "too_old",
)
#: ``label`` label of an applied label.
LABEL_VALUES: tuple[str, ...] = ("fraud", "legit")
#: Buckets of the fraud probability histogram: fine around the 0.1 threshold.
PROBABILITY_BUCKETS: tuple[float, ...] = (
    0.001,
    0.01,
    0.025,
    0.05,
    0.075,
    0.09,
    0.095,
    0.1,
    0.105,
    0.11,
    0.125,
    0.15,
    0.2,
    0.3,
    0.5,
    0.75,
    0.9,
    1.0,
)


class ServingMetrics(NamedTuple):
    """The process's ``fraud_*`` metrics (see the module docstring)."""

    scored: Any
    flagged: Any
    probability: Any
    rejected: Any
    unavailable: Any
    failed: Any
    predictor_failures: Any
    model: Any
    switches: Any
    switch_failures: Any
    live_cards: Any


@created_once
def serving_metrics() -> ServingMetrics:
    """The process's serving metrics (created on first use, in the default registry)."""
    from prometheus_client import Counter, Gauge, Histogram, Info

    rejected = show_at_zero(
        Counter(
            "fraud_requests_rejected",
            "Requests refused with a 4xx answer, by reason (the status: "
            + ", ".join(f"{status} {name}" for status, name in REJECTION_REASONS.items())
            + f"; {OTHER_REASON} for any other 4xx).",
            ["reason"],
        ),
        (*REJECTION_REASONS.values(), OTHER_REASON),
    )
    predictor_failures = show_at_zero(
        Counter(
            "fraud_predictor_failures",
            "Calls from the transformer to the predictor that failed, by kind (timeout, "
            "connection: refused or reset, error_status: not a 200 answer, bad_response: "
            "unreadable); each is answered 503.",
            ["kind"],
        ),
        PREDICTOR_FAILURE_KINDS,
    )
    return ServingMetrics(
        scored=Counter(
            "fraud_transactions_scored",
            "Transactions answered with a fraud probability (an identical retry counts again).",
        ),
        flagged=Counter(
            "fraud_transactions_flagged",
            "Transactions answered is_fraud=true (probability at or above the threshold).",
        ),
        probability=Histogram(
            "fraud_probability",
            "Fraud probability of each answered transaction, as answered (rounded).",
            buckets=PROBABILITY_BUCKETS,
        ),
        rejected=rejected,
        unavailable=Counter(
            "fraud_requests_unavailable",
            "Requests answered 503 (predictor or model unavailable; nothing wrong with them).",
        ),
        failed=Counter(
            "fraud_requests_failed",
            "Requests answered 500: an unexpected server error, logged with its traceback.",
        ),
        predictor_failures=predictor_failures,
        model=Info("fraud_model", "The model version this server serves (its bundle's)."),
        switches=Counter(
            "fraud_model_switches",
            "Bundles loaded after the first: a switch to another version, or a reload (SIGHUP).",
        ),
        switch_failures=Counter(
            "fraud_model_switch_failures",
            "Bundles refused when switching (the previous model kept serving).",
        ),
        live_cards=Gauge(
            "fraud_live_cards", "Cards in the transformer's live per-card feature state."
        ),
    )


def rejection_reason(status: int) -> str:
    """The ``reason`` label of a 4xx status."""
    return REJECTION_REASONS.get(status, OTHER_REASON)


def count_error_answer(status: int) -> None:
    """Count an error answer: 4xx as rejected (by reason), 503 unavailable, other 5xx failed."""
    metrics = serving_metrics()
    if status < 500:
        metrics.rejected.labels(reason=rejection_reason(status)).inc()
    elif status == 503:
        metrics.unavailable.inc()
    else:
        metrics.failed.inc()


def count_scored(probabilities: list[float], flagged: int) -> None:
    """Count answered transactions: their number, how many were flagged, each probability."""
    metrics = serving_metrics()
    metrics.scored.inc(len(probabilities))
    if flagged:
        metrics.flagged.inc(flagged)
    observe = metrics.probability.observe
    for probability in probabilities:
        observe(probability)


def count_predictor_failure(kind: str) -> None:
    """Count a failed call to the predictor (``kind``: one of :data:`PREDICTOR_FAILURE_KINDS`)."""
    if kind not in PREDICTOR_FAILURE_KINDS:
        raise ValueError(f"kind must be one of {PREDICTOR_FAILURE_KINDS}, got {kind!r}")
    serving_metrics().predictor_failures.labels(kind=kind).inc()


def model_served(version: str, switched: bool) -> None:
    """Record the served model version; ``switched``: it replaced another bundle (or reloaded)."""
    metrics = serving_metrics()
    metrics.model.info({"version": version})
    if switched:
        metrics.switches.inc()


def count_switch_failure() -> None:
    """Count a bundle refused when switching."""
    serving_metrics().switch_failures.inc()


def watch_live_cards(live: Sized) -> None:
    """Report ``len(live)`` as the live cards gauge, read at each scrape (no per-request cost).

    Only a weak reference is kept: once ``live`` is gone the gauge reads 0.
    """
    reference = weakref.ref(live)
    serving_metrics().live_cards.set_function(_length_of(reference))


def _length_of(reference: weakref.ref[Sized]) -> Callable[[], float]:
    def length() -> float:
        target = reference()
        return float(len(target)) if target is not None else 0.0

    return length


class LabelsMetrics(NamedTuple):
    """The labels consumer's ``fraud_labels_*`` metrics (see the module docstring)."""

    applied: Any
    skipped: Any
    lag: Any


@created_once
def labels_metrics() -> LabelsMetrics:
    """The process's labels metrics (created on first use, in the default registry)."""
    from prometheus_client import Counter, Gauge

    return LabelsMetrics(
        applied=show_at_zero(
            Counter(
                "fraud_labels_applied",
                "Labels from the labels topic applied to merchant risk, by label (fraud, legit); "
                "a duplicate counts again but changes nothing.",
                ["label"],
            ),
            LABEL_VALUES,
        ),
        skipped=show_at_zero(
            Counter(
                "fraud_labels_skipped",
                "Label records not applied, by reason (not_json, missing_field, invalid_value: "
                "unusable; unknown_transaction: no merchant and time in the label and none "
                "remembered; too_old: older than any feature window can see).",
                ["reason"],
            ),
            LABEL_SKIP_REASONS,
        ),
        lag=Gauge(
            "fraud_labels_lag", "Label records in the labels topic not read yet by the transformer."
        ),
    )


def count_labels(outcomes: Mapping[str, int]) -> None:
    """Count label outcomes: ``fraud``/``legit`` as applied, any other key as a skip reason."""
    metrics = labels_metrics()
    for outcome, count in outcomes.items():
        if not count:
            continue
        if outcome in LABEL_VALUES:
            metrics.applied.labels(label=outcome).inc(count)
        elif outcome in LABEL_SKIP_REASONS:
            metrics.skipped.labels(reason=outcome).inc(count)
        else:
            raise ValueError(f"unknown label outcome {outcome!r}")
