"""Labels into serving, for real: a tansu broker and a transformer process on loopback.

The transformer scores transactions at a merchant; labels for them are published on the labels
topic (some twice, one reversed, one malformed, one for a transaction nobody knows); once its
``/metrics`` show them applied, a transaction at that merchant eight days later gets the
merchant risk the offline definition (``compute_features``) gives, read from the transformer's
checkpoint. Scoring keeps answering while a stream of labels is applied, and a transformer whose
broker is down serves all the same.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

from fraud_detection.bundle import FEATURE_STATE
from fraud_detection.features import (
    FEATURE_NAMES,
    MICROS_PER_DAY,
    MICROS_PER_SECOND,
    OnlineFeatureState,
    compute_features,
)
from fraud_detection.serving.checkpoint import load_latest
from fraud_detection.serving.launcher import ServingStack, StackConfig
from fraud_detection.serving.mirror import iso_timestamp
from fraud_detection.streaming.broker import LocalBroker, free_port
from fraud_detection.streaming.kafka import make_producer
from fraud_detection.streaming.labels import Label
from support.serving import STARTUP_TIMEOUT_S
from support.waiting import wait_until

pytestmark = pytest.mark.integration

MIRROR_TOPIC = "it-labels-mirror"
LABELS_TOPIC = "it-labels"
HOUR = 3_600 * MICROS_PER_SECOND
MERCHANT_COLUMNS = [name for name in FEATURE_NAMES if name.startswith("merchant_")]


@pytest.fixture(scope="module")
def broker() -> Iterator[LocalBroker]:
    with LocalBroker(port=free_port(), topics=[MIRROR_TOPIC, LABELS_TOPIC]) as running:
        yield running


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("serving-state")


@pytest.fixture(scope="module")
def stack(
    broker: LocalBroker,
    serving_bundle: Path,
    state_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServingStack]:
    config = StackConfig(
        model_dir=serving_bundle,
        startup_timeout_s=STARTUP_TIMEOUT_S,
        kafka=broker.bootstrap_servers,
        mirror_topic=MIRROR_TOPIC,
        collocated=True,
        log_dir=tmp_path_factory.mktemp("logs"),
        clock="event",
        state_dir=state_dir,
        checkpoint_interval_s=0.3,
        transformer_args=["--labels_topic", LABELS_TOPIC, "--mirror_priority", "normal"],
    )
    with ServingStack(config) as running:
        yield running


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=60.0) as http:
        yield http


@pytest.fixture(scope="module")
def clock(serving_bundle: Path) -> list[int]:
    """The event clock the tests move forward (starts at the bundle snapshot's latest time)."""
    snapshot = OnlineFeatureState.load(serving_bundle / FEATURE_STATE)
    assert snapshot.last_timestamp_micros is not None
    return [snapshot.last_timestamp_micros]


def metric(client: httpx.Client, stack: ServingStack, name: str, labels: str) -> float:
    """One sample of the transformer's ``/metrics`` (0 when absent)."""
    for line in client.get(f"{stack.url}/metrics").text.splitlines():
        if line.startswith(f"{name}{{{labels}}} "):
            return float(line.split()[-1])
    return 0.0


def score(client: httpx.Client, stack: ServingStack, *instances: dict[str, Any]) -> None:
    response = client.post(stack.predict_url, json={"instances": list(instances)})
    assert response.status_code == 200, response.text


def instance(transaction_id: str, card: str, merchant: str, stamp: int) -> dict[str, Any]:
    return {
        "transaction_id": transaction_id,
        "card_id": card,
        "merchant_id": merchant,
        "amt": 25.0,
        "timestamp": iso_timestamp(stamp),
    }


def publish(bootstrap: str, values: list[tuple[bytes, bytes]]) -> None:
    producer = make_producer(bootstrap, linger_ms=5)
    try:
        for key, value in values:
            producer.send(LABELS_TOPIC, key=key, value=value)
        producer.flush(timeout=60)
    finally:
        producer.close(timeout=10)


def walk_clock(client: httpx.Client, stack: ServingStack, clock: list[int], until: int) -> None:
    """Move the event clock to ``until`` with transactions elsewhere (under a day per step)."""
    while clock[0] < until:
        clock[0] = min(clock[0] + 20 * HOUR, until)
        step = f"walk-{clock[0]}"
        score(client, stack, instance(step, "card-walker", "merchant-walker", clock[0]))


def test_labels_give_merchant_risk_as_offline_once_each(
    stack: ServingStack,
    broker: LocalBroker,
    client: httpx.Client,
    state_dir: Path,
    clock: list[int],
) -> None:
    merchant = "merchant-it-labels"
    start = clock[0] + 60 * MICROS_PER_SECOND
    scored = [
        instance(f"lab-{n}", f"card-lab-{n}", merchant, start + n * MICROS_PER_SECOND)
        for n in range(5)
    ]
    score(client, stack, *scored)
    clock[0] = start + 4 * MICROS_PER_SECOND
    labelled_at = clock[0]

    def label(transaction_id: str, is_fraud: int) -> tuple[bytes, bytes]:
        record = Label(transaction_id, is_fraud, labelled_at)  # merchant, time: remembered
        return record.key(), record.value()

    applied_fraud = metric(client, stack, "fraud_labels_applied_total", 'label="fraud"')
    applied_legit = metric(client, stack, "fraud_labels_applied_total", 'label="legit"')
    not_json = metric(client, stack, "fraud_labels_skipped_total", 'reason="not_json"')
    unknown = metric(client, stack, "fraud_labels_skipped_total", 'reason="unknown_transaction"')
    publish(
        broker.bootstrap_servers,
        [
            label("lab-0", 1),
            label("lab-1", 1),
            label("lab-0", 1),  # a duplicate
            label("lab-2", 1),
            label("lab-2", 0),  # reversed
            label("lab-3", 0),
            (b"bad", b"{this is not json"),
            label("nobody-scored-this", 1),
            label("lab-1", 1),  # another duplicate
        ],
    )

    def all_counted() -> bool:
        return (
            metric(client, stack, "fraud_labels_applied_total", 'label="fraud"')
            >= applied_fraud + 5
            and metric(client, stack, "fraud_labels_applied_total", 'label="legit"')
            >= applied_legit + 2
            and metric(client, stack, "fraud_labels_skipped_total", 'reason="not_json"')
            >= not_json + 1
            and metric(client, stack, "fraud_labels_skipped_total", 'reason="unknown_transaction"')
            >= unknown + 1
        )

    wait_until(all_counted, "the labels to be applied and the bad ones counted")

    # A transaction at the merchant once the labels' day is visible (8 days later).
    probe_time = (clock[0] // MICROS_PER_DAY + 8) * MICROS_PER_DAY + 12 * HOUR
    walk_clock(client, stack, clock, probe_time - HOUR)
    probe = instance("lab-probe", "card-lab-probe", merchant, probe_time)
    score(client, stack, probe)
    clock[0] = probe_time

    def probe_checkpointed() -> list[float] | None:
        checkpoint = load_latest(state_dir)
        known = checkpoint.seen.get("lab-probe") if checkpoint is not None else None
        return known.features if known is not None else None

    online = dict(zip(FEATURE_NAMES, wait_until(probe_checkpointed, "a checkpoint"), strict=True))
    frame = pd.DataFrame([*scored, probe])
    frame["is_fraud"] = [1, 1, 0, 0, 0, 0]  # lab-0, lab-1; lab-2 reversed
    offline = compute_features(frame).iloc[-1]
    assert offline["merchant_count_1d"] == 5
    assert offline["merchant_risk_30d"] == pytest.approx(2 / 5)
    for name in MERCHANT_COLUMNS:
        assert online[name] == pytest.approx(offline[name], abs=1e-9), name


def test_scoring_answers_while_labels_stream_in(
    stack: ServingStack, broker: LocalBroker, client: httpx.Client, clock: list[int]
) -> None:
    count = 3_000
    stamp = clock[0]
    before = metric(client, stack, "fraud_labels_applied_total", 'label="fraud"')
    stream = [
        Label(f"stream-{n}", 1, stamp, f"merchant-stream-{n % 50}", stamp - n).value()
        for n in range(count)
    ]
    publisher = threading.Thread(
        target=publish, args=(broker.bootstrap_servers, [(b"k", value) for value in stream])
    )
    publisher.start()
    answered = 0
    try:
        while publisher.is_alive() or answered < 20:
            answered += 1
            clock[0] += MICROS_PER_SECOND
            score(client, stack, instance(f"during-{answered}", "card-during", "m-x", clock[0]))
    finally:
        publisher.join()
    wait_until(
        lambda: (
            metric(client, stack, "fraud_labels_applied_total", 'label="fraud"') >= before + count
        ),
        "the streamed labels to be applied",
    )
    assert answered >= 20
