"""``fraud trigger`` end to end: a results file in, one real ``kfp.local`` run out.

The trigger process follows a results file into which the test writes drift results of the
served model (a small bundle promoted into a temporary registry). When the rule holds it starts
``fraud pipeline run`` on a generated data file; the run must finish and deploy a new model
whose manifest carries the reason, and the trigger must record all of it as events and metrics.
Debouncing is checked around that one run: a drifting window while the run is in flight (or,
should the run be done by then, inside the cool-down) is suppressed, and once the new model
is current its own drifting windows count afresh and are suppressed by the cool-down.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from fraud_detection.data.files import write_transactions
from fraud_detection.data.generator import GeneratorConfig, generate_transactions
from fraud_detection.registry import ModelRegistry
from fraud_detection.streaming.broker import free_port
from support.waiting import wait_until

pytestmark = pytest.mark.integration

#: The data's last day is 2026-01-30; the results come after it.
T0 = datetime(2026, 1, 31, tzinfo=UTC)
#: A real pipeline run on a loaded 2-core machine: about a minute, bounded generously.
RUN_DEADLINE_S = 900.0


def drift_result(version: str, hour: int, is_drift: bool, tested: bool = True) -> dict[str, Any]:
    """A drift result of ``version`` for the hour ending ``hour`` hours after T0."""
    end = T0 + timedelta(hours=hour)
    return {
        "kind": "feature_drift",
        "window_id": f"{version}:fraud-detector-requests:0:{hour * 1000}-{hour * 1000 + 999}",
        "model_version": version,
        "start": (end - timedelta(hours=1)).isoformat().replace("+00:00", "Z"),
        "end": end.isoformat().replace("+00:00", "Z"),
        "tested": tested,
        "is_drift": is_drift,
        "drifted": ["log_amount"] if is_drift else [],
        "score": None,
    }


def append(path: Path, *lines: dict[str, Any] | str) -> None:
    with path.open("a") as handle:
        for line in lines:
            handle.write((line if isinstance(line, str) else json.dumps(line)) + "\n")


def events(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def event(path: Path, name: str, nth: int = 0) -> dict[str, Any] | None:
    found = [record for record in events(path) if record["event"] == name]
    return found[nth] if len(found) > nth else None


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("trigger")


@pytest.fixture(scope="module")
def data(workdir: Path) -> Path:
    config = GeneratorConfig(n_transactions=30_000, n_cards=600, days=30, fraud_rate=0.01, seed=11)
    return write_transactions(generate_transactions(config), workdir / "transactions.parquet")


@pytest.fixture(scope="module")
def registry(workdir: Path, serving_bundle: Path) -> Path:
    root = workdir / "registry"
    assert ModelRegistry(root).promote(serving_bundle) == "test-1"
    return root


@pytest.fixture(scope="module")
def trigger(workdir: Path, data: Path, registry: Path) -> Iterator[dict[str, Any]]:
    """A running ``fraud trigger`` following an empty results file."""
    paths = {
        "results": workdir / "results.jsonl",
        "events": workdir / "events.jsonl",
        "runs": workdir / "runs",
        "log": workdir / "trigger.log",
    }
    paths["results"].touch()
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "fraud_detection",
        "trigger",
        "--results-file",
        str(paths["results"]),
        "--events-file",
        str(paths["events"]),
        "--registry",
        str(registry),
        "--data",
        str(data),
        "--runs-dir",
        str(paths["runs"]),
        "--drift-k",
        "2",
        "--drift-m",
        "3",
        "--param",
        "n_estimators=30",
        # The gate also compares with the deployed model on the new test days; the small
        # served bundle scores these generated days very well, so allow the new one below it.
        "--param",
        "tolerance=0.5",
        "--metrics-port",
        str(port),
    ]
    env = {**os.environ, "FRAUD_STATE_DIR": str(workdir / "state")}
    with paths["log"].open("wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env)
    try:
        yield {**paths, "process": process, "metrics": f"http://127.0.0.1:{port}/metrics"}
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def scrape(url: str) -> dict[str, float]:
    """The trigger's samples; none while its server is not up yet."""
    try:
        text = httpx.get(url, timeout=10).text
    except httpx.ConnectError:
        return {}
    samples = {}
    for line in text.splitlines():
        if line.startswith("fraud_trigger_") and " " in line:
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def test_drift_starts_a_real_run_that_deploys_a_model_carrying_the_reason(
    trigger: dict[str, Any], registry: Path
) -> None:
    results, events_file = trigger["results"], trigger["events"]
    append(
        results,
        "{not json",
        drift_result("test-1", 1, True),
        drift_result("other-version", 2, True),  # neither counts nor switches: test-1 is served
        drift_result("test-1", 3, False, tested=False),  # too few records: not counted
    )
    # A line being written: nothing happens until it is whole.
    with results.open("a") as handle:
        handle.write(json.dumps(drift_result("test-1", 4, True))[:40])
    wait_until(
        lambda: (
            scrape(trigger["metrics"]).get('fraud_trigger_results_total{kind="feature_drift"}')
            == 3.0
        ),
        "the three whole drift results to be read",
    )
    assert event(events_file, "started") is None
    with results.open("a") as handle:
        handle.write(json.dumps(drift_result("test-1", 4, True))[40:] + "\n")

    started = wait_until(lambda: event(events_file, "started"), "the run to start")
    reason = "drift: 2 of the last 2 windows (log_amount)"
    assert started["reason"] == reason
    assert started["model_version"] == "test-1"
    assert started["at"] == "2026-01-31T04:00:00Z"
    run_dir = Path(started["run"]["dir"])
    assert run_dir.parent == trigger["runs"] and "drift-2-of-the-last-2-windows" in run_dir.name

    # A drifting window while the run is in flight: suppressed, not a second run.
    append(results, drift_result("test-1", 5, True))
    suppressed = wait_until(lambda: event(events_file, "suppressed"), "the suppressed decision")

    finished = wait_until(
        lambda: event(events_file, "finished"), "the run to finish", timeout_s=RUN_DEADLINE_S
    )
    log_text = (run_dir / "trigger.log").read_text()
    assert finished["exit_code"] == 0, log_text
    assert finished["outcome"] == "deployed"
    assert finished["run"]["name"] == run_dir.name and finished["reason"] == reason
    order = [record["event"] for record in events(events_file)]
    expected = "in_flight" if order.index("suppressed") < order.index("finished") else "cool_down"
    assert suppressed["suppressed_by"] == expected
    assert order.count("started") == 1

    new_version = finished["new_model_version"]
    current = ModelRegistry(registry).current()
    assert current is not None and current.name == new_version != "test-1"
    manifest = json.loads((current / "manifest.json").read_text())
    assert manifest["trigger_reason"] == reason

    # The new model's own windows count afresh (test-1's above do not), inside the cool-down.
    append(results, drift_result(new_version, 24, True), drift_result(new_version, 25, True))
    after = wait_until(
        lambda: [
            record
            for record in events(events_file)[order.index("finished") + 1 :]
            if record["model_version"] == new_version
        ],
        "a decision on the new model",
    )
    assert after[0]["event"] == "suppressed" and after[0]["suppressed_by"] == "cool_down"
    assert after[0]["at"] == "2026-02-01T01:00:00Z"

    metrics = scrape(trigger["metrics"])
    assert metrics['fraud_trigger_records_skipped_total{reason="not_json"}'] == 1.0
    assert metrics['fraud_trigger_decisions_total{action="fired",rule="drift"}'] == 1.0
    assert metrics["fraud_trigger_runs_started_total"] == 1.0
    assert metrics['fraud_trigger_runs_finished_total{outcome="deployed"}'] == 1.0
    assert metrics["fraud_trigger_run_in_flight"] == 0.0

    process = trigger["process"]
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0, trigger["log"].read_text()
    assert "retrain trigger stopped" in trigger["log"].read_text()
