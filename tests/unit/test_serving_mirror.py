"""The Kafka mirror's record format and its accounting when Kafka is unavailable (no broker
here: the real-broker behaviour is in tests/integration/test_serving_stack.py)."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from prometheus_client import REGISTRY

from fraud_detection.features import FEATURE_NAMES
from fraud_detection.serving.mirror import (
    CE_TYPE,
    DROP_QUEUE_FULL,
    DROP_SEND_FAILED,
    KafkaMirror,
    MirrorConfig,
    MirrorEntry,
    iso_timestamp,
    record_headers,
    record_value,
)

ENTRY = MirrorEntry(
    "tx-1", "card-1", 1_772_359_200_000_000, [0.5] * len(FEATURE_NAMES), 0.25, True, 0.1, "v1"
)


def dropped_metric(reason: str) -> float:
    return REGISTRY.get_sample_value("fraud_mirror_dropped_total", {"reason": reason}) or 0.0


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
    headers = dict(record_headers(config, now))
    assert headers["ce_type"] == CE_TYPE.encode() == b"org.kubeflow.serving.inference.request"
    assert headers["ce_specversion"] == b"1.0"
    assert headers["ce_source"] == b"src"
    assert headers["ce_inferenceservicename"] == b"isvc"
    assert headers["ce_time"] == b"2026-03-01T10:00:00.000Z"
    assert headers["content-type"] == b"application/json"
    assert headers["ce_id"] != dict(record_headers(config, now))["ce_id"]


def test_iso_timestamp() -> None:
    assert iso_timestamp(0) == "1970-01-01T00:00:00.000000Z"


def test_a_full_queue_drops_and_counts_without_blocking() -> None:
    """No broker to connect to: offers queue up to the bound, then drop at once."""

    def unreachable(_config: MirrorConfig) -> Any:
        raise ConnectionError("no broker")

    before = dropped_metric(DROP_QUEUE_FULL)
    mirror = KafkaMirror(
        MirrorConfig(bootstrap="127.0.0.1:9", topic="t", queue_size=5, reconnect_interval_s=0.05),
        producer_factory=unreachable,
    ).start()
    try:
        started = time.perf_counter()
        results = [mirror.offer(ENTRY) for _ in range(20)]
        elapsed = time.perf_counter() - started
        assert results == [True] * 5 + [False] * 15
        assert mirror.stats().dropped_by_reason == {DROP_QUEUE_FULL: 15}
        assert dropped_metric(DROP_QUEUE_FULL) - before == 15
        assert elapsed < 0.5  # 20 offers; generous bound, they never wait for Kafka
    finally:
        mirror.stop(timeout_s=0.2)
    assert mirror.stats().dropped == 20  # what was still queued at stop counts too


class FakeFuture:
    def __init__(self, outcome: Exception | None) -> None:
        self.outcome = outcome

    def add_callback(self, callback: Any) -> FakeFuture:
        if self.outcome is None:
            callback(None)
        return self

    def add_errback(self, errback: Any) -> FakeFuture:
        if self.outcome is not None:
            errback(self.outcome)
        return self


class FlakyProducer:
    """Accepts records, fails every third send, and records what it was given."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.calls = 0
        self.lock = threading.Lock()

    def send(self, topic: str, value: bytes, headers: list, key: bytes | None = None) -> FakeFuture:
        with self.lock:
            self.calls += 1
            if self.calls % 3 == 0:
                raise RuntimeError("buffer exhausted")
            self.records.append({"topic": topic, "value": value, "key": key, "headers": headers})
        return FakeFuture(None)

    def flush(self, timeout: float | None = None) -> None:
        pass

    def close(self, timeout: float | None = None) -> None:
        pass


def test_sent_and_failed_sends_are_counted() -> None:
    producer = FlakyProducer()
    mirror = KafkaMirror(
        MirrorConfig(bootstrap="x", topic="mirror"), producer_factory=lambda _c: producer
    ).start()
    for _ in range(9):
        mirror.offer(ENTRY)
    deadline = time.monotonic() + 5
    while mirror.stats().sent + mirror.stats().dropped < 9 and time.monotonic() < deadline:
        time.sleep(0.01)
    mirror.stop()
    stats = mirror.stats()
    assert (stats.sent, stats.dropped_by_reason) == (6, {DROP_SEND_FAILED: 3})
    record = producer.records[0]
    assert record["topic"] == "mirror" and record["key"] is None
    assert orjson.loads(record["value"])["transaction_id"] == "tx-1"


@pytest.mark.parametrize("size", [1, 3])
def test_queue_bound_is_respected(size: int) -> None:
    mirror = KafkaMirror(MirrorConfig(bootstrap="x", topic="t", queue_size=size))
    assert [mirror.offer(ENTRY) for _ in range(size + 2)] == [True] * size + [False] * 2
    assert mirror.pending == size


def test_process_mirror_accounts_for_every_record_across_the_process_boundary() -> None:
    """No broker at all: every offered record ends up counted as dropped, in this process."""
    from fraud_detection.serving.mirror import DROP_STOPPED, ProcessMirror

    port_nobody_listens_on = "127.0.0.1:9"
    mirror = ProcessMirror(
        MirrorConfig(bootstrap=port_nobody_listens_on, topic="t", queue_size=50)
    ).start()
    before = dropped_metric(DROP_QUEUE_FULL) + dropped_metric(DROP_STOPPED)
    try:
        results = [mirror.offer(ENTRY) for _ in range(200)]
        assert results.count(True) >= 50  # the forwarding thread may already drain some
    finally:
        mirror.stop(timeout_s=2.0)
    stats = mirror.stats()
    assert stats.offered == 200 and stats.sent == 0
    assert stats.dropped == 200, stats
    assert dropped_metric(DROP_QUEUE_FULL) + dropped_metric(DROP_STOPPED) - before == 200


def _policy_after(priority: str) -> tuple[int, int]:
    import os

    from fraud_detection.serving.mirror import set_priority

    set_priority(priority)
    return os.sched_getscheduler(0), os.nice(0)


@pytest.mark.parametrize("priority", ["idle", "low"])
def test_producer_priority(priority: str) -> None:
    import multiprocessing
    import os

    if not hasattr(os, "SCHED_IDLE"):
        pytest.skip("Linux scheduling policies only")
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        policy, niceness = pool.apply(_policy_after, (priority,))
    if priority == "idle":
        assert policy == os.SCHED_IDLE
    else:
        assert policy == os.SCHED_OTHER and niceness >= 10


def test_unknown_priority_is_refused() -> None:
    from fraud_detection.serving.mirror import set_priority

    with pytest.raises(ValueError, match="priority"):
        set_priority("urgent")
