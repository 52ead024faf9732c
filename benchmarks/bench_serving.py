"""Serving latency and throughput: the project's stack against KServe's floor, under one load.

Setups (every server is a ``kserve.ModelServer`` process started through
:mod:`fraud_detection.serving.launcher`, bound to loopback, gRPC off, one worker):

(a) the floor: a do-nothing KServe model server (``stock_kserve.py predictor-noop``), one hop;
(b) the two-hop floor: KServe's own transformer (default pre/postprocess, its httpx client) in
    front of (a), both doing nothing (``stock_kserve.py transformer-noop``);
(c) this project's predictor alone: the ONNX forest, sent feature rows;
(d) this project's full stack as ``fraud serve`` runs it: transformer (validation, retry map,
    online features, threshold) → predictor, every scored transaction mirrored to Kafka (a
    local broker, :class:`~fraud_detection.streaming.broker.LocalBroker`; the mirror's
    producer at its default idle CPU priority);
(e) stock KServe's sklearn runtime (joblib, ``predict_proba``) behind a minimal KServe
    transformer computing the same features (``stock_kserve.py``);
(f) this project's collocated mode: the model inside the transformer (one hop), mirror on.

The same server settings everywhere: per-request logging off (``--access_log false``: uvicorn's
access log and KServe's request timings; ``--enable_latency_logging false``: KServe's latency
line), or on everywhere with ``--request-logs on``. The run checks both: every server's command
line carries the same values, and its log has no per-request line (or has them, when on).

What is sent: one transaction per request, held-out generated transactions in time order (seed
``--seed``), the same JSON bodies to (a), (b), (d), (e) and (f); each request has its own
``transaction_id`` (a repeated id is a retry to the transformer, answered from its retry map);
a pass over the held-out set moves the timestamps forward by its span. (c) gets the same
transactions' feature rows. The answers are checked: status 200, ``predictions``, and the
request's id where the server echoes it. With the mirror on, the records offered to Kafka must
equal the transformer's answers (one per scored transaction).

Load (``benchmarks/load.py``, the same for every setup): closed loop, one keep-alive connection
per client process, requests pre-built before timing.

* latency: one client, sequential requests: the round trip a caller sees (p50, p99);
* throughput: ``--clients`` client processes for ``--seconds``: requests/s at saturation, with
  p50/p99 under that load.

Rounds: each round starts every setup afresh, warms it up (sequential requests, then a short
saturated run), measures latency then throughput, and stops it; the figures are reported as the
median over the rounds with their min-max. First, a client-scaling check (``--sweep``) on (a),
or on the setup ``--sweep-on`` names, when that setup runs: throughput must rise with clients
until the server saturates, showing that the clients are not the bottleneck. Every client and
server shares the machine's cores; the clients' and the servers' CPU use is part of the results.

Prints tables (rich) and writes the JSON result file (``--out``, default
``.bench/bench_serving.json`` in the repository). Server logs stay in a temporary directory,
printed at the end.

Run: ``python benchmarks/bench_serving.py`` for the figures (3 rounds; per setup and round 2,000
sequential requests and 10 s at saturation; the client-scaling check 5 s per count): about 15
minutes on a 2-core machine, a third of it starting and stopping servers. ``--quick`` checks that
everything works (3 rounds of 300 sequential requests and 2 s at saturation): about 7 minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from load import ClientPool, LoadResult, ProcessCpu, Target, Workload
    from rich.console import Console

    from fraud_detection.serving.launcher import ServerProcess

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
STOCK = str(HERE / "stock_kserve.py")
MODEL = "fraud-detector"
PREDICT_PATH = f"/v1/models/{MODEL}:predict"
DEFAULT_OUT = REPO / ".bench" / "bench_serving.json"
#: The server settings every server gets; ``--access_log`` and ``--enable_latency_logging``
#: take the ``--request-logs`` value, gRPC is always off (the launcher's own flag).
FLAG_NAMES = ("--access_log", "--enable_latency_logging", "--enable_grpc")
#: A per-request line in a server log: one of uvicorn's access log or of KServe's request
#: timings, whose logger's name stands alone (KServe's text format, the project's text or JSON).
REQUEST_LINE = re.compile(r"(?<![\w.])(uvicorn\.access|kserve\.trace)(?![\w.])")
#: Seconds to wait for the mirror to deliver its backlog before a measurement and at the end.
MIRROR_DRAIN_S = 15.0


# ------------------------------------------------------------------------------ settings
@dataclass(frozen=True)
class Settings:
    """How long and how hard each phase runs.

    Attributes:
        rounds: times every setup is started and measured.
        sequential: requests of the latency phase (one client).
        sequential_warmup: sequential requests before it.
        clients: client processes of the throughput phase.
        seconds: length of the throughput phase.
        warmup_seconds: saturated warm-up before the latency phase.
        sweep: client counts of the client-scaling check (empty: skipped).
        sweep_seconds: length of each of its runs.
    """

    rounds: int = 3
    sequential: int = 2_000
    sequential_warmup: int = 200
    clients: int = 4
    seconds: float = 10.0
    warmup_seconds: float = 2.0
    sweep: tuple[int, ...] = (1, 2, 4, 8)
    sweep_seconds: float = 5.0


FULL = Settings()
QUICK = Settings(
    sequential=300, sequential_warmup=50, seconds=2.0, warmup_seconds=0.5, sweep_seconds=1.5
)


# ------------------------------------------------------------------------------ setups
@dataclass
class Running:
    """A started setup: where to send requests and what to watch."""

    target: Target
    servers: list[ServerProcess]
    other_pids: list[int] = field(default_factory=list)
    metrics_url: str | None = None

    def pids(self) -> list[int]:
        """The setup's server processes (their children are counted with them)."""
        return [pid for pid in [*(s.pid for s in self.servers), *self.other_pids] if pid]


@dataclass(frozen=True)
class Setup:
    """One way of serving, measured in every round.

    Attributes:
        key: its letter.
        label: a short name for tables.
        title: what it is, in a line.
        workload: ``transactions`` (raw transactions) or ``features`` (feature rows).
        echo_id: whether its answers carry the request's ``transaction_id``.
        start: starts it (a context manager yielding :class:`Running`).
    """

    key: str
    label: str
    title: str
    workload: str
    echo_id: bool
    start: Callable[[Context], contextlib.AbstractContextManager[Running]]


@dataclass(frozen=True)
class Context:
    """What starting a setup needs: the bundle, where logs go, the request-logging setting."""

    bundle: Path
    log_dir: Path
    request_logs: bool

    def flag(self) -> str:
        """The value of the per-request logging flags."""
        return "true" if self.request_logs else "false"


def stock_server(context: Context, name: str, role: str, *args: str) -> ServerProcess:
    """A ``stock_kserve.py`` server with the shared settings, started (not yet ready)."""
    from fraud_detection.serving.launcher import ServerProcess
    from fraud_detection.streaming.broker import LOOPBACK, free_port

    flags = ["--access_log", context.flag(), "--enable_latency_logging", context.flag()]
    return ServerProcess(
        name,
        STOCK,
        [role, *args, *flags],
        LOOPBACK,
        free_port(),
        context.log_dir / f"{name}.log",
        model_name=MODEL,
    ).start()


@contextlib.contextmanager
def stock_noop(context: Context) -> Iterator[Running]:
    """(a): one do-nothing KServe model server."""
    from load import Target

    server = stock_server(context, "noop-predictor", "predictor-noop")
    try:
        server.wait_ready()
        yield Running(Target(server.host, server.port), [server])
    finally:
        server.stop()


@contextlib.contextmanager
def stock_pair(context: Context, kind: str) -> Iterator[Running]:
    """(b) and (e): a stock KServe transformer in front of a stock KServe predictor."""
    from load import Target

    predictor_role, transformer_role = {
        "noop": ("predictor-noop", "transformer-noop"),
        "sklearn": ("predictor-sklearn", "transformer-stock"),
    }[kind]
    bundle = ["--model_dir", str(context.bundle)]
    predictor = stock_server(context, f"{kind}-predictor", predictor_role, *bundle)
    transformer = None
    try:
        transformer = stock_server(
            context,
            f"{kind}-transformer",
            transformer_role,
            *bundle,
            "--predictor_host",
            predictor.address,
        )
        predictor.wait_ready()
        transformer.wait_ready()
        yield Running(Target(transformer.host, transformer.port), [transformer, predictor])
    finally:
        if transformer is not None:
            transformer.stop()
        predictor.stop()


@contextlib.contextmanager
def ours(context: Context, target: str, **options: Any) -> Iterator[Running]:
    """(c), (d), (f): this project's stack (:class:`ServingStack`), as ``fraud serve`` runs it.

    ``target`` is ``transformer`` or ``predictor``: the launcher has no predictor-only mode, so
    (c) starts the stack without the mirror and sends to its predictor; the transformer idles.
    """
    from load import Target

    from fraud_detection.serving.launcher import ServingStack, StackConfig

    latency_logging = ["--enable_latency_logging", context.flag()]
    config = StackConfig(
        model_dir=context.bundle,
        log_dir=context.log_dir,
        # Generated historical data: the transformer's clock follows the scored timestamps.
        clock="event",
        access_log=context.request_logs,
        predictor_args=latency_logging,
        transformer_args=latency_logging,
        **options,
    )
    with ServingStack(config) as stack:
        assert stack.transformer is not None
        servers = [s for s in (stack.transformer, stack.predictor) if s is not None]
        server = stack.predictor if target == "predictor" else stack.transformer
        assert server is not None
        broker = stack.broker_process
        yield Running(
            Target(server.host, server.port),
            servers,
            other_pids=[broker.pid] if broker is not None and broker.pid else [],
            metrics_url=f"{stack.transformer.url}/metrics" if config.mirror else None,
        )


SETUPS: tuple[Setup, ...] = (
    Setup(
        "a",
        "(a) floor",
        "(a) a do-nothing KServe model server (the floor)",
        "transactions",
        False,
        stock_noop,
    ),
    Setup(
        "b",
        "(b) 2-hop floor",
        "(b) stock KServe transformer -> predictor, both doing nothing",
        "transactions",
        False,
        lambda context: stock_pair(context, "noop"),
    ),
    Setup(
        "c",
        "(c) our predictor",
        "(c) our predictor alone (ONNX forest, feature rows in)",
        "features",
        False,
        lambda context: ours(context, "predictor", mirror=False),
    ),
    Setup(
        "d",
        "(d) our stack",
        "(d) our full stack: transformer -> predictor, mirror to Kafka",
        "transactions",
        True,
        lambda context: ours(context, "transformer", mirror=True),
    ),
    Setup(
        "e",
        "(e) stock sklearn",
        "(e) stock KServe sklearn runtime behind a minimal KServe transformer",
        "transactions",
        True,
        lambda context: stock_pair(context, "sklearn"),
    ),
    Setup(
        "f",
        "(f) collocated",
        "(f) our collocated mode (model in the transformer, one hop), mirror to Kafka",
        "transactions",
        True,
        lambda context: ours(context, "transformer", mirror=True, collocated=True),
    ),
)


# ------------------------------------------------------------------------------ workloads
def build_workloads(
    trees: int, depth: int, seed: int, work: Path, console: Console
) -> tuple[Path, dict[str, Workload]]:
    """Generate data, write the bundle, and build the two workloads' templates."""
    import orjson
    import pandas as pd
    from load import ID_MARK, TIME_MARK, Workload

    from fraud_detection.features import compute_features
    from fraud_detection.schema import TIMESTAMP, TRANSACTION_ID
    from fraud_detection.serving.demo import to_instance

    sys.path.insert(0, str(REPO / "tests"))
    from support.bundles import build_bundle, make_data

    with console.status(f"generating data and a {trees}-tree forest (max depth {depth})"):
        data = make_data(n_transactions=60_000, n_cards=2_000, days=60, seed=seed)
        bundle = build_bundle(
            work / "bundle", data.train, "bench-1", n_estimators=trees, max_depth=depth
        )
        held_out = data.held_out
        times = [pd.Timestamp(value).timestamp() for value in held_out[TIMESTAMP]]
        gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
        period = times[-1] - times[0] + statistics.median(gaps)
        templates = []
        for row in held_out.to_dict("records"):
            instance = to_instance(row)
            instance[TRANSACTION_ID] = ID_MARK.decode()
            instance[TIMESTAMP] = TIME_MARK.decode()
            templates.append(orjson.dumps({"instances": [instance]}))
        both = pd.concat([data.train, held_out], ignore_index=True)
        rows = compute_features(both).iloc[len(data.train) :].to_numpy().tolist()
    transactions = Workload(
        PREDICT_PATH,
        tuple(templates),
        tuple(times),
        period,
        expect=b'"predictions"',
    )
    features = Workload(
        PREDICT_PATH,
        tuple(orjson.dumps({"instances": [row]}) for row in rows),
        expect=b'"predictions"',
    )
    return bundle, {"transactions": transactions, "features": features}


# ------------------------------------------------------------------------------ checks
def server_flags(command: list[str]) -> dict[str, str]:
    """The values of :data:`FLAG_NAMES` on a command line (the last occurrence wins)."""
    found: dict[str, str] = {}
    for name, value in itertools.pairwise(command):
        if name in FLAG_NAMES:
            found[name] = value
    return found


def request_log_lines(path: Path) -> int:
    """Per-request lines (uvicorn access log, KServe request timings) in a server log."""
    try:
        with open(path, errors="replace") as log:
            return sum(1 for line in log if REQUEST_LINE.search(line))
    except OSError:
        return -1


def mirror_counts(metrics_url: str) -> dict[str, float]:
    """The transformer's mirror counters: sent, dropped per reason, queue depth."""
    import httpx

    counts: dict[str, float] = {"sent": 0.0, "dropped": 0.0, "queue_depth": 0.0}
    for line in httpx.get(metrics_url, timeout=5).text.splitlines():
        if line.startswith("fraud_mirror_sent_total "):
            counts["sent"] = float(line.split()[-1])
        elif line.startswith("fraud_mirror_dropped_total{"):
            reason = line[line.index('reason="') + 8 : line.index('"}')]
            counts[f"dropped_{reason}"] = float(line.split()[-1])
            counts["dropped"] += float(line.split()[-1])
        elif line.startswith("fraud_mirror_queue_depth "):
            counts["queue_depth"] = float(line.split()[-1])
    return counts


def drain_mirror(metrics_url: str | None, timeout_s: float = MIRROR_DRAIN_S) -> None:
    """Wait until the mirror has no backlog (at most ``timeout_s``)."""
    if metrics_url is None:
        return
    deadline = time.monotonic() + timeout_s
    while mirror_counts(metrics_url)["queue_depth"] > 0 and time.monotonic() < deadline:
        time.sleep(0.2)


# ------------------------------------------------------------------------------ measuring
@dataclass
class Session:
    """One started setup: sends measurements through the pool, tracking ids and answers."""

    pool: ClientPool
    running: Running
    workload: Workload
    cpu: ProcessCpu
    next_index: int = 0
    answered: int = 0
    warmup_errors: int = 0

    def run(self, clients: int, **options: Any) -> LoadResult:
        """One measurement; request ids continue where the previous one stopped."""
        result = self.pool.run(
            self.running.target,
            self.workload,
            start_index=self.next_index,
            clients=clients,
            server_cpu=self.cpu,
            **options,
        )
        self.next_index = result.next_index
        self.answered += result.answered_ok
        return result

    def warm_up(self, settings: Settings) -> None:
        """Sequential requests, then a short saturated run; then let the mirror catch up."""
        for result in (
            self.run(1, requests=settings.sequential_warmup),
            self.run(settings.clients, duration_s=settings.warmup_seconds),
        ):
            self.warmup_errors += result.errors + result.warmup_errors
        drain_mirror(self.running.metrics_url)


@contextlib.contextmanager
def session(
    setup: Setup,
    context: Context,
    pool: ClientPool,
    workloads: dict[str, Workload],
    prefix: str,
) -> Iterator[Session]:
    """Start ``setup`` and yield a :class:`Session` on it; stop it afterwards."""
    from load import ProcessCpu

    workload = dataclasses.replace(
        workloads[setup.workload], id_prefix=prefix, echo_id=setup.echo_id
    )
    with setup.start(context) as running:
        yield Session(pool, running, workload, ProcessCpu(running.pids()))


def round_checks(running: Running, answered: int) -> dict[str, Any]:
    """After a setup's round: its servers' flags and per-request log lines, the mirror's counts."""
    checks: dict[str, Any] = {
        "servers": {
            server.name: {
                "command": server.command(),
                "flags": server_flags(server.command()),
                "request_log_lines": request_log_lines(server.log_path),
                "log": str(server.log_path),
            }
            for server in running.servers
        },
        "answered": answered,
    }
    if running.metrics_url is not None:
        drain_mirror(running.metrics_url)
        counts = mirror_counts(running.metrics_url)
        offered = counts["sent"] + counts["dropped"] + counts["queue_depth"]
        checks["mirror"] = {**counts, "offered": offered, "matches_answers": offered == answered}
    return checks


def spread(values: list[float]) -> dict[str, float]:
    """Min, median and max."""
    return {
        "min": round(min(values), 3),
        "median": round(statistics.median(values), 3),
        "max": round(max(values), 3),
    }


FIGURES = {
    "seq_p50_ms": ("latency", "p50_ms"),
    "seq_p99_ms": ("latency", "p99_ms"),
    "rps": ("throughput", "rps"),
    "load_p50_ms": ("throughput", "p50_ms"),
    "load_p99_ms": ("throughput", "p99_ms"),
    "client_cpu_cores": ("throughput", "client_cpu_cores"),
    "server_cpu_cores": ("throughput", "server_cpu_cores"),
    "server_cpu_ms_per_request": ("throughput", "server_cpu_ms_per_request"),
}


def summarize(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Each figure's spread over the rounds; errors summed."""
    summary: dict[str, Any] = {
        name: spread([record[phase][key] for record in rounds])
        for name, (phase, key) in FIGURES.items()
    }
    summary["errors"] = sum(
        record["latency"]["errors"] + record["throughput"]["errors"] for record in rounds
    )
    return summary


# ------------------------------------------------------------------------------ output
def cell(figure: dict[str, float], digits: int) -> str:
    """The median, and the min-max range below it (rich markup)."""
    return (
        f"{figure['median']:,.{digits}f}\n"
        f"[dim]{figure['min']:,.{digits}f}-{figure['max']:,.{digits}f}[/dim]"
    )


def print_sweep(console: Console, sweep: dict[str, Any]) -> None:
    """The client-scaling table."""
    from rich.table import Table

    table = Table(
        title=f"Client scaling on {sweep['title']}, {sweep['seconds']:g} s each",
        title_justify="left",
    )
    for name in ("clients", "req/s", "p50 ms", "p99 ms", "client CPU", "server CPU", "errors"):
        table.add_column(name, justify="right")
    for point in sweep["points"]:
        table.add_row(
            str(point["clients"]),
            f"{point['rps']:,.0f}",
            f"{point['p50_ms']:.2f}",
            f"{point['p99_ms']:.2f}",
            f"{point['client_cpu_cores']:.2f} cores",
            f"{point['server_cpu_cores']:.2f} cores",
            str(point["errors"]),
        )
    console.print(table)


def print_results(console: Console, report: dict[str, Any]) -> None:
    """The results table and the checks."""
    from rich.table import Table

    settings = report["settings"]
    clients = settings["clients"]
    table = Table(
        title=(
            f"Serving: median, and min-max below it, of {settings['rounds']} rounds; "
            f"latency of {settings['sequential']:,} sequential requests; "
            f"throughput with {clients} clients for {settings['seconds']:g} s"
        ),
        title_justify="left",
    )
    table.add_column("setup")
    for name in (
        "seq p50 ms",
        "seq p99 ms",
        f"req/s @{clients}",
        f"p50 @{clients}",
        f"p99 @{clients}",
        "CPU ms/req",
    ):
        table.add_column(name, justify="right")
    table.add_column("errors", justify="right")
    for entry in report["setups"].values():
        summary = entry["summary"]
        table.add_row(
            entry["label"],
            cell(summary["seq_p50_ms"], 2),
            cell(summary["seq_p99_ms"], 2),
            cell(summary["rps"], 0),
            cell(summary["load_p50_ms"], 2),
            cell(summary["load_p99_ms"], 2),
            cell(summary["server_cpu_ms_per_request"], 2),
            str(summary["errors"]),
        )
    console.print(table)
    console.print(
        "CPU ms/req: the servers' CPU time per request at saturation (all their processes: "
        "broker and mirror producer included); it depends less on other load than the times do.",
        highlight=False,
    )
    for entry in report["setups"].values():
        console.print(entry["title"], highlight=False)
    for line in check_lines(report):
        console.print(line)


def check_lines(report: dict[str, Any]) -> list[str]:
    """What the checks found, one line each (rich markup); problems in red."""
    from rich.markup import escape

    lines = []
    flags = report["checks"]["server_flags"]
    if len(flags) == 1:
        lines.append(f"server flags, the same on every server: {next(iter(flags))}")
    else:
        lines.append(f"[red]server flags differ between servers: {escape(str(flags))}[/red]")
    logged = report["checks"]["request_log_lines"]
    want_lines = report["settings"]["request_logs"] == "on"
    if want_lines:
        quiet = [name for name, count in logged.items() if count <= 0]
        ok = not quiet
        text = f"per-request log lines (request logs on): {logged}"
    else:
        ok = all(count == 0 for count in logged.values())
        text = (
            "per-request log lines (request logs off): none in any server log"
            if ok
            else f"per-request log lines (request logs off): {logged}"
        )
    lines.append(escape(text) if ok else f"[red]{escape(text)}[/red]")
    for key, entry in report["setups"].items():
        for number, record in enumerate(entry["rounds"], 1):
            mirror = record["checks"].get("mirror")
            if mirror is None:
                continue
            text = (
                f"({key}) round {number}: {mirror['offered']:,.0f} records offered to the mirror "
                f"for {record['checks']['answered']:,} answers; {mirror['sent']:,.0f} sent, "
                f"{mirror['dropped']:,.0f} dropped"
            )
            reasons = {k[8:]: v for k, v in mirror.items() if k.startswith("dropped_") and v}
            if reasons:
                text += f" ({', '.join(f'{k} {v:,.0f}' for k, v in reasons.items())})"
            lines.append(text if mirror["matches_answers"] else f"[red]{text}[/red]")
        errors = [
            record[phase]["first_error"]
            for record in entry["rounds"]
            for phase in ("latency", "throughput")
            if record[phase]["first_error"]
        ]
        if errors:
            lines.append(f"[red]({key}) first error: {escape(errors[0])}[/red]")
        warmup_errors = sum(record["warmup_errors"] for record in entry["rounds"])
        if warmup_errors:
            lines.append(f"[yellow]({key}) {warmup_errors} failed warm-up requests[/yellow]")
    return lines


def collect_checks(report: dict[str, Any]) -> None:
    """Fold every round's server flags and log lines into ``report['checks']``."""
    flags: dict[str, list[str]] = {}
    logged: dict[str, int] = {}
    for key, entry in report["setups"].items():
        for record in entry["rounds"]:
            for name, server in record["checks"]["servers"].items():
                text = " ".join(f"{k} {v}" for k, v in sorted(server["flags"].items()))
                flags.setdefault(text, []).append(f"({key}) {name}")
                label = f"({key}) {name}"
                logged[label] = logged.get(label, 0) + server["request_log_lines"]
    report["checks"] = {"server_flags": flags, "request_log_lines": logged}


# ------------------------------------------------------------------------------ main
def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, Settings]:
    """Command-line options and the settings they select."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="Short phases (300 sequential requests, 2 s of saturation): a check, not figures.",
    )
    parser.add_argument("--rounds", type=int, help=f"Rounds (default {FULL.rounds}).")
    parser.add_argument(
        "--requests", type=int, help=f"Sequential requests per round (default {FULL.sequential})."
    )
    parser.add_argument(
        "--clients", type=int, help=f"Client processes at saturation (default {FULL.clients})."
    )
    parser.add_argument(
        "--seconds", type=float, help=f"Seconds of saturation per round (default {FULL.seconds:g})."
    )
    parser.add_argument(
        "--sweep",
        help="Comma-separated client counts of the client-scaling check; 'none' skips it "
        f"(default {','.join(map(str, FULL.sweep))}).",
    )
    parser.add_argument(
        "--sweep-on",
        default="a",
        help="The setup of the client-scaling check, which runs when that setup is selected "
        "(default a).",
    )
    parser.add_argument(
        "--only", default="", help="Comma-separated setup letters to run, e.g. a,d (default all)."
    )
    parser.add_argument(
        "--request-logs",
        choices=("off", "on"),
        default="off",
        help="Per-request logging (access log, KServe latency logging) on every server "
        "(default off).",
    )
    parser.add_argument("--trees", type=int, default=100, help="Trees of the forest (default 100).")
    parser.add_argument(
        "--depth", type=int, default=20, help="Maximum depth of its trees (default 20)."
    )
    parser.add_argument(
        "--seed", type=int, default=7, help="Seed of the generated data (default 7)."
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="The JSON result file (default .bench/bench_serving.json in the repository).",
    )
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    overrides: dict[str, Any] = {
        "rounds": args.rounds,
        "sequential": args.requests,
        "clients": args.clients,
        "seconds": args.seconds,
    }
    if args.sweep is not None:
        overrides["sweep"] = (
            () if args.sweep == "none" else tuple(int(part) for part in args.sweep.split(","))
        )
    settings = dataclasses.replace(
        settings, **{key: value for key, value in overrides.items() if value is not None}
    )
    if min(settings.rounds, settings.clients, settings.sequential, *settings.sweep) < 1:
        parser.error("--rounds, --clients, --requests and --sweep counts must be at least 1")
    if args.sweep_on not in {setup.key for setup in SETUPS}:
        parser.error(f"--sweep-on: no setup {args.sweep_on!r}")
    return args, settings


def measure_sweep(
    setup: Setup,
    settings: Settings,
    pool: ClientPool,
    workloads: dict[str, Workload],
    context: Context,
    progress: Any,
    task: Any,
) -> dict[str, Any]:
    """The client-scaling check: one started ``setup``, one timed run per client count."""
    points = []
    with session(setup, context, pool, workloads, "sweep-") as current:
        current.warm_up(settings)
        for clients in settings.sweep:
            progress.update(task, description=f"client scaling on {setup.label}: {clients}")
            progress.refresh()
            points.append(current.run(clients, duration_s=settings.sweep_seconds).summary())
            progress.advance(task)
    return {
        "setup": setup.key,
        "title": setup.title,
        "seconds": settings.sweep_seconds,
        "points": points,
    }


def measure_round(
    setup: Setup,
    number: int,
    settings: Settings,
    pool: ClientPool,
    workloads: dict[str, Workload],
    context: Context,
) -> dict[str, Any]:
    """Start ``setup``, warm it up, measure latency and throughput, check, stop."""
    began = time.monotonic()
    with session(setup, context, pool, workloads, f"r{number}{setup.key}-") as current:
        ready = time.monotonic()
        current.warm_up(settings)
        latency = current.run(1, requests=settings.sequential)
        drain_mirror(current.running.metrics_url)
        throughput = current.run(settings.clients, duration_s=settings.seconds)
        checks = round_checks(current.running, current.answered)
        stopping = time.monotonic()
    return {
        "latency": latency.summary(),
        "throughput": throughput.summary(),
        "checks": checks,
        "warmup_errors": current.warmup_errors,
        "start_s": round(ready - began, 1),
        "stop_s": round(time.monotonic() - stopping, 1),
    }


def main(argv: list[str] | None = None) -> None:
    """Measure every selected setup and print and write the results."""
    args, settings = parse_args(argv)
    from load import ClientPool
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    wanted = {part.strip() for part in args.only.split(",") if part.strip()}
    unknown = wanted - {setup.key for setup in SETUPS}
    if unknown:
        sys.exit(f"unknown setups: {', '.join(sorted(unknown))}")
    setups = [setup for setup in SETUPS if not wanted or setup.key in wanted]
    sweep_on = next((setup for setup in setups if setup.key == args.sweep_on), None)
    if sweep_on is None:
        settings = dataclasses.replace(settings, sweep=())
    # Wide enough for the results table when the output is not a terminal.
    console = Console(width=None if sys.stdout.isatty() else 120)
    work = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    started = datetime.now(UTC)
    load_before = os.getloadavg()
    report: dict[str, Any] = {
        "benchmark": "bench_serving",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "started": started.isoformat(timespec="seconds"),
        "machine": {
            "cores": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_average_before": [round(value, 2) for value in load_before],
        },
        "settings": {
            **dataclasses.asdict(settings),
            "request_logs": args.request_logs,
            "trees": args.trees,
            "depth": args.depth,
            "seed": args.seed,
        },
        "work_dir": str(work),
    }
    bundle, workloads = build_workloads(args.trees, args.depth, args.seed, work, console)
    request_logs = args.request_logs == "on"
    pool_size = max(settings.clients, *settings.sweep) if settings.sweep else settings.clients
    report["sweep"] = None
    report["setups"] = {}
    steps = len(settings.sweep) + settings.rounds * len(setups)
    with (
        ClientPool(pool_size) as pool,
        Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            auto_refresh=False,  # no refresh thread competing with the measurement
        ) as progress,
    ):
        task = progress.add_task("starting", total=steps)
        if sweep_on is not None and settings.sweep:
            context = Context(bundle, work / "logs" / "sweep", request_logs)
            report["sweep"] = measure_sweep(
                sweep_on, settings, pool, workloads, context, progress, task
            )
        for number in range(1, settings.rounds + 1):
            for setup in setups:
                progress.update(
                    task, description=f"round {number}/{settings.rounds}: {setup.label}"
                )
                progress.refresh()
                context = Context(
                    bundle, work / "logs" / f"round{number}-{setup.key}", request_logs
                )
                record = measure_round(setup, number, settings, pool, workloads, context)
                entry = report["setups"].setdefault(
                    setup.key, {"label": setup.label, "title": setup.title, "rounds": []}
                )
                entry["rounds"].append(record)
                latency, throughput = record["latency"], record["throughput"]
                progress.console.print(
                    f"round {number} {setup.label}: p50 {latency['p50_ms']:.2f} ms, "
                    f"p99 {latency['p99_ms']:.2f} ms; {throughput['rps']:,.0f} req/s "
                    f"@{settings.clients}; errors "
                    f"{latency['errors'] + throughput['errors']}"
                )
                progress.advance(task)
                progress.refresh()
                time.sleep(0.5)
    for entry in report["setups"].values():
        entry["summary"] = summarize(entry["rounds"])
    collect_checks(report)
    report["machine"]["load_average_after"] = [round(value, 2) for value in os.getloadavg()]
    report["duration_s"] = round((datetime.now(UTC) - started).total_seconds(), 1)

    console.print()
    if report["sweep"]:
        print_sweep(console, report["sweep"])
    print_results(console, report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    console.print(
        f"{os.cpu_count()} cores, load average {load_before[0]:.2f} before the run; "
        f"{report['duration_s']:.0f} s; results in {args.out}; server logs in {work / 'logs'}"
    )


if __name__ == "__main__":
    main()
