"""The model's performance on labelled outcomes: recall, precision and F1 per window of
transaction time, against the baseline its bundle recorded at training.

:class:`PerformanceTracker` takes parsed events (scored transactions from the mirror, labels
from the labels topic), joins them (:class:`~fraud_detection.monitoring.labels_join.LabelJoin`)
and counts, per model version and window ``[start, end)`` of transaction time (UTC-aligned;
one day by default), the transactions scored, flagged and labelled and the confusion matrix of
the labelled ones. :meth:`PerformanceTracker.reports` says which windows to report now, one
:class:`PerformanceResult` each (the ``fraud-monitoring`` contract, ``kind`` ``"performance"``):

* a window is reported once the stream's time has passed its end and it is complete: at least
  ``min_coverage`` of its transactions are labelled (revision 1);
* labels keep arriving (chargebacks take days): it is reported again, revision + 1, when the
  labels counted since the last report (new ones and corrections) reach ``update_step`` of its
  transactions (its coverage rose by the step, or as many labels changed), or its coverage
  reached 1.0 (never once per label);
* once the window ends ``horizon`` or more before the stream's time it is final: reported a last
  time if it was never reported (then ``complete`` is false) or changed since its last report,
  and forgotten. A later label of it is counted as expired.

A result with the same ``window_id`` and a higher ``revision`` supersedes the earlier ones.
Pure: no Kafka, no clock; the whole state is a JSON-able dict.

==================  ========================================================================
``window_id``       ``<model_version>:performance:<start ISO>``
``start``, ``end``  the window, ISO-8601 UTC
``scored``          transactions of this version mirrored in the window
``flagged``         of them, served as fraud
``labelled``        of them, with a label; ``coverage`` = labelled / scored
``complete``        ``coverage >= min_coverage``
``revision``        1, 2, ...
``threshold``       the deployed threshold (as the records carry it)
``tp`` ``fp``       the confusion matrix of the labelled transactions (flagged as served)
``fn`` ``tn``
``recall``          tp / (tp + fn), ``precision`` tp / (tp + fp), ``f1`` 2tp / (2tp + fp + fn);
``precision``       each null when its denominator is 0
``f1``
``baseline``        ``{"recall", "precision", "f1"}`` from the bundle's manifest, and the
                    test set's ``tp``, ``fp``, ``fn`` behind them (null when not recorded);
                    or null
``tolerance``       how far below the baseline is tolerated
``below_baseline``  complete, and recall or F1 more than ``tolerance`` below the baseline
``as_of``           the latest ``labelled_at`` counted, or null
==================  ========================================================================
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import orjson

from fraud_detection.bundle import BundleError, read_manifest
from fraud_detection.monitoring.labels_join import (
    CORRECTED,
    EXPIRED,
    MATCHED,
    LabelChange,
    LabelJoin,
    ScoredTransaction,
)
from fraud_detection.serving.mirror import iso_timestamp
from fraud_detection.streaming.labels import Label
from fraud_detection.training.gate import GateConfig

log = logging.getLogger(__name__)

KIND = "performance"
SCHEMA_VERSION = 1
MICROS_PER_SECOND = 1_000_000
DEFAULT_WINDOW_S = 86_400
DEFAULT_MIN_COVERAGE = 0.9
DEFAULT_UPDATE_STEP = 0.05
#: The deployment gate's tolerance: how far below the deployed model's recall and F1 a model may
#: fall; the same figure decides when a window is below the training baseline.
DEFAULT_TOLERANCE = GateConfig().tolerance
DEFAULT_HORIZON_DAYS = 30.0
BASELINE_METRICS: tuple[str, ...] = ("recall", "precision", "f1")
_EPSILON = 1e-12
_UNIT = "in (0, 1]"
#: Every key of a result's JSON object.
RESULT_FIELDS: tuple[str, ...] = (
    "as_of",
    "baseline",
    "below_baseline",
    "complete",
    "coverage",
    "end",
    "f1",
    "flagged",
    "fn",
    "fp",
    "kind",
    "labelled",
    "model_version",
    "precision",
    "recall",
    "revision",
    "schema_version",
    "scored",
    "start",
    "threshold",
    "tn",
    "tolerance",
    "tp",
    "window_id",
)


@dataclass(frozen=True)
class PerformanceConfig:
    """How windows are cut and when they are reported.

    Attributes:
        window_s: the window's length in seconds of transaction time (windows are aligned to
            the epoch, so a day's window is a UTC day).
        min_coverage: the share of a window's transactions that must be labelled for it to be
            complete.
        update_step: how much a reported window's coverage must rise before it is re-reported.
        tolerance: how far below the baseline recall or F1 may fall.
        horizon_s: how long, in transaction time, a window waits for labels.
        max_scores: scored transactions the join holds at most.
        max_labels: labels waiting for their transaction's score, at most.
    """

    window_s: int = DEFAULT_WINDOW_S
    min_coverage: float = DEFAULT_MIN_COVERAGE
    update_step: float = DEFAULT_UPDATE_STEP
    tolerance: float = DEFAULT_TOLERANCE
    horizon_s: float = DEFAULT_HORIZON_DAYS * 86_400
    max_scores: int = 1_000_000
    max_labels: int = 100_000

    def __post_init__(self) -> None:
        checks = (
            ("window_s", isinstance(self.window_s, int) and self.window_s >= 1, "an integer >= 1"),
            ("min_coverage", _finite(self.min_coverage) and 0 < self.min_coverage <= 1, _UNIT),
            ("update_step", _finite(self.update_step) and 0 < self.update_step <= 1, _UNIT),
            ("tolerance", _finite(self.tolerance) and self.tolerance >= 0, "a number >= 0"),
            ("horizon_s", _finite(self.horizon_s) and self.horizon_s > 0, "a number > 0"),
            ("max_scores", isinstance(self.max_scores, int) and self.max_scores >= 1, ">= 1"),
            ("max_labels", isinstance(self.max_labels, int) and self.max_labels >= 1, ">= 1"),
        )
        for name, ok, wanted in checks:
            if not ok:
                raise ValueError(f"{name}: must be {wanted}, got {getattr(self, name)!r}")

    @property
    def window_micros(self) -> int:
        """The window's length in microseconds."""
        return self.window_s * MICROS_PER_SECOND

    @property
    def horizon_micros(self) -> int:
        """The horizon in microseconds."""
        return max(int(self.horizon_s * MICROS_PER_SECOND), 1)


def _finite(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


# ----------------------------------------------------------------------------------- baselines
@dataclass(frozen=True)
class Baseline:
    """A model version's metrics at training, at its threshold (None: not recorded), and the
    test set's counts they come from (``tp``, ``fp``, ``fn``; None when the manifest has no
    confusion matrix): the baseline is an estimate too, and its counts say how precise."""

    recall: float | None
    precision: float | None
    f1: float | None
    tp: int | None = None
    fp: int | None = None
    fn: int | None = None

    def to_dict(self) -> dict[str, float | int | None]:
        """The JSON object."""
        return asdict(self)


def baseline_from_metrics(metrics: Mapping[str, Any]) -> Baseline | None:
    """The baseline in a manifest's ``metrics`` (None when it records none of them), with the
    counts of its ``confusion_matrix`` (``[[tn, fp], [fn, tp]]``) when it has a valid one."""
    values = {name: metrics.get(name) for name in BASELINE_METRICS}
    clean = {name: float(v) if _finite(v) else None for name, v in values.items()}
    if all(v is None for v in clean.values()):
        return None
    return Baseline(**clean, **_confusion_counts(metrics.get("confusion_matrix")))


def _confusion_counts(matrix: Any) -> dict[str, int]:
    """``tp``, ``fp``, ``fn`` of a ``[[tn, fp], [fn, tp]]`` matrix of counts ({} if it is not)."""
    try:
        (tn, fp), (fn, tp) = matrix
    except (TypeError, ValueError):
        return {}
    counts = (tn, fp, fn, tp)
    if not all(type(v) is int and v >= 0 for v in counts):
        return {}
    return {"tp": tp, "fp": fp, "fn": fn}


BaselineLookup = Callable[[str], "Baseline | None"]


class BundleBaselines:
    """Baselines by model version, read from the bundle's manifest through a locator
    (:class:`~fraud_detection.monitoring.reference.BundleLocator`, as the drift monitor uses).

    A version without a bundle (or whose manifest records no metrics) has no baseline; it is
    looked up again after ``retry_s`` seconds (the bundle may be promoted later).
    """

    def __init__(
        self,
        locator: Any,
        retry_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.locator = locator
        self.retry_s = retry_s
        self._clock = clock
        self._found: dict[str, Baseline] = {}
        self._missing: dict[str, float] = {}

    def __call__(self, model_version: str) -> Baseline | None:
        """The baseline of ``model_version``, or None."""
        found = self._found.get(model_version)
        if found is not None:
            return found
        retry_at = self._missing.get(model_version)
        if retry_at is not None and self._clock() < retry_at:
            return None
        baseline = None
        try:
            bundle = self.locator.locate(model_version)
            if bundle is not None:
                baseline = baseline_from_metrics(read_manifest(bundle).metrics or {})
        except (BundleError, OSError) as exc:
            log.warning("no baseline for model version %r: %s", model_version, exc)
        if baseline is None:
            self._missing[model_version] = self._clock() + self.retry_s
            if len(self._missing) > 1024:
                self._missing.pop(next(iter(self._missing)))
            return None
        self._missing.pop(model_version, None)
        self._found[model_version] = baseline
        return baseline


# ----------------------------------------------------------------------------------- results
def performance_window_id(model_version: str, start_micros: int) -> str:
    """The stable id of one version's window starting at ``start_micros``."""
    return f"{model_version}:{KIND}:{iso_timestamp(start_micros)}"


def rates(tp: int, fp: int, fn: int) -> tuple[float | None, float | None, float | None]:
    """Recall, precision and F1 of a confusion matrix; each None when undefined."""
    recall = tp / (tp + fn) if tp + fn else None
    precision = tp / (tp + fp) if tp + fp else None
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None
    return recall, precision, f1


@dataclass(frozen=True)
class PerformanceResult:
    """One report of one version's window (see the module docstring for each field)."""

    window_id: str
    model_version: str
    start: str
    end: str
    scored: int
    flagged: int
    labelled: int
    coverage: float
    complete: bool
    revision: int
    threshold: float | None
    tp: int
    fp: int
    fn: int
    tn: int
    recall: float | None
    precision: float | None
    f1: float | None
    baseline: Baseline | None
    tolerance: float
    below_baseline: bool
    as_of: str | None

    @property
    def kind(self) -> str:
        """The result's kind: ``"performance"``."""
        return KIND

    def to_dict(self) -> dict[str, Any]:
        """The contract's JSON object."""
        body = {f.name: getattr(self, f.name) for f in fields(self)}
        body["baseline"] = self.baseline.to_dict() if self.baseline is not None else None
        return {"kind": KIND, "schema_version": SCHEMA_VERSION, **body}

    def to_json(self) -> bytes:
        """The JSON object, keys sorted: the same result always gives the same bytes."""
        return orjson.dumps(self.to_dict(), option=orjson.OPT_SORT_KEYS)


@dataclass
class WindowCounts:
    """The counts of one version's window so far, and what was last reported of it."""

    model_version: str
    start_micros: int
    scored: int = 0
    flagged: int = 0
    labelled: int = 0
    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0
    threshold: float | None = None
    as_of_micros: int | None = None
    revision: int = 0
    reported_coverage: float = 0.0
    changed: bool = False
    label_changes: int = 0

    @property
    def coverage(self) -> float:
        """Labelled / scored (0 when nothing was scored)."""
        return self.labelled / self.scored if self.scored else 0.0

    def count(self, flagged: bool, label: int, sign: int) -> None:
        """Add ``sign`` to the cell of the confusion matrix of (flagged, label)."""
        cell = ("tp" if label else "fp") if flagged else ("fn" if label else "tn")
        setattr(self, cell, getattr(self, cell) + sign)


def _result(
    counts: WindowCounts,
    window_micros: int,
    config: PerformanceConfig,
    baseline: Baseline | None,
) -> PerformanceResult:
    recall, precision, f1 = rates(counts.tp, counts.fp, counts.fn)
    coverage = counts.coverage
    complete = coverage >= config.min_coverage - _EPSILON
    tolerance = config.tolerance
    below = False
    if complete and baseline is not None:
        below = any(
            value is not None and reference is not None and value < reference - tolerance
            for value, reference in ((recall, baseline.recall), (f1, baseline.f1))
        )
    return PerformanceResult(
        window_id=performance_window_id(counts.model_version, counts.start_micros),
        model_version=counts.model_version,
        start=iso_timestamp(counts.start_micros),
        end=iso_timestamp(counts.start_micros + window_micros),
        scored=counts.scored,
        flagged=counts.flagged,
        labelled=counts.labelled,
        coverage=coverage,
        complete=complete,
        revision=counts.revision,
        threshold=counts.threshold,
        tp=counts.tp,
        fp=counts.fp,
        fn=counts.fn,
        tn=counts.tn,
        recall=recall,
        precision=precision,
        f1=f1,
        baseline=baseline,
        tolerance=tolerance,
        below_baseline=below,
        as_of=iso_timestamp(counts.as_of_micros) if counts.as_of_micros is not None else None,
    )


# ----------------------------------------------------------------------------------- tracker
@dataclass
class TrackerStats:
    """Reports made (persisted with the state)."""

    reports: int = 0
    final_reports: int = 0


class PerformanceTracker:
    """The join and the windows; see the module docstring.

    Args:
        config: the settings.
        join: the join to continue (a new one by default).
    """

    def __init__(self, config: PerformanceConfig, join: LabelJoin | None = None) -> None:
        self.config = config
        self.join = join or LabelJoin(
            config.window_micros, config.horizon_micros, config.max_scores, config.max_labels
        )
        if self.join.bucket_micros != config.window_micros:
            raise ValueError(
                f"window_s: the state's windows are {self.join.bucket_micros // 1_000_000} s, "
                f"not {config.window_s} s"
            )
        self.windows: dict[tuple[str, int], WindowCounts] = {}
        self.stats = TrackerStats()

    def on_score(self, scored: ScoredTransaction) -> bool:
        """Count a scored transaction in its window; False when the join did not accept it."""
        accepted, change = self.join.add_score(scored)
        if not accepted:
            return False
        start = self.join.bucket_start(scored.time_micros)
        key = (scored.model_version, start)
        counts = self.windows.get(key)
        if counts is None:
            counts = self.windows[key] = WindowCounts(scored.model_version, start)
        counts.scored += 1
        counts.flagged += int(scored.flagged)
        counts.threshold = scored.threshold
        counts.changed = True
        if change is not None:
            self._apply(change)
        return True

    def on_label(self, label: Label) -> str:
        """Join a label and count it; return what the join did with it
        (:data:`~fraud_detection.monitoring.labels_join.MATCHED`, ``CORRECTED``, ``DUPLICATE``,
        ``PENDING`` or ``EXPIRED``)."""
        outcome, change = self.join.add_label(label)
        if change is not None and not self._apply(change):
            return EXPIRED
        return outcome

    def _apply(self, change: LabelChange) -> bool:
        entry = change.entry
        key = (entry.model_version, self.join.bucket_start(entry.time_micros))
        counts = self.windows.get(key)
        if counts is None:  # its window is final already (cannot happen with aligned buckets)
            self.join.stats.expired += 1
            self.join.stats.matched -= change.previous is None
            self.join.stats.corrected -= change.previous is not None
            return False
        if change.previous is None:
            counts.labelled += 1
        else:
            counts.count(entry.flagged, change.previous, -1)
        counts.count(entry.flagged, change.label, +1)
        if counts.as_of_micros is None or change.labelled_at_micros > counts.as_of_micros:
            counts.as_of_micros = change.labelled_at_micros
        counts.changed = True
        counts.label_changes += 1
        return True

    def reports(self, baselines: BaselineLookup) -> list[PerformanceResult]:
        """The windows to report now (each with its new revision), final ones forgotten."""
        config = self.config
        window = config.window_micros
        self.join.expire()
        clock, cutoff = self.join.clock_micros, self.join.cutoff_micros
        due: list[tuple[WindowCounts, bool, bool]] = []  # (counts, report it, final)
        for (_, start), counts in self.windows.items():
            end = start + window
            if cutoff is not None and end <= cutoff:
                due.append((counts, counts.revision == 0 or counts.changed, True))
            elif clock is None or clock < end:
                continue  # still open in transaction time
            elif counts.revision == 0:
                if counts.coverage >= config.min_coverage - _EPSILON:
                    due.append((counts, True, False))
            elif counts.changed and (
                counts.label_changes >= config.update_step * counts.scored - _EPSILON
                or (counts.coverage >= 1.0 > counts.reported_coverage)
            ):
                due.append((counts, True, False))
        results = []
        for counts, report, final in sorted(
            due, key=lambda d: (d[0].start_micros, d[0].model_version)
        ):
            if report:
                counts.revision += 1
                counts.reported_coverage = counts.coverage
                counts.changed = False
                counts.label_changes = 0
                results.append(_result(counts, window, config, baselines(counts.model_version)))
                self.stats.reports += 1
                self.stats.final_reports += final
            if final:
                del self.windows[(counts.model_version, counts.start_micros)]
        return results

    # ------------------------------------------------------------------------------- state
    def to_state(self) -> dict[str, Any]:
        """The whole tracker as a JSON-able dict."""
        return {
            "window_s": self.config.window_s,
            "join": self.join.to_state(),
            "windows": [asdict(counts) for counts in self.windows.values()],
            "stats": asdict(self.stats),
        }

    @classmethod
    def from_state(cls, config: PerformanceConfig, state: Mapping[str, Any]) -> PerformanceTracker:
        """A tracker from :meth:`to_state`'s dict and the settings given now.

        Raises:
            ValueError: the state is malformed, or its windows have another length.
        """
        if state.get("window_s") != config.window_s:
            raise ValueError(
                f"window_s: the state's windows are {state.get('window_s')!r} s, not "
                f"{config.window_s} s (remove the state file to start over)"
            )
        join = LabelJoin.from_state(
            state["join"], config.horizon_micros, config.max_scores, config.max_labels
        )
        tracker = cls(config, join)
        try:
            for item in state["windows"]:
                counts = WindowCounts(**item)
                tracker.windows[(counts.model_version, counts.start_micros)] = counts
            tracker.stats = TrackerStats(**state.get("stats", {}))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"windows state: malformed ({exc})") from None
        return tracker


__all__ = [
    "CORRECTED",
    "DEFAULT_TOLERANCE",
    "KIND",
    "MATCHED",
    "RESULT_FIELDS",
    "Baseline",
    "BundleBaselines",
    "PerformanceConfig",
    "PerformanceResult",
    "PerformanceTracker",
    "WindowCounts",
    "baseline_from_metrics",
    "performance_window_id",
    "rates",
]
