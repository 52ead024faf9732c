"""The whole loop, small: serve -> replay with delayed labels -> drift -> trigger -> ``kfp.local``
retraining -> gate -> promotion -> the servers and the monitor follow the new version.

It runs ``fraud demo``'s orchestration (:func:`~fraud_detection.loop_demo.run_demo`) on a small
generated data set: every part is the real one, as a process (broker, transformer, predictor,
``fraud monitor``, ``fraud trigger``, ``fraud replay``, pipeline runs). The traffic is held while
a retraining run is in flight, so where the runs fall in data time does not depend on the
machine's speed.
"""

from __future__ import annotations

import json

import pytest
from rich.console import Console

from fraud_detection.loop_demo import DemoConfig, DemoPaths, drift_by_version, read_jsonl, run_demo

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory) -> tuple[DemoConfig, dict]:
    config = DemoConfig(
        out_dir=tmp_path_factory.mktemp("loop"),
        transactions=60_000,
        cards=1_500,
        days=62,
        drift_start_day=51,
        replay_days=12,
        fraud_rate=0.02,
        rate=1_000.0,
        label_delay_days=1.0,
        cool_down_days=3.0,
        drift_wait_days=2.0,
        train_days=10,
        test_days=3,
        window_hours=6.0,
    )
    outcome = run_demo(config, Console(record=True, width=120))
    return config, outcome


def test_drift_starts_a_run_whose_model_is_promoted_without_a_failed_request(
    loop: tuple[DemoConfig, dict],
) -> None:
    config, outcome = loop
    paths = DemoPaths(config.out_dir)
    events = read_jsonl(paths.events)
    started = [event for event in events if event.get("event") == "started"]
    assert started, f"no retraining run started: {events}"
    assert started[0]["reason"].startswith(("drift", "performance"))
    assert outcome["retraining_runs_promoted"] >= 1
    assert outcome["served_model_version"] != outcome["first_model_version"]
    assert outcome["requests_failed"] == 0
    replay = json.loads(paths.replay_summary.read_text())
    assert replay["scored"] == replay["transactions_sent"] > 0


def test_the_first_model_flags_the_drift_and_the_monitor_switches_to_the_new_reference(
    loop: tuple[DemoConfig, dict],
) -> None:
    config, outcome = loop
    records = read_jsonl(DemoPaths(config.out_dir).results)
    versions = drift_by_version(records)
    first = versions[outcome["first_model_version"]]
    assert first["drifted"] >= 1
    promoted = [version for version in versions if version != outcome["first_model_version"]]
    assert promoted, f"no window was tested against a retrained model's reference: {versions}"
    assert any(versions[version]["tested"] for version in promoted)
    performance = [record for record in records if record.get("kind") == "performance"]
    assert performance, "no performance window was reported from the labels"
