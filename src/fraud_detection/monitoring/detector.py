"""The drift test of one window: arrays in, a :class:`DriftTest` out; no I/O, no Kafka.

Each tested column (every feature but the excluded ones, plus the score when the reference has
scores) gets a two-sample Kolmogorov-Smirnov test against the reference, through alibi-detect's
``KSDrift``; the window drifts when any column's p-value is below the Bonferroni-corrected
threshold ``p_val / number of tested columns``, so on stationary traffic at most about
``p_val`` of the windows raise a false alarm, however many columns are tested.

**Time of day.** A window shorter than a day sees only some hours, and much of the traffic
follows the clock: ``hour`` and ``is_night`` are the clock, the time since a card's previous
transaction is longer in the morning, and merchants' daily counts follow the week. Compared with
a reference drawn over whole days and weeks, such a window would drift every time (measured:
every window of 1,000 time-ordered stationary records). So, by default (``match_time``), each
window is compared with the reference rows of the same hours and kind of day: the reference rows
are drawn, without replacement, stratum by stratum (hour of day x weekend or not) in the
window's own proportions, as many as the reference allows. Strata are read from the window's
``hour`` and ``is_weekend`` features. When the reference has no row for some stratum of the
window (or too few overall), the strata coarsen to the hour alone, then to none (the whole
reference); :attr:`DriftTest.matched_on` says which was used. The calendar features themselves
(:data:`CALENDAR_FEATURES`) are excluded by default: matched, they carry no information.

The draw is seeded from the window's id, so a window formed twice (after a restart) gets the
same reference rows and the same result.

**Records that are not independent.** A window is consecutive records: merchants and cards recur
in it and share their daily counts, so it carries less information than as many independent
records and alibi-detect's p-values (which assume independence) are too small. By default
(``calibrate``), each column's effective size is divided by its design effect, estimated once per
reference from the reference's own contiguous blocks against random draws of the same hours
(:mod:`fraud_detection.monitoring.calibration`, :func:`calibration_of`); the p-value is then the
Kolmogorov distribution's with that size. A column with design effect 1 keeps alibi-detect's
p-value exactly; :attr:`ColumnTest.iid_p_value` keeps alibi-detect's in every case, and
:attr:`DriftTest.calibration` says whether the reference could be calibrated and why not.

alibi-detect is imported when the first window is tested (about 10 s: it pulls in
``transformers``); :func:`preload` imports it ahead of time, e.g. in a thread at start-up.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fraud_detection.monitoring.calibration import (
    Calibration,
    calibrate,
    corrected_p_values,
    effective_size,
    ks_statistics,
    not_calibrated,
)
from fraud_detection.monitoring.reference import DriftReference
from fraud_detection.monitoring.windows import VersionSlice

log = logging.getLogger(__name__)

#: The features that are the clock; excluded from the tests by default.
CALENDAR_FEATURES: tuple[str, ...] = ("hour", "is_night", "is_weekend")
#: The features whose values define the strata of the time matching, finest first.
STRATA_FEATURES: tuple[str, ...] = ("hour", "is_weekend")
#: The name the score's test is reported under.
SCORE_NAME = "fraud_probability"
CORRECTION = "bonferroni"
DEFAULT_P_VAL = 0.05
DEFAULT_MIN_RECORDS = 100


@dataclass(frozen=True)
class DetectorConfig:
    """How windows are tested.

    Attributes:
        p_val: the family-wise significance level of one window's test (before correction).
        min_records: a version's records in a window below this are not tested (reported with
            ``tested: false``); the time-matched reference must also reach this many rows.
        excluded: features not tested.
        match_time: compare with reference rows of the window's hours (module docstring).
        seed: mixed into every window's seed for the reference draw.
        calibrate: divide each column's effective size by its design effect, estimated from
            the reference's blocks (module docstring); off: alibi-detect's p-values.
    """

    p_val: float = DEFAULT_P_VAL
    min_records: int = DEFAULT_MIN_RECORDS
    excluded: tuple[str, ...] = CALENDAR_FEATURES
    match_time: bool = True
    seed: int = 0
    calibrate: bool = True

    def __post_init__(self) -> None:
        if not 0.0 < self.p_val < 1.0:
            raise ValueError(f"p_val: must be in (0, 1), got {self.p_val!r}")
        if isinstance(self.min_records, bool) or self.min_records < 1:
            raise ValueError(f"min_records: must be an integer >= 1, got {self.min_records!r}")
        if self.seed < 0:
            raise ValueError(f"seed: must be >= 0, got {self.seed!r}")


@dataclass(frozen=True)
class ColumnTest:
    """The KS test of one column.

    Attributes:
        name: the column.
        statistic: the KS statistic (alibi-detect's distance).
        p_value: the p-value with the column's design effect (alibi-detect's when it is 1).
        is_drift: ``p_value`` below the corrected threshold.
        iid_p_value: alibi-detect's p-value (records taken as independent).
        design_effect: what the test's effective size was divided by (>= 1).
    """

    name: str
    statistic: float
    p_value: float
    is_drift: bool
    iid_p_value: float | None = None
    design_effect: float = 1.0

    def __post_init__(self) -> None:
        if self.iid_p_value is None:
            object.__setattr__(self, "iid_p_value", self.p_value)


@dataclass(frozen=True)
class DriftTest:
    """The test of one version's records in one window.

    Attributes:
        features: one test per tested feature, in the reference's order.
        score: the score's test, or None when the reference has no scores.
        threshold: the corrected threshold each p-value is compared with.
        is_drift: any column below the threshold.
        reference_rows: the reference rows the window was compared with.
        matched_on: the strata the reference rows were matched on (empty: the whole reference).
        calibration: the reference's design effects (None: not asked for).
    """

    features: tuple[ColumnTest, ...]
    score: ColumnTest | None
    threshold: float
    is_drift: bool
    reference_rows: int
    matched_on: tuple[str, ...]
    calibration: Calibration | None = None

    @property
    def drifted(self) -> list[str]:
        """The names of the columns below the threshold (the score's as ``fraud_probability``)."""
        tests = [*self.features, *([self.score] if self.score is not None else [])]
        return [test.name for test in tests if test.is_drift]


def preload() -> None:
    """Import alibi-detect's KS detector now (it takes about 10 s)."""
    from alibi_detect.cd.ks import KSDrift  # noqa: F401


def ks_drift(
    reference: np.ndarray,
    window: np.ndarray,
    names: Sequence[str],
    p_val: float,
    *,
    reference_sorted: bool = False,
) -> tuple[list[ColumnTest], float, bool]:
    """Feature-wise KS tests of ``window`` against ``reference`` with alibi-detect ``KSDrift``.

    Args:
        reference: reference rows (rows x columns).
        window: the window's rows, same columns.
        names: the columns' names.
        p_val: the significance level before the Bonferroni correction.
        reference_sorted: each column of ``reference`` is already sorted on its own
            (:func:`sorted_reference_ks_drift`); otherwise it is sorted here.

    Returns:
        The per-column tests, the corrected threshold (``p_val / columns``) and whether any
        column is below it.
    """
    if reference.ndim != 2 or window.ndim != 2 or reference.shape[1] != window.shape[1]:
        raise ValueError(
            f"reference {reference.shape} and window {window.shape} must be 2-D with the same "
            "columns"
        )
    if len(names) != window.shape[1] or not len(names):
        raise ValueError(f"names: {len(names)} for {window.shape[1]} columns")
    if not reference_sorted:
        reference = np.sort(reference, axis=0)
    detector = sorted_reference_ks_drift()(reference, p_val=p_val, correction=CORRECTION)
    prediction = detector.predict(
        window, drift_type="batch", return_p_val=True, return_distance=True
    )["data"]
    threshold = float(prediction["threshold"])
    tests = [
        ColumnTest(name, float(statistic), float(p_value), bool(p_value < threshold))
        for name, statistic, p_value in zip(
            names, prediction["distance"], prediction["p_val"], strict=True
        )
    ]
    return tests, threshold, bool(prediction["is_drift"])


@functools.cache
def sorted_reference_ks_drift() -> type:
    """alibi-detect's ``KSDrift``, given a reference whose columns are each sorted.

    The stock detector scores each column with scipy's ``ks_2samp`` (``mode="asymp"``), which
    sorts both samples again for every window: about 1.6 ms a column here, most of a window's
    test. A column's KS test sees only that column's values, so the reference can be handed over
    with every column sorted on its own (its rows no longer line up, which no feature-wise test
    sees). This subclass then sorts only the window. Its statistic is scipy's (the two empirical
    CDFs compared at every value, :func:`~.calibration.ks_statistics`) and its p-value too
    (the Kolmogorov distribution ``kstwo`` at ``round(n m / (n + m))``); the Bonferroni
    correction, the threshold and the result are alibi-detect's own. The unit tests check it
    against the stock detector, ties included.
    """
    from alibi_detect.cd.ks import KSDrift

    class SortedReferenceKSDrift(KSDrift):
        def feature_score(self, x_ref: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            x = x.reshape(x.shape[0], -1)
            x_ref = x_ref.reshape(x_ref.shape[0], -1)
            distance = ks_statistics(x_ref, x, reference_sorted=True)
            n_e = effective_size(x_ref.shape[0], x.shape[0])
            p_values = corrected_p_values(distance, n_e, np.ones(len(distance)))
            return p_values.astype(np.float32), distance.astype(np.float32)

    return SortedReferenceKSDrift


def window_seed(seed: int, window_id: str) -> int:
    """A 64-bit seed of ``seed`` and a window id: the same window, the same draw."""
    digest = hashlib.sha256(f"{seed}:{window_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def matched_rows(
    reference_keys: np.ndarray, window_keys: np.ndarray, rng: np.random.Generator, min_rows: int
) -> np.ndarray | None:
    """Reference row indices whose stratum mix is the window's, as many as the reference allows.

    Each stratum (a key) gets ``round(n * share)`` rows, where ``share`` is its share of the
    window and ``n`` the largest total every stratum can supply without replacement. None when
    a stratum of the window has no reference row, or fewer than ``min_rows`` rows result.
    """
    keys, counts = np.unique(window_keys, return_counts=True)
    shares = counts / counts.sum()
    pools = [np.flatnonzero(reference_keys == key) for key in keys]
    available = np.array([len(pool) for pool in pools])
    if (available == 0).any():
        return None
    total = int(np.floor(np.min(available / shares) + 1e-9))
    takes = np.minimum(np.round(total * shares).astype(int), available)
    if takes.sum() < min_rows:
        return None
    chosen = [
        rng.choice(pool, take, replace=False) for pool, take in zip(pools, takes, strict=True)
    ]
    return np.sort(np.concatenate(chosen))


def _strata_keys(values: np.ndarray, columns: Sequence[int]) -> np.ndarray:
    """One integer key per row from the (small, non-negative integer) strata columns."""
    keys = np.zeros(values.shape[0], dtype=np.int64)
    for column in columns:
        keys = keys * 1_000 + np.clip(np.rint(values[:, column]), 0, 999).astype(np.int64)
    return keys


def _matched_in(
    pool: np.ndarray,
    window: np.ndarray,
    names: Sequence[str],
    config: DetectorConfig,
    rng: np.random.Generator,
    min_rows: int,
) -> tuple[np.ndarray, tuple[str, ...]] | None:
    """Indices into ``pool`` (feature rows) matched to the window's strata, and the strata.

    The strata coarsen (:data:`STRATA_FEATURES`, finest first) until the pool can supply them;
    None when even the whole pool has fewer than ``min_rows`` rows.
    """
    everything = np.arange(pool.shape[0])
    if config.match_time:
        strata = [name for name in STRATA_FEATURES if name in names]
        while strata:
            columns = [names.index(name) for name in strata]
            rows = matched_rows(
                _strata_keys(pool, columns), _strata_keys(window, columns), rng, min_rows
            )
            if rows is not None:
                return rows, tuple(strata)
            strata = strata[:-1]
    return (everything, ()) if len(everything) >= min_rows else None


def _time_matched(
    reference: DriftReference, window: np.ndarray, config: DetectorConfig, seed: int
) -> tuple[np.ndarray, tuple[str, ...]]:
    """The reference rows to compare with (indices) and the strata they were matched on."""
    rng = np.random.default_rng(seed)
    min_rows = min(config.min_records, reference.rows)
    matched = _matched_in(
        reference.features, window, list(reference.feature_names), config, rng, min_rows
    )
    return matched if matched is not None else (np.arange(reference.rows), ())


def tested_columns(
    reference: DriftReference, config: DetectorConfig
) -> tuple[list[int], list[str]]:
    """The reference's feature columns a window is tested on and the names of every tested
    column (the score last, as :data:`SCORE_NAME`, when the reference has scores)."""
    names = reference.feature_names
    columns = [index for index, name in enumerate(names) if name not in config.excluded]
    tested = [names[index] for index in columns]
    if reference.scores is not None:
        tested.append(SCORE_NAME)
    if not tested:
        raise ValueError("no column to test: every feature is excluded and there are no scores")
    return columns, tested


def _tested_matrix(
    reference: DriftReference, columns: list[int], rows: np.ndarray | None = None
) -> np.ndarray:
    """The reference's tested columns (the score last), of ``rows`` only when given."""
    rows = np.arange(reference.rows) if rows is None else rows
    matrix = reference.features[np.ix_(rows, columns)]
    if reference.scores is not None:
        matrix = np.column_stack([matrix, reference.scores[rows]])
    return matrix


def _sorted_tested_matrix(
    reference: DriftReference, columns: list[int], rows: np.ndarray
) -> np.ndarray:
    """:func:`_tested_matrix` of ``rows`` (distinct indices) with each column sorted on its own.

    The whole reference's columns are sorted once and kept with the reference; a window's rows
    are then picked out of them in order, without sorting again.
    """
    key = ("sorted columns", tuple(columns))
    known = reference.derived.get(key)
    if known is None:
        full = _tested_matrix(reference, columns)
        order = np.argsort(full, axis=0, kind="stable")
        known = reference.derived[key] = (np.take_along_axis(full, order, axis=0), order)
    values, order = known
    chosen = np.zeros(reference.rows, dtype=bool)
    chosen[rows] = True
    picked = chosen[order].T  # columns x rows: each column's picks in sorted order
    return values.T[picked].reshape(values.shape[1], -1).T


def calibration_of(reference: DriftReference, config: DetectorConfig) -> Calibration:
    """The design effects of ``reference``'s tested columns (:mod:`.calibration`), computed on
    first use and kept with the reference; not calibrated when ``config.calibrate`` is off."""
    key = (
        "calibration",
        config.calibrate,
        config.excluded,
        config.match_time,
        config.min_records,
        config.seed,
    )
    known = reference.derived.get(key)
    if known is not None:
        return known
    columns, names = tested_columns(reference, config)
    if not config.calibrate:
        result = not_calibrated(names, 0, "calibration switched off")
    else:
        features = reference.features
        feature_names = list(reference.feature_names)
        min_rows = min(config.min_records, reference.rows)

        def match(
            pool: np.ndarray, sample: np.ndarray, rng: np.random.Generator
        ) -> np.ndarray | None:
            matched = _matched_in(
                features[pool], features[sample], feature_names, config, rng, min_rows
            )
            return None if matched is None else pool[matched[0]]

        strata = [feature_names.index(name) for name in STRATA_FEATURES if name in feature_names]
        keys = (
            _strata_keys(features, strata)
            if config.match_time and strata
            else np.zeros(reference.rows, dtype=np.int64)
        )
        seed = window_seed(config.seed, f"calibration:{reference.model_version}")
        result = calibrate(_tested_matrix(reference, columns), names, keys, match, min_rows, seed)
    reference.derived[key] = result
    if result.calibrated:
        inflated = {
            name: round(d, 2)
            for name, d in zip(result.names, result.block_design_effects, strict=True)
            if d > 1.0
        }
        log.info(
            "drift reference of %s calibrated: %d blocks of %d rows; design effects above 1 "
            "(at a block's size): %s",
            reference.model_version,
            result.blocks,
            result.block_rows,
            inflated or "none",
        )
    else:
        log.info("drift reference of %s not calibrated: %s", reference.model_version, result.reason)
    return result


def detect_drift(part: VersionSlice, config: DetectorConfig, seed: int) -> DriftTest | None:
    """Test one version's records of a window against its reference; None when too few.

    Args:
        part: the records and their reference.
        config: the test's settings.
        seed: the seed of the reference draw (:func:`window_seed`).
    """
    if part.size < config.min_records:
        return None
    reference = part.reference
    columns, tested_names = tested_columns(reference, config)
    calibration = calibration_of(reference, config)
    rows, matched_on = _time_matched(reference, part.values, config, seed)
    reference_matrix = _sorted_tested_matrix(reference, columns, rows)
    window_matrix = part.values[:, columns]
    with_score = reference.scores is not None
    if with_score:
        window_matrix = np.column_stack([window_matrix, part.scores])
    tests, threshold, _ = ks_drift(
        reference_matrix, window_matrix, tested_names, config.p_val, reference_sorted=True
    )
    n_e = effective_size(part.size, len(rows))
    effects = calibration.design_effects(n_e)
    inflated = np.flatnonzero(effects > 1.0)  # the others keep alibi-detect's p-value
    corrected = corrected_p_values([tests[i].statistic for i in inflated], n_e, effects[inflated])
    for i, p_value in zip(inflated, corrected, strict=True):
        test = tests[i]
        tests[i] = ColumnTest(
            test.name,
            test.statistic,
            float(p_value),
            bool(p_value < threshold),
            iid_p_value=test.p_value,
            design_effect=float(effects[i]),
        )
    is_drift = any(test.is_drift for test in tests)
    score = tests.pop() if with_score else None
    return DriftTest(tuple(tests), score, threshold, is_drift, len(rows), matched_on, calibration)
