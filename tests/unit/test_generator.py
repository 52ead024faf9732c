"""Tests of the seeded synthetic transaction generator."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import ks_2samp

from fraud_detection.data.files import read_transactions, write_transactions
from fraud_detection.data.generator import (
    AMOUNT_SPIKE,
    CARD_TESTING,
    CATEGORIES,
    COLUMNS,
    COMPROMISED_MERCHANT,
    LEGIT,
    NEW_MERCHANT_ONLINE,
    PATTERN,
    GeneratorConfig,
    generate_transactions,
    generate_with_patterns,
)
from fraud_detection.schema import (
    AMOUNT,
    CARD_ID,
    CATEGORY,
    LABEL,
    MERCHANT_ID,
    REQUIRED_COLUMNS,
    TIMESTAMP,
    TRANSACTION_ID,
)

CARD_NUMBER = re.compile(r"\d{13,19}")
DRIFT = GeneratorConfig(n_transactions=60_000, n_cards=1_500, fraud_rate=0.01, drift_start_day=18)


@pytest.fixture(scope="module")
def default_frame() -> pd.DataFrame:
    """A frame of the default shape, small enough to be fast."""
    return generate_with_patterns(GeneratorConfig(n_transactions=50_000, fraud_rate=0.01, seed=7))


@pytest.fixture(scope="module")
def drift_frame() -> pd.DataFrame:
    """A frame with drift from day 18 of 30."""
    return generate_with_patterns(DRIFT)


def day_of(frame: pd.DataFrame, config: GeneratorConfig) -> pd.Series:
    """Whole days since the configured start."""
    return (frame[TIMESTAMP] - config.start_timestamp).dt.days


# --- shape and contract -------------------------------------------------------------------


def test_columns_dtypes_and_row_count() -> None:
    config = GeneratorConfig(n_transactions=12_345, n_cards=300, fraud_rate=0.02, seed=3)
    frame = generate_transactions(config)
    assert tuple(frame.columns) == COLUMNS
    assert set(REQUIRED_COLUMNS) <= set(frame.columns)
    assert len(frame) == 12_345
    assert frame[AMOUNT].dtype == np.float64
    assert str(frame[TIMESTAMP].dtype) == "datetime64[ns, UTC]"
    assert set(frame[LABEL].unique()) == {0, 1}
    assert pd.api.types.is_integer_dtype(frame[LABEL])
    for column in (TRANSACTION_ID, CARD_ID, MERCHANT_ID, CATEGORY):
        assert frame[column].map(type).eq(str).all(), column
    assert set(frame[CATEGORY]) <= set(CATEGORIES)


def test_ids_unique_and_sorted_by_time(default_frame: pd.DataFrame) -> None:
    assert default_frame[TRANSACTION_ID].is_unique
    assert default_frame[TIMESTAMP].is_monotonic_increasing
    # transaction ids follow time order
    assert default_frame[TRANSACTION_ID].is_monotonic_increasing
    assert default_frame.index.equals(pd.RangeIndex(len(default_frame)))


def test_amounts_positive_finite_and_in_cents(default_frame: pd.DataFrame) -> None:
    amounts = default_frame[AMOUNT].to_numpy()
    assert np.isfinite(amounts).all()
    assert (amounts > 0).all()
    np.testing.assert_allclose(amounts, np.round(amounts, 2), rtol=0, atol=1e-9)


@pytest.mark.parametrize("drift_start_day", [None, 0, 29])
def test_timestamps_within_period(drift_start_day: int | None) -> None:
    config = GeneratorConfig(
        n_transactions=30_000,
        n_cards=500,
        days=30,
        fraud_rate=0.05,
        drift_start_day=drift_start_day,
        start="2026-03-01",
    )
    stamps = generate_transactions(config)[TIMESTAMP]
    start = pd.Timestamp("2026-03-01", tz="UTC")
    assert stamps.min() >= start
    assert stamps.max() < start + pd.Timedelta(days=30)


def test_card_ids_are_opaque_tokens(default_frame: pd.DataFrame) -> None:
    for column in (CARD_ID, TRANSACTION_ID, MERCHANT_ID):
        assert not default_frame[column].str.contains(CARD_NUMBER).any(), column
    assert default_frame[CARD_ID].str.fullmatch(r"card-\d{6}").all()


def test_card_ids_stay_opaque_for_many_cards() -> None:
    frame = generate_transactions(GeneratorConfig(n_transactions=5_000, n_cards=2_000_000))
    assert not frame[CARD_ID].str.contains(CARD_NUMBER).any()
    assert frame[CARD_ID].str.fullmatch(r"card-\d{7}").all()


@pytest.mark.parametrize(
    "config",
    [
        GeneratorConfig(n_transactions=1),
        GeneratorConfig(n_transactions=7, n_cards=1, days=1, fraud_rate=0.4, drift_start_day=0),
        GeneratorConfig(n_transactions=500, n_cards=5_000, n_merchants=10, fraud_rate=0.0),
    ],
    ids=["one-row", "tiny-with-drift", "more-cards-than-rows"],
)
def test_edge_configs_give_exact_counts(config: GeneratorConfig) -> None:
    frame = generate_transactions(config)
    assert len(frame) == config.n_transactions
    assert int(frame[LABEL].sum()) == config.n_fraud


def test_default_merchant_count_is_derived() -> None:
    assert GeneratorConfig(n_cards=2_000).merchant_count == 500
    assert GeneratorConfig(n_cards=10).merchant_count == 50
    assert GeneratorConfig(n_merchants=77).merchant_count == 77
    frame = generate_transactions(GeneratorConfig(n_transactions=20_000, n_cards=40))
    assert frame[MERCHANT_ID].nunique() <= 50


# --- fraud ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("n_transactions", "fraud_rate"), [(200_000, 0.0017), (50_000, 0.02)])
def test_fraud_rate_matches_request(n_transactions: int, fraud_rate: float) -> None:
    config = GeneratorConfig(n_transactions=n_transactions, fraud_rate=fraud_rate, seed=11)
    frame = generate_with_patterns(config)
    realised = frame[LABEL].mean()
    assert abs(realised - fraud_rate) / fraud_rate <= 0.15
    patterns = set(frame.loc[frame[LABEL] == 1, PATTERN])
    assert patterns == {CARD_TESTING, AMOUNT_SPIKE, COMPROMISED_MERCHANT}
    assert (frame.loc[frame[PATTERN] == LEGIT, LABEL] == 0).all()


def test_zero_fraud_rate_gives_no_fraud() -> None:
    frame = generate_transactions(GeneratorConfig(n_transactions=20_000, fraud_rate=0.0))
    assert frame[LABEL].sum() == 0


def test_card_testing_bursts_are_small_fast_and_mostly_at_night(
    default_frame: pd.DataFrame,
) -> None:
    testing = default_frame[default_frame[PATTERN] == CARD_TESTING]
    assert len(testing) >= 100
    assert testing[AMOUNT].between(1.0, 5.0).all()
    gaps = testing.groupby(CARD_ID)[TIMESTAMP].diff().dropna()
    assert (gaps < pd.Timedelta(minutes=10)).mean() > 0.8
    assert (testing[TIMESTAMP].dt.hour < 6).mean() > 0.5
    legit_hours = default_frame.loc[default_frame[LABEL] == 0, TIMESTAMP].dt.hour
    assert (legit_hours < 6).mean() < 0.1


def test_amount_spikes_are_far_above_the_cards_habit(default_frame: pd.DataFrame) -> None:
    legit = default_frame[default_frame[LABEL] == 0]
    habit = legit.groupby(CARD_ID)[AMOUNT].median()
    spikes = default_frame[default_frame[PATTERN] == AMOUNT_SPIKE]
    ratio = spikes[AMOUNT].to_numpy() / habit.reindex(spikes[CARD_ID]).to_numpy()
    assert len(spikes) >= 100
    assert np.nanmedian(ratio) > 5


def test_compromised_merchants_have_elevated_fraud(default_frame: pd.DataFrame) -> None:
    compromised = default_frame[default_frame[PATTERN] == COMPROMISED_MERCHANT]
    base_rate = default_frame[LABEL].mean()
    for merchant, rows in compromised.groupby(MERCHANT_ID):
        window = default_frame[
            (default_frame[MERCHANT_ID] == merchant)
            & default_frame[TIMESTAMP].between(rows[TIMESTAMP].min(), rows[TIMESTAMP].max())
        ]
        assert window[LABEL].mean() > 10 * base_rate, merchant
        assert rows[TIMESTAMP].max() - rows[TIMESTAMP].min() < pd.Timedelta(days=8)


def card_history_features(frame: pd.DataFrame) -> pd.DataFrame:
    """Point-in-time card features: amount against the card's past, gap, hour."""
    ordered = frame.sort_values([CARD_ID, TIMESTAMP], kind="stable")
    by_card = ordered.groupby(CARD_ID, sort=False)
    past_total = by_card[AMOUNT].cumsum() - ordered[AMOUNT]
    past_count = by_card.cumcount()
    past_mean = (past_total / past_count).where(past_count > 0, ordered[AMOUNT])
    gap = by_card[TIMESTAMP].diff().dt.total_seconds().fillna(10**7)
    hour = ordered[TIMESTAMP].dt.hour
    features = pd.DataFrame(
        {
            "log_amount": np.log(ordered[AMOUNT]),
            "amt_deviation": np.log(ordered[AMOUNT] / past_mean),
            "log_gap": np.log1p(gap),
            "hour": hour,
            "night": (hour < 6).astype(int),
        }
    )
    return features.sort_index()


def test_fraud_is_learnable_from_card_history() -> None:
    from sklearn.ensemble import RandomForestClassifier

    config = GeneratorConfig(n_transactions=60_000, n_cards=1_500, fraud_rate=0.02, seed=5)
    frame = generate_transactions(config)
    features = card_history_features(frame)
    train = (day_of(frame, config) < 20).to_numpy()
    model = RandomForestClassifier(
        n_estimators=40,
        max_depth=10,
        min_samples_leaf=5,
        class_weight="balanced_subsample",
        random_state=0,
        n_jobs=2,
    ).fit(features[train], frame.loc[train, LABEL])
    flagged = model.predict_proba(features[~train])[:, 1] >= 0.1
    truth = frame.loc[~train, LABEL].to_numpy() == 1
    recall = (flagged & truth).sum() / truth.sum()
    false_alarm_rate = (flagged & ~truth).sum() / (~truth).sum()
    assert recall > 0.8
    assert false_alarm_rate < 0.2


# --- drift ----------------------------------------------------------------------------------


def test_drift_shifts_legitimate_amounts(drift_frame: pd.DataFrame) -> None:
    legit = drift_frame[drift_frame[LABEL] == 0]
    after = day_of(legit, DRIFT) >= DRIFT.drift_start_day
    before_amounts, after_amounts = legit.loc[~after, AMOUNT], legit.loc[after, AMOUNT]
    assert 1.2 < after_amounts.median() / before_amounts.median() < 1.8
    assert ks_2samp(before_amounts, after_amounts).pvalue < 1e-6
    night = legit[TIMESTAMP].dt.hour < 6
    assert night[after].mean() > 1.5 * night[~after].mean()
    online = legit[CATEGORY] == "online"
    assert online[after].mean() > 1.5 * online[~after].mean()


def test_no_drift_means_no_shift() -> None:
    config = GeneratorConfig(n_transactions=60_000, n_cards=1_500, fraud_rate=0.01)
    frame = generate_with_patterns(config)
    legit = frame[frame[LABEL] == 0]
    after = day_of(legit, config) >= 18
    ratio = legit.loc[after, AMOUNT].median() / legit.loc[~after, AMOUNT].median()
    assert 0.9 < ratio < 1.1
    assert NEW_MERCHANT_ONLINE not in set(frame[PATTERN])


def test_new_fraud_pattern_appears_only_after_drift(drift_frame: pd.DataFrame) -> None:
    new = drift_frame[drift_frame[PATTERN] == NEW_MERCHANT_ONLINE]
    assert len(new) >= 50
    assert (new[LABEL] == 1).all()
    assert (day_of(new, DRIFT) >= DRIFT.drift_start_day).all()
    assert (new[CATEGORY] == "online").all()
    before = drift_frame[day_of(drift_frame, DRIFT) < DRIFT.drift_start_day]
    assert not set(new[MERCHANT_ID]) & set(before[MERCHANT_ID])
    # the new merchants carry nothing but this fraud
    at_new = drift_frame[drift_frame[MERCHANT_ID].isin(set(new[MERCHANT_ID]))]
    assert (at_new[PATTERN] == NEW_MERCHANT_ONLINE).all()
    # fraud before the drift day is of the old patterns only
    assert set(before.loc[before[LABEL] == 1, PATTERN]) == {
        CARD_TESTING,
        AMOUNT_SPIKE,
        COMPROMISED_MERCHANT,
    }


# --- determinism ----------------------------------------------------------------------------


def test_same_config_gives_identical_frame() -> None:
    config = GeneratorConfig(n_transactions=40_000, fraud_rate=0.01, drift_start_day=10)
    pd.testing.assert_frame_equal(generate_transactions(config), generate_transactions(config))


def test_different_seeds_differ() -> None:
    first = generate_transactions(GeneratorConfig(n_transactions=20_000, seed=1))
    second = generate_transactions(GeneratorConfig(n_transactions=20_000, seed=2))
    assert not first[AMOUNT].equals(second[AMOUNT])
    assert not first[CARD_ID].equals(second[CARD_ID])
    assert not first[TIMESTAMP].equals(second[TIMESTAMP])
    # Files drawn with different seeds can be combined: no transaction id is shared.
    assert set(first[TRANSACTION_ID]).isdisjoint(second[TRANSACTION_ID])


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz", ".parquet"])
def test_files_are_byte_identical_across_runs(tmp_path: Path, suffix: str) -> None:
    config = GeneratorConfig(n_transactions=20_000, fraud_rate=0.01, drift_start_day=20)
    first = write_transactions(generate_transactions(config), tmp_path / f"first{suffix}")
    second = write_transactions(generate_transactions(config), tmp_path / f"second{suffix}")
    assert first.read_bytes() == second.read_bytes()
    assert len(first.read_bytes()) > 0


def test_csv_round_trip_keeps_values(tmp_path: Path) -> None:
    frame = generate_transactions(GeneratorConfig(n_transactions=5_000, fraud_rate=0.02))
    back = read_transactions([write_transactions(frame, tmp_path / "tx.csv.gz")])
    assert back[TRANSACTION_ID].tolist() == frame[TRANSACTION_ID].tolist()
    assert back[CARD_ID].tolist() == frame[CARD_ID].tolist()
    np.testing.assert_array_equal(back[AMOUNT].to_numpy(), frame[AMOUNT].to_numpy())
    assert pd.to_datetime(back[TIMESTAMP], utc=True).equals(frame[TIMESTAMP])
    assert back[LABEL].tolist() == frame[LABEL].tolist()


def test_cli_generate_writes_the_generated_frame(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fraud_detection.cli import app

    out = tmp_path / "tx.csv.gz"
    args = ["generate", "--out", str(out), "--transactions", "3000", "--seed", "9"]
    result = CliRunner().invoke(app, [*args, "--drift-start-day", "20"])
    assert result.exit_code == 0, result.output
    expected = generate_transactions(
        GeneratorConfig(n_transactions=3_000, seed=9, drift_start_day=20)
    )
    assert out.read_bytes() == write_transactions(expected, tmp_path / "ref.csv.gz").read_bytes()


def test_cli_holds_out_the_last_days_in_a_second_file(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fraud_detection.cli import app
    from fraud_detection.data.files import read_transactions

    train, hold = tmp_path / "train.csv", tmp_path / "hold.parquet"
    args = ["generate", "--out", str(train), "--transactions", "4000", "--days", "10"]
    result = CliRunner().invoke(app, [*args, "--holdout-days", "3", "--holdout-out", str(hold)])
    assert result.exit_code == 0, result.output
    before, after = (
        pd.to_datetime(read_transactions([p])[TIMESTAMP], utc=True) for p in (train, hold)
    )
    assert len(before) + len(after) == 4_000 and len(after) > 0
    cut = GeneratorConfig().start_timestamp + pd.Timedelta(days=7)
    assert before.max() < cut <= after.min()


def test_cli_holdout_needs_both_options(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fraud_detection.cli import app

    args = ["generate", "--out", str(tmp_path / "x.csv"), "--holdout-days", "2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "go together" in result.output
    assert not (tmp_path / "x.csv").exists()


def test_cli_reports_bad_drift_day(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fraud_detection.cli import app

    args = ["generate", "--out", str(tmp_path / "x.csv"), "--days", "5", "--drift-start-day", "5"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert "drift_start_day" in result.output
    assert not (tmp_path / "x.csv").exists()


# --- configuration --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "kwargs"),
    [
        ("n_transactions", {"n_transactions": 0}),
        ("n_transactions", {"n_transactions": 1.5}),
        ("n_cards", {"n_cards": 0}),
        ("n_merchants", {"n_merchants": 3}),
        ("days", {"days": 0}),
        ("fraud_rate", {"fraud_rate": -0.01}),
        ("fraud_rate", {"fraud_rate": 0.5}),
        ("fraud_rate", {"fraud_rate": float("nan")}),
        ("seed", {"seed": -1}),
        ("drift_start_day", {"days": 10, "drift_start_day": 10}),
        ("drift_start_day", {"drift_start_day": -1}),
        ("start", {"start": "not a date"}),
    ],
)
def test_invalid_config_names_the_field(field: str, kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=rf"^{field}: "):
        GeneratorConfig(**kwargs)  # type: ignore[arg-type]


def test_config_is_frozen() -> None:
    config = GeneratorConfig()
    with pytest.raises(AttributeError):
        config.seed = 1  # type: ignore[misc]
