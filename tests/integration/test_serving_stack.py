"""The serving stack for real: tansu broker, predictor and transformer ``ModelServer`` processes
on loopback, scored over HTTP.

One stack serves the whole module (started once, always stopped). Its transformer runs on the
event clock (the data is historical) and checkpoints into a temporary state directory. Tests
that take parts down (predictor, broker, transformer) bring them back before they end, either
themselves or through the stack's supervisor; the model-update test runs last.

Nothing here depends on speed: every test waits for the event it needs (a process exited, a
server answers again, a log line was written) with a generous deadline.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from fraud_detection.bundle import MODEL_ONNX
from fraud_detection.features import FEATURE_NAMES
from fraud_detection.registry import ModelRegistry
from fraud_detection.serving.demo import held_out, score_over_http, to_instance
from fraud_detection.serving.launcher import (
    PREDICTOR_MODULE,
    STOP_TIMEOUT_S,
    ServerProcess,
    ServerStartError,
    ServingStack,
    StackConfig,
    StopError,
)
from fraud_detection.serving.mirror import DROP_REASONS
from fraud_detection.streaming.broker import LOOPBACK, LocalBroker, free_port
from fraud_detection.streaming.kafka import read_topic
from support.bundles import SplitData, build_bundle
from support.serving import STARTUP_TIMEOUT_S
from support.waiting import DEADLINE_S, wait_until

pytestmark = pytest.mark.integration

TOPIC = "it-fraud-mirror"
LAUNCHER_LOGGER = "fraud_detection.serving.launcher"
#: One line of the servers' text log format (UTC time, pid, level, logger, message).
TEXT_LOG_LINE = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z \d+ [A-Z]+ [\w.]+: .*"


class Broker:
    """The module's broker; the broker-down test stops it and starts a new one on its port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.broker = LocalBroker(port=self.port, topics=[TOPIC]).start()

    @property
    def bootstrap(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def restart(self) -> None:
        self.broker.stop()
        self.broker = LocalBroker(port=self.port, topics=[TOPIC]).start()


@pytest.fixture(scope="module")
def broker() -> Iterator[Broker]:
    holder = Broker()
    try:
        yield holder
    finally:
        holder.broker.stop()


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory, serving_bundle: Path) -> ModelRegistry:
    registry = ModelRegistry(tmp_path_factory.mktemp("registry"))
    registry.promote(serving_bundle)
    return registry


@pytest.fixture(scope="module")
def stack(
    broker: Broker, registry: ModelRegistry, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServingStack]:
    config = StackConfig(
        registry=registry.root,
        kafka=broker.bootstrap,
        mirror_topic=TOPIC,
        log_dir=tmp_path_factory.mktemp("logs"),
        startup_timeout_s=STARTUP_TIMEOUT_S,
        clock="event",
        state_dir=tmp_path_factory.mktemp("serving-state"),
        checkpoint_interval_s=1.0,
        max_instances=100,
        predictor_args=["--reload_interval", "0.3"],
        transformer_args=[
            "--reload_interval",
            "0.3",
            "--mirror_delivery_timeout_ms",
            "3000",
            # The default idle priority lets a saturated CPU starve the producer (by design:
            # scoring first, drops counted); these tests check what is mirrored, on any load.
            "--mirror_priority",
            "normal",
        ],
    )
    with ServingStack(config) as running:
        yield running


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30.0) as http:
        yield http


def fresh_instances(data: SplitData, count: int, offset: int = 0) -> list[dict[str, Any]]:
    """Held-out transactions with ids unique to this call."""
    rows = data.held_out.iloc[offset : offset + count].to_dict("records")
    tag = uuid.uuid4().hex[:8]
    return [{**to_instance(row), "transaction_id": f"{tag}-{i}"} for i, row in enumerate(rows)]


def mirrored(bootstrap: str, ids: set[str], timeout_s: float = DEADLINE_S) -> dict[str, Any]:
    """Records of the mirror topic whose transaction ids are in ``ids`` (waits for all)."""
    found: dict[str, Any] = {}

    def all_found() -> bool:
        for record in read_topic(bootstrap, TOPIC, timeout_s=10):
            value = orjson.loads(record.value)
            if value["transaction_id"] in ids:
                found[value["transaction_id"]] = record
        return set(found) == ids

    try:
        wait_until(all_found, f"{len(ids)} transactions to be mirrored", timeout_s, poll_s=0.3)
    except AssertionError as exc:
        raise AssertionError(f"mirrored {sorted(found)} of {sorted(ids)}") from exc
    return found


def mirror_drops(client: httpx.Client, stack: ServingStack) -> float:
    """Mirror records dropped so far, over every reason."""
    return sum(
        metric(client, stack.url, "fraud_mirror_dropped_total", f'{{reason="{reason}"}}')
        for reason in DROP_REASONS
    )


def assert_predictor_unavailable(response: httpx.Response, detail: str = "") -> None:
    """A 503 whose error says the predictor is unavailable (and ``detail``)."""
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert "predictor" in error and "unavailable" in error and detail in error, error


def score_until_ok(
    client: httpx.Client, stack: ServingStack, data: SplitData, what: str
) -> httpx.Response:
    """Score fresh transactions until one is answered 200 (``what`` that shows); meanwhile
    only 503 is acceptable. The wait covers a server's start."""

    def attempt() -> httpx.Response | None:
        try:
            response = client.post(stack.predict_url, json={"instances": fresh_instances(data, 1)})
        except httpx.TransportError:
            return None  # the transformer itself is not listening (yet)
        assert response.status_code in (200, 503), response.text
        return response if response.status_code == 200 else None

    return wait_until(attempt, what, STARTUP_TIMEOUT_S, poll_s=0.1)


def metric(client: httpx.Client, base: str, name: str, labels: str = "") -> float:
    for line in client.get(f"{base}/metrics").text.splitlines():
        if line.startswith(f"{name}{labels} ") or (not labels and line.startswith(f"{name} ")):
            return float(line.split()[-1])
    return 0.0


def families(client: httpx.Client, base: str) -> dict[str, Any]:
    """The ``fraud_*`` metric families a server exports, by name."""
    from prometheus_client.parser import text_string_to_metric_families

    text = client.get(f"{base}/metrics").text
    return {
        family.name: family
        for family in text_string_to_metric_families(text)
        if family.name.startswith("fraud_")
    }


def log_lines(server: ServerProcess | None) -> list[str]:
    assert server is not None
    return server.log_path.read_text().splitlines()


def test_scored_end_to_end_and_mirrored(
    stack: ServingStack, broker: Broker, client: httpx.Client, serving_data: SplitData
) -> None:
    batch = fresh_instances(serving_data, 3)
    response = client.post(stack.predict_url, json={"instances": batch})
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert [p["transaction_id"] for p in predictions] == [i["transaction_id"] for i in batch]
    for prediction in predictions:
        assert 0.0 <= prediction["fraud_probability"] <= 1.0
        assert prediction["is_fraud"] == (prediction["fraud_probability"] >= 0.1)
        assert (prediction["threshold"], prediction["model_version"]) == (0.1, "test-1")

    records = mirrored(broker.bootstrap, {p["transaction_id"] for p in predictions})
    for prediction in predictions:
        record = records[prediction["transaction_id"]]
        headers = {key: value.decode() for key, value in record.headers}
        assert headers["ce_type"] == "org.kubeflow.serving.inference.request"
        assert headers["ce_specversion"] == "1.0"
        assert headers["ce_inferenceservicename"] == "fraud-detector"
        assert headers["ce_source"] and headers["ce_id"]
        value = orjson.loads(record.value)
        assert list(value["features"]) == list(FEATURE_NAMES)
        assert value["fraud_probability"] == prediction["fraud_probability"]
        assert (value["model_version"], value["is_fraud"]) == ("test-1", prediction["is_fraud"])
    assert len({records[p["transaction_id"]].headers[1] for p in predictions}) == 3  # ce_id


def test_scoring_is_counted_on_the_metrics_endpoints(
    stack: ServingStack, client: httpx.Client, serving_data: SplitData
) -> None:
    assert stack.predictor is not None
    names = (
        "fraud_transactions_scored_total",
        "fraud_transactions_flagged_total",
        "fraud_probability_count",
        "fraud_live_cards",
    )
    before = {name: metric(client, stack.url, name) for name in names}
    batch = fresh_instances(serving_data, 8)
    batch[0]["card_id"] = f"card-{uuid.uuid4().hex}"  # a card the live state has not seen
    response = client.post(stack.predict_url, json={"instances": batch})
    assert response.status_code == 200, response.text
    flagged = sum(p["is_fraud"] for p in response.json()["predictions"])
    grown = {name: metric(client, stack.url, name) - before[name] for name in names}
    assert grown == {
        "fraud_transactions_scored_total": 8,
        "fraud_transactions_flagged_total": flagged,
        "fraud_probability_count": 8,
        "fraud_live_cards": 1,
    }
    for base in (stack.url, stack.predictor.url):
        exported = families(client, base)
        assert {"fraud_model_info", "fraud_model_switches", "fraud_requests_rejected"} <= set(
            exported
        )
        assert all(family.documentation for family in exported.values()), exported
        (info,) = exported["fraud_model_info"].samples
        assert info.labels == {"version": "test-1"} and info.value == 1.0
    exported = families(client, stack.url)
    assert {"fraud_transactions_scored", "fraud_probability", "fraud_live_cards"} <= set(exported)
    assert {"fraud_mirror_sent", "fraud_predictor_failures"} <= set(exported)
    buckets = {
        sample.labels["le"]
        for sample in exported["fraud_probability"].samples
        if sample.name == "fraud_probability_bucket"
    }
    assert {"0.09", "0.1", "0.11"} <= buckets  # resolves around the 0.1 threshold


def test_refusals_are_counted_by_reason_on_the_server_that_refused(
    stack: ServingStack, client: httpx.Client
) -> None:
    labels = {reason: f'{{reason="{reason}"}}' for reason in ("bad_request", "not_found")}
    before = {
        r: metric(client, stack.url, "fraud_requests_rejected_total", labels[r]) for r in labels
    }
    assert client.post(stack.predict_url, content=b"{", headers=JSON).status_code == 400
    assert client.get(f"{stack.url}/v1/models/{uuid.uuid4().hex}").status_code == 404
    assert client.get(f"{stack.url}/{uuid.uuid4().hex}").status_code == 404
    after = {
        r: metric(client, stack.url, "fraud_requests_rejected_total", labels[r]) for r in labels
    }
    assert (
        after["bad_request"] - before["bad_request"],
        after["not_found"] - before["not_found"],
    ) == (
        1,
        2,
    )
    reasons = {
        s.labels["reason"] for s in families(client, stack.url)["fraud_requests_rejected"].samples
    }
    assert not any(len(reason) == 32 for reason in reasons)  # no path or model name as a label


def test_demo_scoring_over_http(stack: ServingStack, serving_data: SplitData) -> None:
    frame = held_out(serving_data.held_out, 60)
    report = score_over_http(stack.predict_url, frame)
    assert (report.scored, report.errors, len(report.latencies_ms)) == (60, 0, 60)
    assert report.model_versions == ("test-1",)
    assert report.actual_fraud == int(frame["is_fraud"].sum())
    assert 0 <= report.caught_fraud <= report.actual_fraud and report.flagged >= report.caught_fraud
    assert (
        "p99" in report.render()
        and f"flagged as fraud (probability >= threshold): {report.flagged}" in report.render()
    )


def test_v2_protocol(stack: ServingStack, client: httpx.Client, serving_data: SplitData) -> None:
    batch = fresh_instances(serving_data, 2, offset=10)
    inputs = [
        {
            "name": name,
            "shape": [2],
            "datatype": "FP64" if name == "amt" else "BYTES",
            "data": [row[name] for row in batch],
        }
        for name in ("transaction_id", "card_id", "merchant_id", "amt", "timestamp")
    ]
    response = client.post(f"{stack.url}/v2/models/fraud-detector/infer", json={"inputs": inputs})
    assert response.status_code == 200, response.text
    outputs = {output["name"]: output["data"] for output in response.json()["outputs"]}
    assert outputs["transaction_id"] == [row["transaction_id"] for row in batch]
    assert len(outputs["fraud_probability"]) == 2 and outputs["model_version"] == ["test-1"] * 2
    # The predictor speaks v2 too.
    assert stack.predictor is not None
    features = {
        "inputs": [{"name": "features", "shape": [1, 18], "datatype": "FP32", "data": [1.0] * 18}]
    }
    answer = client.post(f"{stack.predictor.url}/v2/models/fraud-detector/infer", json=features)
    assert answer.status_code == 200 and answer.json()["outputs"][0]["shape"] == [1]


GOOD = {
    "transaction_id": "bad-req",
    "card_id": "card-1",
    "merchant_id": "m-1",
    "amt": 10.0,
    # Within the held-out data's time range: the transformer's clock is the event clock.
    "timestamp": "2026-01-26T16:00:00",
}
JSON = {"content-type": "application/json"}


def request_body(**changes: Any) -> bytes:
    """A one-instance body: GOOD with ``changes`` (None removes a field; "NaN"/"Infinity" are
    written as the bare non-standard JSON literals)."""
    instance = {key: value for key, value in {**GOOD, **changes}.items() if value is not None}
    text = json.dumps({"instances": [instance]})
    for literal in ("NaN", "Infinity"):
        text = text.replace(f'"{literal}"', literal)
    return text.encode()


MANY = json.dumps({"instances": [{**GOOD, "transaction_id": f"t{i}"} for i in range(101)]})
MALFORMED: list[tuple[str, bytes, dict[str, str], int, str]] = [
    ("not json", b"{instances: [", JSON, 400, "body"),
    ("text/plain", request_body(), {"content-type": "text/plain"}, 415, "content-type"),
    (
        "form encoded",
        request_body(),
        {"content-type": "application/x-www-form-urlencoded"},
        415,
        "content-type",
    ),
    ("missing instances", b'{"rows": []}', JSON, 400, "instances"),
    ("missing field", request_body(merchant_id=None), JSON, 400, "instances[0].merchant_id"),
    ("wrong type", request_body(amt=[1]), JSON, 400, "instances[0].amt"),
    ("nan amount", request_body(amt="NaN"), JSON, 400, "instances[0].amt"),
    ("infinite amount", request_body(amt="Infinity"), JSON, 400, "instances[0].amt"),
    ("negative amount", request_body(amt=-5), JSON, 400, "instances[0].amt"),
    ("bad timestamp", request_body(timestamp="31/12/2026"), JSON, 400, "instances[0].timestamp"),
    ("card number", request_body(card_id="4111111111111111"), JSON, 400, "instances[0].card_id"),
    ("empty instances", b'{"instances": []}', JSON, 400, "instances"),
    ("too many instances", MANY.encode(), JSON, 413, "instances"),
    ("oversized body", b'{"instances": [' + b" " * (1 << 21) + b"]}", JSON, 413, "body"),
    ("instances not a list", b'{"instances": {"a": 1}}', JSON, 400, "instances"),
]


@pytest.mark.parametrize(
    ("name", "body", "headers", "status", "field"), MALFORMED, ids=[case[0] for case in MALFORMED]
)
def test_malformed_requests_get_a_4xx_naming_the_field(
    stack: ServingStack,
    client: httpx.Client,
    name: str,
    body: bytes,
    headers: dict[str, str],
    status: int,
    field: str,
) -> None:
    response = client.post(stack.predict_url, content=body, headers=headers)
    assert response.status_code == status, f"{name}: {response.status_code} {response.text}"
    answer = response.json()
    assert answer["field"] == field and answer["reason"], name
    assert field in answer["error"]


def test_no_content_type_is_read_as_json(stack: ServingStack, client: httpx.Client) -> None:
    body = request_body(transaction_id=uuid.uuid4().hex)
    request = httpx.Request("POST", stack.predict_url, content=body)
    assert "content-type" not in request.headers
    assert client.send(request).status_code == 200


def test_still_healthy_after_malformed_requests(
    stack: ServingStack, client: httpx.Client, serving_data: SplitData
) -> None:
    assert client.get(f"{stack.url}/v1/models/fraud-detector").json()["ready"] is True
    response = client.post(stack.predict_url, json={"instances": fresh_instances(serving_data, 1)})
    assert response.status_code == 200


def test_predictor_down_answers_503_and_recovers(
    stack: ServingStack, client: httpx.Client, serving_data: SplitData
) -> None:
    assert stack.predictor is not None
    unavailable = metric(client, stack.url, "fraud_requests_unavailable_total")
    refused = metric(client, stack.url, "fraud_predictor_failures_total", '{kind="connection"}')
    stack.predictor.stop()
    try:
        for _ in range(3):
            response = client.post(
                stack.predict_url, json={"instances": fresh_instances(serving_data, 1)}
            )
            assert_predictor_unavailable(response)
        assert client.get(f"{stack.url}/v1/models/fraud-detector").status_code == 200
        assert metric(client, stack.url, "fraud_requests_unavailable_total") == unavailable + 3
        assert (
            metric(client, stack.url, "fraud_predictor_failures_total", '{kind="connection"}')
            == refused + 3
        )
    finally:
        stack.predictor.start().wait_ready(STARTUP_TIMEOUT_S)
    # Back without any action on the transformer.
    score_until_ok(client, stack, serving_data, "scoring to recover with the predictor")


def test_a_hung_predictor_answers_503(
    stack: ServingStack, client: httpx.Client, serving_data: SplitData
) -> None:
    assert stack.predictor is not None
    timeouts = metric(client, stack.url, "fraud_predictor_failures_total", '{kind="timeout"}')
    stack.predictor.signal(signal.SIGSTOP)  # alive, connections accepted, never answers
    try:
        response = client.post(
            stack.predict_url, json={"instances": fresh_instances(serving_data, 1)}
        )
    finally:
        stack.predictor.signal(signal.SIGCONT)
    assert_predictor_unavailable(response, "within 0.5 s")  # the transformer's deadline
    assert (
        metric(client, stack.url, "fraud_predictor_failures_total", '{kind="timeout"}')
        == timeouts + 1
    )
    score_until_ok(client, stack, serving_data, "scoring to recover after SIGCONT")


def test_a_killed_predictor_is_restarted_by_the_supervisor(
    stack: ServingStack,
    client: httpx.Client,
    serving_data: SplitData,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LAUNCHER_LOGGER)
    predictor = stack.predictor
    assert predictor is not None and predictor.pid is not None
    killed, port = predictor.pid, predictor.port
    predictor.signal(signal.SIGKILL)
    wait_until(lambda: not predictor.running, "the predictor to die of SIGKILL")
    # No supervision pass ran yet, so nothing restarted it: the transformer answers 503.
    response = client.post(stack.predict_url, json={"instances": fresh_instances(serving_data, 1)})
    assert_predictor_unavailable(response)

    def restarted_and_scoring() -> bool:
        stack.check()  # one supervision pass, as `fraud serve` runs them
        if not predictor.running:
            return False
        response = client.post(
            stack.predict_url, json={"instances": fresh_instances(serving_data, 1)}
        )
        assert response.status_code in (200, 503), response.text
        return response.status_code == 200

    wait_until(
        restarted_and_scoring,
        "the supervisor to bring the predictor back",
        STARTUP_TIMEOUT_S,
        poll_s=0.1,
    )
    assert predictor.pid != killed and predictor.port == port
    messages = caplog.messages
    assert any(
        f"the predictor (pid {killed}) was killed by SIGKILL; restarting it on port {port}" in m
        and str(predictor.log_path) in m
        for m in messages
    ), messages
    restarted = f"restarted the predictor: pid {predictor.pid} on port {port}"
    assert any(restarted in m for m in messages), messages
    assert stack.failure is None


def test_broker_down_scoring_continues_and_mirroring_resumes(
    stack: ServingStack, broker: Broker, client: httpx.Client, serving_data: SplitData
) -> None:
    drops_before = metric(client, stack.url, "fraud_mirror_dropped_total", "") or mirror_drops(
        client, stack
    )
    broker.broker.stop()
    try:
        for offset in range(0, 30, 3):
            response = client.post(
                stack.predict_url, json={"instances": fresh_instances(serving_data, 3, offset)}
            )
            assert response.status_code == 200, response.text
        wait_until(
            lambda: mirror_drops(client, stack) > drops_before,
            "the records lost while the broker was down to be counted",
        )
    finally:
        broker.restart()
    # Mirroring resumes by itself once the broker is back.
    ids: set[str] = set()

    def resumed() -> bool:
        batch = fresh_instances(serving_data, 1, offset=40)
        response = client.post(stack.predict_url, json={"instances": batch})
        assert response.status_code == 200, response.text
        ids.add(batch[0]["transaction_id"])
        found = {
            orjson.loads(record.value)["transaction_id"]
            for record in read_topic(broker.bootstrap, TOPIC, timeout_s=10)
        }
        return bool(ids & found)

    wait_until(resumed, "mirroring to resume after the broker came back", poll_s=0.3)


def test_a_tampered_model_is_refused(serving_bundle: Path, tmp_path: Path) -> None:
    bundle = Path(shutil.copytree(serving_bundle, tmp_path / "bundle"))
    onnx = bundle / MODEL_ONNX
    onnx.write_bytes(onnx.read_bytes()[:-1] + b"\x00")
    server = ServerProcess(
        "predictor",
        PREDICTOR_MODULE,
        ["--model_dir", str(bundle)],
        LOOPBACK,
        free_port(),
        tmp_path / "predictor.log",
    ).start()
    try:
        with pytest.raises(ServerStartError, match="exited with status 2"):
            server.wait_ready(STARTUP_TIMEOUT_S)
    finally:
        server.stop()
    log = server.log_path.read_text()
    assert "refuses to start" in log and "model.onnx does not match its sha256" in log


STUBBORN_SERVER = """
import os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
pid_file = sys.argv[sys.argv.index("--pid_file") + 1]
with open(pid_file + ".part", "w") as out:
    out.write(str(helper.pid))
os.replace(pid_file + ".part", pid_file)
time.sleep(600)
"""


def test_a_server_that_must_be_killed_takes_what_it_started_with_it(tmp_path: Path) -> None:
    script = tmp_path / "stubborn_server.py"
    script.write_text(STUBBORN_SERVER)
    pid_file = tmp_path / "helper.pid"
    server = ServerProcess(
        "stubborn server",
        str(script),
        ["--pid_file", str(pid_file)],
        LOOPBACK,
        free_port(),
        tmp_path / "server.log",
    ).start()
    try:
        wait_until(pid_file.exists, "the server to start its helper")
        helper = int(pid_file.read_text())
        assert alive(helper)
        status = server.stop(timeout_s=1.0)  # it ignores SIGTERM: always killed
    finally:
        if server.running:
            server.stop(timeout_s=1.0)
    assert status == -signal.SIGKILL
    assert_all_exit({helper}, server.log_path.read_text())


def test_a_killed_transformer_comes_back_on_its_port(
    stack: ServingStack,
    client: httpx.Client,
    serving_data: SplitData,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LAUNCHER_LOGGER)
    transformer = stack.transformer
    assert transformer is not None and transformer.pid is not None
    assert stack.config.state_dir is not None
    assert f"--state_dir {Path(stack.config.state_dir).absolute()}" in " ".join(
        transformer.command()
    )
    killed, port, url = transformer.pid, transformer.port, stack.predict_url
    stack.start_supervising(interval_s=0.2)
    try:
        transformer.signal(signal.SIGKILL)
        wait_until(
            lambda: transformer.pid != killed and transformer.ready(),
            "the supervisor to bring the transformer back",
            STARTUP_TIMEOUT_S,
        )
    finally:
        stack.stop_supervising()
    assert stack.failure is None
    assert (transformer.port, stack.predict_url) == (port, url)
    response = client.post(url, json={"instances": fresh_instances(serving_data, 1)})
    assert response.status_code == 200, response.text
    messages = caplog.messages
    assert any(
        f"the transformer (pid {killed}) was killed by SIGKILL; restarting it on port {port}" in m
        for m in messages
    ), messages
    assert any(f"restarted the transformer: pid {transformer.pid}" in m for m in messages)


def test_model_update_switches_without_failing_requests(
    stack: ServingStack,
    registry: ModelRegistry,
    client: httpx.Client,
    serving_data: SplitData,
    tmp_path: Path,
) -> None:
    second = build_bundle(tmp_path / "test-2", serving_data.train, "test-2", n_estimators=10)
    statuses: list[int] = []
    versions: list[str] = []
    failures: list[BaseException] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(timeout=30.0) as http:
            offset = 0
            while not stop.is_set():
                batch = fresh_instances(serving_data, 1, offset=offset % 100)
                offset += 1
                try:
                    response = http.post(stack.predict_url, json={"instances": batch})
                except httpx.HTTPError as exc:
                    failures.append(exc)
                    return
                statuses.append(response.status_code)
                if response.status_code == 200:
                    versions.append(response.json()["predictions"][0]["model_version"])

    worker = threading.Thread(target=load)
    worker.start()
    try:
        wait_until(lambda: versions or failures, "an answer before the update")
        registry.promote(second)
        wait_until(
            lambda: versions.count("test-2") >= 3 or failures,
            "three answers from test-2 after the update",
        )
    finally:
        stop.set()
        worker.join(DEADLINE_S)
    assert not failures, failures
    assert versions and versions[0] == "test-1" and versions[-1] == "test-2"
    assert set(statuses) == {200}, f"non-200 answers during the switch: {set(statuses)}"
    # Both sides switched: the transformer reports the predictor's version; each server logs the
    # switch with both versions and exports the one it serves.
    servers = {"predictor": stack.predictor, "transformer": stack.transformer}
    for role, server in servers.items():
        assert server is not None
        switched = f"{role} switched model from test-1 to test-2"
        wait_until(
            lambda server=server, switched=switched: any(
                switched in line for line in log_lines(server)
            ),
            f"the {role} to log its switch to test-2",
        )
        (info,) = families(client, server.url)["fraud_model_info"].samples
        assert info.labels == {"version": "test-2"}
    # An explicit reload (SIGHUP) of an unchanged source: each server loads the bundle again
    # (counted and logged), and every answer during and after it is a 200 from test-2.
    switches = {
        role: metric(client, server.url, "fraud_model_switches_total")
        for role, server in servers.items()
    }
    for server in servers.values():
        server.signal(signal.SIGHUP)
    for role, server in servers.items():
        wait_until(
            lambda server=server, role=role: (
                metric(client, server.url, "fraud_model_switches_total") > switches[role]
            ),
            f"the {role} to reload on SIGHUP",
        )
        reloaded = f"{role} reloaded model test-2 from "
        assert any(reloaded in line for line in log_lines(server)), log_lines(server)[-20:]
    for _ in range(20):
        batch = fresh_instances(serving_data, 1)
        response = client.post(stack.predict_url, json={"instances": batch})
        assert response.status_code == 200, response.text
        assert response.json()["predictions"][0]["model_version"] == "test-2"
    assert stack.predictor.running and stack.transformer.running


def child_pids(pid: int) -> set[int]:
    """Direct children of ``pid`` (from /proc)."""
    children = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                children.add(int(entry.name))
    return children


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z")


def descendants(pid: int) -> set[int]:
    """Children of ``pid``, their children, and so on."""
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        children = set().union(*(child_pids(parent) for parent in frontier)) - found
        found |= children
        frontier = children
    return found


def command_line(pid: int) -> str:
    """The command line of ``pid`` ("" when it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def assert_all_exit(family: set[int], output: str) -> None:
    """Wait until every process in ``family`` has exited; fail naming the ones that did not."""

    def survivors() -> dict[int, str]:
        return {pid: command_line(pid) for pid in family if alive(pid)}

    try:
        wait_until(lambda: not survivors(), "every process the server started to exit")
    except AssertionError as exc:
        raise AssertionError(
            f"processes outlived the server that started them: {survivors()}\n{output}"
        ) from exc


def fraud_serve(bundle: Path, port: int, cwd: Path, *options: str) -> subprocess.Popen[str]:
    """``fraud serve`` of ``bundle`` as a subprocess (stderr merged into stdout).

    The environment names no broker and no state directory: the command starts its own broker
    and keeps its state under ``cwd``. The data is historical: the event clock.
    """
    command = [
        sys.executable,
        "-m",
        "fraud_detection",
        "serve",
        "--model-dir",
        str(bundle),
        "--port",
        str(port),
        "--clock",
        "event",
        "--startup-timeout",
        f"{STARTUP_TIMEOUT_S:g}",
        *options,
    ]
    unset = ("FRAUD_KAFKA_BOOTSTRAP", "FRAUD_STATE_DIR", "FRAUD_SERVING_STATE_DIR")
    env = {key: value for key, value in os.environ.items() if key not in unset}
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd, env=env
    )


def end_fraud_serve(proc: subprocess.Popen[str]) -> None:
    """After a test (also a failed one): stop ``fraud serve`` as SIGTERM does; if it does not
    end, kill it and every process it started, so that nothing outlives the test."""
    if proc.poll() is not None:
        return
    family = descendants(proc.pid)
    proc.send_signal(signal.SIGTERM)
    try:
        proc.communicate(timeout=DEADLINE_S)
    except subprocess.TimeoutExpired:
        family |= descendants(proc.pid)
        for pid in (proc.pid, *family):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.communicate()


def read_until_serving(proc: subprocess.Popen[str]) -> str:
    """``fraud serve``'s output up to the line saying it serves (fails if it exits first)."""
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if "SIGTERM stops everything" in line:
            return "".join(lines)
    raise AssertionError(f"fraud serve exited with {proc.wait()}:\n{''.join(lines)}")


def predictor_of(proc: subprocess.Popen[str], other_than: int | None = None) -> int | None:
    """The live predictor child of a ``fraud serve`` process, except ``other_than``."""
    for pid in child_pids(proc.pid):
        if pid != other_than and alive(pid) and PREDICTOR_MODULE in command_line(pid):
            return pid
    return None


def test_fraud_serve_starts_everything_and_stops_on_sigterm(
    serving_bundle: Path, serving_data: SplitData, tmp_path: Path
) -> None:
    port = free_port()
    proc = fraud_serve(serving_bundle, port, tmp_path)
    try:
        output = read_until_serving(proc)
        assert f"http://127.0.0.1:{port}/v1/models/fraud-detector:predict" in output, output
        assert "kafka mirror" in output  # no --kafka: a local broker was started
        children = child_pids(proc.pid)
        assert len(children) == 3, output  # broker, predictor, transformer
        transformer = [pid for pid in children if "serving.transformer" in command_line(pid)]
        assert len(transformer) == 1, output
        # The default state directory: serving/ under ./.fraud (FRAUD_STATE_DIR is unset).
        state_dir = tmp_path / ".fraud" / "serving"
        assert f"--state_dir {state_dir} " in command_line(transformer[0]), output
        # The default log directory: logs/ under ./.fraud, printed in the banner.
        logs = tmp_path / ".fraud" / "logs"
        assert f"logs (kept after stop): {logs}\n" in output, output
        response = httpx.post(
            f"http://127.0.0.1:{port}/v1/models/fraud-detector:predict",
            json={"instances": fresh_instances(serving_data, 1)},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        family = descendants(proc.pid)
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=DEADLINE_S)
        assert proc.returncode == 0, output + rest
        assert not [pid for pid in children if alive(pid)]
        assert_all_exit(family, output + rest)
    finally:
        end_fraud_serve(proc)
    # The logs are kept, cover the stop, and hold only records in the one text format: no
    # deprecation warnings, no unclosed connection pool at the transformer's stop.
    for name in ("transformer", "predictor"):
        lines = (logs / f"{name}.log").read_text().splitlines()
        assert any("Finished server process" in line for line in lines), lines[-10:]
        foreign = [line for line in lines if not re.fullmatch(TEXT_LOG_LINE, line)]
        assert not foreign, foreign[:10]
        noise = [line for line in lines if re.search(r"Warning|Unclosed|Traceback", line)]
        assert not noise, noise
    mirror_lines = [
        line for line in (logs / "transformer.log").read_text().splitlines() if " kafka." in line
    ]
    assert mirror_lines  # the mirror's producer process logs in the same format


def test_fraud_serve_gives_up_when_a_server_is_not_ready_within_the_startup_timeout(
    serving_bundle: Path, tmp_path: Path
) -> None:
    """A millisecond is far less than any KServe process needs to import and listen: starting
    fails (exit 1), the message names the limit given, and nothing is left running."""
    proc = fraud_serve(
        serving_bundle,
        free_port(),
        tmp_path,
        "--no-mirror",
        "--collocated",
        "--no-state",
        "--startup-timeout",
        "0.001",
    )
    try:
        output, _ = proc.communicate(timeout=STARTUP_TIMEOUT_S)
        assert proc.returncode == 1, output  # EXIT_START_FAILED
        assert "the transformer was not ready within 0.001 s" in output, output
    finally:
        end_fraud_serve(proc)


def test_fraud_serve_logs_json_and_takes_the_request_limits(
    serving_bundle: Path, serving_data: SplitData, tmp_path: Path
) -> None:
    """--log-format json reaches every process's records; --max-instances above the default
    works end to end (the predictor's limits follow); beyond the limits a 413 names the field."""
    port = free_port()
    logs = tmp_path / "logs"
    limits = ("--max-instances", "9000", "--max-body-bytes", "4000000")
    proc = fraud_serve(
        serving_bundle, port, tmp_path, "--log-dir", str(logs), "--log-format", "json", *limits
    )
    url = f"http://127.0.0.1:{port}/v1/models/fraud-detector:predict"
    try:
        output = read_until_serving(proc)
        rows = serving_data.held_out.to_dict("records")
        tag = uuid.uuid4().hex[:8]
        batch = [
            {**to_instance(rows[i % len(rows)]), "transaction_id": f"{tag}-{i}"}
            for i in range(9_001)
        ]
        with httpx.Client(timeout=DEADLINE_S) as http:
            response = http.post(url, json={"instances": batch[:9_000]})
            assert response.status_code == 200, response.text[:500]
            assert len(response.json()["predictions"]) == 9_000
            response = http.post(url, json={"instances": batch})
            assert response.status_code == 413 and response.json()["field"] == "instances"
            padded = b'{"instances": [' + b" " * 4_000_000 + b"]}"
            response = http.post(url, content=padded, headers=JSON)
            assert response.status_code == 413 and response.json()["field"] == "body"
        stopping = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() - 1))
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=DEADLINE_S)
        assert proc.returncode == 0, output + rest
    finally:
        end_fraud_serve(proc)
    for name in ("transformer", "predictor"):
        lines = (logs / f"{name}.log").read_text().splitlines()
        records = [json.loads(line) for line in lines]  # fails on a line that is not JSON
        loggers = {record["logger"].split(".")[0] for record in records}
        assert {"fraud_detection", "kserve", "uvicorn"} <= loggers, loggers
        # No error in the server process, except what stopping may cause and says nothing is
        # wrong: 9,000 records at once is a burst the mirror's producer may not deliver within
        # the stop's deadline on a busy machine, and it is then killed (what it held is counted;
        # test_serving_mirror.py); and kafka-python logs the requests that closing its clients
        # (the mirror's, the labels consumer's) cancels.
        killed = "mirror: the producer process did not stop in time; killing it"
        server = next(r["pid"] for r in records if r["logger"] == "kserve")
        errors = [
            r
            for r in records
            if r["pid"] == server
            and r["level"] == "ERROR"
            and r["message"] != killed
            and not (r["logger"].startswith("kafka") and r["time"] >= stopping)
        ]
        assert not errors, [(r["logger"], r["message"]) for r in errors]
    transformer_records = [json.loads(line) for line in (logs / "transformer.log").open()]
    assert {record["pid"] for record in transformer_records if record["logger"].startswith("kafka")}


def test_a_child_that_cannot_be_stopped_is_reported_and_serve_exits_4(
    serving_bundle: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Real servers; their stops are made to fail after stopping them for real: the transformer
    as if it survived SIGKILL, the predictor with an error nobody expected."""
    from fraud_detection.serve_cli import EXIT_STOP_FAILED, run_stack

    caplog.set_level(logging.INFO, logger=LAUNCHER_LOGGER)
    config = StackConfig(
        model_dir=serving_bundle,
        mirror=False,
        log_dir=tmp_path / "logs",
        startup_timeout_s=STARTUP_TIMEOUT_S,
    )
    stack = ServingStack(config)
    survived = StopError("the transformer (pid 1) is still alive 5 s after SIGKILL")

    def failing_after_the_real_stop(server: ServerProcess, error: Exception) -> None:
        real_stop = server.stop

        def stop(timeout_s: float = STOP_TIMEOUT_S) -> int | None:
            real_stop(timeout_s)
            raise error

        monkeypatch.setattr(server, "stop", stop)

    done = threading.Event()

    def stop_when_serving() -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S + DEADLINE_S  # beyond the stack's start
        while not done.is_set() and time.monotonic() < deadline:
            transformer, predictor = stack.transformer, stack.predictor
            if transformer is not None and predictor is not None and transformer.ready():
                failing_after_the_real_stop(transformer, survived)
                failing_after_the_real_stop(predictor, RuntimeError("deliberate"))
                break
            time.sleep(0.1)
        if not done.is_set():
            os.kill(os.getpid(), signal.SIGTERM)  # what run_stack stops on

    # A SIGTERM arriving when run_stack is not running must not end the test run.
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    stopper = threading.Thread(target=stop_when_serving)
    stopper.start()
    try:
        code = run_stack(stack, "a test bundle")
    finally:
        done.set()
        stopper.join(DEADLINE_S)
        signal.signal(signal.SIGTERM, previous)
    assert code == EXIT_STOP_FAILED
    assert stack.transformer is not None and stack.predictor is not None
    assert not stack.transformer.running and not stack.predictor.running
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert str(survived) in errors, errors
    assert any("stopping the predictor" in m and "deliberate" in m for m in errors), errors
    assert "2 process(es) could not be stopped" in capsys.readouterr().err


def test_fraud_serve_gives_up_on_a_predictor_that_keeps_dying(
    serving_bundle: Path, tmp_path: Path
) -> None:
    port = free_port()
    logs = tmp_path / "logs"
    limit = ("--max-restarts", "1", "--restart-window", "3600", "--no-state")
    proc = fraud_serve(serving_bundle, port, tmp_path, "--log-dir", str(logs), *limit)
    try:
        output = read_until_serving(proc)
        family = descendants(proc.pid)
        first = predictor_of(proc)
        assert first is not None, output
        os.kill(first, signal.SIGKILL)
        second = wait_until(
            lambda: predictor_of(proc, other_than=first),
            "fraud serve to restart the killed predictor",
        )
        family |= descendants(proc.pid)
        os.kill(second, signal.SIGKILL)  # the second exit within the window: over the limit
        rest, _ = proc.communicate(timeout=DEADLINE_S)
        output += rest
        assert proc.returncode == 3, output  # EXIT_CHILD_FAILED
        assert f"the predictor (pid {first}) was killed by SIGKILL; restarting it" in output
        assert f"restarted the predictor: pid {second}" in output
        assert "the predictor was killed by SIGKILL after 1 restart within 3600 s" in output
        assert f"log {logs / 'predictor.log'}" in output
        assert_all_exit(family, output)
    finally:
        end_fraud_serve(proc)
