"""Drift monitor: throughput, false alarms, detection delay and memory, with the exported reference.

Generates seeded transactions whose drift starts on a late day (:mod:`fraud_detection.data.
generator`, ``drift_start_day``), computes their features as training and serving do
(:func:`~fraud_detection.features.compute_features`), trains a small class-weighted forest on the
first days, and draws the drift reference from the held-out days after them with the export
step's own function (:func:`~fraud_detection.training.export.draw_drift_reference`: rows past the
features' warm-up, scored out of sample, in time order). The days after those are monitored:
stationary until the drift day, drifted from it on. Then:

* **throughput**: the monitored days are mirrored to a local broker as the transformer writes
  them (CloudEvents binary mode, :func:`~fraud_detection.serving.mirror.record_value`); a bare
  consumer group reads them (raw consume rate), then the drift monitor does (parse, window, KS
  tests, results to a topic and a JSON-lines file, commits). Both are timed from their first
  record to their last, so group joins and alibi-detect's import are not counted;
* **false alarms**: every window that ends before the drift day is stationary, so each one
  flagged is a false alarm; the goal is at most ``p_val`` of them (the test is corrected);
* **detection delay**: from the drift's start to the first flagged window: the records and the
  hours of transaction time in between, and which columns flagged;
* **memory**: the drift monitor (:class:`~fraud_detection.monitoring.consumer.DriftMonitor`,
  as ``fraud monitor`` runs it) in a process of its own reads
  ``--memory-records`` records (the stationary days again and again, with new transaction ids,
  moved on by whole weeks); its resident memory (RSS), and the broker's, are read when it has
  consumed 0, a quarter, half, three quarters and all of them. The records are produced as the
  monitor goes, at most :data:`MEMORY_AHEAD` ahead of it, gzip-compressed in large batches: the
  local broker keeps every record in memory (it cannot delete any), about 180 bytes per mirror
  record so (about 1,450 with kafka-python's default small uncompressed batches), and a producer
  that runs hundreds of thousands of records ahead of its reader was seen to stop delivering.

Not a test: the figures depend on the machine. The full figures (a few minutes, plus about
five minutes per million memory records on 2 loaded cores):

    .venv/bin/python benchmarks/bench_monitor.py --memory-records 1000000

``--only memory`` runs the memory phase alone (after the data and the reference are made).
``--quick`` runs a smaller version of everything (less than a minute of work).
"""

from __future__ import annotations

import argparse
import collections
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
from rich.table import Table

from fraud_detection.bundle import DRIFT_REFERENCE, Manifest, write_manifest
from fraud_detection.data.generator import GeneratorConfig, generate_transactions
from fraud_detection.features import (
    FEATURE_NAMES,
    MICROS_PER_DAY,
    compute_features,
    timestamps_to_micros,
)
from fraud_detection.monitoring.consumer import DriftMonitor, MonitorConfig, open_sinks
from fraud_detection.monitoring.detector import DEFAULT_P_VAL, DetectorConfig, preload
from fraud_detection.monitoring.reference import (
    DriftReference,
    ReferenceCache,
    RegistryLocator,
    load_reference,
)
from fraud_detection.monitoring.results import evaluate_window
from fraud_detection.monitoring.windows import Observation, PartitionWindows, WindowConfig
from fraud_detection.registry import ModelRegistry
from fraud_detection.schema import CARD_ID, LABEL, TIMESTAMP, TRANSACTION_ID
from fraud_detection.serving.mirror import (
    MirrorConfig,
    MirrorEntry,
    mirror_record,
)
from fraud_detection.streaming.broker import LocalBroker
from fraud_detection.streaming.kafka import create_topics, make_consumer, make_producer
from fraud_detection.training.export import (
    WARM_UP_DAYS,
    ReferenceDraw,
    draw_drift_reference,
    save_drift_reference,
)

TOPIC = "bench-mirror"
MEMORY_TOPIC = "bench-memory"
VERSION = "bench-model"
#: The first argument of the memory run's monitor process (this script, run again).
CHILD = "--memory-monitor-process"
#: The memory run gives up when nothing was consumed for this long.
STALL_S = 180.0
#: Settings of ``--quick``: fewer days of traffic, fewer memory records.
QUICK = {
    "transactions": 240_000,
    "days": 80,
    "drift_day": 73,
    "memory_records": 20_000,
}


@dataclass(frozen=True)
class Traffic:
    """The monitored days, scored, in time order; ``drift_start`` in microseconds (UTC)."""

    frame: pd.DataFrame
    features: np.ndarray
    scores: np.ndarray
    times: np.ndarray
    drift_start: int

    @property
    def stationary(self) -> np.ndarray:
        """Which records come before the drift."""
        return self.times < self.drift_start


def prepare(args: argparse.Namespace, console: Console, registry: Path) -> Traffic:
    """Generate, featurize, train, score; write the exported reference into ``registry``."""
    from sklearn.ensemble import RandomForestClassifier

    with console.status(f"generating {args.transactions:,} transactions over {args.days} days"):
        frame = generate_transactions(
            GeneratorConfig(
                n_transactions=args.transactions,
                n_cards=args.cards,
                days=args.days,
                seed=args.seed,
                drift_start_day=args.drift_day,
            )
        )
        frame = frame.sort_values(TIMESTAMP, kind="stable").reset_index(drop=True)
        features = compute_features(frame)[list(FEATURE_NAMES)].to_numpy(dtype=np.float64)
    times = timestamps_to_micros(frame[TIMESTAMP])
    first_day = times.min() // MICROS_PER_DAY
    day = times // MICROS_PER_DAY - first_day
    train = day < args.train_days
    held_out = (day >= args.train_days) & (day < args.train_days + args.reference_days)
    monitored = day >= args.train_days + args.reference_days
    if args.train_days <= WARM_UP_DAYS:
        raise SystemExit(f"--train-days must exceed the features' warm-up ({WARM_UP_DAYS} days)")
    if not args.train_days + args.reference_days < args.drift_day < args.days:
        raise SystemExit("--drift-day must fall inside the monitored days")
    with console.status(f"training a forest on {train.sum():,} transactions"):
        model = RandomForestClassifier(
            n_estimators=30, max_depth=8, class_weight="balanced", random_state=args.seed, n_jobs=2
        )
        model.fit(features[train], frame.loc[train, LABEL].to_numpy())

    def score(rows: np.ndarray) -> np.ndarray:
        return model.predict_proba(rows)[:, 1]

    draw = draw_drift_reference(
        features, times, held_out, score, args.reference_rows, args.seed, data_start=times.min()
    )
    write_reference(ModelRegistry(registry).versions_dir / VERSION, draw)
    console.print(
        f"trained on days 0-{args.train_days - 1}; the export's reference: {draw.rows:,} rows of "
        f"days {args.train_days}-{args.train_days + args.reference_days - 1} ({draw.days} days, "
        f"first {draw.warm_up_days} days of the data skipped"
        f"{'; ' + '; '.join(draw.warnings) if draw.warnings else ''}); monitoring days "
        f"{args.train_days + args.reference_days}-{args.days - 1}, drift from day "
        f"{args.drift_day}: {monitored.sum():,} records"
    )
    return Traffic(
        frame[monitored].reset_index(drop=True),
        features[monitored],
        score(features[monitored]).round(6),
        times[monitored],
        int((first_day + args.drift_day) * MICROS_PER_DAY),
    )


def write_reference(directory: Path, draw: ReferenceDraw) -> None:
    """A bundle directory with the drawn reference (and its scores) and a manifest."""
    directory.mkdir(parents=True)
    save_drift_reference(directory / DRIFT_REFERENCE, draw.features, draw.scores)
    write_manifest(directory, Manifest(directory.name, list(FEATURE_NAMES), 0.1))


def mirror_records(
    traffic: Traffic, select: np.ndarray | None = None, cycle: int = 0, shift: int = 0
) -> Iterator[tuple[bytes, bytes, list]]:
    """(key, value, headers) of each monitored transaction, as the transformer mirrors it.

    ``cycle`` > 0 gives the transactions new ids and moves them ``cycle * shift`` microseconds
    on (the memory run's repeated traffic).
    """
    config = MirrorConfig(bootstrap="-", topic=TOPIC)
    indices = np.arange(len(traffic.frame)) if select is None else np.flatnonzero(select)
    ids = traffic.frame[TRANSACTION_ID].to_numpy()
    cards = traffic.frame[CARD_ID].to_numpy()
    for index in indices:
        tx = str(ids[index]) if cycle == 0 else f"{ids[index]}-c{cycle}"
        score = float(traffic.scores[index])
        entry = MirrorEntry(
            tx,
            str(cards[index]),
            int(traffic.times[index]) + cycle * shift,
            traffic.features[index].tolist(),
            score,
            score >= 0.1,
            0.1,
            VERSION,
        )
        yield mirror_record(config, entry)


def produce(
    bootstrap: str,
    topic: str,
    records: Iterable[tuple[bytes, bytes, list]],
    total: int,
    progress: Progress,
) -> float:
    """Send ``records`` to ``topic``; the seconds it took."""
    producer = make_producer(bootstrap, linger_ms=20, acks=1)
    task = progress.add_task(f"producing to {topic}", total=total)
    started = time.perf_counter()
    sent = 0
    for key, value, headers in records:
        producer.send(topic, key=key, value=value, headers=headers)
        sent += 1
        if sent % 5_000 == 0:
            progress.update(task, completed=sent)
        if sent >= total:
            break
    producer.flush()
    progress.update(task, completed=sent)
    producer.close()
    return time.perf_counter() - started


def raw_consume(bootstrap: str, expected: int) -> float:
    """Records/s of a bare consumer group, from its first record to its last."""
    consumer = make_consumer(bootstrap, TOPIC, group_id=f"bench-raw-{time.time_ns()}")
    seen, first = 0, None
    try:
        deadline = time.monotonic() + 600
        while seen < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                if first is None:
                    first = time.perf_counter()
                seen += len(batch)
        last = time.perf_counter()
    finally:
        consumer.close()
    if seen < expected or first is None:
        raise RuntimeError(f"the raw consumer saw {seen} of {expected} records")
    return seen / (last - first)


def monitor_run(
    bootstrap: str,
    registry: Path,
    expected: int,
    windows: WindowConfig,
    workdir: Path,
    progress: Progress,
) -> tuple[float, list[dict]]:
    """Run the drift monitor until it consumed every record; its records/s and results."""
    config = MonitorConfig(
        bootstrap=bootstrap,
        topic=TOPIC,
        group_id=f"bench-monitor-{time.time_ns()}",
        results_topic="bench-monitoring",
        results_file=workdir / "results.jsonl",
        windows=windows,
    )
    monitor = DriftMonitor(config, ReferenceCache(RegistryLocator(registry)), open_sinks(config))
    stop = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            monitor.run(stop)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    task = progress.add_task("drift monitor", total=expected)
    thread.start()
    first = None
    deadline = time.monotonic() + 1_200
    while monitor.records_consumed < expected and not errors and time.monotonic() < deadline:
        if first is None and monitor.records_consumed:
            first = time.perf_counter()
        progress.update(task, completed=monitor.records_consumed)
        time.sleep(0.05)
    last = time.perf_counter()
    progress.update(task, completed=monitor.records_consumed)
    stop.set()
    thread.join(120)
    if errors:
        raise errors[0]
    if monitor.records_consumed < expected or first is None:
        raise RuntimeError(f"the monitor consumed {monitor.records_consumed} of {expected}")
    lines = (workdir / "results.jsonl").read_bytes().splitlines()
    return expected / (last - first), [orjson.loads(line) for line in lines]


def offline_windows(
    traffic: Traffic,
    reference: DriftReference,
    window: WindowConfig,
    config: DetectorConfig,
    progress: Progress,
    label: str,
) -> list[dict]:
    """The same windows as the monitor's, tested without Kafka (records straight from arrays)."""
    windows = PartitionWindows(TOPIC, 0, window)
    task = progress.add_task(label, total=len(traffic.frame))
    results: list[dict] = []
    for offset in range(len(traffic.frame)):
        observation = Observation(
            offset,
            str(offset),
            int(traffic.times[offset]),
            reference,
            traffic.features[offset],
            float(traffic.scores[offset]),
        )
        for closed in windows.add(observation):
            results += [result.to_dict() for result in evaluate_window(closed, config)]
        if offset % 5_000 == 0:
            progress.update(task, completed=offset)
    progress.update(task, completed=len(traffic.frame))
    return results


def _end_micros(result: dict) -> int:
    return int(pd.Timestamp(result["end"]).value // 1_000)


def split_at_drift(results: list[dict], traffic: Traffic) -> tuple[list[dict], list[dict]]:
    """The tested windows that end before the drift starts, and the others (in offset order)."""
    tested = sorted((r for r in results if r["tested"]), key=lambda r: r["first_offset"])
    before = [r for r in tested if _end_micros(r) < traffic.drift_start]
    return before, [r for r in tested if _end_micros(r) >= traffic.drift_start]


def alarm_row(label: str, stationary: list[dict], p_val: float) -> list[str]:
    """A table row: stationary windows tested, alarms, rate, goal, the columns that raised them."""
    drifted = collections.Counter(name for result in stationary for name in result["drifted"])
    alarms = sum(1 for result in stationary if result["is_drift"])
    top = ", ".join(f"{name} {count}" for name, count in drifted.most_common(4)) or "-"
    rate = alarms / len(stationary) if stationary else float("nan")
    verdict = "yes" if rate <= p_val else "no"
    return [label, f"{len(stationary):,}", f"{alarms:,}", f"{rate:.1%}", verdict, top]


def detection_row(label: str, after: list[dict], traffic: Traffic) -> list[str]:
    """A table row: the first flagged window after the drift's start, and how late it came."""
    first_drift_offset = int(np.argmax(~traffic.stationary))
    flagged = [result for result in after if result["is_drift"]]
    rate = f"{len(flagged)}/{len(after)}"
    if not flagged:
        return [label, rate, "not detected", "-", "-", "-"]
    first = flagged[0]
    records = first["last_offset"] - first_drift_offset + 1
    hours = (_end_micros(first) - traffic.drift_start) / 3.6e9
    position = after.index(first) + 1
    return [
        label,
        rate,
        f"window {position} after the start",
        f"{records:,}",
        f"{hours:.1f}",
        ", ".join(first["drifted"]),
    ]


# ------------------------------------------------------------------------------------- memory
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _consumed(port: int) -> int | None:
    """``fraud_monitor_records_consumed_total`` summed over partitions, or None if unreachable."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return None
    pattern = r"^fraud_monitor_records_consumed_total\{[^}]*\} ([0-9.e+]+)$"
    return int(sum(float(value) for value in re.findall(pattern, text, re.MULTILINE)))


#: The memory run's producer: gzip and large batches. Measured on tansu 0.6.0 (in-memory
#: storage, ~1 KB mirror records): 180-290 B of broker memory per stored record instead of 1,450
#: with kafka-python's defaults (16 KiB batches, no compression), and 3x the fetch rate.
MEMORY_PRODUCER = {"compression_type": "gzip", "batch_size": 512 * 1024, "linger_ms": 50}
#: How far the memory run's producer may run ahead of the monitor (records).
MEMORY_AHEAD = 50_000
#: Records sent between two flushes of the memory run's producer.
MEMORY_CHUNK = 10_000
#: A flush of one chunk that takes longer than this is a stalled producer.
FLUSH_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class MemorySample:
    """One reading of the memory run: the mark aimed at, records consumed and produced, RSS."""

    mark: int
    consumed: int
    produced: int
    monitor_mib: float
    broker_mib: float


class PacedProducer(threading.Thread):
    """Produces ``total`` records to ``topic``, never more than ``ahead`` past ``consumed``.

    The records go out in chunks of :data:`MEMORY_CHUNK`, each flushed before the next, so the
    producer never holds a large backlog and a stalled flush is reported (``error``) instead of
    hanging; the broker holds at most ``ahead`` unread records beyond what the reader took.
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        records: Iterator[tuple[bytes, bytes, list]],
        total: int,
        ahead: int = MEMORY_AHEAD,
    ) -> None:
        super().__init__(name="paced-producer", daemon=True)
        self.bootstrap, self.topic, self.records = bootstrap, topic, records
        self.total, self.ahead = total, ahead
        self.consumed = 0
        self.produced = 0
        self.error: BaseException | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        """Send chunk after chunk while the reader keeps up; flush each one."""
        try:
            producer = make_producer(self.bootstrap, acks=1, **MEMORY_PRODUCER)
            try:
                while self.produced < self.total and not self.stop.is_set():
                    allowed = min(self.total, self.consumed + self.ahead) - self.produced
                    if allowed <= 0:
                        self.stop.wait(0.2)
                        continue
                    count = min(allowed, MEMORY_CHUNK)
                    for _ in range(count):
                        key, value, headers = next(self.records)
                        producer.send(self.topic, key=key, value=value, headers=headers)
                    producer.flush(timeout=FLUSH_TIMEOUT_S)
                    self.produced += count
            finally:
                producer.close(timeout=10)
        except BaseException as exc:
            self.error = exc


def memory_run(
    bootstrap: str,
    broker_pid: int,
    registry: Path,
    traffic: Traffic,
    records: int,
    args: argparse.Namespace,
    workdir: Path,
    progress: Progress,
) -> tuple[list[MemorySample], float]:
    """The drift monitor in its own process over ``records`` records.

    Returns a :class:`MemorySample` when it had consumed 0, 1/4, 1/2, 3/4 and all of them, and
    the largest monitor RSS (MiB) seen in between (read every 0.25 s).
    """
    import psutil

    create_topics(bootstrap, [MEMORY_TOPIC], partitions=1)
    port = _free_port()
    log_path = workdir / "monitor.log"
    command = [
        sys.executable,
        __file__,
        CHILD,
        bootstrap,
        str(registry),
        str(workdir / "memory-results.jsonl"),
        str(port),
        str(args.window),
        str(args.max_span),
    ]
    marks = [0, records // 4, records // 2, 3 * records // 4, records]
    samples: list[MemorySample] = []
    broker = psutil.Process(broker_pid)
    with log_path.open("w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    producer: PacedProducer | None = None
    peak = 0.0
    try:
        rss = psutil.Process(process.pid)

        def sample(mark: int, consumed: int) -> None:
            produced = producer.produced if producer is not None else 0
            monitor_mib = rss.memory_info().rss / 2**20
            broker_mib = broker.memory_info().rss / 2**20
            samples.append(MemorySample(mark, consumed, produced, monitor_mib, broker_mib))

        deadline = time.monotonic() + 180
        while not all(
            text in log_path.read_text() for text in ("alibi-detect imported", "assigned")
        ):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the monitor did not start: {log_path.read_text()[-2000:]}")
            time.sleep(0.2)
        sample(0, _consumed(port) or 0)
        stationary = traffic.stationary
        week = 7 * MICROS_PER_DAY
        span = traffic.times[stationary].max() - traffic.times[stationary].min()
        shift = int(-(-(span + MICROS_PER_DAY) // week) * week)  # whole weeks: same weekdays
        cycles = (mirror_records(traffic, stationary, cycle, shift) for cycle in range(10**6))
        producer = PacedProducer(
            bootstrap, MEMORY_TOPIC, (record for cycle in cycles for record in cycle), records
        )
        producer.start()
        task = progress.add_task("drift monitor (own process)", total=records)
        pending = marks[1:]
        consumed, moved = 0, time.monotonic()
        while pending:
            if process.poll() is not None:
                raise RuntimeError(f"the monitor exited: {log_path.read_text()[-2000:]}")
            if producer.error is not None:
                raise RuntimeError(
                    f"the producer failed after {producer.produced:,} records"
                ) from producer.error
            now = _consumed(port) or 0
            if now > consumed:
                consumed, moved = now, time.monotonic()
                producer.consumed = consumed
            elif time.monotonic() - moved > STALL_S:
                raise RuntimeError(
                    f"no record consumed for {STALL_S:.0f} s, at {consumed:,} of {records:,} "
                    f"({producer.produced:,} produced)"
                )
            peak = max(peak, rss.memory_info().rss / 2**20)
            progress.update(task, completed=consumed)
            while pending and consumed >= pending[0]:
                sample(pending.pop(0), consumed)
            time.sleep(0.25)
    finally:
        if producer is not None:
            producer.stop.set()
            producer.join(FLUSH_TIMEOUT_S)
        process.terminate()
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
    return samples, peak


def monitor_process(
    bootstrap: str, registry: str, results: str, port: str, window: str, max_span: str
) -> None:
    """The memory run's monitor process: the drift monitor over :data:`MEMORY_TOPIC`, results
    to a file, ``/metrics`` on ``port``, until SIGTERM."""
    import logging
    import signal

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    logging.getLogger("fraud_detection.monitoring.consumer").setLevel(logging.INFO)
    config = MonitorConfig(
        bootstrap=bootstrap,
        topic=MEMORY_TOPIC,
        group_id="bench-memory",
        results_topic=None,
        results_file=Path(results),
        windows=WindowConfig(size=int(window), max_span_s=float(max_span)),
        metrics_port=int(port),
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    monitor = DriftMonitor(config, ReferenceCache(RegistryLocator(registry)), open_sinks(config))
    monitor.run(stop)


def parse_args() -> argparse.Namespace:
    """The command line; ``--quick`` replaces the defaults it names."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller, faster run")
    parser.add_argument("--transactions", type=int, default=440_000)
    parser.add_argument("--cards", type=int, default=4_000)
    parser.add_argument("--days", type=int, default=110)
    parser.add_argument("--train-days", type=int, default=45)
    parser.add_argument(
        "--reference-days",
        type=int,
        default=21,
        help="held-out days the reference is drawn from (the day-to-day variation of slow "
        "features, e.g. merchant counts, must be in it: measured here, 7 days gave 8.6 %% "
        "false alarms, 21 days 3.2 %%)",
    )
    parser.add_argument("--drift-day", type=int, default=95, help="the generator's drift_start_day")
    parser.add_argument("--reference-rows", type=int, default=5_000)
    parser.add_argument("--window", type=int, default=1_000, help="records per window")
    parser.add_argument(
        "--max-span", type=float, default=86_400.0, help="longest window, seconds of traffic"
    )
    parser.add_argument(
        "--memory-records",
        type=int,
        default=100_000,
        help="records the monitor process reads for the memory figure (0: skip it); the full "
        "figure is 1000000",
    )
    parser.add_argument(
        "--only",
        choices=("memory",),
        default=None,
        help="run only this phase (memory: the monitor's RSS over --memory-records records)",
    )
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    if args.only == "memory" and args.memory_records <= 0:
        parser.error("--only memory needs --memory-records > 0")
    if args.quick:
        given = set(sys.argv[1:])
        for name, value in QUICK.items():
            if f"--{name.replace('_', '-')}" not in given:
                setattr(args, name, value)
    return args


@dataclass(frozen=True)
class DetectionFigures:
    """What the throughput, false-alarm and delay phases measured."""

    expected: int
    produce_s: float
    raw_rate: float
    monitor_rate: float
    per_window_s: float
    reference_rows: int
    runs: dict[str, list[dict]]


def detection_phases(
    bootstrap: str,
    registry: Path,
    traffic: Traffic,
    windows: WindowConfig,
    workdir: Path,
    progress: Progress,
) -> DetectionFigures:
    """Throughput over Kafka, then the same windows without Kafka (with and without matching)."""
    expected = len(traffic.frame)
    create_topics(bootstrap, [TOPIC], partitions=1)
    produce_s = produce(bootstrap, TOPIC, mirror_records(traffic), expected, progress)
    raw_rate = raw_consume(bootstrap, expected)
    monitor_rate, monitored = monitor_run(bootstrap, registry, expected, windows, workdir, progress)
    reference = load_reference(registry / "versions" / VERSION)
    timed = time.perf_counter()
    offline = offline_windows(
        traffic, reference, windows, DetectorConfig(), progress, "same, no Kafka"
    )
    per_window = (time.perf_counter() - timed) / max(len(offline), 1)
    unmatched = offline_windows(
        traffic, reference, windows, DetectorConfig(match_time=False), progress, "no time matching"
    )
    runs = {
        "time-matched: the monitor over Kafka": monitored,
        "time-matched: no Kafka (check)": offline,
        "whole reference (no matching)": unmatched,
    }
    return DetectionFigures(
        expected, produce_s, raw_rate, monitor_rate, per_window, reference.rows, runs
    )


def print_detection(
    console: Console, figures: DetectionFigures, traffic: Traffic, args: argparse.Namespace
) -> None:
    """Tables (a) throughput, (b) false alarms, (c) detection delay."""
    expected = figures.expected
    throughput = Table(title="(a) drift monitor throughput (1 partition, tansu on loopback)")
    for column in ("phase", "records", "records/s"):
        throughput.add_column(column, justify="left" if column == "phase" else "right")
    throughput.add_row(
        "mirror records produced", f"{expected:,}", f"{expected / figures.produce_s:,.0f}"
    )
    throughput.add_row(
        "raw consume (group, after join)", f"{expected:,}", f"{figures.raw_rate:,.0f}"
    )
    throughput.add_row(
        "drift monitor (after join)", f"{expected:,}", f"{figures.monitor_rate:,.0f}"
    )
    console.print(throughput)
    console.print(
        f"monitor / raw consume: {figures.monitor_rate / figures.raw_rate:.2f}; one window's test "
        f"without Kafka (window {args.window:,}, reference {figures.reference_rows:,} rows): "
        f"{figures.per_window_s * 1e3:.1f} ms"
    )

    monitored = figures.runs["time-matched: the monitor over Kafka"]
    spans = [result["span_seconds"] / 3_600 for result in monitored]
    alarms = Table(
        title=f"(b) false alarms on stationary time-ordered windows, the export's reference "
        f"(p_val {DEFAULT_P_VAL}, Bonferroni; windows of {args.window:,} records or "
        f"{args.max_span / 3_600:g} h: median span {np.median(spans):.1f} h)"
    )
    for column in ("comparison", "windows", "drift", "rate", f"<= {DEFAULT_P_VAL}", "raised by"):
        alarms.add_column(column, justify="left" if column[0] in "cr" else "right")
    for label, results in figures.runs.items():
        alarms.add_row(*alarm_row(label, split_at_drift(results, traffic)[0], DEFAULT_P_VAL))
    console.print(alarms)

    delay = Table(
        title=f"(c) detection delay: the generator's drift from day {args.drift_day} "
        f"({pd.Timestamp(traffic.drift_start, unit='us', tz='UTC'):%Y-%m-%d %H:%M} UTC)"
    )
    for column in ("comparison", "flagged", "first", "records", "hours", "columns that flagged"):
        delay.add_column(column, justify="right" if column in ("records", "hours") else "left")
    for label, results in figures.runs.items():
        delay.add_row(*detection_row(label, split_at_drift(results, traffic)[1], traffic))
    console.print(delay)
    console.print(
        "records and hours: from the drift's first transaction to the end of the first flagged "
        "window (transaction time)"
    )


def print_memory(
    console: Console, samples: list[MemorySample], peak: float, args: argparse.Namespace
) -> None:
    """Table (d): the monitor's RSS (and the broker's) at 0, 1/4, 1/2, 3/4 and all records."""
    table = Table(
        title=f"(d) drift monitor resident memory (own process, windows of {args.window:,}; "
        "the broker keeps every record: in-memory storage)"
    )
    for column in ("share", "records consumed", "monitor RSS MiB", "broker RSS MiB"):
        table.add_column(column, justify="right")
    for sample in samples:
        share = sample.mark / args.memory_records
        table.add_row(
            f"{share:.0%}",
            f"{sample.consumed:,}",
            f"{sample.monitor_mib:,.0f}",
            f"{sample.broker_mib:,.0f}",
        )
    console.print(table)
    if len(samples) > 2:
        growth = samples[-1].monitor_mib - samples[1].monitor_mib
        console.print(
            f"monitor growth from {samples[1].consumed:,} to {samples[-1].consumed:,} records: "
            f"{growth:+.0f} MiB; largest RSS seen: {peak:,.0f} MiB "
            f"(the full figure: --memory-records 1000000)"
        )


def main() -> None:
    """Run the benchmark and print its tables."""
    if sys.argv[1:2] == [CHILD]:
        monitor_process(*sys.argv[2:])
        return
    args = parse_args()
    console = Console(width=None if sys.stdout.isatty() else 130)
    started = time.perf_counter()
    with console.status("importing alibi-detect (not counted)"):
        preload()
    detection: DetectionFigures | None = None
    memory: list[MemorySample] = []
    peak = 0.0
    with tempfile.TemporaryDirectory(prefix="bench-monitor-") as tmp:
        workdir = Path(tmp)
        registry = workdir / "registry"
        traffic = prepare(args, console, registry)
        windows = WindowConfig(size=args.window, max_span_s=args.max_span)
        columns = (
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        with LocalBroker(topics=()) as broker, Progress(*columns, console=console) as progress:
            if args.only is None:
                detection = detection_phases(
                    broker.bootstrap_servers, registry, traffic, windows, workdir, progress
                )
            if args.memory_records > 0:
                assert broker.pid is not None
                memory, peak = memory_run(
                    broker.bootstrap_servers,
                    broker.pid,
                    registry,
                    traffic,
                    args.memory_records,
                    args,
                    workdir,
                    progress,
                )
    if detection is not None:
        print_detection(console, detection, traffic, args)
    if memory:
        print_memory(console, memory, peak, args)
    console.print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
