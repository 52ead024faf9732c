"""Training and test sets: point-in-time features of every transaction and a split.

Features are computed once over the whole validated frame with
:func:`fraud_detection.features.compute_features`, so every row sees the history before it even
when that history lies outside the training window. Two splits:

* **stratified** (default): a seeded random split that keeps the fraud share in both parts;
* **temporal**: a training window, a gap (fraud labels arrive late, through chargebacks, so the
  most recent days before the test window cannot be trained on), and a test window. Bounds are
  ISO dates or datetimes (UTC); a date-only *end* includes that whole day. Without explicit
  bounds the test window is the last ``test_days`` days of the data, preceded by ``gap_days``
  days of gap and ``train_days`` days of training (0: everything before the gap).

As in the "Reproducible ML for Credit Card Fraud Detection" handbook's protocol, a temporal test
set can drop the transactions of cards already *known* to be compromised: a card whose fraud
(from the start of the training window on) happened at least :data:`LABEL_DELAY_DAYS` before the
start of a test day is known on that day, and would be blocked rather than scored.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from fraud_detection.features import FEATURE_NAMES, LABEL_DELAY_DAYS, compute_features
from fraud_detection.schema import (
    AMOUNT,
    CARD_ID,
    LABEL,
    MERCHANT_ID,
    TIMESTAMP,
    TRANSACTION_ID,
    to_utc_timestamp,
)

STRATIFIED = "stratified"
TEMPORAL = "temporal"
SPLITS: tuple[str, ...] = (STRATIFIED, TEMPORAL)
#: Column of the training table naming each row's part.
SPLIT_COLUMN = "split"
TRAIN = "train"
TEST = "test"
#: Columns the training table keeps next to the features and the label.
KEY_COLUMNS: tuple[str, ...] = (TRANSACTION_ID, CARD_ID, MERCHANT_ID, TIMESTAMP, AMOUNT)
_DAY = pd.Timedelta(days=1)


class SplitError(ValueError):
    """The split is misconfigured or leaves a part unusable (empty, or without fraud)."""


@dataclass(frozen=True)
class SplitConfig:
    """How to split labelled transactions into a training and a test set."""

    kind: str = STRATIFIED
    test_size: float = 0.2
    seed: int = 42
    train_start: str = ""
    train_end: str = ""
    test_start: str = ""
    test_end: str = ""
    train_days: int = 0
    gap_days: int = LABEL_DELAY_DAYS
    test_days: int = 7
    exclude_known_compromised: bool = True

    def __post_init__(self) -> None:
        if self.kind not in SPLITS:
            raise SplitError(f"split: must be one of {', '.join(SPLITS)}, got {self.kind!r}")
        if not 0.0 < self.test_size < 1.0:
            raise SplitError(f"test_size: must be in (0, 1), got {self.test_size}")
        for name in ("train_days", "gap_days"):
            if getattr(self, name) < 0:
                raise SplitError(f"{name}: must be at least 0, got {getattr(self, name)}")
        if self.test_days < 1:
            raise SplitError(f"test_days: must be at least 1, got {self.test_days}")
        bounds = self.bounds()
        if any(bounds) and not all(bounds):
            raise SplitError(
                "temporal split: give all of train_start, train_end, test_start and test_end, "
                "or none of them"
            )
        if any(bounds) and self.kind != TEMPORAL:
            raise SplitError("train/test window dates need the temporal split (split=temporal)")

    def bounds(self) -> tuple[str, str, str, str]:
        """The explicit window bounds as given (empty strings when not given)."""
        return (self.train_start, self.train_end, self.test_start, self.test_end)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for manifests and reports."""
        return asdict(self)


@dataclass(frozen=True)
class TimeWindows:
    """Half-open UTC windows ``[start, end)`` of a temporal split."""

    train_start: pd.Timestamp
    train_end: pd.Timestamp
    test_start: pd.Timestamp
    test_end: pd.Timestamp

    def __post_init__(self) -> None:
        if not self.train_start < self.train_end <= self.test_start < self.test_end:
            raise SplitError(
                "temporal split: windows must satisfy train_start < train_end <= test_start < "
                f"test_end, got {self.describe()}"
            )

    @property
    def gap(self) -> pd.Timedelta:
        """Time between the end of training and the start of the test window."""
        return self.test_start - self.train_end

    def describe(self) -> str:
        """``train [a, b) gap N days test [c, d)`` in ISO form."""
        return (
            f"train [{self.train_start.isoformat()}, {self.train_end.isoformat()}), "
            f"test [{self.test_start.isoformat()}, {self.test_end.isoformat()})"
        )

    def to_dict(self) -> dict[str, str]:
        """ISO strings of the four bounds."""
        return {
            "train_start": self.train_start.isoformat(),
            "train_end": self.train_end.isoformat(),
            "test_start": self.test_start.isoformat(),
            "test_end": self.test_end.isoformat(),
            "gap_days": str(self.gap / _DAY),
        }


def parse_bound(text: str, *, end: bool) -> pd.Timestamp:
    """A window bound in UTC; a date-only ``end`` bound is moved to the next midnight."""
    try:
        stamp = to_utc_timestamp(text)
    except ValueError as exc:
        raise SplitError(str(exc)) from exc
    date_only = len(text.strip()) <= len("YYYY-MM-DD")
    return stamp + _DAY if end and date_only else stamp


def resolve_windows(timestamps: pd.Series, config: SplitConfig) -> TimeWindows:
    """The temporal windows: the explicit bounds, or the defaults derived from the data's days."""
    if all(config.bounds()):
        return TimeWindows(
            parse_bound(config.train_start, end=False),
            parse_bound(config.train_end, end=True),
            parse_bound(config.test_start, end=False),
            parse_bound(config.test_end, end=True),
        )
    first = timestamps.min().floor("D")
    test_end = timestamps.max().floor("D") + _DAY
    test_start = test_end - config.test_days * _DAY
    train_end = test_start - config.gap_days * _DAY
    train_start = train_end - config.train_days * _DAY if config.train_days else first
    return TimeWindows(max(train_start, first), train_end, test_start, test_end)


def stratified_split(labels: np.ndarray, test_size: float, seed: int) -> np.ndarray:
    """A seeded boolean mask of test rows that keeps the class shares in both parts."""
    from sklearn.model_selection import train_test_split

    counts = np.bincount(labels.astype(np.int64), minlength=2)
    if counts.min() < 2:
        raise SplitError(
            f"stratified split needs at least 2 rows of each class, got {counts[0]} legitimate "
            f"and {counts[1]} fraudulent"
        )
    positions = np.arange(len(labels))
    _, test_positions = train_test_split(
        positions, test_size=test_size, stratify=labels, random_state=seed
    )
    mask = np.zeros(len(labels), dtype=bool)
    mask[test_positions] = True
    return mask


def known_compromised(
    timestamps: pd.Series, cards: pd.Series, labels: np.ndarray, since: pd.Timestamp
) -> np.ndarray:
    """Rows whose card was known to be compromised at the start of the row's day.

    A card is known once one of its frauds at or after ``since`` is at least
    :data:`LABEL_DELAY_DAYS` days older than the start of the day (the label has arrived).
    """
    fraud = (labels == 1) & (timestamps >= since).to_numpy()
    first_fraud = timestamps[fraud].groupby(cards[fraud].to_numpy()).min()
    known_from = cards.map(first_fraud)  # NaT for cards without fraud
    day_start = timestamps.dt.floor("D")
    return (known_from < day_start - LABEL_DELAY_DAYS * _DAY).fillna(False).to_numpy(dtype=bool)


def temporal_split(
    timestamps: pd.Series,
    cards: pd.Series,
    labels: np.ndarray,
    windows: TimeWindows,
    exclude_known_compromised: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks of the training and test rows of a temporal split."""
    train = ((timestamps >= windows.train_start) & (timestamps < windows.train_end)).to_numpy()
    test = ((timestamps >= windows.test_start) & (timestamps < windows.test_end)).to_numpy()
    if exclude_known_compromised:
        test &= ~known_compromised(timestamps, cards, labels, windows.train_start)
    return train, test


def build_training_table(
    frame: pd.DataFrame, config: SplitConfig
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Features, label and split of every row used for training or testing, and a summary.

    ``frame`` is a validated canonical frame with labels. The table holds :data:`KEY_COLUMNS`,
    ``is_fraud``, ``split`` and :data:`FEATURE_NAMES`, in the frame's row order (rows outside a
    temporal split's windows are left out). Raises :class:`SplitError` when a part is empty or a
    part lacks fraud.
    """
    frame = frame.reset_index(drop=True)
    labels = frame[LABEL].to_numpy(dtype=np.int64)
    timestamps = pd.to_datetime(frame[TIMESTAMP], utc=True)
    summary: dict[str, Any] = {"kind": config.kind}
    if config.kind == STRATIFIED:
        test = stratified_split(labels, config.test_size, config.seed)
        train = ~test
        summary["test_size"] = config.test_size
    else:
        windows = resolve_windows(timestamps, config)
        train, test = temporal_split(
            timestamps, frame[CARD_ID], labels, windows, config.exclude_known_compromised
        )
        summary["windows"] = windows.to_dict()
        summary["exclude_known_compromised"] = config.exclude_known_compromised
        in_window = ((timestamps >= windows.test_start) & (timestamps < windows.test_end)).sum()
        summary["test_rows_excluded_known_compromised"] = int(in_window - test.sum())
    for name, mask in ((TRAIN, train), (TEST, test)):
        rows, frauds = int(mask.sum()), int(labels[mask].sum())
        where = f" ({summary['windows']})" if config.kind == TEMPORAL else ""
        if rows == 0:
            raise SplitError(f"the {name} set is empty{where}")
        if frauds == 0 or frauds == rows:
            raise SplitError(
                f"the {name} set has a single class ({rows} rows, {frauds} fraudulent){where}"
            )
        summary[f"{name}_rows"], summary[f"{name}_frauds"] = rows, frauds

    features = compute_features(frame)
    used = train | test
    table = frame.loc[used, list(KEY_COLUMNS)].copy()
    table[TIMESTAMP] = timestamps[used]
    table[LABEL] = labels[used]
    table[SPLIT_COLUMN] = np.where(test[used], TEST, TRAIN)
    table = pd.concat([table, features.loc[used, list(FEATURE_NAMES)]], axis=1)
    return table.reset_index(drop=True), summary


def feature_matrix(table: pd.DataFrame, part: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(X, y)`` of one part of a training table (or all of it); X in feature-name order."""
    rows = table if part is None else table[table[SPLIT_COLUMN] == part]
    return rows[list(FEATURE_NAMES)].to_numpy(dtype=np.float64), rows[LABEL].to_numpy(np.int64)
