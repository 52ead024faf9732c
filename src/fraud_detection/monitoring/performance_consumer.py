"""The performance monitor's Kafka shell: read the mirror and the labels topics, join, report.

The monitor assigns itself every partition of both topics (no consumer group: one instance
owns the join) and keeps its place in a state file, ``performance-state.json`` in the state
directory: the join (:class:`~fraud_detection.monitoring.labels_join.LabelJoin`), the windows'
counts and revisions, and the next offset of every partition. Delivery, exactly once for the
counts:

1. each poll's records go through the :class:`~fraud_detection.monitoring.performance.
   PerformanceTracker` (the mirror's first, then the labels'), skipping any offset already
   counted;
2. the windows due a report are written to every sink, each durable before it returns;
3. every ``save_interval_s`` seconds, and when stopped, the state is written to a temporary file,
   synced and renamed over the previous one (atomic: a crash leaves the old or the new file).

Started again (even after SIGKILL), the monitor loads the state and seeks every partition to its
stored offset (no state: from the beginning), so each label is counted once: the records after
the last save are read again into the state they were first counted from. A report written
after the last save is written again with the same ``window_id`` and ``revision`` (its figures
may include a few more labels, as the two topics interleave differently). If a sink fails,
the monitor stops without saving the state.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from fraud_detection.monitoring.labels_join import ScoredTransaction
from fraud_detection.monitoring.metrics import PerformanceMetrics
from fraud_detection.monitoring.performance import (
    BaselineLookup,
    PerformanceConfig,
    PerformanceResult,
    PerformanceTracker,
)
from fraud_detection.monitoring.records import (
    SKIP_INVALID_VALUE,
    SKIP_MISSING_FIELD,
    UnusableRecordError,
    parse_event,
)
from fraud_detection.monitoring.sinks import ResultSink
from fraud_detection.schema import LABEL, TRANSACTION_ID, is_flagged
from fraud_detection.streaming.labels import LabelRecordError, parse_label

log = logging.getLogger(__name__)

STATE_FILE = "performance-state.json"
STATE_VERSION = 1
THRESHOLD_FIELD = "threshold"


class StateError(RuntimeError):
    """The state file cannot be used (the message names the file and what is wrong)."""


@dataclass(frozen=True)
class PerformanceMonitorConfig:
    """What the performance monitor reads, where it keeps its state, how it reports.

    Attributes:
        bootstrap: Kafka bootstrap servers.
        mirror_topic: the mirror topic (scored transactions).
        labels_topic: the labels topic.
        state_dir: the directory of the state file.
        performance: windows, completeness, tolerance, horizon and the join's caps.
        poll_timeout_s: the longest one poll waits for records.
        save_interval_s: how often the state is saved while records arrive.
        refresh_s: how often the topics' partitions are looked up again (a topic created or
            grown after the start is picked up).
        max_poll_records: records per poll at most.
    """

    bootstrap: str
    mirror_topic: str
    labels_topic: str
    state_dir: Path
    performance: PerformanceConfig = field(default_factory=PerformanceConfig)
    poll_timeout_s: float = 0.5
    save_interval_s: float = 5.0
    refresh_s: float = 30.0
    max_poll_records: int = 2_000

    @property
    def state_file(self) -> Path:
        """The state file's path."""
        return self.state_dir / STATE_FILE


# ----------------------------------------------------------------------------------- records
def scored_transaction(
    headers: Iterable[tuple[str, bytes]] | None, value: bytes | None
) -> ScoredTransaction:
    """The scored transaction in one mirror record (:func:`~fraud_detection.monitoring.records.
    parse_event`, plus the served flag and the threshold).

    The flag is the value's ``is_fraud`` as served; a record without it is flagged by the
    serving rule (:func:`~fraud_detection.schema.is_flagged`).

    Raises:
        UnusableRecordError: naming the field and the reason.
    """
    event = parse_event(headers, value)
    if event.transaction_id is None:
        raise UnusableRecordError(SKIP_MISSING_FIELD, TRANSACTION_ID, "missing")
    body = orjson.loads(value or b"")  # parse_event read it: a JSON object
    threshold = body.get(THRESHOLD_FIELD)
    if threshold is None:
        raise UnusableRecordError(SKIP_MISSING_FIELD, THRESHOLD_FIELD, "missing")
    if type(threshold) not in (int, float) or not (
        math.isfinite(threshold) and 0 <= threshold <= 1
    ):
        raise UnusableRecordError(
            SKIP_INVALID_VALUE, THRESHOLD_FIELD, f"must be a number in [0, 1], got {threshold!r}"
        )
    flag = body.get(LABEL)
    if flag is None:
        flagged = is_flagged(event.fraud_probability, threshold)
    elif isinstance(flag, bool) or flag in (0, 1):
        flagged = bool(flag)
    else:
        raise UnusableRecordError(
            SKIP_INVALID_VALUE, LABEL, f"must be a boolean, got {str(flag)[:40]!r}"
        )
    return ScoredTransaction(
        transaction_id=event.transaction_id,
        model_version=event.model_version,
        time_micros=event.time_micros,
        score=event.fraud_probability,
        flagged=flagged,
        threshold=float(threshold),
    )


# ----------------------------------------------------------------------------------- state
def save_state(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically: a temporary file, synced, renamed over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = orjson.dumps(state)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def load_state(path: Path) -> dict[str, Any] | None:
    """The state in ``path``, or None when there is none.

    Raises:
        StateError: the file is not a state this monitor wrote.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        state = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise StateError(f"{path}: not JSON ({exc})") from None
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        raise StateError(f"{path}: version: expected {STATE_VERSION}, got {state.get('version')!r}")
    return state


# ----------------------------------------------------------------------------------- monitor
class PerformanceMonitor:
    """Reads both topics until stopped; see the module docstring for the delivery.

    Args:
        config: the settings.
        baselines: a model version's baseline, or None (e.g.
            :class:`~fraud_detection.monitoring.performance.BundleBaselines`).
        sinks: where results go; closed by :meth:`run` when it returns (share them through
            :class:`~fraud_detection.monitoring.sinks.LockedSink`).
        metrics: the Prometheus metrics (in a new registry by default).
    """

    def __init__(
        self,
        config: PerformanceMonitorConfig,
        baselines: BaselineLookup,
        sinks: Sequence[ResultSink],
        metrics: PerformanceMetrics | None = None,
    ) -> None:
        self.config = config
        self.baselines = baselines
        self.sinks = list(sinks)
        self.metrics = metrics if metrics is not None else PerformanceMetrics()
        self.tracker = PerformanceTracker(config.performance)
        self.offsets: dict[tuple[str, int], int] = {}
        self.records_consumed = 0
        self.labels_consumed = 0
        self.results_written = 0
        self.saves = 0
        self._dirty = False
        self._last_save = time.monotonic()
        self._last_refresh = -math.inf
        self._assigned: set[Any] = set()
        self._missing: set[str] = set()
        self._consumer: Any = None

    # ------------------------------------------------------------------------------- lifecycle
    def run(self, stop: threading.Event) -> None:
        """Read until ``stop`` is set; report, save the state, close everything, return.

        Raises:
            StateError: the state file cannot be used.
            SinkError: a result could not be written (the state was not saved after it).
            kafka.errors.KafkaError: the broker could not be reached.
        """
        from fraud_detection.streaming.kafka import make_consumer

        clean = False
        try:
            self._load()
            self._consumer = make_consumer(
                self.config.bootstrap,
                group_id=None,
                enable_auto_commit=False,
                max_poll_records=self.config.max_poll_records,
                client_id="fraud-detection-performance-monitor",
            )
            log.info(
                "performance monitor: joining %s with %s on %s; state in %s",
                self.config.labels_topic,
                self.config.mirror_topic,
                self.config.bootstrap,
                self.config.state_file,
            )
            while not stop.is_set():
                self._refresh()
                self._poll()
            self._report()
            clean = True
        finally:
            if clean:
                self._save()
            consumer, self._consumer = self._consumer, None
            if consumer is not None:
                try:
                    consumer.close(autocommit=False)
                except Exception as exc:
                    log.warning("closing the consumer: %s", exc)
            for sink in self.sinks:
                with contextlib.suppress(Exception):
                    sink.close()

    def _load(self) -> None:
        state = load_state(self.config.state_file)
        if state is not None:
            try:
                self.tracker = PerformanceTracker.from_state(
                    self.config.performance, state["tracker"]
                )
                self.offsets = {
                    (topic, int(partition)): int(offset)
                    for topic, partitions in state["offsets"].items()
                    for partition, offset in partitions.items()
                }
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                raise StateError(f"{self.config.state_file}: {exc}") from None
            log.info(
                "performance state loaded: %d windows, %d scores held, %d labels waiting",
                len(self.tracker.windows),
                self.tracker.join.scores_held,
                self.tracker.join.labels_waiting,
            )
        self._sync_metrics()

    def _save(self) -> None:
        offsets: dict[str, dict[str, int]] = {}
        for (topic, partition), offset in sorted(self.offsets.items()):
            offsets.setdefault(topic, {})[str(partition)] = offset
        save_state(
            self.config.state_file,
            {"version": STATE_VERSION, "offsets": offsets, "tracker": self.tracker.to_state()},
        )
        self._dirty = False
        self._last_save = time.monotonic()
        self.saves += 1

    # ------------------------------------------------------------------------------- reading
    def _refresh(self) -> None:
        """Assign every partition of both topics (again when they changed)."""
        interval = self.config.refresh_s if not self._missing else min(self.config.refresh_s, 2.0)
        if time.monotonic() - self._last_refresh < interval:
            return
        from kafka import TopicPartition

        self._last_refresh = time.monotonic()
        consumer = self._consumer
        wanted = set()
        missing = set()
        for topic in (self.config.mirror_topic, self.config.labels_topic):
            partitions = consumer.partitions_for_topic(topic)  # asks the broker if not cached
            if not partitions:
                missing.add(topic)
            wanted.update(TopicPartition(topic, p) for p in partitions or ())
        if missing and missing != self._missing:
            log.info("topics not found yet (looking again): %s", ", ".join(sorted(missing)))
        self._missing = missing
        if wanted == self._assigned:
            return
        consumer.assign(sorted(wanted))
        for tp in sorted(wanted):
            offset = self.offsets.get((tp.topic, tp.partition))
            if offset is None:
                consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, offset)
        self._assigned = wanted
        log.info("assigned %s", ", ".join(f"{tp.topic}-{tp.partition}" for tp in sorted(wanted)))

    def _poll(self) -> None:
        batch = self._consumer.poll(timeout_ms=int(self.config.poll_timeout_s * 1000))
        mirror = self.config.mirror_topic
        for tp, records in sorted(batch.items(), key=lambda item: item[0].topic != mirror):
            key = (tp.topic, tp.partition)
            for record in records:
                if record.offset < self.offsets.get(key, 0):
                    continue  # counted before (a fetch repeated after a seek)
                if tp.topic == mirror:
                    self._score(record)
                else:
                    self._label(record)
                self.offsets[key] = record.offset + 1
                self._dirty = True
            self.records_consumed += len(records)
        if batch:
            self._report()
        if self._dirty and time.monotonic() - self._last_save >= self.config.save_interval_s:
            self._save()

    def _score(self, record: Any) -> None:
        try:
            scored = scored_transaction(record.headers, record.value)
        except UnusableRecordError as exc:
            self.metrics.records_skipped.labels(reason=exc.reason).inc()
            log.debug("mirror record %d skipped: %s (%s)", record.offset, exc.reason, exc)
            return
        self.tracker.on_score(scored)

    def _label(self, record: Any) -> None:
        self.labels_consumed += 1
        self.metrics.labels_consumed.inc()
        try:
            label = parse_label(record.value)
        except LabelRecordError as exc:
            self.metrics.labels_skipped.labels(reason=exc.reason).inc()
            log.debug("label record %d skipped: %s (%s)", record.offset, exc.reason, exc)
            return
        self.tracker.on_label(label)

    # ------------------------------------------------------------------------------- reporting
    def _report(self) -> None:
        results = self.tracker.reports(self.baselines)
        if results:
            for sink in self.sinks:
                sink.write(results)
            self.results_written += len(results)
            for result in results:
                self.metrics.observe(result)
                _log_result(result)
        self._sync_metrics()

    def _sync_metrics(self) -> None:
        join = self.tracker.join
        self.metrics.sync_join(join.stats, join.scores_held, join.labels_waiting)


def _log_result(result: PerformanceResult) -> None:
    def show(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    verdict = "BELOW BASELINE" if result.below_baseline else "ok"
    log.info(
        "performance %s rev %d: coverage %.2f%s, recall %s, precision %s, F1 %s: %s",
        result.window_id,
        result.revision,
        result.coverage,
        "" if result.complete else " (incomplete)",
        show(result.recall),
        show(result.precision),
        show(result.f1),
        verdict,
    )


__all__ = [
    "STATE_FILE",
    "PerformanceMonitor",
    "PerformanceMonitorConfig",
    "StateError",
    "load_state",
    "save_state",
    "scored_transaction",
]
