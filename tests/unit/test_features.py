"""The feature definitions: a hand-computed example, point-in-time behaviour and the state."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from fraud_detection.features import (
    FEATURE_NAMES,
    GAP_CAP_SECONDS,
    MERCHANT_FEATURE_NAMES,
    RETENTION_MARGIN_DAYS,
    OnlineFeatureState,
    compute_features,
    timestamp_to_micros,
    timestamps_to_micros,
)


def frame_of(rows: list[tuple[str, float, str]], merchant: str = "m1") -> pd.DataFrame:
    """A canonical frame from (card, amount, ISO timestamp) rows at one merchant."""
    return pd.DataFrame(
        {
            "transaction_id": [f"t{i}" for i in range(len(rows))],
            "card_id": [card for card, _, _ in rows],
            "merchant_id": merchant,
            "amt": [amount for _, amount, _ in rows],
            "timestamp": pd.to_datetime([stamp for _, _, stamp in rows], utc=True),
        }
    )


HAND_ROWS = [
    ("A", 10.0, "2026-01-05T10:00:00Z"),  # Monday
    ("A", 20.0, "2026-01-05T11:00:00Z"),
    ("B", 55.0, "2026-01-10T03:00:00Z"),  # Saturday night
    ("A", 40.0, "2026-01-07T10:00:00Z"),  # two days after the first
    ("A", 100.0, "2026-02-16T10:00:00Z"),  # 40 days after the previous one
]


def expected(**values: float) -> list[float]:
    """A full feature vector: zeros, the gap cap, then the given values."""
    vector = dict.fromkeys(FEATURE_NAMES, 0.0)
    vector["card_secs_since_prev"] = GAP_CAP_SECONDS
    vector.update(values)
    return [vector[name] for name in FEATURE_NAMES]


HAND_EXPECTED = [
    expected(log_amount=math.log1p(10.0), hour=10),
    expected(
        log_amount=math.log1p(20.0),
        amt_deviation=10.0,  # one past amount: spread floored at max(0, 0.1 * 10, 1) = 1
        card_count_1d=1,
        card_mean_amt_1d=10.0,
        card_count_7d=1,
        card_mean_amt_7d=10.0,
        card_count_30d=1,
        card_mean_amt_30d=10.0,
        card_secs_since_prev=3600.0,
        hour=11,
    ),
    expected(log_amount=math.log1p(55.0), hour=3, is_night=1, is_weekend=1),
    expected(
        log_amount=math.log1p(40.0),
        amt_deviation=(40.0 - 15.0) / math.sqrt(50.0),  # sample std of 10 and 20
        card_count_7d=2,
        card_mean_amt_7d=15.0,
        card_count_30d=2,
        card_mean_amt_30d=15.0,
        card_secs_since_prev=47 * 3600.0,
        hour=10,
    ),
    # The merchant's 30-day window ends 8 days earlier and reaches back to 10 January.
    expected(log_amount=math.log1p(100.0), hour=10, merchant_count_30d=1),
]


def test_offline_features_match_hand_computed_values() -> None:
    features = compute_features(frame_of(HAND_ROWS))
    assert list(features.columns) == list(FEATURE_NAMES)
    np.testing.assert_allclose(features.to_numpy(), np.array(HAND_EXPECTED), rtol=0, atol=1e-12)


def test_online_features_match_hand_computed_values() -> None:
    state = OnlineFeatureState()
    rows = sorted(HAND_ROWS, key=lambda row: row[2])
    by_row = {row: state.process(row[0], "m1", row[1], timestamp_to_micros(row[2])) for row in rows}
    got = np.array([by_row[row] for row in HAND_ROWS])
    np.testing.assert_allclose(got, np.array(HAND_EXPECTED), rtol=0, atol=1e-12)


def test_offline_result_keeps_the_input_row_order_and_index() -> None:
    frame = frame_of(HAND_ROWS).set_index(pd.Index([50, 40, 30, 20, 10]))
    shuffled = frame.sample(frac=1.0, random_state=3)
    features = compute_features(shuffled)
    assert list(features.index) == list(shuffled.index)
    np.testing.assert_array_equal(
        features.loc[frame.index].to_numpy(), compute_features(frame).to_numpy()
    )


def random_frame(n: int, cards: int, seed: int) -> pd.DataFrame:
    """Random labelled transactions over 60 days with many same-second ties on a card."""
    rng = np.random.default_rng(seed)
    start = pd.Timestamp("2026-01-01", tz="UTC")
    return pd.DataFrame(
        {
            "transaction_id": [f"t{i}" for i in range(n)],
            "card_id": rng.integers(0, cards, n).astype(str),
            "merchant_id": rng.integers(0, 25, n).astype(str),
            "is_fraud": (rng.random(n) < 0.05).astype(int),
            "amt": np.round(rng.lognormal(3.0, 1.2, n), 2),
            "timestamp": start + pd.to_timedelta(rng.integers(0, 60 * 86_400 // 600, n) * 600, "s"),
        }
    )


def test_later_transactions_never_change_earlier_features() -> None:
    frame = random_frame(3_000, 40, seed=7).sort_values("timestamp", kind="stable")
    full = compute_features(frame)
    cut = frame["timestamp"].iloc[1_500]
    earlier = frame[frame["timestamp"] < cut]
    np.testing.assert_array_equal(
        compute_features(earlier).to_numpy(), full.loc[earlier.index].to_numpy()
    )


def test_a_future_outlier_does_not_leak_into_the_past() -> None:
    rows = [*HAND_ROWS[:2], ("A", 99_999.0, "2026-01-05T12:00:00Z")]
    features = compute_features(frame_of(rows))
    np.testing.assert_array_equal(
        features.iloc[:2].to_numpy(), compute_features(frame_of(HAND_ROWS[:2])).to_numpy()
    )
    assert features["card_mean_amt_1d"].iloc[2] == pytest.approx(15.0)


MERCHANT_ROWS = [
    ("A", 10.0, "2026-03-01T10:00:00Z", 1),  # day 0
    ("B", 10.0, "2026-03-01T11:00:00Z", 0),  # day 0
    ("C", 10.0, "2026-03-04T11:00:00Z", 0),  # day 3
    ("D", 10.0, "2026-03-08T23:00:00Z", 0),  # day 7: day 0's labels are not known yet
    ("E", 10.0, "2026-03-09T00:30:00Z", 0),  # day 8: sees day 0
    ("F", 10.0, "2026-03-12T08:00:00Z", 0),  # day 11: 1-day window is day 3, 7-day days -3..3
]
MERCHANT_EXPECTED = [
    [0, 0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0, 0],
    [2, 0.5, 2, 0.5, 2, 0.5],
    [1, 0.0, 3, 1 / 3, 3, 1 / 3],
]


def test_merchant_risk_uses_only_labels_past_the_delay() -> None:
    frame = frame_of([row[:3] for row in MERCHANT_ROWS])
    frame["is_fraud"] = [row[3] for row in MERCHANT_ROWS]
    offline = compute_features(frame)[list(MERCHANT_FEATURE_NAMES)].to_numpy()
    np.testing.assert_allclose(offline, np.array(MERCHANT_EXPECTED), atol=1e-12)
    online = OnlineFeatureState().replay(frame)[:, len(FEATURE_NAMES) - 6 :]
    np.testing.assert_allclose(online, np.array(MERCHANT_EXPECTED), atol=1e-12)


def test_merchant_risk_ignores_other_merchants() -> None:
    frame = frame_of([row[:3] for row in MERCHANT_ROWS])
    frame["is_fraud"] = [row[3] for row in MERCHANT_ROWS]
    frame.loc[0, "merchant_id"] = "elsewhere"
    risk = compute_features(frame)["merchant_risk_30d"].to_numpy()
    assert risk[4] == 0.0  # the one fraud happened at another merchant


def test_replay_through_online_state_equals_offline_on_random_data() -> None:
    frame = random_frame(20_000, 300, seed=11)
    offline = compute_features(frame).to_numpy()
    online = OnlineFeatureState().replay(frame)
    np.testing.assert_allclose(online, offline, rtol=0, atol=1e-9)


def test_saved_state_continues_exactly_where_it_stopped(tmp_path) -> None:
    frame = random_frame(6_000, 80, seed=5).sort_values("timestamp", kind="stable")
    head, tail = frame.iloc[:4_000], frame.iloc[4_000:]
    path = OnlineFeatureState.from_frame(head).save(tmp_path / "state.json.gz")
    restored = OnlineFeatureState.load(path)
    assert len(restored) == head["card_id"].nunique()
    np.testing.assert_allclose(
        restored.replay(tail), compute_features(frame).loc[tail.index].to_numpy(), atol=1e-9
    )


def test_state_forgets_history_older_than_the_longest_window() -> None:
    state = OnlineFeatureState()
    start = timestamp_to_micros("2026-01-01T00:00:00Z")
    for day in range(200):
        state.process("A", "m1", 10.0, start + day * 86_400_000_000)
    snapshot = state.to_dict()
    # The 30-day window and today, plus the retention margin.
    assert len(snapshot["cards"]["A"][0]) <= 31 + RETENTION_MARGIN_DAYS
    # The 30-day window, the 7-day label delay and today, plus the margin.
    assert len(snapshot["merchants"]["m1"]) <= 38 + RETENTION_MARGIN_DAYS


def test_state_from_another_feature_set_is_refused() -> None:
    snapshot = OnlineFeatureState().to_dict()
    snapshot["features"] = ["log_amount"]
    with pytest.raises(ValueError, match="different feature set"):
        OnlineFeatureState.from_dict(snapshot)


def test_a_late_transaction_sees_only_what_happened_before_it() -> None:
    state = OnlineFeatureState()
    state.process("A", "m1", 10.0, timestamp_to_micros("2026-01-05T08:00:00Z"))
    state.process("A", "m1", 20.0, timestamp_to_micros("2026-01-05T10:00:00Z"))
    late = state.process("A", "m1", 30.0, timestamp_to_micros("2026-01-05T09:00:00Z"))
    named = dict(zip(FEATURE_NAMES, late, strict=True))
    assert named["card_count_1d"] == 1  # the 08:00 one, not the 10:00 one
    assert named["card_mean_amt_1d"] == 10.0
    assert named["card_secs_since_prev"] == 3600.0
    assert named["hour"] == 9
    after = dict(
        zip(
            FEATURE_NAMES,
            state.process("A", "m1", 40.0, timestamp_to_micros("2026-01-05T11:00:00Z")),
            strict=True,
        )
    )
    assert after["card_count_1d"] == 3
    assert after["card_mean_amt_1d"] == 20.0
    assert after["card_secs_since_prev"] == 3600.0  # since 10:00, the card's latest


def test_arrival_order_does_not_bend_the_state() -> None:
    """Shuffled arrival: each transaction's online features equal the offline features computed
    from the transactions that had arrived before it; the final state equals the in-order one."""
    from fraud_detection.data.generator import GeneratorConfig, generate_transactions

    frame = generate_transactions(
        GeneratorConfig(n_transactions=400, n_cards=5, days=10, fraud_rate=0.0, seed=3)
    )
    frame = frame.sort_values("timestamp", kind="stable").reset_index(drop=True)
    rng = np.random.default_rng(11)
    arrival = np.argsort(np.arange(len(frame)) + rng.normal(0, 4, len(frame)), kind="stable")
    assert (arrival != np.arange(len(frame))).sum() > 100  # really out of order

    shuffled = OnlineFeatureState()
    stamps = timestamps_to_micros(frame["timestamp"])
    for step, index in enumerate(arrival[:120]):
        row = frame.iloc[index]
        online = shuffled.process(row.card_id, row.merchant_id, row.amt, int(stamps[index]))
        known = frame.iloc[np.r_[np.sort(arrival[:step]), index]]
        expected = compute_features(known.sort_values("timestamp", kind="stable")).loc[index]
        np.testing.assert_allclose(online, expected.to_numpy(), rtol=1e-9, atol=1e-9)
    for index in arrival[120:]:
        row = frame.iloc[index]
        shuffled.process(row.card_id, row.merchant_id, row.amt, int(stamps[index]))

    in_order = OnlineFeatureState()
    in_order.replay(frame.drop(columns=["is_fraud"]))
    for card in frame["card_id"].unique():
        probe = (card, "m-probe", 25.0, int(stamps[-1]) + 1)
        np.testing.assert_allclose(
            shuffled.process(*probe), in_order.process(*probe), rtol=1e-9, atol=1e-9
        )


@pytest.mark.parametrize(
    "text",
    [
        "2018-04-01 00:00:31",
        "2018-04-01T00:00:31Z",
        "2018-04-01T02:00:31+02:00",
        "2018-04-01T00:00:31.250000Z",
    ],
)
def test_scalar_and_vectorised_timestamp_parsing_agree(text: str) -> None:
    assert timestamp_to_micros(text) == timestamps_to_micros(pd.Series([text]))[0]


def test_vectorised_parsing_accepts_mixed_iso_formats() -> None:
    texts = ["2018-04-01 00:00:31", "2018-04-01T02:00:31+02:00", "2018-04-01T00:00:31.250000Z"]
    got = timestamps_to_micros(pd.Series(texts))
    assert got.tolist() == [timestamp_to_micros(text) for text in texts]


def test_idle_cards_and_merchants_are_forgotten_without_changing_any_feature() -> None:
    day = 86_400_000_000
    start = timestamp_to_micros("2026-01-01T00:00:00Z")
    kept, pruned = OnlineFeatureState(), OnlineFeatureState()
    for state in (kept, pruned):
        state.process("idle-card", "idle-merchant", 50.0, start)
        for offset in range(70):
            state.process("busy-card", "busy-merchant", 20.0, start + offset * day)
    later = start + 70 * day
    assert pruned.forget_idle(later) == 2  # the idle card and the idle merchant
    assert len(pruned) == 1 and len(kept) == 2
    assert "idle-merchant" not in pruned.to_dict()["merchants"]
    for state in (kept, pruned):
        assert state.forget_idle(later - 40 * day) == 0  # nothing idle that long ago
    # A forgotten card or merchant that comes back scores exactly as if it had been kept.
    for card, merchant in (("idle-card", "idle-merchant"), ("busy-card", "busy-merchant")):
        assert pruned.process(card, merchant, 30.0, later) == kept.process(
            card, merchant, 30.0, later
        )
