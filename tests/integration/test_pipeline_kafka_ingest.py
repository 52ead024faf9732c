"""Ingestion from a Kafka topic (bounded read) against a real local broker."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from kfp.dsl import Dataset, Markdown

from fraud_detection.data.files import format_timestamps
from fraud_detection.data.generator import GeneratorConfig, generate_transactions
from fraud_detection.pipeline.components import build_components
from fraud_detection.schema import TIMESTAMP, TRANSACTION_ID
from fraud_detection.streaming.broker import LocalBroker
from fraud_detection.streaming.kafka import create_topics, make_producer
from fraud_detection.training.ingest import IngestError

pytestmark = pytest.mark.integration
TOPIC = "training-transactions"


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    config = GeneratorConfig(n_transactions=600, n_cards=40, days=10, fraud_rate=0.05, seed=4)
    return generate_transactions(config)


@pytest.fixture(scope="module")
def broker(frame: pd.DataFrame) -> Iterator[LocalBroker]:
    """A broker whose topic holds every transaction of ``frame`` as one JSON record each."""
    with LocalBroker(topics=[]) as running:
        create_topics(running.bootstrap_servers, [TOPIC], partitions=1)
        producer = make_producer(running.bootstrap_servers, linger_ms=5)
        rows = frame.assign(**{TIMESTAMP: format_timestamps(frame[TIMESTAMP])})
        for record in rows.to_dict(orient="records"):
            producer.send(TOPIC, json.dumps(record).encode())
        producer.flush()
        producer.close()
        yield running


def ingest(
    broker: LocalBroker,
    tmp_path: Path,
    topic: str = TOPIC,
    limit: int = 0,
    files: list[str] | None = None,
) -> Dataset:
    raw = Dataset(name="raw", uri=str(tmp_path / "raw"))
    build_components()["ingest"].python_func(
        data=files or [],
        kafka_bootstrap=broker.bootstrap_servers,
        kafka_topic=topic,
        kafka_max_records=limit,
        raw=raw,
    )
    return raw


def test_the_whole_topic_is_read_up_to_the_end_offsets_and_validates(
    broker: LocalBroker, frame: pd.DataFrame, tmp_path: Path
) -> None:
    raw = ingest(broker, tmp_path)
    got = pd.read_parquet(raw.path)
    assert list(got[TRANSACTION_ID]) == list(frame[TRANSACTION_ID])
    assert raw.metadata["source"] == f"kafka:{TOPIC}@{broker.bootstrap_servers}"
    validated = Dataset(name="validated", uri=str(tmp_path / "validated"))
    build_components()["validate"].python_func(
        raw=raw,
        max_invalid_fraction=0.0,
        validated=validated,
        report=Markdown(name="r", uri=str(tmp_path / "report")),
    )
    typed = pd.read_parquet(validated.path)
    pd.testing.assert_series_equal(typed["amt"], frame["amt"], check_names=False)
    assert (typed[TIMESTAMP] == frame[TIMESTAMP]).all()


def test_a_record_limit_bounds_the_read(broker: LocalBroker, tmp_path: Path) -> None:
    raw = ingest(broker, tmp_path, limit=250)
    assert len(pd.read_parquet(raw.path)) == 250 == raw.metadata["rows"]


def test_an_unknown_topic_is_named(broker: LocalBroker, tmp_path: Path) -> None:
    with pytest.raises(IngestError, match=r"kafka:no-such-topic.*does not exist"):
        ingest(broker, tmp_path, topic="no-such-topic")


def test_files_and_a_topic_together_are_one_input(
    broker: LocalBroker, frame: pd.DataFrame, tmp_path: Path
) -> None:
    """The history in a file and the recently labelled transactions in a topic: one frame."""
    history = GeneratorConfig(n_transactions=300, n_cards=30, days=5, fraud_rate=0.05, seed=5)
    older = generate_transactions(history)
    older[TRANSACTION_ID] = "old-" + older[TRANSACTION_ID].astype(str)
    path = tmp_path / "history.parquet"
    older.to_parquet(path)
    raw = ingest(broker, tmp_path, files=[str(path)])
    got = pd.read_parquet(raw.path)
    assert list(got[TRANSACTION_ID]) == [*older[TRANSACTION_ID], *frame[TRANSACTION_ID]]
    assert raw.metadata["source"] == f"{path} + kafka:{TOPIC}@{broker.bootstrap_servers}"
    validated = Dataset(name="validated", uri=str(tmp_path / "validated"))
    build_components()["validate"].python_func(
        raw=raw,
        max_invalid_fraction=0.0,
        validated=validated,
        report=Markdown(name="r", uri=str(tmp_path / "report")),
    )
    typed = pd.read_parquet(validated.path)
    assert len(typed) == len(older) + len(frame)
    expected = pd.concat([older[TIMESTAMP], frame[TIMESTAMP]], ignore_index=True)
    assert (typed[TIMESTAMP].reset_index(drop=True) == expected).all()
