"""Closed-loop HTTP load for the serving benchmarks: the one load generator every setup uses.

A :class:`ClientPool` keeps ``N`` worker processes (``multiprocessing``, spawn). For one
measurement, :meth:`ClientPool.run` asks ``k`` of them to each:

1. build its requests before any timing: the complete HTTP/1.1 request bytes (head and body)
   of every request it may send, each with a transaction id no other request of the server's
   lifetime carries (:class:`Workload`);
2. open one keep-alive TCP connection and send its warm-up requests;
3. wait for the common start time, then send its requests one after another, each as soon as
   the previous answer arrived (a closed loop), until a request count or a deadline;
4. report every latency, the answers that were not ``200`` with the expected content, and the
   CPU time it used while timing.

``k = 1`` with a request count is the latency a caller sees; ``k`` clients for a duration is the
throughput at saturation (``k`` requests in flight). The client is a minimal HTTP/1.1
implementation over a blocking socket: it sends pre-built bytes and parses only the status line,
``Content-Length`` or chunked framing, and ``Connection: close``. On a loopback connection it
costs about a twentieth of the CPU per request that ``httpx`` does, and a fifth of
``http.client``'s, which matters when clients and servers share a few cores; every result
carries the clients' CPU share so that can be checked.

Every time is read from ``time.monotonic`` (``CLOCK_MONOTONIC``, one clock for all processes of
the machine), so the workers share the start time and the deadline.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import socket
import time
import traceback
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from typing import Any

#: Placeholders in a body template, replaced per request (JSON-safe, so they survive encoding).
ID_MARK = b"@@ID@@"
TIME_MARK = b"@@TS@@"
#: The most requests a single client is assumed able to send per second: how many requests a
#: timed run pre-builds per client and second. A client that runs out reports it.
DEFAULT_MAX_RATE_PER_CLIENT = 5_000
#: Seconds between the last worker being ready and the common start.
START_DELAY_S = 0.05
#: Seconds a worker waits for an answer before it counts the request as failed.
SOCKET_TIMEOUT_S = 10.0


# ----------------------------------------------------------------------------- what is sent
@dataclass(frozen=True)
class Workload:
    """The request bodies of one setup, built from templates.

    Request ``i`` uses template ``i % len(templates)``. A template containing :data:`ID_MARK`
    gets the id ``f"{id_prefix}{i}"`` there, so every request index has its own id; one
    containing :data:`TIME_MARK` gets its timestamp shifted by ``period_s`` per pass over the
    templates, so a long run keeps moving forward in time instead of replaying the past.

    Attributes:
        path: the URL path requests are POSTed to.
        templates: JSON bodies with the placeholders.
        timestamps: per template, its transaction's time (POSIX seconds) when it has
            :data:`TIME_MARK`.
        period_s: how far the timestamps move per pass over the templates.
        id_prefix: the ids' prefix.
        expect: bytes every ``200`` answer must contain.
        echo_id: whether every answer must contain its request's id.
    """

    path: str
    templates: tuple[bytes, ...]
    timestamps: tuple[float, ...] = ()
    period_s: float = 0.0
    id_prefix: str = "tx-"
    expect: bytes = b""
    echo_id: bool = False

    def request_id(self, index: int) -> bytes | None:
        """The transaction id of request ``index``, or ``None`` when its template has none."""
        if ID_MARK not in self.templates[index % len(self.templates)]:
            return None
        return f"{self.id_prefix}{index}".encode()

    def body(self, index: int) -> bytes:
        """The JSON body of request ``index``."""
        position, cycle = index % len(self.templates), index // len(self.templates)
        body = self.templates[position]
        if ID_MARK in body:
            body = body.replace(ID_MARK, f"{self.id_prefix}{index}".encode())
        if TIME_MARK in body:
            moment = datetime.fromtimestamp(
                self.timestamps[position] + cycle * self.period_s, tz=UTC
            )
            body = body.replace(TIME_MARK, moment.isoformat().encode())
        return body


@dataclass(frozen=True)
class Target:
    """Where requests go: ``host:port``, the workload's path."""

    host: str
    port: int


# ----------------------------------------------------------------------------- the client
class KeepAliveClient:
    """One keep-alive HTTP/1.1 connection that sends pre-built requests and reads the answers."""

    def __init__(self, target: Target, path: str) -> None:
        self.target = target
        self._head = (
            f"POST {path} HTTP/1.1\r\nHost: {target.host}:{target.port}\r\n"
            "Content-Type: application/json\r\nContent-Length: "
        ).encode()
        self._sock: socket.socket | None = None
        self._buffer = b""

    def request(self, body: bytes) -> bytes:
        """The complete request bytes for ``body``."""
        return b"%s%d\r\n\r\n%s" % (self._head, len(body), body)

    def connect(self) -> None:
        """(Re)open the connection."""
        self.close()
        sock = socket.create_connection((self.target.host, self.target.port), SOCKET_TIMEOUT_S)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock
        self._buffer = b""

    def close(self) -> None:
        """Close the connection, if open."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def send(self, request: bytes) -> tuple[int, bytes]:
        """Send one pre-built request; the answer's status and body.

        Raises:
            OSError: the connection failed or the server closed it before answering (the
                connection is closed; the next call reconnects).
        """
        if self._sock is None:
            self.connect()
        try:
            assert self._sock is not None
            self._sock.sendall(request)
            status, body, close = self._read_response()
        except (OSError, ValueError) as exc:
            self.close()
            raise OSError(f"{type(exc).__name__}: {exc}") from exc
        if close:
            self.close()
        return status, body

    def _fill(self) -> None:
        assert self._sock is not None
        chunk = self._sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        self._buffer += chunk

    def _read_response(self) -> tuple[int, bytes, bool]:
        while (end := self._buffer.find(b"\r\n\r\n")) < 0:
            self._fill()
        head = self._buffer[:end].lower()
        self._buffer = self._buffer[end + 4 :]
        status = int(head[9:12])
        close = b"\r\nconnection: close" in head
        start = head.find(b"\r\ncontent-length:")
        if start >= 0:
            stop = head.find(b"\r\n", start + 2)
            length = int(head[start + 17 : stop if stop >= 0 else len(head)])
            while len(self._buffer) < length:
                self._fill()
            body, self._buffer = self._buffer[:length], self._buffer[length:]
            return status, body, close
        if b"\r\ntransfer-encoding: chunked" in head:
            return status, self._read_chunked(), close
        raise ValueError("an answer with neither Content-Length nor chunked framing")

    def _read_chunked(self) -> bytes:
        parts = []
        while True:
            while (end := self._buffer.find(b"\r\n")) < 0:
                self._fill()
            size = int(self._buffer[:end].split(b";")[0], 16)
            self._buffer = self._buffer[end + 2 :]
            while len(self._buffer) < size + 2:
                self._fill()
            parts.append(self._buffer[:size])
            self._buffer = self._buffer[size + 2 :]
            if size == 0:
                return b"".join(parts)


# ----------------------------------------------------------------------------- one worker
@dataclass(frozen=True)
class Job:
    """What one worker does for one measurement.

    It sends the requests of indices ``first, first + step, first + 2·step, ...``: the first
    ``warmup`` untimed, then ``requests`` of them, or as many as it can until ``duration_s``
    has passed, at most ``capacity``.
    """

    target: Target
    workload: Workload
    first: int
    step: int
    warmup: int
    capacity: int
    requests: int | None
    duration_s: float | None


@dataclass
class WorkerResult:
    """What one worker measured (latencies in seconds)."""

    latencies: array[float] = field(default_factory=lambda: array("d"))
    errors: int = 0
    warmup_errors: int = 0
    answered_ok: int = 0
    first_error: str | None = None
    used: int = 0
    exhausted: bool = False
    cpu_s: float = 0.0
    window_s: float = 0.0


def _check(workload: Workload, status: int, body: bytes, request_id: bytes | None) -> str | None:
    """Why an answer is wrong, or ``None`` when it is the expected one."""
    if status != 200:
        return f"status {status}: {body[:200].decode(errors='replace')}"
    if workload.expect and workload.expect not in body:
        return f"unexpected answer: {body[:200].decode(errors='replace')}"
    if workload.echo_id and request_id is not None and request_id not in body:
        return f"answer without the request's id {request_id.decode()}: {body[:200]!r}"
    return None


def _run_job(pipe: Connection, job: Job) -> WorkerResult:
    workload = job.workload
    client = KeepAliveClient(job.target, workload.path)
    indices = range(job.first, job.first + job.step * job.capacity, job.step)
    requests = [client.request(workload.body(i)) for i in indices]
    ids = [workload.request_id(i) if workload.echo_id else None for i in indices]
    result = WorkerResult()

    def one(position: int) -> float:
        """Send request ``position``; when its answer arrived."""
        try:
            status, body = client.send(requests[position])
            problem = _check(workload, status, body, ids[position])
        except OSError as exc:
            problem = str(exc)
        finished = time.monotonic()
        if problem is None:
            result.answered_ok += 1
        else:
            result.errors += 1
            result.first_error = result.first_error or problem
        return finished

    client.connect()
    for position in range(min(job.warmup, job.capacity)):
        one(position)
    result.warmup_errors, result.errors, result.first_error = result.errors, 0, None
    pipe.send(("ready", result.warmup_errors))
    start_at = pipe.recv()
    time.sleep(max(0.0, start_at - time.monotonic()))

    cpu_started = time.process_time()
    position = min(job.warmup, job.capacity)
    stop = job.capacity if job.requests is None else min(job.capacity, position + job.requests)
    deadline = math.inf if job.duration_s is None else start_at + job.duration_s
    latencies = result.latencies
    window_end = time.monotonic()
    while position < stop:
        started = time.monotonic()
        if started >= deadline:
            break
        finished = one(position)
        position += 1
        if finished > deadline:  # completed after the window: not counted
            break
        latencies.append(finished - started)
        window_end = finished
    else:
        result.exhausted = job.requests is None
    result.cpu_s = time.process_time() - cpu_started
    result.window_s = (deadline if job.duration_s is not None else window_end) - start_at
    result.used = position
    client.close()
    return result


def _worker_main(pipe: Connection) -> None:
    """A worker process: run jobs from ``pipe`` until ``None`` arrives."""
    while True:
        job = pipe.recv()
        if job is None:
            return
        try:
            pipe.send(("done", _run_job(pipe, job)))
        except Exception:
            pipe.send(("failed", traceback.format_exc()))


# ----------------------------------------------------------------------------- the pool
@dataclass(frozen=True)
class LoadResult:
    """One measurement: every client's requests together.

    Attributes:
        clients: concurrent clients (requests in flight).
        completed: requests answered within the window (errors included).
        errors: answers that were not ``200`` with the expected content, or failed requests.
        first_error: the first of them.
        window_s: the timed window (the duration, or until the last answer of a count).
        latencies_ms: every counted request's latency.
        client_cpu_s: CPU time the clients used within the window.
        server_cpu_s: CPU time the watched server processes used within the window.
        next_index: the first request index no request of this measurement used.
        answered_ok: expected answers of the whole run: warm-up, window, and the requests
            answered after the deadline (what the server scored).
        warmup_errors: failed warm-up requests.
    """

    clients: int
    completed: int
    errors: int
    first_error: str | None
    window_s: float
    latencies_ms: Sequence[float]
    client_cpu_s: float
    server_cpu_s: float
    next_index: int
    answered_ok: int = 0
    warmup_errors: int = 0

    @property
    def rps(self) -> float:
        """Requests answered per second."""
        return self.completed / self.window_s if self.window_s > 0 else float("nan")

    def percentile(self, q: float) -> float:
        """A latency percentile in milliseconds."""
        import numpy as np

        if not self.latencies_ms:
            return float("nan")
        return float(np.percentile(np.asarray(self.latencies_ms), q))

    def summary(self) -> dict[str, Any]:
        """The figures, for printing and the JSON result file."""
        return {
            "clients": self.clients,
            "requests": self.completed,
            "errors": self.errors,
            "first_error": self.first_error,
            "warmup_errors": self.warmup_errors,
            "window_s": round(self.window_s, 3),
            "rps": round(self.rps, 1),
            "p50_ms": round(self.percentile(50), 3),
            "p99_ms": round(self.percentile(99), 3),
            "mean_ms": round(sum(self.latencies_ms) / len(self.latencies_ms), 3)
            if self.latencies_ms
            else float("nan"),
            "max_ms": round(max(self.latencies_ms, default=float("nan")), 3),
            "client_cpu_cores": round(self.client_cpu_s / self.window_s, 3)
            if self.window_s > 0
            else float("nan"),
            "server_cpu_cores": round(self.server_cpu_s / self.window_s, 3)
            if self.window_s > 0
            else float("nan"),
            "server_cpu_ms_per_request": round(self.server_cpu_s * 1000 / self.completed, 3)
            if self.completed
            else float("nan"),
        }


class LoadError(RuntimeError):
    """A worker failed, or a run was invalid (a client ran out of pre-built requests)."""


class ProcessCpu:
    """Cumulative CPU seconds of some processes and all their descendants (psutil)."""

    def __init__(self, pids: Sequence[int]) -> None:
        import psutil

        self._psutil = psutil
        self.pids = list(pids)

    def __call__(self) -> float:
        """User plus system CPU seconds so far, of the processes alive now."""
        psutil = self._psutil
        total = 0.0
        for pid in self.pids:
            try:
                root = psutil.Process(pid)
                for process in [root, *root.children(recursive=True)]:
                    times = process.cpu_times()
                    total += times.user + times.system
            except psutil.Error:
                continue
        return total


class ClientPool:
    """Worker processes that generate load; a context manager.

    Args:
        processes: how many workers to start (the most clients one measurement can use).
        max_rate_per_client: requests per second a client is assumed able to send at most;
            timed runs pre-build this many requests per client and second.
    """

    def __init__(
        self, processes: int, max_rate_per_client: int = DEFAULT_MAX_RATE_PER_CLIENT
    ) -> None:
        if processes < 1:
            raise ValueError("a pool needs at least one process")
        self.processes = processes
        self.max_rate_per_client = max_rate_per_client
        self._workers: list[tuple[multiprocessing.process.BaseProcess, Connection]] = []

    def start(self) -> ClientPool:
        """Start the worker processes."""
        context = multiprocessing.get_context("spawn")
        for number in range(self.processes):
            parent, child = context.Pipe()
            process = context.Process(
                target=_worker_main, args=(child,), name=f"load-client-{number}", daemon=True
            )
            process.start()
            child.close()
            self._workers.append((process, parent))
        return self

    def close(self) -> None:
        """Stop the worker processes."""
        for _, pipe in self._workers:
            with contextlib.suppress(OSError):
                pipe.send(None)
        for process, pipe in self._workers:
            process.join(5.0)
            if process.is_alive():
                process.terminate()
                process.join(5.0)
            pipe.close()
        self._workers = []

    def __enter__(self) -> ClientPool:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(
        self,
        target: Target,
        workload: Workload,
        *,
        start_index: int,
        clients: int = 1,
        requests: int | None = None,
        duration_s: float | None = None,
        warmup: int = 0,
        server_cpu: ProcessCpu | None = None,
    ) -> LoadResult:
        """One closed-loop measurement with ``clients`` clients.

        Give ``requests`` (per client) or ``duration_s``. Request indices start at
        ``start_index``; the result's ``next_index`` is where the next measurement on the same
        server starts, so no id is sent twice.

        Raises:
            LoadError: a worker failed (the pool is then closed), or a client ran out of
                pre-built requests.
        """
        if (requests is None) == (duration_s is None):
            raise ValueError("give exactly one of requests and duration_s")
        if not 1 <= clients <= len(self._workers):
            raise ValueError(f"clients must be between 1 and {len(self._workers)}")
        try:
            return self._run(
                target, workload, start_index, clients, requests, duration_s, warmup, server_cpu
            )
        except (LoadError, OSError, EOFError):
            self.close()
            raise

    def _run(
        self,
        target: Target,
        workload: Workload,
        start_index: int,
        clients: int,
        requests: int | None,
        duration_s: float | None,
        warmup: int,
        server_cpu: ProcessCpu | None,
    ) -> LoadResult:
        if requests is not None:
            capacity = warmup + requests
        else:
            assert duration_s is not None
            capacity = warmup + math.ceil(duration_s * self.max_rate_per_client)
        workers = self._workers[:clients]
        for number, (_, pipe) in enumerate(workers):
            pipe.send(
                Job(
                    target,
                    workload,
                    start_index + number,
                    clients,
                    warmup,
                    capacity,
                    requests,
                    duration_s,
                )
            )
        ready = [pipe.recv() for _, pipe in workers]
        failed = [payload for kind, payload in ready if kind == "failed"]
        if failed:
            raise LoadError("a load client failed:\n" + "\n".join(failed))
        # Read before the start: the servers are idle, and the reading costs the window nothing.
        cpu_before = server_cpu() if server_cpu is not None else 0.0
        start_at = time.monotonic() + START_DELAY_S
        for _, pipe in workers:
            pipe.send(start_at)
        results: list[WorkerResult] = []
        failures: list[str] = []
        for _, pipe in workers:
            kind, payload = pipe.recv()
            if kind == "failed":
                failures.append(payload)
            else:
                results.append(payload)
        cpu_after = server_cpu() if server_cpu is not None else 0.0
        if failures:
            raise LoadError("a load client failed:\n" + "\n".join(failures))
        if any(result.exhausted for result in results):
            raise LoadError(
                f"a client ran out of its {capacity - warmup} pre-built requests: raise "
                "max_rate_per_client"
            )
        latencies = array("d")
        for result in results:
            latencies.extend(result.latencies)
        errors = [result for result in results if result.errors]
        return LoadResult(
            clients=clients,
            completed=len(latencies),
            errors=sum(result.errors for result in results),
            first_error=errors[0].first_error if errors else None,
            window_s=max(result.window_s for result in results),
            latencies_ms=[latency * 1000 for latency in latencies],
            client_cpu_s=sum(result.cpu_s for result in results),
            server_cpu_s=cpu_after - cpu_before,
            next_index=start_index + clients * max(result.used for result in results),
            answered_ok=sum(result.answered_ok for result in results),
            warmup_errors=sum(result.warmup_errors for result in results),
        )
