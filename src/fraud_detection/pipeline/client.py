"""Compiling the pipeline, and submitting or scheduling it on a Kubeflow Pipelines cluster.

The compiled IR YAML is what the Kubeflow UI uploads (``pipelines/fraud_training_pipeline.yaml``
in the repository is kept current by a test). Submitting and scheduling go through
``kfp.Client``; the client is created by a factory argument so the exact calls can be checked
without a cluster.

Recurring runs use KFP's six-field cron with seconds first, in UTC: the monthly default
``0 0 2 1 * *`` is 02:00 UTC on the 1st. A five-field crontab would be silently misread by the
backend, so it is refused here. Runs of a schedule never overlap (``max_concurrency=1``) and
missed runs are not caught up.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from fraud_detection.pipeline.dag import PIPELINE_NAME

DEFAULT_PACKAGE = Path("pipelines") / "fraud_training_pipeline.yaml"
#: Monthly, 02:00 UTC on the 1st (seconds minutes hours day-of-month month day-of-week).
MONTHLY_CRON = "0 0 2 1 * *"
DEFAULT_EXPERIMENT = "fraud-detection"
DEFAULT_JOB_NAME = "fraud-training-monthly"

ClientFactory = Callable[[str], Any]


class ScheduleError(ValueError):
    """A schedule or a parameter that the cluster would misread."""


def compile_pipeline(path: str | Path, image: str | None = None) -> Path:
    """Compile the pipeline (components in ``image``) to IR YAML at ``path``."""
    from kfp import compiler

    from fraud_detection.pipeline.dag import build_pipeline

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_pipeline(image), str(path))
    return path


def compile_components(directory: str | Path, image: str | None = None) -> list[Path]:
    """Compile each component to ``<directory>/<step>.yaml`` (reusable in other pipelines)."""
    from kfp import compiler

    from fraud_detection.pipeline.components import build_components

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for step, component in build_components(image).items():
        target = directory / f"{step}.yaml"
        compiler.Compiler().compile(component, str(target))
        written.append(target)
    return written


def check_cron(expression: str) -> str:
    """Return a KFP cron expression after checking it has six fields (seconds first)."""
    fields = expression.split()
    if len(fields) != 6:
        raise ScheduleError(
            f"cron {expression!r} has {len(fields)} fields; Kubeflow Pipelines expects six, "
            f"seconds first, in UTC (monthly: {MONTHLY_CRON!r})"
        )
    return " ".join(fields)


def parse_parameters(
    pairs: Sequence[str], types: Mapping[str, tuple[str, Any]] | None = None
) -> dict[str, Any]:
    """``KEY=VALUE`` strings as pipeline arguments, typed as the pipeline declares them.

    Lists take JSON (``data=["a.csv","b.csv"]``) or comma-separated values; booleans
    ``true``/``false``. Unknown names are refused.
    """
    from fraud_detection.pipeline.dag import pipeline_parameters

    types = types if types is not None else pipeline_parameters()
    out: dict[str, Any] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ScheduleError(f"parameter {pair!r}: expected KEY=VALUE")
        if name not in types:
            raise ScheduleError(
                f"unknown pipeline parameter {name!r}; known: {', '.join(sorted(types))}"
            )
        out[name] = coerce(name, types[name][0], text)
    return out


def coerce(name: str, kind: str, text: str) -> Any:
    """One parameter value from text, as the KFP type ``kind`` wants it."""
    try:
        if kind == "Integer":
            return int(text)
        if kind == "Float":
            return float(text)
        if kind == "Boolean":
            lowered = text.strip().lower()
            if lowered not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(text)
            return lowered in ("true", "1", "yes")
        if kind == "List":
            stripped = text.strip()
            if stripped.startswith("["):
                value = json.loads(stripped)
                if not isinstance(value, list):
                    raise ValueError(text)
                return value
            return [item.strip() for item in stripped.split(",") if item.strip()]
    except (ValueError, json.JSONDecodeError) as exc:
        raise ScheduleError(f"parameter {name}: {text!r} is not a valid {kind}") from exc
    return text


def make_client(host: str) -> Any:
    """A ``kfp.Client`` for the Kubeflow Pipelines API at ``host``."""
    import kfp

    return kfp.Client(host=host)


def _package(package: str | Path | None, image: str | None, scratch: str) -> str:
    if package is not None:
        path = Path(package)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such pipeline package")
        return str(path)
    return str(compile_pipeline(Path(scratch) / f"{PIPELINE_NAME}.yaml", image))


def submit(
    host: str,
    arguments: Mapping[str, Any] | None = None,
    package: str | Path | None = None,
    experiment: str = DEFAULT_EXPERIMENT,
    run_name: str | None = None,
    image: str | None = None,
    client_factory: ClientFactory | None = None,
) -> Any:
    """Start one run: upload the package (compiled now when none is given) with ``arguments``.

    ``client_factory`` makes the client from the host (default :func:`make_client`).
    """
    client = (client_factory or make_client)(host)
    with tempfile.TemporaryDirectory(prefix="fraud-pipeline-") as scratch:
        return client.create_run_from_pipeline_package(
            pipeline_file=_package(package, image, scratch),
            arguments=dict(arguments or {}),
            run_name=run_name,
            experiment_name=experiment,
            enable_caching=False,
        )


def schedule(
    host: str,
    cron: str = MONTHLY_CRON,
    arguments: Mapping[str, Any] | None = None,
    package: str | Path | None = None,
    experiment: str = DEFAULT_EXPERIMENT,
    job_name: str = DEFAULT_JOB_NAME,
    image: str | None = None,
    client_factory: ClientFactory | None = None,
) -> Any:
    """Create a recurring run on ``cron`` (six fields, UTC), one run at a time, no catch-up."""
    cron = check_cron(cron)
    client = (client_factory or make_client)(host)
    experiment_record = client.create_experiment(name=experiment)
    with tempfile.TemporaryDirectory(prefix="fraud-pipeline-") as scratch:
        return client.create_recurring_run(
            experiment_id=experiment_record.experiment_id,
            job_name=job_name,
            description=f"{PIPELINE_NAME} on cron {cron!r} (UTC)",
            cron_expression=cron,
            max_concurrency=1,
            no_catchup=True,
            params=dict(arguments or {}),
            pipeline_package_path=_package(package, image, scratch),
            enabled=True,
            enable_caching=False,
        )
