"""The retraining trigger's shell: read monitoring results, run the policy, start training runs.

Results come from the ``fraud-monitoring`` topic (consumer group ``fraud-retrain-trigger``,
offsets committed once a batch is handled) or from a results JSON-lines file followed like
``tail -f`` (read from its start, so a replay decides as the live traffic did). Each one goes
through the pure policy (:func:`fraud_detection.monitoring.trigger.decide`); a bad record is
counted by reason and skipped.

The served model is the registry's current version when the registry has one (its bundle's
manifest gives ``data_end`` for the schedule rule); without one (a cluster whose registry the
trigger cannot see) the served version follows the results, and bundles are found with the
:class:`~fraud_detection.monitoring.reference.BundleLocator` given.

A decision that fires starts a run:

* locally, a ``fraud pipeline run`` subprocess (``kfp.local``) with ``--reason``, the data and
  split options given to the trigger and ``--output-dir <runs dir>/run-<time>-<reason>``; its
  output goes to ``trigger.log`` in that directory, its exit status is read when it ends
  (0 deployed, 3 refused by the gate, 1 failed);
* in a cluster, ``fraud pipeline submit`` semantics
  (:func:`fraud_detection.pipeline.client.submit` with the reason); the run's state is polled
  until it ends.

At most one run is in flight. Every decision (fired or suppressed) and every run's end is logged,
counted (:class:`TriggerMetrics`) and written as an event record (:func:`event_record`; a
suppression repeating the previous one, same rules and same cause, only counted) to the
events file and to the results topic (``kind: "retrain"``, which the policy ignores when it reads
it back). The cool-down survives a restart: the last ``started`` event of the events file is read
back when the trigger starts.

Stopping (SIGTERM or Ctrl-C) stops a local run in flight too (SIGTERM to its process group, then
SIGKILL after a grace period) and records it as ``finished`` with outcome ``stopped``: a local
run is a child of the trigger and would otherwise be orphaned, and a stopped run deploys nothing
(the registry switches its ``current`` pointer atomically, as the last step). A cluster run is
left running: it belongs to the cluster.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from fraud_detection.metrics_registry import registry_or_new, show_at_zero
from fraud_detection.monitoring.trigger import (
    BAD_REASONS,
    DRIFT_KIND,
    PERFORMANCE_KIND,
    RULES,
    SUPPRESSIONS,
    Decision,
    DriftResult,
    ResultRecordError,
    ServedModel,
    TriggerConfig,
    TriggerState,
    decide,
    is_new_version,
    parse_result,
    run_finished,
    run_started,
)

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from fraud_detection.monitoring.reference import BundleLocator

log = logging.getLogger(__name__)

#: The trigger's consumer group on the results topic.
DEFAULT_GROUP = "fraud-retrain-trigger"
EVENT_KIND = "retrain"
EVENT_CE_TYPE = "org.fraud-detection.monitoring.retrain"
EVENT_CE_SOURCE = "urn:fraud-detection:retrain-trigger"
#: Run outcomes, by the exit status of ``fraud pipeline run`` (anything else: ``failed``).
LOCAL_OUTCOMES: dict[int, str] = {0: "deployed", 3: "gate_refused", 2: "invalid_arguments"}
#: Every outcome a finished run can have.
OUTCOMES: tuple[str, ...] = (
    "deployed",
    "gate_refused",
    "invalid_arguments",
    "failed",
    "stopped",
    "succeeded",
    "not_started",
)
#: Terminal states of a Kubeflow Pipelines run, and the outcome each one is.
KFP_TERMINAL: dict[str, str] = {
    "SUCCEEDED": "succeeded",
    "FAILED": "failed",
    "SKIPPED": "failed",
    "CANCELED": "stopped",
    "CANCELLED": "stopped",
}
#: The exit code recorded for a cluster run's outcome (as ``fraud pipeline run`` would exit).
KFP_EXIT_CODES: dict[str, int] = {"succeeded": 0, "failed": 1, "stopped": 1}
TRIGGER_LOG = "trigger.log"
METRICS_FILE = "metrics.json"


# ------------------------------------------------------------------------------ metrics
class TriggerMetrics:
    """The trigger's Prometheus metrics, in a registry of its own.

    ======================================================  =======================================
    ``fraud_trigger_results_total{kind}``                   results read (feature_drift,
                                                            performance, other)
    ``fraud_trigger_records_skipped_total{reason}``         bad records skipped, by reason
    ``fraud_trigger_decisions_total{rule,action}``          decisions per rule that held; action
                                                            ``fired``, ``in_flight``, ``cool_down``
    ``fraud_trigger_runs_started_total``                    runs started
    ``fraud_trigger_runs_finished_total{outcome}``          runs ended, by outcome
    ``fraud_trigger_run_in_flight``                         1 while a run is in flight
    ``fraud_trigger_stream_time_seconds``                   the stream's time (Unix seconds)
    ======================================================  =======================================
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        from prometheus_client import Counter, Gauge

        r = self.registry = registry_or_new(registry)
        self.results = Counter(
            "fraud_trigger_results", "Monitoring records read, by kind.", ["kind"], registry=r
        )
        self.skipped = show_at_zero(
            Counter(
                "fraud_trigger_records_skipped",
                "Bad records skipped, by reason.",
                ["reason"],
                registry=r,
            ),
            BAD_REASONS,
        )
        self.decisions = show_at_zero(
            Counter(
                "fraud_trigger_decisions",
                "Decisions of each rule that held: fired, or suppressed (in_flight, cool_down).",
                ["rule", "action"],
                registry=r,
            ),
            itertools.product(RULES, ("fired", *SUPPRESSIONS)),
        )
        self.started = Counter("fraud_trigger_runs_started", "Runs started.", registry=r)
        self.finished = show_at_zero(
            Counter(
                "fraud_trigger_runs_finished", "Runs ended, by outcome.", ["outcome"], registry=r
            ),
            OUTCOMES,
        )
        self.in_flight = Gauge(
            "fraud_trigger_run_in_flight", "1 while a run is in flight.", registry=r
        )
        self.stream_time = Gauge(
            "fraud_trigger_stream_time_seconds",
            "The stream's time: the latest result end seen (Unix seconds).",
            registry=r,
        )

    def decided(self, decision: Decision) -> None:
        """Count a decision once per rule that held."""
        action = decision.suppressed_by or "fired"
        for rule in decision.rules:
            self.decisions.labels(rule=rule, action=action).inc()


# ------------------------------------------------------------------------------ events
def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def event_record(
    event: str,
    at: datetime | None,
    reason: str,
    model_version: str | None,
    run: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A ``retrain`` event: ``started``, ``finished`` or ``suppressed``.

    ``at`` is the stream's time, ``wall_time`` the machine's; ``run`` names the run (``name``
    and ``dir`` or ``id``); ``extra`` adds e.g. ``exit_code``, ``outcome``,
    ``new_model_version`` or ``suppressed_by``.
    """
    return {
        "kind": EVENT_KIND,
        "event": event,
        "at": _iso(at),
        "wall_time": _iso(datetime.now(UTC)),
        "reason": reason,
        "run": run,
        "model_version": model_version,
        **extra,
    }


@dataclass(frozen=True)
class _Line:
    """An event as :class:`~fraud_detection.monitoring.sinks.JsonLinesSink` writes it."""

    record: dict[str, Any]

    def to_json(self) -> bytes:
        return orjson.dumps(self.record, option=orjson.OPT_SORT_KEYS)


class EventWriter:
    """Writes events to a JSON-lines file (synced) and a topic (acknowledged); a failure is
    logged, never fatal: the trigger's decisions matter more than their record."""

    def __init__(
        self, path: Path | None, bootstrap: str | None = None, topic: str | None = None
    ) -> None:
        from fraud_detection.monitoring.sinks import JsonLinesSink

        self.file = JsonLinesSink(path) if path is not None else None
        self.topic = topic
        self._producer: Any = None
        if topic is not None:
            from fraud_detection.streaming.kafka import make_producer

            self._producer = make_producer(bootstrap, acks="all", max_block_ms=30_000)

    def write(self, record: dict[str, Any]) -> None:
        """Write one event everywhere it goes."""
        if self.file is not None:
            try:
                self.file.write([_Line(record)])  # type: ignore[list-item]
            except Exception as exc:
                log.error("could not write the event to %s: %s", self.file.path, exc)
        if self._producer is not None:
            self._produce(record)

    def _produce(self, record: dict[str, Any]) -> None:
        from cloudevents.http import CloudEvent
        from cloudevents.kafka import to_binary

        run = record.get("run") or {}
        key = str(run.get("name") or record.get("model_version") or "")
        event = CloudEvent(
            {
                "type": EVENT_CE_TYPE,
                "source": EVENT_CE_SOURCE,
                "id": f"{key}:{record['event']}:{record['at']}",
                "subject": str(record.get("model_version") or ""),
                "time": record["at"] or record["wall_time"],
                "datacontenttype": "application/json",
            },
            _Line(record).to_json(),
        )
        message = to_binary(event, data_marshaller=lambda data: data)
        try:
            self._producer.send(
                self.topic,
                key=key.encode(),
                value=message.value,
                headers=list(message.headers.items()),
            ).get(timeout=30)
        except Exception as exc:
            log.error("could not write the event to topic %r: %s", self.topic, exc)

    def close(self) -> None:
        """Close the file and the producer."""
        if self.file is not None:
            self.file.close()
        if self._producer is not None:
            with contextlib.suppress(Exception):
                self._producer.close(timeout=10)


def last_started(path: Path | None) -> datetime | None:
    """The stream time of the last ``started`` event in an events file (None: none)."""
    if path is None or not path.is_file():
        return None
    latest = None
    with path.open("rb") as handle:
        for line in handle:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("event") == "started" and record.get("at"):
                with contextlib.suppress(ValueError, TypeError):
                    moment = datetime.fromisoformat(record["at"])
                    latest = moment if latest is None else max(latest, moment)
    return latest


# ------------------------------------------------------------------------------ sources
class ResultSource(Protocol):
    """Where result records come from."""

    def poll(self, stop: threading.Event, timeout_s: float) -> list[bytes]:
        """The next records (raw JSON); waits up to ``timeout_s`` when there are none."""
        ...

    def handled(self) -> None:
        """The records returned so far are handled (a topic commits its offsets)."""
        ...

    def close(self) -> None:
        """Release what the source holds."""
        ...


class FileSource:
    """Follows a JSON-lines file like ``tail -f``: from its start, waiting for it to appear,
    starting again from the top when it is truncated or replaced."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._handle: Any = None
        self._inode: int | None = None
        self._partial = b""

    def poll(self, stop: threading.Event, timeout_s: float) -> list[bytes]:
        """Whole lines appended since the last poll."""
        if self._handle is None and not self._open():
            stop.wait(timeout_s)
            return []
        data = self._handle.read()
        if not data:
            self._reopen_if_replaced()
            stop.wait(timeout_s)
            return []
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        return [line for line in lines if line.strip()]

    def _open(self) -> bool:
        try:
            self._handle = self.path.open("rb")
        except FileNotFoundError:
            return False
        self._inode = os.fstat(self._handle.fileno()).st_ino
        self._partial = b""
        return True

    def _reopen_if_replaced(self) -> None:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return
        if stat.st_ino != self._inode or stat.st_size < self._handle.tell():
            log.info("%s was replaced or truncated: reading it from the start", self.path)
            self._handle.close()
            self._open()

    def handled(self) -> None:
        """Nothing to commit for a file."""

    def close(self) -> None:
        """Close the file."""
        if self._handle is not None:
            self._handle.close()


class TopicSource:
    """Reads the results topic as a consumer group; commits after each handled batch."""

    def __init__(self, bootstrap: str, topic: str, group: str = DEFAULT_GROUP) -> None:
        from fraud_detection.streaming.kafka import make_consumer

        self.topic = topic
        self._consumer = make_consumer(
            bootstrap,
            [topic],
            group_id=group,
            enable_auto_commit=False,
            client_id="fraud-detection-retrain-trigger",
        )
        self._pending = False

    def poll(self, stop: threading.Event, timeout_s: float) -> list[bytes]:
        """The values of the next records."""
        batch = self._consumer.poll(timeout_ms=int(timeout_s * 1000))
        records = [record.value for records in batch.values() for record in records]
        self._pending = self._pending or bool(records)
        return [value for value in records if value is not None]

    def handled(self) -> None:
        """Commit the offsets of what was returned."""
        if self._pending:
            self._consumer.commit()
            self._pending = False

    def close(self) -> None:
        """Commit and leave the group."""
        with contextlib.suppress(Exception):
            self.handled()
        with contextlib.suppress(Exception):
            self._consumer.close(autocommit=False)


# ------------------------------------------------------------------------------ runs
@dataclass
class RunEnd:
    """How a run ended."""

    exit_code: int
    outcome: str
    new_model_version: str | None = None
    trained_model_version: str | None = None


class RunHandle(Protocol):
    """A run that was started."""

    name: str

    def describe(self) -> dict[str, Any]:
        """``name`` and ``dir`` or ``id``: what the events say of the run."""
        ...

    def poll(self) -> RunEnd | None:
        """How the run ended, or None while it runs."""
        ...

    def stop(self) -> RunEnd | None:
        """Stop the run if this process owns it; how it ended (None: left running)."""
        ...


class Launcher(Protocol):
    """Starts training runs."""

    def start(self, reason: str) -> RunHandle:
        """Start a run for ``reason``; raises when it cannot start."""
        ...


@dataclass(frozen=True)
class LocalRunOptions:
    """What a local run trains on and where it goes.

    Without ``data`` the run reads the labelled transactions of ``kafka_topic`` (to the end
    offsets): the recent data is the topic's. The default split is temporal: the last
    ``test_days`` (7) days test, a gap of ``gap_days`` (7), and ``train_days`` of training
    before it (28: four whole weeks, so every weekday is seen four times).
    """

    runs_dir: Path
    registry: Path | None = None
    data: tuple[str, ...] = ()
    kafka_topic: str | None = None
    kafka_bootstrap: str | None = None
    split: str = "temporal"
    train_days: int | None = 28
    params: tuple[str, ...] = ()
    python: str = sys.executable


def pipeline_run_command(options: LocalRunOptions, output_dir: Path, reason: str) -> list[str]:
    """The ``fraud pipeline run`` command line of a triggered run."""
    command = [options.python, "-m", "fraud_detection", "pipeline", "run"]
    command += ["--output-dir", str(output_dir), "--reason", reason, "--split", options.split]
    if options.registry is not None:
        command += ["--registry", str(options.registry)]
    for source in options.data:
        command += ["--data", source]
    if options.kafka_topic:
        command += ["--kafka-topic", options.kafka_topic]
        if options.kafka_bootstrap:
            command += ["--kafka-bootstrap", options.kafka_bootstrap]
    if options.split == "temporal" and options.train_days is not None:
        command += ["--param", f"train_days={options.train_days}"]
    for pair in options.params:  # after the defaults: the user's win
        command += ["--param", pair]
    return command


class LocalRun:
    """A ``fraud pipeline run`` subprocess in its own process group."""

    def __init__(self, name: str, directory: Path, process: subprocess.Popen[bytes]) -> None:
        self.name = name
        self.directory = directory
        self.process = process

    def describe(self) -> dict[str, Any]:
        """The run's name, directory and process id."""
        return {"name": self.name, "dir": str(self.directory), "pid": self.process.pid}

    def poll(self) -> RunEnd | None:
        """The run's end once its process exited."""
        code = self.process.poll()
        return None if code is None else self._end(code)

    def stop(self, grace_s: float = 30.0) -> RunEnd:
        """SIGTERM the run's process group, SIGKILL it after ``grace_s``; outcome ``stopped``."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(grace_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
            end = self._end(self.process.returncode)
            return replace(end, outcome="stopped", new_model_version=None)
        return self._end(self.process.returncode)

    def _end(self, code: int) -> RunEnd:
        summary: dict[str, Any] = {}
        with contextlib.suppress(OSError, ValueError):
            summary = json.loads((self.directory / METRICS_FILE).read_text())
        trained = summary.get("model_version") or None
        deployed = trained if code == 0 and summary.get("deployed") else None
        return RunEnd(code, LOCAL_OUTCOMES.get(code, "failed"), deployed, trained)


class LocalLauncher:
    """Starts ``fraud pipeline run`` (kfp.local) subprocesses."""

    def __init__(self, options: LocalRunOptions) -> None:
        self.options = options

    def start(self, reason: str) -> LocalRun:
        """Start a run in ``<runs dir>/run-<UTC time>-<reason>``; output to its trigger.log."""
        from fraud_detection.pipeline.local import run_directory_name

        name = run_directory_name(reason)
        directory = (self.options.runs_dir / name).resolve()
        suffix = 1
        while directory.exists():
            suffix += 1
            directory = (self.options.runs_dir / f"{name}-{suffix}").resolve()
        directory.mkdir(parents=True)
        command = pipeline_run_command(self.options, directory, reason)
        with (directory / TRIGGER_LOG).open("wb") as output:
            process = subprocess.Popen(
                command,
                stdout=output,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        log.info("started run %s (pid %d): %s", directory.name, process.pid, " ".join(command))
        return LocalRun(directory.name, directory, process)


@dataclass(frozen=True)
class ClusterOptions:
    """Where and how to submit runs to Kubeflow Pipelines (as ``fraud pipeline submit``)."""

    host: str
    arguments: dict[str, Any] = field(default_factory=dict)
    package: Path | None = None
    experiment: str = "fraud-detection"
    image: str | None = None
    namespace: str | None = None
    token: str | None = None
    poll_interval_s: float = 30.0


class ClusterRun:
    """A run on Kubeflow Pipelines, polled through ``kfp.Client.get_run``."""

    def __init__(self, options: ClusterOptions, run_id: str, name: str) -> None:
        self.options = options
        self.run_id = run_id
        self.name = name
        self._next_poll = 0.0

    def describe(self) -> dict[str, Any]:
        """The run's name and id."""
        return {"name": self.name, "id": self.run_id, "host": self.options.host}

    def poll(self) -> RunEnd | None:
        """The run's end once its state is terminal (asked every ``poll_interval_s``)."""
        from fraud_detection.pipeline.client import ClusterError, make_client

        if time.monotonic() < self._next_poll:
            return None
        self._next_poll = time.monotonic() + self.options.poll_interval_s
        try:
            client = make_client(self.options.host, self.options.namespace, self.options.token)
            state = str(getattr(client.get_run(self.run_id), "state", "") or "").upper()
        except (ClusterError, Exception) as exc:  # the cluster may be back at the next poll
            log.warning("run %s: could not read its state: %s", self.run_id, exc)
            return None
        outcome = KFP_TERMINAL.get(state)
        return None if outcome is None else RunEnd(KFP_EXIT_CODES[outcome], outcome)

    def stop(self) -> None:
        """A cluster run is left running."""
        return None


class ClusterLauncher:
    """Submits runs with :func:`fraud_detection.pipeline.client.submit`."""

    def __init__(self, options: ClusterOptions) -> None:
        self.options = options

    def start(self, reason: str) -> ClusterRun:
        """Submit a run for ``reason`` (its name and ``trigger_reason`` say it)."""
        from fraud_detection.pipeline import client

        name = client.run_name_for(reason)
        result = client.submit(
            self.options.host,
            self.options.arguments,
            self.options.package,
            self.options.experiment,
            name,
            self.options.image,
            namespace=self.options.namespace,
            token=self.options.token,
            reason=reason,
        )
        run_id = str(getattr(result, "run_id", result))
        log.info("submitted run %s (%s) to %s", name, run_id, self.options.host)
        return ClusterRun(self.options, run_id, name)


# ------------------------------------------------------------------------------ served model
def read_data_end(bundle_dir: Path | None) -> datetime | None:
    """The ``data_end`` of a bundle's manifest (None when absent or unreadable)."""
    from fraud_detection.bundle import MANIFEST

    if bundle_dir is None:
        return None
    try:
        raw = json.loads((bundle_dir / MANIFEST).read_text()).get("data_end")
        moment = datetime.fromisoformat(raw)
    except (OSError, ValueError, TypeError, AttributeError):
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


class ServedModels:
    """The served model: the registry's current version if it has one, with ``data_end``."""

    def __init__(self, registry: Path | None, locator: BundleLocator | None) -> None:
        from fraud_detection.registry import ModelRegistry

        self.registry = ModelRegistry(registry) if registry is not None else None
        self.locator = locator
        self._cache: dict[str, ServedModel] = {}

    def current(self) -> ServedModel | None:
        """The registry's current model (None: no registry, or nothing deployed)."""
        if self.registry is None:
            return None
        path = self.registry.current()
        if path is None:
            return None
        return self._model(path.name, path)

    def of(self, version: str) -> ServedModel:
        """``version`` with the ``data_end`` of its bundle, if the locator finds it.

        A store that cannot be read (an ``OSError`` of a URL locator) is logged and the version
        returned without ``data_end``, uncached, so the next call looks again.
        """
        if version not in self._cache and self.locator is not None:
            try:
                path = self.locator.locate(version)
            except OSError as exc:
                log.warning(
                    "model %s: its bundle could not be read (%s); looking again later", version, exc
                )
                return ServedModel(version, None)
        else:
            path = None
        return self._model(version, path)

    def _model(self, version: str, path: Path | None) -> ServedModel:
        model = self._cache.get(version)
        if model is None:
            model = ServedModel(version, read_data_end(path))
            if model.data_end is None:
                log.warning("model %s: no data_end in its manifest; no schedule rule", version)
            self._cache[version] = model
        return model


# ------------------------------------------------------------------------------ the loop
@dataclass
class RunningRun:
    """The run in flight and what started it."""

    handle: RunHandle
    decision: Decision


class RetrainTrigger:
    """Feeds results to the policy and starts runs; :meth:`run` until stopped.

    Args:
        source: the results.
        launcher: starts runs.
        events: where event records go.
        served: the served model.
        config: the policy's settings.
        metrics: the metrics (a new registry by default).
        state: the policy's state to start from.
    """

    def __init__(
        self,
        source: ResultSource,
        launcher: Launcher,
        events: EventWriter,
        served: ServedModels,
        config: TriggerConfig | None = None,
        metrics: TriggerMetrics | None = None,
        state: TriggerState | None = None,
        poll_timeout_s: float = 0.5,
        on_event: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.source = source
        self.launcher = launcher
        self.events = events
        self.served = served
        self.config = config or TriggerConfig()
        self.metrics = metrics or TriggerMetrics()
        self.state = state or TriggerState()
        self.poll_timeout_s = poll_timeout_s
        self.on_event = on_event
        self.running: RunningRun | None = None
        # What the last suppressed event said (rules, by what), so that a rule holding through a
        # cool-down is written once, not once per result; reset when a run starts or ends.
        self._suppressed: tuple[tuple[str, ...], str | None] | None = None

    def run(self, stop: threading.Event) -> None:
        """Handle results and watch the run in flight until ``stop`` is set, then stop."""
        try:
            while not stop.is_set():
                records = self.source.poll(stop, self.poll_timeout_s)
                for raw in records:
                    self.handle(raw)
                self.source.handled()
                self.check_run()
        finally:
            if self.running is not None:
                end = self.running.handle.stop()
                if end is not None:
                    self._finished(end)
            self.source.close()
            self.events.close()

    def handle(self, raw: bytes) -> Decision | None:
        """One record through the policy (a bad one is counted and skipped)."""
        try:
            result = parse_result(raw)
        except ResultRecordError as exc:
            self.metrics.skipped.labels(reason=exc.reason).inc()
            log.warning("skipped a result record: %s", exc)
            return None
        if result is None:
            self.metrics.results.labels(kind="other").inc()
            return None
        kind = DRIFT_KIND if isinstance(result, DriftResult) else PERFORMANCE_KIND
        self.metrics.results.labels(kind=kind).inc()
        served = self.served.current()
        if served is None and is_new_version(self.state, result.model_version):
            served = self.served.of(result.model_version)
        self.state, decision = decide(self.state, result, self.config, served)
        if self.state.clock is not None:
            self.metrics.stream_time.set(self.state.clock.timestamp())
        if decision is not None:
            self._act(decision)
        return decision

    def _act(self, decision: Decision) -> None:
        self.metrics.decided(decision)
        if not decision.fired:
            said = (decision.rules, decision.suppressed_by)
            if said == self._suppressed:
                log.debug("still suppressed (%s): %s", decision.suppressed_by, decision.reason)
                return
            self._suppressed = said
            log.info("suppressed (%s): %s", decision.suppressed_by, decision.reason)
            run = self.running.handle.describe() if self.running is not None else None
            self._emit(
                event_record(
                    "suppressed",
                    decision.at,
                    decision.reason,
                    decision.model_version,
                    run,
                    rules=list(decision.rules),
                    suppressed_by=decision.suppressed_by,
                )
            )
            return
        from fraud_detection.pipeline.parameters import MAX_REASON_LENGTH

        reason = decision.reason[:MAX_REASON_LENGTH]
        self._suppressed = None
        try:
            handle = self.launcher.start(reason)
        except Exception as exc:  # the cool-down applies anyway: no retry storm
            log.error("could not start a run (%s): %s", reason, exc)
            self.state = run_finished(run_started(self.state, decision, "not-started"))
            self.metrics.finished.labels(outcome="not_started").inc()
            self._emit(
                event_record(
                    "finished",
                    decision.at,
                    reason,
                    decision.model_version,
                    None,
                    rules=list(decision.rules),
                    exit_code=None,
                    outcome="not_started",
                    error=str(exc),
                    new_model_version=None,
                )
            )
            return
        log.warning("retraining (%s): run %s", reason, handle.name)
        self.state = run_started(self.state, decision, handle.name)
        self.running = RunningRun(handle, decision)
        self.metrics.started.inc()
        self.metrics.in_flight.set(1)
        self._emit(
            event_record(
                "started",
                decision.at,
                reason,
                decision.model_version,
                handle.describe(),
                rules=list(decision.rules),
            )
        )

    def check_run(self) -> RunEnd | None:
        """Record the run in flight's end once it ended."""
        if self.running is None:
            return None
        end = self.running.handle.poll()
        if end is not None:
            self._finished(end)
        return end

    def _finished(self, end: RunEnd) -> None:
        assert self.running is not None
        handle, decision = self.running.handle, self.running.decision
        self.running = None
        self._suppressed = None
        self.state = run_finished(self.state)
        self.metrics.finished.labels(outcome=end.outcome).inc()
        self.metrics.in_flight.set(0)
        log.warning(
            "run %s ended: %s (exit status %d)%s",
            handle.name,
            end.outcome,
            end.exit_code,
            f", now serving {end.new_model_version}" if end.new_model_version else "",
        )
        self._emit(
            event_record(
                "finished",
                self.state.clock,
                decision.reason[:200],
                decision.model_version,
                handle.describe(),
                rules=list(decision.rules),
                exit_code=end.exit_code,
                outcome=end.outcome,
                new_model_version=end.new_model_version,
                trained_model_version=end.trained_model_version,
            )
        )

    def _emit(self, record: dict[str, Any]) -> None:
        self.events.write(record)
        if self.on_event is not None:
            self.on_event(record)


def restored_state(events_file: Path | None) -> TriggerState:
    """A fresh state whose cool-down starts at the last run the events file records."""
    started = last_started(events_file)
    if started is not None:
        log.info("last run started at %s (stream time): its cool-down holds", _iso(started))
    return TriggerState(last_started=started)


def open_source(
    results_file: Path | None, bootstrap: str | None, topic: str | None, group: str
) -> ResultSource:
    """A :class:`FileSource` when a file is given, else a :class:`TopicSource`."""
    if results_file is not None:
        return FileSource(results_file)
    from fraud_detection.streaming.kafka import resolve_bootstrap

    assert topic is not None
    return TopicSource(resolve_bootstrap(bootstrap), topic, group)


def describe_sources(parts: Sequence[str]) -> str:
    """``a, b and c``."""
    return ", ".join(parts[:-1]) + (" and " if len(parts) > 1 else "") + parts[-1]
