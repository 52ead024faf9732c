"""Training sets: stratified and temporal splits, known-compromised cards, the training table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fraud_detection.data.generator import GeneratorConfig, generate_transactions
from fraud_detection.features import FEATURE_NAMES, compute_features
from fraud_detection.schema import CARD_ID, LABEL, TIMESTAMP, TRANSACTION_ID
from fraud_detection.training.dataset import (
    SPLIT_COLUMN,
    TEST,
    TRAIN,
    SplitConfig,
    SplitError,
    TimeWindows,
    build_training_table,
    feature_matrix,
    known_compromised,
    parse_bound,
    resolve_windows,
    stratified_split,
    temporal_split,
)


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    """30 days of generated transactions with 2 % fraud."""
    config = GeneratorConfig(n_transactions=6000, n_cards=150, days=30, fraud_rate=0.02, seed=3)
    return generate_transactions(config)


def utc(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz="UTC")


def test_stratified_split_keeps_the_fraud_share_and_is_seeded() -> None:
    labels = np.array([1] * 50 + [0] * 950)
    mask = stratified_split(labels, 0.2, seed=1)
    assert mask.sum() == 200
    assert labels[mask].sum() == 10  # 5 % fraud in both parts
    assert np.array_equal(mask, stratified_split(labels, 0.2, seed=1))
    assert not np.array_equal(mask, stratified_split(labels, 0.2, seed=2))


def test_stratified_split_refuses_a_class_with_fewer_than_two_rows() -> None:
    with pytest.raises(SplitError, match=r"at least 2 rows of each class.*1 fraudulent"):
        stratified_split(np.array([1] + [0] * 99), 0.2, seed=0)


def test_a_date_only_end_bound_includes_the_whole_day() -> None:
    assert parse_bound("2018-05-21", end=True) == utc("2018-05-22")
    assert parse_bound("2018-05-21", end=False) == utc("2018-05-21")
    assert parse_bound("2018-05-21T12:00:00", end=True) == utc("2018-05-21T12:00")
    with pytest.raises(SplitError, match="not a date"):
        parse_bound("next tuesday", end=False)


def test_explicit_windows_follow_the_handbook_layout() -> None:
    config = SplitConfig(
        kind="temporal",
        train_start="2018-05-15",
        train_end="2018-05-21",
        test_start="2018-05-29",
        test_end="2018-06-04",
    )
    windows = resolve_windows(pd.Series([utc("2018-04-01")]), config)
    assert (windows.train_start, windows.train_end) == (utc("2018-05-15"), utc("2018-05-22"))
    assert (windows.test_start, windows.test_end) == (utc("2018-05-29"), utc("2018-06-05"))
    assert windows.gap == pd.Timedelta(days=7)


def test_default_windows_are_the_last_days_of_the_data() -> None:
    stamps = pd.Series(pd.date_range("2026-01-01", "2026-01-30 18:00", freq="6h", tz="UTC"))
    windows = resolve_windows(stamps, SplitConfig(kind="temporal", gap_days=7, test_days=7))
    assert windows.test_end == utc("2026-01-31")
    assert windows.test_start == utc("2026-01-24")
    assert windows.train_end == utc("2026-01-17")
    assert windows.train_start == utc("2026-01-01")
    limited = resolve_windows(stamps, SplitConfig(kind="temporal", train_days=5))
    assert limited.train_start == utc("2026-01-12")


def test_windows_must_be_ordered_and_bounds_complete() -> None:
    with pytest.raises(SplitError, match="must satisfy"):
        TimeWindows(utc("2026-01-10"), utc("2026-01-05"), utc("2026-01-12"), utc("2026-01-13"))
    with pytest.raises(SplitError, match="all of train_start"):
        SplitConfig(kind="temporal", train_start="2026-01-01")
    with pytest.raises(SplitError, match="need the temporal split"):
        SplitConfig(train_start="2026-01-01", train_end="a", test_start="b", test_end="c")
    with pytest.raises(SplitError, match="split: must be one of"):
        SplitConfig(kind="random")


def test_a_card_is_known_compromised_once_its_fraud_label_has_arrived() -> None:
    # Fraud on Jan 1st at 10:00; the 7-day label delay makes it known from the day whose
    # start is more than 7 days later: Jan 9th, not Jan 8th.
    stamps = pd.Series(
        [utc(s) for s in ("2026-01-01T10:00", "2026-01-08T23:00", "2026-01-09T00:30", "2026-01-09")]
    )
    cards = pd.Series(["A", "A", "A", "B"])
    labels = np.array([1, 0, 0, 0])
    known = known_compromised(stamps, cards, labels, since=utc("2026-01-01"))
    assert known.tolist() == [False, False, True, False]
    # Frauds before the training window do not count (as in the handbook's protocol).
    assert not known_compromised(stamps, cards, labels, since=utc("2026-01-02")).any()


def test_temporal_split_masks_the_windows_and_drops_known_cards() -> None:
    stamps = pd.Series([utc(f"2026-01-{day:02d}T12:00") for day in (1, 2, 5, 9, 10, 10)])
    cards = pd.Series(["A", "B", "C", "A", "B", "D"])
    labels = np.array([1, 0, 0, 0, 0, 1])
    windows = TimeWindows(
        utc("2026-01-01"), utc("2026-01-03"), utc("2026-01-09"), utc("2026-01-11")
    )
    train, test = temporal_split(stamps, cards, labels, windows)
    assert train.tolist() == [True, True, False, False, False, False]
    assert test.tolist() == [False, False, False, False, True, True]  # card A is known
    _, kept = temporal_split(stamps, cards, labels, windows, exclude_known_compromised=False)
    assert kept.tolist() == [False, False, False, True, True, True]


def test_the_training_table_holds_point_in_time_features_of_the_whole_history(
    frame: pd.DataFrame,
) -> None:
    config = SplitConfig(kind="temporal", gap_days=7, test_days=7, train_days=7)
    table, summary = build_training_table(frame, config)
    # Only the two windows are kept, but features saw every earlier transaction.
    expected = compute_features(frame).set_index(frame[TRANSACTION_ID])
    got = table.set_index(TRANSACTION_ID)[list(FEATURE_NAMES)]
    np.testing.assert_array_equal(got.to_numpy(), expected.loc[got.index].to_numpy())
    stamps = pd.to_datetime(table[TIMESTAMP], utc=True)
    train_rows = table[SPLIT_COLUMN] == TRAIN
    assert stamps[train_rows].min() >= utc("2026-01-10")
    assert stamps[train_rows].max() < utc("2026-01-17")
    assert stamps[~train_rows].min() >= utc("2026-01-24")
    assert summary["train_rows"] == int(train_rows.sum())
    assert summary["test_frauds"] == int(table.loc[~train_rows, LABEL].sum())
    assert summary["windows"]["gap_days"] == "7.0"
    features, labels = feature_matrix(table, TEST)
    assert features.shape == (summary["test_rows"], len(FEATURE_NAMES))
    assert labels.sum() == summary["test_frauds"]


def test_the_stratified_table_keeps_every_row(frame: pd.DataFrame) -> None:
    table, summary = build_training_table(frame, SplitConfig(test_size=0.25, seed=5))
    assert len(table) == len(frame)
    assert summary["test_rows"] == 1500
    assert list(table[TRANSACTION_ID]) == list(frame[TRANSACTION_ID])
    assert set(table[CARD_ID]) == set(frame[CARD_ID])


def test_a_test_window_without_fraud_is_refused(frame: pd.DataFrame) -> None:
    quiet = frame.copy()
    last_week = pd.to_datetime(quiet[TIMESTAMP], utc=True) >= utc("2026-01-24")
    quiet.loc[last_week, LABEL] = 0
    with pytest.raises(SplitError, match="the test set has a single class"):
        build_training_table(quiet, SplitConfig(kind="temporal"))


def test_a_temporal_drift_reference_comes_from_all_traffic_after_the_training_window(
    frame: pd.DataFrame,
) -> None:
    """Live traffic carries the known-compromised cards the test set leaves out, and the gap
    days the model never saw: the reference draws from all of them."""
    from fraud_detection.features import timestamps_to_micros
    from fraud_detection.training.steps import drift_reference_rows

    config = SplitConfig(kind="temporal", gap_days=7, test_days=7, train_days=7)
    table, summary = build_training_table(frame, config)
    assert summary["test_rows_excluded_known_compromised"] > 0
    features, times, held_out, source = drift_reference_rows(table, frame, summary)
    stamps = pd.to_datetime(frame[TIMESTAMP], utc=True)
    expected = (stamps >= utc("2026-01-17")) & (stamps < utc("2026-01-31"))
    assert held_out.tolist() == expected.tolist()
    assert held_out.sum() > summary["test_rows"]  # the gap and the compromised cards too
    np.testing.assert_array_equal(features, compute_features(frame).to_numpy())
    np.testing.assert_array_equal(times, timestamps_to_micros(frame[TIMESTAMP]))
    assert "after the training window" in source
    # The stratified split: its test rows.
    table, summary = build_training_table(frame, SplitConfig(test_size=0.25, seed=5))
    _, _, held_out, source = drift_reference_rows(table, frame, summary)
    assert held_out.tolist() == (table[SPLIT_COLUMN] == TEST).tolist()
    assert "test split" in source
