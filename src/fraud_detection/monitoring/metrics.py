"""The monitor's Prometheus metrics, in a registry of its own, served on ``/metrics``.

=======================================================  =========================================
``fraud_monitor_records_consumed_total{partition}``      records read from the mirror topic
``fraud_monitor_records_skipped_total{reason}``          records skipped, by reason
                                                         (:data:`~fraud_detection.monitoring.records.SKIP_REASONS`)
``fraud_monitor_windows_total{model_version}``           window results written
``fraud_monitor_drift_windows_total{model_version}``     ... of which drifted
``fraud_monitor_feature_p_value{model_version,feature}`` the last tested window's p-value per
                                                         feature (and ``fraud_probability``)
``fraud_monitor_feature_statistic{model_version,...}``   ... and its KS statistic
``fraud_monitor_threshold{model_version}``               the last corrected threshold
``fraud_monitor_last_window_end_seconds{model_version}`` transaction time of the last window's end
``fraud_monitor_consumer_lag{partition}``                records in the partition not read yet
``fraud_monitor_open_window_records{partition}``         records in the partition's open window
=======================================================  =========================================

The performance monitor's (:class:`PerformanceMetrics`, in the same registry):

========================================================  ========================================
``fraud_monitor_performance_recall{model_version}``       recall of the latest complete window
``fraud_monitor_performance_precision{model_version}``    ... its precision
``fraud_monitor_performance_f1{model_version}``           ... its F1
``fraud_monitor_performance_coverage{model_version}``     ... its labelled share
``fraud_monitor_performance_windows_total{model_version}``  performance results written
``fraud_monitor_labels_consumed_total``                   records read from the labels topic
``fraud_monitor_labels_skipped_total{reason}``            labels not counted: a bad record (by
                                                          ``LabelRecordError.reason``),
                                                          ``duplicate``, ``unmatched`` (no score
                                                          within the horizon), ``expired``
                                                          (the transaction's window is final)
``fraud_monitor_performance_scores_dropped_total{reason}``  scored transactions dropped unlabelled:
                                                          ``expired`` (horizon), ``evicted``
                                                          (size cap), ``late`` (beyond the
                                                          horizon on arrival)
``fraud_monitor_performance_records_skipped_total{reason}`` mirror records the performance
                                                          monitor could not use, by reason
``fraud_monitor_join_size{side}``                         ``scores`` held, ``labels`` waiting
========================================================  ========================================

Counters count since the process started (a restart re-reads the uncommitted records, which
are then counted again).
"""

from __future__ import annotations

import contextlib
import math
from datetime import datetime
from typing import TYPE_CHECKING, Any

from fraud_detection.metrics_registry import registry_or_new, show_at_zero
from fraud_detection.monitoring.detector import SCORE_NAME
from fraud_detection.monitoring.records import SKIP_REASONS

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from fraud_detection.monitoring.results import WindowResult


class MonitorMetrics:
    """The metrics of one monitor, registered in ``registry`` (a new one by default)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        from prometheus_client import Counter, Gauge

        r = self.registry = registry_or_new(registry)
        self.consumed = Counter(
            "fraud_monitor_records_consumed",
            "Records read from the mirror topic.",
            ["partition"],
            registry=r,
        )
        self.skipped = show_at_zero(
            Counter(
                "fraud_monitor_records_skipped",
                "Records the drift monitor skipped, by reason.",
                ["reason"],
                registry=r,
            ),
            SKIP_REASONS,
        )
        self.windows = Counter(
            "fraud_monitor_windows", "Window results written.", ["model_version"], registry=r
        )
        self.drift_windows = Counter(
            "fraud_monitor_drift_windows",
            "Window results that found drift.",
            ["model_version"],
            registry=r,
        )
        self.p_value = Gauge(
            "fraud_monitor_feature_p_value",
            "KS p-value of each feature (and fraud_probability) in the last tested window.",
            ["model_version", "feature"],
            registry=r,
        )
        self.statistic = Gauge(
            "fraud_monitor_feature_statistic",
            "KS statistic of each feature (and fraud_probability) in the last tested window.",
            ["model_version", "feature"],
            registry=r,
        )
        self.threshold = Gauge(
            "fraud_monitor_threshold",
            "The Bonferroni-corrected p-value threshold of the last tested window.",
            ["model_version"],
            registry=r,
        )
        self.window_end = Gauge(
            "fraud_monitor_last_window_end_seconds",
            "Transaction time (Unix seconds) of the latest record of the last window.",
            ["model_version"],
            registry=r,
        )
        self.lag = Gauge(
            "fraud_monitor_consumer_lag",
            "Records in the partition after the last one read (high watermark - next offset).",
            ["partition"],
            registry=r,
        )
        self.open_records = Gauge(
            "fraud_monitor_open_window_records",
            "Valid records in the partition's open window.",
            ["partition"],
            registry=r,
        )

    def observe(self, result: WindowResult) -> None:
        """Count a written result and show its statistics."""
        version = result.model_version
        self.windows.labels(model_version=version).inc()
        if result.is_drift:
            self.drift_windows.labels(model_version=version).inc()
        else:
            self.drift_windows.labels(model_version=version)  # shown at 0
        self.window_end.labels(model_version=version).set(
            datetime.fromisoformat(result.end).timestamp()
        )
        if not result.tested:
            return
        columns: dict[str, Any] = dict(result.features)
        if result.score is not None:
            columns[SCORE_NAME] = result.score
        for name, test in columns.items():
            self.p_value.labels(model_version=version, feature=name).set(test["p_value"])
            self.statistic.labels(model_version=version, feature=name).set(test["statistic"])
        if result.threshold is not None:
            self.threshold.labels(model_version=version).set(result.threshold)

    def forget_partition(self, partition: int) -> None:
        """Drop the per-partition gauges of a partition this monitor no longer reads."""
        for gauge in (self.lag, self.open_records):
            with contextlib.suppress(KeyError):
                gauge.remove(str(partition))


#: Why a label is not counted, besides a bad record (``LabelRecordError.reason``).
LABEL_SKIP_REASONS: tuple[str, ...] = ("duplicate", "unmatched", "expired")
#: Why a scored transaction leaves the join unlabelled.
SCORE_DROP_REASONS: tuple[str, ...] = ("expired", "evicted", "late")
#: The join's counters behind each label and score reason.
_JOIN_COUNTERS: dict[tuple[str, str], str] = {
    ("label", "duplicate"): "duplicates",
    ("label", "unmatched"): "unmatched",
    ("label", "expired"): "expired",
    ("score", "expired"): "scores_expired",
    ("score", "evicted"): "scores_evicted",
    ("score", "late"): "late_scores",
}


class PerformanceMetrics:
    """The performance monitor's metrics, registered in ``registry`` (the drift monitor's, so
    one ``/metrics`` serves both; a new one by default)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        from prometheus_client import Counter, Gauge

        from fraud_detection.streaming.labels import BAD_REASONS

        r = self.registry = registry_or_new(registry)
        self.recall = Gauge(
            "fraud_monitor_performance_recall",
            "Recall of the latest complete performance window.",
            ["model_version"],
            registry=r,
        )
        self.precision = Gauge(
            "fraud_monitor_performance_precision",
            "Precision of the latest complete performance window.",
            ["model_version"],
            registry=r,
        )
        self.f1 = Gauge(
            "fraud_monitor_performance_f1",
            "F1 of the latest complete performance window.",
            ["model_version"],
            registry=r,
        )
        self.coverage = Gauge(
            "fraud_monitor_performance_coverage",
            "Labelled share of the latest complete performance window.",
            ["model_version"],
            registry=r,
        )
        self.windows = Counter(
            "fraud_monitor_performance_windows",
            "Performance results written (every revision).",
            ["model_version"],
            registry=r,
        )
        self.labels_consumed = Counter(
            "fraud_monitor_labels_consumed", "Records read from the labels topic.", registry=r
        )
        self.labels_skipped = show_at_zero(
            Counter(
                "fraud_monitor_labels_skipped",
                "Labels not counted, by reason.",
                ["reason"],
                registry=r,
            ),
            (*BAD_REASONS, *LABEL_SKIP_REASONS),
        )
        self.scores_dropped = show_at_zero(
            Counter(
                "fraud_monitor_performance_scores_dropped",
                "Scored transactions dropped from the join without a label, by reason.",
                ["reason"],
                registry=r,
            ),
            SCORE_DROP_REASONS,
        )
        self.records_skipped = Counter(
            "fraud_monitor_performance_records_skipped",
            "Mirror records the performance monitor could not use, by reason.",
            ["reason"],
            registry=r,
        )
        self.join_size = Gauge(
            "fraud_monitor_join_size",
            "Scored transactions held by the join (side=scores) and labels waiting for their "
            "score (side=labels).",
            ["side"],
            registry=r,
        )
        self._seen: dict[tuple[str, str], int] | None = None

    def observe(self, result: Any) -> None:
        """Count a written performance result; show its figures when it is complete."""
        version = result.model_version
        self.windows.labels(model_version=version).inc()
        if not result.complete:
            return
        for gauge, value in (
            (self.recall, result.recall),
            (self.precision, result.precision),
            (self.f1, result.f1),
            (self.coverage, result.coverage),
        ):
            gauge.labels(model_version=version).set(math.nan if value is None else value)

    def sync_join(self, stats: Any, scores_held: int, labels_waiting: int) -> None:
        """Bring the counters up to the join's counts (``JoinStats``, which persist across
        restarts; the counters count from the process's start)."""
        now = {key: int(getattr(stats, name)) for key, name in _JOIN_COUNTERS.items()}
        if self._seen is not None:
            for (side, reason), value in now.items():
                delta = value - self._seen[(side, reason)]
                if delta <= 0:
                    continue
                counter = self.labels_skipped if side == "label" else self.scores_dropped
                counter.labels(reason=reason).inc(delta)
        self._seen = now
        self.join_size.labels(side="scores").set(scores_held)
        self.join_size.labels(side="labels").set(labels_waiting)


def serve_metrics(metrics: MonitorMetrics, port: int, host: str = "127.0.0.1") -> Any:
    """Serve ``metrics`` on ``http://host:port/metrics`` (prometheus_client's own server, in a
    daemon thread); returns the server (``shutdown()`` stops it)."""
    from prometheus_client import start_http_server

    server, _thread = start_http_server(port, addr=host, registry=metrics.registry)
    return server
