"""``fraud demo``'s own logic: its settings, and what it reads back from the loop's records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fraud_detection.cli import app
from fraud_detection.loop_demo import (
    DemoConfig,
    DemoPaths,
    TrafficGate,
    drift_by_version,
    drift_share,
    iso_micros,
    monitor_position,
    read_jsonl,
    runs_in_flight,
)


def drift(window: str, version: str, end: str, is_drift: bool, tested: bool = True) -> dict:
    return {
        "kind": "feature_drift",
        "window_id": window,
        "model_version": version,
        "start": end,
        "end": end,
        "tested": tested,
        "is_drift": is_drift,
        "drifted": ["log_amount"] if is_drift else [],
    }


def test_drift_windows_are_counted_per_version_once_each() -> None:
    records = [
        drift("a:0", "v1", "2026-03-01T01", False),
        drift("a:1", "v1", "2026-03-01T02", True),
        drift("a:1", "v1", "2026-03-01T02", True),  # written again after a restart
        drift("a:2", "v1", "2026-03-01T03", True, tested=False),
        drift("b:0", "v2", "2026-03-02T01", False),
        {"kind": "performance", "window_id": "p", "model_version": "v2"},
    ]
    versions = drift_by_version(records)
    assert list(versions) == ["v1", "v2"]
    assert versions["v1"] == {
        "tested": 2,
        "drifted": 1,
        "first": "2026-03-01T01",
        "last": "2026-03-01T02",
        "flagged": {"log_amount": 1},
    }
    assert versions["v2"]["tested"] == 1 and versions["v2"]["drifted"] == 0
    assert versions["v2"]["flagged"] == {}
    later = drift_by_version(records, since="2026-03-01T02")
    assert later["v1"]["tested"] == 1 and later["v1"]["drifted"] == 1
    assert drift_share(later["v1"]) == 1.0 and drift_share(None) is None


def test_runs_in_flight_come_from_the_trigger_events(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    assert runs_in_flight(events) == 0  # no file yet
    lines = [{"event": "started"}, {"event": "suppressed"}, {"event": "finished"}]
    lines += [{"event": "started"}]
    events.write_text("".join(json.dumps(line) + "\n" for line in lines) + '{"event": "fini')
    assert len(read_jsonl(events)) == 4  # the half-written last line is left out
    assert runs_in_flight(events) == 1


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"replay_days": 0}, "replay_days: must be in (0, days=82), got 0"),
        ({"drift_start_day": 10}, "drift_start_day: must fall in the replayed days (64..81)"),
        ({"rate": 0.0}, "rate: must be > 0, got 0.0"),
    ],
)
def test_bad_settings_are_named(changes: dict, message: str) -> None:
    with pytest.raises(ValueError) as raised:
        DemoConfig(**changes)
    assert message in str(raised.value)


def test_the_command_refuses_bad_settings_before_doing_anything(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--out", str(out), "--drift-start-day", "3"])
    assert result.exit_code == 2
    assert "drift_start_day: must fall in the replayed days" in result.output
    assert not out.exists()


def test_a_new_demo_clears_only_what_an_earlier_one_left(tmp_path: Path) -> None:
    from fraud_detection.loop_demo import DemoPaths

    paths = DemoPaths(tmp_path)
    for directory in (paths.registry / "versions", paths.runs / "initial", paths.logs):
        directory.mkdir(parents=True)
    for path in (paths.history, paths.results, paths.events, paths.report):
        path.write_text("old")
    mine = tmp_path / "notes.txt"
    mine.write_text("keep")
    paths.clear()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_the_traffic_holds_for_a_run_in_flight_and_for_a_monitor_that_trails(
    tmp_path: Path,
) -> None:
    paths = DemoPaths(tmp_path)
    gate = TrafficGate(paths, max_lag_s=12 * 3600)
    assert gate.reason() is None  # nothing sent yet
    summary = {"first_data_time": "2026-03-01T00:00:00Z", "last_data_time": "2026-03-01T10:00:00Z"}
    paths.replay_summary.write_text(json.dumps(summary))
    assert gate.reason() is None  # 10 h in, no window yet: within two windows
    paths.replay_summary.write_text(json.dumps({**summary, "last_data_time": "2026-03-01T13:00Z"}))
    assert gate.reason() == "monitor"
    window = drift("a:0", "v1", "2026-03-01T05:00:00Z", False)
    paths.results.write_text(json.dumps(window) + "\n" + '{"kind": "feature_dr')  # a partial line
    assert gate.reason() is None
    with paths.events.open("a") as events:
        events.write(json.dumps({"event": "started"}) + "\n")
    assert gate.reason() == "retraining"
    with paths.events.open("a") as events:
        events.write(json.dumps({"event": "finished"}) + "\n")
    assert gate.reason() is None
    with paths.results.open("a") as results:  # the partial line is completed later
        results.write('ift", "end": "2026-03-01T06:00:00Z"}\n')
    assert monitor_position(gate.results.read()) == iso_micros("2026-03-01T06:00:00Z")
