"""The KS test's design effects, estimated from the reference's own blocks: independent columns
keep alibi-detect's p-values, a column shared by a day's records is corrected, a shift still
drifts."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fraud_detection.monitoring.calibration import (
    MIN_BLOCKS,
    corrected_p_values,
    ks_statistics,
)
from fraud_detection.monitoring.detector import DetectorConfig, calibration_of, detect_drift
from fraud_detection.monitoring.reference import DriftReference
from fraud_detection.monitoring.windows import VersionSlice

NAMES = ("shared_by_the_day", "independent")
CONFIG = DetectorConfig(excluded=())
DAY_RECORDS = 1_000
REFERENCE_PER_DAY = 250


def days_of_traffic(rng: np.random.Generator, days: int, day_effect: float) -> list[np.ndarray]:
    """Per day, ``DAY_RECORDS`` rows: the first column moves with the day, the second does not."""
    out = []
    for _ in range(days):
        rows = rng.normal(size=(DAY_RECORDS, len(NAMES)))
        rows[:, 0] += rng.normal(scale=day_effect)
        out.append(rows)
    return out


def thin_reference(rng: np.random.Generator, days: list[np.ndarray]) -> DriftReference:
    """A reference drawn as the export draws it: a thin random sample, kept in time order."""
    rows = np.concatenate(
        [day[np.sort(rng.choice(len(day), REFERENCE_PER_DAY, replace=False))] for day in days]
    )
    scores = rng.beta(1, 20, len(rows))
    return DriftReference("v1", NAMES, rows, scores, Path("memory"))


def window(reference: DriftReference, rows: np.ndarray, rng: np.random.Generator) -> VersionSlice:
    """One day's records as a window."""
    times = np.arange(len(rows), dtype=np.int64) * 1_000_000
    return VersionSlice(reference, rows, rng.beta(1, 20, len(rows)), times)


def test_ks_statistics_are_scipys() -> None:
    from scipy.stats import ks_2samp

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(500, 2)), rng.normal(0.2, size=(300, 2))
    a[:, 1] = np.round(a[:, 1])  # ties
    b[:, 1] = np.round(b[:, 1])
    expected = [ks_2samp(a[:, j], b[:, j]).statistic for j in range(2)]
    assert np.allclose(ks_statistics(a, b), expected)


def test_corrected_p_values_are_alibis_at_design_effect_one_and_larger_above() -> None:
    from scipy.stats import ks_2samp

    rng = np.random.default_rng(1)
    a, b = rng.normal(size=4_000), rng.normal(0.08, size=1_000)
    statistic, p_value = ks_2samp(a, b, mode="asymp")
    n_e = 4_000 * 1_000 / 5_000
    same, inflated = corrected_p_values([statistic, statistic], n_e, [1.0, 3.0])
    assert np.isclose(same, p_value)
    assert inflated > same


def test_independent_records_keep_alibis_test() -> None:
    rng = np.random.default_rng(2)
    reference = thin_reference(rng, days_of_traffic(rng, 20, day_effect=0.0))
    calibration = calibration_of(reference, CONFIG)
    assert calibration.calibrated and calibration.blocks >= MIN_BLOCKS
    assert max(calibration.block_design_effects) < 1.3
    test = detect_drift(window(reference, rng.normal(size=(1_000, 2)), rng), CONFIG, 7)
    assert test is not None and test.calibration is calibration
    columns = [*test.features, test.score]
    for column in columns:
        assert column is not None and column.p_value >= column.iid_p_value
        if column.design_effect == 1.0:
            assert column.p_value == column.iid_p_value
    assert any(column is not None and column.design_effect == 1.0 for column in columns)


def test_a_column_shared_by_the_days_records_is_corrected_and_false_alarms_fall() -> None:
    rng = np.random.default_rng(3)
    reference = thin_reference(rng, days_of_traffic(rng, 20, day_effect=0.15))
    calibration = calibration_of(reference, CONFIG)
    shared, independent, score = calibration.block_design_effects
    assert shared > 1.5 and independent < 1.3 and score < 1.3
    live = days_of_traffic(rng, 60, day_effect=0.15)
    corrected = [detect_drift(window(reference, day, rng), CONFIG, i) for i, day in enumerate(live)]
    plain_config = DetectorConfig(excluded=(), calibrate=False)
    plain = [
        detect_drift(window(reference, day, rng), plain_config, i) for i, day in enumerate(live)
    ]
    corrected_alarms = sum(1 for test in corrected if test is not None and test.is_drift)
    plain_alarms = sum(1 for test in plain if test is not None and test.is_drift)
    assert plain_alarms >= 30  # the i.i.d. test flags half of the days or more
    assert corrected_alarms <= 8  # about p_val of 60 windows, with room for chance
    assert all(test is not None and test.features[0].design_effect > 2 for test in corrected)


def test_a_real_shift_still_drifts_after_the_correction() -> None:
    rng = np.random.default_rng(4)
    reference = thin_reference(rng, days_of_traffic(rng, 20, day_effect=0.15))
    day = days_of_traffic(rng, 1, day_effect=0.15)[0]
    day[:, 0] += 1.0
    day[:, 1] += 0.3
    test = detect_drift(window(reference, day, rng), CONFIG, 1)
    assert test is not None and test.is_drift
    assert test.drifted == list(NAMES)
    assert test.features[0].design_effect > 1.0


def test_a_reference_of_too_few_blocks_is_not_calibrated_and_says_so() -> None:
    rng = np.random.default_rng(5)
    small = DriftReference(
        "v1", NAMES, rng.normal(size=(700, 2)), rng.beta(1, 20, 700), Path("memory")
    )
    calibration = calibration_of(small, CONFIG)
    assert not calibration.calibrated and "fewer than" in calibration.reason
    assert calibration.describe()["calibrated"] is False
    test = detect_drift(window(small, rng.normal(size=(300, 2)), rng), CONFIG, 3)
    assert test is not None
    assert all(column.p_value == column.iid_p_value for column in test.features)


def test_the_calibration_is_computed_once_and_is_the_same_for_the_same_reference() -> None:
    rng = np.random.default_rng(6)
    days = days_of_traffic(rng, 20, day_effect=0.15)
    first = thin_reference(np.random.default_rng(9), days)
    again = thin_reference(np.random.default_rng(9), days)
    assert calibration_of(first, CONFIG) is calibration_of(first, CONFIG)
    assert calibration_of(first, CONFIG) == calibration_of(again, CONFIG)
    off = calibration_of(first, DetectorConfig(excluded=(), calibrate=False))
    assert not off.calibrated and set(off.block_design_effects) == {1.0}
