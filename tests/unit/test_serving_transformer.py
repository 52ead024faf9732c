"""The transformer model in-process (collocated scoring, no servers): features from the live
state, threshold, retries and conflicts, the accepted time range, model switches and
checkpoints that keep the state, v2, mirror hand-off; and the request decoding that keeps
malformed requests out of 5xx."""

from __future__ import annotations

import asyncio
import copy
import logging
import math
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fraud_detection.bundle import FEATURE_STATE
from fraud_detection.features import (
    CARD_FEATURE_NAMES,
    MICROS_PER_SECOND,
    OnlineFeatureState,
)
from fraud_detection.schema import MAX_AMOUNT, is_flagged
from fraud_detection.serving.app import BodyLimitMiddleware, decode_json_body, make_dataplane
from fraud_detection.serving.checkpoint import checkpoints, load_latest
from fraud_detection.serving.demo import to_instance
from fraud_detection.serving.live_state import EVENT_CLOCK, WALL_CLOCK, TimePolicy
from fraud_detection.serving.mirror import KafkaMirror, MirrorConfig, MirrorEntry, iso_timestamp
from fraud_detection.serving.model import BundleSource, load_scoring_model
from fraud_detection.serving.requests import RequestError
from support.bundles import SplitData, build_bundle

N_CARD_FEATURES = len(CARD_FEATURE_NAMES)


class RecordingMirror(KafkaMirror):
    """A mirror whose queue is inspected instead of drained (the sender thread never starts)."""

    def __init__(self) -> None:
        super().__init__(MirrorConfig(bootstrap="127.0.0.1:1", topic="unused"))
        self.entries: list[MirrorEntry] = []

    def offer(self, entry: MirrorEntry) -> bool:
        self.entries.append(entry)
        return True


def make(bundle: Path, **options: Any) -> Any:
    """A loaded collocated transformer; the event clock unless told (the data is historical)."""
    from fraud_detection.serving.transformer import make_transformer

    options.setdefault("time_policy", TimePolicy(EVENT_CLOCK))
    model = make_transformer(
        "fraud-detector", BundleSource(model_dir=bundle), collocated=True, **options
    )
    model.load()
    return model


def score(model: Any, body: Any) -> Any:
    answer, _headers = asyncio.run(model(body))
    return answer


def refused(model: Any, body: Any) -> RequestError:
    with pytest.raises(RequestError) as caught:
        score(model, body)
    return caught.value


def instances(data: SplitData, count: int, start: int = 0) -> list[dict[str, Any]]:
    return [
        to_instance(row) for row in data.held_out.iloc[start : start + count].to_dict("records")
    ]


def snapshot_clock(bundle: Path) -> int:
    """The latest timestamp of the bundle's feature snapshot: where the event clock starts."""
    clock = OnlineFeatureState.load(bundle / FEATURE_STATE).last_timestamp_micros
    assert clock is not None
    return clock


def tx_at(clock: int, seconds: float, number: int, **fields: Any) -> dict[str, Any]:
    """A transaction ``seconds`` after ``clock`` (card ``card-new`` unless told)."""
    return {
        "transaction_id": f"t-{number}",
        "card_id": "card-new",
        "merchant_id": "m-1",
        "amt": 40.0,
        "timestamp": iso_timestamp(clock + int(seconds * MICROS_PER_SECOND)),
        **fields,
    }


def state_of(model: Any) -> dict[str, Any]:
    """A deep copy of the live state's contents (to check that nothing changed)."""
    return copy.deepcopy({"features": model.live.features.to_dict(), "seen": dict(model.live.seen)})


def test_scores_with_the_online_features(serving_bundle: Path, serving_data: SplitData) -> None:
    model = make(serving_bundle)
    batch = instances(serving_data, 20)
    answer = score(model, {"instances": batch})
    predictions = answer["predictions"]
    assert [p["transaction_id"] for p in predictions] == [i["transaction_id"] for i in batch]
    # The same transactions through a fresh copy of the snapshot and the model directly.
    state = OnlineFeatureState.load(serving_bundle / FEATURE_STATE)
    rows = [state.process_transaction(instance) for instance in batch]
    expected = load_scoring_model(serving_bundle).score(rows)
    assert [p["fraud_probability"] for p in predictions] == pytest.approx(expected, abs=1e-6)
    for prediction, probability in zip(predictions, expected, strict=True):
        assert prediction["is_fraud"] == is_flagged(probability, 0.1)
        assert prediction["threshold"] == 0.1 and prediction["model_version"] == "test-1"
        assert set(prediction) == {
            "transaction_id",
            "fraud_probability",
            "is_fraud",
            "threshold",
            "model_version",
        }


def test_an_identical_retry_is_absorbed_and_mirrored_once(serving_bundle: Path) -> None:
    mirror = RecordingMirror()
    model = make(serving_bundle, mirror=mirror)
    clock = snapshot_clock(serving_bundle)
    tx = tx_at(clock, 60, 1)
    first = score(model, {"instances": [tx]})["predictions"][0]
    retried = score(model, {"instances": [tx]})["predictions"][0]
    assert retried == first
    score(model, {"instances": [tx_at(clock, 120, 2)]})
    assert [entry.transaction_id for entry in mirror.entries] == ["t-1", "t-2"]
    # Two transactions absorbed for the new card, not three.
    later = score(model, {"instances": [tx_at(clock, 180, 3)]})["predictions"][0]
    assert later["transaction_id"] == "t-3"
    assert mirror.entries[-1].features[2] == 2.0  # card_count_1d


def test_another_payload_under_a_known_id_is_a_conflict_and_changes_nothing(
    serving_bundle: Path,
) -> None:
    model = make(serving_bundle)
    clock = snapshot_clock(serving_bundle)
    score(model, {"instances": [tx_at(clock, 60, 1)]})
    before = state_of(model)
    error = refused(model, {"instances": [tx_at(clock, 60, 1, amt=41.0)]})
    assert error.status == 409 and error.field == "instances[0].transaction_id"
    assert "amt" in error.reason
    # One conflicting instance refuses the whole request: the new one is not absorbed either.
    error = refused(
        model,
        {"instances": [tx_at(clock, 90, 2), tx_at(clock, 60, 1, card_id="card-other")]},
    )
    assert error.status == 409 and error.field == "instances[1].transaction_id"
    assert state_of(model) == before


@pytest.mark.parametrize(
    ("seconds", "accepted"),
    [
        (86_399, True),  # within the event clock's skew of a day
        (86_401, False),  # ahead of the clock
        (-29 * 86_400, True),  # late, within the longest window
        (-31 * 86_400, False),  # older than any window
        (7_300_000_000, False),  # year 2257
    ],
)
def test_only_timestamps_near_the_event_clock_are_accepted(
    serving_bundle: Path, seconds: float, accepted: bool
) -> None:
    model = make(serving_bundle)
    clock = snapshot_clock(serving_bundle)
    before = state_of(model)
    body = {"instances": [tx_at(clock, seconds, 1)]}
    if accepted:
        assert score(model, body)["predictions"][0]["transaction_id"] == "t-1"
        assert model.live.features.last_timestamp_micros == max(
            clock, clock + int(seconds * MICROS_PER_SECOND)
        )
    else:
        error = refused(model, body)
        assert error.status == 400 and error.field == "instances[0].timestamp"
        assert "clock" in error.reason
        assert state_of(model) == before


def test_a_far_future_transaction_cannot_poison_a_card_or_a_merchant(
    serving_bundle: Path, serving_data: SplitData
) -> None:
    """The issue's probe: one transaction at 2261 must change nothing for anybody."""
    mirror = RecordingMirror()
    model = make(serving_bundle, mirror=mirror)
    first = serving_data.held_out.iloc[0]
    merchant = str(first["merchant_id"])
    clock = snapshot_clock(serving_bundle)
    score(model, {"instances": [tx_at(clock, 60, 1, merchant_id=merchant)]})
    hostile = tx_at(clock, 0, 2, merchant_id=merchant, timestamp="2261-12-31T23:00:00")
    assert refused(model, {"instances": [hostile]}).field == "instances[0].timestamp"
    score(model, {"instances": [tx_at(clock, 120, 3, merchant_id=merchant)]})
    control = make(serving_bundle, mirror=(control_mirror := RecordingMirror()))
    score(control, {"instances": [tx_at(clock, 60, 1, merchant_id=merchant)]})
    score(control, {"instances": [tx_at(clock, 120, 3, merchant_id=merchant)]})
    assert mirror.entries[-1].features == control_mirror.entries[-1].features
    assert mirror.entries[-1].features[N_CARD_FEATURES] > 0  # the merchant kept its history


def test_the_wall_clock_accepts_now_and_refuses_the_future(serving_bundle: Path) -> None:
    model = make(serving_bundle, time_policy=TimePolicy(WALL_CLOCK))
    now = time.time_ns() // 1_000
    assert score(model, {"instances": [tx_at(now, 0, 1)]})["predictions"]
    for number, seconds in ((2, 3_600), (3, -31 * 86_400)):
        error = refused(model, {"instances": [tx_at(now, seconds, number)]})
        assert error.field == "instances[0].timestamp" and "wall clock" in error.reason


def test_a_huge_amount_does_not_poison_the_card(serving_bundle: Path) -> None:
    """10, then the largest accepted amount, then 10: every answer 200, every feature finite."""
    mirror = RecordingMirror()
    model = make(serving_bundle, mirror=mirror)
    clock = snapshot_clock(serving_bundle)
    for number, amount in enumerate((10.0, MAX_AMOUNT, 10.0, 10.0)):
        prediction = score(model, {"instances": [tx_at(clock, 60 * number, number, amt=amount)]})
        assert math.isfinite(prediction["predictions"][0]["fraud_probability"])
    assert all(math.isfinite(value) for entry in mirror.entries for value in entry.features)
    error = refused(model, {"instances": [tx_at(clock, 300, 9, amt=MAX_AMOUNT * 10)]})
    assert error.field == "instances[0].amt"


def test_the_threshold_compares_rounded_scores(
    serving_bundle: Path, serving_data: SplitData
) -> None:
    """A score equal to the threshold is flagged, and ONNX and scikit-learn give one verdict."""
    batch = instances(serving_data, 1)
    probability = score(make(serving_bundle), {"instances": batch})["predictions"][0]
    at_threshold = make(serving_bundle, threshold=probability["fraud_probability"])
    assert score(at_threshold, {"instances": batch})["predictions"][0]["is_fraud"] is True
    state = OnlineFeatureState.load(serving_bundle / FEATURE_STATE)
    rows = [state.process_transaction(i) for i in instances(serving_data, 400)]
    onnx = load_scoring_model(serving_bundle, "onnx").score(rows)
    sklearn = load_scoring_model(serving_bundle, "sklearn").score(rows)
    for threshold in (0.1, *np.unique(np.round(sklearn, 6))[:50]):
        assert [is_flagged(p, threshold) for p in onnx] == [
            is_flagged(p, threshold) for p in sklearn
        ]


def test_threshold_override(serving_bundle: Path, serving_data: SplitData) -> None:
    """An override between the batch's probabilities flags exactly those at or above it, and
    changes the verdict of some transaction compared with the bundle's 0.1."""
    batch = instances(serving_data, 60)
    default = score(make(serving_bundle), {"instances": batch})["predictions"]
    probabilities = sorted({p["fraud_probability"] for p in default})
    default_flags = [p["is_fraud"] for p in default]

    def flags_at(threshold: float) -> list[bool]:
        return [p["fraud_probability"] >= threshold for p in default]

    # A threshold at one of the scores, with scores on both sides and another verdict than 0.1.
    threshold = next(
        candidate
        for candidate in probabilities[1:]
        if flags_at(candidate) != default_flags and not all(flags_at(candidate))
    )
    predictions = score(make(serving_bundle, threshold=threshold), {"instances": batch})[
        "predictions"
    ]
    assert [p["fraud_probability"] for p in predictions] == [
        p["fraud_probability"] for p in default
    ]
    assert [p["is_fraud"] for p in predictions] == flags_at(threshold) != default_flags
    assert any(p["is_fraud"] for p in predictions) and not all(p["is_fraud"] for p in predictions)
    assert {p["threshold"] for p in predictions} == {threshold}


def test_every_scored_transaction_is_handed_to_the_mirror(
    serving_bundle: Path, serving_data: SplitData
) -> None:
    mirror = RecordingMirror()
    model = make(serving_bundle, mirror=mirror)
    predictions = score(model, {"instances": instances(serving_data, 3)})["predictions"]
    assert [e.transaction_id for e in mirror.entries] == [p["transaction_id"] for p in predictions]
    entry, prediction = mirror.entries[0], predictions[0]
    assert entry.fraud_probability == prediction["fraud_probability"]
    assert entry.model_version == "test-1" and len(entry.features) == 18


# ---------------------------------------------------------------- switches and restarts
def card_history(clock: int) -> list[dict[str, Any]]:
    """Six transactions of one card a minute apart, then a seventh a minute later."""
    return [tx_at(clock, 60 * (number + 1), number) for number in range(7)]


def score_each(model: Any, transactions: list[dict[str, Any]]) -> None:
    for tx in transactions:
        score(model, {"instances": [tx]})


def test_a_model_switch_keeps_the_live_state(
    serving_bundle: Path, serving_data: SplitData, tmp_path: Path
) -> None:
    """Six transactions, a switch to a newer bundle, one more: the card's features are those
    without a switch, and the merchant gets the labels the new bundle knows."""
    newer = pd_concat(serving_data.train, serving_data.held_out.iloc[:300])
    newer_bundle = build_bundle(tmp_path / "test-2", newer, model_version="test-2")
    clock = snapshot_clock(serving_bundle)
    history = card_history(clock)

    mirror = RecordingMirror()
    switched = make(serving_bundle, mirror=mirror)
    score_each(switched, history[:6])
    switched._swap(newer_bundle)
    assert switched.state.version == "test-2"
    score_each(switched, history[6:])

    control_mirror = RecordingMirror()
    control = make(serving_bundle, mirror=control_mirror)
    score_each(control, history)

    after, without = mirror.entries[-1], control_mirror.entries[-1]
    assert after.model_version == "test-2"
    assert after.features[:N_CARD_FEATURES] == without.features[:N_CARD_FEATURES]
    assert after.features[2] == 6.0  # card_count_1d: the live history survived
    expected = OnlineFeatureState.load(serving_bundle / FEATURE_STATE)
    for tx in history[:6]:
        expected.process_transaction(tx)
    expected.adopt(OnlineFeatureState.load(newer_bundle / FEATURE_STATE))
    assert after.features == expected.process_transaction(history[6])
    # The retry map survived too: a retry is answered, a conflict refused.
    assert score(switched, {"instances": [history[0]]})["predictions"]
    assert refused(switched, {"instances": [{**history[0], "amt": 1.0}]}).status == 409


def pd_concat(*frames: Any) -> Any:
    import pandas as pd

    return pd.concat(frames, ignore_index=True)


def test_a_restart_resumes_from_the_checkpoint(serving_bundle: Path, tmp_path: Path) -> None:
    clock = snapshot_clock(serving_bundle)
    history = card_history(clock)
    state_dir = tmp_path / "state"

    first = make(
        serving_bundle, mirror=RecordingMirror(), state_dir=state_dir, checkpoint_interval_s=3_600
    )
    first.start()
    score_each(first, history[:6])
    first.stop()  # writes the final checkpoint
    assert len(checkpoints(state_dir)) == 1

    mirror = RecordingMirror()
    restarted = make(serving_bundle, mirror=mirror, state_dir=state_dir)
    score_each(restarted, history[6:])
    control_mirror = RecordingMirror()
    score_each(make(serving_bundle, mirror=control_mirror), history)
    assert mirror.entries[-1].features == control_mirror.entries[-1].features
    # The retry map and the clock came back as well.
    assert score(restarted, {"instances": [history[2]]})["predictions"]
    assert len(mirror.entries) == 1  # history[2] was mirrored before the restart
    assert refused(restarted, {"instances": [{**history[2], "amt": 1.0}]}).status == 409
    assert restarted.live.features.last_timestamp_micros == history_time(history[6])


def history_time(tx: dict[str, Any]) -> int:
    from fraud_detection.features import timestamp_to_micros

    return timestamp_to_micros(tx["timestamp"])


def test_checkpoints_are_written_in_the_background_and_a_damaged_one_is_skipped(
    serving_bundle: Path, tmp_path: Path
) -> None:
    clock = snapshot_clock(serving_bundle)
    state_dir = tmp_path / "state"
    model = make(serving_bundle, state_dir=state_dir, checkpoint_interval_s=0.05)
    model.start()
    try:
        score_each(model, card_history(clock)[:3])
        deadline = time.monotonic() + 60
        while load_latest(state_dir) is None or len(load_latest(state_dir).seen) < 3:
            assert time.monotonic() < deadline, "no checkpoint with 3 transactions within 60 s"
            time.sleep(0.05)
    finally:
        model.stop()
    newest = checkpoints(state_dir)[-1]
    damaged = newest.with_name(newest.name.replace("checkpoint-", "checkpoint-9"))
    damaged.write_bytes(b"\x1f\x8b truncated")
    restored = load_latest(state_dir)
    assert restored is not None and restored.path == newest and len(restored.seen) == 3


def test_a_bad_bundle_on_switch_keeps_serving(serving_bundle: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(serving_bundle, broken)
    (broken / FEATURE_STATE).write_bytes(b"tampered")
    model = make(serving_bundle)
    failures = sample("fraud_model_switch_failures_total")
    with pytest.raises(Exception, match=r"sha256|match"):
        model.load_bundle(broken)
    assert sample("fraud_model_switch_failures_total") == failures + 1
    assert model.served_version == "test-1"
    assert sample("fraud_model_info", {"version": "test-1"}) == 1.0
    clock = snapshot_clock(serving_bundle)
    assert score(model, {"instances": [tx_at(clock, 60, 1)]})["predictions"]


# ---------------------------------------------------------------- metrics
def sample(name: str, labels: dict[str, str] | None = None) -> float:
    """A sample of the process's Prometheus registry (the one /metrics serves); 0 if absent."""
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


def test_answers_are_counted_in_the_metrics(serving_bundle: Path, serving_data: SplitData) -> None:
    model = make(serving_bundle)
    batch = instances(serving_data, 40)
    names = (
        "fraud_transactions_scored_total",
        "fraud_transactions_flagged_total",
        "fraud_probability_count",
        "fraud_probability_sum",
    )
    before = {name: sample(name) for name in names}
    at_threshold = sample("fraud_probability_bucket", {"le": "0.1"})
    predictions = score(model, {"instances": batch})["predictions"]
    # A refused request counts no transaction.
    assert refused(model, {"instances": [{**batch[0], "amt": -1.0}]}).status == 400
    grown = {name: sample(name) - before[name] for name in names}
    probabilities = [p["fraud_probability"] for p in predictions]
    flagged = sum(p["is_fraud"] for p in predictions)
    assert 0 < flagged < len(batch)
    assert grown["fraud_transactions_scored_total"] == grown["fraud_probability_count"] == 40
    assert grown["fraud_transactions_flagged_total"] == flagged
    assert grown["fraud_probability_sum"] == pytest.approx(sum(probabilities))
    below = sum(probability <= 0.1 for probability in probabilities)
    assert sample("fraud_probability_bucket", {"le": "0.1"}) - at_threshold == below


def test_the_live_cards_gauge_follows_the_live_state(serving_bundle: Path) -> None:
    model = make(serving_bundle)
    cards = len(model.live)
    assert cards > 0 and sample("fraud_live_cards") == cards
    clock = snapshot_clock(serving_bundle)
    score(model, {"instances": [tx_at(clock, 60, 1, card_id=f"card-{uuid.uuid4().hex}")]})
    assert sample("fraud_live_cards") == cards + 1


def test_a_switch_is_logged_with_both_versions_and_counted(
    serving_bundle: Path,
    serving_data: SplitData,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    newer = build_bundle(tmp_path / "test-2", serving_data.train, model_version="test-2")
    model = make(serving_bundle)
    assert sample("fraud_model_info", {"version": "test-1"}) == 1.0
    switches = sample("fraud_model_switches_total")
    with caplog.at_level(logging.INFO, logger="fraud_detection.serving.model"):
        model.load_bundle(newer)
        model.load_bundle(newer)  # a reload (SIGHUP) of the same bundle
    assert sample("fraud_model_switches_total") == switches + 2
    assert sample("fraud_model_info", {"version": "test-2"}) == 1.0
    assert sample("fraud_model_info", {"version": "test-1"}) == 0.0  # one version at a time
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert f"transformer switched model from test-1 to test-2 ({newer})" in messages
    assert f"transformer reloaded model test-2 from {newer}" in messages


def test_a_failed_predictor_call_is_counted_and_the_pool_closed(serving_bundle: Path) -> None:
    """A real connection refused by a closed port: counted by kind; aclose closes the pool."""
    from fraud_detection.serving.app import PredictorUnavailableError
    from fraud_detection.serving.transformer import make_transformer
    from fraud_detection.streaming.broker import free_port

    model = make_transformer(
        "fraud-detector",
        BundleSource(model_dir=serving_bundle),
        predictor_host=f"127.0.0.1:{free_port()}",
        time_policy=TimePolicy(EVENT_CLOCK),
    )
    model.load()
    body = {"instances": [tx_at(snapshot_clock(serving_bundle), 60, 1)]}
    labels = {"kind": "connection"}
    before = sample("fraud_predictor_failures_total", labels)

    async def refused_then_closed() -> tuple[PredictorUnavailableError, Any]:
        with pytest.raises(PredictorUnavailableError) as caught:
            await model(body)
        session = model.client._session
        assert session is not None and not session.closed
        await model.aclose()
        return caught.value, session

    error, session = asyncio.run(refused_then_closed())
    assert error.kind == "connection"
    assert sample("fraud_predictor_failures_total", labels) == before + 1
    assert session.closed


# ---------------------------------------------------------------- decoding and body limits
def test_json_with_nan_is_decoded_so_the_field_can_be_named() -> None:
    assert decode_json_body(b'{"amt": NaN}')["amt"] != decode_json_body(b'{"amt": NaN}')["amt"]
    for garbage in (b"{not json", b"", b"\xff\xfe{", b"[" * 100_000):
        with pytest.raises(RequestError) as caught:
            decode_json_body(garbage)
        assert caught.value.field == "body" and caught.value.status == 400


@pytest.mark.parametrize(
    ("content_type", "accepted"),
    [
        ("application/json", True),
        ("application/json; charset=utf-8", True),
        ("Application/JSON", True),
        ("text/plain", False),
        ("application/x-www-form-urlencoded", False),
        (None, True),
    ],
)
def test_content_types(content_type: str | None, accepted: bool) -> None:
    from kserve.model_repository import ModelRepository

    dataplane = make_dataplane(ModelRepository())
    headers = {"content-type": content_type} if content_type else {}
    if accepted:
        body, _ = dataplane.decode(b'{"instances": []}', headers)
        assert body == {"instances": []}
    else:
        with pytest.raises(RequestError) as caught:
            dataplane.decode(b'{"instances": []}', headers)
        assert (caught.value.status, caught.value.field) == (415, "content-type")


def run_asgi(
    app: Any, headers: list[tuple[bytes, bytes]], chunks: list[bytes]
) -> tuple[int, bytes]:
    """Drive an ASGI app with one POST; returns (status, body)."""
    received = [
        {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
        for i, chunk in enumerate(chunks)
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return received.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "headers": headers}
    asyncio.run(app(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, body


async def echo_app(scope: Any, receive: Any, send: Any) -> None:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def test_body_limit() -> None:
    app = BodyLimitMiddleware(echo_app, max_bytes=10)
    assert run_asgi(app, [(b"content-length", b"5")], [b"12345"]) == (200, b"12345")
    status, body = run_asgi(app, [(b"content-length", b"11")], [b"12345678901"])
    assert status == 413 and b'"field":"body"' in body
    assert run_asgi(app, [], [b"12345", b"67890"]) == (200, b"1234567890")
    status, _ = run_asgi(app, [], [b"12345", b"678901"])
    assert status == 413


def test_a_flood_of_unique_cards_is_forgotten_once_no_window_can_see_them(
    serving_bundle: Path,
) -> None:
    """Memory follows recent activity: cards nobody can see any more are dropped."""
    day_s = 86_400
    model = make(serving_bundle, time_policy=TimePolicy(EVENT_CLOCK, max_event_age_s=day_s))
    clock = snapshot_clock(serving_bundle)
    flood = [tx_at(clock, 60, number, card_id=f"flood-{number}") for number in range(400)]
    score(model, {"instances": flood})
    peak = len(model.live)
    # The clock moves on a day at a time (the event clock's largest step).
    for step in range(1, 36):
        score(model, {"instances": [tx_at(clock, step * day_s, 1_000 + step, card_id="steady")]})
    later = clock + 35 * day_s * MICROS_PER_SECOND
    for number in range(300):
        moment = (later - clock) / MICROS_PER_SECOND + 1 + number
        score(model, {"instances": [tx_at(clock, moment, 2_000 + number, card_id="steady")]})
    cards = model.live.features.to_dict()["cards"]
    assert not any(card.startswith("flood-") for card in cards)
    assert len(model.live) < peak - 400 + 2 and "steady" in cards
