"""The serving stack for real: tansu broker, predictor and transformer ``ModelServer`` processes
on loopback, scored over HTTP.

One stack serves the whole module (started once, always stopped). Tests that take parts down
(predictor, broker) bring them back before they end; the model-update test runs last.
"""

from __future__ import annotations

import json
import os
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
    ServerProcess,
    ServerStartError,
    ServingStack,
    StackConfig,
)
from fraud_detection.streaming.broker import LOOPBACK, LocalBroker, free_port
from fraud_detection.streaming.kafka import read_topic
from support.bundles import SplitData, build_bundle

pytestmark = pytest.mark.integration

TOPIC = "it-fraud-mirror"


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
        predictor_args=["--reload_interval", "0.3"],
        transformer_args=[
            "--reload_interval",
            "0.3",
            "--mirror_delivery_timeout_ms",
            "3000",
            "--max_instances",
            "100",
        ],
    )
    with ServingStack(config) as running:
        yield running


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=5.0) as http:
        yield http


def fresh_instances(data: SplitData, count: int, offset: int = 0) -> list[dict[str, Any]]:
    """Held-out transactions with ids unique to this call."""
    rows = data.held_out.iloc[offset : offset + count].to_dict("records")
    tag = uuid.uuid4().hex[:8]
    return [{**to_instance(row), "transaction_id": f"{tag}-{i}"} for i, row in enumerate(rows)]


def mirrored(bootstrap: str, ids: set[str], timeout_s: float = 20.0) -> dict[str, Any]:
    """Records of the mirror topic whose transaction ids are in ``ids`` (waits for all)."""
    deadline = time.monotonic() + timeout_s
    found: dict[str, Any] = {}
    while time.monotonic() < deadline:
        for record in read_topic(bootstrap, TOPIC, timeout_s=10):
            value = orjson.loads(record.value)
            if value["transaction_id"] in ids:
                found[value["transaction_id"]] = record
        if set(found) == ids:
            return found
        time.sleep(0.3)
    raise AssertionError(f"mirrored {sorted(found)} of {sorted(ids)} within {timeout_s} s")


def metric(client: httpx.Client, base: str, name: str, labels: str = "") -> float:
    for line in client.get(f"{base}/metrics").text.splitlines():
        if line.startswith(f"{name}{labels} ") or (not labels and line.startswith(f"{name} ")):
            return float(line.split()[-1])
    return 0.0


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
    "timestamp": "2026-03-01T10:00:00",
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


def test_predictor_down_answers_503_fast_and_recovers(
    stack: ServingStack, client: httpx.Client, serving_data: SplitData
) -> None:
    assert stack.predictor is not None
    stack.predictor.stop()
    try:
        for _ in range(3):
            started = time.perf_counter()
            response = client.post(
                stack.predict_url, json={"instances": fresh_instances(serving_data, 1)}
            )
            elapsed = time.perf_counter() - started
            assert response.status_code == 503, response.text
            assert "predictor unavailable" in response.json()["error"]
            # The bound: 503 within 1 s (typically a few ms: the connection is refused).
            assert elapsed < 1.0
        assert client.get(f"{stack.url}/v1/models/fraud-detector").status_code == 200
    finally:
        stack.predictor.start().wait_ready()
    # Back without any action on the transformer; the first request already succeeds.
    response = client.post(stack.predict_url, json={"instances": fresh_instances(serving_data, 1)})
    assert response.status_code == 200, response.text


def test_a_hung_predictor_answers_503_within_1s(
    stack: ServingStack, client: httpx.Client, serving_data: SplitData
) -> None:
    assert stack.predictor is not None
    stack.predictor.signal(signal.SIGSTOP)  # alive, connections accepted, never answers
    try:
        started = time.perf_counter()
        response = client.post(
            stack.predict_url, json={"instances": fresh_instances(serving_data, 1)}
        )
        elapsed = time.perf_counter() - started
    finally:
        stack.predictor.signal(signal.SIGCONT)
    assert response.status_code == 503, response.text
    assert "within 0.5 s" in response.json()["error"]
    assert elapsed < 1.0  # the bound; the transformer's deadline is 0.5 s
    response = client.post(stack.predict_url, json={"instances": fresh_instances(serving_data, 1)})
    assert response.status_code == 200, response.text


def test_broker_down_scoring_continues_and_mirroring_resumes(
    stack: ServingStack, broker: Broker, client: httpx.Client, serving_data: SplitData
) -> None:
    drops_before = metric(client, stack.url, "fraud_mirror_dropped_total", "") or sum(
        metric(client, stack.url, "fraud_mirror_dropped_total", f'{{reason="{reason}"}}')
        for reason in ("queue_full", "delivery_failed", "send_failed")
    )
    broker.broker.stop()
    try:
        for offset in range(0, 30, 3):
            response = client.post(
                stack.predict_url, json={"instances": fresh_instances(serving_data, 3, offset)}
            )
            assert response.status_code == 200, response.text
        deadline = time.monotonic() + 20
        drops = 0.0
        while time.monotonic() < deadline:
            drops = sum(
                metric(client, stack.url, "fraud_mirror_dropped_total", f'{{reason="{reason}"}}')
                for reason in ("queue_full", "delivery_failed", "send_failed")
            )
            if drops > drops_before:
                break
            time.sleep(0.5)
        assert drops > drops_before, "records lost while the broker was down were not counted"
    finally:
        broker.restart()
    # Mirroring resumes by itself once the broker is back.
    deadline = time.monotonic() + 30
    ids: set[str] = set()
    while time.monotonic() < deadline:
        batch = fresh_instances(serving_data, 1, offset=40)
        response = client.post(stack.predict_url, json={"instances": batch})
        assert response.status_code == 200
        ids.add(batch[0]["transaction_id"])
        found = {
            orjson.loads(record.value)["transaction_id"]
            for record in read_topic(broker.bootstrap, TOPIC, timeout_s=10)
        }
        if ids & found:
            return
        time.sleep(1.0)
    raise AssertionError("mirroring did not resume after the broker came back")


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
            server.wait_ready(timeout_s=60)
    finally:
        server.stop()
    log = server.log_path.read_text()
    assert "refuses to start" in log and "model.onnx does not match its sha256" in log


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
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(timeout=5.0) as http:
            offset = 0
            while not stop.is_set():
                batch = fresh_instances(serving_data, 1, offset=offset % 100)
                offset += 1
                response = http.post(stack.predict_url, json={"instances": batch})
                statuses.append(response.status_code)
                if response.status_code == 200:
                    versions.append(response.json()["predictions"][0]["model_version"])

    worker = threading.Thread(target=load)
    worker.start()
    try:
        time.sleep(0.3)
        registry.promote(second)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (not versions or versions[-1] != "test-2"):
            time.sleep(0.1)
        time.sleep(0.3)
    finally:
        stop.set()
        worker.join(10)
    assert versions and versions[0] == "test-1" and versions[-1] == "test-2"
    assert set(statuses) == {200}, f"non-200 answers during the switch: {set(statuses)}"
    # Both sides switched: the transformer reports the predictor's version, and an explicit
    # reload (SIGHUP) of an unchanged source keeps serving.
    assert stack.transformer is not None and stack.predictor is not None
    stack.predictor.signal(signal.SIGHUP)
    stack.transformer.signal(signal.SIGHUP)
    time.sleep(0.5)
    response = client.post(stack.predict_url, json={"instances": fresh_instances(serving_data, 1)})
    assert response.status_code == 200
    assert response.json()["predictions"][0]["model_version"] == "test-2"


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


def test_fraud_serve_starts_everything_and_stops_on_sigterm(
    serving_bundle: Path, serving_data: SplitData, tmp_path: Path
) -> None:
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "fraud_detection",
        "serve",
        "--model-dir",
        str(serving_bundle),
        "--port",
        str(port),
    ]
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("FRAUD_KAFKA_BOOTSTRAP", "FRAUD_STATE_DIR")
    }
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path, env=env
    )
    try:
        lines = []
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "SIGTERM stops everything" in line:
                break
        output = "".join(lines)
        assert f"http://127.0.0.1:{port}/v1/models/fraud-detector:predict" in output, output
        assert "kafka mirror" in output  # no --kafka: a local broker was started
        children = child_pids(proc.pid)
        assert len(children) == 3, output  # broker, predictor, transformer
        response = httpx.post(
            f"http://127.0.0.1:{port}/v1/models/fraud-detector:predict",
            json={"instances": fresh_instances(serving_data, 1)},
            timeout=5,
        )
        assert response.status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert not [pid for pid in children if alive(pid)]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
