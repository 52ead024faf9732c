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

Counters count since the process started (a restart re-reads the uncommitted records, which
are then counted again).
"""

from __future__ import annotations

import contextlib
from datetime import datetime
from typing import TYPE_CHECKING, Any

from fraud_detection.monitoring.detector import SCORE_NAME
from fraud_detection.monitoring.records import SKIP_REASONS

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from fraud_detection.monitoring.results import WindowResult


class MonitorMetrics:
    """The metrics of one monitor, registered in ``registry`` (a new one by default)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge

        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.consumed = Counter(
            "fraud_monitor_records_consumed",
            "Records read from the mirror topic.",
            ["partition"],
            registry=r,
        )
        self.skipped = Counter(
            "fraud_monitor_records_skipped",
            "Records the drift monitor skipped, by reason.",
            ["reason"],
            registry=r,
        )
        for reason in SKIP_REASONS:  # every reason shows, at 0 until it happens
            self.skipped.labels(reason=reason)
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


def serve_metrics(metrics: MonitorMetrics, port: int, host: str = "127.0.0.1") -> Any:
    """Serve ``metrics`` on ``http://host:port/metrics`` (prometheus_client's own server, in a
    daemon thread); returns the server (``shutdown()`` stops it)."""
    from prometheus_client import start_http_server

    server, _thread = start_http_server(port, addr=host, registry=metrics.registry)
    return server
