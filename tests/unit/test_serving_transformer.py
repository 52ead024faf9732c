"""The transformer model in-process (collocated scoring, no servers): features from the online
state, threshold, idempotent retries, v2, mirror hand-off; and the request decoding that keeps
malformed requests out of 5xx."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from fraud_detection.features import OnlineFeatureState, timestamp_to_micros
from fraud_detection.serving.app import BodyLimitMiddleware, decode_json_body, make_dataplane
from fraud_detection.serving.demo import to_instance
from fraud_detection.serving.mirror import KafkaMirror, MirrorConfig, MirrorEntry
from fraud_detection.serving.model import BundleSource, load_scoring_model
from fraud_detection.serving.requests import RequestError
from support.bundles import SplitData


class RecordingMirror(KafkaMirror):
    """A mirror whose queue is inspected instead of drained (the sender thread never starts)."""

    def __init__(self) -> None:
        super().__init__(MirrorConfig(bootstrap="127.0.0.1:1", topic="unused"))
        self.entries: list[MirrorEntry] = []

    def offer(self, entry: MirrorEntry) -> bool:
        self.entries.append(entry)
        return True


def make(bundle: Path, **options: Any) -> Any:
    from fraud_detection.serving.transformer import make_transformer

    model = make_transformer(
        "fraud-detector", BundleSource(model_dir=bundle), collocated=True, **options
    )
    model.load()
    return model


def score(model: Any, body: Any) -> Any:
    answer, _headers = asyncio.run(model(body))
    return answer


def instances(data: SplitData, count: int, start: int = 0) -> list[dict[str, Any]]:
    return [
        to_instance(row) for row in data.held_out.iloc[start : start + count].to_dict("records")
    ]


def test_scores_with_the_online_features(serving_bundle: Path, serving_data: SplitData) -> None:
    model = make(serving_bundle)
    batch = instances(serving_data, 20)
    answer = score(model, {"instances": batch})
    predictions = answer["predictions"]
    assert [p["transaction_id"] for p in predictions] == [i["transaction_id"] for i in batch]
    # The same transactions through a fresh copy of the snapshot and the model directly.
    state = OnlineFeatureState.load(serving_bundle / "feature_state.json.gz")
    rows = [state.process_transaction(instance) for instance in batch]
    expected = load_scoring_model(serving_bundle).score(rows)
    assert [p["fraud_probability"] for p in predictions] == pytest.approx(expected, abs=1e-6)
    for prediction, probability in zip(predictions, expected, strict=True):
        assert prediction["is_fraud"] == (probability >= 0.1)
        assert prediction["threshold"] == 0.1 and prediction["model_version"] == "test-1"
        assert set(prediction) == {
            "transaction_id",
            "fraud_probability",
            "is_fraud",
            "threshold",
            "model_version",
        }


def test_the_state_absorbs_each_transaction_once(serving_bundle: Path) -> None:
    model = make(serving_bundle)
    tx = {
        "transaction_id": "t-1",
        "card_id": "card-new",
        "merchant_id": "m-1",
        "amt": 40.0,
        "timestamp": "2026-03-01T10:00:00",
    }
    first = score(model, {"instances": [tx]})["predictions"][0]
    retried = score(model, {"instances": [tx]})["predictions"][0]
    assert retried == first
    later = {**tx, "transaction_id": "t-2", "timestamp": "2026-03-01T10:05:00"}
    score(model, {"instances": [later]})
    state = model.state.features
    # Two transactions absorbed for the new card, not three.
    features = state.process("card-new", "m-1", 40.0, timestamp_to_micros("2026-03-01T11:00:00"))
    assert features[2] == 2.0  # card_count_1d


def test_threshold_override(serving_bundle: Path, serving_data: SplitData) -> None:
    model = make(serving_bundle, threshold=0.0)
    predictions = score(model, {"instances": instances(serving_data, 5)})["predictions"]
    assert all(p["is_fraud"] and p["threshold"] == 0.0 for p in predictions)


def test_every_scored_transaction_is_handed_to_the_mirror(
    serving_bundle: Path, serving_data: SplitData
) -> None:
    mirror = RecordingMirror()
    model = make(serving_bundle, mirror=mirror)
    predictions = score(model, {"instances": instances(serving_data, 3)})["predictions"]
    assert [e.transaction_id for e in mirror.entries] == [p["transaction_id"] for p in predictions]
    entry, prediction = mirror.entries[0], predictions[0]
    assert entry.fraud_probability == prediction["fraud_probability"]
    assert entry.model_version == "test-1" and len(entry.features) == 18


def test_v2_request(serving_bundle: Path, serving_data: SplitData) -> None:
    from kserve.protocol.infer_type import InferInput, InferRequest

    batch = instances(serving_data, 3)
    inputs = [
        InferInput(name, [3], "FP64" if name == "amt" else "BYTES", [row[name] for row in batch])
        for name in ("transaction_id", "card_id", "merchant_id", "amt", "timestamp")
    ]
    answer = score(make(serving_bundle), InferRequest("fraud-detector", inputs, request_id="x"))
    outputs = {output.name: output.data for output in answer.outputs}
    assert outputs["transaction_id"] == [row["transaction_id"] for row in batch]
    v1 = score(make(serving_bundle), {"instances": batch})["predictions"]
    assert outputs["fraud_probability"] == pytest.approx([p["fraud_probability"] for p in v1])
    assert outputs["model_version"] == ["test-1"] * 3


def test_v2_request_with_a_bad_value_names_it(serving_bundle: Path) -> None:
    from kserve.protocol.infer_type import InferInput, InferRequest

    inputs = [
        InferInput("transaction_id", [1], "BYTES", ["t"]),
        InferInput("card_id", [1], "BYTES", ["c"]),
        InferInput("merchant_id", [1], "BYTES", ["m"]),
        InferInput("amt", [1], "FP64", [-5.0]),
        InferInput("timestamp", [1], "BYTES", ["2026-03-01T00:00:00"]),
    ]
    with pytest.raises(RequestError) as caught:
        score(make(serving_bundle), InferRequest("fraud-detector", inputs))
    assert caught.value.field == "inputs[0].amt"


# ---------------------------------------------------------------- decoding and body limits
def test_json_with_nan_is_decoded_so_the_field_can_be_named() -> None:
    assert decode_json_body(b'{"amt": NaN}')["amt"] != decode_json_body(b'{"amt": NaN}')["amt"]
    for garbage in (b"{not json", b"", b"\xff\xfe{", b"[" * 100_000):
        with pytest.raises(RequestError) as caught:
            decode_json_body(garbage)
        assert caught.value.field == "body" and caught.value.status == 400


@pytest.mark.parametrize(
    ("content_type", "accepted"),
    [
        ("application/json", True),
        ("application/json; charset=utf-8", True),
        ("Application/JSON", True),
        ("text/plain", False),
        ("application/x-www-form-urlencoded", False),
        (None, True),
    ],
)
def test_content_types(content_type: str | None, accepted: bool) -> None:
    from kserve.model_repository import ModelRepository

    dataplane = make_dataplane(ModelRepository())
    headers = {"content-type": content_type} if content_type else {}
    if accepted:
        body, _ = dataplane.decode(b'{"instances": []}', headers)
        assert body == {"instances": []}
    else:
        with pytest.raises(RequestError) as caught:
            dataplane.decode(b'{"instances": []}', headers)
        assert (caught.value.status, caught.value.field) == (415, "content-type")


def run_asgi(
    app: Any, headers: list[tuple[bytes, bytes]], chunks: list[bytes]
) -> tuple[int, bytes]:
    """Drive an ASGI app with one POST; returns (status, body)."""
    received = [
        {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
        for i, chunk in enumerate(chunks)
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return received.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "headers": headers}
    asyncio.run(app(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, body


async def echo_app(scope: Any, receive: Any, send: Any) -> None:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def test_body_limit() -> None:
    app = BodyLimitMiddleware(echo_app, max_bytes=10)
    assert run_asgi(app, [(b"content-length", b"5")], [b"12345"]) == (200, b"12345")
    status, body = run_asgi(app, [(b"content-length", b"11")], [b"12345678901"])
    assert status == 413 and b'"field":"body"' in body
    assert run_asgi(app, [], [b"12345", b"67890"]) == (200, b"1234567890")
    status, _ = run_asgi(app, [], [b"12345", b"678901"])
    assert status == 413
