"""``fraud replay`` for real: a tansu broker and a transformer ``ModelServer`` process on loopback
(on the event clock, as ``fraud serve --clock event`` runs it), the command run in-process.

The replayed data continues the bundle's training data in time (the held-out split of the
generated data set), so the transformer's event clock accepts it. Every check reads back what
the servers and the broker hold: the mirror topic (what was scored), the labels topic and the
transactions topic.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from fraud_detection.cli import app
from fraud_detection.data.files import write_transactions
from fraud_detection.data.validation import validate_transactions
from fraud_detection.features import timestamps_to_micros
from fraud_detection.replay import MICROS_PER_DAY
from fraud_detection.schema import AMOUNT, LABEL, MERCHANT_ID, TIMESTAMP, TRANSACTION_ID
from fraud_detection.serving.launcher import ServingStack, StackConfig
from fraud_detection.streaming.broker import LocalBroker
from fraud_detection.streaming.kafka import read_topic
from fraud_detection.streaming.labels import parse_label
from fraud_detection.training.ingest import decode_records
from support.bundles import SplitData
from support.serving import STARTUP_TIMEOUT_S
from support.waiting import wait_until

pytestmark = pytest.mark.integration

MIRROR = "it-replay-mirror"
runner = CliRunner()


@pytest.fixture(scope="module")
def broker() -> Iterator[LocalBroker]:
    with LocalBroker(topics=(MIRROR,)) as running:
        yield running


@pytest.fixture(scope="module")
def stack(
    broker: LocalBroker, serving_bundle: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServingStack]:
    config = StackConfig(
        model_dir=serving_bundle,
        startup_timeout_s=STARTUP_TIMEOUT_S,
        kafka=broker.bootstrap_servers,
        mirror_topic=MIRROR,
        collocated=True,
        clock="event",
        state_dir=None,
        log_dir=tmp_path_factory.mktemp("logs"),
        # Mirror at normal priority: the test reads the mirror back, on any load.
        transformer_args=["--mirror_priority", "normal"],
    )
    with ServingStack(config) as running:
        yield running


def replay(stack: ServingStack, broker: LocalBroker, data: Path, *args: str) -> tuple[int, str]:
    assert stack.transformer is not None
    result = runner.invoke(
        app,
        [
            "replay",
            "--data",
            str(data),
            "--url",
            stack.transformer.url,
            "--bootstrap",
            broker.bootstrap_servers,
            *args,
        ],
    )
    return result.exit_code, result.output


def mirrored_ids(bootstrap: str) -> set[str]:
    return {orjson.loads(r.value)[TRANSACTION_ID] for r in read_topic(bootstrap, MIRROR)}


def test_a_replay_scores_everything_and_publishes_exactly_the_due_labels(
    stack: ServingStack, broker: LocalBroker, serving_data: SplitData, tmp_path: Path
) -> None:
    frame = serving_data.held_out.iloc[:900].copy()
    bad_id = str(frame[TRANSACTION_ID].iloc[100])
    frame.loc[frame.index[100], AMOUNT] = -5.0
    data = write_transactions(frame, tmp_path / "held-out.csv")
    labels_topic, tx_topic = "it-replay-labels", "it-replay-transactions"
    summary_file = tmp_path / "summary.json"

    code, output = replay(
        stack,
        broker,
        data,
        "--labels-topic",
        labels_topic,
        "--transactions-topic",
        tx_topic,
        "--label-delay-days",
        "1",
        "--summary",
        str(summary_file),
    )

    assert code == 0, output
    summary = json.loads(summary_file.read_text())
    ids = [str(value) for value in frame[TRANSACTION_ID]]
    good = set(ids) - {bad_id}
    assert summary["transactions_sent"] == len(frame)
    assert summary["scored"] == len(good)
    assert summary["rejected"] == {"400": 1}
    assert f"HTTP 400 {bad_id}: amt:" in " ".join(output.split())
    # Every accepted transaction was scored (and mirrored), the rejected one was not.
    wait_until(
        lambda: mirrored_ids(broker.bootstrap_servers) >= good, "every scored transaction mirrored"
    )
    assert bad_id not in mirrored_ids(broker.bootstrap_servers)

    # The labels topic holds exactly the labels due by the end: time + 1 day <= the data time.
    micros = dict(zip(ids, timestamps_to_micros(frame[TIMESTAMP]).tolist(), strict=True))
    last = max(micros.values())
    due = {i for i in good if micros[i] + MICROS_PER_DAY <= last}
    assert 0 < len(due) < len(good)
    records = read_topic(broker.bootstrap_servers, labels_topic)
    labels = [parse_label(record.value) for record in records]
    assert [record.key.decode() for record in records] == [label.transaction_id for label in labels]
    assert sorted(label.transaction_id for label in labels) == sorted(due)
    truth = frame.assign(**{TRANSACTION_ID: ids}).set_index(TRANSACTION_ID)
    for label in labels:
        row = truth.loc[label.transaction_id]
        assert label.is_fraud == int(row[LABEL])
        assert label.timestamp_micros == micros[label.transaction_id]
        assert label.labelled_at_micros == label.timestamp_micros + MICROS_PER_DAY
        assert label.merchant_id == str(row[MERCHANT_ID])
    assert summary["labels_published"] == len(due)
    assert summary["labels_fraud"] == sum(label.is_fraud for label in labels)

    # The same transactions, labelled, on the transactions topic, as the Kafka ingest reads them.
    ingested = decode_records(read_topic(broker.bootstrap_servers, tx_topic), tx_topic)
    assert sorted(ingested[TRANSACTION_ID]) == sorted(due)
    assert validate_transactions(ingested, labelled=True).ok
    assert summary["labelled_transactions_published"] == len(due)


def test_a_conflicting_transaction_is_rejected_and_the_replay_goes_on(
    stack: ServingStack, broker: LocalBroker, serving_data: SplitData, tmp_path: Path
) -> None:
    """A 409 (a known id with another payload) is counted; the others are scored and, with a
    zero delay, all their labels are published."""
    tag = uuid.uuid4().hex[:8]
    first = serving_data.held_out.iloc[900:905].copy()
    first[TRANSACTION_ID] = [f"{tag}-{i}" for i in range(len(first))]
    code, output = replay(
        stack, broker, write_transactions(first, tmp_path / "a.csv"), "--no-labelled-transactions"
    )
    assert code == 0, output

    again = serving_data.held_out.iloc[905:910].copy()
    again[TRANSACTION_ID] = [f"{tag}-{i}" for i in range(5, 10)]
    again.loc[again.index[2], TRANSACTION_ID] = f"{tag}-0"  # known id, other payload
    labels_topic = f"it-replay-labels-{tag}"
    summary_file = tmp_path / "summary.json"
    code, output = replay(
        stack,
        broker,
        write_transactions(again, tmp_path / "b.csv"),
        "--label-delay-days",
        "0",
        "--labels-topic",
        labels_topic,
        "--no-labelled-transactions",
        "--summary",
        str(summary_file),
    )
    assert code == 0, output
    summary = json.loads(summary_file.read_text())
    assert summary["rejected"] == {"409": 1}
    assert summary["scored"] == 4
    assert f"HTTP 409 {tag}-0: transaction_id:" in " ".join(output.split())
    published = {
        parse_label(r.value).transaction_id
        for r in read_topic(broker.bootstrap_servers, labels_topic)
    }
    assert published == {f"{tag}-{i}" for i in (5, 6, 8, 9)}
    assert summary["labelled_transactions_published"] == 0


def test_a_wall_clock_server_is_named_as_the_problem(
    serving_bundle: Path, serving_data: SplitData, tmp_path: Path
) -> None:
    config = StackConfig(
        model_dir=serving_bundle,
        startup_timeout_s=STARTUP_TIMEOUT_S,
        mirror=False,
        collocated=True,
        clock="wall",
        state_dir=None,
        log_dir=tmp_path / "logs",
    )
    data = write_transactions(
        serving_data.held_out.iloc[:20].drop(columns=[LABEL]), tmp_path / "old.csv"
    )
    with ServingStack(config) as wall:
        assert wall.transformer is not None
        result = runner.invoke(app, ["replay", "--data", str(data), "--url", wall.transformer.url])
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    assert "refused the first transactions for their timestamp" in text
    assert "fraud serve --clock event" in text
    assert "behind the wall clock" in text
