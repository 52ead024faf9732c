"""The retraining policy (:mod:`fraud_detection.monitoring.trigger`): rules, debouncing, reasons."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from fraud_detection.monitoring.trigger import (
    Decision,
    DriftResult,
    PerformanceResult,
    Result,
    ResultRecordError,
    ServedModel,
    TriggerConfig,
    TriggerState,
    baseline_lower_bounds,
    decide,
    parse_result,
    pooled_performance,
    run_finished,
    run_started,
)
from fraud_detection.monitoring.trigger_runner import (
    FileSource,
    LocalRunOptions,
    event_record,
    last_started,
    pipeline_run_command,
)

T0 = datetime(2026, 3, 2, tzinfo=UTC)
CONFIG = TriggerConfig()


def drift(
    i: int, is_drift: bool, version: str = "v1", tested: bool = True, drifted: Iterable[str] = ()
) -> DriftResult:
    """The i-th drift window of ``version``: an hour long, ending i hours after T0."""
    return DriftResult(
        window_id=f"{version}:fraud-detector-requests:0:{i * 1000}-{i * 1000 + 999}",
        model_version=version,
        start=T0 + timedelta(hours=i - 1),
        end=T0 + timedelta(hours=i),
        tested=tested,
        is_drift=is_drift,
        drifted=tuple(drifted) if is_drift else (),
    )


def perf(
    day: int,
    below: bool,
    revision: int = 0,
    complete: bool = True,
    recall: float = 0.61,
    version: str = "v1",
    frauds: int = 100,
) -> PerformanceResult:
    """The performance window of ``day`` (a day long) against a baseline recall of 0.80, with
    ``frauds`` labelled frauds (their share ``recall`` flagged) at a precision of 0.3."""
    start = T0 + timedelta(days=day)
    tp = round(recall * frauds)
    return PerformanceResult(
        window_id=f"{version}:performance:{start.isoformat()}",
        model_version=version,
        start=start,
        end=start + timedelta(days=1),
        complete=complete,
        revision=revision,
        below_baseline=below,
        recall=recall,
        precision=0.3,
        f1=0.4,
        baseline={"recall": 0.80, "precision": 0.3, "f1": 0.4},
        tolerance=0.05,
        tp=tp,
        fp=round(tp * 7 / 3),
        fn=frauds - tp,
    )


def feed(
    results: Iterable[Result],
    state: TriggerState | None = None,
    config: TriggerConfig = CONFIG,
    served: ServedModel | None = None,
) -> tuple[TriggerState, list[Decision | None]]:
    state = state or TriggerState()
    decisions = []
    for result in results:
        state, decision = decide(state, result, config, served)
        decisions.append(decision)
    return state, decisions


# ------------------------------------------------------------------------------ drift
def test_drift_fires_on_the_kth_drifting_window_of_the_last_m() -> None:
    pattern = [True, False, True, False, True]
    results = [drift(i, d, drifted=["log_amount"]) for i, d in enumerate(pattern, 1)]
    _, decisions = feed(results)
    assert decisions[:4] == [None] * 4
    last = decisions[4]
    assert last is not None and last.fired and last.rules == ("drift",)
    assert last.reason == "drift: 3 of the last 5 windows (log_amount)"
    assert last.at == T0 + timedelta(hours=5)
    assert last.model_version == "v1"


def test_drift_windows_older_than_the_last_m_do_not_count() -> None:
    pattern = [True, True, False, False, False, True, False]
    _, decisions = feed(drift(i, d) for i, d in enumerate(pattern, 1))
    assert decisions == [None] * len(pattern)


def test_untested_windows_are_ignored() -> None:
    results = [
        drift(1, True),
        drift(2, False, tested=False),
        drift(3, False, tested=False),
        drift(4, False, tested=False),
        drift(5, True),
        drift(6, False, tested=False),
        drift(7, True, drifted=["amt_deviation"]),
    ]
    _, decisions = feed(results)
    assert decisions[-1] is not None and decisions[-1].fired
    assert decisions[-1].reason == "drift: 3 of the last 3 windows (amt_deviation)"
    assert decisions[:-1] == [None] * 6


def test_a_duplicated_window_counts_once() -> None:
    first = drift(1, True)
    _, decisions = feed([first, first, first, drift(2, True)])
    assert decisions == [None] * 4


def test_the_reason_names_the_drifted_columns_sorted_and_caps_them() -> None:
    results = [
        drift(1, True, drifted=["log_amount", "amt_deviation"]),
        drift(2, True, drifted=["fraud_probability"]),
        drift(3, True, drifted=["hour", "card_count_1d", "log_amount"]),
    ]
    _, decisions = feed(results)
    last = decisions[-1]
    assert last is not None
    assert last.reason == (
        "drift: 3 of the last 3 windows (amt_deviation, card_count_1d, fraud_probability, "
        "hour, +1 more)"
    )


# ------------------------------------------------------------------------------ versions
def test_a_new_version_in_the_results_resets_the_history() -> None:
    state, decisions = feed([drift(1, True), drift(2, True)])
    state, decisions = feed([drift(3, True, version="v2"), drift(4, True, version="v2")], state)
    assert decisions == [None, None]
    assert state.model == ServedModel("v2") and "v1" in state.retired
    # Late results of the retired version neither count nor switch back.
    state, decisions = feed([drift(5, True), drift(6, True)], state)
    assert decisions == [None, None] and state.model == ServedModel("v2")
    state, decisions = feed([drift(7, True, version="v2")], state)
    assert decisions[0] is not None and decisions[0].model_version == "v2"


def test_only_the_served_version_counts_when_the_server_is_known() -> None:
    served = ServedModel("v1")
    mixed = [drift(i, True, version="canary") for i in range(1, 6)]
    state, decisions = feed(mixed, served=served)
    assert decisions == [None] * 5 and state.drift == ()
    assert state.clock == T0 + timedelta(hours=5)  # other versions still move the clock
    state, decisions = feed([drift(i, True) for i in (6, 7, 8)], state, served=served)
    assert decisions[-1] is not None and decisions[-1].fired
    state, _ = feed([drift(9, True)], state, served=ServedModel("v2"))
    assert state.drift == () and state.model == ServedModel("v2")


# ------------------------------------------------------------------------------ performance
def test_performance_fires_on_perf_k_complete_windows_below_the_baseline() -> None:
    _, decisions = feed([perf(0, True), perf(1, False), perf(2, True, recall=0.58)])
    assert decisions[:2] == [None, None]
    last = decisions[2]
    assert last is not None and last.fired and last.rules == ("performance",)
    assert last.reason is not None
    assert last.reason.startswith("performance: recall 0.")
    assert "< baseline 0.80 - 0.05 over the last 3 windows (2 below, 300 frauds)" in last.reason


def test_low_windows_within_chance_do_not_fire() -> None:
    """The same low point estimates on a handful of frauds a day are not evidence of a drop."""
    few = [perf(0, True, frauds=6), perf(1, False, frauds=6), perf(2, True, frauds=6)]
    _, decisions = feed(few)
    assert decisions == [None, None, None]
    # Enough frauds behind the same shares: the drop is beyond chance.
    many = [perf(0, True, frauds=200), perf(1, False, frauds=200), perf(2, True, frauds=200)]
    _, decisions = feed(many)
    assert decisions[2] is not None and decisions[2].fired


def test_a_baseline_measured_on_few_frauds_needs_a_larger_drop() -> None:
    """The same live windows against the same baseline recall (0.80): measured on 1,000 test
    frauds the drop is beyond chance; on 25 it could be the baseline's own luck."""

    def against(tp: int, fn: int) -> list[PerformanceResult]:
        windows = [perf(day, True, recall=0.68, frauds=120) for day in range(3)]
        for window in windows:
            window.baseline.update({"tp": tp, "fp": 3 * tp, "fn": fn})  # type: ignore[attr-defined]
        return windows

    _, decisions = feed(against(800, 200))
    assert decisions[2] is not None and decisions[2].fired
    _, decisions = feed(against(20, 5))
    assert decisions == [None, None, None]
    lows = baseline_lower_bounds({"recall": 0.8, "tp": 20, "fp": 60, "fn": 5}, 0.95)
    assert 0.5 < lows["recall"] < 0.8 and 0 < lows["f1"] < lows["recall"]
    assert baseline_lower_bounds({"recall": 0.8}, 0.95) == {}


def test_pooled_bounds_are_the_wilson_upper_ends() -> None:
    from fraud_detection.training.evaluate import wilson_interval

    windows = [perf(0, True, recall=0.5, frauds=40), perf(1, True, recall=0.75, frauds=40)]
    pooled = pooled_performance(windows, 0.95)
    recall, recall_high = pooled["recall"]
    assert recall == 50 / 80
    assert recall_high == wilson_interval(50, 80, 0.95)[1]
    tp, fp = 50, sum(w.fp for w in windows)
    precision_high = wilson_interval(tp, tp + fp, 0.95)[1]
    f1_high = pooled["f1"][1]
    assert f1_high == 2 * precision_high * recall_high / (precision_high + recall_high)
    assert pooled["f1"][0] is not None and pooled["f1"][0] < f1_high


def test_incomplete_windows_do_not_count() -> None:
    _, decisions = feed([perf(0, True, complete=False), perf(1, True, complete=False)])
    assert decisions == [None, None]


def test_a_later_revision_supersedes_and_an_older_one_is_ignored() -> None:
    state, decisions = feed([perf(0, True), perf(1, True, revision=0, complete=False)])
    assert decisions == [None, None]
    # Window 1 completes, still below: the rule holds.
    state, decisions = feed([perf(1, True, revision=1)], state)
    assert decisions[0] is not None and decisions[0].fired
    # A later revision of window 1 finds it fine after more labels: the rule no longer holds.
    state, decisions = feed([perf(1, False, revision=2, recall=0.85)], state)
    assert decisions == [None]
    # A stale revision arriving late changes nothing.
    state, decisions = feed([perf(1, True, revision=1)], state)
    assert decisions == [None]
    assert [w.revision for w in state.performance] == [0, 2]


def test_windows_are_ordered_by_their_start_not_by_arrival() -> None:
    # Days 3 and 4 are fine; day 0 and 1 (below) arrive last but are older than the last three.
    results = [perf(2, True), perf(3, False), perf(4, False), perf(0, True), perf(1, True)]
    _, decisions = feed(results)
    assert decisions == [None] * 5


# ------------------------------------------------------------------------------ schedule
def test_schedule_fires_when_the_model_data_is_older_than_the_limit() -> None:
    served = ServedModel("v1", data_end=T0 - timedelta(days=30))
    _, decisions = feed([drift(1, False)], served=served)  # 30 days and 1 hour: older
    assert decisions[0] is not None and decisions[0].rules == ("schedule",)
    assert decisions[0].reason == "schedule: model data 30 days old"
    young = ServedModel("v1", data_end=T0 - timedelta(days=29))
    _, decisions = feed([drift(1, False)], served=young)
    assert decisions == [None]
    _, decisions = feed([drift(1, False)], served=ServedModel("v1"))  # data_end unknown
    assert decisions == [None]


def test_several_rules_give_one_reason_in_rule_order() -> None:
    served = ServedModel("v1", data_end=T0 - timedelta(days=40))
    results = [perf(0, True), perf(1, True), drift(30, True), drift(31, True), drift(32, True)]
    _, decisions = feed(results, served=served)
    last = decisions[-1]
    assert last is not None and last.rules == ("performance", "drift", "schedule")
    assert last.reason.startswith("performance: recall 0.61")
    assert (
        "; drift: 3 of the last 3 windows; schedule: model data 42 days old" in last.reason
    )  # clock: day 2 ends


# ------------------------------------------------------------------------------ debouncing
def test_a_run_in_flight_suppresses_and_the_cool_down_then_holds() -> None:
    config = TriggerConfig(drift_k=1, drift_m=1, cool_down_days=7)
    state, (first,) = feed([drift(1, True)], config=config)
    assert first is not None and first.fired
    state = run_started(state, first, "retrain-1")
    state, (second,) = feed([drift(2, True)], state, config)
    assert second is not None and second.suppressed_by == "in_flight"
    assert second.reason == first.reason
    state = run_finished(state)
    state, (third,) = feed([drift(3, True)], state, config)
    assert third is not None and third.suppressed_by == "cool_down"
    # Seven days of stream time after the start (T0 + 1 h), a run may start again.
    before = drift(7 * 24, True)
    state, (fourth,) = feed([before], state, config)
    assert fourth is not None and fourth.suppressed_by == "cool_down"
    state, (fifth,) = feed([drift(7 * 24 + 1, True)], state, config)
    assert fifth is not None and fifth.fired


def test_the_in_flight_run_survives_a_version_switch() -> None:
    config = TriggerConfig(drift_k=1, drift_m=1, cool_down_days=0)
    state, (first,) = feed([drift(1, True)], config=config)
    assert first is not None
    state = run_started(state, first, "retrain-1")
    state, (second,) = feed([drift(2, True, version="v2")], state, config)
    assert second is not None and second.suppressed_by == "in_flight"
    assert second.model_version == "v2"


def test_the_stream_clock_never_goes_back() -> None:
    state, _ = feed([drift(5, False), drift(2, False)])
    assert state.clock == T0 + timedelta(hours=5)


# ------------------------------------------------------------------------------ records
def drift_record(**changes: Any) -> dict[str, Any]:
    record = {
        "kind": "feature_drift",
        "window_id": "v1:t:0:0-999",
        "model_version": "v1",
        "start": "2026-03-02T00:00:00.000000Z",
        "end": "2026-03-02T01:00:00.000000Z",
        "tested": True,
        "is_drift": True,
        "drifted": ["log_amount"],
        "score": None,
    }
    record.update(changes)
    return record


def test_a_drift_record_is_parsed() -> None:
    result = parse_result(json.dumps(drift_record()).encode())
    assert result == DriftResult(
        "v1:t:0:0-999",
        "v1",
        T0,
        T0 + timedelta(hours=1),
        tested=True,
        is_drift=True,
        drifted=("log_amount",),
    )


def test_a_performance_record_is_parsed() -> None:
    record = {
        "kind": "performance",
        "window_id": "v1:performance:2026-03-02T00:00:00Z",
        "model_version": "v1",
        "start": "2026-03-02T00:00:00Z",
        "end": "2026-03-03T00:00:00Z",
        "complete": True,
        "revision": 2,
        "recall": 0.5,
        "precision": 0.2,
        "f1": None,
        "baseline": None,
        "tolerance": 0.05,
        "below_baseline": False,
    }
    result = parse_result(record)
    assert isinstance(result, PerformanceResult)
    assert result.revision == 2 and result.recall == 0.5 and result.f1 is None
    assert result.baseline == {} and result.end == T0 + timedelta(days=1)


def test_other_kinds_are_not_results() -> None:
    assert parse_result({"kind": "retrain", "event": "started"}) is None


@pytest.mark.parametrize(
    ("data", "reason", "named"),
    [
        (b"{not json", "not_json", "not JSON"),
        (b"[1, 2]", "not_an_object", "list"),
        (drift_record(tested=None), "bad_field", "tested"),
        ({k: v for k, v in drift_record().items() if k != "end"}, "missing_field", "end"),
        (drift_record(end="yesterday"), "bad_field", "end"),
        (drift_record(drifted="log_amount"), "bad_field", "drifted"),
        (drift_record(model_version=""), "bad_field", "model_version"),
        (
            {**drift_record(), "kind": "performance", "complete": True, "recall": "high"},
            "bad_field",
            "recall",
        ),
    ],
)
def test_bad_records_name_the_field_and_the_reason(data: Any, reason: str, named: str) -> None:
    if isinstance(data, dict) and data.get("kind") == "performance":
        data = {**data, "below_baseline": True}
    with pytest.raises(ResultRecordError) as caught:
        parse_result(data if isinstance(data, bytes | dict) else json.dumps(data))
    assert caught.value.reason == reason
    assert named in str(caught.value)


def test_the_config_is_checked() -> None:
    with pytest.raises(ValueError, match="drift_k"):
        TriggerConfig(drift_k=6, drift_m=5)
    with pytest.raises(ValueError, match="cool_down_days"):
        TriggerConfig(cool_down_days=-1)


# ------------------------------------------------------------------------------ the shell's parts
def test_the_file_source_returns_whole_lines_and_restarts_on_truncation(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    source = FileSource(path)
    stop = threading.Event()
    assert source.poll(stop, 0.0) == []  # no file yet
    path.write_bytes(b'{"a": 1}\n{"b": ')
    assert source.poll(stop, 0.0) == [b'{"a": 1}']
    with path.open("ab") as handle:
        handle.write(b"2}\n\n")
    assert source.poll(stop, 0.0) == [b'{"b": 2}']
    path.write_bytes(b'{"c": 3}\n')  # truncated and rewritten
    assert source.poll(stop, 0.0) == []
    assert source.poll(stop, 0.0) == [b'{"c": 3}']
    source.close()


def test_the_run_command_passes_the_reason_the_data_and_the_recent_split(tmp_path: Path) -> None:
    options = LocalRunOptions(
        runs_dir=tmp_path,
        registry=tmp_path / "registry",
        data=("/data/a.parquet", "/data/b.csv"),
        params=("n_estimators=30", "train_days=14"),
        python="python",
    )
    command = pipeline_run_command(options, tmp_path / "run", "drift: 3 of the last 5 windows")
    text = " ".join(command)
    assert command[:5] == ["python", "-m", "fraud_detection", "pipeline", "run"]
    assert command[command.index("--reason") + 1] == "drift: 3 of the last 5 windows"
    assert "--data /data/a.parquet --data /data/b.csv" in text
    assert "--split temporal" in text and "--kafka-topic" not in text
    # The user's parameters come after the default, so they win.
    assert text.index("train_days=28") < text.index("train_days=14")
    topic = LocalRunOptions(runs_dir=tmp_path, kafka_topic="transactions", kafka_bootstrap="h:1")
    text = " ".join(pipeline_run_command(topic, tmp_path / "run", "r"))
    assert "--kafka-topic transactions --kafka-bootstrap h:1" in text and "--data" not in text


def test_the_cool_down_is_read_back_from_the_events_file(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    assert last_started(path) is None
    lines = [
        event_record("started", T0, "drift: x", "v1", {"name": "a"}),
        event_record("finished", T0 + timedelta(days=1), "drift: x", "v1", {"name": "a"}),
        event_record("started", T0 + timedelta(days=9), "schedule: y", "v1", {"name": "b"}),
        event_record("suppressed", T0 + timedelta(days=10), "schedule: y", "v1"),
    ]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n{cut short")
    assert last_started(path) == T0 + timedelta(days=9)
    assert lines[0]["at"] == "2026-03-02T00:00:00Z" and lines[0]["kind"] == "retrain"


class HeldRun:
    """A run that stays in flight until the test says it ended (a stand-in for a pipeline run:
    what is tested here is the trigger's bookkeeping, not the run)."""

    name = "held"

    def __init__(self) -> None:
        self.end: Any = None

    def describe(self) -> dict[str, Any]:
        return {"name": self.name}

    def poll(self) -> Any:
        return self.end

    def stop(self) -> Any:
        return self.end


class HeldLauncher:
    """Starts :class:`HeldRun` runs and keeps them."""

    def __init__(self) -> None:
        self.runs: list[HeldRun] = []

    def start(self, reason: str) -> HeldRun:
        self.runs.append(HeldRun())
        return self.runs[-1]


def test_a_suppression_is_written_once_while_it_lasts(tmp_path: Path) -> None:
    from fraud_detection.monitoring.trigger_runner import EventWriter, RetrainTrigger, ServedModels

    events_path = tmp_path / "events.jsonl"
    launcher = HeldLauncher()
    trigger = RetrainTrigger(
        FileSource(tmp_path / "results.jsonl"),
        launcher,
        EventWriter(events_path),
        ServedModels(None, None),
    )

    def record(i: int) -> bytes:
        window = drift(i, True, drifted=["log_amount"])
        return json.dumps(
            {
                "kind": "feature_drift",
                "window_id": window.window_id,
                "model_version": window.model_version,
                "start": window.start.isoformat(),
                "end": window.end.isoformat(),
                "tested": True,
                "is_drift": True,
                "drifted": list(window.drifted),
            }
        ).encode()

    decisions = [trigger.handle(record(i)) for i in range(1, 11)]
    fired = [d for d in decisions if d is not None and d.fired]
    suppressed = [d for d in decisions if d is not None and not d.fired]
    assert len(fired) == 1 and len(launcher.runs) == 1
    assert len(suppressed) == 7  # windows 4-10 while the run is in flight
    written = [json.loads(line) for line in events_path.read_text().splitlines()]
    assert [e["event"] for e in written] == ["started", "suppressed"]
    assert written[1]["suppressed_by"] == "in_flight"
    counted = trigger.metrics.decisions.labels(rule="drift", action="in_flight")._value.get()
    assert counted == 7


def test_drift_can_wait_until_it_has_lasted() -> None:
    """With drift_wait_days the rule holds once the episode is old enough, not before; a quiet
    stretch ends the episode and the next one waits again."""
    config = TriggerConfig(drift_wait_days=0.5)  # 12 hourly windows
    state, decisions = feed(
        [drift(i, True, drifted=["log_amount"]) for i in range(1, 15)], config=config
    )
    fired = [i + 1 for i, d in enumerate(decisions) if d is not None and d.fired]
    # The first drifting window starts at hour 0; the rule holds from the window ending at 12.
    assert fired[0] == 12 and decisions[:11] == [None] * 11
    assert state.drift_since == T0
    assert decisions[11] is not None and decisions[11].reason.endswith(
        f"since {T0.strftime('%Y-%m-%d %H:%M')}"
    )
    state, _ = feed([drift(i, False) for i in range(15, 20)], state, config=config)
    assert state.drift_since is None
    _, decisions = feed([drift(i, True) for i in range(1, 4)])
    assert decisions[2] is not None and decisions[2].fired  # without a wait: at once


def test_a_store_that_cannot_be_read_is_looked_up_again_not_fatal(tmp_path: Path) -> None:
    """The served model's bundle from a URL locator: a store error leaves the version without
    ``data_end`` for now (no schedule rule), and the next lookup tries the store again."""
    from fraud_detection.monitoring.trigger_runner import ServedModels

    bundle = tmp_path / "v1"
    bundle.mkdir()
    (bundle / "manifest.json").write_text(json.dumps({"data_end": "2026-03-01T00:00:00+00:00"}))

    class FlakyStore:
        """A locator whose store fails on the first lookup."""

        def __init__(self) -> None:
            self.calls = 0

        def locate(self, model_version: str) -> Path | None:
            self.calls += 1
            if self.calls == 1:
                raise OSError("the store is unreachable")
            return tmp_path / model_version

    store = FlakyStore()
    served = ServedModels(None, store)
    assert served.of("v1").data_end is None
    assert served.of("v1").data_end == datetime(2026, 3, 1, tzinfo=UTC)
    assert served.of("v1").data_end == datetime(2026, 3, 1, tzinfo=UTC)
    assert store.calls == 2, "a version found is kept, not looked up again"
