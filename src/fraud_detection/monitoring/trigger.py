"""The retraining policy: monitoring results in, a decision to retrain (with its reason) out.

Pure: no I/O and no clock of its own. Time is the stream's time, the latest ``end`` of the
results seen, so a replay of past traffic decides exactly as the live traffic did. The shell
that reads the results and starts runs is :mod:`fraud_detection.monitoring.trigger_runner`.

Inputs are the ``fraud-monitoring`` records (:func:`parse_result`): feature-drift results
(``kind: "feature_drift"``, :mod:`fraud_detection.monitoring.results`) and performance results
(``kind: "performance"``: recall, precision and F1 of a window of labelled transactions against
the bundle's baseline; a later ``revision`` of the same ``window_id`` supersedes an earlier one).
Other kinds (the trigger's own ``retrain`` events among them) are not results and are ignored.

Only the results of the served model version count. Whenever the served version changes (a
new model was promoted, or rolled back), the history starts again. The rules, checked after each
result (:func:`decide`):

* **drift**: at least ``drift_k`` of the last ``drift_m`` *tested* drift windows found drift
  (a window with too few records is not tested and does not count either way), and, with
  ``drift_wait_days``, the drift has lasted that long (stream time since the first drifting
  window of the episode);
* **performance**: at least ``perf_k`` of the last ``perf_m`` *complete* performance windows are
  below the baseline minus the tolerance (windows still waiting for labels do not count), and
  the drop is beyond chance: pooled over those windows, the upper end of the ``confidence``
  interval of recall (Wilson), or of F1 (from the upper ends of recall and precision), minus
  the baseline lies below minus the tolerance; when the bundle records its test set's counts,
  the baseline's own interval widens that of the difference (Newcombe's method);
* **schedule**: the served model's training data ends more than ``max_model_age_days`` before
  the stream's time (the monthly retraining).

A rule that holds fires a run, unless a run is in flight or one started less than
``cool_down_days`` of stream time ago: then the decision is *suppressed* (and says by what).
Either way the decision carries a short reason, e.g. ``drift: 3 of the last 5 windows
(amt_deviation, log_amount)``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

DRIFT_KIND = "feature_drift"
PERFORMANCE_KIND = "performance"
#: The rules, in the order their reasons are given.
RULES: tuple[str, ...] = ("performance", "drift", "schedule")
#: What may suppress a decision.
SUPPRESSIONS: tuple[str, ...] = ("in_flight", "cool_down")
#: Why a record is not a usable result (:attr:`ResultRecordError.reason`).
BAD_REASONS: tuple[str, ...] = ("not_json", "not_an_object", "missing_field", "bad_field")
#: The performance metrics a reason names when they are below the baseline minus the tolerance.
PERFORMANCE_METRICS: tuple[str, ...] = ("recall", "f1")
#: Drifted columns named in a reason, at most (then ``+N more``).
MAX_NAMED_COLUMNS = 4
#: Performance windows still waiting for labels kept per model version, at most.
MAX_OPEN_WINDOWS = 64


class ResultRecordError(ValueError):
    """A record that is not a usable result; ``reason`` is one of :data:`BAD_REASONS`."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


# ------------------------------------------------------------------------------ results
@dataclass(frozen=True)
class DriftResult:
    """The fields of a feature-drift result the policy uses."""

    window_id: str
    model_version: str
    start: datetime
    end: datetime
    tested: bool
    is_drift: bool
    drifted: tuple[str, ...] = ()


@dataclass(frozen=True)
class PerformanceResult:
    """The fields of a performance result the policy uses.

    ``baseline`` holds the bundle's ``recall``, ``precision`` and ``f1`` (empty when the bundle
    has none); metrics are None when the window could not compute them.
    """

    window_id: str
    model_version: str
    start: datetime
    end: datetime
    complete: bool
    revision: int
    below_baseline: bool
    recall: float | None = None
    precision: float | None = None
    f1: float | None = None
    baseline: Mapping[str, float] = field(default_factory=dict)
    tolerance: float | None = None
    tp: int = 0
    fp: int = 0
    fn: int = 0


Result = DriftResult | PerformanceResult


def _field(record: Mapping[str, Any], name: str) -> Any:
    if name not in record:
        raise ResultRecordError("missing_field", f"{name}: missing")
    return record[name]


def _text(record: Mapping[str, Any], name: str) -> str:
    value = _field(record, name)
    if not isinstance(value, str) or not value:
        raise ResultRecordError("bad_field", f"{name}: must be a non-empty string, got {value!r}")
    return value


def _flag(record: Mapping[str, Any], name: str) -> bool:
    value = _field(record, name)
    if not isinstance(value, bool):
        raise ResultRecordError("bad_field", f"{name}: must be true or false, got {value!r}")
    return value


def _time(record: Mapping[str, Any], name: str) -> datetime:
    value = _text(record, name)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ResultRecordError(
            "bad_field", f"{name}: must be an ISO-8601 time, got {value!r}"
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _number(value: Any, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ResultRecordError("bad_field", f"{name}: must be a finite number, got {value!r}")
    return float(value)


def parse_result(data: bytes | str | Mapping[str, Any]) -> Result | None:
    """A ``fraud-monitoring`` record as a result; None for a record of another kind.

    Raises:
        ResultRecordError: not JSON, not an object, or a field missing or malformed (the message
            names the field and the reason).
    """
    if isinstance(data, bytes | str):
        try:
            data = json.loads(data)
        except ValueError as exc:
            raise ResultRecordError("not_json", f"not JSON ({exc})") from None
    if not isinstance(data, Mapping):
        raise ResultRecordError("not_an_object", f"not a JSON object: {type(data).__name__}")
    kind = data.get("kind")
    if kind == DRIFT_KIND:
        return _drift(data)
    if kind == PERFORMANCE_KIND:
        return _performance(data)
    return None


def _drift(record: Mapping[str, Any]) -> DriftResult:
    drifted = record.get("drifted") or []
    if not isinstance(drifted, list) or not all(isinstance(name, str) for name in drifted):
        raise ResultRecordError("bad_field", f"drifted: must be a list of names, got {drifted!r}")
    return DriftResult(
        window_id=_text(record, "window_id"),
        model_version=_text(record, "model_version"),
        start=_time(record, "start"),
        end=_time(record, "end"),
        tested=_flag(record, "tested"),
        is_drift=_flag(record, "is_drift"),
        drifted=tuple(drifted),
    )


def _performance(record: Mapping[str, Any]) -> PerformanceResult:
    revision = record.get("revision", 0)
    if isinstance(revision, bool) or not isinstance(revision, int):
        raise ResultRecordError("bad_field", f"revision: must be an integer, got {revision!r}")
    raw_baseline = record.get("baseline")
    if raw_baseline is not None and not isinstance(raw_baseline, Mapping):
        raise ResultRecordError(
            "bad_field", f"baseline: must be an object or null, got {raw_baseline!r}"
        )
    baseline = {
        name: number
        for name, value in (raw_baseline or {}).items()
        if (number := _number(value, f"baseline.{name}")) is not None
    }
    return PerformanceResult(
        window_id=_text(record, "window_id"),
        model_version=_text(record, "model_version"),
        start=_time(record, "start"),
        end=_time(record, "end"),
        complete=_flag(record, "complete"),
        revision=revision,
        below_baseline=_flag(record, "below_baseline"),
        recall=_number(record.get("recall"), "recall"),
        precision=_number(record.get("precision"), "precision"),
        f1=_number(record.get("f1"), "f1"),
        baseline=baseline,
        tolerance=_number(record.get("tolerance"), "tolerance"),
        tp=_count(record, "tp"),
        fp=_count(record, "fp"),
        fn=_count(record, "fn"),
    )


def _count(record: Mapping[str, Any], name: str) -> int:
    """A non-negative count of the record (0 when absent)."""
    value = record.get(name, 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ResultRecordError("bad_field", f"{name}: must be a count >= 0, got {value!r}")
    return value


# ------------------------------------------------------------------------------ the policy
@dataclass(frozen=True)
class TriggerConfig:
    """The policy's settings.

    ``perf_k`` of ``perf_m`` (2 of 3) for performance: a window's recall rests on few frauds
    (at 0.17 % fraud a day of 10,000 transactions holds about 17, so recall moves by about
    0.1 between equally good days), hence one window below the baseline is often chance, and a
    single-window rule would retrain on noise. Two of the last three reacts within two or
    three windows of a real drop (labels already arrive days late, so reacting to the first
    window gains little), and one noisy good window does not hide a real drop.

    ``drift_k`` of ``drift_m`` (3 of 5): a drift window is flagged by chance in about 4 % of
    i.i.d. windows; three of five is then rare by chance (≈ 0.06 % of positions), while a
    shift that lasts fires within three windows.

    ``drift_wait_days`` (0: fire at once): a run started the moment inputs drift trains on
    labels of the traffic before the drift (labels arrive days late), so it cannot learn what
    changed, and its drift reference (drawn from its test days) still describes the old
    traffic. Drifted traffic reaches a run's test days once the drift has lasted the label
    delay, and its training days once it has lasted the label delay plus the test days plus
    the split's gap: wait that long for a run that learns the new traffic. The performance
    rule still fires meanwhile if the model's results fall.

    ``confidence`` (0.95): even then, a day holds so few frauds that two low days in three
    happen by chance every few weeks; the rule also asks that the windows' pooled recall or F1
    be below the baseline minus the tolerance beyond chance, so a retraining on performance
    needs evidence, not a point estimate. The baseline is an estimate too (a test week's few
    hundred frauds, or fewer), so when the bundle records the test set's counts the chance
    counts on both sides: the upper end of Newcombe's interval for the difference (live minus
    baseline; Wilson intervals on each side, added in quadrature) must be below minus the
    tolerance.
    """

    drift_k: int = 3
    drift_m: int = 5
    perf_k: int = 2
    perf_m: int = 3
    confidence: float = 0.95
    drift_wait_days: float = 0.0
    max_model_age_days: float = 30.0
    cool_down_days: float = 7.0

    def __post_init__(self) -> None:
        for name in ("drift_k", "drift_m", "perf_k", "perf_m"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be at least 1, got {getattr(self, name)}")
        if self.drift_k > self.drift_m:
            raise ValueError(
                f"drift_k: must be at most drift_m ({self.drift_m}), got {self.drift_k}"
            )
        if self.perf_k > self.perf_m:
            raise ValueError(f"perf_k: must be at most perf_m ({self.perf_m}), got {self.perf_k}")
        if not 0 < self.confidence < 1:
            raise ValueError(f"confidence: must be in (0, 1), got {self.confidence}")
        for name in ("max_model_age_days", "cool_down_days", "drift_wait_days"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name}: must be a finite number >= 0, got {value}")

    @property
    def max_model_age(self) -> timedelta:
        """The schedule rule's age limit."""
        return timedelta(days=self.max_model_age_days)

    @property
    def cool_down(self) -> timedelta:
        """Stream time after a run started during which no other run starts."""
        return timedelta(days=self.cool_down_days)


@dataclass(frozen=True)
class ServedModel:
    """The model version being served and when its training data ends (None: unknown)."""

    version: str
    data_end: datetime | None = None


@dataclass(frozen=True)
class InFlight:
    """A run that was started and has not finished."""

    name: str
    reason: str
    started_at: datetime
    model_version: str


@dataclass(frozen=True)
class TriggerState:
    """What the policy remembers between results (make a new one with :func:`decide`).

    Attributes:
        model: the served model whose results count; None before the first result.
        retired: versions served before (their late results do not switch back).
        drift: the last ``drift_m`` tested drift windows of ``model``, oldest first, one per
            window id.
        performance: the latest revision of each recent performance window of ``model``,
            ordered by window start.
        clock: the stream's time: the latest result ``end`` seen.
        drift_since: the start of the first drifting window of the drift episode under way
            (the drift rule's windows hold since then), or None.
        in_flight: the run in flight, if any.
        last_started: stream time at which the last run started.
    """

    model: ServedModel | None = None
    retired: frozenset[str] = frozenset()
    drift: tuple[DriftResult, ...] = ()
    performance: tuple[PerformanceResult, ...] = ()
    clock: datetime | None = None
    drift_since: datetime | None = None
    in_flight: InFlight | None = None
    last_started: datetime | None = None


@dataclass(frozen=True)
class Decision:
    """The outcome of a rule that holds: a run to start, or one suppressed (and by what).

    ``rules`` are the rules that hold (in :data:`RULES` order); ``reason`` joins their reasons
    with ``"; "``.
    """

    rules: tuple[str, ...]
    reason: str
    at: datetime
    model_version: str
    suppressed_by: str | None = None

    @property
    def fired(self) -> bool:
        """Whether a run should start."""
        return self.suppressed_by is None


def is_new_version(state: TriggerState, version: str) -> bool:
    """Whether a result of ``version`` would switch the policy to a version not served before."""
    return (state.model is None or state.model.version != version) and version not in state.retired


def switch_model(state: TriggerState, model: ServedModel) -> TriggerState:
    """Serve ``model``: a different version starts the history again; the same one updates its
    ``data_end``."""
    if state.model is not None and state.model.version == model.version:
        return state if state.model == model else replace(state, model=model)
    retired = state.retired | {state.model.version} if state.model is not None else state.retired
    return replace(
        state,
        model=model,
        retired=retired - {model.version},
        drift=(),
        performance=(),
        drift_since=None,
    )


def decide(
    state: TriggerState,
    result: Result,
    config: TriggerConfig | None = None,
    served: ServedModel | None = None,
) -> tuple[TriggerState, Decision | None]:
    """Take one result into the state and check the rules; the new state and the decision.

    ``served`` is the served model when the caller knows it (a registry's current version):
    it switches the history when it differs. Without it, the served version follows the results:
    a result of a version never served before switches to it, a late result of a retired one is
    ignored. Results of another version only move the stream's time.
    """
    config = config or TriggerConfig()
    if served is not None:
        state = switch_model(state, served)
    elif is_new_version(state, result.model_version):
        state = switch_model(state, ServedModel(result.model_version))
    clock = result.end if state.clock is None else max(state.clock, result.end)
    state = replace(state, clock=clock)
    assert state.model is not None  # switched above
    if result.model_version == state.model.version:
        state = _remember(state, result, config)
    return state, _check(state, config)


def _remember(state: TriggerState, result: Result, config: TriggerConfig) -> TriggerState:
    if isinstance(result, DriftResult):
        if not result.tested:
            return state
        kept = [w for w in state.drift if w.window_id != result.window_id]
        if len(kept) < len(state.drift):  # a duplicate: replaced where it was
            kept = [result if w.window_id == result.window_id else w for w in state.drift]
        else:
            kept.append(result)
        recent = tuple(kept[-config.drift_m :])
        drifting = [w.start for w in recent if w.is_drift]
        since = state.drift_since
        if len(drifting) < config.drift_k:
            since = None
        elif since is None:
            since = min(drifting)
        return replace(state, drift=recent, drift_since=since)
    windows = {w.window_id: w for w in state.performance}
    known = windows.get(result.window_id)
    if known is not None and known.revision >= result.revision:
        return state  # a duplicate or a stale revision
    windows[result.window_id] = result
    ordered = sorted(windows.values(), key=lambda w: (w.start, w.window_id))
    # Keep the last perf_m complete windows, and the open ones after the oldest of them (an
    # open window before it would not be among the last perf_m once complete).
    complete = [w for w in ordered if w.complete][-config.perf_m :]
    floor = complete[0].start if len(complete) == config.perf_m else None
    keep = {w.window_id for w in complete}
    open_windows = [w for w in ordered if not w.complete and (floor is None or w.start >= floor)]
    keep.update(w.window_id for w in open_windows[-MAX_OPEN_WINDOWS:])
    kept = [w for w in ordered if w.window_id in keep]
    return replace(state, performance=tuple(kept))


def _check(state: TriggerState, config: TriggerConfig) -> Decision | None:
    assert state.model is not None and state.clock is not None
    reasons = {
        "performance": performance_reason(state.performance, config),
        "drift": drift_reason(state.drift, config, state.drift_since, state.clock),
        "schedule": schedule_reason(state.model, state.clock, config),
    }
    held = tuple(rule for rule in RULES if reasons[rule] is not None)
    if not held:
        return None
    suppressed_by = None
    if state.in_flight is not None:
        suppressed_by = "in_flight"
    elif state.last_started is not None and state.clock < state.last_started + config.cool_down:
        suppressed_by = "cool_down"
    return Decision(
        rules=held,
        reason="; ".join(str(reasons[rule]) for rule in held),
        at=state.clock,
        model_version=state.model.version,
        suppressed_by=suppressed_by,
    )


def drift_reason(
    windows: tuple[DriftResult, ...],
    config: TriggerConfig,
    since: datetime | None = None,
    now: datetime | None = None,
) -> str | None:
    """``drift: 3 of the last 5 windows (amt_deviation, log_amount)`` when the rule holds
    (with ``drift_wait_days``, ``... since <time>`` once the drift has lasted that long)."""
    recent = windows[-config.drift_m :]
    drifting = [w for w in recent if w.is_drift]
    if len(drifting) < config.drift_k:
        return None
    lasted = ""
    if config.drift_wait_days > 0:
        if since is None or now is None or now - since < timedelta(days=config.drift_wait_days):
            return None
        lasted = f" since {since.strftime('%Y-%m-%d %H:%M')}"
    columns = sorted({name for w in drifting for name in w.drifted})
    named = columns[:MAX_NAMED_COLUMNS]
    if len(columns) > len(named):
        named.append(f"+{len(columns) - len(named)} more")
    suffix = f" ({', '.join(named)})" if named else ""
    return f"drift: {len(drifting)} of the last {len(recent)} windows{suffix}{lasted}"


def performance_reason(windows: tuple[PerformanceResult, ...], config: TriggerConfig) -> str | None:
    """``performance: recall 0.61 (at most 0.68) < baseline 0.80 - 0.05 over the last 3
    windows (2 below, 150 frauds)`` when the rule holds (see the module docstring)."""
    recent = [w for w in windows if w.complete][-config.perf_m :]
    below = [w for w in recent if w.below_baseline]
    if len(below) < config.perf_k:
        return None
    latest = recent[-1]
    tolerance = latest.tolerance or 0.0
    pooled = pooled_performance(recent, config.confidence)
    lows = baseline_lower_bounds(latest.baseline, config.confidence)
    parts = []
    for name in PERFORMANCE_METRICS:
        value, high = pooled[name]
        baseline = latest.baseline.get(name)
        if value is None or baseline is None:
            continue
        # Newcombe's interval for a difference: both ends' uncertainties, added in quadrature.
        margin = math.hypot(high - value, baseline - lows.get(name, baseline))
        if value + margin < baseline - tolerance:
            parts.append(
                f"{name} {value:.2f} (at most {value + margin:.2f}) < baseline {baseline:.2f} - "
                f"{tolerance:.2f}"
            )
    if not parts:
        return None
    frauds = sum(w.tp + w.fn for w in recent)
    return (
        f"performance: {', '.join(parts)} over the last {len(recent)} windows "
        f"({len(below)} below, {frauds} frauds)"
    )


def pooled_performance(
    windows: list[PerformanceResult], confidence: float
) -> dict[str, tuple[float | None, float]]:
    """Recall and F1 of the windows' pooled counts, each with the upper end of its
    ``confidence`` interval: Wilson for recall; for F1, the F1 of the upper ends of recall and
    precision (F1 grows with both, so no F1 within the interval is higher)."""
    from fraud_detection.training.evaluate import wilson_interval

    tp = sum(w.tp for w in windows)
    fp = sum(w.fp for w in windows)
    fn = sum(w.fn for w in windows)
    recall = tp / (tp + fn) if tp + fn else None
    precision = tp / (tp + fp) if tp + fp else None
    recall_high = wilson_interval(tp, tp + fn, confidence)[1]
    precision_high = wilson_interval(tp, tp + fp, confidence)[1]
    f1 = (
        2 * precision * recall / (precision + recall)
        if recall is not None and precision is not None and precision + recall > 0
        else None
    )
    f1_high = (
        2 * precision_high * recall_high / (precision_high + recall_high)
        if precision_high + recall_high > 0
        else 0.0
    )
    return {"recall": (recall, recall_high), "f1": (f1, f1_high)}


def baseline_lower_bounds(baseline: Mapping[str, float], confidence: float) -> dict[str, float]:
    """The lower ends of the baseline's recall and F1 (Wilson; F1 of the lower ends of recall
    and precision), from the test set's ``tp``, ``fp``, ``fn`` it carries ({} without them)."""
    from fraud_detection.training.evaluate import wilson_interval

    counts = [baseline.get(name) for name in ("tp", "fp", "fn")]
    if any(count is None or count < 0 for count in counts):
        return {}
    tp, fp, fn = (round(count) for count in counts)  # type: ignore[arg-type]
    if tp + fn == 0 or tp + fp == 0:
        return {}
    recall_low = wilson_interval(tp, tp + fn, confidence)[0]
    precision_low = wilson_interval(tp, tp + fp, confidence)[0]
    total = recall_low + precision_low
    return {
        "recall": recall_low,
        "f1": 2 * recall_low * precision_low / total if total > 0 else 0.0,
    }


def schedule_reason(model: ServedModel, now: datetime, config: TriggerConfig) -> str | None:
    """``schedule: model data 31 days old`` when the served model's data is too old."""
    if model.data_end is None:
        return None
    age = now - model.data_end
    if age <= config.max_model_age:
        return None
    return f"schedule: model data {age.days} days old"


def run_started(state: TriggerState, decision: Decision, name: str) -> TriggerState:
    """The state once the run of ``decision`` started (its cool-down starts now)."""
    run = InFlight(name, decision.reason, decision.at, decision.model_version)
    return replace(state, in_flight=run, last_started=decision.at)


def run_finished(state: TriggerState) -> TriggerState:
    """The state once the run in flight ended (however it ended)."""
    return replace(state, in_flight=None)
