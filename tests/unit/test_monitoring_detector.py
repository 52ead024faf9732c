"""The drift test of one window: alibi-detect KSDrift feature-wise with the Bonferroni
correction, the score as one more column, and reference rows matched to the window's hours."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.stats import ks_2samp

from fraud_detection.features import EPOCH_WEEKDAY, FEATURE_NAMES, MICROS_PER_DAY, MICROS_PER_HOUR
from fraud_detection.monitoring.detector import (
    CALENDAR_FEATURES,
    SCORE_NAME,
    STRATA_FEATURES,
    DetectorConfig,
    detect_drift,
    ks_drift,
    matched_rows,
)
from fraud_detection.monitoring.reference import DriftReference
from fraud_detection.monitoring.windows import VersionSlice

NAMES = list(FEATURE_NAMES)
MONDAY = 1_700_438_400 * 1_000_000  # 2023-11-20T00:00:00Z, a Monday
TESTED = [name for name in NAMES if name not in CALENDAR_FEATURES]


def traffic(
    rng: np.random.Generator, n: int, start: int, hours: float, shift: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` records spread over ``hours`` from ``start``: their times and feature rows.

    The calendar features follow the times; ``card_secs_since_prev`` has a daily cycle and
    ``merchant_count_1d`` a weekly one, as in real traffic; ``shift`` moves ``log_amount``.
    """
    times = np.sort(start + (rng.random(n) * hours * MICROS_PER_HOUR).astype(np.int64))
    hour = (times // MICROS_PER_HOUR) % 24
    weekend = ((times // MICROS_PER_DAY + EPOCH_WEEKDAY) % 7 >= 5).astype(float)
    rows = rng.normal(size=(n, len(NAMES)))
    rows[:, NAMES.index("hour")] = hour
    rows[:, NAMES.index("is_night")] = hour < 6
    rows[:, NAMES.index("is_weekend")] = weekend
    rows[:, NAMES.index("card_secs_since_prev")] += 2.0 * np.cos(2 * np.pi * hour / 24)
    rows[:, NAMES.index("merchant_count_1d")] += 1.5 * weekend
    rows[:, NAMES.index("log_amount")] += shift
    return times, rows


def reference_of(
    rng: np.random.Generator, rows: int = 5_000, scores: bool = True
) -> DriftReference:
    """A reference drawn over four whole weeks, with scores ~ Beta(1, 20) when asked."""
    _, features = traffic(rng, rows, MONDAY - 28 * MICROS_PER_DAY, 28 * 24)
    return DriftReference(
        "v1", FEATURE_NAMES, features, rng.beta(1, 20, rows) if scores else None, Path("memory")
    )


def window_of(
    rng: np.random.Generator,
    reference: DriftReference,
    n: int = 1_000,
    hours: float = 3.0,
    shift: float = 0.0,
    score_shift: float = 0.0,
    start: int = MONDAY + 13 * MICROS_PER_HOUR,
) -> VersionSlice:
    """A window of ``n`` records over ``hours`` (by default a Monday afternoon)."""
    times, rows = traffic(rng, n, start, hours, shift)
    scores = np.clip(rng.beta(1, 20, n) + score_shift, 0, 1)
    return VersionSlice(reference, rows, scores, times)


def test_the_calendar_and_strata_features_are_model_features() -> None:
    assert set(STRATA_FEATURES) <= set(CALENDAR_FEATURES) <= set(FEATURE_NAMES)


# ------------------------------------------------------------------------ the KSDrift wrapper
def test_stationary_columns_do_not_drift() -> None:
    rng = np.random.default_rng(1)
    reference, window = rng.normal(size=(5_000, 6)), rng.normal(size=(1_000, 6))
    tests, threshold, is_drift = ks_drift(reference, window, list("abcdef"), 0.05)
    assert not is_drift
    assert [t.name for t in tests] == list("abcdef")
    assert all(t.p_value >= threshold and not t.is_drift for t in tests)


def test_a_shifted_column_drifts_and_is_named() -> None:
    rng = np.random.default_rng(2)
    reference, window = rng.normal(size=(5_000, 6)), rng.normal(size=(1_000, 6))
    window[:, 2] += 0.3
    tests, threshold, is_drift = ks_drift(reference, window, list("abcdef"), 0.05)
    assert is_drift
    assert [t.name for t in tests if t.is_drift] == ["c"]
    assert tests[2].p_value < threshold


def test_statistics_and_p_values_are_the_two_sample_ks_test() -> None:
    rng = np.random.default_rng(3)
    reference, window = rng.normal(size=(2_000, 3)), rng.normal(0.05, 1.1, size=(700, 3))
    tests, _, _ = ks_drift(reference, window, ["a", "b", "c"], 0.05)
    for column, test in enumerate(tests):
        expected = ks_2samp(reference[:, column], window[:, column], mode="asymp")
        assert test.statistic == pytest.approx(expected.statistic, rel=1e-6)
        assert test.p_value == pytest.approx(expected.pvalue, rel=1e-5, abs=1e-12)


def test_bonferroni_divides_the_level_by_the_number_of_columns() -> None:
    """A column whose p-value is below p_val but above p_val / columns is not drift."""
    rng = np.random.default_rng(4)
    reference, window = rng.normal(size=(5_000, 10)), rng.normal(size=(1_000, 10))
    window[:, 7] += 0.04  # a mild shift: significant alone, not among ten columns
    tests, threshold, is_drift = ks_drift(reference, window, [f"f{i}" for i in range(10)], 0.05)
    assert threshold == pytest.approx(0.05 / 10)
    assert threshold < tests[7].p_value < 0.05, "the data no longer make the case; reseed"
    assert not tests[7].is_drift and not is_drift


def test_the_corrected_test_raises_about_p_val_false_alarms_on_stationary_data() -> None:
    """Over many stationary windows the corrected test flags at most about 5 %; per column
    at 0.05 (no correction) it would flag about 40 % of windows of ten columns."""
    rng = np.random.default_rng(5)
    reference = rng.normal(size=(2_000, 10))
    windows = 120
    alarms = uncorrected = 0
    for _ in range(windows):
        tests, _, is_drift = ks_drift(
            reference, rng.normal(size=(500, 10)), list("abcdefghij"), 0.05
        )
        alarms += is_drift
        uncorrected += any(t.p_value < 0.05 for t in tests)
    assert alarms <= 15  # Binomial(120, 0.05) exceeds 15 with probability < 0.2 %
    assert uncorrected >= 25  # Binomial(120, 0.40) stays below 25 with probability < 0.01 %


@pytest.mark.parametrize(
    ("reference_rows", "window_rows", "ties"), [(3_000, 800, False), (400, 1_200, True)]
)
def test_the_sorted_reference_detector_gives_the_stock_ksdrifts_results(
    reference_rows: int, window_rows: int, ties: bool
) -> None:
    """The faster subclass (sorted reference columns) against alibi-detect's own ``KSDrift``
    on the rows as they come: the same distances, p-values, threshold and verdict."""
    from alibi_detect.cd.ks import KSDrift

    rng = np.random.default_rng(11)
    reference = rng.normal(size=(reference_rows, 5)).astype(np.float32)
    window = rng.normal(size=(window_rows, 5)).astype(np.float32)
    window[:, 1] += 0.25  # one column drifts
    window[:, 3] *= 1.1  # another one nearly
    if ties:  # counts: many equal values in both samples
        reference[:, 2], window[:, 2] = np.round(reference[:, 2]), np.round(window[:, 2] + 0.1)
    stock = KSDrift(reference, p_val=0.05, correction="bonferroni").predict(
        window, return_p_val=True, return_distance=True
    )["data"]
    tests, threshold, is_drift = ks_drift(reference, window, list("abcde"), 0.05)
    assert [t.statistic for t in tests] == pytest.approx(stock["distance"], rel=1e-6)
    assert [t.p_value for t in tests] == pytest.approx(stock["p_val"], rel=1e-5, abs=1e-12)
    assert threshold == pytest.approx(stock["threshold"])
    assert is_drift == bool(stock["is_drift"]) and tests[1].is_drift


def test_a_windows_sorted_reference_draw_is_the_draw_sorted() -> None:
    """The reference rows a window is compared with, taken out of the once-sorted columns,
    are exactly those rows' columns sorted."""
    from fraud_detection.monitoring.detector import _sorted_tested_matrix, _tested_matrix

    rng = np.random.default_rng(12)
    reference = reference_of(rng, rows=2_000)
    columns = [NAMES.index(name) for name in TESTED]
    for draw in range(3):
        rows = np.sort(rng.choice(reference.rows, 700 + 300 * draw, replace=False))
        expected = np.sort(_tested_matrix(reference, columns, rows), axis=0)
        assert np.array_equal(_sorted_tested_matrix(reference, columns, rows), expected)


def test_columns_must_line_up() -> None:
    with pytest.raises(ValueError, match="same columns"):
        ks_drift(np.zeros((10, 3)), np.zeros((10, 2)), ["a", "b"], 0.05)
    with pytest.raises(ValueError, match="names: 2 for 3 columns"):
        ks_drift(np.zeros((10, 3)), np.zeros((10, 3)), ["a", "b"], 0.05)


# ------------------------------------------------------------------------ time-matched reference
def test_matched_rows_reproduce_the_windows_mix_without_replacement() -> None:
    rng = np.random.default_rng(6)
    reference_keys = rng.integers(0, 24, 5_000)
    window_keys = np.repeat([13, 14, 15], [500, 300, 200])
    rows = matched_rows(reference_keys, window_keys, np.random.default_rng(0), min_rows=100)

    assert rows is not None
    assert len(np.unique(rows)) == len(rows), "drawn with replacement"
    keys, counts = np.unique(reference_keys[rows], return_counts=True)
    assert keys.tolist() == [13, 14, 15]
    assert counts / counts.sum() == pytest.approx([0.5, 0.3, 0.2], abs=0.01)
    # As many as the thinnest stratum allows: all of hour 13's rows at half the window.
    assert counts[0] == (reference_keys == 13).sum()
    again = matched_rows(reference_keys, window_keys, np.random.default_rng(0), min_rows=100)
    other = matched_rows(reference_keys, window_keys, np.random.default_rng(1), min_rows=100)
    assert np.array_equal(rows, again) and not np.array_equal(rows, other)


def test_matched_rows_refuse_a_stratum_the_reference_lacks_or_too_few_rows() -> None:
    rng = np.random.default_rng(0)
    reference_keys = np.repeat([1, 2], 50)
    assert matched_rows(reference_keys, np.array([1, 3]), rng, min_rows=1) is None
    assert matched_rows(reference_keys, np.array([1, 1, 2]), rng, min_rows=80) is None
    assert matched_rows(reference_keys, np.array([1, 1, 2]), rng, min_rows=70) is not None


def test_a_window_of_a_few_hours_drifts_only_when_compared_with_whole_days() -> None:
    """Time-ordered stationary traffic: three afternoon hours of a Monday look like drift
    against a reference over whole weeks (a daily and a weekly cycle), and like what they
    are against the reference rows of the same hours and kind of day."""
    rng = np.random.default_rng(7)
    reference = reference_of(rng)
    window = window_of(rng, reference)

    matched = detect_drift(window, DetectorConfig(), seed=1)
    unmatched = detect_drift(window, DetectorConfig(match_time=False), seed=1)

    assert matched is not None and unmatched is not None
    assert not matched.is_drift, matched.drifted
    assert matched.matched_on == ("hour", "is_weekend")
    assert 300 <= matched.reference_rows < reference.rows
    assert unmatched.is_drift
    assert {"card_secs_since_prev", "merchant_count_1d"} <= set(unmatched.drifted)
    assert unmatched.matched_on == () and unmatched.reference_rows == reference.rows


def test_a_real_shift_drifts_also_against_matched_rows() -> None:
    rng = np.random.default_rng(8)
    reference = reference_of(rng)
    test = detect_drift(window_of(rng, reference, shift=0.4), DetectorConfig(), seed=1)
    assert test is not None and test.is_drift
    assert test.drifted == ["log_amount"]


def test_strata_coarsen_when_the_reference_lacks_the_windows_kind_of_day() -> None:
    rng = np.random.default_rng(9)
    full = reference_of(rng)
    weekdays = full.features[:, NAMES.index("is_weekend")] == 0
    weekday_only = DriftReference(
        "v1", FEATURE_NAMES, full.features[weekdays], full.scores[weekdays], Path("memory")
    )
    saturday = MONDAY + 5 * MICROS_PER_DAY + 13 * MICROS_PER_HOUR
    test = detect_drift(window_of(rng, weekday_only, start=saturday), DetectorConfig(), seed=1)
    assert test is not None and test.matched_on == ("hour",)

    no_two_pm = full.features[:, NAMES.index("hour")] != 14
    lacking_an_hour = DriftReference(
        "v1", FEATURE_NAMES, full.features[no_two_pm], full.scores[no_two_pm], Path("memory")
    )
    test = detect_drift(window_of(rng, lacking_an_hour), DetectorConfig(), seed=1)
    assert test is not None and test.matched_on == ()
    assert test.reference_rows == lacking_an_hour.rows


# ------------------------------------------------------------------------ one version's window
def test_the_score_is_one_more_column_of_the_corrected_family() -> None:
    rng = np.random.default_rng(10)
    with_scores = reference_of(rng)
    window = window_of(rng, with_scores, score_shift=0.05)
    test = detect_drift(window, DetectorConfig(), seed=1)

    assert test is not None
    assert [t.name for t in test.features] == TESTED
    assert test.score is not None and test.score.name == SCORE_NAME
    assert test.threshold == pytest.approx(0.05 / (len(TESTED) + 1))
    assert test.is_drift and test.drifted == [SCORE_NAME]

    without = DriftReference("v1", FEATURE_NAMES, with_scores.features, None, Path("memory"))
    same_records = VersionSlice(without, window.values, window.scores, window.times)
    test = detect_drift(same_records, DetectorConfig(), seed=1)
    assert test is not None and test.score is None and not test.is_drift
    assert test.threshold == pytest.approx(0.05 / len(TESTED))


def test_excluded_features_are_not_tested_and_too_few_records_are_not_tested() -> None:
    rng = np.random.default_rng(11)
    reference = reference_of(rng)
    config = DetectorConfig(excluded=(*CALENDAR_FEATURES, "log_amount"), p_val=0.01)
    test = detect_drift(window_of(rng, reference, shift=1.0), config, seed=1)
    assert test is not None and "log_amount" not in [t.name for t in test.features]
    assert not test.is_drift
    assert test.threshold == pytest.approx(0.01 / len(TESTED))  # minus log_amount, plus score

    small = window_of(rng, reference, n=99)
    assert detect_drift(small, DetectorConfig(min_records=100), seed=1) is None
    assert detect_drift(small, DetectorConfig(min_records=99), seed=1) is not None


def test_the_same_window_and_seed_give_the_same_result() -> None:
    rng = np.random.default_rng(12)
    reference = reference_of(rng)
    window = window_of(rng, reference)
    first = detect_drift(window, DetectorConfig(), seed=42)
    assert first == detect_drift(window, DetectorConfig(), seed=42)
    assert first != detect_drift(window, DetectorConfig(), seed=43)  # another draw of rows


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"p_val": 0.0}, "p_val: must be in (0, 1), got 0.0"),
        ({"p_val": 1.0}, "p_val: must be in (0, 1), got 1.0"),
        ({"min_records": 0}, "min_records: must be an integer >= 1, got 0"),
        ({"seed": -1}, "seed: must be >= 0, got -1"),
    ],
)
def test_detector_settings_are_checked(settings: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError) as error:
        DetectorConfig(**settings)
    assert str(error.value) == message
