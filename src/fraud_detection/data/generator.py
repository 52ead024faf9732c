"""Seeded synthetic card transactions with labelled fraud patterns and optional drift.

Every card has its own habits: a log-normal amount distribution, a daily transaction rate, a
day/night rhythm and a handful of preferred merchants (and so preferred categories). Fraud is
injected at exactly ``round(n_transactions * fraud_rate)`` rows through distinct patterns that
card-history features (amount against the card's habit, velocity, time since the previous
transaction, hour of day) can learn:

* ``card_testing`` - bursts of small amounts (about 1-5) on one card within minutes, mostly at
  night, at online merchants;
* ``amount_spike`` - a single amount 5-20 times the card's typical amount;
* ``compromised_merchant`` - a merchant whose transactions over a few days are fraudulent at an
  elevated rate, with amounts a few times the card's habit at any hour;
* ``new_merchant_online`` - only from ``drift_start_day`` on: mid-size online fraud at merchants
  never seen before.

From ``drift_start_day`` on, legitimate spending shifts as well: amounts rise 30-60 % per card,
night-time and online spending become more common.

All randomness comes from one :func:`numpy.random.default_rng` seeded by the configuration, and
the work is vectorised per pattern, so the same configuration always gives the same frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from fraud_detection.schema import (
    AMOUNT,
    CARD_ID,
    CATEGORY,
    LABEL,
    MERCHANT_ID,
    TIMESTAMP,
    TRANSACTION_ID,
    to_utc_timestamp,
)

#: Column order of a generated frame.
COLUMNS: tuple[str, ...] = (
    TRANSACTION_ID,
    CARD_ID,
    MERCHANT_ID,
    AMOUNT,
    TIMESTAMP,
    CATEGORY,
    LABEL,
)
#: Extra column of :func:`generate_with_patterns`: which pattern produced a row.
PATTERN = "fraud_pattern"
LEGIT = "legit"
CARD_TESTING = "card_testing"
AMOUNT_SPIKE = "amount_spike"
COMPROMISED_MERCHANT = "compromised_merchant"
NEW_MERCHANT_ONLINE = "new_merchant_online"
#: Pattern names indexed by their internal code; code 0 is legitimate spending.
PATTERNS: tuple[str, ...] = (
    LEGIT,
    CARD_TESTING,
    AMOUNT_SPIKE,
    COMPROMISED_MERCHANT,
    NEW_MERCHANT_ONLINE,
)

#: Merchant categories, their share of merchants and their typical amount relative to groceries.
CATEGORIES: tuple[str, ...] = (
    "grocery",
    "fuel",
    "restaurant",
    "online",
    "travel",
    "electronics",
    "entertainment",
    "health",
    "home",
    "apparel",
)
_CATEGORY_SHARE = np.array([0.18, 0.10, 0.16, 0.14, 0.05, 0.06, 0.08, 0.07, 0.08, 0.08])
_CATEGORY_AMOUNT = np.array([1.0, 1.1, 0.8, 1.2, 4.0, 3.0, 0.9, 1.3, 1.8, 1.4])
_ONLINE = CATEGORIES.index("online")
_SPIKE_CATEGORIES = (CATEGORIES.index("electronics"), CATEGORIES.index("travel"), _ONLINE)

#: Fraud share of each pattern before drift (testing, spike, compromised merchant).
_FRAUD_SHARES = (0.35, 0.40, 0.25)
#: After the drift day, the share of fraud that the new pattern takes.
_NEW_PATTERN_SHARE = 0.5

_US_PER_SECOND = 1_000_000
_US_PER_HOUR = 3_600 * _US_PER_SECOND
_US_PER_DAY = 24 * _US_PER_HOUR
_NIGHT_END_HOUR = 6.0
_PREFERRED_MERCHANTS = 8
_MAX_ENTITIES = 10_000_000
_MAX_TRANSACTIONS = 1_000_000_000
_ID_DIGITS = 6
_TX_ID_DIGITS = 10


@dataclass(frozen=True)
class GeneratorConfig:
    """What to generate. The same configuration always gives the same data.

    ``n_merchants`` defaults to ``max(50, n_cards // 4)`` (see :attr:`merchant_count`);
    ``start`` is the first instant of the data (UTC) and the data spans ``days`` days from it.
    """

    n_transactions: int = 100_000
    n_cards: int = 2_000
    n_merchants: int | None = None
    days: int = 30
    fraud_rate: float = 0.0017
    seed: int = 42
    drift_start_day: int | None = None
    start: str = "2026-01-01"

    def __post_init__(self) -> None:
        _check_int("n_transactions", self.n_transactions, 1, _MAX_TRANSACTIONS)
        _check_int("n_cards", self.n_cards, 1, _MAX_ENTITIES)
        if self.n_merchants is not None:
            _check_int("n_merchants", self.n_merchants, len(CATEGORIES), _MAX_ENTITIES)
        _check_int("days", self.days, 1, 3_660)
        _check_int("seed", self.seed, 0, None)
        _check_fraud_rate(self.fraud_rate)
        if self.drift_start_day is not None:
            _check_int("drift_start_day", self.drift_start_day, 0, None)
            if self.drift_start_day >= self.days:
                raise ValueError(
                    f"drift_start_day: must be before the end of the data, in [0, days={self.days})"
                    f", got {self.drift_start_day}"
                )
        _parse_start(self.start)

    @property
    def merchant_count(self) -> int:
        """Number of established merchants (new-pattern merchants come on top)."""
        return self.n_merchants if self.n_merchants is not None else max(50, self.n_cards // 4)

    @property
    def n_fraud(self) -> int:
        """Exact number of fraudulent rows generated."""
        return round(self.n_transactions * self.fraud_rate)

    @property
    def start_timestamp(self) -> pd.Timestamp:
        """``start`` as a UTC timestamp."""
        return _parse_start(self.start)


def _check_int(name: str, value: Any, low: int, high: int | None) -> None:
    """Raise ValueError naming ``name`` unless ``value`` is an int in ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{name}: must be an integer, got {value!r}")
    if value < low:
        raise ValueError(f"{name}: must be at least {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name}: must be at most {high}, got {value}")


def _check_fraud_rate(value: Any) -> None:
    """Raise ValueError unless the fraud rate is a finite number in ``[0, 0.5)``."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating | np.integer):
        raise ValueError(f"fraud_rate: must be a number, got {value!r}")
    if not math.isfinite(value) or not 0.0 <= value < 0.5:
        raise ValueError(f"fraud_rate: must be in [0, 0.5), got {value}")


def _parse_start(value: Any) -> pd.Timestamp:
    """Parse ``start``; a naive date is taken as UTC."""
    try:
        return to_utc_timestamp(value)
    except ValueError as exc:
        raise ValueError(f"start: not a date, got {value!r}") from exc


@dataclass(frozen=True)
class _Population:
    """Per-card habits and per-merchant attributes, drawn once per configuration."""

    log_median: np.ndarray  # card -> log of its typical amount
    log_sigma: np.ndarray  # card -> spread of its amounts
    night_share: np.ndarray  # card -> share of its spending at night
    peak_hour: np.ndarray  # card -> hour its daytime spending centres on
    hour_spread: np.ndarray  # card -> spread of its daytime hours
    drift_factor: np.ndarray  # card -> amount multiplier after the drift day
    preferred: np.ndarray  # card x slot -> preferred merchant
    legit_counts: np.ndarray  # card -> number of legitimate transactions
    merchant_category: np.ndarray  # merchant -> category (established, then new merchants)
    merchant_weight: np.ndarray  # established merchant -> popularity (sums to 1)
    n_established: int  # merchants below this index exist from day 0


@dataclass
class _Rows:
    """Columns of generated rows before they are ordered and formatted."""

    card: np.ndarray
    merchant: np.ndarray
    amount: np.ndarray
    offset_us: np.ndarray
    pattern: np.ndarray

    @classmethod
    def of(
        cls,
        card: np.ndarray,
        merchant: np.ndarray,
        amount: np.ndarray,
        offset_us: np.ndarray,
        pattern: int,
    ) -> _Rows:
        """Rows of one pattern, with the column dtypes the frame uses."""
        return cls(
            card.astype(np.int64),
            merchant.astype(np.int64),
            amount.astype(np.float64),
            offset_us.astype(np.int64),
            np.full(len(card), pattern, dtype=np.int8),
        )

    @classmethod
    def concat(cls, parts: list[_Rows]) -> _Rows:
        """Join row blocks in the given (deterministic) order."""
        return cls(
            *(
                np.concatenate([getattr(part, name) for part in parts])
                for name in ("card", "merchant", "amount", "offset_us", "pattern")
            )
        )


def generate_transactions(config: GeneratorConfig) -> pd.DataFrame:
    """Generate ``config.n_transactions`` labelled transactions in the canonical columns.

    Columns are :data:`COLUMNS` in order; rows are sorted by timestamp (ties keep a fixed
    order) and ``transaction_id`` (``tx-<seed>-<number>``) follows that order.
    """
    return generate_with_patterns(config).drop(columns=PATTERN)


def generate_with_patterns(config: GeneratorConfig) -> pd.DataFrame:
    """Like :func:`generate_transactions`, plus a :data:`PATTERN` column naming each row's source.

    The pattern is the answer key of the simulation: never use it as a feature.
    """
    rng = np.random.default_rng(config.seed)
    counts = _pattern_counts(config)
    population = _draw_population(config, counts[LEGIT], rng)
    rows = _Rows.concat(
        [
            _legit_rows(config, population, rng),
            _card_testing_rows(config, population, counts[CARD_TESTING], rng),
            _amount_spike_rows(config, population, counts[AMOUNT_SPIKE], rng),
            _compromised_merchant_rows(config, population, counts[COMPROMISED_MERCHANT], rng),
            _new_merchant_rows(config, population, counts[NEW_MERCHANT_ONLINE], rng),
        ]
    )
    return _to_frame(config, population, rows)


def _pattern_counts(config: GeneratorConfig) -> dict[str, int]:
    """Exact number of rows per pattern; they add up to ``n_transactions``."""
    n_fraud = config.n_fraud
    n_new = 0
    if config.drift_start_day is not None:
        post_share = (config.days - config.drift_start_day) / config.days
        n_new = round(n_fraud * _NEW_PATTERN_SHARE * post_share)
    old = _allocate(n_fraud - n_new, _FRAUD_SHARES)
    return {
        LEGIT: config.n_transactions - n_fraud,
        CARD_TESTING: old[0],
        AMOUNT_SPIKE: old[1],
        COMPROMISED_MERCHANT: old[2],
        NEW_MERCHANT_ONLINE: n_new,
    }


def _allocate(total: int, shares: tuple[float, ...]) -> list[int]:
    """Split ``total`` by ``shares`` with the largest-remainder method (deterministic)."""
    exact = np.asarray(shares) / sum(shares) * total
    counts = np.floor(exact).astype(int)
    remainder_order = np.argsort(-(exact - counts), kind="stable")
    counts[remainder_order[: total - counts.sum()]] += 1
    return [int(count) for count in counts]


def _draw_population(
    config: GeneratorConfig, n_legit: int, rng: np.random.Generator
) -> _Population:
    """Draw every card's habits and every merchant's category and popularity."""
    n_cards, n_merchants = config.n_cards, config.merchant_count
    n_new = _new_merchant_count(config)
    categories = np.concatenate(
        [
            np.arange(len(CATEGORIES)),  # every category has at least one merchant
            rng.choice(len(CATEGORIES), n_merchants - len(CATEGORIES), p=_CATEGORY_SHARE),
            np.full(n_new, _ONLINE),
        ]
    )
    merchant_weight = rng.pareto(1.5, n_merchants) + 1.0
    merchant_weight /= merchant_weight.sum()
    activity = rng.lognormal(0.0, 0.8, n_cards)
    legit_counts = rng.multinomial(n_legit, activity / activity.sum())
    return _Population(
        log_median=rng.normal(3.3, 0.5, n_cards),
        log_sigma=rng.uniform(0.25, 0.6, n_cards),
        night_share=rng.beta(1.2, 30.0, n_cards),
        peak_hour=rng.uniform(10.0, 19.0, n_cards),
        hour_spread=rng.uniform(2.0, 4.0, n_cards),
        drift_factor=rng.uniform(1.3, 1.6, n_cards),
        preferred=_preferred_merchants(legit_counts > 0, merchant_weight, rng),
        legit_counts=legit_counts,
        merchant_category=categories.astype(np.int64),
        merchant_weight=merchant_weight,
        n_established=n_merchants,
    )


def _preferred_merchants(
    active: np.ndarray, merchant_weight: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Each active card's favourite merchants, by popularity; inactive cards need none."""
    preferred = np.zeros((len(active), _PREFERRED_MERCHANTS), dtype=np.int64)
    shape = (int(active.sum()), _PREFERRED_MERCHANTS)
    preferred[active] = rng.choice(len(merchant_weight), shape, p=merchant_weight)
    return preferred


def _new_merchant_count(config: GeneratorConfig) -> int:
    """Merchants that appear only with the post-drift fraud pattern."""
    return 0 if config.drift_start_day is None else max(5, config.merchant_count // 50)


def _legit_rows(config: GeneratorConfig, pop: _Population, rng: np.random.Generator) -> _Rows:
    """Legitimate spending: each card follows its own amounts, hours and merchants."""
    card = np.repeat(np.arange(config.n_cards), pop.legit_counts)
    n = len(card)
    day = rng.integers(0, config.days, n)
    drifted = _after_drift(config, day)
    extra_night = np.where(drifted, 0.08, 0.0)
    hour = _hours(pop, card, extra_night, rng)
    merchant = _habitual_merchants(pop, card, rng)
    online_shift = drifted & (rng.random(n) < 0.2)
    merchant[online_shift] = _random_merchants(pop, _ONLINE, int(online_shift.sum()), rng)
    category = pop.merchant_category[merchant]
    log_amount = (
        pop.log_median[card]
        + np.log(_CATEGORY_AMOUNT[category])
        + pop.log_sigma[card] * rng.standard_normal(n)
    )
    amount = np.exp(log_amount) * np.where(drifted, pop.drift_factor[card], 1.0)
    return _Rows.of(card, merchant, amount, _offsets(day, hour), PATTERNS.index(LEGIT))


def _after_drift(config: GeneratorConfig, day: np.ndarray) -> np.ndarray:
    """Which rows fall on or after the drift day."""
    if config.drift_start_day is None:
        return np.zeros(len(day), dtype=bool)
    return day >= config.drift_start_day


def _hours(
    pop: _Population, card: np.ndarray, extra_night: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Fractional hour of day: mostly around the card's daytime peak, sometimes at night."""
    n = len(card)
    hour = rng.normal(pop.peak_hour[card], pop.hour_spread[card])
    outside = (hour < _NIGHT_END_HOUR) | (hour >= 24.0)
    hour[outside] = rng.uniform(_NIGHT_END_HOUR, 24.0, int(outside.sum()))
    night = rng.random(n) < pop.night_share[card] + extra_night
    hour[night] = rng.uniform(0.0, _NIGHT_END_HOUR, int(night.sum()))
    return hour


def _night_biased_hours(n: int, night_share: float, rng: np.random.Generator) -> np.ndarray:
    """Hours for fraud: at night with probability ``night_share``, otherwise any time of day."""
    hour = rng.uniform(0.0, 24.0, n)
    night = rng.random(n) < night_share
    hour[night] = rng.uniform(0.0, _NIGHT_END_HOUR, int(night.sum()))
    return hour


def _habitual_merchants(pop: _Population, card: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mostly one of the card's preferred merchants (the first ones most), sometimes any."""
    n = len(card)
    slot_weight = 1.0 / np.arange(1, _PREFERRED_MERCHANTS + 1)
    slot = rng.choice(_PREFERRED_MERCHANTS, n, p=slot_weight / slot_weight.sum())
    merchant = pop.preferred[card, slot]
    elsewhere = rng.random(n) < 0.15
    merchant[elsewhere] = rng.choice(pop.n_established, int(elsewhere.sum()), p=pop.merchant_weight)
    return merchant


def _random_merchants(
    pop: _Population, category: int | tuple[int, ...], n: int, rng: np.random.Generator
) -> np.ndarray:
    """Established merchants of the given categories, weighted by popularity."""
    established = pop.merchant_category[: pop.n_established]
    candidates = np.flatnonzero(np.isin(established, category))
    weight = pop.merchant_weight[candidates]
    return rng.choice(candidates, n, p=weight / weight.sum())


def _victims(pop: _Population, n: int, rng: np.random.Generator) -> np.ndarray:
    """Cards hit by fraud, in proportion to their legitimate activity."""
    weight = pop.legit_counts / pop.legit_counts.sum()
    return rng.choice(len(weight), n, p=weight)


def _offsets(day: np.ndarray, hour: np.ndarray) -> np.ndarray:
    """Microseconds since the start for a day index and a fractional hour."""
    within = np.minimum((hour * _US_PER_HOUR).astype(np.int64), _US_PER_DAY - 1)
    return day.astype(np.int64) * _US_PER_DAY + within


def _card_testing_rows(
    config: GeneratorConfig, pop: _Population, n: int, rng: np.random.Generator
) -> _Rows:
    """Bursts of 3-8 small amounts on one card at one online merchant within minutes."""
    sizes = _burst_sizes(n, rng)
    n_bursts = len(sizes)
    burst = np.repeat(np.arange(n_bursts), sizes)
    first = np.repeat(np.cumsum(sizes) - sizes, sizes)  # each row's first row of its burst
    gaps = rng.exponential(90.0, n) * _US_PER_SECOND + _US_PER_SECOND  # 1.5 min on average
    cumulative = np.cumsum(gaps)
    within = (cumulative - cumulative[first]).astype(np.int64)  # 0 at each burst's first row
    span = within[np.cumsum(sizes) - 1]
    day = rng.integers(0, config.days, n_bursts)
    start = _offsets(day, _night_biased_hours(n_bursts, 0.7, rng))
    start = np.minimum(start, config.days * _US_PER_DAY - 1 - span)  # stay inside the period
    card = _victims(pop, n_bursts, rng)[burst]
    merchant = _random_merchants(pop, _ONLINE, n_bursts, rng)[burst]
    amount = rng.uniform(1.0, 5.0, n)
    return _Rows.of(card, merchant, amount, start[burst] + within, PATTERNS.index(CARD_TESTING))


def _burst_sizes(n: int, rng: np.random.Generator) -> np.ndarray:
    """Burst sizes of 3-8 that add up to exactly ``n`` (the last one is cut short)."""
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    sizes = rng.integers(3, 9, n // 3 + 1)
    total = np.cumsum(sizes)
    keep = int(np.searchsorted(total, n)) + 1
    sizes = sizes[:keep].copy()
    sizes[-1] -= int(total[keep - 1]) - n
    return sizes


def _amount_spike_rows(
    config: GeneratorConfig, pop: _Population, n: int, rng: np.random.Generator
) -> _Rows:
    """Single purchases 5-20 times the card's typical amount, often at night."""
    card = _victims(pop, n, rng)
    amount = np.exp(pop.log_median[card]) * rng.uniform(5.0, 20.0, n)
    merchant = _random_merchants(pop, _SPIKE_CATEGORIES, n, rng)
    day = rng.integers(0, config.days, n)
    offset = _offsets(day, _night_biased_hours(n, 0.4, rng))
    return _Rows.of(card, merchant, amount, offset, PATTERNS.index(AMOUNT_SPIKE))


def _compromised_merchant_rows(
    config: GeneratorConfig, pop: _Population, n: int, rng: np.random.Generator
) -> _Rows:
    """Fraud concentrated at a few merchants, each over a window of 3-7 days.

    About 15 fraudulent rows per merchant, a large share of the transactions over its window of
    a merchant outside the busiest fifth; amounts run 2-6 times the card's habit, at any hour.
    """
    n_sites = max(1, round(n / 15)) if n else 0
    sites = _quiet_merchants(pop, n_sites, rng)
    length = np.minimum(rng.integers(3, 8, n_sites), config.days)
    first_day = rng.integers(0, config.days - length + 1)
    site = np.repeat(np.arange(n_sites), _allocate(n, (1.0,) * n_sites) if n_sites else [])
    day = first_day[site] + rng.integers(0, length[site])
    offset = _offsets(day, _night_biased_hours(n, 0.3, rng))
    card = _victims(pop, n, rng)
    amount = np.exp(pop.log_median[card]) * rng.uniform(2.0, 6.0, n)
    return _Rows.of(card, sites[site], amount, offset, PATTERNS.index(COMPROMISED_MERCHANT))


def _quiet_merchants(pop: _Population, n: int, rng: np.random.Generator) -> np.ndarray:
    """Distinct merchants (while there are enough) outside the busiest fifth."""
    weight = pop.merchant_weight
    candidates = np.flatnonzero(weight <= np.quantile(weight, 0.8))
    return rng.choice(candidates, n, replace=n > len(candidates))


def _new_merchant_rows(
    config: GeneratorConfig, pop: _Population, n: int, rng: np.random.Generator
) -> _Rows:
    """After the drift day only: mid-size online fraud at merchants never seen before."""
    if n == 0 or config.drift_start_day is None:
        return _Rows.of(*(np.empty(0),) * 4, PATTERNS.index(NEW_MERCHANT_ONLINE))
    n_new = len(pop.merchant_category) - pop.n_established
    merchant = pop.n_established + rng.integers(0, n_new, n)
    day = rng.integers(config.drift_start_day, config.days, n)
    offset = _offsets(day, _night_biased_hours(n, 0.3, rng))
    card = _victims(pop, n, rng)
    amount = rng.lognormal(math.log(150.0), 0.35, n)
    return _Rows.of(card, merchant, amount, offset, PATTERNS.index(NEW_MERCHANT_ONLINE))


def _to_frame(config: GeneratorConfig, pop: _Population, rows: _Rows) -> pd.DataFrame:
    """Order rows by time, give them ids and build the frame in canonical columns."""
    order = np.argsort(rows.offset_us, kind="stable")
    card, merchant = rows.card[order], rows.merchant[order]
    n = len(order)
    stamps_ns = config.start_timestamp.value + rows.offset_us[order] * 1_000
    frame = pd.DataFrame(
        {
            # The seed is part of the id, so data sets drawn with different seeds can be combined.
            TRANSACTION_ID: _format_ids(
                f"tx-{config.seed}-", np.arange(1, n + 1), _id_width(n, _TX_ID_DIGITS)
            ),
            CARD_ID: _entity_ids("card-", card, config.n_cards),
            MERCHANT_ID: _entity_ids("merchant-", merchant, len(pop.merchant_category)),
            AMOUNT: np.maximum(np.round(rows.amount[order], 2), 0.01),
            TIMESTAMP: pd.to_datetime(stamps_ns, unit="ns", utc=True),
            CATEGORY: np.array(CATEGORIES, dtype=object)[pop.merchant_category[merchant]],
            LABEL: (rows.pattern[order] != PATTERNS.index(LEGIT)).astype(np.int64),
            PATTERN: np.array(PATTERNS, dtype=object)[rows.pattern[order]],
        }
    )
    return frame


def _id_width(largest: int, min_digits: int) -> int:
    """Digits that fit every number up to ``largest``, at least ``min_digits``."""
    return max(min_digits, len(str(largest)))


def _entity_ids(prefix: str, index: np.ndarray, count: int) -> np.ndarray:
    """Ids of cards or merchants for row indices; the width depends on ``count`` only."""
    used, inverse = np.unique(index, return_inverse=True)
    return _format_ids(prefix, used, _id_width(count - 1, _ID_DIGITS))[inverse]


def _format_ids(prefix: str, numbers: np.ndarray, width: int) -> np.ndarray:
    """``prefix`` + zero-padded numbers as an object array of str, built without a Python loop."""
    powers = 10 ** np.arange(width - 1, -1, -1, dtype=np.int64)
    digits = (numbers.astype(np.int64)[:, None] // powers % 10 + ord("0")).astype(np.uint8)
    head = np.frombuffer(prefix.encode("ascii"), dtype=np.uint8)
    raw = np.hstack([np.broadcast_to(head, (len(numbers), len(head))), digits])
    text = np.ascontiguousarray(raw).view(f"S{raw.shape[1]}").ravel()
    return text.astype(str).astype(object)
