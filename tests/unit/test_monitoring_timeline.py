"""The loop's history read back from its records, and its timeline: duplicates collapsed, the
latest revision of each performance window kept, rows in time order with the trigger and the
promotion where they happened. Also the synthetic record stream the report tests use."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rich.console import Console

from fraud_detection.monitoring.timeline import (
    collect_history,
    read_result_lines,
    render_timeline,
    timeline_rows,
)

START = datetime(2026, 3, 2, tzinfo=UTC)
FEATURES = ("log_amount", "amt_deviation", "card_tx_count_24h", "card_amt_mean_7d", "merchant_risk")
DRIFTING = ("log_amount", "amt_deviation")
TOLERANCE = 0.05


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def drift_record(
    rng: np.random.Generator, start: datetime, version: str, offset: int, drifting: bool
) -> dict[str, Any]:
    """One version's drift result of a 4-hour window; ``drifting`` shifts two features."""
    threshold = 0.05 / (len(FEATURES) + 1)
    features = {}
    for name in FEATURES:
        p = (
            float(rng.uniform(1e-9, 1e-4))
            if drifting and name in DRIFTING
            else rng.uniform(0.02, 1)
        )
        features[name] = {"statistic": float(rng.uniform(0, 0.2)), "p_value": float(p)}
    score_p = float(rng.uniform(1e-5, 1e-3) if drifting else rng.uniform(0.02, 1))
    score = {"statistic": 0.05, "p_value": score_p}
    for test in (*features.values(), score):
        test["is_drift"] = test["p_value"] < threshold
    drifted = [name for name, test in features.items() if test["is_drift"]]
    drifted += ["fraud_probability"] if score["is_drift"] else []
    return {
        "kind": "feature_drift",
        "schema_version": 1,
        "window_id": f"{version}:fraud-detector-requests:0:{offset}-{offset + 999}",
        "model_version": version,
        "start": iso(start),
        "end": iso(start + timedelta(hours=4) - timedelta(seconds=1)),
        "size": 1000,
        "tested": True,
        "threshold": threshold,
        "features": features,
        "score": score,
        "drifted": drifted,
        "is_drift": bool(drifted),
    }


def performance_record(
    day: datetime, version: str, revision: int, coverage: float, recall: float, baseline: dict
) -> dict[str, Any]:
    scored, frauds = 24_000, 40
    labelled = int(scored * coverage)
    positives = max(1, int(frauds * coverage))
    tp = round(positives * recall)
    fn = positives - tp
    fp = 60 + 5 * revision
    flagged = tp + fp + int(30 * (1 - coverage))
    precision = tp / (tp + fp)
    f1 = 2 * precision * recall / (precision + recall) if tp else 0.0
    recall_value = tp / positives
    return {
        "kind": "performance",
        "window_id": f"{version}:{day.date().isoformat()}",
        "model_version": version,
        "start": iso(day),
        "end": iso(day + timedelta(days=1) - timedelta(seconds=1)),
        "scored": scored,
        "flagged": flagged,
        "labelled": labelled,
        "coverage": coverage,
        "complete": coverage >= 0.99,
        "revision": revision,
        "threshold": 0.1,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": labelled - tp - fp - fn,
        "recall": recall_value,
        "precision": precision,
        "f1": f1,
        "baseline": baseline,
        "tolerance": TOLERANCE,
        "below_baseline": recall_value < baseline["recall"] - TOLERANCE,
        "as_of": iso(day + timedelta(days=1 + revision)),
    }


def retrain(event: str, at: datetime, **fields: Any) -> dict[str, Any]:
    return {
        "kind": "retrain",
        "event": event,
        "at": iso(at),
        "reason": fields.get("reason"),
        "run": {"name": fields["run"], "dir": f"runs/{fields['run']}"} if "run" in fields else None,
        "model_version": fields.get("model_version", "v1"),
        "exit_code": fields.get("exit_code"),
        "outcome": fields.get("outcome"),
        "new_model_version": fields.get("new_model_version"),
    }


#: When the drift starts, the retraining run starts and ends (deploying v2).
DRIFT_FROM = START + timedelta(days=2)
TRIGGER_AT = START + timedelta(days=2, hours=13)
PROMOTED_AT = START + timedelta(days=3, hours=12)


def loop_stream(seed: int = 0) -> list[dict[str, Any]]:
    """Six days of the loop, as written: v1 drifts from day 2, a run deploys v2 on day 3.

    Includes what a crash and a restart leave behind (two drift results and a retraining event
    written twice), performance windows in several revisions (the last day's still incomplete),
    a suppressed trigger, a later run the gate refuses, and a record of a kind the report does
    not know.
    """
    rng = np.random.default_rng(seed)
    records: list[dict[str, Any]] = []
    v1 = {"recall": 0.8, "precision": 0.3, "f1": 0.44}
    v2 = {"recall": 0.85, "precision": 0.32, "f1": 0.46}
    for index in range(6 * 6):
        start = START + timedelta(hours=4 * index)
        version = "v1" if start < PROMOTED_AT else "v2"
        records.append(
            drift_record(rng, start, version, 1000 * index, version == "v1" and start >= DRIFT_FROM)
        )
        if index in (5, 20):  # a crash after writing, before committing: written again
            records.append(dict(records[-1]))
    for day_index in range(6):
        day = START + timedelta(days=day_index)
        version = "v1" if day < PROMOTED_AT else "v2"
        baseline = v1 if version == "v1" else v2
        recall = 0.8 if version == "v2" or day < DRIFT_FROM else 0.55
        revisions = 2 if day_index == 5 else 3
        for revision in range(revisions):
            coverage = (0.4, 0.8, 1.0)[revision]
            records.append(performance_record(day, version, revision, coverage, recall, baseline))
    records.append(performance_record(START, "v1", 1, 0.8, 0.8, v1))  # a rewritten old revision
    records += [
        retrain("started", TRIGGER_AT, reason="drift in 3 of the last 5 windows", run="retrain-1"),
        retrain("suppressed", TRIGGER_AT + timedelta(hours=4), reason="run in flight"),
        retrain(
            "finished",
            PROMOTED_AT,
            reason="drift in 3 of the last 5 windows",
            run="retrain-1",
            exit_code=0,
            outcome="deployed",
            new_model_version="v2",
        ),
        retrain(
            "started",
            START + timedelta(days=5),
            reason="schedule",
            run="retrain-2",
            model_version="v2",
        ),
        retrain(
            "finished",
            START + timedelta(days=5, hours=3),
            reason="schedule",
            run="retrain-2",
            model_version="v2",
            exit_code=0,
            outcome="gate_refused",
        ),
        {"kind": "heartbeat", "at": iso(START)},
    ]
    records.append(dict(records[-6]))  # the first trigger, written twice
    order = rng.permutation(len(records))  # several writers: the file is not in time order
    return [records[i] for i in order]


def write_stream(path: Path, records: list[dict[str, Any]], bad_line: bool = True) -> Path:
    lines = [json.dumps(record) for record in records]
    if bad_line:
        lines.insert(len(lines) // 2, '{"kind": "feature_drift", "window_id": ')
    path.write_text("\n".join(lines) + "\n")
    return path


def unique_windows(records: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    """The expected survivors: one per window_id, the highest revision of a performance window."""
    kept: dict[str, dict[str, Any]] = {}
    for record in records:
        if record.get("kind") != kind:
            continue
        old = kept.get(record["window_id"])
        if old is None or record.get("revision", 0) > old.get("revision", 0):
            kept[record["window_id"]] = record
    return kept


def as_time(text: str) -> datetime:
    return datetime.fromisoformat(text)


# ---------------------------------------------------------------------------------- tests
def test_duplicates_collapse_and_the_latest_revision_is_kept() -> None:
    records = loop_stream()
    history = collect_history(records)
    drift = unique_windows(records, "feature_drift")
    performance = unique_windows(records, "performance")
    assert len(history.drift) == len(drift) < sum(r["kind"] == "feature_drift" for r in records)
    assert [r["window_id"] for r in history.drift] == sorted(
        drift, key=lambda w: as_time(drift[w]["start"])
    )
    assert {r["window_id"]: r["revision"] for r in history.performance} == {
        w: r["revision"] for w, r in performance.items()
    }
    retrains = {json.dumps(r, sort_keys=True) for r in records if r["kind"] == "retrain"}
    assert len(history.retrains) == len(retrains)
    assert [e["_at"] for e in history.retrains] == sorted(e["_at"] for e in history.retrains)
    assert history.unknown_kinds == {"heartbeat": 1}
    assert history.records == len(records)
    assert history.duplicates + history.superseded + len(drift) + len(performance) + len(
        retrains
    ) + 1 == len(records)


def test_promotions_come_from_the_deployed_run_and_from_the_results() -> None:
    records = loop_stream()
    history = collect_history(records)
    assert history.versions == ["v1", "v2"]
    (promotion,) = history.promotions
    assert (promotion.previous, promotion.version, promotion.source) == ("v1", "v2", "retrain")
    assert promotion.at == PROMOTED_AT and promotion.run == "retrain-1"
    first_v2 = min(
        as_time(r["start"])
        for r in records
        if r.get("model_version") == "v2" and r["kind"] != "retrain"
    )
    assert promotion.first_seen == first_v2

    # Without the results, the deployed run's record names the version it replaced.
    runs_only = collect_history([r for r in records if r["kind"] == "retrain"])
    assert [(p.previous, p.version, p.at) for p in runs_only.promotions] == [
        ("v1", "v2", PROMOTED_AT)
    ]
    assert runs_only.versions == ["v1", "v2"]

    # Without the retraining events, the version change in the results is the promotion.
    windows_only = collect_history([r for r in records if r["kind"] != "retrain"])
    (seen,) = windows_only.promotions
    assert (seen.version, seen.source, seen.at) == ("v2", "results", first_v2)


def test_the_timeline_is_in_time_order_with_the_trigger_and_the_promotion_in_place() -> None:
    records = loop_stream()
    rows = timeline_rows(collect_history(records))
    assert [row.at for row in rows] == sorted(row.at for row in rows)
    drift = unique_windows(records, "feature_drift")
    performance = unique_windows(records, "performance")
    kinds = [row.kind for row in rows]
    assert kinds.count("feature_drift") == len(drift)
    assert kinds.count("performance") == len(performance)  # superseded revisions not shown twice

    trigger = next(i for i, row in enumerate(rows) if row.what == "retraining triggered")
    assert rows[trigger].at == TRIGGER_AT and rows[trigger].alert
    before = [row for row in rows[:trigger] if row.kind == "feature_drift"]
    first_drift = min(as_time(r["end"]) for r in drift.values() if r["is_drift"])
    assert any(row.alert and row.at == first_drift for row in before)
    after = [row for row in rows[trigger + 1 :] if row.kind == "feature_drift"]
    assert all(row.at > TRIGGER_AT for row in after)

    promotion = next(i for i, row in enumerate(rows) if row.kind == "promotion")
    assert rows[promotion].what == "promoted v1 → v2" and rows[promotion].at == PROMOTED_AT
    assert rows[promotion - 1].what == "retraining finished: deployed (v2)"
    versions = [row.version for row in rows if row.kind == "feature_drift"]
    cut = sum(1 for row in rows[:promotion] if row.kind == "feature_drift")
    assert set(versions[:cut]) == {"v1"} and set(versions[cut:]) == {"v2"}


def test_a_drift_row_names_the_smallest_p_value_and_the_drifted_columns() -> None:
    records = loop_stream()
    history = collect_history(records)
    drifted = history.drift_windows[0]
    row = next(r for r in timeline_rows(history) if r.at == drifted["_end"])
    columns = {**drifted["features"], "score (fraud_probability)": drifted["score"]}
    name, lowest = min(((n, t["p_value"]) for n, t in columns.items()), key=lambda x: x[1])
    assert f"min p {lowest:.2g} ({name})" in row.detail
    assert row.what == "drift: " + ", ".join(drifted["drifted"])


def test_bad_lines_and_bad_records_are_skipped_with_their_reason(tmp_path: Path) -> None:
    records = loop_stream()
    path = write_stream(tmp_path / "loop.jsonl", records)
    with path.open("a") as stream:
        stream.write("[1, 2]\n\n")
        stream.write(json.dumps({"kind": "performance", "window_id": "x", "start": "soon"}) + "\n")
    read = read_result_lines([path])
    assert len(read.records) == len(records) + 1
    assert [bad.reason.split(" (")[0] for bad in read.bad_lines] == [
        "not JSON",
        "not a JSON object but list",
    ]
    assert read.bad_lines[0].where == f"{path}:{len(records) // 2 + 1}"
    lines = path.read_text().splitlines()
    history = collect_history(read.records, read.bad_lines)
    assert len(history.skipped) == 3
    assert history.skipped[-1].reason == "performance record: start: not an ISO-8601 time ('soon')"
    assert history.skipped[-1].where == f"{path}:{len(lines)}"


def test_the_rich_table_has_a_row_per_timeline_row() -> None:
    records = loop_stream()
    rows = timeline_rows(records)
    assert rows == timeline_rows(collect_history(records))
    table = render_timeline(rows)
    assert table.row_count == len(rows)
    console = Console(width=200, record=True)
    console.print(table)
    text = console.export_text()
    assert "promoted v1 → v2" in text and "retraining triggered" in text


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        ({"kind": "feature_drift", "start": "2026-03-02T00:00:00Z"}, "window_id: missing"),
        (
            {
                "kind": "feature_drift",
                "window_id": "w",
                "start": "2026-03-02T01:00:00Z",
                "end": "2026-03-02T00:00:00Z",
            },
            "end: before start",
        ),
        (
            {
                "kind": "performance",
                "window_id": "w",
                "start": "2026-03-02T00:00:00Z",
                "end": "2026-03-02T01:00:00Z",
                "revision": "2",
            },
            "revision: not an integer",
        ),
        (
            {
                "kind": "feature_drift",
                "window_id": "w",
                "start": "2026-03-02T00:00:00Z",
                "end": "2026-03-02T01:00:00Z",
                "features": {"log_amount": 0.01},
            },
            "features.log_amount: not an object (float)",
        ),
        (
            {
                "kind": "performance",
                "window_id": "w",
                "start": "2026-03-02T00:00:00Z",
                "end": "2026-03-02T01:00:00Z",
                "baseline": [0.8],
            },
            "baseline: not an object (list)",
        ),
        ({"kind": "retrain", "event": "paused", "at": "2026-03-02"}, "event: must be one of"),
        ({"kind": "retrain", "event": "started"}, "at: missing or not text"),
    ],
)
def test_unusable_records_name_the_field(record: dict[str, Any], reason: str) -> None:
    (skipped,) = collect_history([record]).skipped
    assert skipped.reason.startswith(f"{record['kind']} record: {reason}")


def test_a_kubeflow_run_that_succeeded_with_a_new_version_is_a_promotion() -> None:
    at = START + timedelta(days=1)
    events = [
        retrain("started", at, reason="schedule") | {"run": {"id": "kfp-42"}},
        retrain("finished", at + timedelta(hours=2), outcome="succeeded", new_model_version="v9")
        | {"run": {"id": "kfp-42"}},
        retrain("finished", at + timedelta(hours=3), outcome="succeeded") | {"run": "kfp-43"},
    ]
    history = collect_history(events)
    (promotion,) = history.promotions
    assert (promotion.previous, promotion.version, promotion.run) == ("v1", "v9", "kfp-42")
    rows = timeline_rows(history)
    assert [row.alert for row in rows] == [True, False, False, True]
    assert "run kfp-42" in rows[0].detail and "run kfp-43" in rows[3].detail
