"""The monitoring report and ``fraud monitor-report``: a self-contained page whose summary
figures follow from the records, one image per chart, every event marked on every chart, and
the command's exit statuses and messages."""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.text import Text
from test_monitoring_timeline import loop_stream, unique_windows, write_stream
from typer.testing import CliRunner

from fraud_detection.cli import app
from fraud_detection.monitoring.report import render_monitoring_report, summary_rows
from fraud_detection.monitoring.timeline import collect_history, read_result_lines
from fraud_detection.report_cli import EXIT_USAGE


def stamp(text: str) -> str:
    return datetime.fromisoformat(text).strftime("%Y-%m-%d %H:%M:%S UTC")


def images(page: str) -> list[str]:
    found = re.findall(r"<figure><img alt='[^']+' src='data:image/png;base64,[^']+'>", page)
    assert len(found) == page.count("<figure>") == page.count("<img ")
    return found


def expected(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The summary's figures, computed here from the records."""
    drift = unique_windows(records, "feature_drift")
    drifted = sorted((r for r in drift.values() if r["is_drift"]), key=lambda r: r["start"])
    retrains = {json.dumps(r, sort_keys=True): r for r in records if r["kind"] == "retrain"}
    deployed = [r for r in retrains.values() if r.get("outcome") == "deployed"]
    return {
        "drift": f"{len(drifted)} of {len(drift)} tested windows drifted",
        "first": f"{stamp(drifted[0]['start'])} (window {drifted[0]['window_id']}",
        "triggers": f"{sum(r['event'] == 'started' for r in retrains.values())} started",
        "promotions": [f"v1 → {r['new_model_version']} at {stamp(r['at'])}" for r in deployed],
        "performance": f"{len(unique_windows(records, 'performance'))} (",
    }


def test_the_report_is_self_contained_and_its_summary_follows_from_the_records(
    tmp_path: Path,
) -> None:
    records = loop_stream()
    read = read_result_lines([write_stream(tmp_path / "loop.jsonl", records)])
    out = render_monitoring_report(
        read.records, tmp_path / "out" / "report.html", title="Loop", bad_lines=read.bad_lines
    )
    page = out.read_text()
    assert not re.search(r"(?:src|href)\s*=\s*['\"](?!data:)", page)
    assert "http://" not in page and "https://" not in page and "<script" not in page
    figures = expected(records)
    assert len(images(page)) == 3  # drift heat map, performance, alert volume
    summary = dict(summary_rows(collect_history(read.records, read.bad_lines)))
    assert summary["Drift windows"].startswith(figures["drift"])
    assert summary["First drift"].startswith(figures["first"])
    assert summary["Retraining triggers"].startswith(figures["triggers"])
    assert summary["Promotions"] == "; ".join(figures["promotions"])
    assert summary["Performance windows"].startswith(figures["performance"])
    duplicates = len(records) - len({json.dumps(r, sort_keys=True) for r in records})
    assert f"{duplicates} duplicates collapsed" in summary["Input"]
    assert "heartbeat (1)" in summary["Input"]
    for text in (*summary.values(), read.bad_lines[0].where, read.bad_lines[0].reason):
        assert text.replace("'", "&#x27;") in page
    assert "1 input lines or records could not be read" in page


def test_duplicates_and_superseded_revisions_change_nothing_but_the_input_counts() -> None:
    records = loop_stream()
    unique = [
        *unique_windows(records, "feature_drift").values(),
        *unique_windows(records, "performance").values(),
        *{json.dumps(r, sort_keys=True): r for r in records if r["kind"] == "retrain"}.values(),
    ]
    with_copies = dict(summary_rows(collect_history(records)))
    without = dict(summary_rows(collect_history(unique)))
    assert with_copies.pop("Input") != without.pop("Input")
    assert with_copies == without
    assert "0 duplicates collapsed; 0 superseded" in summary_rows(collect_history(unique))[-1][1]


def capture(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Per saved figure: the x of every vertical line per axes, titles, labels, smallest font."""
    seen: list[dict[str, Any]] = []
    lines: dict[int, list[float]] = {}
    axvline, savefig = Axes.axvline, Figure.savefig

    def record_axvline(self: Axes, x: float = 0, *args: Any, **kwargs: Any) -> Any:
        lines.setdefault(id(self), []).append(float(x))
        return axvline(self, x, *args, **kwargs)

    def record_savefig(self: Figure, *args: Any, **kwargs: Any) -> Any:
        self.canvas.draw()
        texts = [t for t in self.findobj(Text) if t.get_visible() and t.get_text().strip()]
        plots = [a for a in self.axes if a.get_label() != "<colorbar>"]
        seen.append(
            {
                "lines": [lines.get(id(a), []) for a in plots if id(a) in lines],
                "titles": [a.get_title() for a in self.axes if a.get_title()],
                "xlabels": [a.get_xlabel() for a in self.axes if a.get_xlabel()],
                "xticks": [t.get_text() for a in plots for t in a.get_xticklabels()],
                "font": min(t.get_fontsize() for t in texts),
            }
        )
        return savefig(self, *args, **kwargs)

    monkeypatch.setattr(Axes, "axvline", record_axvline)
    monkeypatch.setattr(Figure, "savefig", record_savefig)
    return seen


def test_every_chart_is_titled_dated_and_marks_every_run_and_promotion(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    records = loop_stream()
    seen = capture(monkeypatch)
    render_monitoring_report(records, tmp_path / "report.html")
    retrains = {json.dumps(r, sort_keys=True): r for r in records if r["kind"] == "retrain"}
    marked = sum(r["event"] != "suppressed" for r in retrains.values()) + len(
        collect_history(records).promotions
    )
    assert len(seen) == 3
    for chart in seen:
        assert chart["titles"] and chart["xlabels"] and chart["font"] >= 9
        assert chart["lines"] and all(len(xs) == marked for xs in chart["lines"])
        assert any(re.search(r"\d", tick) for tick in chart["xticks"])
    heatmap, performance, _ = seen
    assert len(performance["lines"]) == 3  # recall, precision and F1, each marked
    # In the heat map a run's line sits between the columns of the windows around it.
    drift = sorted(unique_windows(records, "feature_drift").values(), key=lambda r: r["start"])
    trigger = next(r for r in retrains.values() if r["event"] == "started")
    before = sum(1 for r in drift if r["end"] < trigger["at"])
    assert any(before - 0.5 <= x <= before + 0.5 for x in heatmap["lines"][0])


@pytest.mark.parametrize("keep", ["feature_drift", "performance", "none"])
def test_the_page_has_the_charts_it_has_data_for(tmp_path: Path, keep: str) -> None:
    records = [r for r in loop_stream() if r["kind"] in (keep, "retrain")]
    page = render_monitoring_report(records, tmp_path / "report.html").read_text()
    drift = unique_windows(records, "feature_drift")
    charts = int(bool(drift)) + 2 * int(bool(unique_windows(records, "performance")))
    assert len(images(page)) == charts == {"feature_drift": 1, "performance": 2, "none": 0}[keep]
    if keep == "none":
        assert "nothing to chart" in page and "promoted v1 → v2" in page


# ---------------------------------------------------------------------------------- command
def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["monitor-report", *args], env={"COLUMNS": "200"})
    return result.exit_code, result.output


def test_the_command_writes_the_report_and_prints_the_timeline(tmp_path: Path) -> None:
    records = loop_stream()
    half = len(records) // 2
    first = write_stream(tmp_path / "a.jsonl", records[:half])
    second = write_stream(tmp_path / "b.jsonl", records[half:], bad_line=False)
    out = tmp_path / "reports" / "loop.html"
    code, output = invoke(
        "--results", str(first), "--results", str(second), "--out", str(out), "--timeline"
    )
    assert code == 0, output
    history = collect_history(records)
    assert (
        f"wrote {out}: {len(history.drift)} drift windows ({len(history.drift_windows)} drifted), "
        f"{len(history.performance)} performance windows" in output
    )
    assert "skipped 1 unreadable lines or records" in output and f"{first}:" in output
    assert len(images(out.read_text())) == 3
    timeline = output[: output.index("wrote ")]
    assert timeline.index("retraining triggered") < timeline.index("promoted v1 → v2")
    times = re.findall(r"^│ (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) ", timeline, flags=re.MULTILINE)
    assert len(times) == len(history.drift) + len(history.performance) + len(
        history.retrains
    ) + len(history.promotions)
    assert times == sorted(times)


def test_the_command_names_a_missing_or_wrong_argument(tmp_path: Path) -> None:
    results = write_stream(tmp_path / "loop.jsonl", loop_stream()[:5])
    missing = tmp_path / "nope.jsonl"
    code, output = invoke("--results", str(results), "--results", str(missing))
    assert (code, output.strip()) == (EXIT_USAGE, f"error: --results: {missing}: no such file")
    code, output = invoke("--results", str(tmp_path), "--out", str(tmp_path / "r.html"))
    assert code == EXIT_USAGE and f"error: --results: {tmp_path}: is a directory" in output
    code, output = invoke("--results", str(results), "--out", str(tmp_path))
    assert code == EXIT_USAGE and f"error: --out: {tmp_path}: is a directory" in output
    code, output = invoke("--out", str(tmp_path / "r.html"))
    assert code == EXIT_USAGE and "--results" in output
    assert not (tmp_path / "r.html").exists()


def test_the_command_warns_when_there_is_nothing_to_report(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"kind": "heartbeat"}\n')
    code, output = invoke("--results", str(empty), "--out", str(tmp_path / "r.html"))
    assert code == 0 and "no drift, performance or retraining records" in output
    assert "nothing to chart" in (tmp_path / "r.html").read_text()
