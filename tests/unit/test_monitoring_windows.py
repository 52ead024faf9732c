"""Tumbling windows of one partition: closed by count and by the records' own time, versions
kept apart, skipped records accounted, and the same windows re-formed from a commit point."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fraud_detection.features import FEATURE_NAMES
from fraud_detection.monitoring.reference import DriftReference
from fraud_detection.monitoring.windows import (
    CLOSED_BY_SIZE,
    CLOSED_BY_SPAN,
    ClosedWindow,
    Observation,
    PartitionWindows,
    WindowConfig,
)

START = 1_700_000_000 * 1_000_000  # 2023-11-14T22:13:20Z, in microseconds


def reference(version: str = "v1") -> DriftReference:
    """A small in-memory reference (the windows only carry it along)."""
    features = np.zeros((3, len(FEATURE_NAMES)))
    return DriftReference(version, FEATURE_NAMES, features, None, Path("memory"))


REFERENCES = {"v1": reference("v1"), "v2": reference("v2")}


def observation(offset: int, seconds: float = 0.0, version: str = "v1") -> Observation:
    """A valid record at ``offset``, ``seconds`` after START; its value encodes the offset."""
    values = np.full(len(FEATURE_NAMES), float(offset))
    return Observation(
        offset,
        f"event-{offset}",
        START + int(seconds * 1e6),
        REFERENCES[version],
        values,
        score=offset / 1e6,
    )


def feed(windows: PartitionWindows, offsets: range, step_s: float = 1.0) -> list[ClosedWindow]:
    """Add a valid record at each offset, ``step_s`` seconds apart; the windows closed."""
    closed = []
    for offset in offsets:
        closed += windows.add(observation(offset, offset * step_s))
    return closed


def test_a_window_closes_when_it_holds_size_records() -> None:
    windows = PartitionWindows("mirror", 3, WindowConfig(size=4, max_span_s=3600))
    closed = feed(windows, range(10))

    assert [(w.first_offset, w.last_offset, w.closed_by) for w in closed] == [
        (0, 3, CLOSED_BY_SIZE),
        (4, 7, CLOSED_BY_SIZE),
    ]
    assert all(w.topic == "mirror" and w.partition == 3 and w.records == 4 for w in closed)
    (part,) = closed[1].slices
    assert part.values[:, 0].tolist() == [4.0, 5.0, 6.0, 7.0]  # the records, in order
    assert part.scores.tolist() == [4e-6, 5e-6, 6e-6, 7e-6]
    assert part.times.tolist() == [START + s * 1_000_000 for s in (4, 5, 6, 7)]
    assert windows.open_records == 2  # 8 and 9 wait in the open window
    assert windows.commit_offset == 8, "a restart must re-read the open window from its start"
    assert windows.next_offset == 10


def test_a_record_past_the_span_closes_the_window_and_opens_the_next() -> None:
    windows = PartitionWindows("mirror", 0, WindowConfig(size=100, max_span_s=60))
    closed = []
    for offset, seconds in [(0, 0), (1, 30), (2, 59.999), (3, 60), (4, 61), (5, 119), (6, 120)]:
        closed += windows.add(observation(offset, seconds))

    assert [(w.first_offset, w.last_offset, w.closed_by, w.records) for w in closed] == [
        (0, 2, CLOSED_BY_SPAN, 3),  # 60 s after the first record is past the span
        (3, 5, CLOSED_BY_SPAN, 3),  # the trigger opened this window: its span starts at 60 s
    ]
    assert windows.commit_offset == 6  # the second trigger's window is open


def test_span_is_measured_in_the_records_own_time_and_late_records_stay() -> None:
    """A record older than the window's first (out of order) joins the window; only the
    records' timestamps matter, so a replay hours later cuts the same windows."""
    windows = PartitionWindows("mirror", 0, WindowConfig(size=100, max_span_s=60))
    closed = []
    for offset, seconds in [(0, 100), (1, 20), (2, 159), (3, 10), (4, 160)]:
        closed += windows.add(observation(offset, seconds))

    (window,) = closed
    assert (window.first_offset, window.last_offset, window.records) == (0, 3, 4)
    (part,) = window.slices
    assert sorted(part.times.tolist()) == [START + s * 1_000_000 for s in (10, 20, 100, 159)]


def test_versions_in_one_window_are_kept_apart_and_counted_together() -> None:
    windows = PartitionWindows("mirror", 0, WindowConfig(size=5, max_span_s=3600))
    versions = ["v1", "v2", "v1", "v1", "v2"]
    closed = []
    for offset, version in enumerate(versions):
        closed += windows.add(observation(offset, offset, version))

    (window,) = closed
    assert window.records == 5
    assert [(part.model_version, part.size) for part in window.slices] == [("v1", 3), ("v2", 2)]
    assert window.slices[1].values[:, 0].tolist() == [1.0, 4.0]


def test_skipped_records_inside_a_window_are_counted_in_it_between_windows_in_none() -> None:
    windows = PartitionWindows("mirror", 0, WindowConfig(size=3, max_span_s=3600))
    windows.skip(0, "not_json")  # before any window: counted in none
    windows.add(observation(1))
    windows.skip(2, "not_json")
    windows.skip(3, "missing_features")
    windows.add(observation(4))
    windows.skip(5, "not_json")
    (window,) = windows.add(observation(6))
    windows.skip(7, "unknown_model_version")  # after the window closed: in none

    assert (window.first_offset, window.last_offset) == (1, 6)
    assert window.skipped == {"missing_features": 1, "not_json": 2}
    assert windows.commit_offset == 8, "skipped records outside a window need no re-reading"


def test_skipped_records_after_the_last_record_of_a_span_closed_window_are_in_none() -> None:
    windows = PartitionWindows("mirror", 0, WindowConfig(size=10, max_span_s=60))
    windows.add(observation(0, 0))
    windows.skip(1, "not_json")  # a valid record of the window follows it: in the window
    windows.add(observation(2, 1))
    windows.skip(3, "not_json")  # the next valid record opens a new window: in none
    (window,) = windows.add(observation(4, 61))

    assert (window.first_offset, window.last_offset, window.skipped) == (0, 2, {"not_json": 1})
    assert windows.commit_offset == 4


def test_a_duplicate_event_is_refused_by_the_open_window() -> None:
    windows = PartitionWindows("mirror", 0, WindowConfig(size=10, max_span_s=3600))
    windows.add(observation(0))
    assert windows.contains("event-0") and not windows.contains("event-1")
    with pytest.raises(ValueError, match="event-0 is already in the open window"):
        windows.add(observation(0))


def test_a_restart_from_the_commit_offset_reforms_the_same_windows() -> None:
    """Windows depend only on the records from the commit offset on: a second reader started
    there (after a crash) closes exactly the windows the first one had not yet closed."""
    rng = np.random.default_rng(5)
    records = []
    seconds = 0.0
    for offset in range(400):
        busy = (offset // 60) % 2 == 0  # busy stretches fill windows, quiet ones time out
        seconds += float(rng.exponential(2.0 if busy else 40.0))
        records.append(observation(offset, seconds, "v1" if rng.random() < 0.8 else "v2"))
    config = WindowConfig(size=50, max_span_s=600)

    def summary(window: ClosedWindow) -> tuple[object, ...]:
        return (
            window.first_offset,
            window.last_offset,
            window.closed_by,
            tuple((part.model_version, part.values[:, 0].tolist()) for part in window.slices),
        )

    first = PartitionWindows("mirror", 0, config)
    before_crash = []
    for record in records[:237]:
        before_crash += first.add(record)
    assert {window.closed_by for window in before_crash} == {CLOSED_BY_SIZE, CLOSED_BY_SPAN}
    restart_at = first.commit_offset
    assert restart_at is not None and restart_at < 237

    whole = PartitionWindows("mirror", 0, config)
    everything = [summary(w) for record in records for w in whole.add(record)]
    second = PartitionWindows("mirror", 0, config)
    after_restart = [summary(w) for record in records[restart_at:] for w in second.add(record)]

    assert [summary(w) for w in before_crash] + after_restart == everything


@pytest.mark.parametrize(
    ("size", "span", "message"),
    [
        (1, 60.0, "window size: must be an integer >= 2, got 1"),
        (10, 0.0, "max span: must be a positive number of seconds, got 0.0"),
        (10, float("inf"), "max span: must be a positive number of seconds, got inf"),
    ],
)
def test_window_settings_are_checked(size: int, span: float, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        WindowConfig(size=size, max_span_s=span)


def test_memory_is_one_window_per_partition() -> None:
    windows = PartitionWindows("mirror", 0, WindowConfig(size=100, max_span_s=3600))
    closed = feed(windows, range(1_050), step_s=0.5)
    assert len(closed) == 10
    assert windows.open_records == 50  # only the open window is held
