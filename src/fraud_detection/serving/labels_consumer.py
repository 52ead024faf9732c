"""The transformer's labels consumer: keeps merchant risk current from the labels topic.

A background thread of the transformer (off the request path) reads the labels topic
(:attr:`~fraud_detection.streaming.kafka.Topics.labels`, records defined in
:mod:`fraud_detection.streaming.labels`) and applies each label to the live feature state
(:meth:`~fraud_detection.serving.live_state.LiveState.apply_labels`), a small batch at a time
under the state's lock, so a request never waits for more than one small batch.

* **Idempotent**: a label counts a fraudulent transaction id at most once
  (``OnlineFeatureState.record_label``), so reading a label twice (Kafka delivers at least once;
  a restart re-reads) changes nothing, and the consumer group starts from the earliest offset
  when it has none.
* **Offsets follow checkpoints**: the group's offsets are committed only up to the labels a
  written checkpoint includes (``Checkpointer.label_offsets``); without checkpoints nothing is
  committed, so a restart, which begins from the bundle's snapshot, re-reads every label.
* **Never crashes on a record**: an unusable one is counted under its
  :attr:`~fraud_detection.streaming.labels.LabelRecordError.reason`; a label whose merchant and
  transaction time are neither in the record nor remembered (the retry map) as
  ``unknown_transaction``; one older than any window as ``too_old``
  (:mod:`fraud_detection.serving.metrics`, ``fraud_labels_*``).
* **A broker that is down never stops serving**: the thread logs it and retries every
  :attr:`LabelsConfig.reconnect_interval_s`.

Every replica of the transformer holds its own state, so each needs every label: give each
replica its own consumer group (:attr:`LabelsConfig.group_id`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fraud_detection.serving.live_state import LabelOffsets, LiveState
from fraud_detection.serving.metrics import count_labels, labels_metrics

log = logging.getLogger(__name__)

DEFAULT_GROUP_ID = "fraud-transformer-labels"


@dataclass(frozen=True)
class LabelsConfig:
    """Where and how the labels consumer reads.

    Attributes:
        bootstrap: Kafka bootstrap servers.
        topic: the labels topic.
        group_id: the consumer group (one per transformer replica).
        poll_records: most records taken per poll.
        apply_batch: most labels applied per hold of the live state's lock.
        reconnect_interval_s: seconds between attempts to reach an absent broker.
        lag_interval_s: seconds between updates of the lag gauge.
    """

    bootstrap: str
    topic: str
    group_id: str = DEFAULT_GROUP_ID
    poll_records: int = 500
    apply_batch: int = 100
    reconnect_interval_s: float = 2.0
    lag_interval_s: float = 1.0

    def __post_init__(self) -> None:
        for name in ("poll_records", "apply_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not self.reconnect_interval_s > 0:
            raise ValueError("reconnect_interval_s must be positive")


def default_consumer_factory(config: LabelsConfig) -> Any:
    """A kafka-python consumer in ``config``'s group, subscribed to its topic, manual commits."""
    from fraud_detection.streaming.kafka import BrokerUnavailableError, make_consumer, tcp_reachable

    if not tcp_reachable(config.bootstrap):  # fail fast, without kafka-python's connect noise
        raise BrokerUnavailableError(f"no TCP listener at {config.bootstrap}")
    return make_consumer(
        config.bootstrap,
        config.topic,
        group_id=config.group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        metadata_max_age_ms=5_000,  # notice a labels topic created after the start
        reconnect_backoff_max_ms=1_000,
        bootstrap_timeout_ms=5_000,
    )


class LabelsConsumer:
    """Reads the labels topic in a background thread and applies it to the live state.

    Args:
        config: where to read.
        live: returns the live state to apply labels to (None: not loaded yet; wait).
        committable: returns the offsets a written checkpoint includes (safe to commit), or
            None when there are no checkpoints (then nothing is committed).
        consumer_factory: makes the Kafka consumer (raises while the broker is unreachable).
    """

    def __init__(
        self,
        config: LabelsConfig,
        live: Callable[[], LiveState | None],
        committable: Callable[[], Mapping[tuple[str, int], int] | None] = lambda: None,
        consumer_factory: Callable[[LabelsConfig], Any] = default_consumer_factory,
    ) -> None:
        self.config = config
        self._live = live
        self._committable = committable
        self._factory = consumer_factory
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="labels-consumer", daemon=True)
        self._consumer: Any = None
        self._committed: LabelOffsets = {}
        self._lag_at = 0.0
        self._unreachable = False
        self._metrics = labels_metrics()
        self.outcomes: Counter[str] = Counter()
        self.connected = False

    # ------------------------------------------------------------------ lifecycle
    @property
    def started(self) -> bool:
        """Whether :meth:`start` was called."""
        return self._thread.ident is not None

    def start(self) -> LabelsConsumer:
        """Start the background thread (once); returns ``self``."""
        if not self.started:
            self._thread.start()
        return self

    def halt(self, timeout_s: float = 10.0) -> None:
        """Stop reading and applying labels (the consumer stays open for :meth:`close`)."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def close(self) -> None:
        """Commit what the newest checkpoint includes, then close the consumer."""
        self.halt()
        consumer, self._consumer = self._consumer, None
        if consumer is None:
            return
        try:
            self._commit(consumer)
        finally:
            try:
                consumer.close(autocommit=False)
            except Exception as exc:  # closing must never fail a stop
                log.warning("labels: closing the consumer failed: %s", exc)

    def stop(self) -> None:
        """:meth:`halt` then :meth:`close`."""
        self.halt()
        self.close()

    # ------------------------------------------------------------------ thread
    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                if self._consumer is None and not self._connect():
                    self._stopping.wait(self.config.reconnect_interval_s)
                    continue
                self._poll_once(self._consumer)
            except Exception as exc:  # the thread must outlive any failure; retry afresh
                log.error("labels: consumer failed (%s: %s); reconnecting", type(exc).__name__, exc)
                self._drop_consumer()
                self._stopping.wait(self.config.reconnect_interval_s)

    def _connect(self) -> bool:
        if self._live() is None:
            return False
        try:
            self._consumer = self._factory(self.config)
        except Exception as exc:
            if not self._unreachable:
                log.warning(
                    "labels: cannot reach Kafka at %s (%s: %s); retrying every %.1f s",
                    self.config.bootstrap,
                    type(exc).__name__,
                    exc,
                    self.config.reconnect_interval_s,
                )
            self._unreachable = True
            return False
        self._unreachable = False
        self.connected = True
        log.info(
            "labels: reading %s on %s (group %s)",
            self.config.topic,
            self.config.bootstrap,
            self.config.group_id,
        )
        return True

    def _drop_consumer(self) -> None:
        consumer, self._consumer = self._consumer, None
        self.connected = False
        if consumer is not None:
            try:
                consumer.close(autocommit=False)
            except Exception as exc:
                log.debug("labels: closing a failed consumer: %s", exc)

    def _poll_once(self, consumer: Any) -> None:
        batch = consumer.poll(timeout_ms=500, max_records=self.config.poll_records)
        if batch:
            self.apply(
                [record.value for records in batch.values() for record in records],
                {
                    (tp.topic, tp.partition): records[-1].offset + 1
                    for tp, records in batch.items()
                    if records
                },
            )
        self._commit(consumer)
        self._report_lag(consumer)

    # ------------------------------------------------------------------ applying
    def apply(
        self, values: list[bytes | None], offsets: Mapping[tuple[str, int], int] | None = None
    ) -> Counter[str]:
        """Parse record values and apply their labels in small batches; returns the outcomes.

        ``offsets`` are recorded with the last batch (the positions after these records).
        """
        from fraud_detection.streaming.labels import LabelRecordError, parse_label

        live = self._live()
        if live is None:
            raise RuntimeError("the live state is not loaded")
        outcomes: Counter[str] = Counter()
        labels = []
        for value in values:
            try:
                labels.append(parse_label(value))
            except LabelRecordError as exc:
                outcomes[exc.reason] += 1
                log.debug("labels: skipping a record (%s): %s", exc.reason, exc)
        size = self.config.apply_batch
        for start in range(0, max(len(labels), 1), size):
            last = start + size >= len(labels)
            outcomes.update(
                live.apply_labels(labels[start : start + size], offsets if last else None)
            )
        count_labels(outcomes)
        self.outcomes.update(outcomes)
        return outcomes

    def _commit(self, consumer: Any) -> None:
        """Commit the offsets the newest checkpoint includes, when they moved."""
        offsets = self._committable()
        if not offsets:
            return
        wanted = {key: value for key, value in offsets.items() if key[0] == self.config.topic}
        if not wanted or all(self._committed.get(key) == value for key, value in wanted.items()):
            return
        from kafka import TopicPartition
        from kafka.structs import OffsetAndMetadata

        try:
            consumer.commit(
                {
                    TopicPartition(topic, partition): OffsetAndMetadata(offset, "", -1)
                    for (topic, partition), offset in wanted.items()
                }
            )
        except Exception as exc:  # committed next time; labels are idempotent anyway
            log.warning("labels: committing offsets failed: %s", exc)
            return
        self._committed.update(wanted)

    def _report_lag(self, consumer: Any) -> None:
        now = time.monotonic()
        if now - self._lag_at < self.config.lag_interval_s:
            return
        self._lag_at = now
        lag = 0
        for tp in consumer.assignment():
            highwater = consumer.highwater(tp)
            if highwater is None:
                continue
            lag += max(highwater - consumer.position(tp), 0)
        self._metrics.lag.set(lag)


def labels_config_from_args(args: Any, bootstrap: str | None) -> LabelsConfig | None:
    """The consumer the transformer's arguments ask for, or None.

    ``--labels`` defaults to on when a Kafka bootstrap is configured (like the mirror);
    ``--labels`` without a bootstrap is an error.
    """
    from fraud_detection.streaming.kafka import Topics

    wanted = args.labels
    if wanted is None:
        wanted = bootstrap is not None
    if not wanted:
        return None
    if bootstrap is None:
        raise ValueError("--labels needs Kafka: give --kafka_bootstrap or $FRAUD_KAFKA_BOOTSTRAP")
    return LabelsConfig(
        bootstrap=bootstrap,
        topic=args.labels_topic or Topics.from_env().labels,
        group_id=args.labels_group,
    )
