"""Start, supervise and stop the serving processes on this machine: predictor, transformer, broker.

Each server is a real ``kserve.ModelServer`` in its own Python process
(``python -m fraud_detection.serving.predictor`` / ``...transformer``) bound to loopback on a
free port, with its output appended to a log file in the stack's log directory (by default
``logs/`` in the project's state root, :func:`default_log_dir`; kept after stop).
:class:`ServingStack` starts what is needed in order, waits until each answers its KServe
readiness endpoint, and stops everything in reverse order (SIGTERM, then SIGKILL after a
timeout) — also when starting fails half-way. Each server runs in its own process group, so a
server that has to be killed takes the processes it started (the mirror's producer) with it.
``fraud serve``, the demo, the integration tests and the benchmarks all use it.

Supervision: :meth:`ServingStack.check` looks at every child the stack started (predictor,
transformer, and the local broker when the stack started one). A child that exited without
being asked to stop is restarted on the same port (clients and the transformer reconnect;
the transformer resumes from its checkpoint when a state directory is configured) after an
exponential back-off (:class:`RestartPolicy`: 0.5 s doubling up to 10 s, back to 0.5 s once the
child stayed up for 30 s). Every exit and restart is logged with the child's exit status and log
path. When a child exits again although it was already restarted ``max_restarts`` times within
``window_s`` seconds, :meth:`~ServingStack.check` raises :class:`ChildFailedError` and the
owner stops the stack. :meth:`ServingStack.supervise` runs the checks in a loop (``fraud serve``);
:meth:`ServingStack.start_supervising` in a background thread.

Stopping reports what could not be stopped: :meth:`ServingStack.stop` tries every child, logs
every failure naming the child and returns the problems (a child still alive after SIGKILL, a
signal that could not be sent, an unexpected error while stopping one).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, Self

import httpx

from fraud_detection.streaming.broker import LOOPBACK, BrokerError, default_state_dir, free_port

if TYPE_CHECKING:
    from fraud_detection.streaming.broker import LocalBroker

log = logging.getLogger(__name__)

MODEL_NAME = "fraud-detector"
PREDICTOR_MODULE = "fraud_detection.serving.predictor"
TRANSFORMER_MODULE = "fraud_detection.serving.transformer"
#: The transformer's environment fallback for ``--state_dir``.
ENV_SERVING_STATE_DIR = "FRAUD_SERVING_STATE_DIR"
#: The transformer's clocks: ``wall`` for live traffic, ``event`` for replays of past data.
CLOCKS = ("wall", "event")
#: Seconds a server gets after SIGTERM before SIGKILL: more than the transformer's own worst
#: case (the mirror's 5 s flush, its producer's 10 s grace, a final checkpoint).
STOP_TIMEOUT_S = 30.0
#: Seconds a child gets after SIGKILL before it is reported as impossible to stop.
KILL_WAIT_S = 5.0


class ServerStartError(RuntimeError):
    """A server process exited or did not become ready in time."""


class StopError(RuntimeError):
    """A child process could not be stopped (e.g. it is still alive after SIGKILL)."""


class ChildFailedError(RuntimeError):
    """A supervised child kept exiting: the restart limit was reached.

    Attributes:
        child: which child (``predictor``, ``transformer`` or ``broker``).
        status: its last exit status (negative: killed by that signal), if known.
        log_path: the child's log file.
        restarts: restarts within the window before this exit.
        window_s: the window of the restart limit, in seconds.
    """

    def __init__(
        self,
        child: str,
        status: int | None,
        log_path: Path | None,
        restarts: int,
        window_s: float,
    ) -> None:
        self.child = child
        self.status = status
        self.log_path = log_path
        self.restarts = restarts
        self.window_s = window_s
        tail = log_tail(log_path, 15) if log_path is not None else "    (no log)"
        super().__init__(
            f"the {child} {describe_exit(status)} after {restarts} restart"
            f"{'' if restarts == 1 else 's'} within {window_s:g} s; giving up; "
            f"log {log_path}:\n{tail}"
        )


def log_tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of a log file, indented (for error messages)."""
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "    (no log)"
    return "\n".join(f"    {line}" for line in text[-lines:]) or "    (empty log)"


def describe_exit(status: int | None) -> str:
    """``exited with status 2`` / ``was killed by SIGKILL`` / ``exited (status unknown)``."""
    if status is None:
        return "exited (status unknown)"
    if status < 0:
        try:
            name = signal.Signals(-status).name
        except ValueError:
            name = f"signal {-status}"
        return f"was killed by {name}"
    return f"exited with status {status}"


def default_log_dir() -> Path:
    """``logs/`` in the project's state root: ``$FRAUD_STATE_DIR``, else ``./.fraud``.

    The servers' (and the stack's broker's) logs are kept there after a stop.
    """
    return default_state_dir().parent / "logs"


def default_serving_state_dir() -> Path:
    """``$FRAUD_SERVING_STATE_DIR``, else ``serving/`` in the project's state root.

    The state root is the broker's: ``$FRAUD_STATE_DIR``, else ``./.fraud``
    (:func:`fraud_detection.streaming.broker.default_state_dir` is its ``kafka/`` directory).
    """
    explicit = os.environ.get(ENV_SERVING_STATE_DIR)
    if explicit:
        return Path(explicit).absolute()
    return default_state_dir().parent / "serving"


def _terminate(proc: subprocess.Popen[bytes], timeout_s: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM, SIGKILL after ``timeout_s``; raises ``subprocess.TimeoutExpired`` if it survives.

    ``proc`` leads its own process group: the SIGKILL goes to the whole group, so nothing it
    started outlives it. (The leader is not reaped yet, so its group id cannot have been reused.)
    """
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        log.warning(
            "pid %d still ran %.0f s after SIGTERM; killing it and its process group",
            proc.pid,
            timeout_s,
        )
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=KILL_WAIT_S)


def _terminate_quietly(proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    """:func:`_terminate` for garbage collection and interpreter exit: failures are logged."""
    try:
        _terminate(proc, timeout_s)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.error("could not stop pid %d: %s", proc.pid, exc)


@dataclass
class ServerProcess:
    """One model server process.

    ``wanted`` says whether the process should run: :meth:`start` sets it, :meth:`stop` clears
    it, so a supervisor restarts only a process that exited by itself.
    """

    name: str
    module: str
    args: list[str]
    host: str
    port: int
    log_path: Path
    model_name: str = MODEL_NAME
    env: dict[str, str] = field(default_factory=dict)
    unset_env: tuple[str, ...] = ()
    proc: subprocess.Popen[bytes] | None = None
    wanted: bool = False
    _finalizer: Any = None
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)

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

    @property
    def pid(self) -> int | None:
        """The process id of the latest start, or ``None`` before the first."""
        return None if self.proc is None else self.proc.pid

    @property
    def returncode(self) -> int | None:
        """The exit status once the process exited (negative: killed by that signal)."""
        return None if self.proc is None else self.proc.poll()

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

    def _environment(self) -> dict[str, str]:
        env = {**os.environ, **self.env}
        for key in self.unset_env:
            env.pop(key, None)
        return env

    def start(self) -> Self:
        """Start the process (output appended to :attr:`log_path`); does not wait."""
        with self._lock:
            if self.running:
                return self
            if self._finalizer is not None:
                self._finalizer.detach()  # the previous process has exited
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log_path, "ab") as log_file:
                self.proc = subprocess.Popen(
                    self.command(),
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    env=self._environment(),
                    close_fds=True,
                    process_group=0,  # see _terminate; Ctrl-C reaches only the launcher
                )
            self.wanted = True
            self._finalizer = weakref.finalize(self, _terminate_quietly, self.proc, 5.0)
        log.debug("started %s pid %d: %s", self.name, self.proc.pid, " ".join(self.command()))
        return self

    def relaunch(self) -> None:
        """Start the process again on the same port, unless it runs or was stopped on purpose."""
        with self._lock:
            if self.wanted and not self.running:
                self.start()

    def ready(self, timeout_s: float = 0.5) -> bool:
        """One readiness probe: whether ``GET /v1/models/<name>`` answers 200 right now."""
        try:
            response = httpx.get(f"{self.url}/v1/models/{self.model_name}", timeout=timeout_s)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

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
                        f"the {self.name} {describe_exit(code)} before it was ready; "
                        f"log {self.log_path}:\n{log_tail(self.log_path)}"
                    )
                if time.monotonic() > deadline:
                    not_stopped = ""
                    try:
                        self.stop()
                    except StopError as exc:
                        log.error("%s", exc)
                        not_stopped = f" ({exc})"
                    raise ServerStartError(
                        f"the {self.name} was not ready within {timeout_s:g} s{not_stopped}; "
                        f"log {self.log_path}:\n{log_tail(self.log_path)}"
                    )
                try:
                    if client.get(url).status_code == 200:
                        return self
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout_s``; returns the exit status.

        Raises:
            StopError: the process is still alive after SIGKILL, or could not be signalled.
        """
        with self._lock:
            self.wanted = False
            if self.proc is None:
                return None
            try:
                _terminate(self.proc, timeout_s)
            except subprocess.TimeoutExpired as exc:
                raise StopError(
                    f"the {self.name} (pid {self.proc.pid}) is still alive {KILL_WAIT_S:g} s "
                    "after SIGKILL"
                ) from exc
            except OSError as exc:
                raise StopError(
                    f"could not stop the {self.name} (pid {self.proc.pid}): {exc}"
                ) from exc
            if self._finalizer is not None:
                self._finalizer.detach()
            return self.proc.returncode

    def signal(self, signum: int) -> None:
        """Send a signal (e.g. SIGHUP to reload the model)."""
        if self.running:
            assert self.proc is not None
            self.proc.send_signal(signum)


class BrokerProcess:
    """The local broker a stack started, restartable on the same port (so the mirror reconnects).

    A restart keeps the previous run's output in ``<log>.1``.
    """

    name = "broker"

    def __init__(self, broker: LocalBroker) -> None:
        self.broker = broker
        self.host = broker.host
        self.port = broker.port
        self.topics = broker.topics
        self.log_path = broker.log_path
        self.wanted = True
        self._lock = threading.RLock()

    @property
    def running(self) -> bool:
        """Whether the broker process is alive."""
        return bool(self.broker.running)

    @property
    def pid(self) -> int | None:
        """The broker's process id."""
        return self.broker.pid

    @property
    def returncode(self) -> int | None:
        """The broker's exit status once it exited, if known."""
        # LocalBroker keeps its Popen private; its poll() in ``running`` has set the status.
        proc = getattr(self.broker, "_proc", None)
        return None if proc is None else proc.returncode

    def ready(self, timeout_s: float = 0.5) -> bool:
        """A restarted broker answers before :meth:`relaunch` returns."""
        return self.running

    def relaunch(self) -> None:
        """Start a new broker on the same port (waits until it answers; raises BrokerError)."""
        from fraud_detection.streaming.broker import LocalBroker

        with self._lock:
            if not self.wanted or self.running:
                return
            self.broker.stop()  # reaps the exited process
            if self.log_path is not None and self.log_path.exists():
                self.log_path.replace(self.log_path.with_name(f"{self.log_path.name}.1"))
            self.broker = LocalBroker(
                port=self.port, topics=self.topics, log_path=self.log_path, host=self.host
            ).start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the broker.

        Raises:
            StopError: it is still alive after SIGKILL, or could not be signalled.
        """
        with self._lock:
            self.wanted = False
            pid = self.broker.pid
            try:
                self.broker.stop(timeout_s)
            except subprocess.TimeoutExpired as exc:
                raise StopError(
                    f"the broker (pid {pid}) is still alive {KILL_WAIT_S:g} s after SIGKILL"
                ) from exc
            except (OSError, BrokerError) as exc:
                raise StopError(f"could not stop the broker (pid {pid}): {exc}") from exc


class Supervised(Protocol):
    """What the supervisor needs of a child: :class:`ServerProcess` or :class:`BrokerProcess`."""

    name: str
    wanted: bool

    @property
    def running(self) -> bool: ...

    @property
    def pid(self) -> int | None: ...

    @property
    def returncode(self) -> int | None: ...

    @property
    def port(self) -> int: ...

    @property
    def log_path(self) -> Path | None: ...

    def ready(self, timeout_s: float = 0.5) -> bool: ...

    def relaunch(self) -> None: ...


@dataclass(frozen=True)
class RestartPolicy:
    """When the supervisor restarts an exited child, and when it gives up.

    The first restart waits ``initial_backoff_s``; each further one waits twice as long, up to
    ``max_backoff_s``; once a restarted child stayed up for ``stable_after_s`` the wait is back
    to ``initial_backoff_s``. A child that exits again after ``max_restarts`` restarts within the
    last ``window_s`` seconds is not restarted: the supervisor gives up (0: never restart).
    """

    max_restarts: int = 5
    window_s: float = 60.0
    initial_backoff_s: float = 0.5
    max_backoff_s: float = 10.0
    stable_after_s: float = 30.0

    def __post_init__(self) -> None:
        if self.max_restarts < 0:
            raise ValueError(f"max_restarts must be at least 0, got {self.max_restarts}")
        for name in ("window_s", "initial_backoff_s", "max_backoff_s", "stable_after_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.max_backoff_s < self.initial_backoff_s:
            raise ValueError("max_backoff_s must be at least initial_backoff_s")

    def next_backoff(self, backoff_s: float) -> float:
        """The wait after one of ``backoff_s``: doubled, at most ``max_backoff_s``."""
        return min(backoff_s * 2, self.max_backoff_s)


@dataclass
class _Watch:
    """The supervisor's record of one child."""

    child: Supervised
    backoff_s: float
    up_since: float
    restarts: deque[float] = field(default_factory=deque)
    retry_at: float | None = None
    awaiting_ready: bool = False


@dataclass
class StackConfig:
    """What :class:`ServingStack` runs.

    Exactly one of ``model_dir`` and ``registry`` names the bundle source. ``kafka`` is the
    bootstrap servers to mirror to; ``None`` starts a local broker when ``mirror`` is on.
    ``log_dir`` is where the logs go (``None``: :func:`default_log_dir`), ``log_format`` the
    servers' (``text`` or ``json``). ``max_instances`` and ``max_body_bytes`` are the
    transformer's request limits (``None``: its defaults); the predictor's are raised to fit
    its batches (:func:`~fraud_detection.serving.predictor.limits_for_batches`).
    ``clock`` is the transformer's (``wall`` for live traffic, ``event`` for replays of past
    data); ``state_dir`` is where it checkpoints its live state (``None``: no checkpoints, and
    ``$FRAUD_SERVING_STATE_DIR`` is not passed on). ``max_restarts`` and ``restart_window_s``
    are the supervisor's limit (:class:`RestartPolicy`). ``startup_timeout_s`` is how long
    :meth:`ServingStack.start` waits for each server to be ready.
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
    log_format: str = "text"
    max_instances: int | None = None
    max_body_bytes: int | None = None
    predictor_args: Sequence[str] = ()
    transformer_args: Sequence[str] = ()
    startup_timeout_s: float = 60.0
    clock: str = "wall"
    state_dir: Path | None = None
    checkpoint_interval_s: float | None = None
    max_restarts: int = 5
    restart_window_s: float = 60.0

    def restart_policy(self) -> RestartPolicy:
        """The supervisor's policy: this limit, the default back-off."""
        return RestartPolicy(max_restarts=self.max_restarts, window_s=self.restart_window_s)


class ServingStack:
    """Broker (optional), predictor and transformer as local processes; a context manager."""

    def __init__(self, config: StackConfig) -> None:
        if (config.model_dir is None) == (config.registry is None):
            raise ValueError("give exactly one of model_dir and registry")
        if config.clock not in CLOCKS:
            raise ValueError(f"clock must be one of {', '.join(CLOCKS)}, got {config.clock!r}")
        if config.checkpoint_interval_s is not None and not config.checkpoint_interval_s > 0:
            raise ValueError("checkpoint_interval_s must be positive")
        if not 0 < config.startup_timeout_s < float("inf"):
            raise ValueError(f"startup_timeout_s must be positive, got {config.startup_timeout_s}")
        self.config = config
        self.policy = config.restart_policy()
        self.predictor: ServerProcess | None = None
        self.transformer: ServerProcess | None = None
        self.broker_process: BrokerProcess | None = None
        self.failure: ChildFailedError | None = None
        self.log_dir = Path(config.log_dir) if config.log_dir is not None else default_log_dir()
        self.bootstrap: str | None = config.kafka if config.mirror else None
        self._watches: list[_Watch] = []
        self._check_lock = threading.Lock()
        self._supervisor: threading.Thread | None = None
        self._supervisor_stop = threading.Event()

    @property
    def broker(self) -> LocalBroker | None:
        """The local broker this stack started, if any."""
        return None if self.broker_process is None else self.broker_process.broker

    def _source_args(self) -> list[str]:
        if self.config.model_dir is not None:
            return ["--model_dir", str(Path(self.config.model_dir).resolve())]
        return ["--registry", str(Path(self.config.registry).resolve())]  # type: ignore[arg-type]

    def start(self) -> Self:
        """Start everything and wait until it is ready; on failure, stop what was started."""
        config = self.config
        try:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            if config.mirror and config.kafka is None:
                self._start_broker(self.log_dir / "broker.log")
            if not config.collocated:
                self.predictor = self._predictor(self.log_dir / "predictor.log").start()
            self.transformer = ServerProcess(
                "transformer",
                TRANSFORMER_MODULE,
                self._transformer_args(),
                config.host,
                config.port or free_port(config.host),
                self.log_dir / "transformer.log",
                unset_env=() if config.state_dir is not None else (ENV_SERVING_STATE_DIR,),
            ).start()
            if self.predictor is not None:
                self.predictor.wait_ready(config.startup_timeout_s)
            self.transformer.wait_ready(config.startup_timeout_s)
        except BaseException:
            self.stop()
            raise
        self._watch_children()
        return self

    def _start_broker(self, log_path: Path) -> None:
        from fraud_detection.streaming.broker import LocalBroker

        broker = LocalBroker(log_path=log_path).start()
        self.broker_process = BrokerProcess(broker)
        self.bootstrap = broker.bootstrap_servers

    def _predictor(self, log_path: Path) -> ServerProcess:
        config = self.config
        limits: list[str] = []
        if config.max_instances is not None:
            from fraud_detection.serving.predictor import limits_for_batches

            max_rows, max_body_bytes = limits_for_batches(config.max_instances)
            limits = ["--max_rows", str(max_rows), "--max_body_bytes", str(max_body_bytes)]
        return ServerProcess(
            "predictor",
            PREDICTOR_MODULE,
            [
                *self._source_args(),
                "--runtime",
                config.runtime,
                "--access_log",
                str(config.access_log).lower(),
                "--log_format",
                config.log_format,
                *limits,
                *config.predictor_args,
            ],
            config.host,
            config.predictor_port or free_port(config.host),
            log_path,
        )

    def _transformer_args(self) -> list[str]:
        config = self.config
        args = [
            *self._source_args(),
            "--access_log",
            str(config.access_log).lower(),
            "--log_format",
            config.log_format,
            "--kafka_bootstrap",
            self.bootstrap or "none",
            "--clock",
            config.clock,
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
        if config.state_dir is not None:
            args += ["--state_dir", str(Path(config.state_dir).absolute())]
        if config.checkpoint_interval_s is not None:
            args += ["--checkpoint_interval", str(config.checkpoint_interval_s)]
        if config.max_instances is not None:
            args += ["--max_instances", str(config.max_instances)]
        if config.max_body_bytes is not None:
            args += ["--max_body_bytes", str(config.max_body_bytes)]
        return [*args, *config.transformer_args]

    # ------------------------------------------------------------------ supervision
    def children(self) -> list[Supervised]:
        """The processes this stack started and supervises: broker, predictor, transformer."""
        found: list[Any] = [self.broker_process, self.predictor, self.transformer]
        return [child for child in found if child is not None]

    def _watch_children(self) -> None:
        now = time.monotonic()
        self._watches = [
            _Watch(child, self.policy.initial_backoff_s, now) for child in self.children()
        ]

    def check(self) -> None:
        """One supervision pass: restart children that exited (after their back-off).

        A child stopped on purpose (its ``stop()``) is left alone. Safe to call from any
        thread; passes do not overlap.

        Raises:
            ChildFailedError: a child exited again after the restart limit was reached.
        """
        with self._check_lock:
            for watch in self._watches:
                self._check_child(watch, time.monotonic())

    def _check_child(self, watch: _Watch, now: float) -> None:
        child = watch.child
        if child.running:
            self._note_running(watch, now)
        elif not child.wanted:
            watch.retry_at = None
        elif watch.retry_at is None:
            self._schedule_restart(watch, now)
        elif now >= watch.retry_at:
            self._restart(watch, now)

    def _note_running(self, watch: _Watch, now: float) -> None:
        child = watch.child
        if watch.awaiting_ready and child.ready():
            watch.awaiting_ready = False
            log.info("the %s is ready again (pid %s, port %d)", child.name, child.pid, child.port)
        stable = now - watch.up_since >= self.policy.stable_after_s
        if stable and watch.backoff_s != self.policy.initial_backoff_s:
            watch.backoff_s = self.policy.initial_backoff_s
            log.info("the %s stayed up; its restart back-off is reset", child.name)

    def _schedule_restart(self, watch: _Watch, now: float) -> None:
        child, policy = watch.child, self.policy
        while watch.restarts and now - watch.restarts[0] > policy.window_s:
            watch.restarts.popleft()
        status = child.returncode
        if len(watch.restarts) >= policy.max_restarts:
            raise ChildFailedError(
                child.name, status, child.log_path, len(watch.restarts), policy.window_s
            )
        watch.retry_at = now + watch.backoff_s
        log.warning(
            "the %s (pid %s) %s; restarting it on port %d in %.1f s (restart %d of at most %d "
            "within %g s); log %s",
            child.name,
            child.pid,
            describe_exit(status),
            child.port,
            watch.backoff_s,
            len(watch.restarts) + 1,
            policy.max_restarts,
            policy.window_s,
            child.log_path,
        )

    def _restart(self, watch: _Watch, now: float) -> None:
        child = watch.child
        watch.retry_at = None
        watch.restarts.append(now)
        watch.backoff_s = self.policy.next_backoff(watch.backoff_s)
        try:
            child.relaunch()
        except (OSError, BrokerError) as exc:
            log.warning("restarting the %s failed: %s", child.name, exc)
            return
        watch.up_since = time.monotonic()
        watch.awaiting_ready = True
        log.info(
            "restarted the %s: pid %s on port %d; log %s",
            child.name,
            child.pid,
            child.port,
            child.log_path,
        )

    def supervise(self, stop: threading.Event, interval_s: float = 0.5) -> None:
        """Check the children every ``interval_s`` until ``stop`` is set.

        Raises:
            ChildFailedError: a child kept exiting (the stack still runs: stop it).
        """
        while not stop.wait(interval_s):
            self.check()

    def start_supervising(self, interval_s: float = 0.5) -> None:
        """Supervise in a background thread; on giving up it sets :attr:`failure` and ends."""
        if self._supervisor is not None and self._supervisor.is_alive():
            return
        self._supervisor_stop = threading.Event()
        self._supervisor = threading.Thread(
            target=self._supervise_in_background,
            args=(self._supervisor_stop, interval_s),
            name="serving-supervisor",
            daemon=True,
        )
        self._supervisor.start()

    def _supervise_in_background(self, stop: threading.Event, interval_s: float) -> None:
        try:
            self.supervise(stop, interval_s)
        except ChildFailedError as exc:
            log.error("%s", exc)
            self.failure = exc

    def stop_supervising(self, timeout_s: float = 30.0) -> None:
        """End the background supervision (waits for a restart in progress)."""
        self._supervisor_stop.set()
        if self._supervisor is not None:
            self._supervisor.join(timeout_s)
            if self._supervisor.is_alive():
                log.error("the supervisor thread did not end within %g s", timeout_s)
            self._supervisor = None

    # ------------------------------------------------------------------ stopping
    def stop(self) -> list[str]:
        """Stop everything that runs, transformer first; safe to call more than once.

        Returns:
            What could not be stopped (each also logged as an error); empty when all went well.
        """
        self.stop_supervising()
        problems: list[str] = []
        for child in (self.transformer, self.predictor, self.broker_process):
            if child is not None:
                problem = self._stop_child(child)
                if problem:
                    problems.append(problem)
        self.broker_process = None
        return problems

    @staticmethod
    def _stop_child(child: ServerProcess | BrokerProcess) -> str | None:
        """Stop one child; the problem (also logged as an error) when it could not be."""
        if child.wanted and not child.running and child.returncode is not None:
            log.warning(
                "the %s (pid %s) %s before the stack stopped; log %s",
                child.name,
                child.pid,
                describe_exit(child.returncode),
                child.log_path,
            )
        try:
            child.stop()
        except StopError as exc:
            log.error("%s", exc)
            return str(exc)
        except Exception as exc:
            # Not a known way to fail: logged with its traceback, and the other children are
            # still stopped.
            problem = f"stopping the {child.name} (pid {child.pid}) failed: {exc!r}"
            log.exception("%s", problem)
            return problem
        if child.running:
            problem = f"the {child.name} (pid {child.pid}) is still running after stop"
            log.error("%s", problem)
            return problem
        return None

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
            urls["predictor metrics"] = f"{self.predictor.url}/metrics"
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
