"""``fraud demo``: the whole loop on generated data, on this machine, in a few minutes.

1. **Data**: seeded transactions over ``days`` days whose spending and fraud patterns change
   from ``drift_start_day`` on; the first days are the history to train on, the last
   ``replay_days`` the traffic to come.
2. **First model**: the training pipeline (``kfp.local``) on the history (``train_days`` of
   training, as every run of the demo), tested on its last week (a temporal split: its recall
   and F1 are what the performance monitor holds live traffic to, so they must be measured on
   days after the training days, as live traffic is); it passes the gate and is promoted in
   the registry.
3. **The running system**: a local broker; the serving stack (transformer + predictor) on the
   event clock, mirroring every scored transaction and reading labels; ``fraud monitor``
   (feature drift, and performance from labels); ``fraud trigger`` (the retraining policy,
   starting ``kfp.local`` runs on the history plus the transactions labelled since).
4. **Traffic**: ``fraud replay`` sends the traffic to come in time order, at a steady rate,
   and publishes each label ``label_delay_days`` (of data time) after its transaction, as
   chargebacks do. The traffic holds while a retraining run is in flight, and while the
   monitor trails it by more than two windows (:class:`TrafficGate`), so every decision falls
   at the same place in data time on any machine, within those two windows.
5. **The loop**: the monitor is quiet before the drift and flags it after; the trigger starts a
   retraining run; a model that passes the gate is promoted and the servers follow it while
   the traffic flows.
6. **Results**: the timeline, the replay's figures (failed requests included), and the HTML
   monitoring report.

Every part runs as it would for a user: the same commands, as processes, with their logs kept
in ``<out>/logs``. Only the orchestration lives here.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

if TYPE_CHECKING:
    from fraud_detection.data.generator import GeneratorConfig

#: Seconds to wait for the last retraining run, and for a process to stop.
RUN_DEADLINE_S = 600.0
STOP_DEADLINE_S = 60.0
#: Seconds the servers may take to become ready (generous: the machine may be busy).
STARTUP_DEADLINE_S = 180.0
#: Seconds between two looks at the trigger's events and the monitor's results.
HOLD_POLL_S = 0.2
#: How far the monitor may trail the traffic, in drift windows (of ``window_hours``).
MONITOR_LAG_WINDOWS = 2


@dataclass(frozen=True)
class DemoConfig:
    """The demo's data, pace and places.

    Attributes:
        out_dir: where everything is written (data, registry, runs, logs, results, report).
        transactions: transactions generated over all ``days``.
        cards: cards generated.
        days: days of data.
        drift_start_day: the day spending and fraud change.
        replay_days: the last days, replayed as live traffic (the rest is the history).
        fraud_rate: the share of fraud in the data.
        rate: transactions per second of the replay.
        label_delay_days: days (of data time) after which a transaction's label is published.
        cool_down_days: the trigger's cool-down, in days of data time.
        drift_wait_days: how long drift must last before it starts a run (the label delay
            plus the test and a few training days: the run then learns from drifted traffic).
        train_days: the training window of every run (the days before its test days).
        test_days: the test window of a triggered run (the last labelled days): the new
            model's gate and drift reference come from it.
        window_hours: the longest drift window, in hours of data time (about 750
            transactions at the default volume; the monitor may trail the traffic by two).
        seed: the seed of the data and of every run.

    The defaults compress weeks into minutes: a day of traffic is replayed in about five
    seconds, labels come a day after their transaction (chargebacks take a week; the replay's
    own default), and fraud is 1 % of the traffic so that a day's recall rests on about 30
    frauds rather than 5.
    """

    out_dir: Path = Path("demo-output")
    transactions: int = 246_000
    cards: int = 4_000
    days: int = 82
    drift_start_day: int = 66
    replay_days: int = 18
    fraud_rate: float = 0.01
    rate: float = 600.0
    label_delay_days: float = 1.0
    cool_down_days: float = 3.0
    drift_wait_days: float = 4.0
    train_days: int = 14
    test_days: int = 3
    window_hours: float = 6.0
    seed: int = 42

    def __post_init__(self) -> None:
        if not 0 < self.replay_days < self.days:
            raise ValueError(
                f"replay_days: must be in (0, days={self.days}), got {self.replay_days}"
            )
        if not self.days - self.replay_days < self.drift_start_day < self.days:
            raise ValueError(
                "drift_start_day: must fall in the replayed days "
                f"({self.days - self.replay_days}..{self.days - 1}), got {self.drift_start_day}"
            )
        if self.rate <= 0:
            raise ValueError(f"rate: must be > 0, got {self.rate}")


@dataclass(frozen=True)
class DemoPaths:
    """Where the demo writes each thing."""

    root: Path

    @property
    def history(self) -> Path:
        """The history to train on."""
        return self.root / "history.parquet"

    @property
    def traffic(self) -> Path:
        """The traffic to replay."""
        return self.root / "traffic.parquet"

    @property
    def registry(self) -> Path:
        """The model registry."""
        return self.root / "registry"

    @property
    def runs(self) -> Path:
        """The pipeline runs' directories."""
        return self.root / "runs"

    @property
    def logs(self) -> Path:
        """Every process's log."""
        return self.root / "logs"

    @property
    def results(self) -> Path:
        """The monitor's results (JSON lines)."""
        return self.root / "monitoring-results.jsonl"

    @property
    def events(self) -> Path:
        """The trigger's events (JSON lines)."""
        return self.root / "retrain-events.jsonl"

    @property
    def replay_summary(self) -> Path:
        """The replay's figures (JSON)."""
        return self.root / "replay-summary.json"

    @property
    def report(self) -> Path:
        """The HTML monitoring report."""
        return self.root / "monitoring-report.html"

    @property
    def monitor_state(self) -> Path:
        """The performance monitor's state."""
        return self.root / "monitor-state"

    def clear(self) -> None:
        """Remove what an earlier demo left here (nothing else in the directory)."""
        import shutil

        for directory in (self.registry, self.runs, self.logs, self.monitor_state):
            shutil.rmtree(directory, ignore_errors=True)
        for path in (self.history, self.traffic, self.results, self.events):
            path.unlink(missing_ok=True)
        for path in (self.replay_summary, self.report):
            path.unlink(missing_ok=True)


def fraud_command(*args: str) -> list[str]:
    """The ``fraud`` command line run by this interpreter."""
    return [sys.executable, "-m", "fraud_detection", *args]


def generator_config(config: DemoConfig) -> GeneratorConfig:
    """The generator's settings for the demo's data."""
    from fraud_detection.data.generator import GeneratorConfig

    return GeneratorConfig(
        n_transactions=config.transactions,
        n_cards=config.cards,
        days=config.days,
        fraud_rate=config.fraud_rate,
        seed=config.seed,
        drift_start_day=config.drift_start_day,
    )


def generate_data(config: DemoConfig, paths: DemoPaths) -> tuple[int, int]:
    """Write the history and the traffic; return their transaction counts."""
    import pandas as pd

    from fraud_detection.data.files import write_transactions
    from fraud_detection.data.generator import generate_transactions
    from fraud_detection.schema import TIMESTAMP

    generator = generator_config(config)
    frame = generate_transactions(generator)
    cut = generator.start_timestamp + pd.Timedelta(days=config.days - config.replay_days)
    history, traffic = frame[frame[TIMESTAMP] < cut], frame[frame[TIMESTAMP] >= cut]
    paths.root.mkdir(parents=True, exist_ok=True)
    write_transactions(history, paths.history)
    write_transactions(traffic, paths.traffic)
    return len(history), len(traffic)


class Processes:
    """Background processes started by the demo, each logging to its own file; all stopped
    (SIGTERM, then SIGKILL after a deadline) when the demo ends, however it ends."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.running: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, command: Sequence[str]) -> subprocess.Popen[bytes]:
        """Start ``command`` with its output in ``<log_dir>/<name>.log``."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with (self.log_dir / f"{name}.log").open("wb") as log:
            proc = subprocess.Popen(
                list(command), stdout=log, stderr=subprocess.STDOUT, process_group=0
            )
        self.running[name] = proc
        return proc

    def check(self) -> None:
        """Raise when a background process has exited on its own."""
        for name, proc in self.running.items():
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{name} exited with status {proc.returncode}; see {self.log_dir / name}.log"
                )

    def stop(self, name: str) -> int | None:
        """Stop one process (SIGTERM, SIGKILL to its group after the deadline)."""
        proc = self.running.pop(name, None)
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_DEADLINE_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        return proc.returncode

    def stop_all(self) -> None:
        """Stop every process still running, the last started first."""
        for name in reversed(list(self.running)):
            self.stop(name)


@contextlib.contextmanager
def background(log_dir: Path) -> Iterator[Processes]:
    """:class:`Processes` that are all stopped on exit."""
    processes = Processes(log_dir)
    try:
        yield processes
    finally:
        processes.stop_all()


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file (a partly written last line is left out)."""
    return JsonlTail(path).read()


def runs_in_flight(events: Path) -> int:
    """Retraining runs started and not finished, from the trigger's events."""
    counts = {"started": 0, "finished": 0}
    for event in read_jsonl(events):
        if event.get("event") in counts:
            counts[event["event"]] += 1
    return counts["started"] - counts["finished"]


def wait_for(condition: Any, deadline_s: float, processes: Processes, poll_s: float = 1.0) -> bool:
    """Poll ``condition`` until true (True) or the deadline (False); a process that dies ends
    the wait with its error."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if condition():
            return True
        processes.check()
        time.sleep(poll_s)
    return bool(condition())


def iso_micros(text: Any) -> int | None:
    """Microseconds since the epoch of an ISO-8601 time (None when it is not one)."""
    from fraud_detection.features import timestamp_to_micros

    try:
        return timestamp_to_micros(str(text))
    except ValueError:
        return None


def replay_position(summary: Path) -> tuple[int | None, int | None]:
    """The first and the latest data time the replay has sent (from its summary file)."""
    with contextlib.suppress(OSError, json.JSONDecodeError, AttributeError):
        body = json.loads(summary.read_text())
        return iso_micros(body.get("first_data_time")), iso_micros(body.get("last_data_time"))
    return None, None


def monitor_position(results: Sequence[dict[str, Any]]) -> int | None:
    """The data time the monitor's closed drift windows reach (None before the first)."""
    ends = [
        iso_micros(record.get("end")) for record in results if record.get("kind") == "feature_drift"
    ]
    return max((end for end in ends if end is not None), default=None)


class TrafficGate:
    """Whether the replay should hold: while a retraining run is in flight, or while the
    monitor's windows trail the traffic by more than ``max_lag_s`` of data time.

    The demo compresses weeks into minutes, so a run of a minute would otherwise span days of
    traffic, and a monitor a few seconds behind would decide days late; in production a run
    takes about an hour and the monitor keeps up. Holding the traffic keeps every decision at
    the same place in data time on any machine (within ``max_lag_s``), however fast it is.
    """

    def __init__(self, paths: DemoPaths, max_lag_s: float) -> None:
        self.paths = paths
        self.max_lag_micros = round(max_lag_s * 1_000_000)
        self.results = JsonlTail(paths.results)

    def reason(self) -> str | None:
        """Why the traffic should hold now (None: it may flow)."""
        if runs_in_flight(self.paths.events) > 0:
            return "retraining"
        return None if self.monitor_keeps_up() else "monitor"

    def monitor_keeps_up(self) -> bool:
        """Whether the monitor's windows reach within ``max_lag_s`` of the traffic sent."""
        first, sent = replay_position(self.paths.replay_summary)
        if sent is None:
            return True
        reached = monitor_position(self.results.read())
        return sent - (reached if reached is not None else first or sent) <= self.max_lag_micros


class JsonlTail:
    """The JSON objects of a growing JSON-lines file, read incrementally (whole lines only)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.records: list[dict[str, Any]] = []

    def read(self) -> list[dict[str, Any]]:
        """Every object so far."""
        with contextlib.suppress(FileNotFoundError), self.path.open("rb") as handle:
            handle.seek(self.offset)
            chunk = handle.read()
            complete = chunk.rfind(b"\n") + 1
            self.offset += complete
            for line in chunk[:complete].splitlines():
                with contextlib.suppress(json.JSONDecodeError):
                    value = json.loads(line)
                    if isinstance(value, dict):
                        self.records.append(value)
        return self.records


def replay_traffic(
    config: DemoConfig,
    paths: DemoPaths,
    url: str,
    bootstrap: str,
    processes: Processes,
    gate: TrafficGate,
) -> dict[str, float]:
    """Run ``fraud replay`` on the traffic, held by a :class:`TrafficGate`; return the seconds
    held, by reason."""
    pause = paths.root / "replay.pause"
    pause.unlink(missing_ok=True)
    command = fraud_command(
        "replay",
        "--data",
        str(paths.traffic),
        "--url",
        url,
        "--bootstrap",
        bootstrap,
        "--rate",
        f"{config.rate:g}",
        "--label-delay-days",
        f"{config.label_delay_days:g}",
        "--summary",
        str(paths.replay_summary),
        "--pause-file",
        str(pause),
    )
    held: dict[str, float] = {}
    since: tuple[str, float] | None = None
    with subprocess.Popen(command) as replay:
        try:
            while replay.poll() is None:
                reason, now = gate.reason(), time.monotonic()
                if since is not None and reason != since[0]:
                    held[since[0]] = held.get(since[0], 0.0) + now - since[1]
                    since = None
                    pause.unlink(missing_ok=True)
                if reason is not None and since is None:
                    pause.touch()
                    since = (reason, now)
                if since is not None and now - since[1] > RUN_DEADLINE_S:
                    raise RuntimeError(
                        f"the traffic was held for {RUN_DEADLINE_S:.0f} s ({since[0]}); see "
                        f"{paths.logs}"
                    )
                processes.check()
                time.sleep(HOLD_POLL_S)
        finally:
            pause.unlink(missing_ok=True)
            if replay.poll() is None:
                replay.terminate()
    if replay.returncode:
        raise subprocess.CalledProcessError(replay.returncode, command)
    return held


def run_demo(config: DemoConfig, console: Console | None = None) -> dict[str, Any]:
    """Run the whole loop; return the outcome (see the module docstring for the steps)."""
    from fraud_detection.registry import ModelRegistry
    from fraud_detection.serving.launcher import ServingStack, StackConfig
    from fraud_detection.streaming.broker import LocalBroker
    from fraud_detection.streaming.kafka import Topics

    console = console or Console()
    paths = DemoPaths(config.out_dir)
    history_days = config.days - config.replay_days
    started = time.monotonic()

    console.rule(f"1. data [{time.monotonic() - started:.0f} s]")
    paths.clear()
    with console.status("generating transactions"):
        history, traffic = generate_data(config, paths)
    console.print(
        f"{history:,} transactions of history (days 0-{history_days - 1}) in {paths.history}; "
        f"{traffic:,} of traffic to replay (days {history_days}-{config.days - 1}) in "
        f"{paths.traffic}; spending and fraud change from day {config.drift_start_day}"
    )

    console.rule(f"2. the first model [{time.monotonic() - started:.0f} s]")
    subprocess.run(
        fraud_command(
            "pipeline",
            "run",
            "--data",
            str(paths.history),
            "--registry",
            str(paths.registry),
            "--output-dir",
            str(paths.runs / "initial"),
            "--seed",
            str(config.seed),
            "--reason",
            "initial model",
            "--split",
            "temporal",
            "--param",
            f"train_days={config.train_days}",
        ),
        check=True,
    )
    registry = ModelRegistry(paths.registry)
    first_version = registry.current_version()

    console.rule(f"3. the running system [{time.monotonic() - started:.0f} s]")
    topics = Topics.from_env()
    paths.logs.mkdir(parents=True, exist_ok=True)
    with (
        LocalBroker(log_path=paths.logs / "broker.log") as broker,
        ServingStack(
            StackConfig(
                registry=paths.registry,
                kafka=broker.bootstrap_servers,
                clock="event",
                state_dir=None,
                log_dir=paths.logs,
                startup_timeout_s=STARTUP_DEADLINE_S,
            )
        ) as stack,
        background(paths.logs) as processes,
    ):
        bootstrap = broker.bootstrap_servers
        processes.start(
            "monitor",
            fraud_command(
                "monitor",
                "--kafka",
                bootstrap,
                "--registry",
                str(paths.registry),
                "--results-file",
                str(paths.results),
                "--state-dir",
                str(paths.monitor_state),
                "--metrics-port",
                "0",
                "--max-span",
                f"{config.window_hours * 3600:g}",
            ),
        )
        processes.start(
            "trigger",
            fraud_command(
                "trigger",
                "--results-file",
                str(paths.results),
                "--events-file",
                str(paths.events),
                "--kafka",
                bootstrap,
                "--registry",
                str(paths.registry),
                "--runs-dir",
                str(paths.runs),
                "--data",
                str(paths.history),
                "--kafka-topic",
                topics.transactions,
                "--cool-down-days",
                f"{config.cool_down_days:g}",
                "--drift-wait-days",
                f"{config.drift_wait_days:g}",
                "--train-days",
                str(config.train_days),
                "--param",
                f"seed={config.seed}",
                "--param",
                f"test_days={config.test_days}",
                "--param",
                "gap_days=0",
            ),
        )
        console.print(
            f"broker {bootstrap}; transformer {stack.url} serving {first_version}; monitor and "
            f"trigger running (logs in {paths.logs})"
        )

        console.rule(f"4. traffic [{time.monotonic() - started:.0f} s]")
        gate = TrafficGate(paths, max_lag_s=MONITOR_LAG_WINDOWS * config.window_hours * 3600)
        held = replay_traffic(config, paths, stack.url, bootstrap, processes, gate)
        console.print(
            f"traffic held {held.get('retraining', 0):.0f} s while retraining runs were in "
            f"flight and {held.get('monitor', 0):.0f} s for the monitor to catch up"
        )

        console.rule(f"5. the monitor catches up [{time.monotonic() - started:.0f} s]")
        with console.status("waiting for the monitor to catch up"):
            wait_for(gate.monitor_keeps_up, RUN_DEADLINE_S, processes)
        if runs_in_flight(paths.events) > 0:
            console.print(
                "a retraining run started at the end of the traffic: no traffic is left for "
                "its model, so it is stopped"
            )
        processes.stop("trigger")  # stops a run in flight too
        processes.stop("monitor")
        served = registry.current_version()

    console.rule(f"6. results [{time.monotonic() - started:.0f} s]")
    outcome = summarize(config, paths, first_version, served, console)
    outcome["wall_seconds"] = round(time.monotonic() - started, 1)
    console.print(f"the demo took {outcome['wall_seconds']:.0f} s")
    return outcome


def summarize(
    config: DemoConfig, paths: DemoPaths, first: str | None, served: str | None, console: Console
) -> dict[str, Any]:
    """Print the timeline and the figures, write the report; return the outcome.

    The loop closed when a retrained model was promoted while the traffic flowed, no request
    failed, the monitor tested the model served at the end against its own reference, and that
    model flagged drift in a smaller share of its windows than the first model did after the
    drift day. The alarms do not all end within the demo: a level shift in spending moves the
    features over 30 days of history (``card_mean_amt_30d``, and ``amt_deviation`` against it)
    for 30 days, so each reference drawn before then is overtaken; the table shows which
    columns each version still flagged.
    """
    import pandas as pd

    from fraud_detection.monitoring.report import render_monitoring_report
    from fraud_detection.monitoring.timeline import render_timeline, timeline_rows

    records = read_jsonl(paths.results) + read_jsonl(paths.events)
    console.print(render_timeline(timeline_rows(records)))
    render_monitoring_report(records, paths.report, title="fraud detection: the monitoring loop")
    replay = json.loads(paths.replay_summary.read_text())
    promoted = [
        event
        for event in read_jsonl(paths.events)
        if event.get("event") == "finished" and event.get("new_model_version")
    ]
    versions = drift_by_version(records)
    console.print(versions_table(versions, first))
    start = generator_config(config).start_timestamp
    drift_day = start + pd.Timedelta(days=config.drift_start_day)
    after_drift = drift_by_version(records, since=drift_day.strftime("%Y-%m-%dT%H:%M:%S"))
    first_share = drift_share(after_drift.get(first or ""))
    final = versions.get(served or "", {"tested": 0, "drifted": 0})
    final_share = drift_share(final)
    outcome = {
        "first_model_version": first,
        "served_model_version": served,
        "retraining_runs_promoted": len(promoted),
        "requests_failed": replay["rejected_total"],
        "transactions_scored": replay["scored"],
        "first_model_drift_windows_after_the_drift_day": _share_text(after_drift.get(first or "")),
        "served_model_drift_windows": _share_text(final),
        "report": str(paths.report),
        "loop_closed": bool(promoted)
        and served != first
        and replay["rejected_total"] == 0
        and final_share is not None
        and (first_share is None or final_share < first_share),
    }
    if outcome["loop_closed"]:
        verdict = (
            f"the loop closed: {len(promoted)} retrained model(s) promoted while traffic flowed, "
            "no request failed, and the alarms fell: the model served at the end flagged drift "
            f"in {outcome['served_model_drift_windows']} windows, the first model in "
            f"{outcome['first_model_drift_windows_after_the_drift_day']} after the drift day"
        )
    else:
        verdict = (
            "the loop did not close on this run: "
            f"{len(promoted)} model(s) promoted, {replay['rejected_total']} request(s) failed, "
            f"the model served at the end flagged drift in "
            f"{outcome['served_model_drift_windows']} windows (see the timeline and the report)"
        )
    console.print(verdict)
    console.print(json.dumps(outcome, indent=2, default=str))
    return outcome


def _share_text(figures: dict[str, Any] | None) -> str:
    """``drifted of tested`` (``0 of 0`` without windows)."""
    figures = figures or {"tested": 0, "drifted": 0}
    return f"{figures['drifted']} of {figures['tested']}"


def drift_by_version(
    records: Sequence[dict[str, Any]], since: str | None = None
) -> dict[str, dict[str, Any]]:
    """Per model version, in the order served: tested drift windows, how many drifted, which
    columns flagged how often, and when its windows start and end (one result per
    ``window_id``; with ``since``, only the windows ending at or after it)."""
    seen: dict[str, dict[str, Any]] = {}
    versions: dict[str, dict[str, Any]] = {}
    for record in records:
        if record.get("kind") == "feature_drift" and record.get("tested"):
            seen[str(record.get("window_id"))] = record
    for record in sorted(seen.values(), key=lambda r: str(r.get("end"))):
        if since is not None and str(record.get("end")) < since:
            continue
        version = versions.setdefault(
            str(record.get("model_version")),
            {"tested": 0, "drifted": 0, "first": record.get("start"), "last": None},
        )
        version["tested"] += 1
        version["drifted"] += bool(record.get("is_drift"))
        version["last"] = record.get("end")
        flagged = version.setdefault("flagged", {})
        for name in record.get("drifted") or ():
            flagged[name] = flagged.get(name, 0) + 1
    return versions


def drift_share(figures: dict[str, Any] | None) -> float | None:
    """The share of a version's tested windows that drifted (None without any)."""
    if not figures or not figures["tested"]:
        return None
    return figures["drifted"] / figures["tested"]


def versions_table(versions: dict[str, dict[str, Any]], first: str | None) -> Any:
    """A table of each served version's drift windows and the columns that flagged most."""
    from rich.table import Table

    table = Table(title="drift windows by served model version")
    for column in ("model version", "windows from", "to", "tested", "drifted", "flagged most"):
        table.add_column(column)
    for version, figures in versions.items():
        label = f"{version} (first)" if version == first else version
        flagged = sorted((figures.get("flagged") or {}).items(), key=lambda item: -item[1])
        table.add_row(
            label,
            str(figures["first"])[:16],
            str(figures["last"])[:16],
            str(figures["tested"]),
            str(figures["drifted"]),
            ", ".join(f"{name} {count}" for name, count in flagged[:3]),
        )
    return table


def demo(
    out: Annotated[Path, typer.Option(help="Where everything is written.")] = Path("demo-output"),
    transactions: Annotated[
        int, typer.Option(min=10_000, help="Transactions generated over all the days.")
    ] = DemoConfig.transactions,
    cards: Annotated[int, typer.Option(min=100, help="Cards generated.")] = DemoConfig.cards,
    days: Annotated[int, typer.Option(min=2, help="Days of data.")] = DemoConfig.days,
    drift_start_day: Annotated[
        int, typer.Option(help="The day spending and fraud change (in the replayed days).")
    ] = DemoConfig.drift_start_day,
    replay_days: Annotated[
        int, typer.Option(min=1, help="The last days, replayed as live traffic.")
    ] = DemoConfig.replay_days,
    fraud_rate: Annotated[
        float, typer.Option(min=0.0001, max=0.5, help="Share of fraud in the data.")
    ] = DemoConfig.fraud_rate,
    rate: Annotated[
        float, typer.Option(min=1.0, help="Replayed transactions per second.")
    ] = DemoConfig.rate,
    label_delay_days: Annotated[
        float, typer.Option(min=0.0, help="Days of data time before a label is published.")
    ] = DemoConfig.label_delay_days,
    cool_down_days: Annotated[
        float, typer.Option(min=0.0, help="The trigger's cool-down, in days of data time.")
    ] = DemoConfig.cool_down_days,
    drift_wait_days: Annotated[
        float, typer.Option(min=0.0, help="Days drift must last before it starts a run.")
    ] = DemoConfig.drift_wait_days,
    train_days: Annotated[
        int, typer.Option(min=1, help="Training window (days) of a triggered run.")
    ] = DemoConfig.train_days,
    test_days: Annotated[
        int, typer.Option(min=1, help="Test window (last labelled days) of a triggered run.")
    ] = DemoConfig.test_days,
    seed: Annotated[int, typer.Option(help="Seed of the data and the runs.")] = DemoConfig.seed,
) -> None:
    """Run the whole loop on generated data: train, serve, replay with delayed labels, monitor,
    retrain on drift, promote; print the timeline and write the monitoring report."""
    console = Console()
    try:
        config = DemoConfig(
            out_dir=out,
            transactions=transactions,
            cards=cards,
            days=days,
            drift_start_day=drift_start_day,
            replay_days=replay_days,
            fraud_rate=fraud_rate,
            rate=rate,
            label_delay_days=label_delay_days,
            cool_down_days=cool_down_days,
            drift_wait_days=drift_wait_days,
            train_days=train_days,
            test_days=test_days,
            seed=seed,
        )
    except ValueError as exc:
        Console(stderr=True).print(f"error: {exc}", markup=False)
        raise typer.Exit(2) from exc
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        outcome = run_demo(config, console)
    except KeyboardInterrupt:
        Console(stderr=True).print("interrupted: everything the demo started was stopped")
        raise typer.Exit(130) from None
    raise typer.Exit(0 if outcome["requests_failed"] == 0 else 1)


def _interrupt(signum: int, frame: Any) -> None:
    """SIGTERM ends the demo as Ctrl-C does: every process it started is stopped."""
    raise KeyboardInterrupt


def register(app: typer.Typer) -> None:
    """Add ``fraud demo`` to the ``fraud`` command line."""
    app.command("demo")(demo)
