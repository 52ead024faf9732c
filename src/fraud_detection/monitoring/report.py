"""The monitoring report: one self-contained HTML page of what the monitoring loop saw and did.

Built from the loop's records (drift results, performance results, retraining events; see
:mod:`fraud_detection.monitoring.timeline`), with charts embedded as PNG:

* a summary: the period, drift windows and the first one, performance against the baseline,
  retraining runs, promotions, model versions, and what of the input was left out and why;
* a heat map of every drift window's p-values (rows: the features and the score; columns: the
  windows in time order; colour: -log10 p; a cross where a column is below the corrected
  threshold);
* recall, precision and F1 per performance window (complete windows filled, incomplete ones
  hollow) with the baseline and the band down to baseline - tolerance;
* alerts (flagged transactions) and scored transactions per day;
* on every chart, a vertical line for each retraining run started, each run finished (deployed,
  or not) and each promotion; a table lists the same events.
"""

from __future__ import annotations

import html
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from fraud_detection.html_report import html_figure, html_page, html_table, render_chart
from fraud_detection.monitoring.timeline import (
    SCORE_ROW,
    LoopHistory,
    Skipped,
    collect_history,
    format_time,
    is_deployment,
    min_p_value,
    promotion_row,
    retrain_row,
    timeline_rows,
)

DEFAULT_TITLE = "Fraud monitoring report"
#: Width of the time charts (inches): wide, so that windows stay apart.
WIDE = 11.0
#: -log10 p above this is drawn in the top colour (p below 1e-16).
MAX_LOG_P = 16.0
#: At most this many skipped lines or records are listed one by one.
LISTED_SKIPS = 20
_METRICS = (("recall", "#2ca02c"), ("precision", "#1f77b4"), ("f1", "#ff7f0e"))


# ---------------------------------------------------------------------------------- events
class _Event:
    """A vertical marker: when, what it is, and how it is drawn."""

    def __init__(self, at: datetime, label: str, color: str, style: str, width: float) -> None:
        self.at, self.label, self.color, self.style, self.width = at, label, color, style, width


#: Marker style of each kind of event: (legend label, colour, line style, line width).
MARKERS: dict[str, tuple[str, str, str, float]] = {
    "started": ("retraining started", "#ff7f0e", "--", 1.4),
    "deployed": ("retraining finished: deployed", "#2ca02c", "-", 1.4),
    "not deployed": ("retraining finished: not deployed (refused, failed)", "#d62728", ":", 1.8),
    "promotion": ("promotion (served version changes)", "#9467bd", "-", 2.6),
}
_MARKER_WORDS = {
    "started": "orange dashed line",
    "deployed": "green line",
    "not deployed": "red dotted line",
    "promotion": "thick purple line",
}


def _marker_kind(event: Mapping[str, Any]) -> str | None:
    if event["event"] == "started":
        return "started"
    if event["event"] == "finished":
        return "deployed" if is_deployment(event) else "not deployed"
    return None


def _events(history: LoopHistory) -> list[_Event]:
    events = []
    for event in history.retrains:
        kind = _marker_kind(event)
        if kind is not None:
            events.append(_Event(event["_at"], *MARKERS[kind]))
    events += [_Event(p.at, *MARKERS["promotion"]) for p in history.promotions]
    return events


def _mark(axes: Any, events: Sequence[_Event], where: Any = None) -> None:
    """Draw every event as a vertical line at ``where(at)`` (the time itself by default)."""
    from matplotlib.dates import date2num

    for event in events:
        x = where(event.at) if where else date2num(event.at)
        # Thick promotion lines under the thinner run lines that may share their place.
        order = 3.5 if event.width > 2 else 4
        axes.axvline(
            x, color=event.color, linestyle=event.style, lw=event.width, alpha=0.9, zorder=order
        )


def _event_handles(events: Sequence[_Event]) -> list[Any]:
    from matplotlib.lines import Line2D

    seen: dict[str, Any] = {}
    for event in events:
        seen.setdefault(
            event.label,
            Line2D(
                [], [], color=event.color, linestyle=event.style, lw=event.width, label=event.label
            ),
        )
    return [seen[label] for label, *_ in MARKERS.values() if label in seen]


def _legend(axes: Any, handles: list[Any]) -> None:
    """A legend right of the axes (labels from the handles), so that it hides no data."""
    if handles:
        axes.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)


def _time_axis(axes: Any, span: tuple[datetime, datetime]) -> None:
    """Dates on the x axis, over the whole history's span (charts line up)."""
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter, date2num

    locator = AutoDateLocator(minticks=4, maxticks=10)
    axes.xaxis.set_major_locator(locator)
    axes.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    start, end = span
    pad = max((end - start) * 0.02, timedelta(minutes=1))
    axes.set_xlim(date2num(start - pad), date2num(end + pad))


# ---------------------------------------------------------------------------------- charts
def _heat_rows(drift: Sequence[Mapping[str, Any]]) -> list[str]:
    names: dict[str, None] = {}
    for record in drift:
        names.update(dict.fromkeys(record.get("features") or {}))
    if any(record.get("score") for record in drift):
        names[SCORE_ROW] = None
    return list(names)


def _column_test(record: Mapping[str, Any], name: str) -> Mapping[str, Any] | None:
    test = record.get("score") if name == SCORE_ROW else (record.get("features") or {}).get(name)
    return test if isinstance(test, Mapping) else None


def _below_threshold(record: Mapping[str, Any], test: Mapping[str, Any], p: float) -> bool:
    if "is_drift" in test:
        return bool(test["is_drift"])
    threshold = record.get("threshold")
    return isinstance(threshold, int | float) and p < threshold


def drift_heatmap(history: LoopHistory) -> str:
    """-log10 p of every column of every drift window; crosses below the corrected threshold."""
    import numpy as np

    drift = history.drift
    names = _heat_rows(drift)
    values = np.full((len(names), len(drift)), np.nan)
    crosses: list[tuple[int, int]] = []
    for column, record in enumerate(drift):
        for row, name in enumerate(names):
            test = _column_test(record, name)
            if test is None or not isinstance(test.get("p_value"), int | float):
                continue
            p = float(test["p_value"])
            values[row, column] = min(-math.log10(max(p, 1e-300)), MAX_LOG_P)
            if _below_threshold(record, test, p):
                crosses.append((column, row))
    thresholds = [r["threshold"] for r in drift if isinstance(r.get("threshold"), int | float)]
    cut = -math.log10(float(np.median(thresholds))) if thresholds else None
    top = float(np.nanmax(values)) if np.isfinite(values).any() else 1.0
    top = min(max(top, (cut or 1.0) * 1.5, 1.0), MAX_LOG_P)
    starts = [record["_start"] for record in drift]
    events = _events(history)

    ends = [record["_end"] for record in drift]

    def position(at: datetime) -> float:
        # Inside the last window starting at or before ``at`` (in proportion), else after it.
        index = sum(1 for start in starts if start <= at) - 1
        if index < 0:
            return -0.5
        start, end = starts[index], ends[index]
        if at > end or end == start:
            return index + 0.5
        return index - 0.5 + (at - start) / (end - start)

    def draw(axes: Any) -> None:
        import matplotlib

        cmap = matplotlib.colormaps["YlOrRd"].with_extremes(bad="#dddddd")
        image = axes.imshow(
            np.ma.masked_invalid(values),
            aspect="auto",
            interpolation="nearest",
            cmap=cmap,
            vmin=0.0,
            vmax=top,
        )
        if crosses:
            size = 36 if len(drift) <= 40 else (14 if len(drift) <= 150 else 5)
            axes.scatter(
                [c for c, _ in crosses],
                [r for _, r in crosses],
                marker="x",
                s=size,
                color="black",
                lw=1.0,
                zorder=3,
                label="below the corrected threshold",
            )
        colorbar = axes.figure.colorbar(image, ax=axes, pad=0.01, fraction=0.04)
        colorbar.set_label("-log10 p-value (black line: threshold)")
        if cut is not None and cut <= top:
            colorbar.ax.axhline(cut, color="black", lw=1.5)
        _mark(axes, events, position)
        axes.set_yticks(range(len(names)), names)
        ticks = sorted({round(i) for i in np.linspace(0, len(drift) - 1, min(len(drift), 8))})
        axes.set_xticks(ticks, [starts[i].strftime("%m-%d\n%H:%M") for i in ticks])
        axes.set_xlim(-0.5, len(drift) - 0.5)
        axes.set_xlabel(f"drift window start (UTC), {len(drift)} windows in time order")
        axes.set_title("Feature drift: p-value of each column in each window")
        handles = axes.get_legend_handles_labels()[0] + _event_handles(events)
        if handles:
            axes.legend(
                handles=handles,
                loc="upper left",
                bbox_to_anchor=(0.0, -0.2),
                ncols=min(len(handles), 3),
                frameon=False,
            )

    return render_chart(draw, height=max(3.6, 0.32 * len(names) + 2.4), width=WIDE)


def _segments(windows: Sequence[Mapping[str, Any]], name: str) -> list[tuple[Any, ...]]:
    """Runs of consecutive windows with the same baseline and tolerance: (start, end, b, tol)."""
    segments: list[list[Any]] = []
    for window in windows:
        baseline = (window.get("baseline") or {}).get(name)
        if not isinstance(baseline, int | float):
            continue
        tolerance = window.get("tolerance")
        tolerance = float(tolerance) if isinstance(tolerance, int | float) else 0.0
        last = segments[-1] if segments else None
        if last and last[2] == baseline and last[3] == tolerance:
            last[1] = max(last[1], window["_end"])
        else:
            segments.append([window["_start"], window["_end"], float(baseline), tolerance])
    return [tuple(segment) for segment in segments]


def _middle(window: Mapping[str, Any]) -> datetime:
    return window["_start"] + (window["_end"] - window["_start"]) / 2


def performance_chart(history: LoopHistory) -> str:
    """Recall, precision and F1 per performance window against the baseline and its band."""
    from matplotlib.dates import date2num
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    windows = history.performance
    events = _events(history)
    span = history.span
    assert span is not None

    def draw(stack: Any) -> None:
        for axes, (name, color) in zip(stack, _METRICS, strict=True):
            points = [(w, w.get(name)) for w in windows if isinstance(w.get(name), int | float)]
            xs = [date2num(_middle(w)) for w, _ in points]
            axes.plot(xs, [v for _, v in points], color=color, lw=1, alpha=0.6)
            for complete, face in ((True, color), (False, "none")):
                chosen = [
                    (x, v)
                    for x, (w, v) in zip(xs, points, strict=True)
                    if bool(w.get("complete")) is complete
                ]
                if chosen:
                    axes.scatter(
                        [x for x, _ in chosen],
                        [v for _, v in chosen],
                        facecolors=face,
                        edgecolors=color,
                        s=30,
                        zorder=3,
                    )
            for start, end, baseline, tolerance in _segments(windows, name):
                left, right = date2num(start), date2num(end)
                axes.hlines(baseline, left, right, color="#444", lw=1.2)
                axes.fill_between(
                    [left, right], baseline - tolerance, baseline, color="#999", alpha=0.25, lw=0
                )
            _mark(axes, events)
            axes.set_ylim(-0.03, 1.05)
            axes.set_ylabel(name)
            axes.grid(alpha=0.3)
        _time_axis(stack[-1], span)
        stack[-1].set_xlabel("transaction time (UTC), each point a window's middle")
        stack[0].set_title("Recall, precision and F1 per performance window")
        handles = [
            Line2D([], [], marker="o", ls="", color="#555", label="complete window"),
            Line2D([], [], marker="o", ls="", mfc="none", color="#555", label="incomplete window"),
            Line2D([], [], color="#444", lw=1.2, label="baseline (the bundle's)"),
            Patch(color="#999", alpha=0.25, label="baseline - tolerance band"),
            *_event_handles(events),
        ]
        _legend(stack[0], handles)

    return render_chart(draw, height=7.2, width=WIDE, rows=3)


def _daily(windows: Sequence[Mapping[str, Any]]) -> tuple[list[datetime], list[int], list[int]]:
    """Flagged and scored transactions per UTC day (each window counted on its start's day)."""
    flagged: Counter[datetime] = Counter()
    scored: Counter[datetime] = Counter()
    for window in windows:
        day = window["_start"].replace(hour=0, minute=0, second=0, microsecond=0)
        flagged[day] += _count(window.get("flagged"))
        scored[day] += _count(window.get("scored"))
    days = sorted(set(flagged) | set(scored))
    return days, [flagged[d] for d in days], [scored[d] for d in days]


def _count(value: Any) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


def alert_chart(history: LoopHistory) -> str:
    """Alerts (flagged transactions) and scored transactions per day."""
    from matplotlib.dates import date2num
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    days, flagged, scored = _daily(history.performance)
    events = _events(history)
    span = history.span
    assert span is not None
    centres = [date2num(day + timedelta(hours=12)) for day in days]

    def draw(axes: Any) -> None:
        axes.bar(centres, flagged, width=0.8, color="#d62728", alpha=0.75)
        axes.set_ylabel("alerts (flagged transactions) per day")
        other = axes.twinx()
        other.plot(centres, scored, color="#1f77b4", marker="o", lw=1.2)
        other.set_ylabel("scored transactions per day")
        other.set_ylim(bottom=0)
        _mark(axes, events)
        _time_axis(axes, (min(span[0], days[0]), max(span[1], days[-1] + timedelta(days=1))))
        axes.set_xlabel("day (UTC)")
        axes.set_title("Alert volume per day")
        axes.grid(alpha=0.3)
        handles = [
            Patch(color="#d62728", alpha=0.75, label="alerts (left axis)"),
            Line2D([], [], color="#1f77b4", marker="o", label="scored (right axis)"),
            *_event_handles(events),
        ]
        axes.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.08, 1.0), frameon=False)

    return render_chart(draw, height=4.2, width=WIDE)


# ---------------------------------------------------------------------------------- text
def _when(moment: datetime | None) -> str:
    return "-" if moment is None else format_time(moment) + " UTC"


def _share(part: int, whole: int) -> str:
    return f"{part / whole:.0%}" if whole else "-"


def summary_rows(history: LoopHistory) -> list[tuple[str, str]]:
    """The figures at the top of the report, as (label, text) pairs."""
    span = history.span
    tested = [record for record in history.drift if record.get("tested", True)]
    drifted = history.drift_windows
    rows = [
        ("Period", f"{_when(span[0])} to {_when(span[1])}" if span else "no windows or events"),
        (
            "Drift windows",
            f"{len(drifted)} of {len(tested)} tested windows drifted "
            f"({_share(len(drifted), len(tested))}); "
            f"{len(history.drift) - len(tested)} not tested",
        ),
    ]
    if drifted:
        first = drifted[0]
        columns = ", ".join(first.get("drifted") or []) or "-"
        rows.append(
            (
                "First drift",
                f"{_when(first['_start'])} (window {first['window_id']}, "
                f"version {first.get('model_version')}): {columns}",
            )
        )
    else:
        rows.append(("First drift", "none"))
    performance = history.performance
    complete = [w for w in performance if w.get("complete")]
    below = [w for w in performance if w.get("below_baseline")]
    rows.append(
        (
            "Performance windows",
            f"{len(performance)} ({len(complete)} complete); {len(below)} below "
            "baseline - tolerance",
        )
    )
    if complete:
        last = complete[-1]
        baseline = last.get("baseline") or {}
        rows.append(
            (
                "Latest complete window",
                f"{_when(last['_start'])}, version {last.get('model_version')}: "
                + ", ".join(
                    f"{name} {_fmt(last.get(name))} (baseline {_fmt(baseline.get(name))})"
                    for name, _ in _METRICS
                ),
            )
        )
    finished = [e for e in history.retrains if e["event"] == "finished"]
    deployed = [e for e in finished if is_deployment(e)]
    suppressed = [e for e in history.retrains if e["event"] == "suppressed"]
    reasons = Counter(str(e.get("reason") or "no reason") for e in history.triggers)
    rows.append(
        (
            "Retraining triggers",
            f"{len(history.triggers)} started, {len(finished)} finished ({len(deployed)} "
            f"deployed, {len(finished) - len(deployed)} not deployed), {len(suppressed)} "
            "suppressed"
            + (
                "; reasons: " + ", ".join(f"{r} ({n})" for r, n in reasons.most_common())
                if reasons
                else ""
            ),
        )
    )
    rows.append(
        (
            "Promotions",
            "; ".join(
                f"{p.previous or '?'} → {p.version} at {_when(p.at)}" for p in history.promotions
            )
            or "none",
        )
    )
    rows.append(("Model versions", _versions(history)))
    rows.append(("Input", _input(history)))
    return rows


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, int | float) else "-"


def _versions(history: LoopHistory) -> str:
    parts = []
    for version in history.versions:
        drift = [r for r in history.drift if r.get("model_version") == version]
        performance = [r for r in history.performance if r.get("model_version") == version]
        windows = drift + performance
        served = "no windows"
        if windows:
            first, last = min(r["_start"] for r in windows), max(r["_end"] for r in windows)
            served = f"{_when(first)} to {_when(last)}"
        parts.append(
            f"{version}: {len(drift)} drift and {len(performance)} performance windows, {served}"
        )
    return "; ".join(parts) or "none"


def _input(history: LoopHistory) -> str:
    text = (
        f"{history.records} records read; {history.duplicates} duplicates collapsed; "
        f"{history.superseded} superseded performance revisions; "
        f"{len(history.skipped)} lines or records skipped"
    )
    if history.unknown_kinds:
        kinds = ", ".join(f"{k} ({n})" for k, n in sorted(history.unknown_kinds.items()))
        text += f"; ignored records of unknown kinds: {kinds}"
    return text


def event_rows(history: LoopHistory) -> list[tuple[str, str, str, str, str]]:
    """(time, event, version, detail, marker) of every retraining event and promotion."""
    rows = []
    for event in history.retrains:
        kind = _marker_kind(event)
        rows.append((retrain_row(event), _MARKER_WORDS[kind] if kind else "not drawn"))
    rows += [(promotion_row(p), _MARKER_WORDS["promotion"]) for p in history.promotions]
    rows.sort(key=lambda pair: (pair[0].at, pair[0].kind == "promotion"))
    return [
        (format_time(row.at), row.what, row.version, row.detail, marker) for row, marker in rows
    ]


def _captions(history: LoopHistory) -> dict[str, str]:
    thresholds = sorted(
        {r["threshold"] for r in history.drift if isinstance(r.get("threshold"), int | float)}
    )
    threshold = (
        f"{thresholds[0]:.2g}"
        if len(thresholds) == 1
        else (f"{thresholds[0]:.2g} to {thresholds[-1]:.2g}" if thresholds else "-")
    )
    lowest = [min_p_value(r) for r in history.drift]
    return {
        "heatmap": (
            "Each column is a drift window (its model version's records against that version's "
            "reference), in time order; each row a tested feature or the model's score. Darker "
            "is a smaller KS p-value (-log10 p; 2 means p = 0.01). A cross marks a column below "
            f"the window's corrected threshold ({threshold}), which makes the window drift; grey "
            f"cells were not tested. Smallest p-value seen: "
            + (f"{min(p for _, p in filter(None, lowest)):.2g}." if any(lowest) else "-.")
            + " Vertical lines: retraining runs and promotions, placed between the windows "
            "before and after them."
        ),
        "performance": (
            "Recall (share of labelled frauds flagged), precision (share of labelled alerts "
            "that were fraud) and F1 of each performance window, at its latest revision. "
            "Filled points: windows whose labels are complete; hollow: labels still arriving, "
            "so the figure may change. The dark line is the baseline recorded in the served "
            "model's bundle; the grey band reaches down to baseline - tolerance, under which "
            "the window counts as below the baseline."
        ),
        "alerts": (
            "Red bars: transactions flagged for review (alerts) each day; blue: transactions "
            "scored. Each performance window counts on the day it starts, so the first and "
            "last days may be partial."
        ),
    }


def render_monitoring_html(history: LoopHistory, title: str = DEFAULT_TITLE) -> str:
    """The report page of ``history`` as an HTML string."""
    parts = [f"<h1>{html.escape(title)}</h1>"]
    parts.append("<h2>Summary</h2>")
    parts.append(html_table(summary_rows(history), ("", "")))
    if history.skipped:
        parts.append(
            f"<p class='failed'>{len(history.skipped)} input lines or records could not be "
            "read and were skipped:</p>"
        )
        listed = [(s.where, s.reason) for s in history.skipped[:LISTED_SKIPS]]
        parts.append(html_table(listed, ("where", "reason")))
        if len(history.skipped) > LISTED_SKIPS:
            parts.append(f"<p class='note'>… and {len(history.skipped) - LISTED_SKIPS} more.</p>")
    captions = _captions(history)
    charts: list[tuple[str, str, str]] = []
    if history.drift:
        charts.append(("Feature drift heat map", drift_heatmap(history), captions["heatmap"]))
    if history.performance:
        charts.append(
            ("Recall, precision and F1", performance_chart(history), captions["performance"])
        )
        charts.append(("Alert volume per day", alert_chart(history), captions["alerts"]))
    parts.append("<h2>Charts</h2>")
    if not charts:
        parts.append("<p class='note'>No drift or performance results: nothing to chart.</p>")
    parts += [html_figure(alt, uri, caption) for alt, uri, caption in charts]
    parts.append("<h2>Retraining and promotions</h2>")
    events = event_rows(history)
    if events:
        parts.append(
            html_table(events, ("time (UTC)", "event", "version", "detail", "marker on charts"))
        )
    else:
        parts.append("<p class='note'>No retraining run and no promotion.</p>")
    rows = timeline_rows(history)
    if rows:
        parts.append(f"<details><summary>Timeline ({len(rows)} rows)</summary>")
        parts.append(
            html_table(
                [(format_time(r.at), r.kind, r.version, r.what, r.detail) for r in rows],
                ("time (UTC)", "kind", "version", "what", "detail"),
            )
        )
        parts.append("</details>")
    return html_page(title, parts)


def render_monitoring_report(
    records: Iterable[Mapping[str, Any]],
    out_path: str | Path,
    title: str = DEFAULT_TITLE,
    bad_lines: Iterable[Skipped] = (),
) -> Path:
    """Write the report of ``records`` (the loop's JSON objects) to ``out_path``; return it.

    ``bad_lines`` are input lines that could not be read (see
    :func:`fraud_detection.monitoring.timeline.read_result_lines`); the report lists them.
    """
    history = collect_history(records, bad_lines)
    path = Path(out_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_monitoring_html(history, title), encoding="utf-8")
    return path
