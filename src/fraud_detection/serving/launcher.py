"""Start and stop the serving processes on this machine: predictor, transformer, Kafka broker.

Each server is a real ``kserve.ModelServer`` in its own Python process
(``python -m fraud_detection.serving.predictor`` / ``...transformer``) bound to loopback on a
free port, with its output in a log file. :class:`ServingStack` starts what is needed in order,
waits until each answers its KServe readiness endpoint, and stops everything in reverse order
(SIGTERM, then SIGKILL after a timeout) — also when starting fails half-way. ``fraud serve``,
the demo, the integration tests and the benchmarks all use it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx

from fraud_detection.streaming.broker import LOOPBACK, free_port

log = logging.getLogger(__name__)

MODEL_NAME = "fraud-detector"
PREDICTOR_MODULE = "fraud_detection.serving.predictor"
TRANSFORMER_MODULE = "fraud_detection.serving.transformer"


class ServerStartError(RuntimeError):
    """A server process exited or did not become ready in time."""


def log_tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of a log file, indented (for error messages)."""
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "    (no log)"
    return "\n".join(f"    {line}" for line in text[-lines:]) or "    (empty log)"


def _terminate(proc: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        log.warning("pid %d still ran %.0f s after SIGTERM; killing it", proc.pid, timeout_s)
        proc.kill()
        proc.wait(timeout=5.0)


@dataclass
class ServerProcess:
    """One model server process."""

    name: str
    module: str
    args: list[str]
    host: str
    port: int
    log_path: Path
    model_name: str = MODEL_NAME
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    _finalizer: Any = None

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:8080``."""
        return f"http://{self.host}:{self.port}"

    @property
    def address(self) -> str:
        """``host:port`` (what a transformer's ``--predictor_host`` takes)."""
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self.proc is not None and self.proc.poll() is None

    def command(self) -> list[str]:
        """The full command line (``module`` may also be a script path ending in ``.py``)."""
        entry = [self.module] if self.module.endswith(".py") else ["-m", self.module]
        return [
            sys.executable,
            *entry,
            "--model_name",
            self.model_name,
            "--http_port",
            str(self.port),
            "--bind_host",
            self.host,
            "--enable_grpc",
            "false",
            *self.args,
        ]

    def start(self) -> Self:
        """Start the process (output appended to :attr:`log_path`); does not wait."""
        if self.running:
            return self
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log_file:
            self.proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
                close_fds=True,
            )
        self._finalizer = weakref.finalize(self, _terminate, self.proc, 5.0)
        log.debug("started %s pid %d: %s", self.name, self.proc.pid, " ".join(self.command()))
        return self

    def wait_ready(self, timeout_s: float = 60.0) -> Self:
        """Wait until ``GET /v1/models/<name>`` answers 200; stop and raise otherwise."""
        deadline = time.monotonic() + timeout_s
        url = f"{self.url}/v1/models/{self.model_name}"
        with httpx.Client(timeout=1.0) as client:
            while True:
                assert self.proc is not None
                code = self.proc.poll()
                if code is not None:
                    raise ServerStartError(
                        f"the {self.name} exited with status {code} before it was ready; "
                        f"log {self.log_path}:\n{log_tail(self.log_path)}"
                    )
                if time.monotonic() > deadline:
                    self.stop()
                    raise ServerStartError(
                        f"the {self.name} was not ready within {timeout_s:g} s; "
                        f"log {self.log_path}:\n{log_tail(self.log_path)}"
                    )
                try:
                    if client.get(url).status_code == 200:
                        return self
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout_s``; returns the exit status."""
        if self.proc is None:
            return None
        _terminate(self.proc, timeout_s)
        if self._finalizer is not None:
            self._finalizer.detach()
        return self.proc.returncode

    def signal(self, signum: int) -> None:
        """Send a signal (e.g. SIGHUP to reload the model)."""
        if self.running:
            assert self.proc is not None
            self.proc.send_signal(signum)


@dataclass
class StackConfig:
    """What :class:`ServingStack` runs.

    Exactly one of ``model_dir`` and ``registry`` names the bundle source. ``kafka`` is the
    bootstrap servers to mirror to; ``None`` starts a local broker when ``mirror`` is on.
    """

    model_dir: Path | None = None
    registry: Path | None = None
    kafka: str | None = None
    mirror: bool = True
    mirror_topic: str | None = None
    port: int | None = None
    predictor_port: int | None = None
    host: str = LOOPBACK
    threshold: float | None = None
    collocated: bool = False
    runtime: str = "auto"
    predictor_protocol: str = "v1"
    access_log: bool = False
    log_dir: Path | None = None
    predictor_args: Sequence[str] = ()
    transformer_args: Sequence[str] = ()
    startup_timeout_s: float = 60.0


class ServingStack:
    """Broker (optional), predictor and transformer as local processes; a context manager."""

    def __init__(self, config: StackConfig) -> None:
        if (config.model_dir is None) == (config.registry is None):
            raise ValueError("give exactly one of model_dir and registry")
        self.config = config
        self.broker: Any = None
        self.predictor: ServerProcess | None = None
        self.transformer: ServerProcess | None = None
        self._temporary_logs: tempfile.TemporaryDirectory[str] | None = None
        self.log_dir = config.log_dir
        self.bootstrap: str | None = config.kafka if config.mirror else None

    def _source_args(self) -> list[str]:
        if self.config.model_dir is not None:
            return ["--model_dir", str(Path(self.config.model_dir).resolve())]
        return ["--registry", str(Path(self.config.registry).resolve())]  # type: ignore[arg-type]

    def start(self) -> Self:
        """Start everything and wait until it is ready; on failure, stop what was started."""
        config = self.config
        if self.log_dir is None:
            self._temporary_logs = tempfile.TemporaryDirectory(prefix="fraud-serve-")
            self.log_dir = Path(self._temporary_logs.name)
        try:
            if config.mirror and config.kafka is None:
                from fraud_detection.streaming.broker import LocalBroker

                self.broker = LocalBroker(log_path=self.log_dir / "broker.log").start()
                self.bootstrap = self.broker.bootstrap_servers
            if not config.collocated:
                self.predictor = ServerProcess(
                    "predictor",
                    PREDICTOR_MODULE,
                    [
                        *self._source_args(),
                        "--runtime",
                        config.runtime,
                        "--access_log",
                        str(config.access_log).lower(),
                        *config.predictor_args,
                    ],
                    config.host,
                    config.predictor_port or free_port(config.host),
                    self.log_dir / "predictor.log",
                ).start()
            self.transformer = ServerProcess(
                "transformer",
                TRANSFORMER_MODULE,
                self._transformer_args(),
                config.host,
                config.port or free_port(config.host),
                self.log_dir / "transformer.log",
            ).start()
            if self.predictor is not None:
                self.predictor.wait_ready(config.startup_timeout_s)
            self.transformer.wait_ready(config.startup_timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _transformer_args(self) -> list[str]:
        config = self.config
        args = [
            *self._source_args(),
            "--access_log",
            str(config.access_log).lower(),
            "--kafka_bootstrap",
            self.bootstrap or "none",
        ]
        if config.collocated:
            args.append("--collocated")
        else:
            assert self.predictor is not None
            args += [
                "--predictor_host",
                self.predictor.address,
                "--predictor_protocol",
                config.predictor_protocol,
            ]
        if config.threshold is not None:
            args += ["--threshold", str(config.threshold)]
        if config.mirror_topic:
            args += ["--mirror_topic", config.mirror_topic]
        return [*args, *config.transformer_args]

    def stop(self) -> None:
        """Stop everything that runs, transformer first; safe to call more than once."""
        for server in (self.transformer, self.predictor):
            if server is not None:
                with contextlib.suppress(Exception):
                    server.stop()
        if self.broker is not None:
            with contextlib.suppress(Exception):
                self.broker.stop()
            self.broker = None
        if self._temporary_logs is not None:
            self._temporary_logs.cleanup()
            self._temporary_logs = None
            self.log_dir = None

    @property
    def url(self) -> str:
        """The transformer's base URL."""
        assert self.transformer is not None
        return self.transformer.url

    @property
    def predict_url(self) -> str:
        """The v1 scoring endpoint."""
        assert self.transformer is not None
        return f"{self.transformer.url}/v1/models/{self.transformer.model_name}:predict"

    def urls(self) -> dict[str, str]:
        """What runs where, for printing."""
        urls = {"transformer (score here)": self.predict_url}
        assert self.transformer is not None
        urls["transformer v2"] = f"{self.transformer.url}/v2/models/{MODEL_NAME}/infer"
        urls["transformer metrics"] = f"{self.transformer.url}/metrics"
        if self.predictor is not None:
            urls["predictor"] = f"{self.predictor.url}/v1/models/{MODEL_NAME}:predict"
        if self.bootstrap:
            urls["kafka mirror"] = self.bootstrap
        return urls

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
