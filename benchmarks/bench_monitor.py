"""Drift monitor: throughput against the broker's raw consume rate, and false alarms on
stationary, time-ordered traffic.

Generates seeded transactions without drift (:mod:`fraud_detection.data.generator`), computes
their features as training and serving do (:func:`~fraud_detection.features.compute_features`),
trains a small class-weighted forest on the first days and scores the rest with it. Then:

* **references**: the *proposed* one, drawn from held-out days after training (every feature
  window full, scored out of sample, so it carries ``fraud_probability``), and the one the export
  step draws *today* (a sample of all training rows, warm-up days included, no scores);
* **throughput**: the monitored days are mirrored to a local broker as the transformer writes
  them (CloudEvents binary mode, :func:`~fraud_detection.serving.mirror.record_value`); a bare
  consumer group reads them (raw consume rate), then the drift monitor does (parse, window, KS
  tests, results to a topic and a JSON-lines file, commits). Both are timed from their first
  record to their last, so group joins and alibi-detect's import are not counted;
* **false alarms**: every window of the monitored days is stationary by construction, so every
  window flagged as drift is a false alarm. Measured through the monitor with the proposed
  reference, and, on the same windows without Kafka, with time matching off and with today's
  reference.

Not a test: the figures depend on the machine.

    .venv/bin/python benchmarks/bench_monitor.py --transactions 380000 --days 95
"""

from __future__ import annotations

import argparse
import collections
import tempfile
import threading
import time
from collections.abc import Iterable
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
    LABEL_DELAY_DAYS,
    WINDOW_DAYS,
    compute_features,
    timestamps_to_micros,
)
from fraud_detection.monitoring.consumer import DriftMonitor, MonitorConfig, open_sinks
from fraud_detection.monitoring.detector import DetectorConfig, preload
from fraud_detection.monitoring.reference import (
    DriftReference,
    ReferenceCache,
    RegistryLocator,
    load_reference,
)
from fraud_detection.monitoring.results import evaluate_window
from fraud_detection.monitoring.windows import Observation, PartitionWindows, WindowConfig
from fraud_detection.registry import ModelRegistry
from fraud_detection.schema import CARD_ID, LABEL, PROBABILITY_DECIMALS, TIMESTAMP, TRANSACTION_ID
from fraud_detection.serving.mirror import (
    MirrorConfig,
    MirrorEntry,
    event_id,
    record_headers,
    record_value,
)
from fraud_detection.streaming.broker import LocalBroker
from fraud_detection.streaming.kafka import create_topics, make_consumer, make_producer
from fraud_detection.training.export import drift_reference, save_drift_reference

TOPIC = "bench-mirror"
PROPOSED = "proposed"
TODAY = "today"


@dataclass(frozen=True)
class Traffic:
    """The monitored (stationary) days, scored, in time order."""

    frame: pd.DataFrame
    features: np.ndarray
    scores: np.ndarray
    times: np.ndarray


def prepare(args: argparse.Namespace, console: Console, registry: Path) -> Traffic:
    """Generate, featurize, train, score; write both references into ``registry``."""
    from sklearn.ensemble import RandomForestClassifier

    with console.status(f"generating {args.transactions:,} transactions over {args.days} days"):
        frame = generate_transactions(
            GeneratorConfig(
                n_transactions=args.transactions, n_cards=args.cards, days=args.days, seed=args.seed
            )
        )
        frame = frame.sort_values(TIMESTAMP, kind="stable").reset_index(drop=True)
        features = compute_features(frame).to_numpy()
    times = timestamps_to_micros(frame[TIMESTAMP])
    day = (times - times.min()) // (86_400 * 1_000_000)
    train = day < args.train_days
    held_out = (day >= args.train_days) & (day < args.train_days + args.reference_days)
    monitored = day >= args.train_days + args.reference_days
    warm_up = max(WINDOW_DAYS) + LABEL_DELAY_DAYS
    if args.train_days <= warm_up:
        raise SystemExit(f"--train-days must exceed the features' warm-up ({warm_up} days)")
    with console.status(f"training a forest on {train.sum():,} transactions"):
        model = RandomForestClassifier(
            n_estimators=30, max_depth=8, class_weight="balanced", random_state=args.seed, n_jobs=2
        )
        model.fit(features[train], frame.loc[train, LABEL].to_numpy())
    scores = np.round(model.predict_proba(features)[:, 1], PROBABILITY_DECIMALS)

    versions = ModelRegistry(registry).versions_dir
    # Proposed: held-out days (windows full, scored out of sample), with their scores; the rows
    # sampled the way the export samples (seeded, in time order).
    rows = drift_reference(np.flatnonzero(held_out)[:, None], args.reference_rows, args.seed)[:, 0]
    write_reference(versions / PROPOSED, PROPOSED, features[rows], scores[rows])
    # Today: the export step's sample of all training rows, no scores.
    write_reference(
        versions / TODAY, TODAY, drift_reference(features[train], args.reference_rows, args.seed)
    )
    console.print(
        f"trained on days 0-{args.train_days - 1}, reference from days {args.train_days}-"
        f"{args.train_days + args.reference_days - 1}, monitoring days "
        f"{args.train_days + args.reference_days}-{args.days - 1}: {monitored.sum():,} records"
    )
    return Traffic(
        frame[monitored].reset_index(drop=True),
        features[monitored],
        scores[monitored],
        times[monitored],
    )


def write_reference(
    directory: Path, version: str, features: np.ndarray, scores: np.ndarray | None = None
) -> None:
    """A bundle directory with the drift reference (and scores) and its manifest."""
    directory.mkdir(parents=True)
    if scores is None:
        save_drift_reference(directory / DRIFT_REFERENCE, features)
    else:
        np.savez_compressed(
            directory / DRIFT_REFERENCE,
            features=features,
            feature_names=np.array(FEATURE_NAMES),
            fraud_probability=scores,
        )
    write_manifest(directory, Manifest(version, list(FEATURE_NAMES), 0.1))


def mirror_records(traffic: Traffic, version: str) -> Iterable[tuple[bytes, bytes, list]]:
    """(key, value, headers) of each monitored transaction, as the transformer mirrors it."""
    config = MirrorConfig(bootstrap="-", topic=TOPIC)
    for index, row in enumerate(traffic.frame.itertuples(index=False)):
        tx = getattr(row, TRANSACTION_ID)
        entry = MirrorEntry(
            tx,
            getattr(row, CARD_ID),
            int(traffic.times[index]),
            traffic.features[index].tolist(),
            float(traffic.scores[index]),
            bool(traffic.scores[index] >= 0.1),
            0.1,
            version,
        )
        yield entry.card_id.encode(), record_value(entry), record_headers(config, event_id(tx))


def produce(bootstrap: str, traffic: Traffic, progress: Progress) -> float:
    """Mirror every monitored transaction to :data:`TOPIC`; the seconds it took."""
    producer = make_producer(bootstrap, linger_ms=20, acks=1)
    task = progress.add_task("mirroring to the broker", total=len(traffic.frame))
    started = time.perf_counter()
    for index, (key, value, headers) in enumerate(mirror_records(traffic, PROPOSED)):
        producer.send(TOPIC, key=key, value=value, headers=headers)
        if index % 5_000 == 0:
            progress.update(task, completed=index)
    producer.flush()
    progress.update(task, completed=len(traffic.frame))
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


def alarm_row(label: str, results: list[dict]) -> list[str]:
    """A table row: windows tested, alarms, rate, the features that raised them."""
    tested = [result for result in results if result["tested"]]
    drifted = collections.Counter(name for result in tested for name in result["drifted"])
    alarms = sum(1 for result in tested if result["is_drift"])
    top = ", ".join(f"{name} {count}" for name, count in drifted.most_common(4)) or "-"
    rate = alarms / len(tested) if tested else float("nan")
    return [label, f"{len(tested):,}", f"{alarms:,}", f"{rate:.1%}", top]


def main() -> None:
    """Run the benchmark and print its tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transactions", type=int, default=380_000)
    parser.add_argument("--cards", type=int, default=4_000)
    parser.add_argument("--days", type=int, default=95)
    parser.add_argument("--train-days", type=int, default=45)
    parser.add_argument(
        "--reference-days",
        type=int,
        default=21,
        help="held-out days the proposed reference is drawn from (the day-to-day variation of "
        "slow features, e.g. merchant counts, must be in it: measured here, 7 days gave 8.6 %% "
        "false alarms, 21 days 3.2 %%)",
    )
    parser.add_argument("--reference-rows", type=int, default=5_000)
    parser.add_argument("--window", type=int, default=1_000, help="records per window")
    parser.add_argument(
        "--max-span", type=float, default=86_400.0, help="longest window, seconds of traffic"
    )
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()

    console = Console()
    with console.status("importing alibi-detect (not counted)"):
        preload()
    with tempfile.TemporaryDirectory(prefix="bench-monitor-") as tmp:
        workdir = Path(tmp)
        registry = workdir / "registry"
        traffic = prepare(args, console, registry)
        expected = len(traffic.frame)
        windows = WindowConfig(size=args.window, max_span_s=args.max_span)
        columns = (
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        with LocalBroker(topics=()) as broker, Progress(*columns, console=console) as progress:
            create_topics(broker.bootstrap_servers, [TOPIC], partitions=1)
            produce_s = produce(broker.bootstrap_servers, traffic, progress)
            raw_rate = raw_consume(broker.bootstrap_servers, expected)
            monitor_rate, monitored = monitor_run(
                broker.bootstrap_servers, registry, expected, windows, workdir, progress
            )
            proposed = load_reference(registry / "versions" / PROPOSED)
            today = load_reference(registry / "versions" / TODAY)
            started = time.perf_counter()
            offline = offline_windows(
                traffic, proposed, windows, DetectorConfig(), progress, "same, no Kafka"
            )
            per_window = (time.perf_counter() - started) / max(len(offline), 1)
            unmatched = offline_windows(
                traffic,
                proposed,
                windows,
                DetectorConfig(match_time=False),
                progress,
                "no time matching",
            )
            stale = offline_windows(
                traffic, today, windows, DetectorConfig(), progress, "today's reference"
            )

    throughput = Table(title="drift monitor throughput (1 partition, tansu on loopback)")
    for column in ("phase", "records", "records/s"):
        throughput.add_column(column, justify="left" if column == "phase" else "right")
    throughput.add_row("mirror records produced", f"{expected:,}", f"{expected / produce_s:,.0f}")
    throughput.add_row("raw consume (group, after join)", f"{expected:,}", f"{raw_rate:,.0f}")
    throughput.add_row("drift monitor (after join)", f"{expected:,}", f"{monitor_rate:,.0f}")
    console.print(throughput)
    console.print(
        f"monitor / raw consume: {monitor_rate / raw_rate:.2f}; one window's test without Kafka "
        f"(window {args.window:,}, reference {args.reference_rows:,} rows): "
        f"{per_window * 1e3:.1f} ms"
    )

    spans = [result["span_seconds"] / 3_600 for result in monitored]
    alarms = Table(
        title=f"false alarms on stationary time-ordered traffic (p_val 0.05, windows of "
        f"{args.window:,} records or {args.max_span / 3_600:g} h: median span "
        f"{np.median(spans):.1f} h)"
    )
    for column in ("reference, comparison", "windows tested", "drift", "rate", "raised by"):
        alarms.add_column(column, justify="left" if column[0] in "rR" else "right")
    alarms.add_row(*alarm_row("proposed, time-matched: the monitor over Kafka", monitored))
    alarms.add_row(*alarm_row("proposed, time-matched: no Kafka (check)", offline))
    alarms.add_row(*alarm_row("proposed, whole reference (no matching)", unmatched))
    alarms.add_row(*alarm_row("today's export (training rows, no scores)", stale))
    console.print(alarms)


if __name__ == "__main__":
    main()
