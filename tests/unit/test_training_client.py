"""Submitting and scheduling: exactly what would be sent to Kubeflow Pipelines.

No cluster runs here: :class:`FakeKfpClient` stands in for ``kfp.Client`` and records each call,
including the pipeline package as it was at the time of the call.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from fraud_detection.cli import app
from fraud_detection.pipeline import client as client_module
from fraud_detection.pipeline.client import (
    MONTHLY_CRON,
    ScheduleError,
    check_cron,
    parse_parameters,
    schedule,
    submit,
)
from fraud_detection.pipeline.dag import PIPELINE_NAME

HOST = "http://kfp.example:8888"


@dataclass
class _Experiment:
    experiment_id: str
    display_name: str


@dataclass
class _Result:
    run_id: str = "run-1"
    recurring_run_id: str = "job-1"


class FakeKfpClient:
    """Records ``kfp.Client`` calls; reads the package file while it still exists."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.packages: list[dict[str, Any]] = []

    def _keep(self, path: str) -> None:
        self.packages.append(yaml.safe_load(Path(path).read_text()))

    def create_run_from_pipeline_package(self, **call: Any) -> _Result:
        self.calls.append(("create_run_from_pipeline_package", call))
        self._keep(call["pipeline_file"])
        return _Result()

    def create_experiment(self, **call: Any) -> _Experiment:
        self.calls.append(("create_experiment", call))
        return _Experiment("exp-42", call["name"])

    def create_recurring_run(self, **call: Any) -> _Result:
        self.calls.append(("create_recurring_run", call))
        self._keep(call["pipeline_package_path"])
        return _Result()


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> list[FakeKfpClient]:
    """Every client the code creates, in order (``make_client`` replaced by the fake)."""
    created: list[FakeKfpClient] = []

    def factory(host: str) -> FakeKfpClient:
        created.append(FakeKfpClient(host))
        return created[-1]

    monkeypatch.setattr(client_module, "make_client", factory)
    return created


def test_submit_sends_the_compiled_pipeline_and_the_arguments() -> None:
    clients: list[FakeKfpClient] = []
    result = submit(
        HOST,
        {"data": ["s3://bucket/tx.parquet"], "seed": 7},
        run_name="monthly",
        client_factory=lambda host: clients.append(FakeKfpClient(host)) or clients[-1],
    )
    assert result.run_id == "run-1"
    (fake_client,) = clients
    assert fake_client.host == HOST
    ((name, call),) = fake_client.calls
    assert name == "create_run_from_pipeline_package"
    assert call["arguments"] == {"data": ["s3://bucket/tx.parquet"], "seed": 7}
    assert call["run_name"] == "monthly"
    assert call["experiment_name"] == "fraud-detection"
    assert call["enable_caching"] is False
    assert fake_client.packages[0]["pipelineInfo"]["name"] == PIPELINE_NAME
    assert not Path(call["pipeline_file"]).exists()  # a temporary package, cleaned up


def test_schedule_sends_a_monthly_utc_cron_and_one_run_at_a_time(tmp_path: Path) -> None:
    package = tmp_path / "pipeline.yaml"
    client_module.compile_pipeline(package)
    fake_client = FakeKfpClient(HOST)
    schedule(
        HOST, package=package, arguments={"min_recall": 0.8}, client_factory=lambda _: fake_client
    )
    assert [name for name, _ in fake_client.calls] == ["create_experiment", "create_recurring_run"]
    assert fake_client.calls[0][1] == {"name": "fraud-detection"}
    call = fake_client.calls[1][1]
    assert call["cron_expression"] == "0 0 2 1 * *" == MONTHLY_CRON
    assert call["max_concurrency"] == 1
    assert call["no_catchup"] is True
    assert call["experiment_id"] == "exp-42"
    assert call["job_name"] == "fraud-training-monthly"
    assert call["params"] == {"min_recall": 0.8}
    assert call["pipeline_package_path"] == str(package)
    assert call["enabled"] is True and call["enable_caching"] is False


@pytest.mark.parametrize("cron", ["0 2 1 * *", "0 0 2 1 * * 2026", "@monthly"])
def test_a_cron_without_six_fields_is_refused_before_any_call(cron: str) -> None:
    fake_client = FakeKfpClient(HOST)
    with pytest.raises(ScheduleError, match="six, seconds first"):
        schedule(HOST, cron=cron, client_factory=lambda _: fake_client)
    assert fake_client.calls == []
    assert check_cron(" 0  0 2 1 * * ") == MONTHLY_CRON


def test_parameters_are_typed_as_the_pipeline_declares_them() -> None:
    parsed = parse_parameters(
        [
            "n_estimators=50",
            "threshold=0.2",
            "exclude_known_compromised=false",
            'data=["a.csv", "b.csv"]',
            "split=temporal",
        ]
    )
    assert parsed == {
        "n_estimators": 50,
        "threshold": 0.2,
        "exclude_known_compromised": False,
        "data": ["a.csv", "b.csv"],
        "split": "temporal",
    }
    assert parse_parameters(["data=a.csv,b.csv"]) == {"data": ["a.csv", "b.csv"]}
    with pytest.raises(ScheduleError, match="unknown pipeline parameter 'depth'"):
        parse_parameters(["depth=3"])
    with pytest.raises(ScheduleError, match="not a valid Integer"):
        parse_parameters(["seed=forty"])


def test_the_schedule_command_sends_what_it_says(fake: list[FakeKfpClient]) -> None:
    result = CliRunner().invoke(
        app, ["pipeline", "schedule", "--host", HOST, "--param", "max_depth=12"]
    )
    assert result.exit_code == 0, result.output
    (fake_client,) = fake
    call = fake_client.calls[-1][1]
    assert (call["cron_expression"], call["max_concurrency"]) == ("0 0 2 1 * *", 1)
    assert call["params"] == {"max_depth": 12}
    assert "0 0 2 1 * *" in result.output


def test_the_schedule_command_refuses_a_five_field_cron(fake: list[FakeKfpClient]) -> None:
    result = CliRunner().invoke(
        app, ["pipeline", "schedule", "--host", HOST, "--cron", "0 2 1 * *"]
    )
    assert result.exit_code == 2
    assert "six, seconds first" in result.output
    assert all(not client.calls for client in fake)


def test_the_submit_command_sends_the_run(fake: list[FakeKfpClient]) -> None:
    result = CliRunner().invoke(
        app, ["pipeline", "submit", "--host", HOST, "--param", "split=temporal"]
    )
    assert result.exit_code == 0, result.output
    call = fake[0].calls[0][1]
    assert call["arguments"] == {"split": "temporal"}
    assert "submitted run run-1" in result.output


def test_the_compile_command_writes_the_yaml(tmp_path: Path) -> None:
    target = tmp_path / "out" / "pipeline.yaml"
    result = CliRunner().invoke(
        app,
        [
            "pipeline",
            "compile",
            "--output",
            str(target),
            "--components-dir",
            str(tmp_path / "c"),
            "--image",
            "x/y:1",
        ],
    )
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(target.read_text())["pipelineInfo"]["name"] == PIPELINE_NAME
    assert (tmp_path / "c" / "train.yaml").is_file()
