"""The performance monitor against a real broker: mirror records written as the transformer
writes them, labels as the labels topic carries them (late, duplicated, corrected, unknown,
malformed), results read back from the JSON-lines file and the results topic and compared with
a direct computation from the same data; and ``fraud monitor`` killed with SIGKILL while labels
stream in, then restarted from its state file: every window present, no label counted twice.

Nothing here depends on speed: each step waits for the event it needs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest

from fraud_detection.bundle import Manifest, write_manifest
from fraud_detection.features import FEATURE_NAMES, MICROS_PER_DAY
from fraud_detection.monitoring.performance import Baseline, PerformanceConfig, rates
from fraud_detection.monitoring.performance_consumer import (
    PerformanceMonitor,
    PerformanceMonitorConfig,
    load_state,
)
from fraud_detection.monitoring.sinks import JsonLinesSink, TopicSink
from fraud_detection.registry import ModelRegistry
from fraud_detection.schema import is_flagged
from fraud_detection.serving.mirror import (
    MirrorConfig,
    MirrorEntry,
    iso_timestamp,
    mirror_record,
)
from fraud_detection.streaming.broker import LocalBroker, free_port
from fraud_detection.streaming.kafka import create_topics, make_producer, read_topic
from fraud_detection.streaming.labels import Label
from support.waiting import wait_until

pytestmark = pytest.mark.integration

MONDAY = 1_772_409_600 * 1_000_000  # 2026-03-02T00:00:00Z
THRESHOLD = 0.5
BASELINE = Baseline(recall=0.9, precision=0.6, f1=0.7)
PER_DAY = 120
DAYS = 3  # windows reported: days 0..2; a few transactions on day 3 close day 2


# ------------------------------------------------------------------------------ data
def scored_entries(version: str, seed: int) -> tuple[list[MirrorEntry], dict[str, int]]:
    """Scored transactions over ``DAYS`` days (plus 3 on the next), and each one's truth."""
    rng = np.random.default_rng(seed)
    entries, truth = [], {}
    for day in range(DAYS + 1):
        count = PER_DAY if day < DAYS else 3
        times = np.sort(rng.integers(0, MICROS_PER_DAY, count)) + MONDAY + day * MICROS_PER_DAY
        for i, time in enumerate(times):
            tx = f"{version}-{day}-{i}"
            fraud = int(rng.random() < 0.15)
            score = float(np.clip(rng.normal(0.65 if fraud else 0.3, 0.2), 0, 1))
            truth[tx] = fraud
            entries.append(
                MirrorEntry(
                    transaction_id=tx,
                    card_id=f"card-{i % 7}",
                    timestamp_micros=int(time),
                    features=[0.0] * len(FEATURE_NAMES),
                    fraud_probability=score,
                    is_fraud=is_flagged(score, THRESHOLD),
                    threshold=THRESHOLD,
                    model_version=version,
                )
            )
    return entries, truth


def produce_mirror(bootstrap: str, topic: str, entries: list[MirrorEntry]) -> None:
    """The records exactly as the transformer's mirror writes them."""
    producer = make_producer(bootstrap, linger_ms=5)
    config = MirrorConfig("-", topic)
    for entry in entries:
        key, value, headers = mirror_record(config, entry)
        producer.send(topic, key=key, value=value, headers=headers)
    producer.flush(timeout=60)
    producer.close()


def produce_labels(bootstrap: str, topic: str, values: list[bytes | Label]) -> None:
    producer = make_producer(bootstrap, linger_ms=5)
    for value in values:
        if isinstance(value, Label):
            producer.send(topic, key=value.key(), value=value.value())
        else:
            producer.send(topic, value=value)
    producer.flush(timeout=60)
    producer.close()


def label_of(entry: MirrorEntry, is_fraud: int, days_later: float = 2.0) -> Label:
    return Label(
        entry.transaction_id, is_fraud, entry.timestamp_micros + int(days_later * MICROS_PER_DAY)
    )


def expected_windows(
    entries: list[MirrorEntry], final: dict[str, int], last_label: dict[str, int]
) -> dict[str, dict[str, Any]]:
    """Each reported day's figures, computed directly from the data: ``final`` is each
    labelled transaction's last label, ``last_label`` the latest ``labelled_at`` per day."""
    out = {}
    for day in range(DAYS):
        start = MONDAY + day * MICROS_PER_DAY
        rows = [e for e in entries if start <= e.timestamp_micros < start + MICROS_PER_DAY]
        labelled = [e for e in rows if e.transaction_id in final]
        cells = {"tp": 0, "fp": 0, "fn": 0, "tn": 0}
        for e in labelled:
            fraud = final[e.transaction_id]
            cells[("tp" if fraud else "fp") if e.is_fraud else ("fn" if fraud else "tn")] += 1
        recall, precision, f1 = rates(cells["tp"], cells["fp"], cells["fn"])
        window_id = f"{rows[0].model_version}:performance:{iso_timestamp(start)}"
        out[window_id] = {
            "start": iso_timestamp(start),
            "end": iso_timestamp(start + MICROS_PER_DAY),
            "scored": len(rows),
            "flagged": sum(e.is_fraud for e in rows),
            "labelled": len(labelled),
            **cells,
            "recall": recall,
            "precision": precision,
            "f1": f1,
            "as_of": iso_timestamp(last_label[day]),
        }
    return out


def latest(path: Path) -> dict[str, dict[str, Any]]:
    """The latest revision of every performance window in a results file."""
    if not path.exists():
        return {}
    best: dict[str, dict[str, Any]] = {}
    for line in path.read_bytes().split(b"\n")[:-1]:
        result = orjson.loads(line)
        if result.get("kind") != "performance":
            continue
        known = best.get(result["window_id"])
        if known is None or result["revision"] >= known["revision"]:
            best[result["window_id"]] = result
    return best


def all_performance(path: Path) -> list[dict[str, Any]]:
    lines = path.read_bytes().split(b"\n")[:-1] if path.exists() else []
    return [r for r in map(orjson.loads, lines) if r.get("kind") == "performance"]


def matches(result: dict[str, Any] | None, wanted: dict[str, Any]) -> bool:
    return result is not None and all(result[k] == v for k, v in wanted.items())


class Scenario:
    """Mirror records of one version and its labels in two phases: day 0 and day 1 fully
    labelled, day 2 half (phase 1); the rest of day 2 (phase 2). Phase 1 also holds duplicates
    of day 0's labels, a day-2 label that phase 2 corrects, a label of an unknown transaction
    and two malformed records."""

    def __init__(self, version: str, seed: int) -> None:
        self.entries, truth = scored_entries(version, seed)
        by_day: dict[int, list[MirrorEntry]] = {}
        for entry in self.entries:
            by_day.setdefault((entry.timestamp_micros - MONDAY) // MICROS_PER_DAY, []).append(entry)
        day2 = by_day[2]
        half = len(day2) // 2
        corrected = day2[0]
        self.phase1: list[bytes | Label] = [
            *(label_of(e, truth[e.transaction_id]) for e in by_day[0] + by_day[1]),
            *(label_of(e, truth[e.transaction_id], 3) for e in by_day[0][:5]),  # duplicates
            label_of(corrected, 1 - truth[corrected.transaction_id], 1.0),
            *(label_of(e, truth[e.transaction_id]) for e in day2[1:half]),
            Label("never-scored", 1, MONDAY + MICROS_PER_DAY),
            b"{not json",
            orjson.dumps({"transaction_id": "x", "labelled_at": "2026-03-03T00:00:00Z"}),
        ]
        self.phase2: list[bytes | Label] = [
            label_of(corrected, truth[corrected.transaction_id], 4.0),  # the correction
            *(label_of(e, truth[e.transaction_id]) for e in day2[half:]),
        ]
        final = {e.transaction_id: truth[e.transaction_id] for d in range(DAYS) for e in by_day[d]}
        last = {
            0: max(e.timestamp_micros for e in by_day[0]) + 2 * MICROS_PER_DAY,  # no duplicate
            1: max(e.timestamp_micros for e in by_day[1]) + 2 * MICROS_PER_DAY,
            2: max(
                corrected.timestamp_micros + 4 * MICROS_PER_DAY,
                max(e.timestamp_micros for e in day2) + 2 * MICROS_PER_DAY,
            ),
        }
        self.expected = expected_windows(self.entries, final, last)
        self.day2_id = sorted(self.expected)[2]
        self.labels_total = len(self.phase1) + len(self.phase2)


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def broker() -> Iterator[LocalBroker]:
    with LocalBroker(topics=()) as running:
        yield running


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """v1 and v2 recorded their training metrics; v3 has no bundle."""
    root = tmp_path_factory.mktemp("registry")
    for version in ("v1", "v2"):
        bundle = ModelRegistry(root).versions_dir / version
        bundle.mkdir(parents=True)
        write_manifest(
            bundle,
            Manifest(version, list(FEATURE_NAMES), THRESHOLD, metrics=BASELINE.to_dict()),
        )
    return root


def _scrape(port: int) -> str:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    except httpx.HTTPError:
        return ""


# ------------------------------------------------------------------------------ tests
def test_late_labels_are_joined_reported_and_revised_with_figures_from_the_data(
    broker: LocalBroker, registry: Path, tmp_path: Path
) -> None:
    from prometheus_client import CollectorRegistry, start_http_server

    from fraud_detection.monitoring.metrics import PerformanceMetrics
    from fraud_detection.monitoring.performance import BundleBaselines
    from fraud_detection.monitoring.reference import RegistryLocator

    bootstrap = broker.bootstrap_servers
    mirror_topic, labels_topic, results_topic = "perf-mirror-a", "perf-labels-a", "perf-results-a"
    create_topics(bootstrap, [mirror_topic], partitions=2)
    create_topics(bootstrap, [labels_topic, results_topic])
    scenario = Scenario("v1", seed=1)
    produce_mirror(bootstrap, mirror_topic, scenario.entries)
    produce_labels(bootstrap, labels_topic, scenario.phase1)

    results_file = tmp_path / "results.jsonl"
    config = PerformanceMonitorConfig(
        bootstrap=bootstrap,
        mirror_topic=mirror_topic,
        labels_topic=labels_topic,
        state_dir=tmp_path / "state",
        performance=PerformanceConfig(),
        poll_timeout_s=0.2,
    )
    registry_ = CollectorRegistry()
    port = free_port()
    server, _ = start_http_server(port, addr="127.0.0.1", registry=registry_)
    monitor = PerformanceMonitor(
        config,
        BundleBaselines(RegistryLocator(registry)),
        [JsonLinesSink(results_file), TopicSink(bootstrap, results_topic)],
        PerformanceMetrics(registry_),
    )
    stop = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            monitor.run(stop)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        days01 = sorted(scenario.expected)[:2]
        wait_until(
            lambda: (
                errors
                or all(matches(latest(results_file).get(w), scenario.expected[w]) for w in days01)
            ),
            "days 0 and 1 reported with every label",
        )
        assert not errors, errors
        assert scenario.day2_id not in latest(results_file), "day 2 is not complete yet"
        produce_labels(bootstrap, labels_topic, scenario.phase2)
        wait_until(
            lambda: (
                errors
                or matches(
                    latest(results_file).get(scenario.day2_id), scenario.expected[scenario.day2_id]
                )
            ),
            "day 2 reported once its labels arrived",
        )
        metrics = wait_until(
            lambda: (
                (text := _scrape(port))
                and f"fraud_monitor_labels_consumed_total {float(scenario.labels_total)}" in text
                and text
            ),
            "every label counted in the metrics",
        )
    finally:
        stop.set()
        thread.join(60)
        server.shutdown()
    assert not thread.is_alive() and not errors, errors

    results = latest(results_file)
    assert set(results) == set(scenario.expected)
    for window_id, result in results.items():
        assert matches(result, scenario.expected[window_id]), (result, scenario.expected[window_id])
        assert result["complete"] and result["coverage"] == 1.0
        assert result["model_version"] == "v1" and result["threshold"] == THRESHOLD
        assert result["baseline"] == BASELINE.to_dict()
        below = (
            result["recall"] < 0.9 - result["tolerance"] or result["f1"] < 0.7 - result["tolerance"]
        )
        assert result["below_baseline"] is below
    # Every revision of a window is numbered from 1, one each, and the topic has them all.
    written = all_performance(results_file)
    for window_id in results:
        revisions = [r["revision"] for r in written if r["window_id"] == window_id]
        assert revisions == list(range(1, len(revisions) + 1))
    records = read_topic(bootstrap, results_topic, timeout_s=60)
    assert sorted(orjson.loads(r.value)["window_id"] for r in records) == sorted(
        r["window_id"] for r in written
    )
    assert {dict(r.headers)["ce_type"] for r in records} == {
        b"org.fraud-detection.monitoring.performance"
    }
    assert 'fraud_monitor_labels_skipped_total{reason="not_json"} 1.0' in metrics
    assert 'fraud_monitor_labels_skipped_total{reason="missing_field"} 1.0' in metrics
    assert 'fraud_monitor_labels_skipped_total{reason="duplicate"} 5.0' in metrics
    assert 'fraud_monitor_join_size{side="labels"} 1.0' in metrics  # never-scored waits
    recall = results[scenario.day2_id]["recall"]
    assert f'fraud_monitor_performance_recall{{model_version="v1"}} {recall}' in metrics


def test_a_monitor_killed_while_labels_stream_in_counts_each_label_once(
    broker: LocalBroker, registry: Path, tmp_path: Path
) -> None:
    bootstrap = broker.bootstrap_servers
    mirror_topic, labels_topic = "perf-mirror-b", "perf-labels-b"
    create_topics(bootstrap, [mirror_topic], partitions=2)
    create_topics(bootstrap, [labels_topic])
    scenario = Scenario("v2", seed=2)
    produce_mirror(bootstrap, mirror_topic, scenario.entries)
    produce_labels(bootstrap, labels_topic, scenario.phase1)
    results_file = tmp_path / "results.jsonl"
    state_dir = tmp_path / "state"
    command = [
        sys.executable,
        "-m",
        "fraud_detection.monitoring",
        "--kafka",
        bootstrap,
        "--topic",
        mirror_topic,
        "--group",
        "perf-group-b",
        "--labels-topic",
        labels_topic,
        "--registry",
        str(registry),
        "--no-results-topic",
        "--results-file",
        str(results_file),
        "--state-dir",
        str(state_dir),
        "--metrics-port",
        "0",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log = tmp_path / "monitor.log"
    state_file = state_dir / "performance-state.json"
    phase1_labels = len(scenario.phase1)

    def labels_saved() -> int:
        try:
            state = load_state(state_file)
        except Exception:
            return -1
        return -1 if state is None else state["offsets"].get(labels_topic, {}).get("0", -1)

    with log.open("wb") as output:
        killed = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env)
        try:
            wait_until(
                lambda: labels_saved() >= phase1_labels or killed.poll() is not None,
                "the first monitor to save its state past the first labels",
                timeout_s=120,
            )
            assert killed.poll() is None, log.read_text()
            produce_labels(bootstrap, labels_topic, scenario.phase2)
            wait_until(
                lambda: labels_saved() > phase1_labels or killed.poll() is not None,
                "the first monitor to save some of the later labels",
                timeout_s=120,
            )
        finally:
            killed.send_signal(signal.SIGKILL)
            killed.wait(30)
    assert killed.returncode == -signal.SIGKILL

    with log.open("ab") as output:
        restarted = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env)
        try:
            wait_until(  # the first monitor may have written every result before it died
                lambda: (
                    log.read_text().count(f"assigned {labels_topic}-0") == 2
                    or restarted.poll() is not None
                ),
                "the restarted monitor to load its state and seek",
                timeout_s=120,
            )
            wait_until(
                lambda: (
                    all(
                        matches(latest(results_file).get(w), e)
                        for w, e in scenario.expected.items()
                    )
                    or restarted.poll() is not None
                ),
                "the restarted monitor to report every window with every label",
                timeout_s=120,
            )
            assert restarted.poll() is None, log.read_text()[-3_000:]
        finally:
            restarted.send_signal(signal.SIGTERM)
            restarted.wait(60)
    assert restarted.returncode == 0, log.read_text()[-3_000:]

    results = latest(results_file)
    assert set(results) == set(scenario.expected), "a window is missing"
    for window_id, wanted in scenario.expected.items():
        assert matches(results[window_id], wanted), (results[window_id], wanted)
    written = all_performance(results_file)
    for window_id in results:  # a revision may repeat after the kill, none is skipped
        revisions = sorted({r["revision"] for r in written if r["window_id"] == window_id})
        assert revisions == list(range(1, len(revisions) + 1))
    state = load_state(state_file)
    assert state is not None
    stats = state["tracker"]["join"]["stats"]
    labelled = sum(w["labelled"] for w in scenario.expected.values())
    assert stats["labels"] == scenario.labels_total - 2  # the two malformed records
    assert (stats["matched"], stats["corrected"], stats["duplicates"]) == (labelled, 1, 5)
    assert state["offsets"][labels_topic] == {"0": scenario.labels_total}
