"""The transformer's live state: what serving has learned, guarded against hostile input.

:class:`LiveState` owns the per-card and per-merchant feature state
(:class:`~fraud_detection.features.OnlineFeatureState`) and the retry map, and is the only way
a request changes them. A request goes through two steps:

1. :meth:`LiveState.admit` checks, without changing anything, that every transaction may be
   absorbed: its timestamp lies within the accepted range around the clock
   (:class:`TimePolicy`), and a ``transaction_id`` seen before comes with the same payload (an
   identical retry is answered as the first time; another payload under a known id is a
   conflict, 409). One refused transaction refuses the whole request, so a rejected request
   never changes the state.
2. :meth:`LiveState.absorb` computes the feature rows and absorbs the new transactions.

**The clock.** With the wall clock (``--clock wall``, live traffic) a timestamp must lie within
``[now - max_event_age, now + max_clock_skew]`` of this server's clock. With the event clock
(``--clock event``: replays, backfills, tests) the clock is the latest accepted timestamp
(initially the bundle snapshot's or the checkpoint's; within a request, the instances before),
and the same range applies around it, with a default skew of a day since a replayed stream may
be quiet for hours. Either way one transaction moves the clock by at most ``max_clock_skew``
(at most a day), so a far-future timestamp can neither move a card's windows nor erase a
merchant's history (the state keeps two days past its windows). The event clock trusts its
stream's order: a client sending many requests can walk it forward a skew at a time, so live
traffic uses the wall clock. Transactions out of order within
the range are placed at their own time (see ``OnlineFeatureState``).

**Labels** (:meth:`LiveState.apply_labels`, fed by the labels consumer,
:mod:`fraud_detection.serving.labels_consumer`) change merchant risk under the same lock, a
small batch at a time; each label is idempotent, so a re-read topic changes nothing. The
consumer's offsets go along (:attr:`LiveState.label_offsets`), so a checkpoint knows which
labels it includes and only those offsets are committed.

**Model switches** keep the live state: :meth:`adopt` takes from the new bundle's snapshot only
what it adds (cards never seen here, labels known at its training).

**Checkpoints**: :class:`Checkpointer` writes the live state to a state directory every
``interval`` seconds (when it changed) and at stop, from a background thread, through a forked
child (:func:`~fraud_detection.serving.checkpoint.write_in_background`): requests wait only for
the fork. A crash loses at most the transactions absorbed since the last checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fraud_detection.features import (
    HISTORY_MICROS,
    MICROS_PER_SECOND,
    OnlineFeatureState,
)
from fraud_detection.serving.checkpoint import (
    Checkpoint,
    Scored,
    checkpoint_payload,
    load_latest,
    write_in_background,
)
from fraud_detection.serving.mirror import iso_timestamp
from fraud_detection.serving.requests import Problem, RequestError, Transaction

if TYPE_CHECKING:
    from fraud_detection.streaming.labels import Label

log = logging.getLogger(__name__)

WALL_CLOCK = "wall"
EVENT_CLOCK = "event"
CLOCKS = (WALL_CLOCK, EVENT_CLOCK)
#: How far ahead of the clock a timestamp may be, by clock: a few minutes of drift between the
#: client's clock and this server's; a day for replays, whose streams may be quiet for hours.
DEFAULT_MAX_CLOCK_SKEW_S = {WALL_CLOCK: 300.0, EVENT_CLOCK: 86_400.0}
#: The feature state keeps history this much past its windows, so no admitted timestamp can
#: erase what the others need (``features.RETENTION_MARGIN_DAYS``).
MAX_CLOCK_SKEW_LIMIT_S = 86_400.0
#: The longest feature window: an older transaction could not change any feature.
DEFAULT_MAX_EVENT_AGE_S = HISTORY_MICROS / MICROS_PER_SECOND
#: Outcomes of :meth:`LiveState.apply_labels`: applied (by label value) or skipped (by reason).
LABEL_FRAUD = "fraud"
LABEL_LEGIT = "legit"
SKIP_UNKNOWN_TRANSACTION = "unknown_transaction"
SKIP_TOO_OLD = "too_old"
#: A label's partition, as ``(topic, partition)``, to the offset after the last one applied.
LabelOffsets = dict[tuple[str, int], int]


@dataclass(frozen=True)
class TimePolicy:
    """Which timestamps are accepted: a range around the clock.

    Attributes:
        clock: ``"wall"`` (this server's clock) or ``"event"`` (the latest accepted timestamp).
        max_clock_skew_s: how far ahead of the clock a timestamp may be (default by clock:
            :data:`DEFAULT_MAX_CLOCK_SKEW_S`; at most a day).
        max_event_age_s: how far behind the clock a timestamp may be (at most the longest
            feature window).
    """

    clock: str = WALL_CLOCK
    max_clock_skew_s: float | None = None
    max_event_age_s: float = DEFAULT_MAX_EVENT_AGE_S

    def __post_init__(self) -> None:
        if self.clock not in CLOCKS:
            raise ValueError(f"clock must be one of {CLOCKS}, got {self.clock!r}")
        if self.max_clock_skew_s is None:
            object.__setattr__(self, "max_clock_skew_s", DEFAULT_MAX_CLOCK_SKEW_S[self.clock])
        assert self.max_clock_skew_s is not None
        if not 0 <= self.max_clock_skew_s <= MAX_CLOCK_SKEW_LIMIT_S:
            raise ValueError(
                f"max_clock_skew must be within 0..{MAX_CLOCK_SKEW_LIMIT_S:g} s, "
                f"got {self.max_clock_skew_s:g}"
            )
        if not 0 < self.max_event_age_s <= DEFAULT_MAX_EVENT_AGE_S:
            raise ValueError(
                "max_event_age must be positive and at most the longest feature window "
                f"({DEFAULT_MAX_EVENT_AGE_S:g} s), got {self.max_event_age_s:g}"
            )

    def now_micros(self, features: OnlineFeatureState) -> int | None:
        """The clock: wall time, or the latest accepted timestamp (None before the first)."""
        if self.clock == WALL_CLOCK:
            return time.time_ns() // 1_000
        return features.last_timestamp_micros

    def problem(self, timestamp_micros: int, now_micros: int | None) -> str | None:
        """Why a timestamp is refused at clock ``now_micros``; None when it is accepted."""
        if now_micros is None:
            return None
        ahead = (timestamp_micros - now_micros) / MICROS_PER_SECOND
        skew = self.max_clock_skew_s
        assert skew is not None
        if ahead > skew:
            return (
                f"is {_duration(ahead)} ahead of the {self.clock} clock "
                f"({iso_timestamp(now_micros)}); at most {_duration(skew)} "
                "ahead is accepted"
            )
        if -ahead > self.max_event_age_s:
            return (
                f"is {_duration(-ahead)} behind the {self.clock} clock "
                f"({iso_timestamp(now_micros)}); at most {_duration(self.max_event_age_s)} "
                "behind is accepted"
            )
        return None


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7_200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172_800:
        return f"{seconds / 3_600:.0f} h"
    return f"{seconds / 86_400:.0f} days"


def _finite(row: list[float]) -> list[float]:
    """The row with any non-finite value replaced by 0 (features are finite for valid input;
    this keeps a scoring request from ever failing on a feature)."""
    if all(map(math.isfinite, row)):
        return row
    log.error("a feature row had non-finite values; they are scored as 0: %s", row)
    return [value if math.isfinite(value) else 0.0 for value in row]


class LiveState:
    """Feature state, retry map and clock of a running transformer (see the module docstring).

    Args:
        features: the state to start from (a bundle snapshot or a checkpoint's).
        policy: the accepted time range.
        seen: the retry map to start from (a checkpoint's), or empty.
        dedup_size: how many recent transaction ids the retry map remembers (0: none).
    """

    def __init__(
        self,
        features: OnlineFeatureState,
        policy: TimePolicy | None = None,
        seen: OrderedDict[str, Scored] | None = None,
        dedup_size: int = 100_000,
    ) -> None:
        self.features = features
        self.policy = policy or TimePolicy()
        self.seen: OrderedDict[str, Scored] = seen if seen is not None else OrderedDict()
        self.dedup_size = dedup_size
        self.lock = threading.Lock()
        #: Increases with every absorbed transaction, applied label and adopted snapshot.
        self.changes = 0
        #: Labels topic positions after the labels applied so far (see :meth:`apply_labels`).
        self.label_offsets: LabelOffsets = {}

    def __len__(self) -> int:
        return len(self.features)

    # ------------------------------------------------------------------ request path
    def admit(self, transactions: Sequence[Transaction], where: str = "instances") -> None:
        """Refuse the request unless every transaction may be absorbed; changes nothing.

        Problems are named as the validator names them: ``<where>[<index>].<field>``.

        Raises:
            RequestError: 400 naming each timestamp out of range; 409 naming each known
                ``transaction_id`` sent with another payload (when those are all the problems).
        """
        now = self.policy.now_micros(self.features)
        out_of_range: list[Problem] = []
        conflicts: list[Problem] = []
        for index, tx in enumerate(transactions):
            known = self.seen.get(tx.transaction_id)
            if known is not None:
                differs = _differences(known, tx)
                if differs:
                    conflicts.append(
                        Problem(
                            f"{where}[{index}].transaction_id",
                            "was already scored with another "
                            + ", ".join(differs)
                            + "; a transaction id names one transaction (send a new id)",
                        )
                    )
                continue
            reason = self.policy.problem(tx.timestamp_micros, now)
            if reason is not None:
                out_of_range.append(Problem(f"{where}[{index}].timestamp", reason))
            elif self.policy.clock == EVENT_CLOCK and (now is None or tx.timestamp_micros > now):
                now = tx.timestamp_micros  # the stream moves on within the request too
        if out_of_range:
            raise RequestError(out_of_range + conflicts)
        if conflicts:
            raise RequestError(conflicts, status=409)

    def absorb(self, transactions: Sequence[Transaction]) -> list[list[float]]:
        """Feature rows of admitted transactions; absorbs the new ones (a retry: the same row).

        Also forgets a few cards and merchants that no admissible transaction can see any more,
        so memory follows recent activity, not every id ever sent.
        """
        rows = []
        seen = self.seen
        for tx in transactions:
            known = seen.get(tx.transaction_id)
            if known is not None:
                rows.append(known.features)
                continue
            row = _finite(
                self.features.process(tx.card_id, tx.merchant_id, tx.amount, tx.timestamp_micros)
            )
            self.changes += 1
            rows.append(row)
            if self.dedup_size > 0:
                seen[tx.transaction_id] = Scored(
                    tx.card_id, tx.merchant_id, tx.amount, tx.timestamp_micros, row, False
                )
                if len(seen) > self.dedup_size:
                    seen.popitem(last=False)
        now = self.policy.now_micros(self.features)
        if now is not None:
            oldest = now - int(self.policy.max_event_age_s * MICROS_PER_SECOND)
            self.features.forget_idle(oldest, limit=max(16, 2 * len(transactions)))
        return rows

    def score_features(
        self, transactions: Sequence[Transaction], where: str = "instances"
    ) -> list[list[float]]:
        """:meth:`admit` then :meth:`absorb`, atomically with respect to checkpoints and swaps."""
        with self.lock:
            self.admit(transactions, where)
            return self.absorb(transactions)

    def claim_mirror(self, transaction_id: str) -> bool:
        """Whether this transaction still has to be mirrored; marks it as mirrored.

        A retried transaction is mirrored once (the first time it was scored to the end).
        """
        known = self.seen.get(transaction_id)
        if known is None:
            return True  # not remembered (dedup off): mirror every time
        if known.mirrored:
            return False
        self.seen[transaction_id] = known._replace(mirrored=True)
        return True

    # ------------------------------------------------------------------ labels
    def apply_labels(
        self, labels: Sequence[Label], offsets: Mapping[tuple[str, int], int] | None = None
    ) -> Counter[str]:
        """Apply labels to merchant risk, atomically; returns how many had each outcome.

        A label's merchant and transaction time are its own ``merchant_id`` and ``timestamp``
        when it has them, else those the retry map remembers of its transaction; with neither
        it is skipped as :data:`SKIP_UNKNOWN_TRANSACTION`. One older than the state keeps is
        skipped as :data:`SKIP_TOO_OLD`. Every other label is applied (idempotently, see
        ``OnlineFeatureState.record_label``) and counted as :data:`LABEL_FRAUD` or
        :data:`LABEL_LEGIT`. ``offsets`` (the labels topic positions after these labels) are
        recorded in :attr:`label_offsets` under the same lock. Call with small batches: the
        request path waits for the lock.
        """
        outcomes: Counter[str] = Counter()
        with self.lock:
            features, seen = self.features, self.seen
            for label in labels:
                merchant, stamp = label.merchant_id, label.timestamp_micros
                if merchant is None or stamp is None:
                    known = seen.get(label.transaction_id)
                    if known is None:
                        outcomes[SKIP_UNKNOWN_TRANSACTION] += 1
                        continue
                    merchant = merchant if merchant is not None else known.merchant_id
                    stamp = stamp if stamp is not None else known.timestamp_micros
                if features.is_too_old_for_labels(stamp):
                    outcomes[SKIP_TOO_OLD] += 1
                    continue
                if features.record_label(merchant, stamp, label.is_fraud, label.transaction_id):
                    self.changes += 1
                outcomes[LABEL_FRAUD if label.is_fraud else LABEL_LEGIT] += 1
            if offsets:
                self.label_offsets.update(offsets)
        return outcomes

    @contextlib.contextmanager
    def hold(self, label_offsets: LabelOffsets) -> Iterator[None]:
        """Hold :attr:`lock`; on entry, copy :attr:`label_offsets` into ``label_offsets``."""
        with self.lock:
            label_offsets.update(self.label_offsets)
            yield

    # ------------------------------------------------------------------ switches, checkpoints
    def adopt(self, snapshot: OnlineFeatureState) -> None:
        """Take what a new bundle's snapshot adds (see ``OnlineFeatureState.adopt``)."""
        with self.lock:
            self.features.adopt(snapshot)
            self.changes += 1

    def payload(self, model_version: str | None) -> dict[str, Any]:
        """A checkpoint document of the current state; the caller holds :attr:`lock`."""
        return checkpoint_payload(self.features.to_dict(), self.seen, model_version)

    @classmethod
    def restore(
        cls,
        snapshot: OnlineFeatureState,
        state_dir: Path | None,
        policy: TimePolicy | None = None,
        dedup_size: int = 100_000,
    ) -> LiveState:
        """The live state to start serving with: the newest checkpoint in ``state_dir`` with
        the bundle snapshot adopted into it, or the snapshot alone."""
        checkpoint: Checkpoint | None = load_latest(state_dir) if state_dir else None
        if checkpoint is None:
            return cls(snapshot, policy, dedup_size=dedup_size)
        log.info(
            "resuming from checkpoint %s (%d cards, %d remembered transaction ids)",
            checkpoint.path,
            len(checkpoint.features),
            len(checkpoint.seen),
        )
        live = cls(checkpoint.features, policy, checkpoint.seen, dedup_size)
        live.features.adopt(snapshot)
        while dedup_size >= 0 and len(live.seen) > dedup_size:
            live.seen.popitem(last=False)
        return live


def _differences(known: Scored, tx: Transaction) -> list[str]:
    differs = []
    if known.card_id != tx.card_id:
        differs.append("card_id")
    if known.merchant_id != tx.merchant_id:
        differs.append("merchant_id")
    if known.amount != tx.amount:
        differs.append("amt")
    if known.timestamp_micros != tx.timestamp_micros:
        differs.append("timestamp")
    return differs


class Checkpointer:
    """Writes the live state to ``state_dir`` every ``interval_s`` (when it changed) and at stop.

    Args:
        live: the state to checkpoint.
        state_dir: where checkpoints go.
        interval_s: seconds between checkpoints.
        model_version: returns the model version being served (recorded in the checkpoint).
    """

    def __init__(
        self,
        live: Callable[[], LiveState | None],
        state_dir: Path,
        interval_s: float,
        model_version: Callable[[], str | None],
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"checkpoint interval must be positive, got {interval_s:g}")
        self._live = live
        self.state_dir = Path(state_dir)
        self.interval_s = interval_s
        self._model_version = model_version
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="state-checkpoint", daemon=True)
        self._written_changes: tuple[int, int] | None = None
        self._write_lock = threading.Lock()
        self.written = 0
        self.last_path: Path | None = None
        #: The labels topic positions the newest checkpoint includes (safe to commit).
        self.label_offsets: LabelOffsets = {}

    def start(self) -> Checkpointer:
        """Start the background thread; returns ``self``."""
        self._thread.start()
        return self

    def write(self, force: bool = False) -> Path | None:
        """Write a checkpoint now if the state changed since the last one (or ``force``)."""
        live = self._live()
        if live is None:
            return None
        with self._write_lock:
            marker = (id(live), live.changes)
            if not force and marker == self._written_changes:
                return None
            version = self._model_version()
            offsets: LabelOffsets = {}
            path = write_in_background(
                self.state_dir, lambda: live.payload(version), live.hold(offsets)
            )
            self._written_changes = marker
            self.written += 1
            self.last_path = path
            self.label_offsets = offsets
        log.debug("checkpoint written: %s", path)
        return path

    def _run(self) -> None:
        while not self._stopped.wait(self.interval_s):
            try:
                self.write()
            except Exception as exc:  # a full disk must not stop serving
                log.error("checkpoint to %s failed: %s", self.state_dir, exc)

    def stop(self) -> Path | None:
        """Stop the thread and write a final checkpoint; returns its path (None if unchanged)."""
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join()
        try:
            return self.write()
        except Exception as exc:
            log.error("final checkpoint to %s failed: %s", self.state_dir, exc)
            return None
