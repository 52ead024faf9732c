"""The join of labelled outcomes with the scores the transactions got, bounded in time and size.

The mirror says how each transaction was scored; the labels topic says, days later, whether it
was fraud. :class:`LabelJoin` keeps the scored transactions by ``transaction_id`` until their
label arrives (and after, so a duplicate is recognised and a changed label corrects the first),
and the labels whose transaction the mirror has not delivered yet (the two topics are read
side by side, and either may be behind).

Bounded:

* in time: scored transactions are held in buckets of transaction time (the performance
  windows' length). A bucket is dropped as a whole once its end is ``horizon`` or more before
  the join's clock (the latest transaction time seen on the mirror); the transactions in it
  that never got a label are counted ``scores_expired``. A score or a label (with its
  ``timestamp``) for a dropped bucket is too late: counted, never held;
* in size: at most ``max_scores`` scored transactions (the oldest bucket's first ones go first,
  counted ``scores_evicted``) and ``max_labels`` waiting labels (the first waiting goes first,
  counted ``unmatched``); a waiting label also goes, counted ``unmatched``, once its
  transaction's time (or, when the label does not carry it, its ``labelled_at``) is beyond the
  horizon.

Pure: events in, matches and counts out; no Kafka, no clock of its own. The whole state is a
JSON-able dict (:meth:`LabelJoin.to_state`, :meth:`LabelJoin.from_state`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from fraud_detection.streaming.labels import Label

#: What :meth:`LabelJoin.add_label` did with a label.
MATCHED = "matched"
CORRECTED = "corrected"
DUPLICATE = "duplicate"
PENDING = "pending"
EXPIRED = "expired"


@dataclass(frozen=True)
class ScoredTransaction:
    """One transaction as it was scored (what the mirror record says).

    Attributes:
        transaction_id: the transaction's id.
        model_version: the version that scored it.
        time_micros: the transaction's time, microseconds since the epoch (UTC).
        score: the fraud probability.
        flagged: whether it was served as fraud (score at or above the threshold).
        threshold: the deployed threshold it was compared with.
    """

    transaction_id: str
    model_version: str
    time_micros: int
    score: float
    flagged: bool
    threshold: float


@dataclass
class JoinEntry:
    """A scored transaction held by the join, with its label once known."""

    model_version: str
    time_micros: int
    score: float
    flagged: bool
    threshold: float
    label: int | None = None
    labelled_at_micros: int | None = None

    def to_list(self) -> list[Any]:
        """Compact JSON form (a list, in field order)."""
        return [getattr(self, f.name) for f in fields(self)]


@dataclass(frozen=True)
class LabelChange:
    """A transaction's label became known, or changed: what its window must count.

    ``previous`` is the label counted before (None: the transaction was not labelled yet).
    """

    transaction_id: str
    entry: JoinEntry
    previous: int | None
    label: int
    labelled_at_micros: int


@dataclass
class JoinStats:
    """What the join did, since its state began (persisted with it).

    Attributes:
        scores: scored transactions accepted.
        duplicate_scores: a transaction scored again (the mirror may write a record twice).
        late_scores: scored transactions already beyond the horizon when they arrived.
        scores_expired: accepted transactions dropped at the horizon without a label.
        scores_evicted: accepted transactions dropped by the ``max_scores`` cap.
        labels: labels offered.
        matched: labels that labelled a transaction (now, or when its score arrived).
        corrected: labels that changed a transaction's label.
        duplicates: labels that repeated a transaction's label (ignored).
        unmatched: waiting labels dropped (their transaction never arrived within the horizon,
            or the ``max_labels`` cap).
        expired: labels of a transaction beyond the horizon (its window is final).
    """

    scores: int = 0
    duplicate_scores: int = 0
    late_scores: int = 0
    scores_expired: int = 0
    scores_evicted: int = 0
    labels: int = 0
    matched: int = 0
    corrected: int = 0
    duplicates: int = 0
    unmatched: int = 0
    expired: int = 0

    def to_dict(self) -> dict[str, int]:
        """The counts by name."""
        return asdict(self)


@dataclass
class _Waiting:
    label: int
    labelled_at_micros: int
    time_micros: int  # the transaction's time if the label carries it, else labelled_at


class LabelJoin:
    """Scored transactions and labels joined by ``transaction_id`` (see the module docstring).

    Args:
        bucket_micros: the length of a time bucket (the performance window), microseconds.
        horizon_micros: how far behind the clock a bucket may end before it is dropped.
        max_scores: scored transactions held at most.
        max_labels: waiting labels held at most.
    """

    def __init__(
        self,
        bucket_micros: int,
        horizon_micros: int,
        max_scores: int = 1_000_000,
        max_labels: int = 100_000,
    ) -> None:
        for name, value in (
            ("bucket_micros", bucket_micros),
            ("horizon_micros", horizon_micros),
            ("max_scores", max_scores),
            ("max_labels", max_labels),
        ):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: must be an integer >= 1, got {value!r}")
        self.bucket_micros = bucket_micros
        self.horizon_micros = horizon_micros
        self.max_scores = max_scores
        self.max_labels = max_labels
        self.clock_micros: int | None = None
        self.stats = JoinStats()
        self._buckets: dict[int, dict[str, JoinEntry]] = {}
        self._bucket_of: dict[str, int] = {}
        self._waiting: dict[str, _Waiting] = {}
        self._swept_cutoff: int | None = None

    # ------------------------------------------------------------------------------- sizes
    @property
    def scores_held(self) -> int:
        """Scored transactions held."""
        return len(self._bucket_of)

    @property
    def labels_waiting(self) -> int:
        """Labels waiting for their transaction's score."""
        return len(self._waiting)

    def bucket_start(self, time_micros: int) -> int:
        """The start of the bucket (window) holding ``time_micros``."""
        return time_micros - time_micros % self.bucket_micros

    @property
    def cutoff_micros(self) -> int | None:
        """Buckets ending at or before this are dropped (None until a score was seen)."""
        if self.clock_micros is None:
            return None
        return self.clock_micros - self.horizon_micros

    def is_expired(self, time_micros: int) -> bool:
        """Whether the bucket of ``time_micros`` is beyond the horizon."""
        cutoff = self.cutoff_micros
        return cutoff is not None and self.bucket_start(time_micros) + self.bucket_micros <= cutoff

    def get(self, transaction_id: str) -> JoinEntry | None:
        """The held entry of a transaction, or None."""
        bucket = self._bucket_of.get(transaction_id)
        return None if bucket is None else self._buckets[bucket][transaction_id]

    # ------------------------------------------------------------------------------- events
    def add_score(self, scored: ScoredTransaction) -> tuple[bool, LabelChange | None]:
        """Hold a scored transaction; return (accepted, the label that was waiting for it).

        Not accepted: a duplicate of a held transaction, or beyond the horizon (counted).
        """
        tx = scored.transaction_id
        if tx in self._bucket_of:
            self.stats.duplicate_scores += 1
            return False, None
        if self.clock_micros is None or scored.time_micros > self.clock_micros:
            self.clock_micros = scored.time_micros
        if self.is_expired(scored.time_micros):
            self.stats.late_scores += 1
            return False, None
        bucket = self.bucket_start(scored.time_micros)
        entry = JoinEntry(
            scored.model_version,
            scored.time_micros,
            scored.score,
            scored.flagged,
            scored.threshold,
        )
        self._buckets.setdefault(bucket, {})[tx] = entry
        self._bucket_of[tx] = bucket
        self.stats.scores += 1
        if len(self._bucket_of) > self.max_scores:
            self._evict_score()
        waiting = self._waiting.pop(tx, None)
        if waiting is None:
            return True, None
        if tx not in self._bucket_of:  # evicted at once: the cap is that tight
            self.stats.unmatched += 1
            return True, None
        return True, self._label(tx, entry, waiting.label, waiting.labelled_at_micros)

    def add_label(self, label: Label) -> tuple[str, LabelChange | None]:
        """Join a label; return what happened (:data:`MATCHED`, :data:`CORRECTED`,
        :data:`DUPLICATE`, :data:`PENDING` or :data:`EXPIRED`) and the change to count, if any.
        """
        self.stats.labels += 1
        tx = label.transaction_id
        entry = self.get(tx)
        if entry is not None:
            if entry.label == label.is_fraud:
                self.stats.duplicates += 1
                return DUPLICATE, None
            change = self._label(tx, entry, label.is_fraud, label.labelled_at_micros)
            return (MATCHED if change.previous is None else CORRECTED), change
        if label.timestamp_micros is not None and self.is_expired(label.timestamp_micros):
            self.stats.expired += 1
            return EXPIRED, None
        waiting = self._waiting.get(tx)
        if waiting is not None and waiting.label == label.is_fraud:
            self.stats.duplicates += 1
            return DUPLICATE, None
        self._waiting.pop(tx, None)  # a changed label replaces the waiting one, at the end
        self._waiting[tx] = _Waiting(
            label.is_fraud,
            label.labelled_at_micros,
            label.timestamp_micros
            if label.timestamp_micros is not None
            else label.labelled_at_micros,
        )
        if len(self._waiting) > self.max_labels:
            self._waiting.pop(next(iter(self._waiting)))
            self.stats.unmatched += 1
        return PENDING, None

    def _label(self, tx: str, entry: JoinEntry, label: int, labelled_at: int) -> LabelChange:
        previous = entry.label
        entry.label = label
        if entry.labelled_at_micros is None or labelled_at > entry.labelled_at_micros:
            entry.labelled_at_micros = labelled_at
        if previous is None:
            self.stats.matched += 1
        else:
            self.stats.corrected += 1
        return LabelChange(tx, entry, previous, label, labelled_at)

    def _evict_score(self) -> None:
        oldest = min(self._buckets)
        bucket = self._buckets[oldest]
        tx = next(iter(bucket))
        entry = bucket.pop(tx)
        del self._bucket_of[tx]
        if not bucket:
            del self._buckets[oldest]
        if entry.label is None:
            self.stats.scores_evicted += 1

    def expire(self) -> list[int]:
        """Drop what is beyond the horizon; return the starts of the buckets dropped.

        Cheap when nothing can have expired: the waiting labels are swept only when the cutoff
        crosses a bucket boundary.
        """
        cutoff = self.cutoff_micros
        if cutoff is None:
            return []
        aligned = self.bucket_start(cutoff)
        dropped = [start for start in self._buckets if start + self.bucket_micros <= cutoff]
        for start in sorted(dropped):
            for tx, entry in self._buckets.pop(start).items():
                del self._bucket_of[tx]
                if entry.label is None:
                    self.stats.scores_expired += 1
        if self._swept_cutoff != aligned:
            self._swept_cutoff = aligned
            old = [tx for tx, waiting in self._waiting.items() if waiting.time_micros < aligned]
            for tx in old:
                del self._waiting[tx]
            self.stats.unmatched += len(old)
        return sorted(dropped)

    def entries(self) -> Iterator[tuple[str, JoinEntry]]:
        """Every held scored transaction, by bucket."""
        for start in sorted(self._buckets):
            yield from self._buckets[start].items()

    # ------------------------------------------------------------------------------- state
    def to_state(self) -> dict[str, Any]:
        """The whole join as a JSON-able dict."""
        return {
            "bucket_micros": self.bucket_micros,
            "horizon_micros": self.horizon_micros,
            "clock_micros": self.clock_micros,
            "stats": self.stats.to_dict(),
            "scores": {
                str(start): {tx: entry.to_list() for tx, entry in bucket.items()}
                for start, bucket in self._buckets.items()
            },
            "waiting": {
                tx: [w.label, w.labelled_at_micros, w.time_micros]
                for tx, w in self._waiting.items()
            },
        }

    @classmethod
    def from_state(
        cls,
        state: Mapping[str, Any],
        horizon_micros: int,
        max_scores: int = 1_000_000,
        max_labels: int = 100_000,
    ) -> LabelJoin:
        """A join from :meth:`to_state`'s dict, with the horizon and caps given now.

        Raises:
            ValueError: naming the part of the state that is malformed.
        """
        try:
            join = cls(int(state["bucket_micros"]), horizon_micros, max_scores, max_labels)
            clock = state["clock_micros"]
            join.clock_micros = None if clock is None else int(clock)
            join.stats = JoinStats(**{k: int(v) for k, v in state["stats"].items()})
            for start, bucket in state["scores"].items():
                entries = {tx: JoinEntry(*values) for tx, values in bucket.items()}
                join._buckets[int(start)] = entries
                join._bucket_of.update(dict.fromkeys(entries, int(start)))
            join._waiting = {tx: _Waiting(*values) for tx, values in state["waiting"].items()}
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"join state: malformed ({type(exc).__name__}: {exc})") from None
        return join


__all__ = [
    "CORRECTED",
    "DUPLICATE",
    "EXPIRED",
    "MATCHED",
    "PENDING",
    "JoinEntry",
    "JoinStats",
    "LabelChange",
    "LabelJoin",
    "ScoredTransaction",
]
