"""The KS test's null calibrated for records that are not independent: a design effect per column.

**Why.** A window is consecutive records: the same merchants and cards recur in it, a merchant's
daily and weekly counts are shared by all its transactions of those days, and a busy day moves
many records at once. Such records carry less information than as many independent ones, so the
KS statistic of a stationary window is larger than the i.i.d. Kolmogorov distribution expects,
and its p-value too small (a false alarm more often than ``p_val``). Measured on the benchmark's
stationary traffic (``benchmarks/bench_monitor.py``, seed 42, five draws of the time-matched
reference rows): 3.7 % of the windows flagged, against 0.9 % for windows of the same hours drawn
at random from the same days; the excess came from the merchant counts and the card counts.

**The design effect.** For a column whose window is a cluster sample, the variance of the
window's empirical distribution is that of ``n_e / deff`` independent records (``n_e`` the test's
effective size, ``n * m / (n + m)``), where ``deff >= 1`` is the design effect. Under the null,
``D^2 * n_e / deff`` then follows the Kolmogorov distribution (mean ``pi^2 / 12``). The design
effect is estimated from the reference alone, which is stored in time order
(:func:`fraud_detection.training.export.draw_drift_reference`):

1. the reference is cut into ``blocks`` contiguous blocks of ``block_rows`` rows; each block is
   tested against the rest of the reference exactly as a live window is tested (the rest's rows
   time-matched to the block's hours), giving per column ``D^2 * n_e``;
2. the same number of rows, drawn at random from the reference with the block's stratum mix
   (independent rows of the same hours), is tested the same way, :data:`REPLICATES` times;
3. per column, the raw design effect is the ratio of the mean ``D^2 * n_e`` of the blocks to that
   of the random draws. Comparing with random draws, not with the Kolmogorov constant, keeps
   discrete columns (counts, whose KS statistic is smaller than a continuous column's) exact: an
   independent column has a ratio of about 1, whatever its distribution;
4. with ``B`` blocks, the ratio's excess over 1 is shrunk by ``B / (B + SHRINK_BLOCKS)`` (the
   ratio of a few blocks is noisy: about ``0.63 / sqrt(B)`` relative), floored at 1 (an
   independent column stays exactly alibi's test) and capped at :data:`MAX_DESIGN_EFFECT`.

**From a block to a window.** The reference is a thin sample of the traffic (e.g. 5,000 rows
over 21 days, when a live window is 1,000 records of a few hours), so a block and a window differ
in size. In the cluster-sampling model the excess is proportional to the size,
``deff(n_e) = 1 + rho * n_e`` (``1 + (m - 1) * rho`` with ``m`` records per cluster), so a window
of effective size ``n_e`` gets ``1 + (deff_block - 1) * n_e / n_e_block`` (capped). This is an
approximation: a block of a thin reference spans more time than a window, a reference as dense
as the traffic makes it over-correct (fewer alarms, capped), and matching the mean of
``D^2 * n_e`` under-states the tail when the dependence is a shift shared by a whole day. Its
outcome is measured with the benchmark on seeds it was not tuned on (the README's monitor
section).

**When not.** With fewer than :data:`MIN_BLOCKS` blocks of at least ``min_rows`` rows the
reference is not calibrated: every design effect is 1 (alibi's p-values, unchanged), and
:attr:`Calibration.reason` says why.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

#: Fewest blocks the design effects are estimated from; fewer: not calibrated.
MIN_BLOCKS = 8
#: Blocks aimed for when the reference allows (the block size is the reference's rows / this).
TARGET_BLOCKS = 20
#: The prior weight of "independent" (deff 1), in blocks: the raw excess is shrunk by B/(B+this).
SHRINK_BLOCKS = 2
#: Random draws per block for the independent baseline.
REPLICATES = 3
#: The largest design effect applied to a window.
MAX_DESIGN_EFFECT = 10.0

#: The reference rows to compare a sample with: ``(pool, sample, rng)``, both reference row
#: indices, give row indices taken from ``pool``, or None when the pool cannot supply them (the
#: detector's time matching).
Matcher = Callable[[np.ndarray, np.ndarray, np.random.Generator], "np.ndarray | None"]


@dataclass(frozen=True)
class Calibration:
    """The design effect of each tested column, estimated from a reference's blocks.

    Attributes:
        names: the tested columns, in order.
        block_design_effects: per column, the shrunk design effect at a block's size (>= 1).
        block_rows: rows per block.
        blocks: blocks tested (0: not calibrated).
        block_n_e: the blocks' mean effective size ``n * m / (n + m)``.
        reason: why the reference is not calibrated (empty when it is).
    """

    names: tuple[str, ...]
    block_design_effects: tuple[float, ...]
    block_rows: int
    blocks: int
    block_n_e: float
    reason: str = ""

    @property
    def calibrated(self) -> bool:
        """Whether design effects were estimated (else every one is 1)."""
        return not self.reason

    def design_effects(self, n_e: float) -> np.ndarray:
        """Per column, the design effect of a window of effective size ``n_e`` (1 to the cap)."""
        excess = np.asarray(self.block_design_effects, dtype=np.float64) - 1.0
        if not self.calibrated or self.block_n_e <= 0:
            return np.ones(len(self.names))
        return np.clip(1.0 + excess * (n_e / self.block_n_e), 1.0, MAX_DESIGN_EFFECT)

    def describe(self) -> dict[str, object]:
        """The calibration as JSON-ready values (for a log line or a result record)."""
        return {
            "calibrated": self.calibrated,
            "reason": self.reason,
            "blocks": self.blocks,
            "block_rows": self.block_rows,
            "design_effects": dict(
                zip(self.names, (round(d, 3) for d in self.block_design_effects), strict=True)
            ),
        }


def effective_size(n: int, m: int) -> float:
    """The two-sample KS test's effective size ``n * m / (n + m)``."""
    return n * m / (n + m)


def ks_statistics(
    reference: np.ndarray, sample: np.ndarray, *, reference_sorted: bool = False
) -> np.ndarray:
    """Per column, the two-sample KS statistic (the distance alibi-detect's ``KSDrift`` gives).

    ``reference_sorted``: each column of ``reference`` is already in ascending order (the
    columns independently), so only ``sample`` is sorted.
    """
    statistics = np.empty(reference.shape[1])
    for column in range(reference.shape[1]):
        a = reference[:, column] if reference_sorted else np.sort(reference[:, column])
        b = np.sort(sample[:, column])
        values = np.concatenate([a, b])
        cdf_a = np.searchsorted(a, values, side="right") / len(a)
        cdf_b = np.searchsorted(b, values, side="right") / len(b)
        statistics[column] = np.max(np.abs(cdf_a - cdf_b))
    return statistics


def corrected_p_values(
    statistics: Sequence[float], n_e: float, design_effects: Sequence[float]
) -> np.ndarray:
    """KS p-values with the effective size divided by each column's design effect.

    The asymptotic two-sample p-value as alibi-detect computes it (scipy's ``ks_2samp``,
    ``mode="asymp"``: the Kolmogorov distribution ``kstwo`` with ``round(n_e)`` samples), with
    ``round(n_e / deff)`` samples instead.
    """
    from scipy.stats import kstwo

    sizes = np.maximum(np.round(n_e / np.asarray(design_effects, dtype=np.float64)), 1.0)
    return np.clip(kstwo.sf(np.asarray(statistics, dtype=np.float64), sizes), 0.0, 1.0)


def not_calibrated(names: Sequence[str], block_rows: int, reason: str) -> Calibration:
    """A calibration that changes nothing (every design effect 1), and why."""
    return Calibration(tuple(names), (1.0,) * len(names), block_rows, 0, 0.0, reason)


def calibrate(
    columns: np.ndarray,
    names: Sequence[str],
    strata: np.ndarray,
    match: Matcher,
    min_rows: int,
    seed: int,
) -> Calibration:
    """Estimate each column's design effect from the reference's contiguous blocks.

    Args:
        columns: the reference's tested columns (rows x columns), rows in time order.
        names: the columns' names.
        strata: one stratum key per reference row (the time matching's), or all equal.
        match: picks the rows of a pool to compare a sample with (:data:`Matcher`).
        min_rows: the fewest rows of a block (and of its comparison rows).
        seed: seed of the random draws; the same reference and seed, the same calibration.
    """
    rows = columns.shape[0]
    block_rows = max(min_rows, rows // TARGET_BLOCKS)
    blocks = rows // block_rows
    if blocks < MIN_BLOCKS:
        return not_calibrated(
            names,
            block_rows,
            f"{rows} reference rows make {blocks} blocks of {block_rows}, fewer than "
            f"{MIN_BLOCKS}: the design effects cannot be estimated",
        )
    rng = np.random.default_rng(seed)
    everything = np.arange(rows)
    dependent, independent, sizes = [], [], []
    for block in range(blocks):
        sample = everything[block * block_rows : (block + 1) * block_rows]
        tested = _scaled_statistics(columns, sample, everything, match, rng, min_rows)
        if tested is None:
            continue
        dependent.append(tested[0])
        sizes.append(tested[1])
        keys, counts = np.unique(strata[sample], return_counts=True)
        for _ in range(REPLICATES):
            drawn = np.concatenate(
                [
                    rng.choice(np.flatnonzero(strata == key), count, replace=False)
                    for key, count in zip(keys, counts, strict=True)
                ]
            )
            baseline = _scaled_statistics(columns, drawn, everything, match, rng, min_rows)
            if baseline is not None:
                independent.append(baseline[0])
    if len(dependent) < MIN_BLOCKS or not independent:
        return not_calibrated(
            names,
            block_rows,
            f"{len(dependent)} of {blocks} blocks could be compared with the rest of the "
            f"reference, fewer than {MIN_BLOCKS}",
        )
    observed = np.mean(dependent, axis=0)
    expected = np.mean(independent, axis=0)
    raw = np.divide(observed, expected, out=np.ones_like(observed), where=expected > 0)
    weight = len(dependent) / (len(dependent) + SHRINK_BLOCKS)
    shrunk = np.clip(1.0 + (raw - 1.0) * weight, 1.0, MAX_DESIGN_EFFECT)
    return Calibration(
        tuple(names),
        tuple(float(d) for d in shrunk),
        block_rows,
        len(dependent),
        float(np.mean(sizes)),
    )


def _scaled_statistics(
    columns: np.ndarray,
    sample: np.ndarray,
    everything: np.ndarray,
    match: Matcher,
    rng: np.random.Generator,
    min_rows: int,
) -> tuple[np.ndarray, float] | None:
    """``D^2 * n_e`` per column of ``sample`` against the (matched) rest, and ``n_e``."""
    rest = np.setdiff1d(everything, sample, assume_unique=True)
    if len(rest) < min_rows:
        return None
    compared = match(rest, sample, rng)
    if compared is None:
        return None
    n_e = effective_size(len(sample), len(compared))
    statistics = ks_statistics(columns[compared], columns[sample])
    return statistics**2 * n_e, n_e
