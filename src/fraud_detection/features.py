"""Model features, defined once for training (offline) and serving (online).

Every feature is *point-in-time*: a transaction's features use only what was known before it —
the card's earlier transactions, and the merchant's transactions and fraud labels of days whose
labels have arrived (labels come from chargebacks, :data:`LABEL_DELAY_DAYS` late). Two
implementations of the same definitions share this module:

* :func:`compute_features` — vectorised over a DataFrame, for training and drift references;
* :class:`OnlineFeatureState` — incremental per-card state for the serving path: it returns the
  feature vector of one incoming transaction, then absorbs it. The state can be saved and
  restored, so the training pipeline ships a snapshot with the model.

Both compute the window aggregates from per-card running sums accumulated in the same order
with the same float64 operations, so they agree to the last bit (the parity test checks 1e-9).

Definitions (all times in UTC, windows are trailing and exclude the transaction itself):

``log_amount``            ``log1p(amt)``
``amt_deviation``         ``(amt - mean_30d) / spread_30d``; 0 for a card without history.
                          ``spread_30d = max(std_30d, 0.1 * mean_30d, 1.0)`` so a card with one
                          or identical past amounts still gives a finite, meaningful value.
``card_count_{w}d``       the card's transactions in the last w days (w = 1, 7, 30)
``card_mean_amt_{w}d``    their mean amount; 0 when there are none
``card_secs_since_prev``  seconds since the card's previous transaction, capped at 30 days
                          (a card's first transaction gets the cap)
``hour``                  hour of day
``is_night``              1 for 00:00-05:59
``is_weekend``            1 on Saturday and Sunday
``merchant_count_{w}d``   the merchant's transactions over the w days that end
                          LABEL_DELAY_DAYS before the transaction's day (calendar days, UTC)
``merchant_risk_{w}d``    the share of those that were fraud; 0 when there are none

Merchant risk needs labels: offline they come from the frame's ``is_fraud`` column (zeros when
absent); online, from :meth:`OnlineFeatureState.record_label` (the training snapshot carries
the labels known at training time, and the labels stream keeps it current). Online labels are
idempotent by construction: each merchant-day bucket remembers the ids of the fraudulent
transactions it counts, so a label delivered twice (Kafka is at-least-once, a restart re-reads)
or already in the training snapshot counts once, and a reversed label (``is_fraud=0`` after
``1``) takes its fraud back out.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import tempfile
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path

import numpy as np
import pandas as pd

from fraud_detection.schema import AMOUNT, CARD_ID, LABEL, MERCHANT_ID, TIMESTAMP, TRANSACTION_ID

WINDOW_DAYS: tuple[int, ...] = (1, 7, 30)
MICROS_PER_SECOND = 1_000_000
MICROS_PER_HOUR = 3_600 * MICROS_PER_SECOND
MICROS_PER_DAY = 24 * MICROS_PER_HOUR
#: Longest window; history older than this is forgotten by the online state.
HISTORY_MICROS = max(WINDOW_DAYS) * MICROS_PER_DAY
#: History is kept this much longer than the longest window, so that a transaction up to this
#: far ahead of the others (the transformer admits at most a day) erases nothing they need.
RETENTION_MARGIN_DAYS = 2
RETENTION_MICROS = HISTORY_MICROS + RETENTION_MARGIN_DAYS * MICROS_PER_DAY
GAP_CAP_SECONDS = HISTORY_MICROS / MICROS_PER_SECOND
SPREAD_FLOOR_FRACTION = 0.1
SPREAD_FLOOR = 1.0
NIGHT_END_HOUR = 6
#: 1970-01-01 was a Thursday (Monday = 0).
EPOCH_WEEKDAY = 3
#: Days after which a transaction's fraud label is assumed known (chargeback delay).
LABEL_DELAY_DAYS = 7

CARD_FEATURE_NAMES: tuple[str, ...] = (
    "log_amount",
    "amt_deviation",
    *(name for days in WINDOW_DAYS for name in (f"card_count_{days}d", f"card_mean_amt_{days}d")),
    "card_secs_since_prev",
    "hour",
    "is_night",
    "is_weekend",
)
MERCHANT_FEATURE_NAMES: tuple[str, ...] = tuple(
    name for days in WINDOW_DAYS for name in (f"merchant_count_{days}d", f"merchant_risk_{days}d")
)
FEATURE_NAMES: tuple[str, ...] = CARD_FEATURE_NAMES + MERCHANT_FEATURE_NAMES
#: Format 2: each merchant-day bucket lists the ids of its fraudulent transactions.
STATE_FORMAT_VERSION = 2
#: Format 1 counted frauds without their ids; see :meth:`OnlineFeatureState.from_dict`.
_LEGACY_FORMAT_VERSION = 1
#: Oldest merchant day an online state keeps, relative to its latest transaction's day.
MERCHANT_RETENTION_DAYS = LABEL_DELAY_DAYS + max(WINDOW_DAYS) + RETENTION_MARGIN_DAYS
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MICRO = timedelta(microseconds=1)


# --------------------------------------------------------------------------- shared definitions
def timestamp_to_micros(value: str | datetime) -> int:
    """Microseconds since the Unix epoch of an ISO-8601 string or datetime (naive means UTC)."""
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // _ONE_MICRO


def timestamps_to_micros(values: pd.Series) -> np.ndarray:
    """Vectorised :func:`timestamp_to_micros` for a column of strings or datetimes."""
    stamps = pd.to_datetime(values, utc=True, format="ISO8601")
    return stamps.dt.as_unit("ns").astype("int64").to_numpy() // 1_000


def _spread(std: float, mean: float) -> float:
    return max(std, SPREAD_FLOOR_FRACTION * mean, SPREAD_FLOOR)


# ------------------------------------------------------------------------------------ offline
def compute_features(frame: pd.DataFrame) -> pd.DataFrame:
    """Point-in-time features of every transaction in ``frame`` (any row order).

    Returns a float64 frame with :data:`FEATURE_NAMES` columns and ``frame``'s index. Ties in
    time on one card are ordered as they appear in ``frame``. Merchant risk uses the frame's
    ``is_fraud`` labels when present.
    """
    times = timestamps_to_micros(frame[TIMESTAMP])
    amounts = frame[AMOUNT].to_numpy(dtype=np.float64)
    cards, _ = pd.factorize(frame[CARD_ID], sort=False)
    merchants, _ = pd.factorize(frame[MERCHANT_ID], sort=False)
    labels = frame[LABEL].to_numpy(dtype=np.float64) if LABEL in frame else np.zeros(len(frame))
    out = np.hstack(
        [
            _card_features(times, amounts, cards),
            _merchant_features(times // MICROS_PER_DAY, merchants, labels),
        ]
    )
    return pd.DataFrame(out, columns=list(FEATURE_NAMES), index=frame.index)


def _card_features(times: np.ndarray, amounts: np.ndarray, cards: np.ndarray) -> np.ndarray:
    """:data:`CARD_FEATURE_NAMES` for every row, in the given row order."""
    n = len(times)
    order = np.lexsort((times, cards))  # stable: equal times keep frame order
    t, a, c = times[order], amounts[order], cards[order]

    sums_before = np.empty(n)
    squares_before = np.empty(n)
    starts = {days: np.empty(n, dtype=np.int64) for days in WINDOW_DAYS}
    bounds = np.flatnonzero(np.r_[True, c[1:] != c[:-1], True]) if n else np.array([0])
    for lo, hi in pairwise(bounds):
        group_t, group_a = t[lo:hi], a[lo:hi]
        # Sequential running sums (np.cumsum adds in order), exactly as the online state does.
        sums_before[lo] = squares_before[lo] = 0.0
        sums_before[lo + 1 : hi] = np.cumsum(group_a)[:-1]
        squares_before[lo + 1 : hi] = np.cumsum(group_a * group_a)[:-1]
        for days in WINDOW_DAYS:
            first = np.searchsorted(group_t, group_t - days * MICROS_PER_DAY, side="right")
            starts[days][lo:hi] = first + lo

    out = np.empty((n, len(CARD_FEATURE_NAMES)))
    positions = np.arange(n)
    column = 2
    mean30 = std30 = count30 = np.zeros(n)
    for days in WINDOW_DAYS:
        first = starts[days]
        count = (positions - first).astype(np.float64)
        total = sums_before - sums_before[first]
        with np.errstate(divide="ignore", invalid="ignore"):
            mean = np.where(count > 0, total / count, 0.0)
        out[:, column], out[:, column + 1] = count, mean
        column += 2
        if days == max(WINDOW_DAYS):
            squares = squares_before - squares_before[first]
            with np.errstate(divide="ignore", invalid="ignore"):
                var = np.where(count > 1, (squares - total * total / count) / (count - 1), 0.0)
            mean30, count30 = mean, count
            std30 = np.sqrt(np.maximum(var, 0.0))

    spread = np.maximum(np.maximum(std30, SPREAD_FLOOR_FRACTION * mean30), SPREAD_FLOOR)
    out[:, 0] = np.log1p(a)
    out[:, 1] = np.where(count30 > 0, (a - mean30) / spread, 0.0)
    previous = np.r_[t[:1], t[:-1]]
    has_previous = np.r_[False, c[1:] == c[:-1]] if n else np.array([], dtype=bool)
    gap = np.minimum((t - previous) / MICROS_PER_SECOND, GAP_CAP_SECONDS)
    out[:, column] = np.where(has_previous, gap, GAP_CAP_SECONDS)
    hour = (t // MICROS_PER_HOUR) % 24
    out[:, column + 1] = hour
    out[:, column + 2] = hour < NIGHT_END_HOUR
    out[:, column + 3] = (t // MICROS_PER_DAY + EPOCH_WEEKDAY) % 7 >= 5

    result = np.empty_like(out)
    result[order] = out
    return result


def _merchant_features(days: np.ndarray, merchants: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """:data:`MERCHANT_FEATURE_NAMES` from per merchant-day counts of transactions and frauds."""
    out = np.zeros((len(days), len(MERCHANT_FEATURE_NAMES)))
    if not len(days):
        return out
    # One integer key per (merchant, day); each merchant owns a disjoint range of keys, so a
    # difference of cumulative counts between two keys of one merchant counts only its own days.
    base = days.min() - LABEL_DELAY_DAYS - max(WINDOW_DAYS) - 1
    span = days.max() - base + 1
    keys, inverse = np.unique(merchants * span + (days - base), return_inverse=True)
    tx_upto = np.r_[0, np.cumsum(np.bincount(inverse))]
    fraud_upto = np.r_[0, np.cumsum(np.bincount(inverse, weights=labels))]
    row_base = merchants * span - base

    def upto(last_day: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        index = np.searchsorted(keys, row_base + last_day, side="right")
        return tx_upto[index], fraud_upto[index]

    newest_tx, newest_fraud = upto(days - LABEL_DELAY_DAYS - 1)
    for column, window in enumerate(WINDOW_DAYS):
        oldest_tx, oldest_fraud = upto(days - LABEL_DELAY_DAYS - window - 1)
        count = (newest_tx - oldest_tx).astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            risk = np.where(count > 0, (newest_fraud - oldest_fraud) / count, 0.0)
        out[:, 2 * column], out[:, 2 * column + 1] = count, risk
    return out


# ------------------------------------------------------------------------------------- online
class _CardHistory:
    """One card's recent transactions: times and running sums *before* each of them."""

    __slots__ = ("head", "squares_before", "sums_before", "times", "total", "total_squares")

    def __init__(self) -> None:
        self.times: list[int] = []
        self.sums_before: list[float] = []
        self.squares_before: list[float] = []
        self.head = 0  # entries before head are older than the longest window
        self.total = 0.0
        self.total_squares = 0.0

    def copy(self) -> _CardHistory:
        """An independent copy of the retained history."""
        twin = _CardHistory()
        head = self.head
        twin.times = self.times[head:]
        twin.sums_before = self.sums_before[head:]
        twin.squares_before = self.squares_before[head:]
        twin.total, twin.total_squares = self.total, self.total_squares
        return twin


def _window_features(
    history: _CardHistory, end: int, now: int, amount: float, vector: list[float]
) -> None:
    """Append the card's window counts and means as of ``now``, from its first ``end`` entries.

    Also sets ``vector[1]`` (``amt_deviation``).
    """
    mean = count = total = 0.0
    first = end
    totals_at_end = history.sums_before[end] if end < len(history.times) else history.total
    for days in WINDOW_DAYS:
        first = bisect_right(history.times, now - days * MICROS_PER_DAY, history.head, end)
        count = float(end - first)
        total = totals_at_end - history.sums_before[first] if first < end else 0.0
        mean = total / count if count > 0 else 0.0
        vector += (count, mean)
    if count > 0:  # count, total and mean of the longest window
        squares_at_end = (
            history.squares_before[end] if end < len(history.times) else history.total_squares
        )
        squares = squares_at_end - history.squares_before[first]
        var = (squares - total * total / count) / (count - 1) if count > 1 else 0.0
        vector[1] = (amount - mean) / _spread(math.sqrt(max(var, 0.0)), mean)


def _calendar_features(timestamp_micros: int) -> tuple[float, float, float]:
    """``hour``, ``is_night`` and ``is_weekend`` of a time (UTC)."""
    hour = (timestamp_micros // MICROS_PER_HOUR) % 24
    return (
        float(hour),
        float(hour < NIGHT_END_HOUR),
        float((timestamp_micros // MICROS_PER_DAY + EPOCH_WEEKDAY) % 7 >= 5),
    )


def _late_card_features(history: _CardHistory, amount: float, timestamp_micros: int) -> list[float]:
    """Features of a transaction older than the card's latest, then insert it in time order.

    It sees exactly the card's transactions before it in time (as offline), and every later
    transaction's running sums include it from now on, so late arrival does not bend the
    windows of the transactions that follow. The windows reach no further back than the card's
    retained history (the longest window before its latest transaction).
    """
    times = history.times
    position = bisect_right(times, timestamp_micros, history.head)
    vector = [math.log1p(amount), 0.0]
    _window_features(history, position, timestamp_micros, amount, vector)
    gap = (
        min((timestamp_micros - times[position - 1]) / MICROS_PER_SECOND, GAP_CAP_SECONDS)
        if position > 0
        else GAP_CAP_SECONDS
    )
    vector.append(gap)
    vector += _calendar_features(timestamp_micros)

    sums, squares = history.sums_before, history.squares_before
    sum_at, square_at = sums[position], squares[position]
    square = amount * amount
    for index in range(position, len(times)):
        sums[index] += amount
        squares[index] += square
    times.insert(position, timestamp_micros)
    sums.insert(position, sum_at)
    squares.insert(position, square_at)
    history.total += amount
    history.total_squares += square
    return vector


class OnlineFeatureState:
    """Per-card and per-merchant state that computes :data:`FEATURE_NAMES` one at a time.

    Transactions may arrive out of time order: one older than the card's latest is placed at
    its own time (it sees the card's earlier transactions, and the later ones count it), so the
    state does not depend on arrival order beyond what was known when each was scored. Which
    times are accepted at all is the caller's decision (the transformer admits a bounded range
    around its clock). Merchant buckets are calendar days:
    ``{merchant: {day: [transactions, frauds, fraud_ids]}}``, where ``fraud_ids`` is the set of
    the transaction ids counted in ``frauds`` (None while there are none), so
    ``frauds == len(fraud_ids)`` always and a label is counted at most once.
    """

    def __init__(self) -> None:
        # In order of last activity (oldest first), so idle ones are forgotten from the front.
        self._cards: OrderedDict[str, _CardHistory] = OrderedDict()
        self._merchants: OrderedDict[str, dict[int, list]] = OrderedDict()
        self.last_timestamp_micros: int | None = None

    def __len__(self) -> int:
        return len(self._cards)

    def process(
        self, card_id: str, merchant_id: str, amount: float, timestamp_micros: int
    ) -> list[float]:
        """Return the features of this transaction, then absorb it into the state."""
        vector = self._card_features(card_id, amount, timestamp_micros)
        day = timestamp_micros // MICROS_PER_DAY
        buckets = self._merchants.get(merchant_id)
        if buckets is None:
            buckets = self._merchants[merchant_id] = {}
        else:
            self._merchants.move_to_end(merchant_id)
        vector += _merchant_window_features(buckets, day)
        bucket = buckets.get(day)
        if bucket is None:
            bucket = buckets[day] = [0, 0, None]
            _forget_days_before(buckets, day - MERCHANT_RETENTION_DAYS)
        bucket[0] += 1
        return vector

    def record_label(
        self, merchant_id: str, timestamp_micros: int, is_fraud: int, transaction_id: str
    ) -> bool:
        """Apply a transaction's label (from chargebacks) to its merchant's risk; idempotent.

        ``is_fraud=1`` counts ``transaction_id`` as a fraud of its merchant's day, at most once
        however often it is recorded; ``is_fraud=0`` takes it back out if it was counted (a
        reversed chargeback) and is otherwise a no-op (the transaction itself was counted when
        it was processed). A label for a day older than the state keeps
        (:data:`MERCHANT_RETENTION_DAYS` before its latest transaction) is ignored: no
        admissible transaction could see it. Returns whether the state changed.
        """
        if self.is_too_old_for_labels(timestamp_micros):
            return False
        day = timestamp_micros // MICROS_PER_DAY
        buckets = self._merchants.get(merchant_id)
        if not is_fraud:
            bucket = buckets.get(day) if buckets is not None else None
            if bucket is None or not bucket[2] or transaction_id not in bucket[2]:
                return False
            bucket[2].discard(transaction_id)
            bucket[1] -= 1
            return True
        if buckets is None:
            buckets = self._merchants[merchant_id] = {}
        bucket = buckets.get(day)
        if bucket is None:
            bucket = buckets[day] = [0, 0, None]
        ids = bucket[2]
        if ids is None:
            ids = bucket[2] = set()
        elif transaction_id in ids:
            return False
        ids.add(transaction_id)
        bucket[1] += 1
        return True

    def is_too_old_for_labels(self, timestamp_micros: int) -> bool:
        """Whether a label for a transaction at this time would be ignored as too old."""
        latest = self.last_timestamp_micros
        return latest is not None and (
            timestamp_micros // MICROS_PER_DAY < latest // MICROS_PER_DAY - MERCHANT_RETENTION_DAYS
        )

    def forget_idle(self, oldest_micros: int, limit: int = 100) -> int:
        """Forget up to ``limit`` cards and merchants no transaction from ``oldest_micros`` on
        can see any more (oldest activity first); returns how many were forgotten.

        A card whose latest transaction lies beyond every window of such a transaction scores
        exactly as a new card, and a merchant likewise; forgetting them keeps the state's
        memory bounded by recent activity instead of by every id ever seen.
        """
        forgotten = 0
        cards = self._cards
        card_cutoff = oldest_micros - RETENTION_MICROS
        while forgotten < limit and cards:
            card_id, history = next(iter(cards.items()))
            if history.times and history.times[-1] >= card_cutoff:
                break
            del cards[card_id]
            forgotten += 1
        day_cutoff = oldest_micros // MICROS_PER_DAY - MERCHANT_RETENTION_DAYS
        merchants = self._merchants
        while forgotten < limit and merchants:
            merchant, buckets = next(iter(merchants.items()))
            if buckets and max(buckets) >= day_cutoff:
                break
            del merchants[merchant]
            forgotten += 1
        return forgotten

    def adopt(self, snapshot: OnlineFeatureState) -> None:
        """Take from a newer bundle's snapshot what this live state lacks; keep the rest.

        A model switch must not blind the velocity features: the live per-card histories stay.
        From the snapshot come the cards this state has never seen, and, per merchant and day,
        the larger of the two transaction counts and the union of the fraudulent transaction ids
        (the snapshot carries the labels known at its training; this state, those recorded
        since it was loaded; a fraud known to both counts once).
        """
        for card_id, history in snapshot._cards.items():
            if card_id not in self._cards:
                self._cards[card_id] = history.copy()
        for merchant, buckets in snapshot._merchants.items():
            live = self._merchants.setdefault(merchant, {})
            for day, (transactions, _, ids) in buckets.items():
                bucket = live.get(day)
                if bucket is None:
                    live[day] = [transactions, len(ids or ()), set(ids) if ids else None]
                    continue
                bucket[0] = max(bucket[0], transactions)
                if ids:
                    if bucket[2]:
                        bucket[2] |= ids
                    else:
                        bucket[2] = set(ids)
                    bucket[1] = len(bucket[2])
        if snapshot.last_timestamp_micros is not None and (
            self.last_timestamp_micros is None
            or snapshot.last_timestamp_micros > self.last_timestamp_micros
        ):
            self.last_timestamp_micros = snapshot.last_timestamp_micros

    def _card_features(self, card_id: str, amount: float, timestamp_micros: int) -> list[float]:
        history = self._cards.get(card_id)
        if history is None:
            history = self._cards[card_id] = _CardHistory()
        else:
            self._cards.move_to_end(card_id)
        times = history.times
        if times and timestamp_micros < times[-1]:
            return _late_card_features(history, amount, timestamp_micros)
        size = len(times)
        vector = [math.log1p(amount), 0.0]
        _window_features(history, size, timestamp_micros, amount, vector)
        gap = (
            min((timestamp_micros - times[-1]) / MICROS_PER_SECOND, GAP_CAP_SECONDS)
            if size
            else GAP_CAP_SECONDS
        )
        vector.append(gap)
        vector += _calendar_features(timestamp_micros)

        # Absorb: forget what no window can see any more, then append.
        first = bisect_right(times, timestamp_micros - RETENTION_MICROS, history.head, size)
        history.head = first
        if first > 32 and 2 * first > size:
            del times[:first], history.sums_before[:first], history.squares_before[:first]
            history.head = 0
        times.append(timestamp_micros)
        history.sums_before.append(history.total)
        history.squares_before.append(history.total_squares)
        history.total += amount
        history.total_squares += amount * amount
        if self.last_timestamp_micros is None or timestamp_micros > self.last_timestamp_micros:
            self.last_timestamp_micros = timestamp_micros
        return vector

    def process_transaction(self, transaction: Mapping[str, object]) -> list[float]:
        """:meth:`process` for a canonical transaction mapping (timestamp as ISO-8601 text)."""
        stamp = transaction[TIMESTAMP]
        micros = stamp if isinstance(stamp, int) else timestamp_to_micros(stamp)  # type: ignore[arg-type]
        return self.process(
            str(transaction[CARD_ID]),
            str(transaction[MERCHANT_ID]),
            float(transaction[AMOUNT]),  # type: ignore[arg-type]
            micros,
        )

    def replay(self, frame: pd.DataFrame) -> np.ndarray:
        """Process every transaction of ``frame`` in time order; return features in frame order.

        When the frame carries ``is_fraud``, each label is recorded right after its transaction
        (it only becomes visible to transactions :data:`LABEL_DELAY_DAYS` later), under the
        frame's ``transaction_id`` (the row's position when the frame has none).
        """
        times = timestamps_to_micros(frame[TIMESTAMP])
        order = np.argsort(times, kind="stable")
        cards = frame[CARD_ID].astype(str).to_numpy()[order].tolist()
        merchants = frame[MERCHANT_ID].astype(str).to_numpy()[order].tolist()
        amounts = frame[AMOUNT].to_numpy(dtype=np.float64)[order].tolist()
        stamps = times[order].tolist()
        labels = frame[LABEL].to_numpy()[order].tolist() if LABEL in frame else [0] * len(stamps)
        ids = (
            frame[TRANSACTION_ID].astype(str).to_numpy()[order].tolist()
            if TRANSACTION_ID in frame
            else [f"row-{position}" for position in order.tolist()]
        )
        rows = []
        for card, merchant, amount, stamp, label, transaction_id in zip(
            cards, merchants, amounts, stamps, labels, ids, strict=True
        ):
            rows.append(self.process(card, merchant, amount, stamp))
            if label:
                self.record_label(merchant, stamp, label, transaction_id)
        out = np.empty((len(frame), len(FEATURE_NAMES)))
        if rows:
            out[order] = np.asarray(rows)
        return out

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> OnlineFeatureState:
        """The state after seeing every transaction (and label) of ``frame``: the snapshot."""
        state = cls()
        state.replay(frame)
        return state

    # ------------------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, object]:
        """A JSON-serialisable snapshot holding only what the windows can still see."""
        cards: dict[str, list[object]] = {}
        for card_id, history in self._cards.items():
            head = history.head
            cards[card_id] = [
                history.times[head:],
                history.sums_before[head:],
                history.squares_before[head:],
                history.total,
                history.total_squares,
            ]
        return {
            "format": STATE_FORMAT_VERSION,
            "features": list(FEATURE_NAMES),
            "label_delay_days": LABEL_DELAY_DAYS,
            "last_timestamp_micros": self.last_timestamp_micros,
            "cards": cards,
            "merchants": {
                merchant: [
                    [day, transactions, sorted(ids) if ids else []]
                    for day, (transactions, _, ids) in sorted(buckets.items())
                ]
                for merchant, buckets in self._merchants.items()
            },
        }

    @classmethod
    def from_dict(
        cls, data: Mapping[str, object], drop_legacy_labels: bool = False
    ) -> OnlineFeatureState:
        """Restore a snapshot made by :meth:`to_dict`; refuses other formats or feature sets.

        A format 1 state (fraud counts without transaction ids, so labels could not be applied
        idempotently to it) is refused with a message saying so, unless ``drop_legacy_labels``:
        then its cards and transaction counts are kept and its fraud counts dropped. That suits
        a checkpoint, whose frauds came only from bundle snapshots: adopting the current
        bundle's snapshot and re-reading the labels topic restores them, each counted once.
        """
        version = data.get("format")
        legacy = version == _LEGACY_FORMAT_VERSION
        if legacy and not drop_legacy_labels:
            raise ValueError(
                f"feature state format {_LEGACY_FORMAT_VERSION} counts merchant frauds without "
                f"their transaction ids; this release needs format {STATE_FORMAT_VERSION} "
                "(rebuild the bundle with this release: retrain or re-export it)"
            )
        if version != STATE_FORMAT_VERSION and not legacy:
            raise ValueError(
                f"feature state format {version!r} is not supported "
                f"(this release reads format {STATE_FORMAT_VERSION})"
            )
        if list(data.get("features", [])) != list(FEATURE_NAMES):  # type: ignore[call-overload]
            raise ValueError("feature state was made for a different feature set")
        if data.get("label_delay_days") != LABEL_DELAY_DAYS:
            raise ValueError("feature state was made with a different label delay")
        state = cls()
        state.last_timestamp_micros = data.get("last_timestamp_micros")  # type: ignore[assignment]
        cards: Mapping[str, list] = data["cards"]  # type: ignore[assignment]
        for card_id, (times, sums, squares, total, total_squares) in cards.items():
            history = _CardHistory()
            history.times, history.sums_before, history.squares_before = times, sums, squares
            history.total, history.total_squares = total, total_squares
            state._cards[card_id] = history
        merchants: Mapping[str, list] = data["merchants"]  # type: ignore[assignment]
        for merchant, rows in merchants.items():
            if legacy:
                state._merchants[merchant] = {day: [tx, 0, None] for day, tx, _ in rows}
            else:
                state._merchants[merchant] = {
                    day: [tx, len(ids), set(ids) if ids else None] for day, tx, ids in rows
                }
        return state

    def save(self, path: str | Path) -> Path:
        """Write the snapshot as gzip-compressed JSON, atomically (write then rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = json.dumps(self.to_dict(), separators=(",", ":")).encode()
        with (
            tempfile.NamedTemporaryFile(dir=path.parent, delete=False, suffix=".tmp") as handle,
            gzip.GzipFile(
                fileobj=handle, mode="wb", mtime=0, filename="", compresslevel=6
            ) as archive,
        ):
            archive.write(payload)
        os.replace(handle.name, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> OnlineFeatureState:
        """Read a snapshot written by :meth:`save`."""
        with gzip.open(path, "rb") as archive:
            return cls.from_dict(json.loads(archive.read()))


def _merchant_window_features(buckets: dict[int, list], day: int) -> list[float]:
    """Counts and fraud shares over the windows that end LABEL_DELAY_DAYS before ``day``."""
    vector: list[float] = []
    transactions = frauds = 0
    newest = day - LABEL_DELAY_DAYS - 1
    covered = 0
    for window in WINDOW_DAYS:
        for past_day in range(newest - covered, newest - window, -1):
            bucket = buckets.get(past_day)
            if bucket is not None:
                transactions += bucket[0]
                frauds += bucket[1]
        covered = window
        vector += (float(transactions), frauds / transactions if transactions else 0.0)
    return vector


def _forget_days_before(buckets: dict[int, list], oldest_day: int) -> None:
    for stale in [day for day in buckets if day < oldest_day]:
        del buckets[stale]
