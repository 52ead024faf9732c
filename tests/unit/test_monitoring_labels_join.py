"""The join of labels with scores: matching in either order, duplicates, corrections, unknown
ids, the horizon and the caps, and the state's round trip."""

from __future__ import annotations

import orjson
import pytest

from fraud_detection.monitoring.labels_join import (
    CORRECTED,
    DUPLICATE,
    EXPIRED,
    MATCHED,
    PENDING,
    LabelJoin,
    ScoredTransaction,
)
from fraud_detection.streaming.labels import Label

DAY = 86_400 * 1_000_000
T0 = 20_000 * DAY  # a UTC midnight


def scored(tx: str, time: int, version: str = "v1", flagged: bool = False) -> ScoredTransaction:
    return ScoredTransaction(tx, version, time, 0.9 if flagged else 0.1, flagged, 0.5)


def label(tx: str, is_fraud: int, at: int, timestamp: int | None = None) -> Label:
    return Label(tx, is_fraud, at, timestamp_micros=timestamp)


def join(horizon_days: int = 3, **caps: int) -> LabelJoin:
    return LabelJoin(DAY, horizon_days * DAY, **caps)


def test_a_label_after_its_score_is_matched_once_and_a_repeat_is_a_duplicate() -> None:
    j = join()
    assert j.add_score(scored("a", T0 + 5)) == (True, None)
    outcome, change = j.add_label(label("a", 1, T0 + 2 * DAY))
    assert outcome == MATCHED and change is not None
    assert (change.previous, change.label, change.entry.model_version) == (None, 1, "v1")
    assert j.add_label(label("a", 1, T0 + 3 * DAY)) == (DUPLICATE, None)
    assert (j.stats.matched, j.stats.duplicates) == (1, 1)


def test_a_changed_label_is_a_correction_naming_the_previous_label() -> None:
    j = join()
    j.add_score(scored("a", T0))
    j.add_label(label("a", 0, T0 + DAY))
    outcome, change = j.add_label(label("a", 1, T0 + 2 * DAY))
    assert outcome == CORRECTED and change is not None and (change.previous, change.label) == (0, 1)
    assert j.get("a").label == 1 and j.get("a").labelled_at_micros == T0 + 2 * DAY


def test_a_label_before_its_score_waits_and_is_matched_when_the_score_arrives() -> None:
    j = join()
    assert j.add_label(label("b", 1, T0 + DAY)) == (PENDING, None)
    assert j.labels_waiting == 1
    assert j.add_label(label("b", 1, T0 + DAY)) == (DUPLICATE, None)  # waiting, same value
    accepted, change = j.add_score(scored("b", T0, flagged=True))
    assert accepted and change is not None and change.label == 1 and change.previous is None
    assert j.labels_waiting == 0 and j.stats.matched == 1


def test_a_duplicate_score_is_not_held_twice() -> None:
    j = join()
    assert j.add_score(scored("a", T0))[0]
    assert not j.add_score(scored("a", T0))[0]
    assert j.scores_held == 1 and j.stats.duplicate_scores == 1


def test_the_horizon_drops_whole_buckets_and_counts_the_unlabelled_and_the_unmatched() -> None:
    j = join(horizon_days=2)
    j.add_score(scored("old-1", T0 + 10))
    j.add_score(scored("old-2", T0 + 20))
    j.add_label(label("old-2", 0, T0 + DAY))
    j.add_label(label("ghost", 1, T0 + DAY // 2, timestamp=T0 + 30))  # never scored
    j.add_score(scored("new", T0 + 2 * DAY + 5))
    assert j.expire() == []  # day 0 ends at T0 + DAY > cutoff T0 + 5
    j.add_score(scored("newer", T0 + 3 * DAY))  # cutoff T0 + DAY: day 0 is beyond the horizon
    assert j.expire() == [T0]
    assert j.get("old-1") is None and j.get("new") is not None
    assert j.stats.scores_expired == 1  # old-2 had its label
    assert j.stats.unmatched == 1 and j.labels_waiting == 0
    # Late arrivals for the dropped day are counted, not held.
    assert j.add_score(scored("late", T0 + 99)) == (False, None) and j.stats.late_scores == 1
    assert j.add_label(label("late-2", 1, T0 + 4 * DAY, timestamp=T0 + 99)) == (EXPIRED, None)
    assert j.stats.expired == 1


def test_the_caps_bound_the_join_and_count_what_they_drop() -> None:
    j = join(max_scores=3, max_labels=2)
    for i in range(5):
        j.add_score(scored(f"s{i}", T0 + i))
    assert j.scores_held == 3 and j.get("s0") is None and j.get("s4") is not None
    assert j.stats.scores_evicted == 2
    for i in range(4):
        j.add_label(label(f"u{i}", 1, T0 + i))
    assert j.labels_waiting == 2 and j.stats.unmatched == 2


def test_the_state_round_trips_through_json() -> None:
    j = join()
    j.add_score(scored("a", T0, flagged=True))
    j.add_score(scored("b", T0 + DAY, version="v2"))
    j.add_label(label("a", 1, T0 + DAY))
    j.add_label(label("c", 0, T0 + DAY))
    state = orjson.loads(orjson.dumps(j.to_state()))
    again = LabelJoin.from_state(state, 3 * DAY)
    assert again.to_state() == j.to_state()
    assert again.get("a") == j.get("a") and again.clock_micros == j.clock_micros
    # The restored join carries on: the waiting label is matched, the duplicate recognised.
    assert again.add_score(scored("c", T0 + 5))[1] is not None
    assert again.add_label(label("a", 1, T0 + 2 * DAY))[0] == DUPLICATE


def test_a_malformed_state_is_refused_naming_the_join() -> None:
    with pytest.raises(ValueError, match="join state: malformed"):
        LabelJoin.from_state({"bucket_micros": DAY}, DAY)
