"""Performance windows: figures from joined labels, completeness and revisions, late labels,
corrections, the horizon's final reports, the baseline comparison, and the state's round trip."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest

from fraud_detection.bundle import Manifest, write_manifest
from fraud_detection.monitoring.labels_join import ScoredTransaction
from fraud_detection.monitoring.performance import (
    DEFAULT_TOLERANCE,
    RESULT_FIELDS,
    Baseline,
    BundleBaselines,
    PerformanceConfig,
    PerformanceResult,
    PerformanceTracker,
    rates,
)
from fraud_detection.monitoring.reference import TemplateLocator
from fraud_detection.streaming.labels import Label
from fraud_detection.training.gate import GateConfig

DAY = 86_400 * 1_000_000
T0 = 20_000 * DAY  # 2024-10-04T00:00:00Z
BASE = Baseline(recall=0.8, precision=0.5, f1=0.6)


def no_baseline(_version: str) -> Baseline | None:
    return None


def tracker(**changes: object) -> PerformanceTracker:
    settings = {"horizon_s": 5 * 86_400.0, **changes}
    return PerformanceTracker(PerformanceConfig(**settings))  # type: ignore[arg-type]


def score(t: PerformanceTracker, tx: str, time: int, flagged: bool, version: str = "v1") -> None:
    t.on_score(ScoredTransaction(tx, version, time, 0.9 if flagged else 0.1, flagged, 0.5))


def label(t: PerformanceTracker, tx: str, is_fraud: int, at: int) -> str:
    return t.on_label(Label(tx, is_fraud, at))


def day_of_traffic(t: PerformanceTracker, day: int, n: int = 20, version: str = "v1") -> list[str]:
    """``n`` transactions on ``day``; every other one flagged."""
    ids = [f"{version}-d{day}-{i}" for i in range(n)]
    for i, tx in enumerate(ids):
        score(t, tx, T0 + day * DAY + i * 1_000_000, flagged=i % 2 == 0, version=version)
    return ids


def truth(tx: str) -> int:
    """Fraud when the index is divisible by 4: half the flagged ones, none of the others."""
    return int(int(tx.rsplit("-", 1)[1]) % 4 == 0)


def test_rates_are_null_when_undefined() -> None:
    assert rates(0, 0, 0) == (None, None, None)
    assert rates(0, 0, 3) == (0.0, None, 0.0)
    assert rates(2, 2, 2) == (0.5, 0.5, 0.5)


def test_the_tolerance_is_the_gate_s() -> None:
    assert GateConfig().tolerance == DEFAULT_TOLERANCE


def test_a_window_is_reported_once_closed_and_complete_then_revised_by_coverage_steps() -> None:
    t = tracker(update_step=0.1)
    ids = day_of_traffic(t, 0)
    for tx in ids[:19]:  # 95 % labelled, but the day is still open
        label(t, tx, truth(tx), T0 + 2 * DAY)
    assert t.reports(no_baseline) == []
    day_of_traffic(t, 1, n=1)  # the stream's time passes the end of day 0
    [first] = t.reports(no_baseline)
    assert first.window_id == "v1:performance:2024-10-04T00:00:00.000000Z"
    assert (first.start, first.end) == (
        "2024-10-04T00:00:00.000000Z",
        "2024-10-05T00:00:00.000000Z",
    )
    assert (first.scored, first.flagged, first.labelled, first.revision) == (20, 10, 19, 1)
    assert first.complete and first.coverage == pytest.approx(0.95)
    flagged_fraud = sum(1 for i, tx in enumerate(ids[:19]) if i % 2 == 0 and truth(tx))
    assert (first.tp, first.fp, first.fn) == (flagged_fraud, 10 - flagged_fraud, 0)
    assert first.tn == 19 - 10
    assert first.recall == 1.0 and first.precision == pytest.approx(flagged_fraud / 10)
    assert first.as_of == "2024-10-06T00:00:00.000000Z"
    assert t.reports(no_baseline) == []  # nothing new: nothing reported
    label(t, ids[19], truth(ids[19]), T0 + 3 * DAY)  # coverage 1.0: revision 2
    [second] = t.reports(no_baseline)
    assert (second.window_id, second.revision, second.labelled) == (first.window_id, 2, 20)
    assert second.as_of == "2024-10-07T00:00:00.000000Z"


def test_an_incomplete_window_waits_and_small_coverage_gains_are_not_reported() -> None:
    t = tracker(min_coverage=0.5, update_step=0.2)
    ids = day_of_traffic(t, 0)
    day_of_traffic(t, 1, n=1)
    for tx in ids[:9]:
        label(t, tx, 0, T0 + DAY)
    assert t.reports(no_baseline) == []  # 45 % < 50 %
    label(t, ids[9], 0, T0 + DAY)
    assert [r.labelled for r in t.reports(no_baseline)] == [10]
    for tx in ids[10:13]:  # +15 %, below the 20 % step
        label(t, tx, 0, T0 + DAY)
    assert t.reports(no_baseline) == []
    label(t, ids[13], 0, T0 + DAY)
    [revised] = t.reports(no_baseline)
    assert (revised.revision, revised.labelled) == (2, 14)


def test_duplicates_are_ignored_and_a_correction_moves_the_count() -> None:
    t = tracker(min_coverage=0.1)
    ids = day_of_traffic(t, 0, n=4)
    day_of_traffic(t, 1, n=1)
    assert label(t, ids[0], 0, T0 + DAY) == "matched"  # flagged, said legitimate: fp
    assert label(t, ids[0], 0, T0 + DAY) == "duplicate"
    [first] = t.reports(no_baseline)
    assert (first.tp, first.fp, first.labelled) == (0, 1, 1)
    assert label(t, ids[0], 1, T0 + 2 * DAY) == "corrected"  # a chargeback after all: tp
    assert t.windows[("v1", T0)].tp == 1 and t.windows[("v1", T0)].fp == 0
    assert t.windows[("v1", T0)].labelled == 1


def test_a_label_before_its_score_counts_when_the_score_arrives() -> None:
    t = tracker(min_coverage=1.0)
    assert label(t, "early", 1, T0 + DAY) == "pending"
    score(t, "early", T0 + 10, flagged=False)
    day_of_traffic(t, 1, n=1)
    [result] = t.reports(no_baseline)
    assert (result.scored, result.labelled, result.fn, result.recall) == (1, 1, 1, 0.0)


def test_windows_are_per_model_version() -> None:
    t = tracker(min_coverage=1.0)
    a = day_of_traffic(t, 0, n=4, version="v1")
    b = day_of_traffic(t, 0, n=2, version="v2")
    day_of_traffic(t, 1, n=1)
    for tx in [*a, *b]:
        label(t, tx, truth(tx), T0 + DAY)
    results = {r.model_version: r for r in t.reports(no_baseline)}
    assert set(results) == {"v1", "v2"}
    assert (results["v1"].scored, results["v2"].scored) == (4, 2)


def test_an_incomplete_window_is_reported_final_at_the_horizon_and_forgotten() -> None:
    t = tracker(horizon_s=2 * 86_400.0)
    ids = day_of_traffic(t, 0, n=10)
    label(t, ids[0], 1, T0 + DAY)
    day_of_traffic(t, 2, n=1)
    assert t.reports(no_baseline) == []
    score(t, "later", T0 + 3 * DAY, flagged=False)  # day 0 ends at the cutoff now
    [final] = t.reports(no_baseline)
    assert (final.complete, final.revision, final.labelled, final.scored) == (False, 1, 1, 10)
    assert ("v1", T0) not in t.windows
    assert t.join.stats.scores_expired == 9
    assert label(t, ids[1], 1, T0 + 4 * DAY) == "pending"  # its score is gone
    assert t.reports(no_baseline) == []  # no second final report


def test_a_complete_window_changed_since_its_report_gets_a_final_revision() -> None:
    t = tracker(horizon_s=2 * 86_400.0, update_step=0.5, min_coverage=0.5)
    ids = day_of_traffic(t, 0, n=10)
    day_of_traffic(t, 1, n=1)
    for tx in ids[:5]:
        label(t, tx, 0, T0 + DAY)
    assert [r.revision for r in t.reports(no_baseline)] == [1]
    label(t, ids[5], 1, T0 + DAY)  # a small change, below the step
    assert t.reports(no_baseline) == []
    score(t, "later", T0 + 3 * DAY, flagged=False)
    [final] = t.reports(no_baseline)
    assert (final.revision, final.labelled, final.complete) == (2, 6, True)


@pytest.mark.parametrize(
    ("baseline", "below"),
    [
        (Baseline(recall=0.5, precision=0.5, f1=0.5), False),
        (Baseline(recall=0.54, precision=0.9, f1=0.54), False),  # within the tolerance
        (Baseline(recall=0.56, precision=0.5, f1=0.5), True),  # recall too low
        (Baseline(recall=0.5, precision=0.5, f1=0.56), True),  # F1 too low
        (Baseline(recall=None, precision=None, f1=None), False),  # nothing to compare with
    ],
)
def test_below_baseline_compares_recall_and_f1_with_the_tolerance(
    baseline: Baseline, below: bool
) -> None:
    t = tracker(min_coverage=1.0, tolerance=0.05)
    ids = day_of_traffic(t, 0, n=4)  # flagged: 0 and 2
    day_of_traffic(t, 1, n=1)
    for tx, is_fraud in zip(ids, (1, 1, 0, 0), strict=True):  # tp, fn, fp, tn
        label(t, tx, is_fraud, T0 + DAY)
    [result] = t.reports(lambda _v: baseline)
    assert (result.recall, result.precision, result.f1) == (0.5, 0.5, 0.5)
    assert result.baseline == baseline and result.tolerance == 0.05
    assert result.below_baseline is below


def test_an_incomplete_window_is_never_below_the_baseline() -> None:
    t = tracker(horizon_s=86_400.0)
    ids = day_of_traffic(t, 0, n=4)
    label(t, ids[0], 0, T0 + DAY)  # recall undefined, precision 0
    score(t, "later", T0 + 2 * DAY, flagged=False)
    [final] = t.reports(lambda _v: BASE)
    assert not final.complete and not final.below_baseline


def test_the_result_json_holds_exactly_the_contract_s_keys() -> None:
    t = tracker(min_coverage=0.1)
    ids = day_of_traffic(t, 0, n=2)
    day_of_traffic(t, 1, n=1)
    label(t, ids[0], 1, T0 + DAY)
    [result] = t.reports(lambda _v: BASE)
    body = orjson.loads(result.to_json())
    assert tuple(sorted(body)) == RESULT_FIELDS
    assert body["kind"] == "performance" and body["schema_version"] == 1
    assert body["baseline"] == {
        "recall": 0.8,
        "precision": 0.5,
        "f1": 0.6,
        "tp": None,
        "fp": None,
        "fn": None,
    }
    assert body["threshold"] == 0.5 and body["tp"] == 1 and body["precision"] == 1.0
    assert isinstance(result, PerformanceResult) and result.kind == "performance"


def test_the_state_round_trips_and_the_restored_tracker_carries_on_identically() -> None:
    config = PerformanceConfig(horizon_s=5 * 86_400.0, update_step=0.1)
    t = PerformanceTracker(config)
    ids = day_of_traffic(t, 0)
    day_of_traffic(t, 1, n=3)
    for tx in ids[:18]:
        label(t, tx, truth(tx), T0 + DAY)
    label(t, "unknown", 1, T0 + DAY)
    first = t.reports(no_baseline)
    restored = PerformanceTracker.from_state(config, orjson.loads(orjson.dumps(t.to_state())))
    assert restored.to_state() == t.to_state()
    for tracker_ in (t, restored):
        for tx in ids[18:]:
            label(tracker_, tx, truth(tx), T0 + 2 * DAY)
        label(tracker_, ids[0], truth(ids[0]), T0 + 2 * DAY)  # a duplicate, in both
    [a], [b] = t.reports(no_baseline), restored.reports(no_baseline)
    assert a == b and a.revision == first[0].revision + 1 and a.labelled == 20
    with pytest.raises(ValueError, match="window_s"):
        PerformanceTracker.from_state(PerformanceConfig(window_s=3_600), t.to_state())


def test_bundle_baselines_read_the_manifest_and_a_version_without_a_bundle_has_none(
    tmp_path: Path,
) -> None:
    bundle = tmp_path / "v1"
    bundle.mkdir()
    write_manifest(
        bundle,
        Manifest("v1", ["f"], 0.3, metrics={"recall": 0.81, "precision": 0.4, "f1": 0.53}),
    )
    counted = tmp_path / "v3"
    counted.mkdir()
    matrix = [[9_000, 120], [19, 81]]  # [[tn, fp], [fn, tp]]
    write_manifest(
        counted,
        Manifest("v3", ["f"], 0.3, metrics={"recall": 0.81, "confusion_matrix": matrix}),
    )
    (tmp_path / "v2").mkdir()
    (tmp_path / "v2" / "manifest.json").write_text(json.dumps({"model_version": "v2"}))
    baselines = BundleBaselines(TemplateLocator(str(tmp_path / "{version}")))
    assert baselines("v1") == Baseline(0.81, 0.4, 0.53)
    assert baselines("v3") == Baseline(0.81, None, None, tp=81, fp=120, fn=19)
    assert baselines("v9") is None
    assert baselines("v2") is None  # unreadable manifest: no baseline, no crash


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"min_coverage": 0.0}, "min_coverage"),
        ({"update_step": 1.5}, "update_step"),
        ({"tolerance": -0.1}, "tolerance"),
        ({"horizon_s": 0.0}, "horizon_s"),
        ({"window_s": 0}, "window_s"),
    ],
)
def test_bad_settings_are_refused_naming_the_field(changes: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field}: must be"):
        PerformanceConfig(**changes)  # type: ignore[arg-type]


def test_corrections_count_towards_the_update_step_like_new_labels() -> None:
    t = tracker(min_coverage=1.0, update_step=0.1)
    ids = day_of_traffic(t, 0, n=20)
    day_of_traffic(t, 1, n=1)
    for tx in ids:
        label(t, tx, 0, T0 + DAY)
    assert [r.fp for r in t.reports(no_baseline)] == [10]
    label(t, ids[0], 1, T0 + 2 * DAY)  # one correction: 5 % < the 10 % step
    assert t.reports(no_baseline) == []
    label(t, ids[2], 1, T0 + 2 * DAY)  # two: 10 %
    [revised] = t.reports(no_baseline)
    assert (revised.revision, revised.tp, revised.fp, revised.labelled) == (2, 2, 8, 20)
