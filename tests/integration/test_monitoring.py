"""The drift monitor against a real broker: mirror records written by the transformer's own
mirror (:class:`~fraud_detection.serving.mirror.KafkaMirror`), results read back from the
results topic and the JSON-lines file, ``/metrics`` scraped, a crash between a window's write
and its commit, and a monitor process killed with SIGKILL in the middle of a window.

The records are synthetic, seeded feature vectors with the daily and weekly cycles of real
traffic; the bundles hold only a drift reference and a manifest (the monitor reads nothing
else). Topic names are fixed, so every run forms the same windows and draws the same reference
rows: the verdicts are deterministic. Nothing here depends on speed: each test waits for the
event it needs with a generous deadline.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest

from fraud_detection.bundle import DRIFT_REFERENCE, Manifest, write_manifest
from fraud_detection.features import EPOCH_WEEKDAY, FEATURE_NAMES, MICROS_PER_DAY, MICROS_PER_HOUR
from fraud_detection.monitoring.consumer import DriftMonitor, MonitorConfig, open_sinks
from fraud_detection.monitoring.detector import DetectorConfig
from fraud_detection.monitoring.reference import ReferenceCache, RegistryLocator
from fraud_detection.monitoring.results import WindowResult, window_id
from fraud_detection.monitoring.sinks import JsonLinesSink, SinkError
from fraud_detection.monitoring.windows import WindowConfig
from fraud_detection.registry import ModelRegistry
from fraud_detection.serving.mirror import (
    KafkaMirror,
    MirrorConfig,
    MirrorEntry,
    event_id,
    record_headers,
    record_value,
)
from fraud_detection.streaming.broker import LocalBroker, free_port
from fraud_detection.streaming.kafka import create_topics, make_producer, read_topic
from fraud_detection.training.export import save_drift_reference
from support.waiting import wait_until

pytestmark = pytest.mark.integration

NAMES = list(FEATURE_NAMES)
MONDAY = 1_772_409_600 * 1_000_000  # 2026-03-02T00:00:00Z
DETECTOR = DetectorConfig(p_val=0.001, min_records=50)


# ------------------------------------------------------------------------------ data
def traffic(
    rng: np.random.Generator, times: np.ndarray, shift: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Feature rows and scores of transactions at ``times``: calendar features from the times,
    a daily cycle in ``card_secs_since_prev`` and a weekly one in ``merchant_count_1d``;
    ``shift`` moves ``log_amount``."""
    hour = (times // MICROS_PER_HOUR) % 24
    weekend = ((times // MICROS_PER_DAY + EPOCH_WEEKDAY) % 7 >= 5).astype(float)
    rows = rng.normal(size=(len(times), len(NAMES)))
    rows[:, NAMES.index("hour")] = hour
    rows[:, NAMES.index("is_night")] = hour < 6
    rows[:, NAMES.index("is_weekend")] = weekend
    rows[:, NAMES.index("card_secs_since_prev")] += 2.0 * np.cos(2 * np.pi * hour / 24)
    rows[:, NAMES.index("merchant_count_1d")] += 1.5 * weekend
    rows[:, NAMES.index("log_amount")] += shift
    return rows, rng.beta(1, 20, len(times))


def write_bundle(directory: Path, version: str, scores: bool, seed: int) -> None:
    """A bundle with a drift reference over four whole weeks (scores too, when asked)."""
    rng = np.random.default_rng(seed)
    times = MONDAY - 28 * MICROS_PER_DAY + (rng.random(4_000) * 28 * MICROS_PER_DAY).astype(int)
    features, reference_scores = traffic(rng, times)
    directory.mkdir(parents=True)
    if scores:  # the export's format plus the reference scores the monitor reads
        np.savez_compressed(
            directory / DRIFT_REFERENCE,
            features=features,
            feature_names=np.array(FEATURE_NAMES),
            fraud_probability=reference_scores,
        )
    else:  # exactly what the export step writes today
        save_drift_reference(directory / DRIFT_REFERENCE, features)
    write_manifest(directory, Manifest(version, list(FEATURE_NAMES), 0.1))


def entries(
    version: str, count: int, first: int, start: int, shift: float = 0.0, seed: int = 0
) -> list[MirrorEntry]:
    """``count`` scored transactions of ``version``, 5 s apart from ``start``."""
    rng = np.random.default_rng(seed)
    times = start + np.arange(count, dtype=np.int64) * 5_000_000
    rows, scores = traffic(rng, times, shift)
    return [
        MirrorEntry(
            transaction_id=f"tx-{first + i}",
            card_id=f"card-{(first + i) % 10}",
            timestamp_micros=int(times[i]),
            features=rows[i].tolist(),
            fraud_probability=float(scores[i]),
            is_fraud=False,
            threshold=0.1,
            model_version=version,
        )
        for i in range(count)
    ]


def mirror(bootstrap: str, topic: str, scored: Sequence[MirrorEntry]) -> None:
    """Write the records exactly as the transformer does: through its Kafka mirror."""
    kafka_mirror = KafkaMirror(MirrorConfig(bootstrap=bootstrap, topic=topic)).start()
    for entry in scored:
        assert kafka_mirror.offer(entry)
    kafka_mirror.stop(timeout_s=60)
    stats = kafka_mirror.stats()
    assert stats.sent == len(scored), stats


def results_in(path: Path) -> list[dict[str, Any]]:
    """The results in a JSON-lines file (none when it does not exist yet)."""
    if not path.exists():
        return []
    whole_lines = path.read_bytes().split(b"\n")[:-1]  # not a line still being written
    return [orjson.loads(line) for line in whole_lines]


def expected_windows(
    bootstrap: str, topic: str, valid_ids: set[str], size: int
) -> dict[str, tuple[int, int, int, str]]:
    """The window ids the monitor must write: per partition, chunks of ``size`` valid records
    in offset order (read back from the topic), one id per version in a chunk, with the
    chunk's partition, first and last offsets, and version."""
    by_partition: dict[int, list[Any]] = {}
    for record in read_topic(bootstrap, topic, timeout_s=60):
        headers = dict(record.headers)
        if headers.get("ce_id", b"").decode() in valid_ids:
            by_partition.setdefault(record.partition, []).append(record)
    expected = {}
    for partition, records in by_partition.items():
        for start in range(0, len(records) - size + 1, size):
            chunk = records[start : start + size]
            first, last = chunk[0].offset, chunk[-1].offset
            for version in dict.fromkeys(orjson.loads(r.value)["model_version"] for r in chunk):
                identity = window_id(version, topic, partition, first, last)
                expected[identity] = (partition, first, last, version)
    return expected


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def broker() -> Iterator[LocalBroker]:
    with LocalBroker(topics=()) as running:
        yield running


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """v1: a reference without scores (today's export); v2: with the reference's scores."""
    root = tmp_path_factory.mktemp("registry")
    versions = ModelRegistry(root).versions_dir
    write_bundle(versions / "v1", "v1", scores=False, seed=1)
    write_bundle(versions / "v2", "v2", scores=True, seed=2)
    return root


class MonitorThread:
    """A :class:`DriftMonitor` running in a thread of the test process."""

    def __init__(self, config: MonitorConfig, registry: Path, sinks: Sequence[Any]) -> None:
        self.monitor = DriftMonitor(config, ReferenceCache(RegistryLocator(registry)), sinks)
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="drift-monitor", daemon=True)

    def _run(self) -> None:
        try:
            self.monitor.run(self.stop)
        except BaseException as exc:
            self.error = exc

    @property
    def done(self) -> bool:
        return not self.thread.is_alive()


@contextmanager
def monitoring(
    config: MonitorConfig, registry: Path, sinks: Sequence[Any] | None = None
) -> Iterator[MonitorThread]:
    """Run a monitor for the block; stop it (and wait for it) after."""
    running = MonitorThread(config, registry, open_sinks(config) if sinks is None else sinks)
    running.thread.start()
    try:
        yield running
    finally:
        running.stop.set()
        running.thread.join(60)
        assert running.done, "the monitor did not stop"


def config_for(broker: LocalBroker, name: str, tmp_path: Path, **changes: Any) -> MonitorConfig:
    config = MonitorConfig(
        bootstrap=broker.bootstrap_servers,
        topic=f"mirror-{name}",
        group_id=f"group-{name}",
        results_topic=f"results-{name}",
        results_file=tmp_path / f"{name}.jsonl",
        windows=WindowConfig(size=100, max_span_s=86_400),
        detector=DETECTOR,
        poll_timeout_s=0.2,
    )
    return replace(config, **changes)


# ------------------------------------------------------------------------------ tests
def test_windows_are_tested_per_version_and_written_to_the_topic_file_and_metrics(
    broker: LocalBroker, registry: Path, tmp_path: Path
) -> None:
    port = free_port()
    config = config_for(broker, "a", tmp_path, metrics_port=port)
    create_topics(broker.bootstrap_servers, [config.topic], partitions=2)
    nine_am = MONDAY + 9 * MICROS_PER_HOUR
    stationary = entries("v1", 600, 0, nine_am, seed=11)
    shifted = entries("v2", 400, 600, nine_am + 600 * 5_000_000, shift=1.0, seed=12)
    mirror(broker.bootstrap_servers, config.topic, stationary)

    # Malformed records in the middle of partition 0, with valid CloudEvents headers.
    producer = make_producer(broker.bootstrap_servers)
    base = entries("v1", 3, 10_000, nine_am + 3_000 * 1_000_000, seed=13)
    good_value = record_value(base[0])
    headers = [
        record_headers(MirrorConfig("-", config.topic), event_id(e.transaction_id)) for e in base
    ]
    missing_feature = orjson.loads(good_value)
    del missing_feature["features"]["log_amount"]
    unknown_version = {**orjson.loads(record_value(base[2])), "model_version": "v9"}
    for header, value in zip(
        headers,
        [b"{not json", orjson.dumps(missing_feature), orjson.dumps(unknown_version)],
        strict=True,
    ):
        producer.send(config.topic, value=value, headers=header, partition=0).get(timeout=30)
    producer.close()
    mirror(broker.bootstrap_servers, config.topic, shifted)

    valid = {event_id(e.transaction_id) for e in [*stationary, *shifted]}
    expected = expected_windows(broker.bootstrap_servers, config.topic, valid, 100)
    assert len(expected) >= 10 and {v[3] for v in expected.values()} == {"v1", "v2"}

    with monitoring(config, registry) as running:
        wait_until(
            lambda: len(results_in(config.results_file)) >= len(expected) or running.done,
            f"{len(expected)} window results in {config.results_file}",
        )
        for partition in (0, 1):
            metrics = wait_until(
                lambda p=partition: _scrape(
                    port, f'fraud_monitor_consumer_lag{{partition="{p}"}} 0.0'
                ),
                f"the consumer lag of partition {partition} to reach 0",
            )
        assert running.error is None
    written = results_in(config.results_file)

    topic_records = read_topic(broker.bootstrap_servers, config.results_topic, timeout_s=60)
    from_topic = {record.key.decode(): orjson.loads(record.value) for record in topic_records}
    for record in topic_records:  # results are CloudEvents too, identified by the window id
        headers = dict(record.headers)
        assert headers["ce_id"] == record.key
        assert headers["ce_type"] == b"org.fraud-detection.monitoring.feature-drift"
    by_id = {result["window_id"]: result for result in written}

    assert len(written) == len(by_id) == len(expected), "a window was written twice or missed"
    assert set(by_id) == set(expected) == set(from_topic)
    assert from_topic == by_id
    for identity, (partition, first, last, version) in expected.items():
        result = by_id[identity]
        assert (result["partition"], result["first_offset"], result["last_offset"]) == (
            partition,
            first,
            last,
        )
        assert result["model_version"] == version and result["closed_by"] == "size"
        if result["tested"]:
            assert result["is_drift"] == (version == "v2"), result
        if version == "v2" and result["tested"]:
            assert "log_amount" in result["drifted"]
            assert result["score"] is not None  # v2's reference has scores
        if version == "v1":
            assert result["score"] is None and not result["score_monitored"]
    assert "fraud_monitor_records_consumed_total" in metrics
    assert 'fraud_monitor_records_skipped_total{reason="not_json"} 1.0' in metrics
    assert 'fraud_monitor_records_skipped_total{reason="missing_features"} 1.0' in metrics
    assert 'fraud_monitor_records_skipped_total{reason="unknown_model_version"} 1.0' in metrics
    assert 'fraud_monitor_records_skipped_total{reason="duplicate"} 0.0' in metrics
    drifting = sum(1 for r in written if r["is_drift"])
    assert f'fraud_monitor_drift_windows_total{{model_version="v2"}} {float(drifting)}' in metrics
    assert 'fraud_monitor_feature_p_value{feature="log_amount",model_version="v2"}' in metrics
    consumed = sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("fraud_monitor_records_consumed_total{")
    )
    assert consumed == len(stationary) + len(shifted) + 3


def _scrape(port: int, wanted: str) -> str | None:
    """The metrics page when it contains ``wanted``, else None."""
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    except httpx.HTTPError:
        return None
    return text if wanted in text else None


class CrashAfterWrite:
    """A sink that fails on its ``n``-th write: the monitor dies after the earlier sinks wrote
    the window and before its offsets are committed."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.writes = 0

    def write(self, results: Sequence[WindowResult]) -> None:
        self.writes += 1
        if self.writes == self.n:
            raise SinkError("the process died here")

    def close(self) -> None:
        pass


def test_a_crash_between_write_and_commit_writes_the_same_window_again(
    broker: LocalBroker, registry: Path, tmp_path: Path
) -> None:
    config = config_for(broker, "b", tmp_path, results_topic=None)
    create_topics(broker.bootstrap_servers, [config.topic], partitions=1)
    mirror(
        broker.bootstrap_servers, config.topic, entries("v1", 350, 0, MONDAY + 14 * MICROS_PER_HOUR)
    )
    assert config.results_file is not None

    crash = CrashAfterWrite(2)
    with monitoring(config, registry, [JsonLinesSink(config.results_file), crash]) as first:
        wait_until(lambda: first.done, "the first monitor to die on its second window")
    assert isinstance(first.error, SinkError)
    before = results_in(config.results_file)
    assert [r["window_id"] for r in before] == ["v1:mirror-b:0:0-99", "v1:mirror-b:0:100-199"]

    with monitoring(config, registry) as second:
        wait_until(lambda: len(results_in(config.results_file)) >= 4, "the restarted monitor")
    assert second.error is None
    lines = config.results_file.read_bytes().splitlines()
    assert [orjson.loads(line)["window_id"] for line in lines] == [
        "v1:mirror-b:0:0-99",
        "v1:mirror-b:0:100-199",
        "v1:mirror-b:0:100-199",  # written again: same id ...
        "v1:mirror-b:0:200-299",
    ]
    assert lines[1] == lines[2], "... and the same content"
    # The second monitor started at the committed offset: after window 0, not at 0 or 200.
    assert second.monitor.records_consumed == 350 - 100


def test_a_stopped_monitor_commits_past_the_records_it_skipped(
    broker: LocalBroker, registry: Path, tmp_path: Path
) -> None:
    """Skipped records after the last window need no window to close for their offsets to be
    committed: the next monitor of the group starts after them."""
    config = config_for(broker, "d", tmp_path, results_topic=None)
    create_topics(broker.bootstrap_servers, [config.topic], partitions=1)
    mirror(broker.bootstrap_servers, config.topic, entries("v1", 200, 0, MONDAY))
    producer = make_producer(broker.bootstrap_servers)
    for _ in range(3):
        producer.send(config.topic, value=b"{not json", partition=0).get(timeout=30)

    with monitoring(config, registry) as first:
        wait_until(
            lambda: first.monitor.windows_written == 2 and first.monitor.records_consumed == 203,
            "two windows and the three skipped records",
        )
    assert first.error is None

    late = entries("v1", 1, 200, MONDAY + 200 * 5_000_000)[0]
    producer.send(
        config.topic,
        value=record_value(late),
        headers=record_headers(MirrorConfig("-", config.topic), event_id(late.transaction_id)),
        partition=0,
    ).get(timeout=30)
    producer.close()
    with monitoring(config, registry) as second:
        wait_until(lambda: second.monitor.records_consumed >= 1, "the record after the restart")
    assert second.error is None
    assert second.monitor.records_consumed == 1, "the stop did not commit the skipped records"


def test_a_monitor_killed_mid_window_loses_no_window(
    broker: LocalBroker, registry: Path, tmp_path: Path
) -> None:
    topic, results_topic = "mirror-c", "results-c"
    results_file = tmp_path / "c.jsonl"
    create_topics(broker.bootstrap_servers, [topic], partitions=1)
    command = [
        sys.executable,
        "-m",
        "fraud_detection.monitoring",
        "--kafka",
        broker.bootstrap_servers,
        "--topic",
        topic,
        "--group",
        "group-c",
        "--registry",
        str(registry),
        "--results-topic",
        results_topic,
        "--results-file",
        str(results_file),
        "--window-size",
        "200",
        "--min-records",
        "50",
        "--p-val",
        "0.001",
        "--metrics-port",
        "0",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    start = MONDAY + 10 * MICROS_PER_HOUR
    first_half = entries("v1", 500, 0, start, seed=21)
    second_half = entries("v1", 520, 500, start + 500 * 5_000_000, seed=22)
    log = tmp_path / "monitor.log"

    mirror(broker.bootstrap_servers, topic, first_half)  # windows 0-199, 200-399, then 100
    with log.open("wb") as output:
        killed = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env)
        try:
            wait_until(
                lambda: len(results_in(results_file)) >= 2 or killed.poll() is not None,
                "two windows from the first monitor",
            )
            assert killed.poll() is None, log.read_text()
        finally:
            killed.send_signal(signal.SIGKILL)  # in the middle of the third window
            killed.wait(30)
    assert killed.returncode == -signal.SIGKILL
    written_before = results_in(results_file)

    mirror(broker.bootstrap_servers, topic, second_half)  # the third window fills, and two more
    with log.open("ab") as output:
        restarted = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env)
        try:
            wait_until(
                lambda: (
                    {r["last_offset"] for r in results_in(results_file)} >= {999}
                    or restarted.poll() is not None
                ),
                "the restarted monitor to write the fifth window",
            )
            assert restarted.poll() is None, log.read_text()
        finally:
            restarted.send_signal(signal.SIGTERM)
            restarted.wait(60)
    assert restarted.returncode == 0, log.read_text()[-3_000:]

    written = results_in(results_file)
    expected = [f"v1:{topic}:0:{first}-{first + 199}" for first in range(0, 1_000, 200)]
    assert {r["window_id"] for r in written} == set(expected), "a window is missing"
    assert written[: len(written_before)] == written_before
    assert [r["first_offset"] for r in written] == sorted(r["first_offset"] for r in written)
    firsts = sorted({r["first_offset"] for r in written})
    lasts = sorted({r["last_offset"] for r in written})
    assert firsts[1:] == [last + 1 for last in lasts[:-1]], "the windows are not contiguous"
    for identity in expected:  # a window written twice is the same result
        copies = [r for r in written if r["window_id"] == identity]
        assert all(copy == copies[0] for copy in copies)
    from_topic = read_topic(broker.bootstrap_servers, results_topic, timeout_s=60)
    assert {record.key.decode() for record in from_topic} == set(expected)
    assert not any(r["is_drift"] for r in written), "stationary traffic raised an alarm"
