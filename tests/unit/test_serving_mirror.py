"""The Kafka mirror: record format, key and CloudEvents id, and its accounting
(``offered == sent + dropped + pending``, nothing pending after a stop) with fake producers, with
no broker at all, and against a real local broker (tests marked ``integration``), including a
producer process that is killed and a broker that stalls."""

from __future__ import annotations

import os
import signal
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from prometheus_client import REGISTRY

from fraud_detection.features import FEATURE_NAMES
from fraud_detection.serving.mirror import (
    CE_TYPE,
    DROP_PRODUCER_DIED,
    DROP_QUEUE_FULL,
    DROP_REASONS,
    DROP_SEND_FAILED,
    DROP_STOPPED,
    DROP_UNCONFIRMED,
    KafkaMirror,
    MirrorConfig,
    MirrorEntry,
    MirrorStats,
    ProcessMirror,
    event_id,
    iso_timestamp,
    record_headers,
    record_value,
)
from support.waiting import DEADLINE_S, wait_until

ENTRY = MirrorEntry(
    "tx-1", "card-1", 1_772_359_200_000_000, [0.5] * len(FEATURE_NAMES), 0.25, True, 0.1, "v1"
)
NOBODY_LISTENS = "127.0.0.1:9"


def entries(count: int, cards: int = 7) -> list[MirrorEntry]:
    """``count`` entries with unique transaction ids, spread over ``cards`` cards."""
    tag = uuid.uuid4().hex[:8]
    return [
        ENTRY._replace(transaction_id=f"{tag}-{i}", card_id=f"card-{tag}-{i % cards}")
        for i in range(count)
    ]


def dropped_metric(reason: str) -> float:
    return REGISTRY.get_sample_value("fraud_mirror_dropped_total", {"reason": reason}) or 0.0


def queue_depth() -> float | None:
    return REGISTRY.get_sample_value("fraud_mirror_queue_depth")


def assert_settled(stats: MirrorStats, offered: int) -> None:
    """Everything offered was resolved: sent, or dropped under a known reason."""
    assert stats.offered == offered, stats
    assert (stats.pending, stats.in_flight) == (0, 0), stats
    assert stats.sent + stats.dropped == stats.offered, stats
    assert stats.dropped == sum(stats.dropped_by_reason.values()), stats
    assert set(stats.dropped_by_reason) <= set(DROP_REASONS), stats


# ----------------------------------------------------------------------------- record format
def test_record_value_carries_features_version_and_score() -> None:
    value = orjson.loads(record_value(ENTRY))
    assert value == {
        "transaction_id": "tx-1",
        "timestamp": "2026-03-01T10:00:00.000000Z",
        "features": dict.fromkeys(FEATURE_NAMES, 0.5),
        "model_version": "v1",
        "fraud_probability": 0.25,
        "is_fraud": True,
        "threshold": 0.1,
    }


def test_record_headers_are_cloudevents_binary_mode() -> None:
    config = MirrorConfig(bootstrap="x", topic="t", inference_service="isvc", source="src")
    now = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
    headers = record_headers(config, event_id("tx-1"), now)
    assert [name for name, _ in headers] == [
        "ce_specversion",
        "ce_id",
        "ce_type",
        "ce_source",
        "ce_inferenceservicename",
        "ce_time",
        "content-type",
    ]
    values = dict(headers)
    assert values["ce_type"] == CE_TYPE.encode() == b"org.kubeflow.serving.inference.request"
    assert values["ce_specversion"] == b"1.0"
    assert values["ce_id"] == event_id("tx-1").encode()
    assert values["ce_source"] == b"src"
    assert values["ce_inferenceservicename"] == b"isvc"
    assert values["ce_time"] == b"2026-03-01T10:00:00.000Z"
    assert values["content-type"] == b"application/json"


def test_event_id_is_the_same_for_a_transaction_and_differs_between_transactions() -> None:
    first = event_id("tx-1")
    assert first == event_id("tx-1")
    assert first != event_id("tx-2")
    assert first != event_id("tx-1 ")
    parsed = uuid.UUID(hex=first)
    assert parsed.version == 5 and parsed.hex == first


def test_iso_timestamp() -> None:
    assert iso_timestamp(0) == "1970-01-01T00:00:00.000000Z"


# ----------------------------------------------------------------------------- fake producers
class FakeFuture:
    """Resolves like kafka-python's future: callbacks run at once when it is already done.

    ``outcomes`` are applied in order: None succeeds, an exception fails; an empty list never
    resolves. Callbacks registered later still see every outcome (to model a late answer).
    """

    def __init__(self, outcomes: list[Exception | None]) -> None:
        self.outcomes = outcomes
        self.callbacks: list[Callable[[Any], None]] = []
        self.errbacks: list[Callable[[Any], None]] = []

    is_done = False

    def failed(self) -> bool:
        return False

    def add_callback(self, callback: Callable[..., None], *args: Any) -> FakeFuture:
        self.callbacks.append(lambda value: callback(*args, value))
        for outcome in self.outcomes:
            if outcome is None:
                self.callbacks[-1](None)
        return self

    def add_errback(self, errback: Callable[..., None], *args: Any) -> FakeFuture:
        self.errbacks.append(lambda exc: errback(*args, exc))
        for outcome in self.outcomes:
            if outcome is not None:
                self.errbacks[-1](outcome)
        return self


class FakeProducer:
    """Accepts records (recording them), fails every ``fail_every``-th send, and gives each
    future the ``outcomes``."""

    def __init__(self, outcomes: list[Exception | None], fail_every: int = 0) -> None:
        self.outcomes = outcomes
        self.fail_every = fail_every
        self.records: list[dict[str, Any]] = []
        self.futures: list[FakeFuture] = []
        self.calls = 0
        self.closed = False
        self.lock = threading.Lock()

    def send(self, topic: str, value: bytes, headers: list, key: bytes | None = None) -> FakeFuture:
        with self.lock:
            self.calls += 1
            if self.fail_every and self.calls % self.fail_every == 0:
                raise RuntimeError("buffer exhausted")
            self.records.append({"topic": topic, "value": value, "key": key, "headers": headers})
            future = FakeFuture(list(self.outcomes))
            self.futures.append(future)
        return future

    def flush(self, timeout: float | None = None) -> None:
        pass

    def close(self, timeout: float | None = None) -> None:
        self.closed = True


def fake_mirror(producer: FakeProducer, **config: Any) -> KafkaMirror:
    return KafkaMirror(
        MirrorConfig(bootstrap="x", topic="mirror", **config), producer_factory=lambda _c: producer
    ).start()


def test_a_full_queue_drops_and_counts() -> None:
    """No broker to connect to: offers queue up to the bound, then are dropped and counted."""

    def unreachable(_config: MirrorConfig) -> Any:
        raise ConnectionError("no broker")

    before = dropped_metric(DROP_QUEUE_FULL)
    mirror = KafkaMirror(
        MirrorConfig(bootstrap=NOBODY_LISTENS, topic="t", queue_size=5, reconnect_interval_s=0.05),
        producer_factory=unreachable,
    ).start()
    try:
        results = [mirror.offer(ENTRY) for _ in range(20)]
        assert results == [True] * 5 + [False] * 15
        stats = mirror.stats()
        assert stats.dropped_by_reason == {DROP_QUEUE_FULL: 15}
        assert (stats.offered, stats.pending, stats.in_flight) == (20, 5, 0)
        assert dropped_metric(DROP_QUEUE_FULL) - before == 15
    finally:
        mirror.stop(timeout_s=0.2)
    stats = mirror.stats()
    assert_settled(stats, offered=20)
    assert stats.dropped_by_reason == {DROP_QUEUE_FULL: 15, DROP_STOPPED: 5}


def test_sent_and_failed_sends_are_counted_and_records_are_keyed_by_card() -> None:
    producer = FakeProducer(outcomes=[None], fail_every=3)
    mirror = fake_mirror(producer)
    for _ in range(9):
        mirror.offer(ENTRY)
    wait_until(lambda: mirror.stats().pending == 0, "the 9 records to be resolved")
    mirror.stop()
    stats = mirror.stats()
    assert (stats.sent, stats.dropped_by_reason) == (6, {DROP_SEND_FAILED: 3})
    assert_settled(stats, offered=9)
    record = producer.records[0]
    assert record["topic"] == "mirror" and record["key"] == b"card-1"
    assert dict(record["headers"])["ce_id"] == event_id("tx-1").encode()
    assert orjson.loads(record["value"])["transaction_id"] == "tx-1"
    assert producer.closed


def test_a_record_answered_twice_is_counted_once() -> None:
    """A success followed by a failure (or two failures) must not count one record twice."""
    producer = FakeProducer(outcomes=[None, RuntimeError("late failure")])
    mirror = fake_mirror(producer)
    for _ in range(3):
        mirror.offer(ENTRY)
    wait_until(lambda: mirror.stats().pending == 0, "the 3 records to be resolved")
    mirror.stop()
    stats = mirror.stats()
    assert (stats.sent, stats.dropped) == (3, 0), stats
    assert_settled(stats, offered=3)


def test_records_the_producer_never_answered_are_unconfirmed_once_at_stop() -> None:
    """Closed with records in flight: their fate is unknown; a late answer changes nothing."""
    producer = FakeProducer(outcomes=[])
    mirror = fake_mirror(producer)
    for _ in range(4):
        mirror.offer(ENTRY)
    wait_until(lambda: mirror.stats().in_flight == 4, "4 records in flight")
    assert mirror.stats().pending == 4
    mirror.stop(timeout_s=0.0)
    stats = mirror.stats()
    assert stats.dropped_by_reason == {DROP_UNCONFIRMED: 4}, stats
    assert_settled(stats, offered=4)
    assert producer.closed
    for future in producer.futures:  # the producer's answer arrives after the stop
        future.callbacks[0](None)
        future.errbacks[0](RuntimeError("too late"))
    assert mirror.stats() == stats


@pytest.mark.parametrize("size", [1, 3])
def test_queue_bound_is_respected(size: int) -> None:
    mirror = KafkaMirror(MirrorConfig(bootstrap="x", topic="t", queue_size=size))
    assert [mirror.offer(ENTRY) for _ in range(size + 2)] == [True] * size + [False] * 2
    assert mirror.pending == size
    mirror.stop(timeout_s=0.0)
    stats = mirror.stats()
    assert stats.dropped_by_reason == {DROP_QUEUE_FULL: 2, DROP_STOPPED: size}
    assert_settled(stats, offered=size + 2)


def test_an_offer_after_stop_is_counted_as_stopped() -> None:
    mirror = fake_mirror(FakeProducer(outcomes=[None]))
    mirror.stop()
    assert mirror.offer(ENTRY) is False
    stats = mirror.stats()
    assert stats.dropped_by_reason == {DROP_STOPPED: 1}
    assert_settled(stats, offered=1)


# ----------------------------------------------------------------------------- producer process
def test_process_mirror_accounts_for_every_record_across_the_process_boundary() -> None:
    """No broker at all: after the stop every offered record is counted, in this process,
    however long the producer process takes to start or to stop."""
    before = {reason: dropped_metric(reason) for reason in DROP_REASONS}
    mirror = ProcessMirror(MirrorConfig(bootstrap=NOBODY_LISTENS, topic="t", queue_size=50))
    mirror.start()
    try:
        results = [mirror.offer(ENTRY) for _ in range(200)]
        assert results.count(True) >= 50  # the forwarding thread may already drain some
        # Nothing is sent; at most what overflows the producer process's queue is resolved.
        assert 50 <= mirror.stats().pending <= results.count(True)
    finally:
        mirror.stop(timeout_s=2.0)
    stats = mirror.stats()
    assert_settled(stats, offered=200)
    assert stats.sent == 0
    assert stats.dropped_by_reason[DROP_QUEUE_FULL] >= results.count(False)
    assert set(stats.dropped_by_reason) <= {DROP_QUEUE_FULL, DROP_STOPPED}, stats
    assert sum(dropped_metric(reason) - before[reason] for reason in DROP_REASONS) == 200
    assert queue_depth() == 0


def test_a_killed_producer_process_loses_no_count_and_is_replaced() -> None:
    """Records handed to a producer process that is then killed count as ``producer_died``;
    its replacement gets the next ones, and nothing is counted twice."""
    config = MirrorConfig(
        bootstrap=NOBODY_LISTENS, topic="t", queue_size=50, producer_priority="normal"
    )
    mirror = ProcessMirror(config)
    mirror.start()
    try:
        assert all(mirror.offer(entry) for entry in entries(30))
        wait_until(lambda: mirror.buffered == 0, "the entries to be handed to the producer")
        first = mirror.producer_pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: mirror.producer_pid not in (first, None), "a new producer process")
        assert mirror.stats().dropped_by_reason == {DROP_PRODUCER_DIED: 30}
        assert all(mirror.offer(entry) for entry in entries(10))
    finally:
        mirror.stop(timeout_s=1.0)
    stats = mirror.stats()
    assert_settled(stats, offered=40)
    assert stats.dropped_by_reason == {DROP_PRODUCER_DIED: 30, DROP_STOPPED: 10}


def _policy_after(priority: str) -> tuple[int, int]:
    from fraud_detection.serving.mirror import set_priority

    set_priority(priority)
    return os.sched_getscheduler(0), os.nice(0)


@pytest.mark.parametrize("priority", ["idle", "low"])
def test_producer_priority(priority: str) -> None:
    import multiprocessing

    if not hasattr(os, "SCHED_IDLE"):
        pytest.skip("Linux scheduling policies only")
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        policy, niceness = pool.apply(_policy_after, (priority,))
    if priority == "idle":
        assert policy == os.SCHED_IDLE
    else:
        assert policy == os.SCHED_OTHER and niceness >= 10


def may_raise_priority() -> bool:
    """Whether this process may give another one a higher CPU priority (root, or RLIMIT_NICE)."""
    import resource

    return os.geteuid() == 0 or resource.getrlimit(resource.RLIMIT_NICE)[0] >= 20


@pytest.mark.parametrize("priority", ["idle", "low"])
def test_a_stopping_producer_gets_normal_priority_back_where_permitted(priority: str) -> None:
    import subprocess
    import sys

    from fraud_detection.serving.mirror import restore_priority

    if not hasattr(os, "SCHED_IDLE"):
        pytest.skip("Linux scheduling policies only")
    code = (
        "import sys, time\n"
        "from fraud_detection.serving.mirror import set_priority\n"
        "set_priority(sys.argv[1])\n"
        "print('ready', flush=True)\n"
        "time.sleep(600)\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code, priority], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == "ready\n"
        lowered = (os.sched_getscheduler(child.pid), os.getpriority(os.PRIO_PROCESS, child.pid))
        assert lowered != (os.SCHED_OTHER, 0)
        permitted = may_raise_priority()
        assert restore_priority(child.pid) is permitted
        now = (os.sched_getscheduler(child.pid), os.getpriority(os.PRIO_PROCESS, child.pid))
        assert now == ((os.SCHED_OTHER, 0) if permitted else lowered)
    finally:
        child.kill()
        child.wait()
    assert restore_priority(child.pid) is False  # gone: nothing to do, no error


def test_unknown_priority_is_refused() -> None:
    from fraud_detection.serving.mirror import set_priority

    with pytest.raises(ValueError, match="priority"):
        set_priority("urgent")


# ----------------------------------------------------------------------------- real broker
@pytest.fixture(scope="module")
def broker() -> Iterator[Any]:
    from fraud_detection.streaming.broker import LocalBroker

    with LocalBroker(topics=()) as running:
        yield running


class Stall:
    """Stalls the test broker (SIGSTOP: its connections stay open, nothing is answered)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.stalled = False

    def start(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)
        self.stalled = True

    def end(self) -> None:
        if self.stalled:
            os.kill(self.pid, signal.SIGCONT)
            self.stalled = False


@pytest.fixture
def stall(broker: Any) -> Iterator[Stall]:
    """A :class:`Stall` of the module's broker; the broker resumes at the end of the test."""
    assert broker.pid is not None
    stall = Stall(broker.pid)
    try:
        yield stall
    finally:
        stall.end()


def fresh_topic(bootstrap: str, partitions: int = 1) -> str:
    from fraud_detection.streaming.kafka import create_topics

    name = f"mirror-{uuid.uuid4().hex[:10]}"
    assert create_topics(bootstrap, [name], partitions=partitions) == [name]
    return name


def delivered(bootstrap: str, topic: str) -> dict[str, list[Any]]:
    """The topic's records by transaction id (a list: a record may have been written twice)."""
    from fraud_detection.streaming.kafka import read_topic

    found: dict[str, list[Any]] = {}
    for record in read_topic(bootstrap, topic, timeout_s=DEADLINE_S):
        found.setdefault(orjson.loads(record.value)["transaction_id"], []).append(record)
    return found


def broker_config(bootstrap: str, topic: str, **overrides: Any) -> MirrorConfig:
    """Timeouts no loaded machine reaches, and a producer that is not starved of CPU."""
    settings: dict[str, Any] = {
        "delivery_timeout_ms": 120_000,
        "request_timeout_ms": 60_000,
        "producer_priority": "normal",
    }
    return MirrorConfig(bootstrap=bootstrap, topic=topic, **{**settings, **overrides})


@pytest.mark.integration
def test_exactly_the_records_counted_as_sent_are_in_the_topic(broker: Any) -> None:
    """Each delivered record is keyed by its card (one partition per card) and carries its
    transaction's ce_id; a record refused by the full buffer is not in the topic."""
    topic = fresh_topic(broker.bootstrap_servers, partitions=3)
    offered = entries(300)
    mirror = ProcessMirror(broker_config(broker.bootstrap_servers, topic, queue_size=100))
    mirror.start()
    try:
        accepted = {entry.transaction_id for entry in offered if mirror.offer(entry)}
    finally:
        mirror.stop(timeout_s=DEADLINE_S)
    stats = mirror.stats()
    assert_settled(stats, offered=300)
    assert stats.sent > 0, stats

    found = delivered(broker.bootstrap_servers, topic)
    unconfirmed = stats.dropped_by_reason.get(DROP_UNCONFIRMED, 0)
    assert stats.sent <= len(found) <= stats.sent + unconfirmed, (len(found), stats)
    assert set(found) <= accepted, "a record refused by the full buffer was delivered"
    by_id = {entry.transaction_id: entry for entry in offered}
    partitions: dict[str, set[int]] = {}
    for transaction_id, records in found.items():
        for record in records:
            assert record.key == by_id[transaction_id].card_id.encode()
            assert dict(record.headers)["ce_id"] == event_id(transaction_id).encode()
            partitions.setdefault(by_id[transaction_id].card_id, set()).add(record.partition)
    assert all(len(used) == 1 for used in partitions.values()), partitions


@pytest.mark.integration
def test_a_record_sent_to_a_stalled_broker_that_times_out_is_unconfirmed(
    broker: Any, stall: Stall
) -> None:
    """The producer gives up on records a stalled broker may still write: they must not count
    as ``delivery_failed`` (never written), but as ``unconfirmed``."""
    topic = fresh_topic(broker.bootstrap_servers)
    first, *held = entries(11)
    config = broker_config(
        broker.bootstrap_servers, topic, delivery_timeout_ms=2_000, request_timeout_ms=1_000
    )
    mirror = KafkaMirror(config).start()
    try:
        mirror.offer(first)
        wait_until(lambda: mirror.stats().sent == 1, "the first record to be acknowledged")
        stall.start()
        for entry in held:
            mirror.offer(entry)
        wait_until(lambda: mirror.stats().pending == 0, "the producer to give up on 10 records")
        assert mirror.stats().dropped_by_reason == {DROP_UNCONFIRMED: 10}
    finally:
        mirror.stop(timeout_s=0.0)
    assert_settled(mirror.stats(), offered=11)


@pytest.mark.integration
def test_a_producer_process_killed_with_records_in_flight_counts_them_unconfirmed(
    broker: Any, stall: Stall
) -> None:
    """The queue-depth gauge shows the producer process's backlog; records in flight when it is
    killed are ``unconfirmed``; its replacement delivers the next records."""
    topic = fresh_topic(broker.bootstrap_servers)
    before, held, after = entries(5), entries(20), entries(10)
    mirror = ProcessMirror(broker_config(broker.bootstrap_servers, topic))
    mirror.start()
    try:
        for entry in before:
            mirror.offer(entry)
        wait_until(lambda: mirror.stats().sent == 5, "the first 5 records to be acknowledged")
        stall.start()
        for entry in held:
            mirror.offer(entry)
        wait_until(lambda: mirror.stats().in_flight == 20, "20 records in flight")
        wait_until(lambda: queue_depth() == 20, "the queue-depth gauge to show the 20 records")

        killed = mirror.producer_pid
        assert killed is not None
        os.kill(killed, signal.SIGKILL)
        wait_until(lambda: mirror.producer_pid not in (killed, None), "a new producer process")
        stats = mirror.stats()
        assert stats.dropped_by_reason == {DROP_UNCONFIRMED: 20}, stats
        assert (stats.sent, stats.pending) == (5, 0), stats
        stall.end()

        for entry in after:
            mirror.offer(entry)
    finally:
        mirror.stop(timeout_s=DEADLINE_S)
    stats = mirror.stats()
    assert_settled(stats, offered=35)
    assert (stats.sent, stats.dropped_by_reason) == (15, {DROP_UNCONFIRMED: 20}), stats

    found = delivered(broker.bootstrap_servers, topic)
    sure = {entry.transaction_id for entry in before + after}
    assert sure <= set(found)
    assert set(found) - sure <= {entry.transaction_id for entry in held}
