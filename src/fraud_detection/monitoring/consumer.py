"""The drift monitor's Kafka shell: poll the mirror topic as a consumer group, window, write,
commit.

Delivery, at least once with nothing lost:

1. records of each assigned partition go through its :class:`~fraud_detection.monitoring.
   stream.PartitionMonitor` in offset order;
2. when a window closes, its results are written to every sink, each durable before it returns
   (the JSON-lines file synced, the topic's records acknowledged);
3. only then is the partition's offset committed, and only up to what is safe: the first
   record of its open window (or the next record when none is open).

A crash (even SIGKILL) at any point therefore loses no window: a restarted monitor reads from
the committed offset, re-forms the open window from its first record, and, if the crash came
between steps 2 and 3, writes the last window's results again (same ``window_id``, same
content). A partition revoked in a rebalance commits what is safe and drops its window; its new
owner re-forms it the same way. Memory: one open window per assigned partition.

If a sink fails, the monitor stops without committing anything further (:class:`SinkError`);
restarted, it writes the window again.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fraud_detection.monitoring.detector import DetectorConfig, preload
from fraud_detection.monitoring.metrics import MonitorMetrics, serve_metrics
from fraud_detection.monitoring.reference import ReferenceCache
from fraud_detection.monitoring.results import WindowResult, evaluate_window
from fraud_detection.monitoring.sinks import (
    DEFAULT_RESULTS_TOPIC,
    JsonLinesSink,
    ResultSink,
    SinkError,
    TopicSink,
)
from fraud_detection.monitoring.stream import PartitionMonitor
from fraud_detection.monitoring.windows import ClosedWindow, WindowConfig

log = logging.getLogger(__name__)

#: The consumer group of the drift monitor.
DEFAULT_GROUP = "fraud-drift-monitor"


@dataclass(frozen=True)
class MonitorConfig:
    """What the monitor reads, how it tests, where results go.

    Attributes:
        bootstrap: Kafka bootstrap servers.
        topic: the mirror topic.
        group_id: the consumer group (every replica of the monitor joins it).
        results_topic: the topic results are written to; None for none.
        results_file: the JSON-lines file results are appended to; None for none.
        windows: how windows are cut.
        detector: how windows are tested.
        metrics_port: the port of ``/metrics``; None for no server.
        metrics_host: the address ``/metrics`` listens on.
        poll_timeout_s: the longest one poll waits for records.
        commit_interval_s: how often offsets that advanced without a window closing (skipped
            records) are committed.
        max_poll_records: records per poll at most.
    """

    bootstrap: str
    topic: str
    group_id: str = DEFAULT_GROUP
    results_topic: str | None = DEFAULT_RESULTS_TOPIC
    results_file: Path | None = None
    windows: WindowConfig = field(default_factory=WindowConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    poll_timeout_s: float = 0.5
    commit_interval_s: float = 5.0
    max_poll_records: int = 1_000


def open_sinks(config: MonitorConfig) -> list[ResultSink]:
    """The sinks ``config`` names: the file (first: local and cheap), then the topic.

    The results topic is created when it does not exist (one partition); a broker that refuses
    (a cluster whose topics are managed elsewhere) is only logged.
    """
    sinks: list[ResultSink] = []
    if config.results_file is not None:
        sinks.append(JsonLinesSink(config.results_file))
    if config.results_topic is not None:
        from fraud_detection.streaming.kafka import create_topics

        try:
            create_topics(config.bootstrap, [config.results_topic])
        except Exception as exc:
            log.warning("could not create topic %r: %s", config.results_topic, exc)
        sinks.append(TopicSink(config.bootstrap, config.results_topic))
    return sinks


class DriftMonitor:
    """Consumes the mirror topic until stopped; see the module docstring for the delivery.

    Args:
        config: the settings.
        references: drift references by model version.
        sinks: where results go (:func:`open_sinks`); closed by :meth:`run` when it returns.
        metrics: the Prometheus metrics (a new registry by default).
    """

    def __init__(
        self,
        config: MonitorConfig,
        references: ReferenceCache,
        sinks: Sequence[ResultSink],
        metrics: MonitorMetrics | None = None,
    ) -> None:
        self.config = config
        self.references = references
        self.sinks = list(sinks)
        self.metrics = metrics if metrics is not None else MonitorMetrics()
        self.records_consumed = 0
        self.windows_written = 0
        self.results_written = 0
        self._partitions: dict[Any, PartitionMonitor] = {}
        self._committed: dict[Any, int] = {}
        self._last_commit = time.monotonic()
        self._consumer: Any = None
        self.metrics_server: Any = None

    # ------------------------------------------------------------------------------- lifecycle
    def run(self, stop: threading.Event) -> None:
        """Consume until ``stop`` is set; commit what is safe, close everything, return.

        Raises:
            SinkError: a result could not be written (nothing more was committed).
            kafka.errors.KafkaError: the broker could not be reached or refused the group.
        """
        from kafka import ConsumerRebalanceListener

        from fraud_detection.streaming.kafka import make_consumer

        threading.Thread(target=_preload, name="alibi-detect-import", daemon=True).start()
        if self.config.metrics_port is not None:
            self.metrics_server = serve_metrics(
                self.metrics, self.config.metrics_port, self.config.metrics_host
            )
        monitor = self

        class Rebalance(ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked: Any) -> None:
                monitor._revoke(revoked)

            def on_partitions_assigned(self, assigned: Any) -> None:
                monitor._assign(assigned)

        clean = False
        try:
            self._consumer = make_consumer(
                self.config.bootstrap,
                group_id=self.config.group_id,
                enable_auto_commit=False,
                max_poll_records=self.config.max_poll_records,
                client_id="fraud-detection-drift-monitor",
            )
            self._consumer.subscribe([self.config.topic], listener=Rebalance())
            log.info(
                "drift monitor: reading %s on %s as group %s",
                self.config.topic,
                self.config.bootstrap,
                self.config.group_id,
            )
            while not stop.is_set():
                self._poll()
            clean = True
        finally:
            self._close(commit=clean)

    def _close(self, commit: bool) -> None:
        consumer = self._consumer
        if consumer is not None:
            if commit:
                try:
                    self._commit(list(self._partitions))
                except Exception as exc:  # the windows are re-formed from the last commit
                    log.warning("final commit failed: %s", exc)
            self._consumer = None
            try:
                consumer.close(autocommit=False)
            except Exception as exc:
                log.warning("closing the consumer: %s", exc)
        for sink in self.sinks:
            with contextlib.suppress(Exception):
                sink.close()
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
            self.metrics_server.server_close()
            self.metrics_server = None

    # ------------------------------------------------------------------------------- polling
    def _poll(self) -> None:
        consumer = self._consumer
        batch = consumer.poll(timeout_ms=int(self.config.poll_timeout_s * 1000))
        for tp, records in batch.items():
            part = self._partitions.get(tp)
            if part is None:  # assigned without the listener seeing it (should not happen)
                part = self._partitions[tp] = self._partition(tp)
            for record in records:
                if part.next_offset is not None and record.offset < part.next_offset:
                    continue  # already processed (a fetch repeated after a seek)
                for window in part.process(record.offset, record.headers, record.value):
                    self._write(window)
                    self._commit([tp])
            self.records_consumed += len(records)
            self.metrics.consumed.labels(partition=str(tp.partition)).inc(len(records))
            self.metrics.open_records.labels(partition=str(tp.partition)).set(
                part.windows.open_records
            )
        self._update_lag()
        if time.monotonic() - self._last_commit >= self.config.commit_interval_s:
            self._commit(list(self._partitions))

    def _partition(self, tp: Any) -> PartitionMonitor:
        return PartitionMonitor(
            tp.topic,
            tp.partition,
            self.references,
            self.config.windows,
            on_skip=lambda reason: self.metrics.skipped.labels(reason=reason).inc(),
        )

    def _write(self, window: ClosedWindow) -> None:
        results = evaluate_window(window, self.config.detector)
        for sink in self.sinks:
            sink.write(results)
        self.windows_written += 1
        self.results_written += len(results)
        for result in results:
            self.metrics.observe(result)
            _log_result(result)

    # ------------------------------------------------------------------------------- offsets
    def _commit(self, partitions: Sequence[Any]) -> None:
        """Commit each partition's safe offset, where it advanced."""
        from kafka.structs import OffsetAndMetadata

        self._last_commit = time.monotonic()
        offsets = {}
        for tp in partitions:
            part = self._partitions.get(tp)
            offset = part.commit_offset if part is not None else None
            if offset is not None and offset != self._committed.get(tp):
                offsets[tp] = OffsetAndMetadata(offset, "", -1)
        if not offsets:
            return
        try:
            self._consumer.commit(offsets)
        except Exception as exc:  # a rebalance in progress: the new owner re-forms the windows
            log.warning("commit of %s failed: %s", _describe(offsets), exc)
            return
        for tp, offset in offsets.items():
            self._committed[tp] = offset.offset
        log.debug("committed %s", _describe(offsets))

    def _update_lag(self) -> None:
        for tp, part in self._partitions.items():
            highwater = self._consumer.highwater(tp)
            if highwater is not None and part.next_offset is not None:
                self.metrics.lag.labels(partition=str(tp.partition)).set(
                    max(highwater - part.next_offset, 0)
                )

    def _assign(self, assigned: Any) -> None:
        for tp in assigned:
            if tp not in self._partitions:
                self._partitions[tp] = self._partition(tp)
        log.info("assigned %s", sorted(f"{tp.topic}-{tp.partition}" for tp in assigned))

    def _revoke(self, revoked: Any) -> None:
        revoked = [tp for tp in revoked if tp in self._partitions]
        if self._consumer is not None:
            self._commit(revoked)
        for tp in revoked:
            del self._partitions[tp]
            self._committed.pop(tp, None)
            self.metrics.forget_partition(tp.partition)
        if revoked:
            log.info("revoked %s", sorted(f"{tp.topic}-{tp.partition}" for tp in revoked))


def _preload() -> None:
    """Import alibi-detect in the background while the consumer joins its group."""
    started = time.monotonic()
    try:
        preload()
    except Exception as exc:  # the first window's test raises it again, where it is handled
        log.error("importing alibi-detect failed: %s", exc)
        return
    log.info("alibi-detect imported in %.1f s", time.monotonic() - started)


def _describe(offsets: dict[Any, Any]) -> str:
    return ", ".join(f"{tp.topic}-{tp.partition}@{meta.offset}" for tp, meta in offsets.items())


def _log_result(result: WindowResult) -> None:
    if not result.tested:
        verdict = "not tested (too few records)"
    elif result.is_drift:
        verdict = f"DRIFT in {', '.join(result.drifted)}"
    else:
        verdict = "no drift"
    log.info(
        "window %s: %d records, %s .. %s: %s",
        result.window_id,
        result.size,
        result.start,
        result.end,
        verdict,
    )


__all__ = ["DEFAULT_GROUP", "DriftMonitor", "MonitorConfig", "SinkError", "open_sinks"]
