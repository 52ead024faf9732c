"""Mirror every scored transaction to Kafka, without ever making scoring wait for Kafka.

The transformer calls :meth:`KafkaMirror.offer` on the request path: a non-blocking put into a
bounded queue (~1 µs). A background thread turns each entry into a CloudEvents binary-mode Kafka
record and hands it to a kafka-python producer. Nothing on the request path touches the network,
so a broker that is down or slow costs scoring nothing:

* queue full (broker slow or down for long) → the record is dropped;
* no broker to connect to → records wait in the queue (and are dropped once it is full) while
  the thread retries the connection every :attr:`MirrorConfig.reconnect_interval_s`;
* the producer gives up on a record (``delivery_timeout_ms``) → dropped.

:class:`ProcessMirror` (what the transformer uses) runs that producer in a child process: the
serving process only buffers entries and a light thread pipes them over in batches, so the
producer's pure-Python work never holds the serving process's GIL, and the child runs at idle
CPU priority by default, so it never takes a core from a request either (:func:`set_priority`).
Its counts come back through shared memory. A child that dies is restarted.

Accounting: every offered record ends exactly once as *sent* (acknowledged by the broker) or
*dropped* under one reason; until then it is *pending* (in the serving process's buffer, in the
pipe, in the producer's queue, or in flight in the kafka-python producer). At any moment
``offered == sent + dropped + pending`` (:class:`MirrorStats`), and :meth:`KafkaMirror.stop` /
:meth:`ProcessMirror.stop` return only once ``pending == 0``, however slow the machine is. The
drop reasons:

* ``queue_full`` — a bounded buffer or queue was full when the record arrived;
* ``send_failed`` — the producer refused the record (no metadata in time, full buffer, bad
  record);
* ``delivery_failed`` — the producer gave up on the record before it ever sent it to a broker
  (delivery timeout while no broker was reachable, or the producer closed at stop);
* ``stopped`` — still queued, never handed to a producer, when the mirror stopped;
* ``producer_died`` — the producer process died (or could not be reached) before it handed the
  record to its producer;
* ``unconfirmed`` — the record had been sent to a broker but no acknowledgement came back: its
  delivery timeout passed while the broker stalled, the producer was closed at stop with the
  request outstanding, or the producer process died with it in flight (and, rarely, a broker
  answered with an error). Its fate cannot be known: the broker may still write it. This is
  the one reason whose records may nevertheless be in the topic; they count as dropped because
  they were not acknowledged, and a consumer recognises a copy of a transaction it already has
  by its ``ce_id``.

Records of every other reason never reach the topic. kafka-python fails a batch that is waiting
for the broker's answer when its delivery timeout passes, although the broker may write it
afterwards (a stalled broker did exactly that); only a batch the producer never sent is certainly
not written, so a failed record is classified by whether its batch was ever sent
(:func:`_reached_broker`).

Every drop is counted, by reason, in the Prometheus counter ``fraud_mirror_dropped_total`` (served
on the KServe ``/metrics`` endpoint) and in :meth:`KafkaMirror.stats`, and logged (the first drop,
then a summary at most every :attr:`MirrorConfig.log_interval_s`). Delivered records count in
``fraud_mirror_sent_total``; ``fraud_mirror_queue_depth`` shows the whole backlog (``pending``).
When the broker comes back, the producer reconnects and mirroring resumes by itself.

Record format (what the drift monitor reads), CloudEvents binary mode over Kafka:

* headers ``ce_specversion=1.0``, ``ce_id`` (:func:`event_id`: the same for every record of one
  transaction, so a consumer can drop a duplicate), ``ce_type=`` :data:`CE_TYPE`, ``ce_source``,
  ``ce_inferenceservicename``, ``ce_time``, ``content-type=application/json``;
* key: the transaction's ``card_id`` (UTF-8), so each card's records stay in one partition, in
  order; the key is hashed by the producer, i.e. in the producer process, not the serving one;
* batches gzip-compressed by default (:attr:`MirrorConfig.compression_type`; every Kafka
  client decompresses them);
* value: JSON ``{"transaction_id", "timestamp", "features": {name: value}, "model_version",
  "fraud_probability", "is_fraud", "threshold"}``.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import multiprocessing
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import orjson

from fraud_detection.features import FEATURE_NAMES
from fraud_detection.metrics_registry import created_once

log = logging.getLogger(__name__)

CE_TYPE = "org.kubeflow.serving.inference.request"
CE_SPECVERSION = "1.0"
#: Namespace of the name-based (version 5) UUIDs that :func:`event_id` derives. Never change it:
#: consumers match records of one transaction by the id.
EVENT_ID_NAMESPACE = uuid.UUID("ee7ac954-1396-4b57-9021-09de01cfc22a")
DEFAULT_SOURCE = "urn:fraud-detection:transformer"
DEFAULT_INFERENCE_SERVICE = "fraud-detector"
DROP_QUEUE_FULL = "queue_full"
DROP_SEND_FAILED = "send_failed"
DROP_DELIVERY_FAILED = "delivery_failed"
DROP_STOPPED = "stopped"
DROP_PRODUCER_DIED = "producer_died"
DROP_UNCONFIRMED = "unconfirmed"
#: Every reason a record can be dropped for (the ``reason`` label of ``fraud_mirror_dropped``).
DROP_REASONS = (
    DROP_QUEUE_FULL,
    DROP_SEND_FAILED,
    DROP_DELIVERY_FAILED,
    DROP_STOPPED,
    DROP_PRODUCER_DIED,
    DROP_UNCONFIRMED,
)
#: How long a stop waits, beyond its delivery budget, for a sender thread or producer process
#: to finish; only a hung one takes that long, and what it held is still counted.
STOP_GRACE_S = 10.0
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_POLL_S = 0.2
_BATCH = 512


class MirrorEntry(NamedTuple):
    """What the request path hands over: everything needed to build the record later."""

    transaction_id: str
    card_id: str
    timestamp_micros: int
    features: Sequence[float]
    fraud_probability: float
    is_fraud: bool
    threshold: float
    model_version: str


@dataclass(frozen=True)
class MirrorConfig:
    """Where and how to mirror.

    Attributes:
        bootstrap: Kafka bootstrap servers (``host:port[,...]``).
        topic: the topic to write to.
        inference_service: the ``ce_inferenceservicename`` header.
        source: the ``ce_source`` header.
        queue_size: bound of the in-process queue; beyond it records are dropped.
        delivery_timeout_ms: how long the producer tries to deliver one record.
        request_timeout_ms: one produce request's timeout.
        linger_ms: batching delay of the producer.
        compression_type: compression of the producer's batches (``gzip``, the one codec
            kafka-python has without extra packages; ``None``: none). Measured with ~1 KB mirror
            records: a third of the bytes on the wire, less than half the broker's memory per
            record, a third less producer CPU (less to checksum), the same acknowledgement
            latency.
        connect_timeout_ms: how long one attempt to reach the broker may take.
        reconnect_interval_s: pause between attempts to reach an unreachable broker.
        log_interval_s: at most one drop summary per interval in the logs.
        producer_priority: CPU priority of the producer process (:func:`set_priority`).
        log_format: the producer process's log format, the server's (``text`` or ``json``).
    """

    bootstrap: str
    topic: str
    inference_service: str = DEFAULT_INFERENCE_SERVICE
    source: str = DEFAULT_SOURCE
    queue_size: int = 10_000
    delivery_timeout_ms: int = 10_000
    request_timeout_ms: int = 3_000
    linger_ms: int = 20
    compression_type: str | None = "gzip"
    connect_timeout_ms: int = 3_000
    reconnect_interval_s: float = 1.0
    log_interval_s: float = 10.0
    producer_priority: str = "idle"
    log_format: str = "text"


@dataclass
class MirrorStats:
    """Counts of one mirror since it started; ``offered == sent + dropped + pending``.

    Attributes:
        offered: records offered.
        sent: records the broker acknowledged.
        dropped: records given up on, all reasons.
        dropped_by_reason: ``dropped`` by reason (see the module docstring).
        pending: records accepted and not resolved yet (buffered, queued, in the pipe to the
            producer process, or in flight in the producer); 0 once the mirror has stopped.
        in_flight: the part of ``pending`` handed to the Kafka producer.
    """

    offered: int = 0
    sent: int = 0
    dropped: int = 0
    dropped_by_reason: dict[str, int] = field(default_factory=dict)
    pending: int = 0
    in_flight: int = 0


def _snapshot(offered: int, sent: int, in_flight: int, by_reason: Mapping[str, int]) -> MirrorStats:
    """The :class:`MirrorStats` of these counts: ``pending`` is what is not resolved yet."""
    reasons = {reason: count for reason, count in by_reason.items() if count}
    dropped = sum(reasons.values())
    return MirrorStats(offered, sent, dropped, reasons, offered - sent - dropped, in_flight)


class _Metrics(NamedTuple):
    sent: Any
    dropped: Any
    queued: Any


@created_once
def mirror_metrics() -> _Metrics:
    """The process's Prometheus mirror metrics (created on first use, in the default registry)."""
    from prometheus_client import Counter, Gauge

    return _Metrics(
        sent=Counter("fraud_mirror_sent", "Scored transactions mirrored to Kafka (acknowledged)."),
        dropped=Counter(
            "fraud_mirror_dropped",
            "Scored transactions not mirrored to Kafka, by reason.",
            ["reason"],
        ),
        queued=Gauge(
            "fraud_mirror_queue_depth",
            "Mirror records accepted and not yet acknowledged or dropped "
            "(buffered, queued, or in flight).",
        ),
    )


class _MetricsExport:
    """Brings the Prometheus metrics up to a mirror's counts: adds what grew since last time.

    Counts only grow, so the highest value exported so far is kept per counter; a snapshot older
    than one already exported adds nothing.
    """

    def __init__(self) -> None:
        self._metrics = mirror_metrics()
        self._lock = threading.Lock()
        self._exported: dict[str | None, int] = {}

    def update(self, stats: MirrorStats) -> None:
        """Add the growth of ``stats`` over what was exported; set the backlog gauge."""
        increases: dict[str | None, int] = {}  # None: sent; a reason: dropped
        with self._lock:
            for reason, value in [(None, stats.sent), *stats.dropped_by_reason.items()]:
                increase = value - self._exported.get(reason, 0)
                if increase > 0:
                    increases[reason] = increase
                    self._exported[reason] = value
        for reason, increase in increases.items():
            if reason is None:
                self._metrics.sent.inc(increase)
            else:
                self._metrics.dropped.labels(reason=reason).inc(increase)
        self._metrics.queued.set(stats.pending)


class _DropLog:
    """Logs the first drop at once, then at most one summary per interval."""

    def __init__(self, topic: str, interval_s: float) -> None:
        self._topic = topic
        self._interval_s = interval_s
        self._lock = threading.Lock()
        self._seen = False
        self._unlogged = 0
        self._last = 0.0

    def dropped(self, reason: str, count: int, exc: BaseException | None = None) -> None:
        """Note ``count`` drops; the very first one is logged at once."""
        with self._lock:
            first, self._seen = not self._seen, True
            if first:
                self._unlogged += count - 1
                self._last = time.monotonic()
            else:
                self._unlogged += count
        if first:
            detail = f" ({type(exc).__name__}: {exc})" if exc is not None else ""
            log.warning("mirror: dropped a record to %s: %s%s", self._topic, reason, detail)

    def summarize(self, totals: Mapping[str, int], force: bool = False) -> None:
        """Log the drops since the last log line, when the interval has passed (or ``force``)."""
        now = time.monotonic()
        with self._lock:
            if not self._unlogged or (not force and now - self._last < self._interval_s):
                return
            count, self._unlogged, self._last = self._unlogged, 0, now
        log.warning(
            "mirror: dropped %d more record(s) to %s; totals %s", count, self._topic, dict(totals)
        )


def iso_timestamp(micros: int) -> str:
    """ISO-8601 UTC text of microseconds since the epoch."""
    moment = _EPOCH + timedelta(microseconds=micros)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def event_id(transaction_id: str) -> str:
    """The CloudEvents ``ce_id`` of a transaction's record: the same for every copy of it.

    A version-5 UUID of ``transaction_id`` in :data:`EVENT_ID_NAMESPACE`, as 32 hex digits.
    """
    return uuid.uuid5(EVENT_ID_NAMESPACE, transaction_id).hex


def record_value(entry: MirrorEntry, feature_names: Sequence[str] = FEATURE_NAMES) -> bytes:
    """The JSON value of an entry's record."""
    return orjson.dumps(
        {
            "transaction_id": entry.transaction_id,
            "timestamp": iso_timestamp(entry.timestamp_micros),
            "features": dict(zip(feature_names, entry.features, strict=True)),
            "model_version": entry.model_version,
            "fraud_probability": entry.fraud_probability,
            "is_fraud": entry.is_fraud,
            "threshold": entry.threshold,
        }
    )


def record_headers(
    config: MirrorConfig, ce_id: str, now: datetime | None = None
) -> list[tuple[str, bytes]]:
    """The CloudEvents binary-mode headers of one record; ``ce_id`` from :func:`event_id`."""
    moment = now or datetime.now(UTC)
    return [
        ("ce_specversion", CE_SPECVERSION.encode()),
        ("ce_id", ce_id.encode()),
        ("ce_type", CE_TYPE.encode()),
        ("ce_source", config.source.encode()),
        ("ce_inferenceservicename", config.inference_service.encode()),
        ("ce_time", moment.isoformat(timespec="milliseconds").replace("+00:00", "Z").encode()),
        ("content-type", b"application/json"),
    ]


def mirror_record(
    config: MirrorConfig, entry: MirrorEntry
) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """``(key, value, headers)`` of an entry's Kafka record, exactly as the mirror sends it."""
    return (
        entry.card_id.encode(),
        record_value(entry),
        record_headers(config, event_id(entry.transaction_id)),
    )


def default_producer_factory(config: MirrorConfig) -> Any:
    """A kafka-python producer tuned for telemetry: acks=1, not idempotent, bounded waits.

    Not idempotent on purpose: an idempotent producer's sequence numbers do not survive a broker
    that lost its state (the local broker keeps it in memory), and a duplicate or lost mirror
    record is tolerable where a stalled producer is not.
    """
    from fraud_detection.streaming.kafka import make_producer

    return make_producer(
        config.bootstrap,
        client_id="fraud-detection-mirror",
        acks=1,
        enable_idempotence=False,
        retries=3,
        linger_ms=config.linger_ms,
        compression_type=config.compression_type,
        request_timeout_ms=config.request_timeout_ms,
        delivery_timeout_ms=max(
            config.delivery_timeout_ms, config.request_timeout_ms + config.linger_ms
        ),
        max_block_ms=1_000,
        bootstrap_timeout_ms=config.connect_timeout_ms,
        reconnect_backoff_max_ms=1_000,
    )


def _reached_broker(producer: Any, future: Any) -> bool:
    """Whether the batch of a failed record had been sent to a broker, which may have written it.

    kafka-python completes a record's future before it forgets the record's batch, so the batch
    is found among the producer's incomplete ones; ``drained`` is set once the batch was taken
    for sending. This reads kafka-python's internals (3.0); when they cannot be read, the answer
    is the safe one: True.
    """
    produce_future = getattr(future, "_produce_future", None)
    incomplete = getattr(getattr(producer, "_accumulator", None), "_incomplete", None)
    if produce_future is None or incomplete is None:
        return True
    for batch in incomplete.all():
        if batch.produce_future is produce_future:
            return getattr(batch, "drained", True) is not None
    return True


def _close_producer(producer: Any, flush_s: float) -> None:
    """Deliver what ``producer`` holds within ``flush_s``, then close it and fail what is left.

    kafka-python's ``close(timeout)`` raises when its own flush times out and leaves the producer
    running (it would deliver records after they were counted), so an unfinished producer's
    sender thread is force-closed: it fails every incomplete batch, calling the records' errbacks.
    """
    try:
        producer.flush(timeout=flush_s)
    except Exception as exc:
        log.warning("mirror: %s: closing the producer with records still in it", exc)
    sender = getattr(producer, "_sender", None)
    if sender is not None and sender.is_alive():
        sender.force_close()
        sender.join(STOP_GRACE_S)
    try:
        producer.close(timeout=0)
    except Exception as exc:  # pragma: no cover - best effort at shutdown
        log.warning("mirror: closing the producer failed: %s", exc)


class _DropCounts:
    """Drop counting shared by both mirrors: ``_lock``, ``_dropped`` and ``_drop_log`` are set
    by the mirror's ``__init__``."""

    _lock: threading.Lock
    _dropped: dict[str, int]
    _drop_log: _DropLog

    def _drop(self, reason: str, count: int, exc: BaseException | None = None) -> None:
        """Count ``count`` records that were never in flight as dropped (and log it)."""
        if not count:
            return
        with self._lock:
            self._add_drops(reason, count)
        self._drop_log.dropped(reason, count, exc)

    def _add_drops(self, reason: str, count: int) -> None:
        """With the lock held."""
        if count:
            self._dropped[reason] = self._dropped.get(reason, 0) + count


class KafkaMirror(_DropCounts):
    """Bounded, asynchronous mirror of scored transactions to a Kafka topic.

    Use :meth:`start` once, :meth:`offer` per scored transaction (never blocks), :meth:`stop` at
    shutdown (delivers what it can within its timeout; every other record is counted as dropped).

    ``before_send`` is called by the sender thread once records are counted in flight and before
    they are handed to the producer: :class:`ProcessMirror`'s child publishes its counts there,
    so its parent never mistakes a record that may have left for one that did not.
    """

    def __init__(
        self,
        config: MirrorConfig,
        producer_factory: Callable[[MirrorConfig], Any] = default_producer_factory,
        before_send: Callable[[], None] | None = None,
    ) -> None:
        self.config = config
        self._factory = producer_factory
        self._before_send = before_send
        self._queue: queue.Queue[MirrorEntry] = queue.Queue(maxsize=config.queue_size)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kafka-mirror", daemon=True)
        self._lock = threading.Lock()
        self._producer: Any = None
        self._export = _MetricsExport()
        self._drop_log = _DropLog(config.topic, config.log_interval_s)
        self._offered = 0
        self._sent = 0
        self._dropped: dict[str, int] = {}
        self._in_flight: set[int] = set()
        self._tokens = itertools.count()
        self._closed = False  # stop() began: new offers are refused
        self._retired = False  # stop() took the producer: nothing more is handed to one
        self._last_failure: tuple[Any, bool] = (None, True)
        self.connected = False
        self._connect_failed = False

    # ------------------------------------------------------------------------ request path
    def offer(self, entry: MirrorEntry) -> bool:
        """Queue a scored transaction for mirroring; False (and counted) when it was dropped."""
        with self._lock:
            self._offered += 1
        if self._closed:
            self._drop(DROP_STOPPED, 1)
            return False
        try:
            self._queue.put_nowait(entry)
        except queue.Full:
            self._drop(DROP_QUEUE_FULL, 1)
            return False
        if self._retired:  # stop() swept the queue while this entry was on its way in
            self._discard_queue()
        return True

    # ------------------------------------------------------------------------ introspection
    def stats(self) -> MirrorStats:
        """A consistent snapshot of the counts (and the Prometheus metrics brought up to it)."""
        with self._lock:
            stats = _snapshot(self._offered, self._sent, len(self._in_flight), self._dropped)
        self._export.update(stats)
        return stats

    @property
    def dropped(self) -> int:
        """Records dropped so far, all reasons."""
        return self.stats().dropped

    @property
    def pending(self) -> int:
        """Records accepted and not resolved yet (queued or in flight)."""
        return self.stats().pending

    # ------------------------------------------------------------------------ lifecycle
    @property
    def started(self) -> bool:
        """Whether :meth:`start` was called."""
        return self._thread.ident is not None

    def start(self) -> KafkaMirror:
        """Start the background sender (once); returns ``self``."""
        if not self.started:
            self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Deliver what can be delivered within ``timeout_s``, then resolve every other record.

        Returns once nothing is pending: records still queued count as ``stopped``, those the
        producer never sent as ``delivery_failed``, those sent but not acknowledged as
        ``unconfirmed``. A sender thread in a bounded wait (connecting, waiting for metadata)
        can make the stop take longer than ``timeout_s``; the counts are exact either way.
        """
        deadline = time.monotonic() + timeout_s
        self._closed = True
        while (
            self._queue.unfinished_tasks  # queued, or taken and not yet handed to the producer
            and self._thread.is_alive()
            and not self._connect_failed
            and time.monotonic() < deadline
        ):
            time.sleep(0.02)
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(max(deadline - time.monotonic(), 0.0) + STOP_GRACE_S)
        with self._lock:
            self._retired = True
            producer, self._producer = self._producer, None
        if producer is not None:
            _close_producer(producer, max(deadline - time.monotonic(), 0.0))
        self._sweep()
        self._drop_log.summarize(self.stats().dropped_by_reason, force=True)

    def _sweep(self) -> None:
        """Resolve what the closed producer left unanswered, and what is still queued."""
        with self._lock:
            unanswered = len(self._in_flight)
            self._in_flight.clear()
            self._add_drops(DROP_UNCONFIRMED, unanswered)
        if unanswered:
            self._drop_log.dropped(DROP_UNCONFIRMED, unanswered)
        self._discard_queue()

    def _discard_queue(self) -> None:
        discarded = 0
        with contextlib.suppress(queue.Empty):
            while True:
                self._queue.get_nowait()
                discarded += 1
        self._drop(DROP_STOPPED, discarded)
        self._done(discarded)

    # ------------------------------------------------------------------------ sender thread
    def _run(self) -> None:
        while not self._stopping.is_set():
            if self._producer is None and not self._connect():
                self._stopping.wait(self.config.reconnect_interval_s)
                continue
            batch = self._take_batch()
            if batch:
                self._send_batch(batch)
            self._drop_log.summarize(self.stats().dropped_by_reason)

    def _connect(self) -> bool:
        try:
            producer = self._factory(self.config)
        except Exception as exc:
            if self.connected or not self._connect_failed:
                log.warning(
                    "mirror: cannot reach Kafka at %s (%s: %s); retrying every %.1f s",
                    self.config.bootstrap,
                    type(exc).__name__,
                    exc,
                    self.config.reconnect_interval_s,
                )
            self.connected = False
            self._connect_failed = True
            self._drop_log.summarize(self.stats().dropped_by_reason)
            return False
        with self._lock:
            retired = self._retired
            if not retired:
                self._producer = producer
        if retired:  # stop() ran out of patience while this thread was connecting
            _close_producer(producer, 0.0)
            return False
        self.connected = True
        self._connect_failed = False
        log.info("mirror: producing to %s on %s", self.config.topic, self.config.bootstrap)
        return True

    def _take_batch(self) -> list[tuple[int, MirrorEntry]]:
        """Up to a batch of queued entries, counted in flight (each with its token)."""
        try:
            entries = [self._queue.get(timeout=_POLL_S)]
        except queue.Empty:
            return []
        with contextlib.suppress(queue.Empty):
            while len(entries) < _BATCH:
                entries.append(self._queue.get_nowait())
        with self._lock:
            if not self._retired:
                tokens = [next(self._tokens) for _ in entries]
                self._in_flight.update(tokens)
                return list(zip(tokens, entries, strict=True))
        self._drop(DROP_STOPPED, len(entries))
        self._done(len(entries))
        return []

    def _send_batch(self, batch: list[tuple[int, MirrorEntry]]) -> None:
        """Hand a batch to the producer; once a stop gave up waiting (the broker is unreachable
        and each send may wait for metadata), the rest of the batch counts as ``stopped``."""
        if self._before_send is not None:
            self._before_send()
        producer = self._producer
        for token, entry in batch:
            if self._stopping.is_set():
                self._resolve(token, DROP_STOPPED)
            else:
                self._send(producer, token, entry)
            self._done(1)

    def _done(self, count: int) -> None:
        """Mark ``count`` entries taken from the queue as handed over (or dropped)."""
        for _ in range(count):
            self._queue.task_done()

    def _send(self, producer: Any, token: int, entry: MirrorEntry) -> None:
        try:
            key, value, headers = mirror_record(self.config, entry)
            future = producer.send(self.config.topic, key=key, value=value, headers=headers)
        except Exception as exc:
            self._resolve(token, DROP_SEND_FAILED, exc)
            return
        if future.is_done and future.failed():  # refused before it joined a batch
            self._resolve(token, DROP_SEND_FAILED, future.exception)
            return
        future.add_callback(self._on_sent, token)
        future.add_errback(self._on_error, token, producer, future)

    def _on_sent(self, token: int, _metadata: Any) -> None:
        self._resolve(token, None)

    def _on_error(self, token: int, producer: Any, future: Any, exc: BaseException) -> None:
        produce_future = getattr(future, "_produce_future", None)
        last_batch, reached = self._last_failure  # the records of one batch fail together
        if produce_future is None or produce_future is not last_batch:
            reached = _reached_broker(producer, future)
            self._last_failure = (produce_future, reached)
        self._resolve(token, DROP_UNCONFIRMED if reached else DROP_DELIVERY_FAILED, exc)

    # ------------------------------------------------------------------------ accounting
    def _resolve(self, token: int, reason: str | None, exc: BaseException | None = None) -> None:
        """Count an in-flight record as sent (``reason`` None) or dropped; only its first outcome
        counts (a record resolved at stop may still get a late answer from the producer)."""
        with self._lock:
            if token not in self._in_flight:
                return
            self._in_flight.remove(token)
            if reason is None:
                self._sent += 1
            else:
                self._add_drops(reason, 1)
        if reason is not None:
            self._drop_log.dropped(reason, 1, exc)


# ------------------------------------------------------------------------- producer process
#: The counts a producer process publishes to its parent, in this order (see :class:`_Shared`).
_SHARED_FIELDS = (
    "offered",
    "sent",
    "in_flight",
    DROP_QUEUE_FULL,
    DROP_SEND_FAILED,
    DROP_DELIVERY_FAILED,
    DROP_STOPPED,
    DROP_UNCONFIRMED,
)
#: How often the serving process hands buffered mirror entries to the producer process.
FORWARD_INTERVAL_S = 0.02
#: How long an orphaned producer process (its parent gone) tries to deliver what it holds.
_ORPHAN_STOP_S = 5.0
#: CPU priorities of the producer process (see :func:`set_priority`).
PRIORITIES = ("idle", "low", "normal")
_LOW_NICENESS = 10


def set_priority(priority: str) -> None:
    """Lower this process's CPU priority so that scoring goes first.

    ``idle`` (Linux ``SCHED_IDLE``): the producer runs only on CPU time nothing else wants and
    never preempts the servers; measured here, it keeps mirroring's cost on the p99 under
    0.3 ms, but a saturated CPU starves it and records are then dropped (and counted).
    ``low`` (nice 10) shares a contended CPU, delaying requests by up to a few ms at p99.
    ``normal`` changes nothing.
    """
    if priority not in PRIORITIES:
        raise ValueError(f"priority must be one of {PRIORITIES}, got {priority!r}")
    try:
        if priority == "idle":
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        elif priority == "low":
            os.nice(_LOW_NICENESS)
    except (OSError, AttributeError) as exc:  # not Linux, or not permitted
        log.warning("mirror: could not set the producer's priority to %s: %s", priority, exc)


def restore_priority(pid: int) -> bool:
    """Give process ``pid`` normal CPU priority again (undo :func:`set_priority`).

    Used when the producer must finish: a stop should not wait for idle CPU time that a busy
    machine never has. Leaving ``SCHED_IDLE`` or lowering a niceness needs ``CAP_SYS_NICE`` (or
    a permissive ``RLIMIT_NICE``); without it nothing changes and ``False`` is returned.
    """
    try:
        if os.sched_getscheduler(pid) == os.SCHED_IDLE:
            os.sched_setscheduler(pid, os.SCHED_OTHER, os.sched_param(0))
        if os.getpriority(os.PRIO_PROCESS, pid) > 0:
            os.setpriority(os.PRIO_PROCESS, pid, 0)
    except (OSError, AttributeError) as exc:  # gone, not permitted, or not Linux
        log.debug("mirror: could not restore the priority of pid %d: %s", pid, exc)
        return False
    return True


class _Shared:
    """Counts one producer process publishes to its parent, through shared memory.

    Two slots and a sequence number: the writer fills the slot the sequence does not point to,
    then advances the sequence, so a reader always gets one complete snapshot, even after the
    writer was killed in the middle of a write. One writer; any number of readers.
    """

    def __init__(self, array: Any) -> None:
        self.array = array
        self._width = len(_SHARED_FIELDS)

    @classmethod
    def allocate(cls, context: Any) -> _Shared:
        """Zeroed counts in memory shared with the processes of ``context``."""
        return cls(context.Array("q", 1 + 2 * len(_SHARED_FIELDS), lock=False))

    def _slot(self, sequence: int) -> slice:
        start = 1 + (sequence % 2) * self._width
        return slice(start, start + self._width)

    def publish(self, stats: MirrorStats) -> None:
        """Publish a snapshot of the producer's counts."""
        values = [stats.offered, stats.sent, stats.in_flight]
        values += [stats.dropped_by_reason.get(reason, 0) for reason in _SHARED_FIELDS[3:]]
        sequence = self.array[0] + 1
        self.array[self._slot(sequence)] = values
        self.array[0] = sequence

    def read(self) -> dict[str, int]:
        """The last complete snapshot, by name (:data:`_SHARED_FIELDS`)."""
        while True:
            sequence = self.array[0]
            values = self.array[self._slot(sequence)]
            if self.array[0] == sequence:
                return dict(zip(_SHARED_FIELDS, values, strict=True))


def _producer_process(config: MirrorConfig, connection: Any, shared_array: Any) -> None:
    """Child process: offer the batches from the pipe to a :class:`KafkaMirror`; publish its
    counts before each hand-over to the producer and after each batch; stop when asked."""
    from fraud_detection.serving.app import install_log_handler

    set_priority(config.producer_priority)
    install_log_handler(config.log_format, {"": logging.INFO})
    shared = _Shared(shared_array)
    publishing = threading.Lock()

    def publish() -> None:
        with publishing:  # snapshot and write together, so a newer one is never overwritten
            shared.publish(mirror.stats())

    mirror = KafkaMirror(config, before_send=publish)
    mirror.start()
    stop_within = _ORPHAN_STOP_S
    try:
        stop_within = _relay(connection, mirror, publish)
    finally:
        mirror.stop(timeout_s=stop_within)
        publish()


def _relay(connection: Any, mirror: KafkaMirror, publish: Callable[[], None]) -> float:
    """Offer what the parent sends until it asks to stop; the delivery budget it gives."""
    while True:
        try:
            message = connection.recv() if connection.poll(_POLL_S) else []
        except (EOFError, OSError):
            log.warning("mirror: the serving process is gone; stopping")
            return _ORPHAN_STOP_S
        if isinstance(message, tuple):  # ("stop", seconds)
            return float(message[1])
        for entry in message:
            mirror.offer(entry)
        publish()


@dataclass
class _Child:
    """One producer process and what this process knows of it."""

    process: Any
    connection: Any
    shared: _Shared
    forwarded: int = 0  # records written to its pipe
    killed: bool = False  # by the stop's watchdog
    settled_as: str | None = None  # the reason its unresolved records were counted under


class ProcessMirror(_DropCounts):
    """A :class:`KafkaMirror` in a child process, fed through a pipe; same interface.

    The request path pays one append to a bounded in-process buffer (no lock, no wake-up); a
    forwarding thread wakes every :data:`FORWARD_INTERVAL_S` and sends what accumulated to the
    child in one batch, so the serving thread and the forwarder rarely compete for the GIL. A
    full buffer drops (counted here). The child's counts come back through shared memory
    (:class:`_Shared`) and are added to this process's Prometheus metrics, which ``/metrics``
    serves.

    A child that dies is restarted. Its last published counts are kept; what it had been given
    and had not resolved is counted here: records it had handed to its producer as
    ``unconfirmed``, the others as ``producer_died``. It publishes before each hand-over, so a
    record that may have reached the broker is never counted as ``producer_died``.
    """

    def __init__(self, config: MirrorConfig) -> None:
        self.config = config
        self._context = multiprocessing.get_context("spawn")
        self._buffer: collections.deque[MirrorEntry] = collections.deque()
        self._capacity = config.queue_size
        self._child: _Child | None = None
        self._thread = threading.Thread(target=self._forward, name="kafka-mirror-pipe", daemon=True)
        self._stopping = threading.Event()
        self._closed = False
        self._lock = threading.Lock()
        self._export = _MetricsExport()
        self._drop_log = _DropLog(config.topic, config.log_interval_s)
        self._offered = 0
        self._sent = 0  # by children that ended
        self._dropped: dict[str, int] = {}  # here, and by children that ended

    # ------------------------------------------------------------------------ request path
    def offer(self, entry: MirrorEntry) -> bool:
        """Queue a scored transaction for mirroring; False (and counted) when it was dropped."""
        self._offered += 1
        if self._closed or len(self._buffer) >= self._capacity:
            self._drop(DROP_STOPPED if self._closed else DROP_QUEUE_FULL, 1)
            return False
        self._buffer.append(entry)
        if self._closed:  # stop() emptied the buffer while this entry was on its way in
            self._discard_buffer()
        return True

    # ------------------------------------------------------------------------ introspection
    def stats(self) -> MirrorStats:
        """A snapshot of the counts, this process's and the producer process's (and the
        Prometheus metrics brought up to it)."""
        with self._lock:
            sent, by_reason, in_flight = self._sent, dict(self._dropped), 0
            child = self._child
            if child is not None and child.settled_as is None:
                counts = child.shared.read()
                sent += counts["sent"]
                in_flight = counts["in_flight"]
                for reason in _SHARED_FIELDS[3:]:
                    by_reason[reason] = by_reason.get(reason, 0) + counts[reason]
        stats = _snapshot(self._offered, sent, in_flight, by_reason)
        self._export.update(stats)
        return stats

    @property
    def dropped(self) -> int:
        """Records dropped so far, all reasons."""
        return self.stats().dropped

    @property
    def pending(self) -> int:
        """Records accepted and not resolved yet, here, in the pipe or in the producer process."""
        return self.stats().pending

    @property
    def buffered(self) -> int:
        """Entries in this process's buffer, not yet handed to the producer process."""
        return len(self._buffer)

    @property
    def producer_pid(self) -> int | None:
        """The current producer process's pid (None before :meth:`start`)."""
        return None if self._child is None else self._child.process.pid

    # ------------------------------------------------------------------------ lifecycle
    @property
    def started(self) -> bool:
        """Whether :meth:`start` was called."""
        return self._thread.ident is not None

    def start(self) -> ProcessMirror:
        """Start the producer process and the forwarding thread (once); returns ``self``."""
        if not self.started:
            self._child = self._spawn()
            self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Hand over what is buffered, let the producer deliver what it can within ``timeout_s``
        and stop; returns once every offered record is counted as sent or dropped.

        The producer first gets normal CPU priority back where that is permitted (see
        :func:`restore_priority`), so a saturated CPU does not starve its last deliveries. A
        producer process that has not exited :data:`STOP_GRACE_S` after ``timeout_s`` is
        killed; what it had not resolved is then counted as ``stopped`` (``unconfirmed`` for
        what it had handed to its producer).
        """
        deadline = time.monotonic() + timeout_s
        self._closed = True
        self._stopping.set()
        watchdog = threading.Timer(timeout_s + STOP_GRACE_S, self._kill_child)
        watchdog.daemon = True
        watchdog.start()
        child: _Child | None = None
        try:
            if self._thread.is_alive():
                self._thread.join()  # a send blocked on a hung child ends when it is killed
            child = self._child
            if child is not None and child.settled_as is None:
                restore_priority(child.process.pid)  # a stop does not wait for idle CPU time
                self._hand_over(child)
                with contextlib.suppress(OSError):
                    child.connection.send(("stop", max(deadline - time.monotonic(), 0.0)))
                child.process.join()  # the watchdog kills a child that does not exit
        finally:
            watchdog.cancel()
        if child is not None:
            self._settle(child, DROP_STOPPED if child.killed else DROP_PRODUCER_DIED)
            with contextlib.suppress(OSError):
                child.connection.close()
        self._discard_buffer()
        self._drop_log.summarize(self.stats().dropped_by_reason, force=True)

    # ------------------------------------------------------------------------ forwarding thread
    def _forward(self) -> None:
        while not self._stopping.wait(FORWARD_INTERVAL_S):
            child = self._child
            if child is None:
                continue
            if not child.process.is_alive():
                child = self._replace(child)
            self._hand_over(child)
            self._drop_log.summarize(self.stats().dropped_by_reason)

    def _spawn(self) -> _Child:
        receiver, sender = self._context.Pipe(duplex=False)
        shared = _Shared.allocate(self._context)
        process = self._context.Process(
            target=_producer_process,
            args=(self.config, receiver, shared.array),
            name="kafka-mirror-producer",
            daemon=True,
        )
        process.start()
        receiver.close()
        return _Child(process, sender, shared)

    def _replace(self, dead: _Child) -> _Child:
        """Count what a dead producer process left unresolved and start another one."""
        dead.process.join()
        log.error("mirror: the producer process exited (%s); restarting it", dead.process.exitcode)
        self._settle(dead, DROP_PRODUCER_DIED)
        with contextlib.suppress(OSError):
            dead.connection.close()
        child = self._spawn()
        self._child = child
        return child

    def _hand_over(self, child: _Child) -> None:
        """Send the buffered entries to ``child`` in batches; count what could not be sent."""
        while batch := self._take():
            try:
                child.connection.send(batch)
            except OSError as exc:  # the pipe is broken: the child is gone
                self._drop(DROP_PRODUCER_DIED, len(batch), exc)
                continue
            except Exception as exc:
                log.error("mirror: could not hand entries to the producer process: %s", exc)
                self._drop(DROP_SEND_FAILED, len(batch), exc)
                continue
            with self._lock:
                settled_as = child.settled_as
                if settled_as is None:
                    child.forwarded += len(batch)
            if settled_as is not None:  # settled while the batch was on its way
                self._drop(settled_as, len(batch))

    def _take(self) -> list[MirrorEntry]:
        batch: list[MirrorEntry] = []
        with contextlib.suppress(IndexError):
            while len(batch) < _BATCH:
                batch.append(self._buffer.popleft())
        return batch

    # ------------------------------------------------------------------------ accounting
    def _settle(self, child: _Child, reason: str) -> None:
        """Fold an exited producer process's final counts into this process's, once.

        What it had handed to its producer and not resolved counts as ``unconfirmed``; what it
        was sent and never handed over (in the pipe or its queue) counts under ``reason``.
        """
        counts = child.shared.read()
        with self._lock:
            if child.settled_as is not None:
                return
            child.settled_as = reason
            resolved = counts["sent"] + sum(counts[name] for name in _SHARED_FIELDS[3:])
            unreached = child.forwarded - resolved - counts["in_flight"]
            self._sent += counts["sent"]
            for name in _SHARED_FIELDS[3:]:
                self._add_drops(name, counts[name])
            self._add_drops(DROP_UNCONFIRMED, counts["in_flight"])
            self._add_drops(reason, max(unreached, 0))
        if unreached < 0:
            log.error("mirror: the producer process reported %d more records", -unreached)
        if counts["in_flight"]:
            self._drop_log.dropped(DROP_UNCONFIRMED, counts["in_flight"])
        if unreached > 0:
            self._drop_log.dropped(reason, unreached)

    def _kill_child(self) -> None:
        child = self._child
        if child is not None and child.process.is_alive():
            log.error("mirror: the producer process did not stop in time; killing it")
            child.killed = True
            child.process.kill()

    def _discard_buffer(self) -> None:
        discarded = 0
        with contextlib.suppress(IndexError):
            while True:
                self._buffer.popleft()
                discarded += 1
        self._drop(DROP_STOPPED, discarded)
