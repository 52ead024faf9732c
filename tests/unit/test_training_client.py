"""Submitting and scheduling: exactly what would be sent to Kubeflow Pipelines, and the checks
of the pipeline's parameters that come first.

No cluster runs here: :class:`FakeKfpClient` stands in for ``kfp.Client`` and records each call,
including the pipeline package as it was at the time of the call. The real ``kfp.Client`` is used
against a closed port and against a local HTTP server that refuses every request, to see what the
commands print when the cluster cannot be reached or refuses.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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
    run_name_for,
    schedule,
    submit,
)
from fraud_detection.pipeline.dag import PIPELINE_NAME, pipeline_parameters
from fraud_detection.pipeline.local import run_directory_name
from fraud_detection.pipeline.parameters import (
    RANGES,
    ParameterError,
    check_parameters,
    parse_parameters,
)
from fraud_detection.pipeline_cli import EXIT_FAILED, EXIT_INVALID_ARGUMENTS, EXIT_OK, TOKEN_ENV

HOST = "http://kfp.example:8888"
#: The smallest valid arguments: an input.
DATA = {"data": ["/mnt/data/tx.parquet"]}


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

    def __init__(self, host: str, namespace: str | None = None, token: str | None = None) -> None:
        self.host = host
        self.namespace = namespace
        self.token = token
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.packages: list[dict[str, Any]] = []

    def _keep(self, path: str) -> None:
        # The pipeline spec (the first document; the second is its Kubernetes platform spec).
        self.packages.append(next(yaml.safe_load_all(Path(path).read_text())))

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

    def factory(host: str, **options: Any) -> FakeKfpClient:
        created.append(FakeKfpClient(host, **options))
        return created[-1]

    monkeypatch.setattr(client_module, "make_client", factory)
    return created


def test_submit_sends_the_compiled_pipeline_and_the_arguments() -> None:
    clients: list[FakeKfpClient] = []
    result = submit(
        HOST,
        {"data": ["s3://bucket/tx.parquet"], "seed": 7},
        run_name="monthly",
        client_factory=lambda host, **options: (
            clients.append(FakeKfpClient(host, **options)) or clients[-1]
        ),
        namespace="team-a",
        token="secret",
    )
    assert result.run_id == "run-1"
    (fake_client,) = clients
    assert (fake_client.host, fake_client.namespace, fake_client.token) == (
        HOST,
        "team-a",
        "secret",
    )
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
        HOST,
        package=package,
        arguments={**DATA, "min_recall": 0.8},
        client_factory=lambda *_, **__: fake_client,
    )
    assert [name for name, _ in fake_client.calls] == ["create_experiment", "create_recurring_run"]
    assert fake_client.calls[0][1] == {"name": "fraud-detection"}
    call = fake_client.calls[1][1]
    assert call["cron_expression"] == "0 0 2 1 * *" == MONTHLY_CRON
    assert call["max_concurrency"] == 1
    assert call["no_catchup"] is True
    assert call["experiment_id"] == "exp-42"
    assert call["job_name"] == "fraud-training-monthly"
    assert call["params"] == {**DATA, "min_recall": 0.8, "trigger_reason": "schedule"}
    assert "reason 'schedule'" in call["description"]
    assert call["pipeline_package_path"] == str(package)
    assert call["enabled"] is True and call["enable_caching"] is False


@pytest.mark.parametrize("cron", ["0 2 1 * *", "0 0 2 1 * * 2026", "@monthly"])
def test_a_cron_without_six_fields_is_refused_before_any_call(cron: str) -> None:
    fake_client = FakeKfpClient(HOST)
    with pytest.raises(ScheduleError, match="six, seconds first"):
        schedule(HOST, cron=cron, arguments=DATA, client_factory=lambda *_, **__: fake_client)
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
    with pytest.raises(ParameterError, match="depth: unknown pipeline parameter"):
        parse_parameters(["depth=3"])
    with pytest.raises(ParameterError, match="seed: 'forty' is not a valid Integer"):
        parse_parameters(["seed=forty"])
    with pytest.raises(ParameterError, match="expected KEY=VALUE"):
        parse_parameters(["seed"])


def test_the_schedule_command_sends_what_it_says(fake: list[FakeKfpClient]) -> None:
    result = CliRunner().invoke(
        app,
        ["pipeline", "schedule", "--host", HOST, "--param", "max_depth=12", "--param", "data=x"],
    )
    assert result.exit_code == EXIT_OK, result.output
    (fake_client,) = fake
    call = fake_client.calls[-1][1]
    assert (call["cron_expression"], call["max_concurrency"]) == ("0 0 2 1 * *", 1)
    assert call["params"] == {"max_depth": 12, "data": ["x"], "trigger_reason": "schedule"}
    assert "0 0 2 1 * *" in result.output


def test_the_schedule_command_refuses_a_five_field_cron(fake: list[FakeKfpClient]) -> None:
    result = CliRunner().invoke(
        app, ["pipeline", "schedule", "--host", HOST, "--cron", "0 2 1 * *", "--param", "data=x"]
    )
    assert result.exit_code == EXIT_INVALID_ARGUMENTS
    assert "six, seconds first" in result.output
    assert all(not client.calls for client in fake)


def test_the_submit_command_sends_the_run(fake: list[FakeKfpClient]) -> None:
    result = CliRunner().invoke(
        app,
        [
            "pipeline",
            "submit",
            "--host",
            HOST,
            "--param",
            "split=temporal",
            "--param",
            "data=x",
            "--namespace",
            "team-a",
            "--reason",
            "performance: recall 0.61 < 0.72",
        ],
        env={TOKEN_ENV: "from-the-environment"},
    )
    assert result.exit_code == EXIT_OK, result.output
    call = fake[0].calls[0][1]
    assert call["arguments"] == {
        "split": "temporal",
        "data": ["x"],
        "trigger_reason": "performance: recall 0.61 < 0.72",
    }
    assert call["run_name"].startswith("fraud-training performance: recall 0.61 < 0.72 ")
    assert (fake[0].namespace, fake[0].token) == ("team-a", "from-the-environment")
    assert "submitted run run-1" in result.output
    assert "from-the-environment" not in result.output


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
    assert next(yaml.safe_load_all(target.read_text()))["pipelineInfo"]["name"] == PIPELINE_NAME
    assert (tmp_path / "c" / "train.yaml").is_file()


# ----------------------------------------------------------------- the pipeline's parameters
@pytest.fixture(scope="module")
def declared() -> dict[str, tuple[str, Any]]:
    return pipeline_parameters()


@pytest.mark.parametrize(
    ("arguments", "name", "reason"),
    [
        ({"min_recall": 2.0}, "min_recall", "must be between 0 and 1, got 2"),
        ({"min_f1": -0.1}, "min_f1", "must be between 0 and 1, got -0.1"),
        ({"min_recall": float("nan")}, "min_recall", "must be between 0 and 1, got nan"),
        ({"threshold": 1.0}, "threshold", "must be in (0, 1), got 1"),
        ({"max_invalid_fraction": 1.0}, "max_invalid_fraction", "must be in [0, 1), got 1"),
        ({"kafka_max_records": -1}, "kafka_max_records", "must be a finite number >= 0, got -1"),
        ({"n_estimators": -3}, "n_estimators", "must be an integer >= 1, got -3"),
        ({"n_estimators": 2.5}, "n_estimators", "must be an integer, got 2.5"),
        ({"max_train_rows": -1}, "max_train_rows", "must be >= 0, got -1"),
        ({"max_features": "most"}, "max_features", "must be sqrt, log2, all or a fraction"),
        ({"class_weight": "heavy"}, "class_weight", "must be 'balanced', 'none' or a positive"),
        ({"seed": -1}, "seed", "must be >= 0, got -1"),
        ({"test_size": 1.0}, "test_size", "must be in (0, 1), got 1.0"),
        ({"split": "random"}, "split", "must be one of stratified, temporal, got 'random'"),
        ({"tolerance": -1.0}, "tolerance", "must be a finite number >= 0, got -1.0"),
        ({"deploy_target": "mars"}, "deploy_target", "must be one of auto, local, kserve"),
        ({"exclude_known_compromised": "yes"}, "exclude_known_compromised", "true or false"),
        (
            {"depth": 3},
            "depth",
            "unknown pipeline parameter; known: allow_uncompared, class_weight, data",
        ),
        (
            {"split": "temporal", "train_start": "2018-04-01", "train_end": "2018-04-07"}
            | {"test_start": "2018-04-15", "test_end": "someday"},
            "test_end",
            "not a date or datetime: 'someday'",
        ),
        (
            {"split": "temporal", "train_start": "2018-04-01", "train_end": "2018-04-20"}
            | {"test_start": "2018-04-15", "test_end": "2018-04-21"},
            None,
            "windows must satisfy train_start < train_end <= test_start < test_end",
        ),
        ({"train_start": "2018-04-01"}, None, "give all of train_start, train_end, test_start"),
    ],
)
def test_a_bad_argument_is_named_with_the_reason(
    arguments: dict[str, Any], name: str | None, reason: str, declared: dict[str, Any]
) -> None:
    with pytest.raises(ParameterError) as raised:
        check_parameters({**DATA, **arguments}, declared)
    assert raised.value.name == name
    assert reason in raised.value.reason


def test_a_run_needs_an_input(declared: dict[str, Any]) -> None:
    with pytest.raises(ParameterError, match="no input: give data"):
        check_parameters({"seed": 3}, declared)
    with pytest.raises(ParameterError, match="no input"):
        check_parameters({"data": [" "]}, declared)
    assert check_parameters({"kafka_topic": "transactions"}, declared)["kafka_topic"]
    both = check_parameters({**DATA, "kafka_topic": "transactions"}, declared)
    assert both["kafka_topic"] == "transactions" and both["data"] == DATA["data"]


def test_valid_arguments_come_back_with_every_default(declared: dict[str, Any]) -> None:
    arguments = {
        **DATA,
        "split": "temporal",
        "train_start": "2018-04-01",
        "train_end": "2018-04-07",
        "test_start": "2018-04-15",
        "test_end": "2018-04-21",
        "min_recall": 1,  # an integer is a valid Float
        "threshold": 0.2,
    }
    values = check_parameters(arguments, declared)
    assert values == {name: default for name, (_, default) in declared.items()} | arguments


def test_the_ranges_are_of_declared_numbers_and_hold_their_defaults(
    declared: dict[str, Any],
) -> None:
    for name, bounds in RANGES.items():
        kind, default = declared[name]
        assert kind in ("Integer", "Float"), name
        assert bounds.problem(default) is None, name


# ------------------------------------------------------------------------ why a run is started
@pytest.mark.parametrize(
    ("reason", "problem"),
    [
        ("", "must not be empty"),
        ("   ", "must not be empty"),
        ("x" * 201, "must be at most 200 characters, got 201"),
        ("drift\nnow", "must not hold control characters, got '\\n' at position 5"),
        ("a\x1b[31mred", "must not hold control characters, got '\\x1b' at position 1"),
        (7, "must be text, got 7"),
    ],
)
def test_a_bad_trigger_reason_is_refused(
    reason: Any, problem: str, declared: dict[str, Any]
) -> None:
    with pytest.raises(ParameterError) as raised:
        check_parameters({**DATA, "trigger_reason": reason}, declared)
    assert raised.value.name == "trigger_reason"
    assert problem in raised.value.reason


def test_a_trigger_reason_is_free_text_and_defaults_to_manual(declared: dict[str, Any]) -> None:
    assert check_parameters(DATA, declared)["trigger_reason"] == "manual"
    reason = "drift: 3 of the last 5 windows (amt_deviation, fraud_probability) é" + "x" * 133
    assert len(reason) == 200
    assert check_parameters({**DATA, "trigger_reason": reason}, declared)["trigger_reason"] == (
        reason
    )


def test_submit_names_the_run_after_its_reason() -> None:
    clients: list[FakeKfpClient] = []

    def factory(host: str, **options: Any) -> FakeKfpClient:
        clients.append(FakeKfpClient(host, **options))
        return clients[-1]

    submit(HOST, DATA, client_factory=factory, reason="drift: 3 of the last 5 windows")
    call = clients[0].calls[0][1]
    assert call["arguments"]["trigger_reason"] == "drift: 3 of the last 5 windows"
    assert call["run_name"].startswith("fraud-training drift: 3 of the last 5 windows 20")
    submit(HOST, DATA, client_factory=factory)
    assert clients[1].calls[0][1]["run_name"].startswith("fraud-training manual ")
    assert run_name_for("schedule", datetime(2026, 3, 1, 2, tzinfo=UTC)) == (
        "fraud-training schedule 2026-03-01 02:00:00 UTC"
    )
    with pytest.raises(ParameterError, match="trigger_reason: given twice"):
        submit(HOST, {**DATA, "trigger_reason": "a"}, client_factory=factory, reason="b")
    assert len(clients) == 2


@pytest.mark.parametrize("command", ["run", "submit"])
def test_a_bad_reason_exits_2_naming_the_option(
    command: str, fake: list[FakeKfpClient], tmp_path: Path
) -> None:
    where = ["--host", HOST] if command == "submit" else ["--output-dir", str(tmp_path / "run")]
    result = CliRunner().invoke(
        app, ["pipeline", command, *where, "--param", "data=x", "--reason", "two\nlines"]
    )
    assert result.exit_code == EXIT_INVALID_ARGUMENTS, result.output
    assert "--reason: must not hold control characters" in result.output
    result = CliRunner().invoke(
        app, ["pipeline", command, *where, "--reason", "", "--param", "data=x"]
    )
    assert result.exit_code == EXIT_INVALID_ARGUMENTS, result.output
    assert "--reason: must not be empty" in result.output
    assert all(not client.calls for client in fake)
    assert not (tmp_path / "run").exists()


def test_submit_and_schedule_check_the_arguments_before_any_call() -> None:
    clients: list[FakeKfpClient] = []

    def factory(host: str, **options: Any) -> FakeKfpClient:
        clients.append(FakeKfpClient(host, **options))
        return clients[-1]

    with pytest.raises(ParameterError, match="min_recall: must be between 0 and 1"):
        submit(HOST, {**DATA, "min_recall": 2.0}, client_factory=factory)
    with pytest.raises(ParameterError, match="n_estimators: must be an integer >= 1"):
        schedule(HOST, arguments={**DATA, "n_estimators": 0}, client_factory=factory)
    with pytest.raises(ParameterError, match="no input"):
        submit(HOST, {}, client_factory=factory)
    assert clients == []


@pytest.mark.parametrize("command", ["submit", "schedule"])
def test_the_cluster_commands_refuse_a_bad_parameter_before_sending(
    command: str, fake: list[FakeKfpClient]
) -> None:
    result = CliRunner().invoke(
        app,
        ["pipeline", command, "--host", HOST, "--param", "data=x", "--param", "n_estimators=-3"],
    )
    assert result.exit_code == EXIT_INVALID_ARGUMENTS
    assert "--param n_estimators: must be an integer >= 1, got -3" in result.output
    assert fake == []


# ------------------------------------------------------------ a cluster that is not there
def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("command", ["submit", "schedule"])
def test_an_unreachable_cluster_is_one_error_line(command: str) -> None:
    host = f"http://127.0.0.1:{_closed_port()}"
    result = CliRunner().invoke(app, ["pipeline", command, "--host", host, "--param", "data=x"])
    assert result.exit_code == EXIT_FAILED
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith(f"error: cannot reach Kubeflow Pipelines at {host}: ")
    assert "Connection refused" in lines[0]


@dataclass
class Recorded:
    """What a refusing API server received."""

    url: str
    requests: list[tuple[str, dict[str, str]]]


@pytest.fixture
def refusing_api() -> Iterator[Recorded]:
    """A local HTTP server that answers every request 401, as a cluster without the token."""
    recorded = Recorded("", [])

    class Handler(BaseHTTPRequestHandler):
        def _refuse(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            recorded.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
            body = json.dumps({"code": 16, "message": "request is not authenticated"}).encode()
            self.send_response(401)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            self._refuse()

        def do_POST(self) -> None:
            self._refuse()

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    recorded.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield recorded
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_a_refusing_cluster_is_one_error_line_and_gets_the_token_and_namespace(
    refusing_api: Recorded,
) -> None:
    result = CliRunner().invoke(
        app,
        [
            "pipeline",
            "submit",
            "--host",
            refusing_api.url,
            "--namespace",
            "team-a",
            "--param",
            "data=x",
        ],
        env={TOKEN_ENV: "tok-123"},
    )
    assert result.exit_code == EXIT_FAILED
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert "refused the request: 401 Unauthorized: request is not authenticated" in lines[0]
    assert "tok-123" not in result.output
    path, headers = refusing_api.requests[0]
    assert headers["authorization"] == "Bearer tok-123"
    assert "namespace=team-a" in path


def test_a_local_run_directory_is_named_after_its_reason() -> None:
    now = datetime(2026, 3, 1, 2, 0, 5, tzinfo=UTC)
    assert run_directory_name("manual", now) == "run-20260301-020005-manual"
    assert run_directory_name("drift: 3 of the last 5 windows!", now) == (
        "run-20260301-020005-drift-3-of-the-last-5-windows"
    )
    assert run_directory_name("../..", now) == "run-20260301-020005"
    assert len(run_directory_name("x" * 200, now)) == len("run-20260301-020005-") + 40
