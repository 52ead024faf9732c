"""Produce/consume throughput of kafka-python against the local tansu broker.

Starts a :class:`~fraud_detection.streaming.broker.LocalBroker`, produces ``--records`` records of
about ``--size`` bytes (JSON shaped like a mirrored scoring payload), reads them back, and prints
records/s for each phase. Not a test: the figures depend on the machine.

    .venv/bin/python benchmarks/bench_kafka.py --records 50000 --size 350
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

from fraud_detection.streaming.broker import LocalBroker
from fraud_detection.streaming.kafka import (
    create_topics,
    make_consumer,
    make_producer,
    read_topic,
)


@dataclass(frozen=True)
class Result:
    """One measured phase."""

    phase: str
    records: int
    seconds: float
    payload_bytes: int

    @property
    def rate(self) -> float:
        """Records per second."""
        return self.records / self.seconds if self.seconds else float("inf")


def payloads(count: int, size: int) -> list[bytes]:
    """``count`` distinct JSON payloads of about ``size`` bytes each."""
    out = []
    for i in range(count):
        body: dict[str, object] = {
            "transaction_id": f"tx-{i:09d}",
            "model_version": "bench",
            "fraud_probability": (i % 1000) / 1000,
            "features": {"log_amount": 3.21, "amt_deviation": -0.4, "hour": i % 24},
            "pad": "",
        }
        body["pad"] = "x" * max(size - len(json.dumps(body)), 0)
        out.append(json.dumps(body).encode())
    return out


def produce(bootstrap: str, topic: str, values: list[bytes], **config: object) -> float:
    """Send every value, flush, and return the elapsed seconds."""
    producer = make_producer(bootstrap, **config)
    headers = [("ce_type", b"org.kubeflow.serving.inference.request")]
    try:
        started = time.perf_counter()
        for value in values:
            producer.send(topic, value=value, headers=headers)
        producer.flush()
        return time.perf_counter() - started
    finally:
        producer.close()


def consume_group(bootstrap: str, topic: str, expected: int) -> tuple[float, float]:
    """Consume ``expected`` records in a new group; return (seconds to first record, total)."""
    consumer = make_consumer(bootstrap, topic, group_id=f"bench-{time.time_ns()}")
    seen = 0
    first = None
    try:
        started = time.perf_counter()
        while seen < expected and time.perf_counter() - started < 300:
            for batch in consumer.poll(timeout_ms=500).values():
                if first is None and batch:
                    first = time.perf_counter() - started
                seen += len(batch)
        total = time.perf_counter() - started
    finally:
        consumer.close()
    if seen < expected:
        raise RuntimeError(f"group consumer saw {seen} of {expected} records")
    return first or total, total


def main() -> None:
    """Run the benchmark and print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--size", type=int, default=350, help="approximate bytes per value")
    parser.add_argument("--linger-ms", type=int, default=5, help="linger for the batched run")
    args = parser.parse_args()

    console = Console()
    values = payloads(args.records, args.size)
    size = sum(map(len, values))
    results: list[Result] = []
    with LocalBroker(topics=()) as broker:
        bootstrap = broker.bootstrap_servers
        create_topics(bootstrap, ["bench-default", "bench-linger"])
        console.print(f"tansu at {bootstrap}; {args.records:,} records, {size / len(values):.0f} B")

        seconds = produce(bootstrap, "bench-default", values)
        results.append(Result("produce (acks=all, linger 0)", len(values), seconds, size))
        seconds = produce(bootstrap, "bench-linger", values, linger_ms=args.linger_ms)
        results.append(Result(f"produce (linger {args.linger_ms} ms)", len(values), seconds, size))

        started = time.perf_counter()
        records = read_topic(bootstrap, "bench-default", timeout_s=300)
        seconds = time.perf_counter() - started
        if len(records) != len(values):
            raise RuntimeError(f"read_topic returned {len(records)} of {len(values)} records")
        results.append(Result("consume (read_topic, no group)", len(records), seconds, size))

        join, total = consume_group(bootstrap, "bench-linger", len(values))
        results.append(Result("consume (group, incl. join)", len(values), total, size))
        results.append(Result("consume (group, after join)", len(values), total - join, size))

    table = Table(title="kafka-python on tansu (memory storage, loopback)")
    for column in ("phase", "records", "seconds", "records/s", "MB/s"):
        table.add_column(column, justify="left" if column == "phase" else "right")
    for result in results:
        table.add_row(
            result.phase,
            f"{result.records:,}",
            f"{result.seconds:.2f}",
            f"{result.rate:,.0f}",
            f"{result.payload_bytes / result.seconds / 1e6:.1f}",
        )
    console.print(table)
    console.print(f"consumer-group join to first record: {join:.2f} s")


if __name__ == "__main__":
    main()
