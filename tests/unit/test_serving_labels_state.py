"""Labels in the serving path, without Kafka: idempotent merchant fraud counts, reversals,
snapshot adoption, the state format, the live state's label outcomes and the consumer's
record handling, checkpointed offsets, and the transformer's and ``fraud serve``'s options."""

from __future__ import annotations

import argparse
import gzip
import json
from collections import OrderedDict
from pathlib import Path

import pytest

from fraud_detection.features import (
    FEATURE_NAMES,
    LABEL_DELAY_DAYS,
    MERCHANT_RETENTION_DAYS,
    MICROS_PER_DAY,
    STATE_FORMAT_VERSION,
    OnlineFeatureState,
)
from fraud_detection.serving.checkpoint import Scored, read_checkpoint
from fraud_detection.serving.labels_consumer import (
    DEFAULT_GROUP_ID,
    LabelsConfig,
    LabelsConsumer,
    labels_config_from_args,
)
from fraud_detection.serving.live_state import (
    LABEL_FRAUD,
    LABEL_LEGIT,
    SKIP_TOO_OLD,
    SKIP_UNKNOWN_TRANSACTION,
    Checkpointer,
    LiveState,
    TimePolicy,
)
from fraud_detection.serving.metrics import LABEL_SKIP_REASONS, LABEL_VALUES
from fraud_detection.streaming.labels import BAD_REASONS, Label
from support.waiting import wait_until

DAY0 = 20_000 * MICROS_PER_DAY  # a midnight, UTC
RISK = [FEATURE_NAMES.index(f"merchant_risk_{days}d") for days in (1, 7, 30)]


def state_with_traffic(merchant: str = "m1", per_day: int = 4, days: int = 3) -> OnlineFeatureState:
    """A state that saw ``per_day`` transactions a day at ``merchant`` on days 0..days-1."""
    state = OnlineFeatureState()
    for day in range(days):
        for number in range(per_day):
            stamp = DAY0 + day * MICROS_PER_DAY + (number + 1) * 3_600_000_000
            state.process(f"card-{number}", merchant, 10.0, stamp)
    return state


def risk_seen(state: OnlineFeatureState, merchant: str = "m1", day: int = 1) -> list[float]:
    """The merchant-risk features a transaction would get once ``day``'s labels are visible
    (computed on a copy, so the state is left as it was)."""
    twin = OnlineFeatureState.from_dict(state.to_dict())
    when = DAY0 + (day + LABEL_DELAY_DAYS + 1) * MICROS_PER_DAY
    vector = twin.process("probe-card", merchant, 1.0, when)
    return [vector[index] for index in RISK]


def at(day: int, hour: int = 1) -> int:
    return DAY0 + day * MICROS_PER_DAY + hour * 3_600_000_000


# ------------------------------------------------------------------ OnlineFeatureState
def test_a_fraud_label_counts_once_however_often_it_is_recorded() -> None:
    state = state_with_traffic()
    assert risk_seen(state) == [0.0, 0.0, 0.0]
    assert state.record_label("m1", at(1), 1, "tx-a") is True
    once = risk_seen(state)
    assert once[0] == pytest.approx(1 / 4)
    for _ in range(3):
        assert state.record_label("m1", at(1, 5), 1, "tx-a") is False
    assert risk_seen(state) == once
    assert state.record_label("m1", at(1), 1, "tx-b") is True
    assert risk_seen(state)[0] == pytest.approx(2 / 4)


def test_a_reversed_label_removes_the_fraud_and_stays_idempotent() -> None:
    state = state_with_traffic()
    state.record_label("m1", at(1), 1, "tx-a")
    state.record_label("m1", at(1), 1, "tx-b")
    assert state.record_label("m1", at(1), 0, "tx-a") is True
    assert risk_seen(state)[0] == pytest.approx(1 / 4)
    assert state.record_label("m1", at(1), 0, "tx-a") is False  # a repeated reversal
    assert state.record_label("m1", at(1), 0, "tx-never-fraud") is False
    assert risk_seen(state)[0] == pytest.approx(1 / 4)
    state.record_label("m1", at(1), 1, "tx-a")  # labelled fraud again
    assert risk_seen(state)[0] == pytest.approx(2 / 4)


def test_a_legit_label_for_an_unknown_merchant_creates_nothing() -> None:
    state = state_with_traffic()
    before = state.to_dict()
    assert state.record_label("elsewhere", at(1), 0, "tx-z") is False
    assert state.to_dict() == before


def test_a_label_older_than_the_state_keeps_is_ignored() -> None:
    state = state_with_traffic(days=1)
    state.process("late-card", "m2", 5.0, at(MERCHANT_RETENTION_DAYS + 3))
    assert state.is_too_old_for_labels(at(1))
    before = state.to_dict()
    assert state.record_label("m1", at(1), 1, "tx-old") is False
    assert state.to_dict() == before
    assert not state.is_too_old_for_labels(at(4))


def test_adopt_takes_the_union_of_fraud_ids() -> None:
    live = state_with_traffic()
    snapshot = state_with_traffic()
    for transaction_id in ("a", "b"):
        snapshot.record_label("m1", at(1), 1, transaction_id)
    for transaction_id in ("b", "c"):
        live.record_label("m1", at(1), 1, transaction_id)
    live.adopt(snapshot)
    assert risk_seen(live)[0] == pytest.approx(3 / 4)  # a, b, c: b counted once
    live.adopt(snapshot)  # adopting again changes nothing
    assert risk_seen(live)[0] == pytest.approx(3 / 4)
    # The snapshot keeps its own ids (no sharing of mutable sets).
    live.record_label("m1", at(1), 1, "d")
    assert risk_seen(snapshot)[0] == pytest.approx(2 / 4)


def test_adopt_brings_fraud_days_the_live_state_lacks() -> None:
    live = state_with_traffic(merchant="m1")
    snapshot = state_with_traffic(merchant="m9")
    snapshot.record_label("m9", at(2), 1, "x")
    live.adopt(snapshot)
    assert risk_seen(live, "m9", day=2)[0] == pytest.approx(1 / 4)


def test_the_state_round_trips_with_its_fraud_ids(tmp_path: Path) -> None:
    state = state_with_traffic()
    state.record_label("m1", at(1), 1, "tx-a")
    state.record_label("m1", at(2), 1, "tx-b")
    data = state.to_dict()
    assert data["format"] == STATE_FORMAT_VERSION == 2
    assert ["tx-a"] in [row[2] for row in data["merchants"]["m1"]]  # type: ignore[index]
    restored = OnlineFeatureState.load(state.save(tmp_path / "state.json.gz"))
    assert restored.to_dict() == data
    # The ids came along: a duplicate stays a duplicate after the restore.
    assert restored.record_label("m1", at(1), 1, "tx-a") is False
    assert risk_seen(restored) == risk_seen(state)


def legacy(state: OnlineFeatureState) -> dict[str, object]:
    """``state`` as format 1 wrote it: fraud counts without ids."""
    data = state.to_dict()
    data["format"] = 1
    data["merchants"] = {
        merchant: [[day, tx, len(ids)] for day, tx, ids in rows]
        for merchant, rows in data["merchants"].items()  # type: ignore[union-attr]
    }
    return data


def test_an_old_format_state_is_refused_with_a_reason() -> None:
    state = state_with_traffic()
    state.record_label("m1", at(1), 1, "tx-a")
    with pytest.raises(ValueError, match="format 1 counts merchant frauds without") as caught:
        OnlineFeatureState.from_dict(legacy(state))
    assert "rebuild the bundle" in str(caught.value)
    with pytest.raises(ValueError, match="format 7 is not supported"):
        OnlineFeatureState.from_dict({**state.to_dict(), "format": 7})


def test_an_old_checkpoint_keeps_its_cards_and_drops_its_fraud_counts(tmp_path: Path) -> None:
    state = state_with_traffic()
    state.record_label("m1", at(1), 1, "tx-a")
    document = {
        "format": 1,
        "written_at": "2024-01-01T00:00:00+00:00",
        "model_version": "v1",
        "features": legacy(state),
        "seen": [["tx-1", "card-0", "m1", 10.0, at(0), [0.0] * len(FEATURE_NAMES), True]],
    }
    path = tmp_path / "checkpoint-20240101T000000000000Z-000000.json.gz"
    path.write_bytes(gzip.compress(json.dumps(document).encode()))
    checkpoint = read_checkpoint(path)
    assert checkpoint.features.to_dict()["cards"] == state.to_dict()["cards"]
    assert risk_seen(checkpoint.features) == [0.0, 0.0, 0.0]
    # Re-reading the label (as the consumer does from the earliest offset) restores it once.
    checkpoint.features.record_label("m1", at(1), 1, "tx-a")
    checkpoint.features.record_label("m1", at(1), 1, "tx-a")
    assert risk_seen(checkpoint.features) == risk_seen(state)


# ------------------------------------------------------------------ LiveState
def live_state() -> LiveState:
    seen = OrderedDict(
        [("tx-known", Scored("card-0", "m1", 10.0, at(1), [0.0] * len(FEATURE_NAMES), True))]
    )
    return LiveState(state_with_traffic(), TimePolicy("event"), seen)


def test_labels_resolve_merchant_and_time_from_the_label_or_the_retry_map() -> None:
    live = live_state()
    changes = live.changes
    outcomes = live.apply_labels(
        [
            Label("tx-known", 1, at(9)),  # merchant and time from the retry map
            Label("tx-own", 1, at(9), "m1", at(1)),  # carried by the label
            Label("tx-own", 1, at(9), "m1", at(1)),  # a duplicate: applied, changes nothing
            Label("tx-lost", 1, at(9)),  # neither
            Label("tx-half", 1, at(9), "m1"),  # a merchant, no time, not remembered
            Label("tx-legit", 0, at(9), "m1", at(1)),
        ],
        {("labels", 0): 6},
    )
    assert outcomes == {LABEL_FRAUD: 3, LABEL_LEGIT: 1, SKIP_UNKNOWN_TRANSACTION: 2}
    assert live.changes == changes + 2
    assert live.label_offsets == {("labels", 0): 6}
    assert risk_seen(live.features)[0] == pytest.approx(2 / 4)


def test_a_label_too_old_for_any_window_is_skipped() -> None:
    live = live_state()
    live.features.process("late", "m2", 1.0, at(MERCHANT_RETENTION_DAYS + 3))
    outcomes = live.apply_labels([Label("tx-known", 1, at(50))])
    assert outcomes == {SKIP_TOO_OLD: 1}


def test_the_consumer_counts_unusable_records_by_reason_and_applies_the_rest() -> None:
    live = live_state()
    consumer = LabelsConsumer(LabelsConfig("unused:9092", "labels", apply_batch=2), lambda: live)
    good = [Label(f"tx-{n}", 1, at(9), "m1", at(1)).value() for n in range(5)]
    values = [
        *good,
        b"{not json",
        None,
        b'{"is_fraud": 1, "labelled_at": "2024-01-01T00:00:00Z"}',
        b'{"transaction_id": "t", "is_fraud": 2, "labelled_at": "2024-01-01T00:00:00Z"}',
        Label("tx-nowhere", 1, at(9)).value(),
        *good,  # re-delivered
    ]
    outcomes = consumer.apply(values, {("labels", 0): 42})
    assert outcomes == {
        LABEL_FRAUD: 10,
        "not_json": 2,
        "missing_field": 1,
        "invalid_value": 1,
        SKIP_UNKNOWN_TRANSACTION: 1,
    }
    assert risk_seen(live.features)[0] == pytest.approx(5 / 4)  # five frauds, four transactions
    assert live.label_offsets == {("labels", 0): 42}
    # A batch of unusable records still moves the offsets on.
    consumer.apply([b"[]"], {("labels", 0): 43})
    assert live.label_offsets == {("labels", 0): 43}


def test_skip_reasons_of_the_metrics_cover_every_outcome() -> None:
    assert set(LABEL_SKIP_REASONS) == {*BAD_REASONS, SKIP_UNKNOWN_TRANSACTION, SKIP_TOO_OLD}
    assert set(LABEL_VALUES) == {LABEL_FRAUD, LABEL_LEGIT}


def test_a_checkpoint_records_the_label_offsets_it_includes(tmp_path: Path) -> None:
    live = live_state()
    checkpointer = Checkpointer(lambda: live, tmp_path, 60.0, lambda: "v1")
    live.apply_labels([Label("tx-a", 1, at(9), "m1", at(1))], {("labels", 0): 7})
    assert checkpointer.write() is not None
    assert checkpointer.label_offsets == {("labels", 0): 7}
    live.apply_labels([Label("tx-a", 1, at(9), "m1", at(1))], {("labels", 0): 8})
    assert checkpointer.write() is None  # a duplicate changed nothing: no new checkpoint
    live.apply_labels([Label("tx-b", 1, at(9), "m1", at(1))], {("labels", 0): 9})
    path = checkpointer.write()
    assert path is not None
    assert checkpointer.label_offsets == {("labels", 0): 9}
    assert risk_seen(read_checkpoint(path).features)[0] == pytest.approx(2 / 4)


# ------------------------------------------------------------------ options
def transformer_args(*argv: str) -> argparse.Namespace:
    from fraud_detection.serving.transformer import build_parser

    return build_parser().parse_args(["--model_dir", "/nowhere", "--collocated", *argv])


def test_labels_are_on_by_default_when_kafka_is_configured(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from fraud_detection.serving.transformer import bootstrap_from_args

    monkeypatch.delenv("FRAUD_KAFKA_BOOTSTRAP", raising=False)
    monkeypatch.delenv("FRAUD_KAFKA_TOPIC_LABELS", raising=False)
    args = transformer_args("--kafka_bootstrap", "k:9092")
    config = labels_config_from_args(args, bootstrap_from_args(args))
    assert config == LabelsConfig("k:9092", "fraud-labels", DEFAULT_GROUP_ID)
    args = transformer_args()
    assert labels_config_from_args(args, bootstrap_from_args(args)) is None
    args = transformer_args("--kafka_bootstrap", "k:9092", "--no-labels")
    assert labels_config_from_args(args, bootstrap_from_args(args)) is None
    args = transformer_args("--kafka_bootstrap", "k:9092", "--labels_topic", "t", "--labels")
    config = labels_config_from_args(args, bootstrap_from_args(args))
    assert config is not None and config.topic == "t"
    args = transformer_args("--labels")
    with pytest.raises(ValueError, match="--labels needs Kafka"):
        labels_config_from_args(args, bootstrap_from_args(args))


def test_the_transformer_refuses_labels_without_kafka(monkeypatch: pytest.MonkeyPatch) -> None:
    from fraud_detection.serving.transformer import main

    monkeypatch.delenv("FRAUD_KAFKA_BOOTSTRAP", raising=False)
    with pytest.raises(SystemExit) as exited:
        main(["--model_dir", "/nowhere", "--collocated", "--labels"])
    assert exited.value.code == 2


def test_fraud_serve_passes_the_labels_options() -> None:
    from fraud_detection.serve_cli import labels_arguments

    assert labels_arguments(True, None) == ["--labels"]
    assert labels_arguments(True, "my-labels") == ["--labels", "--labels_topic", "my-labels"]
    assert labels_arguments(False, "my-labels") == ["--no-labels"]
    args = transformer_args("--kafka_bootstrap", "k:9092", *labels_arguments(True, "my-labels"))
    assert (args.labels, args.labels_topic) == (True, "my-labels")


def test_a_broker_that_is_down_is_retried_in_the_background(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from fraud_detection.streaming.broker import LOOPBACK, free_port

    live = live_state()
    config = LabelsConfig(f"{LOOPBACK}:{free_port()}", "labels", reconnect_interval_s=0.05)
    consumer = LabelsConsumer(config, lambda: live)
    with caplog.at_level("WARNING", logger="fraud_detection.serving.labels_consumer"):
        consumer.start()
        wait_until(
            lambda: "labels: cannot reach Kafka" in caplog.text, "the unreachable broker logged"
        )
        # The state stays usable meanwhile (the request path never waits for Kafka).
        assert live.absorb([]) == []
        consumer.stop()
    assert not consumer.connected
    assert caplog.text.count("cannot reach Kafka") == 1  # logged once, retried quietly
