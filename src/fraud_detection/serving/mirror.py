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
Its counts come back through shared memory.

Every drop is counted, by reason, in the Prometheus counter ``fraud_mirror_dropped_total`` (served
on the KServe ``/metrics`` endpoint) and in :attr:`KafkaMirror.stats`, and logged (the first drop,
then a summary at most every :attr:`MirrorConfig.log_interval_s`). Delivered records count in
``fraud_mirror_sent_total``. When the broker comes back, the producer reconnects and mirroring
resumes by itself.

Record format (what the drift monitor reads), CloudEvents binary mode over Kafka:

* headers ``ce_specversion=1.0``, ``ce_id`` (unique), ``ce_type=``
  :data:`CE_TYPE`, ``ce_source``, ``ce_inferenceservicename``, ``ce_time``, ``content-type=
  application/json``;
* no key (records spread over the partitions; the monitors need no per-card order, and
  kafka-python's pure-Python key hashing would cost the serving process CPU);
* value: JSON ``{"transaction_id", "timestamp", "features": {name: value}, "model_version",
  "fraud_probability", "is_fraud", "threshold"}``.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import multiprocessing
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import orjson

from fraud_detection.features import FEATURE_NAMES

log = logging.getLogger(__name__)

CE_TYPE = "org.kubeflow.serving.inference.request"
CE_SPECVERSION = "1.0"
DEFAULT_SOURCE = "urn:fraud-detection:transformer"
DEFAULT_INFERENCE_SERVICE = "fraud-detector"
DROP_QUEUE_FULL = "queue_full"
DROP_DELIVERY_FAILED = "delivery_failed"
DROP_SEND_FAILED = "send_failed"
DROP_STOPPED = "stopped"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


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
        reconnect_interval_s: pause between attempts to reach an unreachable broker.
        log_interval_s: at most one drop summary per interval in the logs.
        producer_priority: CPU priority of the producer process (:func:`set_priority`).
    """

    bootstrap: str
    topic: str
    inference_service: str = DEFAULT_INFERENCE_SERVICE
    source: str = DEFAULT_SOURCE
    queue_size: int = 10_000
    delivery_timeout_ms: int = 10_000
    request_timeout_ms: int = 3_000
    linger_ms: int = 20
    reconnect_interval_s: float = 1.0
    log_interval_s: float = 10.0
    producer_priority: str = "idle"


class _Metrics(NamedTuple):
    sent: Any
    dropped: Any
    queued: Any


_METRICS: _Metrics | None = None
_METRICS_LOCK = threading.Lock()


def mirror_metrics() -> _Metrics:
    """The process's Prometheus mirror metrics (created on first use, in the default registry)."""
    global _METRICS
    with _METRICS_LOCK:
        if _METRICS is None:
            from prometheus_client import Counter, Gauge

            _METRICS = _Metrics(
                sent=Counter(
                    "fraud_mirror_sent", "Scored transactions mirrored to Kafka (acknowledged)."
                ),
                dropped=Counter(
                    "fraud_mirror_dropped",
                    "Scored transactions not mirrored to Kafka, by reason.",
                    ["reason"],
                ),
                queued=Gauge("fraud_mirror_queue_depth", "Mirror records waiting to be produced."),
            )
        return _METRICS


def iso_timestamp(micros: int) -> str:
    """ISO-8601 UTC text of microseconds since the epoch."""
    moment = _EPOCH + timedelta(microseconds=micros)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


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


def record_headers(config: MirrorConfig, now: datetime | None = None) -> list[tuple[str, bytes]]:
    """The CloudEvents binary-mode headers of one record (a fresh ``ce_id`` each call)."""
    moment = now or datetime.now(UTC)
    return [
        ("ce_specversion", CE_SPECVERSION.encode()),
        ("ce_id", uuid.uuid4().hex.encode()),
        ("ce_type", CE_TYPE.encode()),
        ("ce_source", config.source.encode()),
        ("ce_inferenceservicename", config.inference_service.encode()),
        ("ce_time", moment.isoformat(timespec="milliseconds").replace("+00:00", "Z").encode()),
        ("content-type", b"application/json"),
    ]


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
        request_timeout_ms=config.request_timeout_ms,
        delivery_timeout_ms=max(
            config.delivery_timeout_ms, config.request_timeout_ms + config.linger_ms
        ),
        max_block_ms=1_000,
        reconnect_backoff_max_ms=1_000,
    )


@dataclass
class MirrorStats:
    """Counts of one mirror since it started."""

    offered: int = 0
    sent: int = 0
    dropped: int = 0
    dropped_by_reason: dict[str, int] | None = None


class KafkaMirror:
    """Bounded, asynchronous mirror of scored transactions to a Kafka topic.

    Use :meth:`start` once, :meth:`offer` per scored transaction (never blocks), :meth:`stop` at
    shutdown (flushes what it can within its timeout; the rest counts as dropped).
    """

    def __init__(
        self,
        config: MirrorConfig,
        producer_factory: Callable[[MirrorConfig], Any] = default_producer_factory,
    ) -> None:
        self.config = config
        self._factory = producer_factory
        self._queue: queue.Queue[MirrorEntry] = queue.Queue(maxsize=config.queue_size)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kafka-mirror", daemon=True)
        self._lock = threading.Lock()
        self._producer: Any = None
        self._metrics = mirror_metrics()
        self.offered = 0
        self.sent = 0
        self._dropped: dict[str, int] = {}
        self._unlogged_drops = 0
        self._last_drop_log = 0.0
        self.connected = False
        self._reported_unreachable = False

    # ------------------------------------------------------------------------ request path
    def offer(self, entry: MirrorEntry) -> bool:
        """Queue a scored transaction for mirroring; False (and counted) when it was dropped."""
        self.offered += 1
        try:
            self._queue.put_nowait(entry)
        except queue.Full:
            self._drop(DROP_QUEUE_FULL)
            return False
        return True

    # ------------------------------------------------------------------------ introspection
    @property
    def dropped(self) -> int:
        """Records dropped so far, all reasons."""
        with self._lock:
            return sum(self._dropped.values())

    def stats(self) -> MirrorStats:
        """A snapshot of the counts."""
        with self._lock:
            by_reason = dict(self._dropped)
            return MirrorStats(self.offered, self.sent, sum(by_reason.values()), by_reason)

    @property
    def pending(self) -> int:
        """Entries waiting in the queue."""
        return self._queue.qsize()

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
        """Stop: deliver what can be delivered within ``timeout_s``, count the rest as dropped."""
        deadline = time.monotonic() + timeout_s
        while self._queue.qsize() and self.connected and time.monotonic() < deadline:
            time.sleep(0.02)
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(max(deadline - time.monotonic(), 0.1))
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                producer.flush(timeout=max(deadline - time.monotonic(), 0.1))
            except Exception as exc:
                log.warning("mirror: flush at stop failed: %s", exc)
            try:
                producer.close(timeout=1)
            except Exception as exc:  # pragma: no cover - best effort at shutdown
                log.debug("mirror: close failed: %s", exc)
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
            self._drop(DROP_STOPPED)
        self._log_drops(force=True)

    # ------------------------------------------------------------------------ sender thread
    def _run(self) -> None:
        while not self._stopping.is_set():
            if self._producer is None and not self._connect():
                self._stopping.wait(self.config.reconnect_interval_s)
                continue
            try:
                entry = self._queue.get(timeout=0.2)
            except queue.Empty:
                self._metrics.queued.set(0)
                self._log_drops()
                continue
            self._send(entry)
            self._metrics.queued.set(self._queue.qsize())
            self._log_drops()

    def _connect(self) -> bool:
        try:
            self._producer = self._factory(self.config)
        except Exception as exc:
            if self.connected or not self._reported_unreachable:
                log.warning(
                    "mirror: cannot reach Kafka at %s (%s: %s); retrying every %.1f s",
                    self.config.bootstrap,
                    type(exc).__name__,
                    exc,
                    self.config.reconnect_interval_s,
                )
                self._reported_unreachable = True
            self.connected = False
            self._log_drops()
            return False
        self.connected = True
        self._reported_unreachable = False
        log.info("mirror: producing to %s on %s", self.config.topic, self.config.bootstrap)
        return True

    def _send(self, entry: MirrorEntry) -> None:
        try:
            future = self._producer.send(
                self.config.topic,
                value=record_value(entry),
                headers=record_headers(self.config),
            )
        except Exception as exc:
            self._drop(DROP_SEND_FAILED, exc)
            return
        future.add_callback(self._on_sent)
        future.add_errback(self._on_error)

    def _on_sent(self, _metadata: Any) -> None:
        with self._lock:
            self.sent += 1
        self._metrics.sent.inc()

    def _on_error(self, exc: BaseException) -> None:
        self._drop(DROP_DELIVERY_FAILED, exc)

    def _drop(self, reason: str, exc: BaseException | None = None) -> None:
        with self._lock:
            self._dropped[reason] = self._dropped.get(reason, 0) + 1
            self._unlogged_drops += 1
            first = sum(self._dropped.values()) == 1
        self._metrics.dropped.labels(reason=reason).inc()
        if first:
            detail = f" ({type(exc).__name__}: {exc})" if exc is not None else ""
            log.warning("mirror: dropped a record to %s: %s%s", self.config.topic, reason, detail)
            with self._lock:
                self._unlogged_drops = 0
                self._last_drop_log = time.monotonic()

    def _log_drops(self, force: bool = False) -> None:
        now = time.monotonic()
        with self._lock:
            if not self._unlogged_drops:
                return
            if not force and now - self._last_drop_log < self.config.log_interval_s:
                return
            count, self._unlogged_drops = self._unlogged_drops, 0
            self._last_drop_log = now
            totals = dict(self._dropped)
        log.warning(
            "mirror: dropped %d more record(s) to %s; totals %s", count, self.config.topic, totals
        )


# ------------------------------------------------------------------------- producer process
#: Order of the counters a producer process shares with its parent: sent, then drop reasons.
_SHARED_COUNTERS = ("sent", DROP_QUEUE_FULL, DROP_DELIVERY_FAILED, DROP_SEND_FAILED, DROP_STOPPED)
_BATCH = 512
#: How often the serving process hands buffered mirror entries to the producer process.
FORWARD_INTERVAL_S = 0.02
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


def _producer_process(config: MirrorConfig, connection: Any, counters: Any) -> None:
    """Child process: feed batches from the pipe into a :class:`KafkaMirror`; share its counts."""
    set_priority(config.producer_priority)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s"
    )
    mirror = KafkaMirror(config).start()
    stop_within = 5.0

    def publish() -> None:
        stats = mirror.stats()
        by_reason = stats.dropped_by_reason or {}
        counters[0] = stats.sent
        for index, reason in enumerate(_SHARED_COUNTERS[1:], start=1):
            counters[index] = by_reason.get(reason, 0)

    try:
        while True:
            try:
                ready = connection.poll(0.2)
                batch = connection.recv() if ready else []
            except (EOFError, OSError):
                break  # the serving process is gone
            if isinstance(batch, tuple):  # ("stop", seconds)
                stop_within = batch[1]
                break
            for entry in batch:
                mirror.offer(entry)
            publish()
    finally:
        mirror.stop(timeout_s=stop_within)
        publish()


class ProcessMirror:
    """A :class:`KafkaMirror` in a child process, fed through a pipe; same interface.

    The request path pays one append to a bounded in-process buffer (no lock, no wake-up); a
    forwarding thread wakes every :data:`FORWARD_INTERVAL_S` and sends what accumulated to the
    child in one batch, so the serving thread and the forwarder rarely compete for the GIL. A
    full buffer drops (counted here); the child's drops (delivery failures, its own full queue)
    come back through shared counters and are added to this process's Prometheus counters,
    which ``/metrics`` serves. A child that dies is restarted.
    """

    def __init__(self, config: MirrorConfig) -> None:
        self.config = config
        self._context = multiprocessing.get_context("spawn")
        self._buffer: collections.deque[MirrorEntry] = collections.deque()
        self._capacity = config.queue_size
        self._counters = self._context.Array("d", len(_SHARED_COUNTERS))
        self._seen = [0.0] * len(_SHARED_COUNTERS)
        self._base = [0.0] * len(_SHARED_COUNTERS)
        self._process: Any = None
        self._connection: Any = None
        self._thread = threading.Thread(target=self._forward, name="kafka-mirror-pipe", daemon=True)
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._metrics = mirror_metrics()
        self.offered = 0
        self._local_drops: dict[str, int] = {}

    def offer(self, entry: MirrorEntry) -> bool:
        """Queue a scored transaction for mirroring; False (and counted) when it was dropped."""
        self.offered += 1
        if len(self._buffer) >= self._capacity:
            self._drop_locally(DROP_QUEUE_FULL)
            return False
        self._buffer.append(entry)
        return True

    def _drop_locally(self, reason: str, count: int = 1) -> None:
        with self._lock:
            first = not self._local_drops
            self._local_drops[reason] = self._local_drops.get(reason, 0) + count
        self._metrics.dropped.labels(reason=reason).inc(count)
        if first:
            log.warning("mirror: dropped a record to %s: %s", self.config.topic, reason)

    @property
    def pending(self) -> int:
        """Entries waiting in this process's buffer."""
        return len(self._buffer)

    def stats(self) -> MirrorStats:
        """A snapshot of the counts (this process's and the producer process's)."""
        self._sync()
        with self._lock:
            by_reason = dict(self._local_drops)
            totals = [base + seen for base, seen in zip(self._base, self._seen, strict=True)]
        for reason, value in zip(_SHARED_COUNTERS[1:], totals[1:], strict=True):
            if value:
                by_reason[reason] = by_reason.get(reason, 0) + int(value)
        return MirrorStats(self.offered, int(totals[0]), sum(by_reason.values()), by_reason)

    @property
    def dropped(self) -> int:
        """Records dropped so far, all reasons."""
        return self.stats().dropped

    @property
    def started(self) -> bool:
        """Whether :meth:`start` was called."""
        return self._thread.ident is not None

    def start(self) -> ProcessMirror:
        """Start the producer process and the forwarding thread (once); returns ``self``."""
        if not self.started:
            self._spawn()
            self._thread.start()
        return self

    def _spawn(self) -> None:
        receiver, sender = self._context.Pipe(duplex=False)
        for index in range(len(_SHARED_COUNTERS)):
            self._counters[index] = 0.0
        self._process = self._context.Process(
            target=_producer_process,
            args=(self.config, receiver, self._counters),
            name="kafka-mirror-producer",
            daemon=True,
        )
        self._process.start()
        receiver.close()
        self._connection = sender

    def _sync(self) -> None:
        """Add the producer process's new counts to this process's Prometheus counters."""
        current = list(self._counters[:])
        with self._lock:
            deltas = [max(now - seen, 0.0) for now, seen in zip(current, self._seen, strict=True)]
            self._seen = current
        if deltas[0]:
            self._metrics.sent.inc(deltas[0])
        for reason, delta in zip(_SHARED_COUNTERS[1:], deltas[1:], strict=True):
            if delta:
                self._metrics.dropped.labels(reason=reason).inc(delta)

    def _restart(self) -> None:
        self._sync()
        with self._lock:
            self._base = [base + seen for base, seen in zip(self._base, self._seen, strict=True)]
            self._seen = [0.0] * len(_SHARED_COUNTERS)
        log.error("mirror: the producer process exited (%s); restarting it", self._process.exitcode)
        with contextlib.suppress(OSError):
            self._connection.close()
        self._spawn()

    def _take(self) -> list[MirrorEntry]:
        batch: list[MirrorEntry] = []
        with contextlib.suppress(IndexError):
            while len(batch) < _BATCH:
                batch.append(self._buffer.popleft())
        return batch

    def _forward(self) -> None:
        while not self._stopping.wait(FORWARD_INTERVAL_S):
            self._forward_once()

    def _forward_once(self) -> None:
        while batch := self._take():
            if not self._process.is_alive():
                self._restart()
            try:
                self._connection.send(batch)
            except (OSError, ValueError):
                self._drop_locally(DROP_SEND_FAILED, len(batch))
        self._metrics.queued.set(len(self._buffer))
        self._sync()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Hand over what is queued, let the producer flush, then stop it."""
        deadline = time.monotonic() + timeout_s
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(1.0)
        if self._process is not None:
            self._forward_once()  # hand over what is still buffered
        leftover = len(self._buffer)
        self._buffer.clear()
        if leftover:
            self._drop_locally(DROP_STOPPED, leftover)
        if self._process is not None:
            remaining = max(deadline - time.monotonic(), 0.5)
            with contextlib.suppress(OSError, ValueError):
                self._connection.send(("stop", 0.8 * remaining))
            self._process.join(remaining + 1.0)
            if self._process.is_alive():
                self._process.terminate()
                self._process.join(2.0)
            self._sync()
            with contextlib.suppress(OSError):
                self._connection.close()
