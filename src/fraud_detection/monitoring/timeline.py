"""The monitoring loop's history, read back from its JSON-lines results, and its timeline.

The loop writes three kinds of record (plain JSON objects, one a line):

* ``feature_drift``: one drift result per window (:mod:`fraud_detection.monitoring.results`);
* ``performance``: recall, precision and F1 of a window of transaction time, written again as
  labels arrive (a higher ``revision`` of the same ``window_id`` supersedes the earlier ones);
* ``retrain``: a retraining run ``started``, ``finished`` (``outcome`` deployed or not, with the
  ``new_model_version``) or ``suppressed`` (debounced), at stream time ``at``.

:func:`collect_history` turns such records into a :class:`LoopHistory`: one result per window
(a result written twice after a crash counts once; a performance window keeps its highest
revision), events in time order, the promotions (a new served model version), and what was left
out: records of unknown kinds, and records or lines that could not be read, each with its reason.
:func:`timeline_rows` lays the history out as rows in time order; :func:`render_timeline`
renders them as a rich table. All of it is pure: records in, values out.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.table import Table

DRIFT = "feature_drift"
PERFORMANCE = "performance"
RETRAIN = "retrain"
#: The ``event`` values of a retraining record.
RETRAIN_EVENTS = ("started", "finished", "suppressed")
#: The ``outcome`` of a finished local run whose new model was deployed.
DEPLOYED = "deployed"
#: Outcomes of a finished run that, with a ``new_model_version``, put that version in service
#: (a Kubeflow Pipelines run that succeeded has deployed what its gate passed).
DEPLOYING_OUTCOMES = (DEPLOYED, "succeeded")
#: The name a drift result's score column goes by in charts and tables.
SCORE_ROW = "score (fraud_probability)"


@dataclass(frozen=True)
class Skipped:
    """A line or record left out of the history, and why (``where``: file and line, or index)."""

    where: str
    reason: str


@dataclass(frozen=True)
class ResultLines:
    """The records read from JSON-lines files, and the lines that could not be read."""

    records: list[dict[str, Any]]
    bad_lines: list[Skipped]


@dataclass(frozen=True)
class Promotion:
    """The served model changing to ``version`` at ``at``.

    ``source`` is ``"retrain"`` when a finished, deployed retraining run marks it (``run`` names
    the run), else ``"results"``: the version first appears in the window results at ``at``.
    ``first_seen`` is the start of its first window result, when there is one.
    """

    at: datetime
    version: str
    previous: str | None
    source: str
    run: str | None = None
    first_seen: datetime | None = None


@dataclass(frozen=True)
class LoopHistory:
    """The loop's records, one per window and in time order, and what was left out.

    ``drift`` and ``performance`` are sorted by window start (then end, then id); ``retrains`` by
    ``at``. Each record gains ``_start``/``_end`` (or ``_at``) as UTC datetimes.
    """

    drift: list[dict[str, Any]]
    performance: list[dict[str, Any]]
    retrains: list[dict[str, Any]]
    promotions: list[Promotion]
    versions: list[str]
    records: int = 0
    duplicates: int = 0
    superseded: int = 0
    unknown_kinds: Counter[str] = field(default_factory=Counter)
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def drift_windows(self) -> list[dict[str, Any]]:
        """The drift results whose window drifted, in time order."""
        return [record for record in self.drift if record.get("is_drift")]

    @property
    def triggers(self) -> list[dict[str, Any]]:
        """The retraining runs started, in time order."""
        return [event for event in self.retrains if event["event"] == "started"]

    @property
    def span(self) -> tuple[datetime, datetime] | None:
        """The earliest and latest time of any window or event, or None when there is none."""
        times = [r[key] for r in (*self.drift, *self.performance) for key in ("_start", "_end")]
        times += [event["_at"] for event in self.retrains]
        return (min(times), max(times)) if times else None


# ---------------------------------------------------------------------------------- reading
def read_result_lines(paths: Sequence[str | Path]) -> ResultLines:
    """Every JSON object of the JSON-lines files ``paths``, in order; bad lines are counted.

    A line that is not JSON, or is JSON but not an object, is skipped and named (``file:line``
    and the reason); blank lines are ignored. Raises ``OSError`` for a file that cannot be read.
    """
    import orjson

    records: list[dict[str, Any]] = []
    bad: list[Skipped] = []
    for path in paths:
        with open(path, "rb") as stream:
            for number, line in enumerate(stream, start=1):
                if not line.strip():
                    continue
                where = f"{path}:{number}"
                try:
                    value = orjson.loads(line)
                except orjson.JSONDecodeError as exc:
                    detail = str(exc.args[0] if exc.args else exc).split(":")[0]
                    bad.append(Skipped(where, f"not JSON ({detail})"))
                    continue
                if not isinstance(value, dict):
                    bad.append(Skipped(where, f"not a JSON object but {type(value).__name__}"))
                    continue
                value.setdefault("_source", where)
                records.append(value)
    return ResultLines(records, bad)


def parse_time(value: Any, name: str) -> datetime:
    """An ISO-8601 time as an aware UTC datetime (naive text is read as UTC).

    Raises ``ValueError`` naming the field ``name`` and the reason.
    """
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name}: missing or not text ({value!r})")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise ValueError(f"{name}: not an ISO-8601 time ({value!r})") from exc
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _text(record: Mapping[str, Any], name: str) -> str:
    value = record.get(name)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name}: missing or not text ({value!r})")
    return value


def _window(record: Mapping[str, Any]) -> dict[str, Any]:
    """A drift or performance result with its times parsed; ``ValueError`` if unusable."""
    _text(record, "window_id")
    start, end = parse_time(record.get("start"), "start"), parse_time(record.get("end"), "end")
    if end < start:
        raise ValueError(f"end: before start ({record['end']} < {record['start']})")
    return {**record, "_start": start, "_end": end}


def _object(record: Mapping[str, Any], name: str) -> None:
    value = record.get(name)
    if value is not None and not isinstance(value, Mapping):
        raise ValueError(f"{name}: not an object ({type(value).__name__})")


def _drift(record: Mapping[str, Any]) -> dict[str, Any]:
    window = _window(record)
    for name in ("features", "score"):
        _object(record, name)
    for column, test in (record.get("features") or {}).items():
        if not isinstance(test, Mapping):
            raise ValueError(f"features.{column}: not an object ({type(test).__name__})")
    return window


def _performance(record: Mapping[str, Any]) -> dict[str, Any]:
    window = _window(record)
    revision = record.get("revision", 0)
    if isinstance(revision, bool) or not isinstance(revision, int):
        raise ValueError(f"revision: not an integer ({revision!r})")
    _object(record, "baseline")
    return window


def _retrain(record: Mapping[str, Any]) -> dict[str, Any]:
    event = record.get("event")
    if event not in RETRAIN_EVENTS:
        raise ValueError(f"event: must be one of {', '.join(RETRAIN_EVENTS)}, got {event!r}")
    return {**record, "_at": parse_time(record.get("at"), "at")}


def is_deployment(event: Mapping[str, Any]) -> bool:
    """Whether a retraining event is a finished run that put its new model version in service."""
    return (
        event.get("event") == "finished"
        and event.get("outcome") in DEPLOYING_OUTCOMES
        and bool(event.get("new_model_version"))
    )


def run_name(run: Any) -> str | None:
    """A run's name: the ``run`` field is a name, or an object with ``name`` (or ``id``)."""
    if isinstance(run, Mapping):
        run = run.get("name") or run.get("id")
    return None if run in (None, "") else str(run)


def _where(record: Mapping[str, Any], index: int) -> str:
    return str(record.get("_source") or f"record {index + 1}")


# ---------------------------------------------------------------------------------- history
def collect_history(
    records: Iterable[Mapping[str, Any]], bad_lines: Iterable[Skipped] = ()
) -> LoopHistory:
    """The loop's history from its records (any order, duplicates allowed).

    A drift result seen twice (same ``window_id``) counts once, the first kept; a performance
    window keeps its highest ``revision`` (the later record on a tie); a retraining event seen
    twice (same ``event``, ``at``, ``run`` and versions) counts once. Records of other kinds are
    counted by kind and left out; records that cannot be used are left out with their reason,
    after ``bad_lines``.
    """
    skipped = list(bad_lines)
    unknown: Counter[str] = Counter()
    drift: dict[str, dict[str, Any]] = {}
    performance: dict[str, dict[str, Any]] = {}
    retrains: dict[tuple[Any, ...], dict[str, Any]] = {}
    duplicates = superseded = count = 0
    for index, record in enumerate(records):
        count += 1
        if not isinstance(record, Mapping):
            skipped.append(Skipped(f"record {index + 1}", "not a JSON object"))
            continue
        kind = record.get("kind")
        try:
            if kind == DRIFT:
                window = _drift(record)
                if window["window_id"] in drift:
                    duplicates += 1
                else:
                    drift[window["window_id"]] = window
            elif kind == PERFORMANCE:
                window = _performance(record)
                kept = performance.get(window["window_id"])
                if kept is None:
                    performance[window["window_id"]] = window
                elif window.get("revision", 0) == kept.get("revision", 0):
                    duplicates += 1
                    performance[window["window_id"]] = window
                else:
                    superseded += 1
                    if window.get("revision", 0) > kept.get("revision", 0):
                        performance[window["window_id"]] = window
            elif kind == RETRAIN:
                event = _retrain(record)
                key = (
                    *(str(event.get(name)) for name in ("event", "at", "model_version")),
                    run_name(event.get("run")),
                    str(event.get("new_model_version")),
                )
                if key in retrains:
                    duplicates += 1
                else:
                    retrains[key] = event
            else:
                unknown[str(kind)] += 1
        except ValueError as exc:
            skipped.append(Skipped(_where(record, index), f"{kind} record: {exc}"))
    drift_sorted = sorted(drift.values(), key=_window_order)
    performance_sorted = sorted(performance.values(), key=_window_order)
    retrain_sorted = sorted(retrains.values(), key=lambda event: event["_at"])
    versions, promotions = _promotions([*drift_sorted, *performance_sorted], retrain_sorted)
    return LoopHistory(
        drift=drift_sorted,
        performance=performance_sorted,
        retrains=retrain_sorted,
        promotions=promotions,
        versions=versions,
        records=count,
        duplicates=duplicates,
        superseded=superseded,
        unknown_kinds=unknown,
        skipped=skipped,
    )


def _window_order(record: Mapping[str, Any]) -> tuple[datetime, datetime, str]:
    return record["_start"], record["_end"], record["window_id"]


def _promotions(
    windows: list[dict[str, Any]], retrains: list[dict[str, Any]]
) -> tuple[list[str], list[Promotion]]:
    """Versions in the order they were first served, and every change of served version.

    The first version seen is where the history starts, not a promotion. A finished, deployed
    run marks the promotion of its ``new_model_version`` at its ``at``; a version that appears in
    the results with no such run is promoted when its first window starts.
    """
    first_seen: dict[str, datetime] = {}
    for window in sorted(windows, key=_window_order):
        version = window.get("model_version")
        if isinstance(version, str) and version:
            first_seen.setdefault(version, window["_start"])
    deployed: dict[str, dict[str, Any]] = {}
    for event in retrains:
        new = event.get("new_model_version")
        if is_deployment(event):
            deployed.setdefault(str(new), event)
    moments: dict[str, tuple[datetime, str, dict[str, Any] | None]] = {
        version: (at, "results", None) for version, at in first_seen.items()
    }
    for version, event in deployed.items():
        moments[version] = (event["_at"], "retrain", event)
    # The version served first: the earliest in the results that no run deployed.
    initial = next((v for v in first_seen if v not in deployed), None)
    order = sorted(moments, key=lambda version: (version != initial, moments[version][0]))
    promotions: list[Promotion] = []
    previous = initial
    served = list(order)
    for version in order:
        if version == initial:
            continue
        at, source, event = moments[version]
        if previous is None and event is not None and event.get("model_version"):
            # No result before it: the run's own record names the version it replaced.
            previous = str(event["model_version"])
            served.insert(0, previous)
        run = None if event is None else run_name(event.get("run"))
        promotions.append(
            Promotion(
                at=at,
                version=version,
                previous=previous,
                source=source,
                run=run,
                first_seen=first_seen.get(version),
            )
        )
        previous = version
    return list(dict.fromkeys(served)), promotions


# ---------------------------------------------------------------------------------- timeline
@dataclass(frozen=True)
class TimelineRow:
    """One line of the timeline: what happened at ``at``.

    ``kind`` is ``drift`` (a drift window, placed at its end), ``performance`` (a performance
    window's latest revision, at its end), ``retrain`` (started, finished or suppressed, at its
    stream time) or ``promotion``. ``alert`` marks drift, performance below the baseline, a
    trigger and a refused or failed run.
    """

    at: datetime
    kind: str
    version: str
    what: str
    detail: str
    alert: bool = False


_KIND_ORDER = {DRIFT: 0, PERFORMANCE: 1, RETRAIN: 2, "promotion": 3}
_SHORT_KIND = {DRIFT: "drift", PERFORMANCE: "perf."}


def min_p_value(record: Mapping[str, Any]) -> tuple[str, float] | None:
    """The column (feature or the score) with the smallest p-value of a drift result."""
    columns = dict(record.get("features") or {})
    if record.get("score"):
        columns[SCORE_ROW] = record["score"]
    tests = [
        (name, float(test["p_value"]))
        for name, test in columns.items()
        if isinstance(test, Mapping) and _number(test.get("p_value")) is not None
    ]
    return min(tests, key=lambda item: (item[1], item[0])) if tests else None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        return None
    return float(value)


def _metric(value: Any) -> str:
    number = _number(value)
    return "-" if number is None else f"{number:.3f}"


def drift_row(record: Mapping[str, Any]) -> TimelineRow:
    """A drift window's row: its smallest p-value and the columns that drifted."""
    version = str(record.get("model_version") or "?")
    size = record.get("size")
    if record.get("tested") is False:
        return TimelineRow(record["_end"], DRIFT, version, "window not tested", f"size {size}")
    lowest = min_p_value(record)
    threshold = _number(record.get("threshold"))
    low = f"min p {lowest[1]:.2g} ({lowest[0]})" if lowest else "no p-values"
    if threshold is not None:
        low += f", threshold {threshold:.2g}"
    drifted = list(record.get("drifted") or [])
    what = "drift: " + (", ".join(drifted) or "yes") if record.get("is_drift") else "no drift"
    return TimelineRow(
        record["_end"], DRIFT, version, what, f"{low}; size {size}", bool(record.get("is_drift"))
    )


def performance_row(record: Mapping[str, Any]) -> TimelineRow:
    """A performance window's row: recall and F1 against the baseline, and its labels."""
    version = str(record.get("model_version") or "?")
    baseline = record.get("baseline") or {}
    parts = []
    for name in ("recall", "f1", "precision"):
        text = f"{name} {_metric(record.get(name))}"
        if baseline.get(name) is not None:
            text += f" (baseline {_metric(baseline.get(name))})"
        parts.append(text)
    below = bool(record.get("below_baseline"))
    what = ("below baseline: " if below else "") + ", ".join(parts[:2])
    coverage = _number(record.get("coverage"))
    state = "complete" if record.get("complete") else "incomplete"
    detail = (
        f"{parts[2]}; {record.get('labelled', '?')}/{record.get('scored', '?')} labelled"
        + (f" ({coverage:.0%})" if coverage is not None else "")
        + f", {state}, revision {record.get('revision', 0)}"
    )
    return TimelineRow(record["_end"], PERFORMANCE, version, what, detail, below)


def retrain_row(event: Mapping[str, Any]) -> TimelineRow:
    """A retraining event's row: a trigger, a finished run and its outcome, or a suppression."""
    kind = event["event"]
    version = str(event.get("model_version") or "?")
    run = run_name(event.get("run"))
    reason = event.get("reason")
    if kind == "started":
        what, alert = "retraining triggered", True
    elif kind == "suppressed":
        what, alert = "trigger suppressed", False
    else:
        outcome = event.get("outcome") or "unknown outcome"
        new = event.get("new_model_version")
        what = f"retraining finished: {outcome}" + (f" ({new})" if new else "")
        alert = not is_deployment(event)
    details = [f"reason: {reason}" if reason else "", f"run {run}" if run else ""]
    if event.get("exit_code") is not None:
        details.append(f"exit code {event['exit_code']}")
    return TimelineRow(
        event["_at"], RETRAIN, version, what, "; ".join(d for d in details if d), alert
    )


def promotion_row(promotion: Promotion) -> TimelineRow:
    """A promotion's row: the served version changing."""
    what = f"promoted {promotion.previous or '?'} → {promotion.version}"
    if promotion.source == "retrain":
        detail = f"deployed by run {promotion.run}" if promotion.run else "deployed by retraining"
    else:
        detail = "first seen in the results"
    if promotion.first_seen is not None:
        detail += f"; first window {promotion.first_seen.isoformat().replace('+00:00', 'Z')}"
    return TimelineRow(promotion.at, "promotion", promotion.version, what, detail)


def timeline_rows(source: LoopHistory | Iterable[Mapping[str, Any]]) -> list[TimelineRow]:
    """The loop's timeline: rows in time order (windows at their end; on a tie, windows first).

    ``source`` is a :class:`LoopHistory`, or the loop's records (collected first, see
    :func:`collect_history`).
    """
    history = source if isinstance(source, LoopHistory) else collect_history(source)
    rows = [drift_row(record) for record in history.drift]
    rows += [performance_row(record) for record in history.performance]
    rows += [retrain_row(event) for event in history.retrains]
    rows += [promotion_row(promotion) for promotion in history.promotions]
    return sorted(rows, key=lambda row: (row.at, _KIND_ORDER[row.kind]))


def format_time(moment: datetime) -> str:
    """A UTC time as ``YYYY-MM-DD HH:MM:SS``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def render_timeline(rows: Sequence[TimelineRow], title: str = "Monitoring timeline") -> Table:
    """The rows as a rich table (alerts in red, promotions in bold)."""
    from rich.table import Table
    from rich.text import Text

    table = Table(title=title, title_justify="left")
    table.add_column("time (UTC)", no_wrap=True)
    table.add_column("kind", no_wrap=True)
    table.add_column("version", overflow="fold")
    table.add_column("what", overflow="fold", ratio=2)
    table.add_column("detail", overflow="fold", ratio=3)
    for row in rows:
        style = "bold" if row.kind == "promotion" else ("red" if row.alert else "")
        table.add_row(
            format_time(row.at),
            _SHORT_KIND.get(row.kind, row.kind),
            row.version,
            Text(row.what, style=style),
            Text(row.detail),
        )
    return table
