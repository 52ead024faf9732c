"""Tumbling windows over one partition's records: by count, and by the records' own time.

A window opens at a partition's first valid record after the previous window and closes

* when it holds :attr:`WindowConfig.size` valid records (``closed_by="size"``), or
* when a record arrives whose transaction time is :attr:`WindowConfig.max_span_s` or more after
  the window's first record (``closed_by="span"``); that record opens the next window.

Time is the transactions' own (the record's ``timestamp``), never the clock of the machine
that reads them: a replay of last month's traffic, a monitor that catches up after a pause and
a restarted one all cut the stream at the same records. So every boundary depends only on the
records from the window's first offset on, in offset order, which is what makes a restart exact:
the monitor commits a partition's offset only up to its open window's first record (see
:attr:`PartitionWindows.commit_offset`), and a restart re-reads from there and forms the very
same window. The price of event time: a partition that falls silent keeps its last window open
(nothing is lost: it closes when traffic resumes, or is re-formed after a restart).

A record earlier than the window's first (out of order) stays in the window. Records of several
model versions in one window (a canary, a switch) are kept apart as :class:`VersionSlice` s, each
tested against its own version's reference; the window's size counts them all, so memory stays
bounded by one window per partition. Skipped records between a window's first and last record
are counted in the window (:attr:`ClosedWindow.skipped`); those between two windows in none.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from fraud_detection.monitoring.reference import DriftReference

CLOSED_BY_SIZE = "size"
CLOSED_BY_SPAN = "span"
DEFAULT_WINDOW_SIZE = 1_000
DEFAULT_MAX_SPAN_S = 3_600.0
_MICROS = 1_000_000


@dataclass(frozen=True)
class WindowConfig:
    """How windows are cut.

    Attributes:
        size: valid records per window (all model versions together).
        max_span_s: the longest a window lasts, in transaction time (seconds).
    """

    size: int = DEFAULT_WINDOW_SIZE
    max_span_s: float = DEFAULT_MAX_SPAN_S

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 2:
            raise ValueError(f"window size: must be an integer >= 2, got {self.size!r}")
        if not self.max_span_s > 0 or self.max_span_s == float("inf"):
            raise ValueError(
                f"max span: must be a positive number of seconds, got {self.max_span_s!r}"
            )


@dataclass(frozen=True)
class Observation:
    """One valid record, its features in its version's reference order.

    Attributes:
        offset: the record's offset in its partition.
        event_id: its CloudEvents id (one per transaction).
        time_micros: the transaction's time.
        reference: the drift reference of the record's model version.
        values: the features named by ``reference.feature_names``, in that order.
        score: the model's fraud probability.
    """

    offset: int
    event_id: str
    time_micros: int
    reference: DriftReference
    values: np.ndarray
    score: float

    @property
    def model_version(self) -> str:
        """The version that scored the transaction."""
        return self.reference.model_version


@dataclass(frozen=True)
class VersionSlice:
    """The records of one model version in a closed window.

    Attributes:
        reference: the version's drift reference.
        values: one row per record, columns ``reference.feature_names``.
        scores: the records' fraud probabilities.
        times: the records' transaction times (microseconds since the epoch).
    """

    reference: DriftReference
    values: np.ndarray
    scores: np.ndarray
    times: np.ndarray

    @property
    def model_version(self) -> str:
        """The version these records were scored by."""
        return self.reference.model_version

    @property
    def size(self) -> int:
        """The number of records."""
        return int(self.values.shape[0])


@dataclass(frozen=True)
class ClosedWindow:
    """A window that closed: where it is in the partition and what it holds.

    Attributes:
        topic: the topic read.
        partition: the partition.
        first_offset: the offset of its first record.
        last_offset: the offset of its last valid record.
        closed_by: :data:`CLOSED_BY_SIZE` or :data:`CLOSED_BY_SPAN`.
        records: its valid records, all versions.
        skipped: records skipped between its first and last offset, by reason.
        slices: its records by model version, in order of first appearance.
    """

    topic: str
    partition: int
    first_offset: int
    last_offset: int
    closed_by: str
    records: int
    skipped: Mapping[str, int]
    slices: tuple[VersionSlice, ...]


@dataclass
class _OpenSlice:
    reference: DriftReference
    values: list[np.ndarray] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    times: list[int] = field(default_factory=list)

    def close(self) -> VersionSlice:
        width = len(self.reference.feature_names)
        values = np.vstack(self.values) if self.values else np.empty((0, width))
        return VersionSlice(
            self.reference, values, np.asarray(self.scores), np.asarray(self.times, np.int64)
        )


@dataclass
class _OpenWindow:
    first_offset: int
    start_micros: int
    last_offset: int = -1
    records: int = 0
    event_ids: set[str] = field(default_factory=set)
    slices: dict[str, _OpenSlice] = field(default_factory=dict)
    skipped: collections.Counter[str] = field(default_factory=collections.Counter)


class PartitionWindows:
    """The window state of one partition: records in, closed windows out (pure, no I/O).

    Feed every record of the partition in offset order, each exactly once: valid ones to
    :meth:`add`, skipped ones to :meth:`skip`. At most one window is open at a time.
    """

    def __init__(self, topic: str, partition: int, config: WindowConfig | None = None) -> None:
        self.topic = topic
        self.partition = partition
        self.config = config or WindowConfig()
        self._open: _OpenWindow | None = None
        self._pending: collections.Counter[str] = collections.Counter()
        self._next_offset: int | None = None
        self._span_micros = int(self.config.max_span_s * _MICROS)

    @property
    def open_records(self) -> int:
        """Valid records in the open window (0 when none is open)."""
        return 0 if self._open is None else self._open.records

    @property
    def next_offset(self) -> int | None:
        """The offset after the last record fed, or None before the first."""
        return self._next_offset

    @property
    def commit_offset(self) -> int | None:
        """The offset a restart must read from so that no window is lost or cut differently:
        the open window's first record, else the offset after the last record fed."""
        return self._open.first_offset if self._open is not None else self._next_offset

    def add(self, observation: Observation) -> list[ClosedWindow]:
        """Add a valid record; the windows it closes (at most one, in practice).

        A record ``max_span_s`` or more after the open window's first record closes that
        window and opens the next; a record that fills the window closes it. A record whose
        event id is already in the open window is refused (:meth:`contains` checks first).
        """
        closed: list[ClosedWindow] = []
        window = self._open
        if self.contains(observation.event_id):
            raise ValueError(f"event {observation.event_id} is already in the open window")
        self._next_offset = observation.offset + 1
        if (
            window is not None
            and observation.time_micros - window.start_micros >= self._span_micros
        ):
            closed.append(self._close(CLOSED_BY_SPAN))
            window = None
        if window is None:
            window = self._open = _OpenWindow(observation.offset, observation.time_micros)
            self._pending.clear()
        window.skipped.update(self._pending)
        self._pending.clear()
        window.last_offset = observation.offset
        window.records += 1
        window.event_ids.add(observation.event_id)
        version = observation.model_version
        part = window.slices.get(version)
        if part is None:
            part = window.slices[version] = _OpenSlice(observation.reference)
        part.values.append(observation.values)
        part.scores.append(observation.score)
        part.times.append(observation.time_micros)
        if window.records >= self.config.size:
            closed.append(self._close(CLOSED_BY_SIZE))
        return closed

    def contains(self, event_id: str) -> bool:
        """Whether a record with this event id is in the open window."""
        return self._open is not None and event_id in self._open.event_ids

    def skip(self, offset: int, reason: str) -> None:
        """Count a record that cannot be used; it belongs to the open window only if a valid
        record follows it there."""
        self._next_offset = offset + 1
        if self._open is not None:
            self._pending[reason] += 1

    def _close(self, closed_by: str) -> ClosedWindow:
        window = self._open
        assert window is not None
        self._open = None
        self._pending.clear()
        return ClosedWindow(
            topic=self.topic,
            partition=self.partition,
            first_offset=window.first_offset,
            last_offset=window.last_offset,
            closed_by=closed_by,
            records=window.records,
            skipped=dict(sorted(window.skipped.items())),
            slices=tuple(part.close() for part in window.slices.values()),
        )
