"""Running the pipeline on this machine with ``kfp.local`` (the embedded default).

The very pipeline that is compiled for Kubeflow runs here with ``kfp.local.SubprocessRunner``:
each component in its own Python process, using this interpreter (the project is installed in
it, as it is in the image), artifacts under ``<output dir>/kfp/``. The runner's own log (task
starts, the components' output) goes to ``<output dir>/pipeline.log``; the console shows one
progress line per step instead.

When a step fails, :class:`PipelineRunError` names the step and carries the error the step
raised (its last exception line), so a missing file or a schema violation reads as itself rather
than as "task failed". After a run, :func:`write_run_summary` writes ``metrics.json``, which
says why the run was started (``trigger_reason``), the time span of the data and how the drift
reference was drawn; :func:`run_directory_name` names a run's directory after its reason.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import shutil
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

LOG_FILE = "pipeline.log"
METRICS_FILE = "metrics.json"
REPORT_FILE = "report.html"
PIPELINE_ROOT = "kfp"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_STARTED = re.compile(r"Executing task '([\w-]+)'")
_FINISHED = re.compile(r"Task '([\w-]+)' finished with status (SUCCESS|FAILURE)")
_EXCEPTION = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit|Failure)): ?(.*)$")
#: Metrics copied from the evaluation into ``metrics.json``.
SUMMARY_METRICS: tuple[str, ...] = (
    "recall",
    "precision",
    "f1",
    "pr_auc",
    "roc_auc",
    "card_precision_at_100",
    "threshold",
    "confusion_matrix",
    "test_rows",
    "test_frauds",
    "flagged",
)


def run_directory_name(reason: str, now: datetime | None = None) -> str:
    """``run-<UTC time>-<reason>``: the reason lower-cased, runs of other characters as ``-``,
    at most 40 characters of it (``run-20260301-020000-drift-in-3-of-5-windows``)."""
    now = now or datetime.now(UTC)
    slug = re.sub(r"[^a-z0-9]+", "-", reason.lower()).strip("-")[:40].strip("-")
    stamp = now.strftime("run-%Y%m%d-%H%M%S")
    return f"{stamp}-{slug}" if slug else stamp


class PipelineRunError(RuntimeError):
    """A local pipeline run failed; ``step`` is the failing task, ``error`` what it raised."""

    def __init__(
        self,
        step: str | None,
        error: str,
        log_path: Path,
        details: str = "",
        report_path: Path | None = None,
    ) -> None:
        self.step = step
        self.error = error
        self.log_path = log_path
        self.details = details
        #: The failing step's report artifact, when it wrote one (validation writes one).
        self.report_path = report_path
        where = f"step '{step}' failed" if step else "the pipeline failed"
        super().__init__(f"{where}: {error}")


@dataclass
class StepTiming:
    """When a step ran and how it ended."""

    name: str
    started: float
    finished: float | None = None
    status: str = "running"

    @property
    def seconds(self) -> float:
        """Wall time of the step (so far)."""
        return (self.finished or time.perf_counter()) - self.started


@dataclass
class LocalRun:
    """The outcome of a local run: artifact paths, the records they hold, step timings."""

    output_dir: Path
    run_dir: Path
    outputs: dict[str, Path]
    evaluation: dict[str, Any]
    decision: dict[str, Any]
    manifest: dict[str, Any]
    deployment: dict[str, Any] | None
    steps: list[StepTiming] = field(default_factory=list)
    wall_seconds: float = 0.0

    @property
    def gate_passed(self) -> bool:
        """What the gate decided."""
        return bool(self.decision.get("passed"))

    @property
    def deployed(self) -> bool:
        """Whether the deploy step ran and succeeded."""
        return self.deployment is not None

    @property
    def model_version(self) -> str:
        """The exported model's version."""
        return str(self.manifest.get("model_version", ""))


class _Progress:
    """Turns the runner's log lines into step events: timings and a rich progress display."""

    def __init__(self, console: Any | None) -> None:
        self.steps: dict[str, StepTiming] = {}
        self._progress = None
        self._ids: dict[str, Any] = {}
        if console is not None:
            from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                SpinnerColumn(finished_text="•"),
                TextColumn("{task.description}"),
                TimeElapsedColumn(),
                console=console,
                transient=False,
            )

    def __enter__(self) -> _Progress:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *_: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def line(self, text: str) -> None:
        text = _ANSI.sub("", text)
        if match := _STARTED.search(text):
            self._start(match.group(1))
        elif match := _FINISHED.search(text):
            self._finish(match.group(1), "done" if match.group(2) == "SUCCESS" else "failed")

    def _start(self, name: str) -> None:
        self.steps[name] = StepTiming(name, time.perf_counter())
        if self._progress is not None:
            self._ids[name] = self._progress.add_task(f"{name:<9} running", total=1)

    def _finish(self, name: str, status: str) -> None:
        step = self.steps.get(name)
        if step is None:
            return
        step.finished, step.status = time.perf_counter(), status
        if self._progress is not None and name in self._ids:
            mark = "[green]✓[/]" if status == "done" else "[red]✗[/]"
            task = self._ids[name]
            self._progress.update(task, description=f"{name:<9} {mark} {status}", completed=1)
            self._progress.stop_task(task)

    def fail_running(self) -> None:
        for step in self.steps.values():
            if step.status == "running":
                self._finish(step.name, "failed")


class _Tee(io.TextIOBase):
    """A text stream that writes to the log file and feeds complete lines to the progress."""

    def __init__(self, log: io.TextIOBase, progress: _Progress) -> None:
        self._log = log
        self._progress = progress
        self._pending = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._log.write(text)
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            self._progress.line(line)
        return len(text)

    def flush(self) -> None:
        self._log.flush()


@contextlib.contextmanager
def _captured(stream: _Tee) -> Iterator[None]:
    """Send stdout and the root logger to ``stream`` (kfp.local logs through both)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    handler = logging.StreamHandler(stream)
    root.handlers = [handler]
    try:
        with contextlib.redirect_stdout(stream), warnings.catch_warnings():
            # The runner warns that the project image is not a "python" image; it is.
            warnings.filterwarnings("ignore", message=".*non-Python base image.*")
            # Resource requests are for the cluster; the local runner says it ignores them.
            warnings.filterwarnings("ignore", message=".*no effect in the current local runner.*")
            yield
    finally:
        root.handlers, root.level = handlers, level


def failure_from_log(text: str) -> tuple[str | None, str, str]:
    """The failing task, its error (last exception of its output) and the lines that follow."""
    text = _ANSI.sub("", text)
    failed = re.findall(r"Task '([\w-]+)' finished with status FAILURE", text)
    step = failed[-1] if failed else None
    section = text
    if step is not None:
        start = text.rfind(f"Executing task '{step}'")
        section = text[start:] if start >= 0 else text
    lines = [line.strip() for line in section.splitlines()]
    for position in range(len(lines) - 1, -1, -1):
        match = _EXCEPTION.match(lines[position])
        if match and not lines[position].startswith("RuntimeError: Task"):
            details = []
            for follow in lines[position + 1 :]:
                if not follow or follow.startswith("[KFP Executor") or "- INFO -" in follow:
                    break
                details.append(follow)
            message = match.group(2) or match.group(1)
            return step, f"{match.group(1).rsplit('.', 1)[-1]}: {message}", "\n".join(details)
    return step, "see the log for the error", ""


def _step_report(pipeline_root: Path, step: str | None) -> Path | None:
    """The newest ``report`` artifact the step wrote under the pipeline root, if any."""
    if step is None:
        return None
    reports = sorted(pipeline_root.glob(f"*/{step}/report"), key=lambda path: path.stat().st_mtime)
    return reports[-1] if reports else None


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def run_local(
    arguments: Mapping[str, Any],
    output_dir: str | Path,
    console: Any | None = None,
    image: str | None = None,
) -> LocalRun:
    """Run the pipeline with ``kfp.local`` (SubprocessRunner, this interpreter).

    ``arguments`` are pipeline parameters, checked before any step starts
    (:class:`~fraud_detection.pipeline.parameters.ParameterError`). Returns the run's records;
    raises :class:`PipelineRunError` when a step fails. ``console`` (a rich Console) shows
    progress.
    """
    from kfp import local

    from fraud_detection.pipeline.dag import build_pipeline, pipeline_parameters
    from fraud_detection.pipeline.parameters import check_parameters

    # No cluster credentials or endpoint: kfp.local would pass the endpoint to the steps.
    pipeline = build_pipeline(image, s3=None)
    check_parameters(arguments, pipeline_parameters(pipeline))
    output_dir = Path(output_dir).resolve()
    pipeline_root = output_dir / PIPELINE_ROOT
    pipeline_root.mkdir(parents=True, exist_ok=True)
    log_path = output_dir / LOG_FILE
    started = time.perf_counter()
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(pipeline_root),
        raise_on_error=True,
    )
    with log_path.open("w") as log, _Progress(console) as progress:
        tee = _Tee(log, progress)
        try:
            with _captured(tee):
                task = pipeline(**arguments)
        except Exception as exc:
            progress.fail_running()
            log.flush()
            step, error, details = failure_from_log(log_path.read_text())
            if step is None and not isinstance(exc, RuntimeError):
                error = f"{type(exc).__name__}: {exc}"
            report = _step_report(pipeline_root, step)
            raise PipelineRunError(step, error, log_path, details, report) from exc
        finally:
            tee.flush()
    outputs = {name: Path(artifact.path) for name, artifact in task.outputs.items()}
    run_dir = outputs["evaluation"].parent.parent
    deployment_path = run_dir / "deploy" / "deployment"
    from fraud_detection.bundle import read_manifest

    manifest = read_manifest(outputs["bundle"])
    return LocalRun(
        output_dir=output_dir,
        run_dir=run_dir,
        outputs=outputs,
        evaluation=_read_json(outputs["evaluation"]),
        decision=_read_json(outputs["decision"]),
        manifest={
            "model_version": manifest.model_version,
            "files": manifest.files,
            "trigger_reason": manifest.trigger_reason,
            "data_start": manifest.data_start,
            "data_end": manifest.data_end,
            "drift_reference": manifest.parameters.get("drift_reference"),
        },
        deployment=_read_json(deployment_path) if deployment_path.is_file() else None,
        steps=sorted(progress.steps.values(), key=lambda step: step.started),
        wall_seconds=time.perf_counter() - started,
    )


def run_summary(run: LocalRun) -> dict[str, Any]:
    """The ``metrics.json`` record of a run."""
    metrics = run.evaluation["metrics"]
    deployed = run.evaluation.get("deployed") or {}
    summary: dict[str, Any] = {name: metrics[name] for name in SUMMARY_METRICS if name in metrics}
    summary.update(
        {
            "gate_passed": run.gate_passed,
            "gate_reasons": run.decision.get("reasons", []),
            "deployed": run.deployed,
            "deployment": run.deployment,
            "model_version": run.model_version,
            "trigger_reason": run.manifest.get("trigger_reason", ""),
            "data_start": run.manifest.get("data_start", ""),
            "data_end": run.manifest.get("data_end", ""),
            "drift_reference": run.manifest.get("drift_reference"),
            "previously_deployed": (
                {"model_version": deployed.get("model_version"), **deployed.get("metrics", {})}
                if deployed.get("evaluated")
                else None
            ),
            "report": REPORT_FILE,
            "bundle": str(run.outputs["bundle"]),
            "predictions": str(run.outputs["predictions"]),
            "pipeline_log": LOG_FILE,
            "training": run.evaluation.get("training", {}),
            "step_seconds": {step.name: round(step.seconds, 2) for step in run.steps},
            "wall_seconds": round(run.wall_seconds, 2),
        }
    )
    return summary


def write_run_summary(run: LocalRun) -> Path:
    """Copy the report to ``<output dir>/report.html`` and write ``<output dir>/metrics.json``."""
    shutil.copyfile(run.outputs["run_report"], run.output_dir / REPORT_FILE)
    path = run.output_dir / METRICS_FILE
    from fraud_detection.training.steps import write_json

    write_json(path, run_summary(run))
    return path
