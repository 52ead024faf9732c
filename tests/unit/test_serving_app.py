"""The servers' request handling (:mod:`fraud_detection.serving.app`) and the predictor's
malformed-row checks: every malformed request is a 4xx in the project's error format, refused
before any state changes, without echoing the input; an unexpected error is a JSON 500 with
``Connection: close``, logged once.

Most tests drive the real application (KServe's endpoints, the project's data plane and
handlers) in-process with the real predictor and the collocated transformer; the tests of
connections, keep-alive and unparseable HTTP run a real ``kserve.ModelServer`` process.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import struct
import sys
import textwrap
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from fraud_detection.features import FEATURE_NAMES
from fraud_detection.serving.app import (
    INFERENCE_HEADER,
    build_app,
    decode_json_body,
    inference_header_length,
    safe_text,
    validation_problems,
)
from fraud_detection.serving.launcher import ServerProcess
from fraud_detection.serving.model import BundleSource
from fraud_detection.serving.requests import RequestError
from fraud_detection.streaming.broker import LOOPBACK, free_port

V1 = "/v1/models/fraud-detector:predict"
V2 = "/v2/models/fraud-detector/infer"
JSON = {"content-type": "application/json"}
N_FEATURES = len(FEATURE_NAMES)
TEXT_FIELDS = ("transaction_id", "card_id", "merchant_id", "timestamp", "category")


# ---------------------------------------------------------------- helpers
def call(app: Any, method: str, path: str, **options: Any) -> httpx.Response:
    """One request to an ASGI app, in-process."""

    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            return await client.request(method, path, **options)

    return asyncio.run(send())


def assert_error(
    response: httpx.Response, status: int | tuple[int, ...], field: str | None = None
) -> dict[str, Any]:
    """The response is the project's JSON error with this status (and first field)."""
    statuses = status if isinstance(status, tuple) else (status,)
    assert response.status_code in statuses, (response.status_code, response.text[:300])
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error", "field", "reason", "errors"}, body
    assert body["errors"] and all(set(e) == {"field", "reason"} for e in body["errors"])
    assert body["error"].startswith(f"{body['field']}: ")
    if field is not None:
        assert body["field"] == field, body
    return body


def now_iso(offset_s: float = 0.0) -> str:
    """A timestamp the transformer accepts under any clock policy: about now."""
    return (datetime.now(UTC) + timedelta(seconds=offset_s)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def instance(tag: str, **changes: Any) -> dict[str, Any]:
    """A valid scoring instance (unique id), with ``changes`` applied."""
    good = {
        "transaction_id": f"tx-{tag}-{uuid.uuid4().hex[:8]}",
        "card_id": "card-unit-001",
        "merchant_id": "merchant-unit-001",
        "amt": 12.5,
        "timestamp": now_iso(),
        "category": "grocery",
    }
    return {**good, **changes}


def v2_body(instances: list[dict[str, Any]]) -> dict[str, Any]:
    """The transformer's v2 request: one tensor per field."""
    names = instances[0].keys()
    return {
        "inputs": [
            {
                "name": name,
                "shape": [len(instances)],
                "datatype": "FP64" if name == "amt" else "BYTES",
                "data": [row[name] for row in instances],
            }
            for name in names
        ]
    }


def state_of(model: Any) -> dict[str, Any]:
    """The transformer's live per-card state, comparable with ``==``."""
    holder = getattr(model, "live", None) or model.state  # the live state, else the bundle's
    return holder.features.to_dict()


def features_row(value: float = 0.5) -> list[float]:
    return [value] * N_FEATURES


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def predictor(serving_bundle: Path) -> Any:
    from fraud_detection.serving.predictor import make_predictor

    model = make_predictor("fraud-detector", BundleSource(model_dir=serving_bundle), max_rows=50)
    model.load()
    return model


@pytest.fixture(scope="module")
def predictor_app(predictor: Any) -> Any:
    return build_app([predictor], max_body_bytes=200_000)


@pytest.fixture(scope="module")
def transformer(serving_bundle: Path) -> Any:
    from fraud_detection.serving.transformer import make_transformer

    model = make_transformer(
        "fraud-detector", BundleSource(model_dir=serving_bundle), collocated=True
    )
    model.load()
    return model


@pytest.fixture(scope="module")
def transformer_app(transformer: Any) -> Any:
    return build_app([transformer])


def failing_model(name: str = "fraud-detector") -> Any:
    """A real ``kserve.Model`` whose predict fails when the payload asks it to."""
    from kserve import Model
    from kserve.errors import InferenceError

    class Failing(Model):
        def predict(self, payload: Any, headers: Any = None) -> Any:
            if payload.get("fail") == "runtime":
                raise RuntimeError("deliberate failure in predict")
            if payload.get("fail") == "inference":
                raise InferenceError("deliberate inference failure")
            return {"predictions": [len(payload.get("instances", []))]}

    model = Failing(name)
    model.ready = True
    return model


# ---------------------------------------------------------------- pure functions
def test_lone_surrogates_are_refused_by_the_decoder_naming_the_field() -> None:
    raw = b'{"instances": [{"ok": "fine \\ud83d\\ude00", "card_id": "x\\udc00"}]}'
    with pytest.raises(RequestError) as caught:
        decode_json_body(raw)
    assert (caught.value.status, caught.value.field) == (400, "instances[0].card_id")
    with pytest.raises(RequestError) as caught:
        decode_json_body(b'{"\\ud800": 1}')
    assert caught.value.field == "\ud800"  # the error body escapes it (see safe_text)
    assert decode_json_body(b'{"a": "\\ud83d\\ude00"}') == {"a": "\U0001f600"}


def test_safe_text_escapes_surrogates_and_cuts() -> None:
    assert safe_text("a\ud800b", 50) == "a\\ud800b"
    assert safe_text("x" * 1000, 10) == "x" * 9 + "…"
    assert safe_text("plain", 10) == "plain"


@pytest.mark.parametrize(
    "raw", ["abc", "-1", "", "1e3", "+5", "5.0", "\uff11\uff10", "99999999999999999999", "11"]
)
def test_inference_header_length_must_be_a_length_within_the_body(raw: str) -> None:
    with pytest.raises(RequestError) as caught:
        inference_header_length({INFERENCE_HEADER: raw}, 10)
    assert caught.value.field == INFERENCE_HEADER
    assert inference_header_length({INFERENCE_HEADER: " 7 "}, 10) == 7


def test_validation_problems_name_fields_without_the_input() -> None:
    errors = [
        {
            "type": "missing",
            "loc": ("body", "InferenceRequest", "inputs"),
            "msg": "Field required",
            "input": {"secret": "x" * 100},
        },
        {
            "type": "bytes_type",
            "loc": ("body", "bytes"),
            "msg": "Input should be bytes",
            "input": "y",
        },
        {
            "type": "int_type",
            "loc": ("body", "InferenceRequest", "inputs", 2, "shape", 0),
            "msg": "Input should be a valid integer",
            "input": "z",
        },
    ]
    problems = validation_problems(errors)
    assert [(p.field, p.reason) for p in problems] == [
        ("inputs", "Field required"),
        ("inputs[2].shape[0]", "Input should be a valid integer"),
    ]


# ---------------------------------------------------------------- transformer: no state change
@pytest.mark.parametrize("field", TEXT_FIELDS)
@pytest.mark.parametrize("protocol", ["v1", "v2"])
def test_a_lone_surrogate_is_refused_before_the_state_changes(
    transformer: Any, transformer_app: Any, field: str, protocol: str
) -> None:
    before = state_of(transformer)
    good = instance("surrogate")
    text = json.dumps(good[field])[1:-1]
    if protocol == "v1":
        raw = json.dumps({"instances": [good]}).replace(text, text[:2] + "\\ud800", 1)
        response = call(transformer_app, "POST", V1, content=raw.encode(), headers=JSON)
        body = assert_error(response, 400, f"instances[0].{field}")
    else:
        raw = json.dumps(v2_body([good])).replace(text, text[:2] + "\\udfff", 1)
        response = call(transformer_app, "POST", V2, content=raw.encode(), headers=JSON)
        body = assert_error(response, 400)
        assert body["field"].startswith("inputs[") and body["field"].endswith(".data[0]")
    assert "surrogate" in body["reason"]
    assert state_of(transformer) == before
    # The same transaction without the surrogate is scored and absorbed.
    path, payload = (V1, {"instances": [good]}) if protocol == "v1" else (V2, v2_body([good]))
    assert call(transformer_app, "POST", path, json=payload).status_code == 200
    assert state_of(transformer) != before


def test_explain_is_refused_before_the_state_changes(
    transformer: Any, transformer_app: Any
) -> None:
    before = state_of(transformer)
    body = {"instances": [instance("explain")]}
    response = call(transformer_app, "POST", "/v1/models/fraud-detector:explain", json=body)
    assert_error(response, 404, "path")
    assert state_of(transformer) == before


@pytest.mark.parametrize(
    ("raw", "kind"),
    [
        (b'"hello"', "text"),
        (b"42", "a number"),
        (b"[1, 2]", "an array"),
        (b"null", "null"),
        (b"true", "a boolean"),
    ],
)
def test_a_json_value_that_is_not_an_object_is_a_400(
    transformer_app: Any, predictor_app: Any, raw: bytes, kind: str
) -> None:
    for app in (transformer_app, predictor_app):
        response = call(app, "POST", V1, content=raw, headers=JSON)
        body = assert_error(response, 400, "body")
        assert body["reason"] == f"must be a JSON object, got {kind}"
        response = call(app, "POST", V2, content=raw, headers=JSON)
        assert_error(response, 400, "body")


def test_a_v1_body_on_v2_gets_the_project_error_without_echoing_it(transformer_app: Any) -> None:
    marker = "echo-marker-" + uuid.uuid4().hex
    body = {"instances": [instance("v1-on-v2", transaction_id=marker)]}
    response = call(transformer_app, "POST", V2, json=body)
    assert_error(response, 400, "inputs")
    assert marker not in response.text


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b'{"inputs": [{"name": "card_id", "shape": "x", "datatype": "BYTES", "data": []}]}',
        b'{"inputs": [{"name": 5}]}',
        b'{"inputs": {}}',
        b"",
        b"[" * 5000 + b"]" * 5000,
        b"\xff\xfe{}",
    ],
)
def test_malformed_v2_json_is_a_400(transformer_app: Any, body: bytes) -> None:
    assert_error(call(transformer_app, "POST", V2, content=body, headers=JSON), 400)


# ---------------------------------------------------------------- headers
@pytest.mark.parametrize("value", ["abc", "-1", "", "1e3", "4096", "0x10"])
def test_a_bad_inference_header_content_length_is_a_400(predictor_app: Any, value: str) -> None:
    headers = {"content-type": "application/octet-stream", INFERENCE_HEADER: value}
    response = call(predictor_app, "POST", V2, content=b'{"inputs": []}', headers=headers)
    assert_error(response, 400, INFERENCE_HEADER)


def binary_request(rows: np.ndarray, size: int | None = None) -> tuple[bytes, dict[str, str]]:
    """A v2 binary-extension request of FP32 feature rows (``size``: the declared data size)."""
    data = rows.astype(np.float32).tobytes()
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "features",
                    "shape": list(rows.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(data) if size is None else size},
                }
            ]
        }
    ).encode()
    headers = {"content-type": "application/octet-stream", INFERENCE_HEADER: str(len(head))}
    return head + data, headers


def test_a_binary_v2_request_is_scored(predictor_app: Any) -> None:
    body, headers = binary_request(np.full((2, N_FEATURES), 0.25))
    response = call(predictor_app, "POST", V2, content=body, headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["shape"] == [2]


@pytest.mark.parametrize("case", ["size beyond body", "short data", "size as text", "not object"])
def test_an_unreadable_binary_v2_request_is_a_400(predictor_app: Any, case: str) -> None:
    rows = np.full((1, N_FEATURES), 0.25)
    if case == "size beyond body":
        body, headers = binary_request(rows, size=10_000)
    elif case == "short data":
        body, headers = binary_request(rows)
        body = body[:-5]
    elif case == "size as text":
        body, headers = binary_request(rows)
        body = body.replace(b'"binary_data_size": 72', b'"binary_data_size": "72"')
    else:
        body, headers = b"[1, 2]", {INFERENCE_HEADER: "6"}
    assert_error(call(predictor_app, "POST", V2, content=body, headers=headers), 400)


def test_binary_text_that_is_not_utf8_is_a_400(transformer: Any, transformer_app: Any) -> None:
    before = state_of(transformer)
    good = instance("binary")
    raw = b"\xff\xfe"
    data = struct.pack("<I", len(raw)) + raw
    inputs = [
        {
            "name": name,
            "shape": [1],
            "datatype": "FP64" if name == "amt" else "BYTES",
            "data": [value],
        }
        for name, value in good.items()
        if name != "card_id"
    ]
    inputs.append(
        {
            "name": "card_id",
            "shape": [1],
            "datatype": "BYTES",
            "parameters": {"binary_data_size": len(data)},
        }
    )
    head = json.dumps({"inputs": inputs}).encode()
    headers = {"content-type": "application/octet-stream", INFERENCE_HEADER: str(len(head))}
    response = call(transformer_app, "POST", V2, content=head + data, headers=headers)
    assert_error(response, 400, "body")
    assert state_of(transformer) == before


CE_HEADERS = {"ce-specversion": "1.0", "ce-source": "unit", "ce-type": "t", "ce-id": "1"}


@pytest.mark.parametrize(
    ("extra", "body"),
    [
        ({}, b""),
        ({"content-type": "application/json"}, b""),
        ({"ce-specversion": "9.9"}, b'{"instances": [[0.5]]}'),
        ({}, b"not json"),
        ({}, b'"a string"'),
        ({"ce-contenttype": "application/json"}, b"{bad"),
        ({"content-type": "text/plain"}, b'{"instances": []}'),
    ],
)
def test_bad_cloudevents_are_a_4xx(predictor_app: Any, extra: dict[str, str], body: bytes) -> None:
    response = call(predictor_app, "POST", V1, content=body, headers={**CE_HEADERS, **extra})
    assert_error(response, (400, 415))


def test_a_binary_cloudevent_is_scored(predictor_app: Any) -> None:
    body = json.dumps({"instances": [features_row()]}).encode()
    headers = {**CE_HEADERS, "content-type": "application/json"}
    response = call(predictor_app, "POST", V1, content=body, headers=headers)
    assert response.status_code == 200, response.text
    assert len(response.json()["predictions"]) == 1


@pytest.mark.parametrize(
    ("headers", "status", "field"),
    [
        ({"content-type": "text/plain"}, 415, "content-type"),
        ({"content-type": "application/x-www-form-urlencoded"}, 415, "content-type"),
        ({"content-type": "application/json", "content-encoding": "gzip"}, 415, "content-encoding"),
    ],
)
def test_unreadable_content_types_are_a_415(
    predictor_app: Any, headers: dict[str, str], status: int, field: str
) -> None:
    body = json.dumps({"instances": [features_row()]}).encode()
    assert_error(call(predictor_app, "POST", V1, content=body, headers=headers), status, field)
    v2 = json.dumps(
        {
            "inputs": [
                {
                    "name": "features",
                    "shape": [1, N_FEATURES],
                    "datatype": "FP32",
                    "data": features_row(),
                }
            ]
        }
    ).encode()
    assert_error(call(predictor_app, "POST", V2, content=v2, headers=headers), status, field)


def test_a_body_without_content_type_is_read_as_json(predictor_app: Any) -> None:
    body = json.dumps({"instances": [features_row()]}).encode()
    assert call(predictor_app, "POST", V1, content=body).status_code == 200
    v2 = json.dumps(
        {
            "inputs": [
                {
                    "name": "features",
                    "shape": [1, N_FEATURES],
                    "datatype": "FP64",
                    "data": features_row(),
                }
            ]
        }
    ).encode()
    response = call(predictor_app, "POST", V2, content=v2)
    assert response.status_code == 200, response.text


# ---------------------------------------------------------------- paths, methods, limits
@pytest.mark.parametrize(
    ("method", "path", "status", "field"),
    [
        ("POST", "/nowhere", 404, "path"),
        ("DELETE", V1, 405, "method"),
        ("PUT", V2, 405, "method"),
        ("POST", "/v1/models/no-such-model:predict", 404, "model"),
        ("POST", "/v2/models/no-such-model/infer", 404, "model"),
        ("POST", "/v2/models/fraud-detector/versions/3/infer", 404, "path"),
        ("POST", "/v1/models/fraud-detector:explain", 404, "path"),
    ],
)
def test_unknown_paths_methods_and_models_use_the_error_format(
    predictor_app: Any, method: str, path: str, status: int, field: str
) -> None:
    body = v2_features() if path.startswith("/v2/") else {"instances": [features_row()]}
    response = call(predictor_app, method, path, json=body)
    assert_error(response, status, field)
    if status == 405:
        assert response.headers["allow"]


def test_a_body_over_the_limit_is_a_413(predictor: Any) -> None:
    app = build_app([predictor], max_body_bytes=1_000)
    body = json.dumps({"instances": [features_row()] * 20}).encode()
    assert len(body) > 1_000
    assert_error(call(app, "POST", V1, content=body, headers=JSON), 413, "body")

    async def chunks() -> Any:
        for _ in range(3):
            yield b" " * 600

    assert_error(call(app, "POST", V1, content=chunks(), headers=JSON), 413, "body")


def test_errors_never_echo_large_parts_of_the_input(
    transformer_app: Any, predictor_app: Any
) -> None:
    big = "Z" * 50_000
    requests = [
        (transformer_app, "POST", V1, {"content": ('{"instances": "' + big).encode()}),
        (transformer_app, "POST", V1, {"json": {"instances": [instance("big", amt=big)]}}),
        (transformer_app, "POST", V1, {"json": {"instances": [{big: 1}]}}),
        (
            transformer_app,
            "POST",
            V2,
            {"json": {"inputs": [{"name": big, "shape": [1], "datatype": "BYTES", "data": [1]}]}},
        ),
        (
            transformer_app,
            "POST",
            V2,
            {"json": {"inputs": [{"name": "x", "shape": [1], "datatype": big, "data": [1]}]}},
        ),
        (predictor_app, "POST", V1, {"json": {"instances": [[big] * N_FEATURES]}}),
        (predictor_app, "POST", f"/v1/models/{big[:4000]}:predict", {"json": {}}),
        (predictor_app, "POST", f"/{big[:4000]}", {"json": {}}),
        (predictor_app, "POST", V1, {"content": b"{}", "headers": {"content-type": big[:4000]}}),
    ]
    for app, method, path, options in requests:
        response = call(app, method, path, **options)
        assert_error(response, (400, 404, 413, 415))
        assert len(response.content) < 8_000, response.text[:300]
        assert "Z" * 300 not in response.text


# ---------------------------------------------------------------- predictor rows
MALFORMED_ROWS: list[tuple[str, Any, int]] = [
    ("short row", {"instances": [[0.5] * (N_FEATURES - 1)]}, 400),
    ("long row", {"instances": [[0.5] * (N_FEATURES + 1)]}, 400),
    ("ragged rows", {"instances": [features_row(), [0.5]]}, 400),
    ("text value", {"instances": [[*features_row()[:-1], "0.5"]]}, 400),
    ("boolean value", {"instances": [[*features_row()[:-1], True]]}, 400),
    ("null value", {"instances": [[*features_row()[:-1], None]]}, 400),
    ("nested value", {"instances": [[*features_row()[:-1], [0.5]]]}, 400),
    ("empty", {"instances": []}, 400),
    ("empty row", {"instances": [[]]}, 400),
    ("not an array", {"instances": "rows"}, 400),
    ("an object", {"instances": {"a": 1}}, 400),
    ("no instances", {"rows": [features_row()]}, 400),
    ("too many rows", {"instances": [features_row()] * 51}, 413),
]


@pytest.mark.parametrize(
    ("name", "payload", "status"), MALFORMED_ROWS, ids=[m[0] for m in MALFORMED_ROWS]
)
def test_the_predictor_refuses_malformed_rows(
    predictor_app: Any, name: str, payload: Any, status: int
) -> None:
    assert_error(call(predictor_app, "POST", V1, json=payload), status)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400", "1" + "0" * 400])
def test_the_predictor_refuses_non_finite_numbers(predictor_app: Any, literal: str) -> None:
    row = ", ".join(["0.5"] * (N_FEATURES - 1) + [literal])
    body = f'{{"instances": [[{row}]]}}'.encode()
    assert_error(call(predictor_app, "POST", V1, content=body, headers=JSON), 400)


def test_the_predictor_scores_well_formed_rows(predictor_app: Any) -> None:
    response = call(predictor_app, "POST", V1, json={"instances": [features_row()] * 3})
    assert response.status_code == 200
    assert len(response.json()["predictions"]) == 3
    flat = call(predictor_app, "POST", V1, json={"instances": features_row()})
    assert flat.status_code == 200 and len(flat.json()["predictions"]) == 1


def v2_features(**changes: Any) -> dict[str, Any]:
    tensor = {
        "name": "features",
        "shape": [1, N_FEATURES],
        "datatype": "FP32",
        "data": features_row(),
    }
    return {"inputs": [{**tensor, **changes}]}


MALFORMED_V2: list[tuple[str, dict[str, Any]]] = [
    ("wrong shape", v2_features(shape=[1, 3])),
    ("shape and data disagree", v2_features(shape=[2, N_FEATURES])),
    ("negative shape", v2_features(shape=[-2, N_FEATURES])),
    ("text data", v2_features(data=["0.5"] * N_FEATURES)),
    ("boolean data", v2_features(datatype="BOOL", data=[True] * N_FEATURES)),
    ("bytes datatype", v2_features(datatype="BYTES")),
    ("unknown datatype", v2_features(datatype="FLOAT")),
    ("mixed nesting", v2_features(data=[0.5, [0.5]] + [0.5] * (N_FEATURES - 2))),
    ("empty", v2_features(shape=[0, N_FEATURES], data=[])),
    (
        "two inputs none named features",
        {"inputs": [v2_features(name="a")["inputs"][0], v2_features(name="b")["inputs"][0]]},
    ),
    ("no inputs", {"inputs": []}),
    ("too many rows", v2_features(shape=[51, N_FEATURES], data=features_row() * 51)),
]


@pytest.mark.parametrize(("name", "payload"), MALFORMED_V2, ids=[m[0] for m in MALFORMED_V2])
def test_the_predictor_refuses_malformed_v2_tensors(
    predictor_app: Any, name: str, payload: dict[str, Any]
) -> None:
    assert_error(call(predictor_app, "POST", V2, json=payload), (400, 413))


def test_the_predictor_scores_a_v2_tensor(predictor_app: Any) -> None:
    response = call(predictor_app, "POST", V2, json=v2_features())
    assert response.status_code == 200, response.text
    assert len(response.json()["outputs"][0]["data"]) == 1


# ---------------------------------------------------------------- unexpected errors
@pytest.mark.parametrize("failure", ["runtime", "inference"])
def test_an_unexpected_error_is_a_json_500_that_closes_the_connection_logged_once(
    caplog: pytest.LogCaptureFixture, failure: str
) -> None:
    app = build_app([failing_model()])
    with caplog.at_level(logging.INFO):
        response = call(app, "POST", V1, json={"fail": failure, "instances": [1]})
    body = assert_error(response, 500, "server")
    assert "deliberate" not in response.text  # no detail of the failure goes to the client
    assert response.headers["connection"] == "close"
    logged = [record for record in caplog.records if record.exc_info]
    assert len(logged) == 1, [record.getMessage() for record in logged]
    assert "deliberate" in str(logged[0].exc_info[1])
    assert body["reason"]
    assert call(app, "POST", V1, json={"instances": [1, 2]}).json() == {"predictions": [2]}


# ---------------------------------------------------------------- a real server
SERVER_SCRIPT = textwrap.dedent(
    '''
    """A model server whose model fails on request (for the connection tests)."""
    import argparse

    from kserve import Model
    from kserve.model_server import parser as kserve_parser

    from fraud_detection.serving.app import (
        add_server_arguments,
        configure_logging,
        run_model_server,
    )


    class Failing(Model):
        def predict(self, payload, headers=None):
            if payload.get("fail"):
                raise RuntimeError(f"deliberate failure {payload['fail']}")
            return {"predictions": [len(payload.get("instances", []))]}


    parser = argparse.ArgumentParser(parents=[kserve_parser])
    add_server_arguments(parser)
    args = parser.parse_args()
    configure_logging(args)
    model = Failing(args.model_name)
    model.ready = True
    run_model_server([model], args)
    '''
)


def start_failing_server(directory: Path, *options: str) -> ServerProcess:
    """A real ``kserve.ModelServer`` process set up by :func:`run_model_server` (4 KiB bodies)."""
    script = directory / "failing_server.py"
    script.write_text(SERVER_SCRIPT)
    server = ServerProcess(
        "failing server",
        str(script),
        ["--max_body_bytes", "4096", "--access_log", "false", *options],
        LOOPBACK,
        free_port(LOOPBACK),
        directory / "server.log",
    )
    server.start()
    try:
        return server.wait_ready(60.0)
    except BaseException:
        server.stop()
        raise


@pytest.fixture(scope="module")
def real_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = start_failing_server(tmp_path_factory.mktemp("real-server"))
    try:
        yield server
    finally:
        server.stop()


def raw_exchange(server: ServerProcess, request: bytes) -> bytes:
    """Send raw bytes on a fresh connection; everything the server answers until it closes."""
    with socket.create_connection((server.host, server.port), timeout=10) as connection:
        connection.sendall(request)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    return answer


def test_after_a_500_a_keep_alive_client_is_not_reset(real_server: ServerProcess) -> None:
    url = real_server.url + V1
    with httpx.Client(timeout=10) as client:
        for attempt in range(3):
            failed = client.post(url, json={"fail": f"keep-alive-{attempt}"})
            assert_error(failed, 500, "server")
            assert failed.headers["connection"] == "close"
            ok = client.post(url, json={"instances": [1, 2, 3]})
            assert ok.status_code == 200 and ok.json() == {"predictions": [3]}


def test_an_oversized_body_does_not_break_the_connection(real_server: ServerProcess) -> None:
    url = real_server.url + V1
    with httpx.Client(timeout=10) as client:
        for size in (5_000, 20_000):
            big = json.dumps({"instances": [0] * size}).encode()
            assert_error(client.post(url, content=big, headers=JSON), 413, "body")
            assert client.post(url, json={"instances": [1]}).status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        b"content-length: abc\r\n",
        b"content-length: -1\r\n",
        b"content-length: 2\r\ncontent-length: 3\r\n",
        b"content-length: 99999999999999999999999\r\n",
        b"transfer-encoding: chunked\r\n",
    ],
)
def test_unparseable_http_gets_the_json_400(real_server: ServerProcess, headers: bytes) -> None:
    request = (
        b"POST "
        + V1.encode()
        + b" HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n"
        + headers
        + b"\r\nzz{}\r\n"
    )
    answer = raw_exchange(real_server, request)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 "), answer[:200]
    assert b"connection: close" in head.lower()
    parsed = json.loads(body)
    assert parsed["field"] == "request" and parsed["errors"]


def test_the_unexpected_error_is_logged_once_with_its_traceback(tmp_path: Path) -> None:
    server = start_failing_server(tmp_path)
    marker = uuid.uuid4().hex
    try:
        with httpx.Client(timeout=10) as client:
            assert client.post(server.url + V1, json={"fail": marker}).status_code == 500
            assert client.post(server.url + V1, json={"instances": [1]}).status_code == 200
    finally:
        server.stop()  # the log is complete once the process has ended
    log_text = server.log_path.read_text()
    assert log_text.count(f"RuntimeError: deliberate failure {marker}") == 1, log_text[-3000:]
    assert log_text.count("Traceback (most recent call last)") == 1, log_text[-3000:]
    assert "unexpected error answering POST " + V1 in log_text


@pytest.mark.parametrize("action", ["load", "unload"])
def test_the_model_repository_endpoints_are_not_exposed(transformer_app: Any, action: str) -> None:
    response = call(transformer_app, "POST", f"/v2/repository/models/fraud-detector/{action}")
    assert_error(response, 404)
    assert call(transformer_app, "GET", "/v2/models/fraud-detector/ready").status_code == 200


def test_the_model_repository_endpoints_are_not_exposed_by_a_real_server(
    real_server: ServerProcess,
) -> None:
    """The server uvicorn runs is configured as build_app's: nobody can unload the model."""
    with httpx.Client(timeout=10) as client:
        for action in ("unload", "load"):
            response = client.post(
                f"{real_server.url}/v2/repository/models/fraud-detector/{action}"
            )
            assert_error(response, 404)
        assert client.get(f"{real_server.url}/v1/models/fraud-detector").status_code == 200
        assert client.post(real_server.url + V1, json={"instances": [1]}).status_code == 200


# ---------------------------------------------------------------- metrics
def sample(name: str, labels: dict[str, str] | None = None) -> float:
    """A sample of the process's Prometheus registry (the one /metrics serves); 0 if absent."""
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


def rejected(reason: str) -> float:
    return sample("fraud_requests_rejected_total", {"reason": reason})


def test_refused_requests_are_counted_by_a_bounded_reason(
    predictor: Any, predictor_app: Any
) -> None:
    from prometheus_client import REGISTRY

    from fraud_detection.serving.metrics import OTHER_REASON, REJECTION_REASONS

    small = build_app([predictor], max_body_bytes=1_000)
    cases = [
        (predictor_app, "POST", V1, {"content": b"{not json", "headers": JSON}, "bad_request"),
        (predictor_app, "GET", "/v1/models/no-such-model", {}, "not_found"),
        (predictor_app, "GET", f"/{uuid.uuid4().hex}", {}, "not_found"),
        (predictor_app, "DELETE", V1, {}, "method_not_allowed"),
        (small, "POST", V1, {"content": b" " * 2_000, "headers": JSON}, "too_large"),
        (
            predictor_app,
            "POST",
            V1,
            {"content": b"{}", "headers": {"content-type": "text/csv"}},
            "unsupported_media_type",
        ),
    ]
    for app, method, path, options, reason in cases:
        before = rejected(reason)
        response = call(app, method, path, **options)
        assert 400 <= response.status_code < 500, (path, response.status_code)
        assert rejected(reason) == before + 1, (method, path, reason)
    reasons = {
        sample_.labels["reason"]
        for family in REGISTRY.collect()
        if family.name == "fraud_requests_rejected"
        for sample_ in family.samples
    }
    # The label values are the fixed set, whatever the requests asked for.
    assert reasons == {*REJECTION_REASONS.values(), OTHER_REASON}


def test_a_500_is_counted_as_failed(caplog: pytest.LogCaptureFixture) -> None:
    app = build_app([failing_model()])
    before = sample("fraud_requests_failed_total")
    with caplog.at_level(logging.CRITICAL):
        assert call(app, "POST", V1, json={"fail": "runtime"}).status_code == 500
    assert sample("fraud_requests_failed_total") == before + 1


def test_an_unreachable_predictor_is_a_counted_503(serving_bundle: Path) -> None:
    from fraud_detection.serving.transformer import make_transformer

    model = make_transformer(
        "fraud-detector",
        BundleSource(model_dir=serving_bundle),
        predictor_host=f"{LOOPBACK}:{free_port(LOOPBACK)}",
    )
    model.load()
    app = build_app([model])
    unavailable = sample("fraud_requests_unavailable_total")
    failures = sample("fraud_predictor_failures_total", {"kind": "connection"})
    response = call(app, "POST", V1, json={"instances": [instance("unreachable")]})
    assert_error(response, 503, "predictor")
    assert response.headers["retry-after"] == "1"
    assert sample("fraud_requests_unavailable_total") == unavailable + 1
    assert sample("fraud_predictor_failures_total", {"kind": "connection"}) == failures + 1
    asyncio.run(model.aclose())  # as the server does at stop


# ---------------------------------------------------------------- logs
def test_the_json_log_format_is_one_object_per_record() -> None:
    from fraud_detection.serving.app import log_formatter

    formatter = log_formatter("json")
    try:
        raise ValueError("deliberate")
    except ValueError:
        record = logging.LogRecord(
            "fraud_detection.x", logging.ERROR, __file__, 1, "failed: %s", ("é\ud800",), None
        )
        record.exc_info = sys.exc_info()
    line = formatter.format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert set(entry) == {"time", "level", "logger", "pid", "message", "exception"}
    assert (entry["level"], entry["logger"], entry["message"]) == (
        "ERROR",
        "fraud_detection.x",
        "failed: é\ud800",
    )
    assert entry["time"].endswith("Z") and "ValueError: deliberate" in entry["exception"]
    text = log_formatter("text").format(record).splitlines()[0]
    assert re.fullmatch(TEXT_LINE, text), text
    with pytest.raises(ValueError, match="log format"):
        log_formatter("xml")


#: The first line of a record in the text format.
TEXT_LINE = (
    r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z \d+ (DEBUG|INFO|WARNING|ERROR|CRITICAL) \S+: .*"
)


def test_a_real_server_logs_json_lines_without_noise_and_404s_without_tracebacks(
    tmp_path: Path,
) -> None:
    """Every line is a JSON record; a 404 is no error; the deprecation warnings KServe's
    responses trigger are filtered; the 500 is one ERROR record with its traceback."""
    server = start_failing_server(tmp_path, "--log_format", "json")
    marker = uuid.uuid4().hex
    try:
        with httpx.Client(timeout=10) as client:
            assert client.get(f"{server.url}/v1/models/no-such-model").status_code == 404
            assert client.get(f"{server.url}/v2/models/no-such-model/ready").status_code == 404
            assert client.get(f"{server.url}/{marker}").status_code == 404
            assert client.post(server.url + V1, json={"instances": [1]}).status_code == 200
            assert client.get(f"{server.url}/v1/models/fraud-detector").status_code == 200
            assert client.post(server.url + V1, json={"fail": marker}).status_code == 500
    finally:
        server.stop()  # the log is complete once the process has ended
    lines = server.log_path.read_text().splitlines()
    records = [json.loads(line) for line in lines]  # fails on any line that is not JSON
    assert any(r["message"].startswith("Uvicorn running on") for r in records), lines[:20]
    errors = [r for r in records if r["level"] in ("ERROR", "CRITICAL")]
    assert len(errors) == 1, errors
    assert f"RuntimeError: deliberate failure {marker}" in errors[0]["exception"]
    assert not [r for r in records if r["logger"] == "py.warnings" or "Warning" in r["message"]]
    assert not [r for r in records if "exception" in r and r is not errors[0]]
