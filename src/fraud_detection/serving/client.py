"""The transformer's connection to the predictor: a keep-alive pool with a short deadline.

KServe's own transformer client (httpx, 600 s default timeout) is replaced by an aiohttp
session: connections are reused across requests, every call has a deadline of a fraction of a
second, and a predictor that is down, refusing or slow becomes a
:class:`~fraud_detection.serving.app.PredictorUnavailableError` (the transformer answers 503)
instead of a hung request. A keep-alive connection the predictor closed meanwhile (it restarted)
is retried once on a fresh connection, so the transformer recovers by itself.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import orjson

from fraud_detection.serving.app import PredictorUnavailableError

V1 = "v1"
V2 = "v2"
PROTOCOLS = (V1, V2)


class PredictorClient:
    """Scores feature rows on a remote predictor (KServe v1 or v2 REST protocol).

    Args:
        host: ``host:port`` of the predictor (KServe's ``--predictor_host``).
        model_name: the model name on the predictor.
        protocol: ``"v1"`` or ``"v2"``.
        timeout_s: deadline of one call, connection included.
        use_ssl: https instead of http.
        pool_size: most connections kept open to the predictor.
    """

    def __init__(
        self,
        host: str,
        model_name: str,
        protocol: str = V1,
        timeout_s: float = 0.5,
        use_ssl: bool = False,
        pool_size: int = 64,
    ) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
        scheme = "https" if use_ssl else "http"
        base = host if "://" in host else f"{scheme}://{host}"
        self.protocol = protocol
        self.model_name = model_name
        self.url = (
            f"{base}/v1/models/{model_name}:predict"
            if protocol == V1
            else f"{base}/v2/models/{model_name}/infer"
        )
        self.timeout_s = timeout_s
        self.pool_size = pool_size
        self._session: Any = None
        self._timeout: Any = None

    def _ensure_session(self) -> Any:
        if self._session is None or self._session.closed:
            import aiohttp

            connector = aiohttp.TCPConnector(
                limit=self.pool_size, keepalive_timeout=30, enable_cleanup_closed=True
            )
            self._timeout = aiohttp.ClientTimeout(total=self.timeout_s)
            self._session = aiohttp.ClientSession(
                connector=connector,
                headers={"content-type": "application/json"},
                json_serialize=lambda value: orjson.dumps(value).decode(),
                skip_auto_headers=("User-Agent",),
            )
        return self._session

    def encode(self, rows: Sequence[Sequence[float]]) -> bytes:
        """The request body for ``rows``."""
        if self.protocol == V1:
            return orjson.dumps({"instances": rows})
        flat = [value for row in rows for value in row]
        width = len(rows[0]) if rows else 0
        return orjson.dumps(
            {
                "inputs": [
                    {
                        "name": "features",
                        "shape": [len(rows), width],
                        "datatype": "FP32",
                        "data": flat,
                    }
                ]
            }
        )

    def decode(self, body: bytes, expected: int) -> tuple[list[float], str | None]:
        """Probabilities and the model version from a predictor response body."""
        try:
            answer = orjson.loads(body)
            if self.protocol == V1:
                probabilities = [float(p) for p in answer["predictions"]]
            else:
                probabilities = [float(p) for p in answer["outputs"][0]["data"]]
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, ValueError) as exc:
            raise PredictorUnavailableError(
                f"unreadable predictor response ({exc})", "bad_response"
            ) from exc
        if len(probabilities) != expected:
            raise PredictorUnavailableError(
                f"predictor returned {len(probabilities)} probabilities for {expected} rows",
                "bad_response",
            )
        version = answer.get("model_version")
        return probabilities, str(version) if version is not None else None

    async def score(
        self, rows: Sequence[Sequence[float]], headers: dict[str, str] | None = None
    ) -> tuple[list[float], str | None]:
        """Fraud probabilities for ``rows`` and the version of the model that scored them.

        Raises:
            PredictorUnavailableError: refused, timed out, closed, or not a 200 answer.
        """
        import aiohttp

        session = self._ensure_session()
        body = self.encode(rows)
        deadline = time.monotonic() + self.timeout_s
        for attempt in (1, 2):
            try:
                async with session.post(
                    self.url, data=body, headers=headers, timeout=self._timeout
                ) as response:
                    payload = await response.read()
                    if response.status != 200:
                        detail = payload[:200].decode(errors="replace")
                        raise PredictorUnavailableError(
                            f"predictor answered {response.status}: {detail}", "error_status"
                        )
                    return self.decode(payload, len(rows))
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                # A pooled connection the predictor closed (e.g. it restarted): retry once.
                if attempt == 1 and time.monotonic() < deadline:
                    continue
                raise PredictorUnavailableError(
                    f"{type(exc).__name__}: {exc}", "connection"
                ) from exc
            except TimeoutError as exc:
                raise PredictorUnavailableError(
                    f"no answer from {self.url} within {self.timeout_s:g} s", "timeout"
                ) from exc
            except aiohttp.ClientError as exc:
                raise PredictorUnavailableError(
                    f"{type(exc).__name__}: {exc}", "connection"
                ) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    async def close(self) -> None:
        """Close the pool (on the event loop that used it; the server does it at stop)."""
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None


__all__ = ["PROTOCOLS", "V1", "V2", "PredictorClient"]
