"""Running a KServe ``ModelServer`` the way this project's servers need it.

Both servers (predictor and transformer) are plain ``kserve.ModelServer`` processes; this module
adds what the stock server lacks, so that a malformed request never gets a 5xx, never resets a
keep-alive connection, and never changes any state:

* :class:`FraudDataPlane` — request decoding that refuses, before any model sees the request:
  a non-JSON content type or content encoding (415), a body that is not JSON or not a JSON
  object, text with a lone surrogate (it cannot be encoded back as UTF-8), a bad
  ``inference-header-content-length`` header, a binary-mode CloudEvent without JSON data, a v2
  binary request that cannot be read, and ``:explain`` on a server that has no explainer.
  ``application/json; charset=utf-8`` is accepted, and a body that orjson refuses only because
  it contains ``NaN``/``Infinity`` is decoded so the validator can name the offending field.
* One error format everywhere: every refusal — the project's own
  :class:`~fraud_detection.serving.requests.RequestError`, FastAPI/pydantic validation errors,
  KServe's ``InvalidInput``/``ModelNotFound``/unsupported-protocol errors, unknown paths, wrong
  methods, body limits, even a request uvicorn cannot parse — is answered as
  ``{"error", "field", "reason", "errors": [{"field", "reason"}]}`` with a 4xx status, and
  never echoes more than a short excerpt of the input.
* :class:`UnexpectedErrorMiddleware` — a truly unexpected error is a 500 in that shape with
  ``Connection: close`` (so a keep-alive client is never reset), logged once with its traceback.
* :class:`BodyLimitMiddleware` — 413 for a body over the limit, before it is read whole.
* :func:`run_model_server` — builds the server from the standard KServe arguments and can bind
  it to loopback (the stock REST server always binds ``0.0.0.0``); :func:`build_app` builds the
  same application without a socket.
* :func:`add_bundle_source_arguments`, :func:`source_from_args` and :func:`serve_model` — what
  both servers' entry points share: where the bundle comes from, refusing a bad one (exit 2),
  reloading on SIGHUP.
* Every error answer is counted in the ``fraud_requests_*`` metrics
  (:mod:`fraud_detection.serving.metrics`) by its status, never by anything in the request.
* :func:`configure_logging` — every record of a server process in one format, text or JSON
  lines (``--log_format``), with the dependencies' known deprecation warnings filtered. At stop
  the REST server awaits each model's ``aclose()`` (the transformer's connection pool).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import signal
import struct
import sys
import time
import warnings
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from fraud_detection.bundle import BundleError
from fraud_detection.serving.metrics import count_error_answer
from fraud_detection.serving.model import BundleSource
from fraud_detection.serving.requests import (
    DEFAULT_MAX_BODY_BYTES,
    Problem,
    RequestError,
    describe_value,
)

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Media types decoded as JSON (KServe's list, matched without parameters such as charset).
JSON_MEDIA_TYPES = frozenset(
    {
        "application/json",
        "application/cloudevents+json",
        "application/ld+json",
        "application/octet-stream",
    }
)
#: The v2 binary tensor extension's header: the length of the JSON part of the body.
INFERENCE_HEADER = "inference-header-content-length"
#: Content encodings accepted (compressed bodies are not).
IDENTITY_ENCODINGS = frozenset({"", "identity"})

#: Longest field and reason reported in an error body (never echo large parts of the input).
MAX_FIELD_CHARS = 120
MAX_REASON_CHARS = 240
#: Most problems reported in one error body.
MAX_REPORTED_PROBLEMS = 20
#: A declared body this many times over the limit is refused and the connection closed; a
#: smaller excess is discarded by the server so the connection stays usable.
DRAIN_FACTOR = 16
_DIGITS = re.compile(r"[0-9]{1,15}")

#: KServe's per-request timing logger.
TRACE_LOGGER = "kserve.trace"


class PredictorUnavailableError(RuntimeError):
    """The predictor did not answer (down, refusing, timed out or failing): retry later.

    Attributes:
        kind: what failed, one of :data:`~fraud_detection.serving.metrics.PREDICTOR_FAILURE_KINDS`
            (``timeout``, ``connection``, ``error_status``, ``bad_response``).
    """

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


# ------------------------------------------------------------------------------ error bodies
def safe_text(text: str, limit: int) -> str:
    """``text`` made encodable as UTF-8 (lone surrogates escaped) and cut to ``limit`` chars."""
    if not text.isascii():
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


def error_body(error: RequestError) -> dict[str, Any]:
    """The JSON error body of ``error``: at most a few short, encodable problems."""
    problems = [
        Problem(
            safe_text(problem.field, MAX_FIELD_CHARS), safe_text(problem.reason, MAX_REASON_CHARS)
        )
        for problem in error.problems[:MAX_REPORTED_PROBLEMS]
    ]
    return RequestError(problems, error.status).to_dict()


def error_bytes(error: RequestError) -> bytes:
    """:func:`error_body` serialized."""
    return orjson.dumps(error_body(error))


def internal_error() -> RequestError:
    """What a client is told about an unexpected server error (no detail of it)."""
    return RequestError.single(
        "server", "unexpected error; it has been logged, retry later", status=500
    )


def error_response(
    error: RequestError, headers: Mapping[str, str] | None = None, close: bool = False
) -> Any:
    """A JSON response for ``error`` (``close``: end the connection after it); counted."""
    from starlette.responses import Response

    count_error_answer(error.status)
    extra = dict(headers or {})
    if close:
        extra["connection"] = "close"
    return Response(
        error_bytes(error), status_code=error.status, media_type="application/json", headers=extra
    )


# ------------------------------------------------------------------------------ text checks
def _has_lone_surrogate(text: str) -> bool:
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _children(item: object) -> Any:
    """(key, child) pairs of a container: objects, arrays and pydantic models; else None."""
    if isinstance(item, dict):
        return item.items()
    if isinstance(item, list | tuple):
        return enumerate(item)
    if getattr(type(item), "__pydantic_fields__", None) is not None:
        return vars(item).items()
    return None


def json_path(parent: str, key: object) -> str:
    """``parent.key`` or ``parent[index]``; ``key`` alone at the root."""
    if isinstance(key, int):
        return f"{parent}[{key}]"
    return f"{parent}.{key}" if parent else str(key)


def _lone_surrogate_path(value: object) -> str | None:
    """The path of the first text (value or key) holding a lone surrogate, or None.

    The keys leading to each value are kept as a tuple and only spelled as a path on a hit.
    """
    stack: list[tuple[tuple[object, ...], object]] = [((), value)]
    while stack:
        trail, item = stack.pop()
        if isinstance(item, str):
            if _has_lone_surrogate(item):
                return _spell(trail)
            continue
        children = _children(item)
        if children is None:
            continue
        for key, child in children:
            if isinstance(key, str) and _has_lone_surrogate(key):
                return _spell((*trail, key))
            stack.append(((*trail, key), child))
    return None


def _spell(trail: tuple[object, ...]) -> str:
    path = ""
    for key in trail:
        path = json_path(path, key)
    return path or "body"


def reject_lone_surrogates(value: object) -> None:
    """Refuse decoded JSON holding a lone surrogate (``"\\ud800"``): it is not valid Unicode.

    Raises:
        RequestError: 400 naming the first such field.
    """
    path = _lone_surrogate_path(value)
    if path is not None:
        raise RequestError.single(
            path, "contains a lone UTF-16 surrogate (such as \\ud800); text must be valid Unicode"
        )


# ------------------------------------------------------------------------------ decoding
def media_type(headers: Mapping[str, str] | None) -> str | None:
    """The request's media type, lower case and without parameters; None when absent."""
    if not headers:
        return None
    value = headers.get("content-type")
    if value is None:
        return None
    return value.split(";", 1)[0].strip().lower()


def is_json_media_type(kind: str | None) -> bool:
    """Whether a media type (None: no header) is decoded as JSON."""
    return kind is None or kind in JSON_MEDIA_TYPES or kind.endswith("+json")


def parsed_by_fastapi(kind: str | None) -> bool:
    """Whether FastAPI decodes a body of this media type as JSON before the data plane sees it."""
    return kind is not None and (kind == "application/json" or kind.endswith("+json"))


def check_content_headers(headers: Mapping[str, str] | None) -> None:
    """Refuse a body the servers cannot read: a non-JSON media type or a content encoding.

    Raises:
        RequestError: 415 naming the header.
    """
    if not headers:
        return
    if not is_json_media_type(media_type(headers)):
        raise RequestError.single(
            "content-type",
            f"must be application/json, got {safe_text(headers['content-type'], 60)!r}",
            status=415,
        )
    encoding = headers.get("content-encoding", "").strip().lower()
    if encoding not in IDENTITY_ENCODINGS:
        raise RequestError.single(
            "content-encoding",
            f"is not supported, got {safe_text(encoding, 40)!r}; send the body uncompressed",
            status=415,
        )


def decode_json_body(body: bytes) -> Any:
    """Decode a JSON body; accepts ``NaN``/``Infinity`` so the validator can name the field.

    Raises:
        RequestError: 400 when the body is not JSON at all, or holds a lone surrogate.
    """
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        first_error = exc
    try:
        # The standard library accepts the non-standard NaN and Infinity literals orjson refuses,
        # and also lone surrogates, which orjson refuses rightly: those are checked here.
        decoded = json.loads(body)
    except (ValueError, RecursionError):
        pass
    else:
        reject_lone_surrogates(decoded)
        return decoded
    raise RequestError.single("body", f"is not valid JSON: {safe_text(str(first_error), 120)}")


def require_object(decoded: object, where: str = "body") -> dict[str, Any]:
    """``decoded`` when it is a JSON object.

    Raises:
        RequestError: 400 otherwise.
    """
    if not isinstance(decoded, dict):
        raise RequestError.single(where, f"must be a JSON object, got {describe_value(decoded)}")
    return decoded


def inference_header_length(headers: Mapping[str, str], body_length: int) -> int:
    """The JSON length the v2 binary extension's header declares.

    Raises:
        RequestError: 400 unless it is a whole number of bytes within the body.
    """
    raw = headers[INFERENCE_HEADER].strip()
    if not _DIGITS.fullmatch(raw) or int(raw) > body_length:
        raise RequestError.single(
            INFERENCE_HEADER,
            f"must be the length in bytes of the JSON part of the body (0 to {body_length}), "
            f"got {safe_text(raw, 24)!r}",
        )
    return int(raw)


def validation_problems(errors: Sequence[Mapping[str, Any]]) -> list[Problem]:
    """pydantic/FastAPI validation errors as problems naming the field (input never echoed)."""
    problems = []
    for error in errors:
        if error.get("type") == "json_invalid":
            detail = (error.get("ctx") or {}).get("error", "")
            problems.append(Problem("body", f"is not valid JSON: {safe_text(str(detail), 80)}"))
            continue
        location = list(error.get("loc", ()))
        if location[:1] == ["body"]:
            location = location[1:]
        if location[:1] == ["bytes"]:
            continue  # the raw-bytes alternative of KServe's v2 body; the object errors say more
        if location[:1] == ["InferenceRequest"]:
            location = location[1:]
        field = ""
        for key in location:
            field = json_path(field, key)
        problems.append(Problem(field or "body", str(error.get("msg", "is not valid"))))
    return problems or [Problem("body", "is not a valid request")]


def _v2_request_from_json(decoded: Any, model_name: str | None) -> Any:
    """A v2 ``InferRequest`` from a decoded JSON body (raw body without a content type)."""
    from kserve.protocol.infer_type import InferRequest
    from kserve.protocol.rest.v2_datamodels import InferenceRequest
    from pydantic import ValidationError

    try:
        request = InferenceRequest.model_validate(require_object(decoded))
    except ValidationError as exc:
        raise RequestError(validation_problems(exc.errors())) from None
    return InferRequest.from_inference_request(request, model_name)


#: What reading a v2 binary request raises on malformed input.
_BINARY_REQUEST_ERRORS = (
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    OverflowError,
    struct.error,
)


def _v2_binary_request(body: bytes, headers: Mapping[str, str], model_name: str | None) -> Any:
    """A v2 ``InferRequest`` from the binary tensor extension (JSON head, raw tensors after)."""
    from kserve.errors import InferenceError
    from kserve.protocol.infer_type import InferRequest

    length = inference_header_length(headers, len(body))
    head = require_object(decode_json_body(body[:length]))
    inputs = head.get("inputs")
    if not isinstance(inputs, list) or not all(isinstance(item, dict) for item in inputs):
        raise RequestError.single("inputs", "must be an array of objects")
    _check_binary_sizes(inputs, len(body) - length)
    try:
        return InferRequest.from_bytes(body, length, model_name)
    except InferenceError:
        # Raised when a BYTES tensor's elements are not UTF-8 text.
        raise RequestError.single("body", "has a BYTES tensor that is not UTF-8 text") from None
    except _BINARY_REQUEST_ERRORS as exc:
        reason = safe_text(str(exc), 80) or type(exc).__name__
        raise RequestError.single(
            "body", f"is not a readable v2 binary request ({reason})"
        ) from None


def _check_binary_sizes(inputs: list[dict[str, Any]], binary_length: int) -> None:
    """Every input without JSON data declares its binary size; the sizes add up to the body."""
    total = 0
    for index, item in enumerate(inputs):
        if item.get("data") is not None:
            continue
        parameters = item.get("parameters")
        size = parameters.get("binary_data_size") if isinstance(parameters, dict) else None
        if type(size) is not int or size < 0:
            raise RequestError.single(
                f"inputs[{index}].parameters.binary_data_size",
                "must be the tensor's length in bytes (or send its data as JSON)",
            )
        total += size
    if total != binary_length:
        raise RequestError.single(
            "body", f"has {binary_length} bytes of binary data; the inputs declare {total}"
        )


def make_dataplane(model_registry: Any) -> Any:
    """A :class:`FraudDataPlane` for ``model_registry`` (imports kserve)."""
    return _dataplane_class()(model_registry=model_registry)


def _dataplane_class() -> type:
    from cloudevents.exceptions import GenericException
    from cloudevents.sdk.converters.util import has_binary_headers
    from kserve import Model
    from kserve.errors import InvalidInput
    from kserve.protocol.dataplane import DataPlane
    from kserve.protocol.infer_type import InferRequest

    class FraudDataPlane(DataPlane):
        """KServe's data plane; decoding refuses every malformed request with a 4xx."""

        def decode(  # type: ignore[override]
            self,
            body: Any,
            headers: dict[str, str] | None,
            protocol_version: str = "v1",
            model_name: str | None = None,
        ) -> tuple[Any, dict[str, Any]]:
            """Decode a request body (v1 JSON, v2 JSON or binary, binary-mode CloudEvents)."""
            headers = headers or {}
            if protocol_version.lower() == "v2":
                return self._decode_v2(body, headers, model_name), {}
            if isinstance(body, bytes):
                return self._decode_v1(body, headers)
            return super().decode(body, headers, protocol_version, model_name)

        def _decode_v1(self, body: bytes, headers: dict[str, str]) -> tuple[Any, dict[str, Any]]:
            if has_binary_headers(headers):
                decoded, attributes = self._binary_cloudevent(body, headers)
                return require_object(decoded, "data"), attributes
            check_content_headers(headers)
            decoded = decode_json_body(body)
            if not isinstance(decoded, dict):
                return require_object(decoded), {}
            decoded, attributes = self.decode_cloudevent(decoded)
            return require_object(decoded, "data" if attributes else "body"), attributes

        def _binary_cloudevent(
            self, body: bytes, headers: dict[str, str]
        ) -> tuple[Any, dict[str, Any]]:
            check_content_headers(headers)
            try:
                event = self.get_binary_cloudevent(body, headers)
            except (InvalidInput, GenericException) as exc:
                raise RequestError.single(
                    "ce-specversion", f"is not a valid CloudEvent: {safe_text(str(exc), 120)}"
                ) from None
            data = event.get_data()
            if data is None or data in (b"", ""):
                raise RequestError.single(
                    "body", "is empty; a binary-mode CloudEvent must carry the JSON request"
                )
            if isinstance(data, str):
                data = data.encode("utf-8", "surrogatepass")
            if isinstance(data, bytes):
                decoded = decode_json_body(data)
            else:
                decoded = data
                reject_lone_surrogates(decoded)
            return decoded, event._get_attributes()

        def _decode_v2(self, body: Any, headers: dict[str, str], model_name: str | None) -> Any:
            if isinstance(body, InferRequest):
                return body
            if isinstance(body, bytes):
                return self._decode_v2_bytes(body, headers, model_name)
            check_content_headers(headers)
            reject_lone_surrogates(body)
            decoded, _ = super().decode(body, headers, "v2", model_name)
            return decoded

        def _decode_v2_bytes(
            self, body: bytes, headers: dict[str, str], model_name: str | None
        ) -> Any:
            if INFERENCE_HEADER in headers:
                return _v2_binary_request(body, headers, model_name)
            kind = media_type(headers)
            if parsed_by_fastapi(kind):
                # FastAPI read the body as JSON: it was text, not an object.
                raise RequestError.single("body", "must be a JSON object, got text")
            check_content_headers(headers)
            return _v2_request_from_json(decode_json_body(body), model_name)

        async def explain(
            self, model_name: str, request: Any, headers: dict[str, str] | None = None
        ) -> Any:
            """Explain, or 404 before the model sees the request when it has no explainer."""
            model = await self.get_model(model_name)
            if type(model).explain is Model.explain and not getattr(model, "explainer_host", None):
                raise RequestError.single(
                    "path", f"{safe_text(model_name, 60)}:explain is not served here", status=404
                )
            return await super().explain(model_name, request, headers)

    return FraudDataPlane


# ------------------------------------------------------------------------------ middlewares
class BodyLimitMiddleware:
    """ASGI middleware answering 413 to a request body larger than ``max_bytes``.

    A declared ``Content-Length`` over the limit is refused before reading; a chunked body is
    read up to the limit and then replayed to the application. The connection stays open (the
    server discards the rest of the body) unless the declared length is absurd.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection scope."""
        if scope["type"] != "http" or scope.get("method") not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        length = declared_length(scope)
        if length == -1:
            error = RequestError.single("content-length", "is not a number")
            await send_error(send, error, close=True)
        elif length is not None and length > self.max_bytes:
            await send_error(send, self._too_large(length), close=length > self._drainable)
        elif length is not None:
            await self.app(scope, receive, send)
        else:
            await self._read_chunked(scope, receive, send)

    @property
    def _drainable(self) -> int:
        return self.max_bytes * DRAIN_FACTOR

    async def _read_chunked(self, scope: Scope, receive: Receive, send: Send) -> None:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, _replay([message], receive), send)
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await send_error(send, self._too_large(size, at_least=True))
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body_message = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        await self.app(scope, _replay([body_message], receive), send)

    def _too_large(self, size: int, at_least: bool = False) -> RequestError:
        prefix = "more than " if at_least else ""
        return RequestError.single(
            "body", f"is {prefix}{size} bytes; at most {self.max_bytes} are accepted", status=413
        )


def declared_length(scope: Scope) -> int | None:
    """The request's ``Content-Length``: None when absent, -1 when it is not a number."""
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            return int(value) if value.isdigit() else -1
    return None


class UnexpectedErrorMiddleware:
    """ASGI middleware turning an unexpected exception into a JSON 500 with ``Connection: close``.

    Logged once, with its traceback, and not re-raised, so neither Starlette nor uvicorn logs it
    again and uvicorn does not drop the connection under a keep-alive client. When the response
    had already started, the exception is re-raised for uvicorn to log and close the connection.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection scope."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            if started:
                raise
            if _is_client_disconnect(exc):
                log.info("client disconnected before its request was read")
                return
            log.error(
                "unexpected error answering %s %s",
                scope.get("method"),
                safe_text(str(scope.get("path", "")), 200),
                exc_info=exc,
            )
            await send_error(send, internal_error(), close=True)


def _is_client_disconnect(exc: Exception) -> bool:
    from starlette.requests import ClientDisconnect

    return isinstance(exc, ClientDisconnect)


def _replay(messages: list[Message], receive: Receive) -> Receive:
    pending = list(messages)

    async def replayed() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replayed


async def send_error(send: Send, error: RequestError, close: bool = False) -> None:
    """Send ``error`` as a complete JSON response on an ASGI ``send``; counted."""
    count_error_answer(error.status)
    body = error_bytes(error)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# ------------------------------------------------------------------------------ handlers
def _http_exception_error(request: Any, exc: Any) -> RequestError:
    status = exc.status_code
    method = safe_text(request.method, 16)
    path = safe_text(request.url.path, 80)
    if status == 404:
        return RequestError.single("path", f"no such endpoint: {method} {path}", 404)
    if status == 405:
        allowed = (exc.headers or {}).get("allow", "")
        return RequestError.single("method", f"{method} is not allowed; use {allowed}", 405)
    field = "body" if status in (400, 413, 422) else "request"
    return RequestError.single(field, str(exc.detail), status if 400 <= status < 500 else 400)


def _make_handlers() -> dict[Any, Callable[..., Awaitable[Any]]]:
    """Exception class → handler, for every error a request can raise."""
    from fastapi.exceptions import RequestValidationError
    from kserve.errors import (
        InferenceError,
        InvalidInput,
        ModelNotFound,
        ModelNotReady,
        NoModelReady,
        ServerNotLive,
        ServerNotReady,
        UnsupportedProtocol,
    )
    from starlette.exceptions import HTTPException

    async def request_error(_request: Any, exc: Exception) -> Any:
        assert isinstance(exc, RequestError)
        log.info("refused request: %s", safe_text(str(exc), 300))
        return error_response(exc)

    async def validation_error(_request: Any, exc: Exception) -> Any:
        error = RequestError(validation_problems(exc.errors()))  # type: ignore[attr-defined]
        log.info("refused request: %s", safe_text(str(error), 300))
        return error_response(error)

    async def http_error(request: Any, exc: Exception) -> Any:
        return error_response(
            _http_exception_error(request, exc),
            headers=getattr(exc, "headers", None),
        )

    async def invalid_input(_request: Any, exc: Exception) -> Any:
        log.info("refused request: %s", safe_text(str(exc), 300))
        return error_response(RequestError.single("body", str(exc)))

    async def model_not_found(_request: Any, exc: Exception) -> Any:
        return error_response(RequestError.single("model", str(exc), status=404))

    async def not_served(request: Any, exc: Exception) -> Any:
        reason = f"is not served here ({exc})" if str(exc) else "is not served here"
        return error_response(RequestError.single("path", reason, status=404))

    async def unsupported_protocol(_request: Any, exc: Exception) -> Any:
        return error_response(RequestError.single("protocol", str(exc)))

    async def unavailable(_request: Any, exc: Exception) -> Any:
        log.warning("unavailable: %s", exc)
        field = "predictor" if isinstance(exc, PredictorUnavailableError) else "model"
        error = RequestError.single(field, f"is unavailable, retry later: {exc}", status=503)
        return error_response(error, headers={"retry-after": "1"})

    async def server_error(_request: Any, exc: Exception) -> Any:
        log.error("server error: %s", exc, exc_info=exc)
        return error_response(internal_error(), close=True)

    async def escaped_error(_request: Any, _exc: Exception) -> Any:
        # Only reached once UnexpectedErrorMiddleware re-raised (the response had started) or
        # from outside it; uvicorn logs the exception itself, so it is not logged here.
        return error_response(internal_error(), close=True)

    return {
        RequestError: request_error,
        RequestValidationError: validation_error,
        HTTPException: http_error,
        InvalidInput: invalid_input,
        ModelNotFound: model_not_found,
        NotImplementedError: not_served,
        UnsupportedProtocol: unsupported_protocol,
        PredictorUnavailableError: unavailable,
        ModelNotReady: unavailable,
        NoModelReady: unavailable,
        ServerNotReady: unavailable,
        ServerNotLive: unavailable,
        InferenceError: server_error,
        Exception: escaped_error,
    }


def install_handlers(app: Any, max_body_bytes: int) -> None:
    """Add the JSON error handlers and middlewares to a FastAPI app.

    Call it after KServe has added its own handlers: these replace them.
    """
    for exception_class, handler in _make_handlers().items():
        app.add_exception_handler(exception_class, handler)
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_body_bytes)
    app.add_middleware(UnexpectedErrorMiddleware)


def _json_error_protocol_class() -> type:
    """uvicorn's HTTP protocol, answering a request it cannot parse with the JSON error."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    class JSONErrorHTTPProtocol(AutoHTTPProtocol):  # type: ignore[misc, valid-type]
        """Answers unparseable HTTP (bad ``Content-Length``, bad framing) with the JSON error."""

        def send_400_response(self, msg: str) -> None:
            """Write a JSON 400 and close the connection."""
            reason = f"is not valid HTTP/1.1 ({msg.rstrip('.')})"
            error = RequestError.single("request", reason)
            count_error_answer(error.status)
            body = error_bytes(error)
            head = [b"HTTP/1.1 400 Bad Request\r\n"]
            for name, value in self.server_state.default_headers:
                head.append(name + b": " + value + b"\r\n")
            head.append(b"content-type: application/json\r\n")
            head.append(b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body))
            self.transport.write(b"".join(head) + body)
            self.transport.close()

    return JSONErrorHTTPProtocol


#: KServe's model-repository endpoints, which the servers do not expose.
REPOSITORY_PATH = "/v2/repository/models/{model_name}/{action}"


def _rest_server_class(bind_host: str, max_body_bytes: int) -> type:
    """KServe's REST server, bound to ``bind_host``, with this module's handling installed."""
    import kserve.model_server as kms

    class FraudRESTServer(kms.RESTServer):  # type: ignore[misc, name-defined]
        """The stock REST server with the bind address, the JSON errors and the body limit."""

        def __init__(self, *positional: Any, **keywords: Any) -> None:
            super().__init__(*positional, **keywords)
            self.config.host = bind_host
            self.config.http = _json_error_protocol_class()

        def _add_exception_handlers(self, app: Any) -> None:
            super()._add_exception_handlers(app)
            install_handlers(app, max_body_bytes)

        def configure(self, app: Any) -> None:
            """Add KServe's middlewares, endpoints and handlers, then this module's, to ``app``.

            KServe's model-repository endpoints (``/v2/repository/models/{name}/load`` and
            ``/unload``) are left out: anyone who reaches a server could unload its model, and
            these servers load their bundle themselves.
            """
            from starlette.exceptions import HTTPException
            from starlette.routing import Route

            async def not_exposed(_request: Any) -> None:
                raise HTTPException(status_code=404)

            self._add_middlewares(app)
            # Matched before KServe's own routes, which come after it.
            app.router.routes.insert(0, Route(REPOSITORY_PATH, not_exposed, methods=["POST"]))
            self._register_endpoints(app)
            self._add_exception_handlers(app)

        def create_application(self) -> None:
            """Configure the application uvicorn serves (KServe's, named by import string)."""
            from uvicorn.importer import import_from_string

            self.configure(import_from_string(self.config.app))

        async def start(self) -> None:
            """Serve until uvicorn stops, then close what the models hold on the event loop.

            The models are those registered at start: KServe unregisters them at stop.
            """
            models = list(self.dataplane.model_registry.get_models().values())
            try:
                await super().start()
            finally:
                await close_models(models)

    return FraudRESTServer


async def close_models(models: Iterable[Any]) -> None:
    """Await ``aclose()`` of every model that has one (connection pools bound to the loop).

    A failure is logged with the model's name; the other models are still closed.
    """
    for model in models:
        close = getattr(model, "aclose", None)
        if close is None:
            continue
        try:
            await close()
        except Exception:
            log.exception("closing the connections of model %s failed", model.name)


def build_app(models: Sequence[Any], max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> Any:
    """A FastAPI app serving loaded ``models`` exactly as the servers do, without a socket."""
    from fastapi import FastAPI
    from fastapi.responses import ORJSONResponse
    from kserve.model_repository import ModelRepository
    from kserve.protocol.model_repository_extension import ModelRepositoryExtension

    registry = ModelRepository()
    for model in models:
        registry.update(model)
    server = _rest_server_class("127.0.0.1", max_body_bytes)(
        "fraud_detection.serving.app:build_app",
        make_dataplane(registry),
        ModelRepositoryExtension(model_registry=registry),
        0,
    )
    app = FastAPI(docs_url=None, redoc_url=None, default_response_class=ORJSONResponse)
    server.configure(app)
    return app


# ------------------------------------------------------------------------------ server start
def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments both servers add to KServe's standard ones."""
    parser.add_argument(
        "--bind_host",
        default="0.0.0.0",
        help="Address the HTTP server binds (127.0.0.1 for loopback only).",
    )
    parser.add_argument(
        "--max_body_bytes",
        type=positive_int,
        default=DEFAULT_MAX_BODY_BYTES,
        help="Largest request body accepted, in bytes; larger ones get 413.",
    )
    parser.add_argument(
        "--access_log",
        type=strtobool,
        default=True,
        help="Log per-request lines (uvicorn access log, KServe request timings).",
    )
    parser.add_argument(
        "--log_format",
        choices=LOG_FORMATS,
        default="text",
        help="text: one line per record (UTC time, pid, level, logger, message); "
        "json: one JSON object per line (time, level, logger, pid, message, exception).",
    )


def positive_int(value: str) -> int:
    """Parse a whole number of at least 1 (a command-line limit)."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def strtobool(value: str) -> bool:
    """Parse a boolean command-line value (true/false, yes/no, 1/0, on/off)."""
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "y", "on"):
        return True
    if lowered in ("0", "false", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {value!r}")


def run_model_server(
    models: list[Any], args: argparse.Namespace, predictor_config: Any = None
) -> None:
    """Start a ``kserve.ModelServer`` for ``models`` from parsed standard arguments; blocks.

    Swaps in :class:`FraudDataPlane` and a REST server that binds ``args.bind_host`` and
    installs this module's error handling and body limit.
    """
    import kserve.model_server as kms
    from kserve import ModelServer

    # ModelServer.start builds its REST server from this module attribute.
    kms.RESTServer = _rest_server_class(args.bind_host, args.max_body_bytes)  # type: ignore[misc]
    server = ModelServer(
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        workers=1,
        max_threads=args.max_threads,
        max_asyncio_workers=args.max_asyncio_workers,
        enable_grpc=args.enable_grpc,
        enable_docs_url=args.enable_docs_url,
        enable_latency_logging=args.enable_latency_logging,
        access_log_format=args.access_log_format,
        event_loop=args.event_loop,
        timeout_keep_alive=args.timeout_keep_alive,
        predictor_config=predictor_config,
    )
    server.dataplane = make_dataplane(server.registered_models)
    if not args.access_log:
        # Three log lines per request cost more than scoring a transaction does.
        logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
        logging.getLogger(TRACE_LOGGER).setLevel(logging.WARNING)
    try:
        server.start(models)
    finally:
        # uvicorn handles SIGTERM by returning from serve(); stop the models here so the
        # transformer's mirror is flushed and the reload watchers end.
        for model in models:
            if model.ready:
                model.stop()


def add_bundle_source_arguments(parser: argparse.ArgumentParser) -> None:
    """``--model_dir`` or ``--registry`` (one of them), and ``--reload_interval``."""
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model_dir", type=Path, help="The bundle directory to serve.")
    source.add_argument(
        "--registry",
        type=Path,
        help="Serve the model registry's current bundle and follow it "
        "(default $FRAUD_REGISTRY or ./registry).",
    )
    parser.add_argument(
        "--reload_interval",
        type=float,
        default=2.0,
        help="Seconds between checks of the registry's current model.",
    )


def source_from_args(args: argparse.Namespace) -> BundleSource:
    """The bundle source: --model_dir, --registry, or the default registry."""
    from fraud_detection.registry import default_registry_root

    if args.model_dir is not None:
        return BundleSource(model_dir=args.model_dir)
    return BundleSource(registry_root=args.registry or default_registry_root())


# ------------------------------------------------------------------------------ logging
#: ``--log_format`` values: one text line per record, or one JSON object per line.
LOG_FORMATS: tuple[str, ...] = ("text", "json")
#: The text format of every record: UTC time, process id, level, logger, message.
TEXT_LOG_FORMAT = "%(asctime)s.%(msecs)03dZ %(process)d %(levelname)s %(name)s: %(message)s"
LOG_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S"
#: Loggers that KServe configures with their own handlers (not propagating to the root).
KSERVE_LOGGERS: tuple[str, ...] = ("kserve", "kserve.trace", "uvicorn", "uvicorn.access")


class JSONLogFormatter(logging.Formatter):
    """One JSON object per record: ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``pid``,
    ``message``, and ``exception`` (the formatted traceback) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON (non-ASCII escaped, so any text is encodable)."""
        moment = time.gmtime(record.created)
        entry: dict[str, Any] = {
            "time": time.strftime(LOG_TIME_FORMAT, moment) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry)


def log_formatter(log_format: str) -> logging.Formatter:
    """The formatter of a ``--log_format`` (:data:`LOG_FORMATS`)."""
    if log_format == "json":
        return JSONLogFormatter()
    if log_format != "text":
        raise ValueError(f"log format must be one of {LOG_FORMATS}, got {log_format!r}")
    formatter = logging.Formatter(TEXT_LOG_FORMAT, LOG_TIME_FORMAT)
    formatter.converter = time.gmtime
    return formatter


def install_log_handler(log_format: str, levels: Mapping[str, int]) -> logging.Handler:
    """Write the records of the root logger and of KServe's loggers to stderr in ``log_format``.

    ``levels`` sets logger levels (``""``: the root). Other loggers propagate to the root, so
    every record of the process, warnings included, has the one format.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(log_formatter(log_format))
    for name in ("", *KSERVE_LOGGERS):
        logger = logging.getLogger(name)
        logger.handlers = [handler]
        logger.propagate = not name
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    logging.captureWarnings(True)
    return handler


def ignore_known_warnings() -> None:
    """Filter the deprecation warnings the servers' dependencies emit on every request.

    KServe 0.20 answers with FastAPI's ``ORJSONResponse``, which FastAPI deprecates
    (``FastAPIDeprecationWarning``, attributed to ``fastapi.routing``); nothing to act on here.
    """
    from fastapi.exceptions import FastAPIDeprecationWarning

    warnings.filterwarnings(
        "ignore",
        message="ORJSONResponse is deprecated",
        category=FastAPIDeprecationWarning,
        module=r"fastapi\.routing",
    )


def configure_logging(args: argparse.Namespace) -> None:
    """Log every record of the server process in one format (``--log_format``) to stderr.

    The project's and KServe's messages at INFO and up, uvicorn's, the access log (when
    ``--access_log``), and WARNING and up of everything else, warnings included; the known
    deprecation warnings of the dependencies are filtered. KServe's ``--configure_logging false``
    leaves logging to the caller; a ``--log_config_file`` replaces this configuration.
    """
    from kserve.logging import configure_logging as configure_kserve_logging

    ignore_known_warnings()
    if not getattr(args, "configure_logging", True):
        return
    if getattr(args, "log_config_file", None):
        configure_kserve_logging(args.log_config_file)
        return
    from kserve.constants.constants import KSERVE_LOGLEVEL

    levels = {"": logging.WARNING, "fraud_detection": logging.INFO, "uvicorn": logging.INFO}
    levels.update({name: KSERVE_LOGLEVEL for name in ("kserve", "kserve.trace")})
    install_log_handler(getattr(args, "log_format", "text"), levels)


def serve_model(model: Any, args: argparse.Namespace, role: str) -> int:
    """Load ``model`` (exit 2 on a bad bundle), reload it on SIGHUP, serve until SIGTERM/SIGINT."""
    configure_logging(args)
    try:
        model.load()
    except BundleError as exc:
        log.error("%s refuses to start: %s", role, exc)
        return 2
    signal.signal(signal.SIGHUP, lambda *_: model.request_reload())
    run_model_server([model], args)
    return 0
