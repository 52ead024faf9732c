"""Where window results go: a JSON-lines file and a Kafka topic, each written durably.

:meth:`ResultSink.write` returns only once the results are durable (the file synced to disk,
the topic's records acknowledged by the broker), because the monitor commits a window's offsets
right after: a crash at any moment then loses no result, and writes a result twice at worst (the
same ``window_id``, the same content).

A sink takes any :class:`SinkResult`: the drift monitor's
:class:`~fraud_detection.monitoring.results.WindowResult` and the performance monitor's
:class:`~fraud_detection.monitoring.performance.PerformanceResult`. Monitors running in threads
of one process share sinks through :class:`LockedSink`.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)

#: The results topic's default name, and the variable that renames it.
DEFAULT_RESULTS_TOPIC = "fraud-monitoring"
ENV_TOPIC_MONITORING = "FRAUD_KAFKA_TOPIC_MONITORING"
#: The CloudEvents attributes of a result record.
RESULT_CE_TYPE = "org.fraud-detection.monitoring.feature-drift"
RESULT_CE_SOURCE = "urn:fraud-detection:drift-monitor"
PERFORMANCE_CE_TYPE = "org.fraud-detection.monitoring.performance"
PERFORMANCE_CE_SOURCE = "urn:fraud-detection:performance-monitor"
#: ``(ce_type, ce_source)`` of each result kind.
CE_ATTRIBUTES: dict[str, tuple[str, str]] = {
    "feature_drift": (RESULT_CE_TYPE, RESULT_CE_SOURCE),
    "performance": (PERFORMANCE_CE_TYPE, PERFORMANCE_CE_SOURCE),
}


class SinkError(RuntimeError):
    """Results could not be written durably."""


class SinkResult(Protocol):
    """What a sink writes: one result with a stable id."""

    @property
    def kind(self) -> str:
        """The result's kind (``feature_drift``, ``performance``)."""
        ...

    @property
    def window_id(self) -> str:
        """The stable id of the window (a result written twice has the same id)."""
        ...

    @property
    def model_version(self) -> str:
        """The model version the result is about."""
        ...

    @property
    def end(self) -> str:
        """The window's end, ISO-8601 UTC."""
        ...

    def to_json(self) -> bytes:
        """The result's JSON object."""
        ...


class ResultSink(Protocol):
    """A destination of window results."""

    def write(self, results: Sequence[SinkResult]) -> None:
        """Write ``results``; return once they are durable (raise :class:`SinkError` if not)."""
        ...

    def close(self) -> None:
        """Release what the sink holds."""
        ...


def results_topic(environ: dict[str, str] | None = None) -> str:
    """``$FRAUD_KAFKA_TOPIC_MONITORING``, else :data:`DEFAULT_RESULTS_TOPIC`."""
    env = os.environ if environ is None else environ
    return env.get(ENV_TOPIC_MONITORING) or DEFAULT_RESULTS_TOPIC


class JsonLinesSink:
    """Appends one JSON object per line and syncs the file before returning.

    A line cut short by a crash (the file does not end with a newline) is removed when the sink
    opens the file: its window was not committed, so it is written again, whole.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._repair()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def _repair(self) -> None:
        if not self.path.is_file():
            return
        with self.path.open("rb+") as handle:
            size = handle.seek(0, os.SEEK_END)
            if size == 0:
                return
            handle.seek(size - 1)
            if handle.read(1) == b"\n":
                return
            keep = 0
            chunk_end = size
            while chunk_end > 0:  # find the last newline, reading backwards
                chunk_start = max(chunk_end - (1 << 16), 0)
                handle.seek(chunk_start)
                chunk = handle.read(chunk_end - chunk_start)
                newline = chunk.rfind(b"\n")
                if newline >= 0:
                    keep = chunk_start + newline + 1
                    break
                chunk_end = chunk_start
            handle.truncate(keep)
        log.warning("%s: removed %d bytes of a line cut short by a crash", self.path, size - keep)

    def write(self, results: Sequence[SinkResult]) -> None:
        """Append the results as lines and fsync the file."""
        data = memoryview(b"".join(result.to_json() + b"\n" for result in results))
        try:
            while data:
                written = os.write(self._fd, data)
                data = data[written:]
            os.fsync(self._fd)
        except OSError as exc:
            raise SinkError(f"{self.path}: could not write results ({exc})") from exc

    def close(self) -> None:
        """Close the file."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _identity(data: Any) -> Any:
    return data


class TopicSink:
    """Produces each result to a Kafka topic and waits for the broker's acknowledgement.

    The record is a binary-mode CloudEvent (written with the CloudEvents SDK): ``ce_id`` is the
    window id (a result written twice has the same id), ``ce_type`` :data:`RESULT_CE_TYPE`
    (:data:`PERFORMANCE_CE_TYPE` for a performance result; see :data:`CE_ATTRIBUTES`),
    ``ce_subject`` the model version, ``ce_time`` the latest transaction time of the window;
    the key is the window id (a compacted topic keeps one result per window); the value is the
    result's JSON.
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        timeout_s: float = 30.0,
    ) -> None:
        from fraud_detection.streaming.kafka import make_producer

        self.topic = topic
        self.timeout_s = timeout_s
        self._producer = make_producer(
            bootstrap,
            client_id="fraud-detection-drift-monitor",
            acks="all",
            enable_idempotence=False,
            request_timeout_ms=int(min(timeout_s, 30.0) * 1000),
            max_block_ms=int(timeout_s * 1000),
        )

    def write(self, results: Sequence[SinkResult]) -> None:
        """Produce the results and wait until the broker acknowledged every one."""
        from cloudevents.http import CloudEvent
        from cloudevents.kafka import to_binary

        futures = []
        try:
            for result in results:
                ce_type, ce_source = CE_ATTRIBUTES.get(
                    result.kind, (RESULT_CE_TYPE, RESULT_CE_SOURCE)
                )
                event = CloudEvent(
                    {
                        "type": ce_type,
                        "source": ce_source,
                        "id": result.window_id,
                        "subject": result.model_version,
                        "time": result.end,
                        "datacontenttype": "application/json",
                    },
                    result.to_json(),
                )
                message = to_binary(event, data_marshaller=_identity)
                futures.append(
                    self._producer.send(
                        self.topic,
                        key=result.window_id.encode(),
                        value=message.value,
                        headers=list(message.headers.items()),
                    )
                )
            self._producer.flush(timeout=self.timeout_s)
            for future in futures:
                future.get(timeout=self.timeout_s)
        except Exception as exc:
            raise SinkError(
                f"topic {self.topic!r}: results not acknowledged ({type(exc).__name__}: {exc})"
            ) from exc

    def close(self) -> None:
        """Deliver what is pending and close the producer."""
        try:
            self._producer.close(timeout=self.timeout_s)
        except Exception as exc:  # best effort at shutdown: every result was acknowledged
            log.warning("closing the results producer: %s", exc)


class LockedSink:
    """A sink shared by monitors in threads of one process: writes one at a time, and leaves the
    closing to its owner (:meth:`close` does nothing; close the inner sink when every monitor
    has stopped)."""

    def __init__(self, inner: ResultSink, lock: threading.Lock | None = None) -> None:
        self.inner = inner
        self.lock = lock if lock is not None else threading.Lock()

    def write(self, results: Sequence[SinkResult]) -> None:
        """Write through the inner sink, holding the lock."""
        with self.lock:
            self.inner.write(results)

    def close(self) -> None:
        """Nothing: the owner closes the inner sink."""
