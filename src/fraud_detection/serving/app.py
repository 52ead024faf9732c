"""Running a KServe ``ModelServer`` the way this project's servers need it.

Both servers (predictor and transformer) are plain ``kserve.ModelServer`` processes; this module
adds what the stock server lacks:

* :class:`FraudDataPlane` — request decoding that never turns a malformed request into a 5xx:
  a non-JSON content type is refused with 415 (the stock transformer passes the raw bytes on and
  fails with a ``TypeError``), ``application/json; charset=utf-8`` is accepted, and a body that
  orjson refuses only because it contains ``NaN``/``Infinity`` is decoded so the validator can
  name the offending field.
* :class:`BodyLimitMiddleware` — 413 for a body over the limit, before it is read whole.
* JSON error handlers for :class:`~fraud_detection.serving.requests.RequestError` (4xx naming
  the field and the reason) and :class:`PredictorUnavailableError` (503, retry later).
* :func:`run_model_server` — builds the server from the standard KServe arguments and can bind
  it to loopback (the stock REST server always binds ``0.0.0.0``).
* :func:`add_bundle_source_arguments`, :func:`source_from_args` and :func:`serve_model` — what
  both servers' entry points share: where the bundle comes from, refusing a bad one (exit 2),
  reloading on SIGHUP.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import orjson

from fraud_detection.bundle import BundleError
from fraud_detection.serving.model import BundleSource
from fraud_detection.serving.requests import DEFAULT_MAX_BODY_BYTES, RequestError

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

#: Media types decoded as JSON (KServe's list, matched without parameters such as charset).
JSON_MEDIA_TYPES = frozenset(
    {
        "application/json",
        "application/cloudevents+json",
        "application/ld+json",
        "application/octet-stream",
    }
)


#: KServe's per-request timing logger.
TRACE_LOGGER = "kserve.trace"


class PredictorUnavailableError(RuntimeError):
    """The predictor did not answer (down, refusing, timed out or failing): retry later."""


def media_type(headers: MutableMapping[str, str] | dict[str, str] | None) -> str | None:
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


def decode_json_body(body: bytes) -> Any:
    """Decode a JSON body; accepts ``NaN``/``Infinity`` so the validator can name the field.

    Raises:
        RequestError: 400 when the body is not JSON at all.
    """
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        first_error = exc
    try:
        # The standard library accepts the non-standard NaN and Infinity literals orjson refuses.
        return json.loads(body)
    except (ValueError, RecursionError):
        pass
    raise RequestError.single("body", f"is not valid JSON: {first_error}")


def make_dataplane(model_registry: Any) -> Any:
    """A :class:`FraudDataPlane` for ``model_registry`` (imports kserve)."""
    return _dataplane_class()(model_registry=model_registry)


def _dataplane_class() -> type:
    from cloudevents.sdk.converters.util import has_binary_headers
    from kserve.protocol.dataplane import DataPlane

    class FraudDataPlane(DataPlane):
        """KServe's data plane with strict content types and field-naming JSON errors."""

        def decode(  # type: ignore[override]
            self,
            body: Any,
            headers: dict[str, str] | None,
            protocol_version: str = "v1",
            model_name: str | None = None,
        ) -> tuple[Any, dict[str, Any]]:
            if (
                isinstance(body, bytes)
                and protocol_version.lower() == "v1"
                and not (headers and has_binary_headers(headers))
            ):
                kind = media_type(headers)
                if not is_json_media_type(kind):
                    raise RequestError.single(
                        "content-type",
                        f"must be application/json, got {headers.get('content-type')!r}"
                        if headers
                        else "must be application/json",
                        status=415,
                    )
                decoded = decode_json_body(body)
                return (
                    self.decode_cloudevent(decoded)
                    if isinstance(decoded, dict)
                    else (
                        decoded,
                        {},
                    )
                )
            return super().decode(body, headers, protocol_version, model_name)

    return FraudDataPlane


class BodyLimitMiddleware:
    """ASGI middleware answering 413 to a request body larger than ``max_bytes``.

    A declared ``Content-Length`` over the limit is refused before reading; a chunked body is
    read up to the limit and then replayed to the application.
    """

    def __init__(self, app: Callable[..., Awaitable[None]], max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection scope."""
        if scope["type"] != "http" or scope.get("method") not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        length = None
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    await _send_error(
                        send, RequestError.single("content-length", "is not a number")
                    )
                    return
                break
        if length is not None:
            if length > self.max_bytes:
                await _send_error(send, self._too_large(length))
                return
            await self.app(scope, receive, send)
            return
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
                await _send_error(send, self._too_large(size, at_least=True))
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


def _replay(messages: list[Message], receive: Receive) -> Receive:
    pending = list(messages)

    async def replayed() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replayed


async def _send_error(send: Send, error: RequestError) -> None:
    body = orjson.dumps(error.to_dict())
    await send(
        {
            "type": "http.response.start",
            "status": error.status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def install_handlers(app: Any, max_body_bytes: int) -> None:
    """Add the JSON error handlers and the body-size limit to a FastAPI app."""
    from fastapi.responses import ORJSONResponse

    async def request_error_handler(_request: Any, exc: Exception) -> Any:
        assert isinstance(exc, RequestError)
        log.info("refused request: %s", exc)
        return ORJSONResponse(status_code=exc.status, content=exc.to_dict())

    async def predictor_unavailable_handler(_request: Any, exc: Exception) -> Any:
        log.warning("predictor unavailable: %s", exc)
        return ORJSONResponse(
            status_code=503,
            content={"error": f"predictor unavailable: {exc}", "reason": str(exc)},
            headers={"retry-after": "1"},
        )

    app.add_exception_handler(RequestError, request_error_handler)
    app.add_exception_handler(PredictorUnavailableError, predictor_unavailable_handler)
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_body_bytes)


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments both servers add to KServe's standard ones."""
    parser.add_argument(
        "--bind_host",
        default="0.0.0.0",
        help="Address the HTTP server binds (127.0.0.1 for loopback only).",
    )
    parser.add_argument(
        "--max_body_bytes",
        type=int,
        default=DEFAULT_MAX_BODY_BYTES,
        help="Largest request body accepted; larger ones get 413.",
    )
    parser.add_argument(
        "--access_log",
        type=strtobool,
        default=True,
        help="Log per-request lines (uvicorn access log, KServe request timings).",
    )


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

    Swaps in :class:`FraudDataPlane`, installs the handlers, binds ``args.bind_host``.
    """
    import kserve.model_server as kms
    from kserve import ModelServer

    class _RESTServer(kms.RESTServer):  # type: ignore[misc, name-defined]
        def __init__(self, *positional: Any, **keywords: Any) -> None:
            super().__init__(*positional, **keywords)
            self.config.host = args.bind_host

    # The stock REST server hard-codes 0.0.0.0; this subclass only changes the bind address.
    kms.RESTServer = _RESTServer  # type: ignore[attr-defined, misc]
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
    install_handlers(kms.app, args.max_body_bytes)
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


def serve_model(model: Any, args: argparse.Namespace, role: str) -> int:
    """Load ``model`` (exit 2 on a bad bundle), reload it on SIGHUP, serve until SIGTERM/SIGINT."""
    try:
        model.load()
    except BundleError as exc:
        print(f"error: {role} refuses to start: {exc}", file=sys.stderr, flush=True)
        return 2
    signal.signal(signal.SIGHUP, lambda *_: model.request_reload())
    run_model_server([model], args)
    return 0
