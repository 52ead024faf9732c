"""Publish a generated, labelled transaction history to the training topic of a cluster's Kafka.

The kind end-to-end run (``scripts/kind-e2e.sh``) runs this inside the cluster, in the pipeline
image (``fraud-detection-pipeline``), as the Job ``scripts/seed-job.yaml``: the training pipeline
then ingests the topic (``kafka_topic`` parameter), as it would the labelled transactions of a
real deployment. One JSON record per transaction, keyed by ``transaction_id``, with its
``is_fraud`` label, in time order, on a one-partition topic.

Usage: ``python seed_transactions.py [--transactions N] [--cards N] [--days N] [--seed N]
[--bootstrap HOST:PORT] [--topic NAME]`` (bootstrap default ``$FRAUD_KAFKA_BOOTSTRAP``, topic
default ``$FRAUD_KAFKA_TOPIC_TRANSACTIONS``, else ``transactions``). Exit status 0 when every
record was acknowledged, 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

#: Seconds to wait for the broker to answer before giving up.
BROKER_TIMEOUT_S = 180.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (defaults: the size ``fraud pipeline run`` generates)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transactions", type=int, default=200_000)
    parser.add_argument("--cards", type=int, default=4_000)
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--bootstrap", default=None, help="default $FRAUD_KAFKA_BOOTSTRAP")
    parser.add_argument("--topic", default=None, help="default the project's transactions topic")
    return parser.parse_args(argv)


def labelled_records(transactions: int, cards: int, days: int, seed: int) -> list[dict[str, Any]]:
    """Generated transactions as scoring instances with their ``is_fraud`` label, by time."""
    from fraud_detection.data.generator import GeneratorConfig, generate_transactions
    from fraud_detection.replay import prepare
    from fraud_detection.schema import LABEL

    config = GeneratorConfig(n_transactions=transactions, n_cards=cards, days=days, seed=seed)
    data = prepare(generate_transactions(config))
    return [
        {**instance, LABEL: label}
        for instance, label in zip(data.instances, data.labels, strict=True)
        if label in (0, 1)
    ]


def publish(records: list[dict[str, Any]], bootstrap: str, topic: str) -> int:
    """Send every record, keyed by its ``transaction_id``; return how many were not acknowledged."""
    import orjson

    from fraud_detection.schema import TRANSACTION_ID
    from fraud_detection.streaming.kafka import create_topics, make_producer, wait_for_broker

    wait_for_broker(bootstrap, BROKER_TIMEOUT_S)
    create_topics(bootstrap, [topic])
    producer = make_producer(bootstrap, linger_ms=20)
    failures: list[BaseException] = []
    for record in records:
        key = str(record[TRANSACTION_ID]).encode()
        producer.send(topic, key=key, value=orjson.dumps(record)).add_errback(failures.append)
    producer.flush(timeout=300)
    producer.close(timeout=10)
    return len(failures)


def main(argv: list[str] | None = None) -> int:
    """Generate, publish, report; 0 when the broker acknowledged every record."""
    from fraud_detection.streaming.kafka import Topics, resolve_bootstrap

    args = parse_args(argv)
    bootstrap = resolve_bootstrap(args.bootstrap)
    topic = args.topic or Topics.from_env().transactions
    records = labelled_records(args.transactions, args.cards, args.days, args.seed)
    frauds = sum(record["is_fraud"] for record in records)
    print(f"publishing {len(records):,} transactions ({frauds:,} fraud) to {topic} at {bootstrap}")
    failed = publish(records, bootstrap, topic)
    if failed:
        print(f"error: {failed:,} record(s) were not acknowledged by {bootstrap}", file=sys.stderr)
        return 1
    print(f"published {len(records):,} transactions to {topic}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
