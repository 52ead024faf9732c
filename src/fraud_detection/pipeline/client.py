"""Compiling the pipeline, and submitting or scheduling it on a Kubeflow Pipelines cluster.

The compiled IR YAML is what the Kubeflow UI uploads (``pipelines/fraud_training_pipeline.yaml``
in the repository is kept current by a test). Submitting and scheduling go through
``kfp.Client``; the client is created by a factory argument so the exact calls can be checked
without a cluster. The arguments are checked
(:func:`~fraud_detection.pipeline.parameters.check_parameters`) and the package compiled before
the cluster is contacted; a cluster that cannot be reached or refuses a request raises
:class:`ClusterError` with one line saying so. A multi-user deployment takes the user's profile
``namespace`` and a bearer ``token``.

Every run says why it was started: the pipeline parameter ``trigger_reason`` (``manual`` unless
given; ``schedule`` for the recurring run), which the export step records in the bundle's
manifest, and which :func:`submit` puts in the run's name (:func:`run_name_for`).

Recurring runs use KFP's six-field cron with seconds first, in UTC: the monthly default
``0 0 2 1 * *`` is 02:00 UTC on the 1st. A five-field crontab would be silently misread by the
backend, so it is refused here. Runs of a schedule never overlap (``max_concurrency=1``) and
missed runs are not caught up.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fraud_detection.pipeline.dag import KFP_ARTIFACT_STORE, PIPELINE_NAME, S3Access

DEFAULT_PACKAGE = Path("pipelines") / "fraud_training_pipeline.yaml"
#: Monthly, 02:00 UTC on the 1st (seconds minutes hours day-of-month month day-of-week).
MONTHLY_CRON = "0 0 2 1 * *"
DEFAULT_EXPERIMENT = "fraud-detection"
DEFAULT_JOB_NAME = "fraud-training-monthly"

#: Makes the client: ``factory(host, namespace=..., token=...)``.
ClientFactory = Callable[..., Any]


class ScheduleError(ValueError):
    """A schedule that the cluster would misread."""


class ClusterError(RuntimeError):
    """The Kubeflow Pipelines API could not be reached, or refused the request."""


def compile_pipeline(
    path: str | Path, image: str | None = None, s3: S3Access | None = KFP_ARTIFACT_STORE
) -> Path:
    """Compile the pipeline (components in ``image``) to IR YAML at ``path``.

    ``s3``: the :class:`~fraud_detection.pipeline.dag.S3Access` of the S3 steps (default
    :data:`~fraud_detection.pipeline.dag.KFP_ARTIFACT_STORE`), or None for none.
    """
    from kfp import compiler

    from fraud_detection.pipeline.dag import build_pipeline

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_pipeline(image, s3), str(path))
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


def make_client(host: str, namespace: str | None = None, token: str | None = None) -> Any:
    """A ``kfp.Client`` for the Kubeflow Pipelines API at ``host``.

    ``namespace`` is the user's profile namespace of a multi-user deployment and ``token`` a
    bearer token sent with every request (``existing_token``); both are optional.
    """
    import kfp

    options: dict[str, str] = {}
    if namespace:
        options["namespace"] = namespace
    if token:
        options["existing_token"] = token
    with warnings.catch_warnings():
        # kfp warns on every client that it needs a v2 backend; this pipeline is v2 anyway.
        warnings.filterwarnings("ignore", message="This client only works", category=FutureWarning)
        return kfp.Client(host=host, **options)


@contextlib.contextmanager
def _cluster_errors(host: str) -> Iterator[None]:
    """Turn what the kfp client raises for an unreachable or refusing API into ClusterError."""
    from kfp_server_api.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    try:
        yield
    except ApiException as exc:
        detail = _api_message(exc.body)
        hint = (
            " (a multi-user deployment needs a token and the user's namespace)"
            if exc.status in (401, 403)
            else ""
        )
        raise ClusterError(
            f"Kubeflow Pipelines at {host} refused the request: {exc.status} {exc.reason}"
            f"{': ' + detail if detail else ''}{hint}"
        ) from exc
    except (HTTPError, OSError) as exc:  # OSError: TimeoutError, connection errors
        reason = getattr(exc, "reason", None) or exc
        raise ClusterError(f"cannot reach Kubeflow Pipelines at {host}: {reason}") from exc


def _api_message(body: Any) -> str:
    """The ``message`` of a JSON error body, else the body's first line (at most 200 chars)."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body or "")
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("message"), str):
        text = parsed["message"]
    lines = text.strip().splitlines()
    return lines[0][:200] if lines else ""


def _package(package: str | Path | None, image: str | None, scratch: str) -> str:
    if package is not None:
        path = Path(package)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such pipeline package")
        return str(path)
    return str(compile_pipeline(Path(scratch) / f"{PIPELINE_NAME}.yaml", image))


def run_name_for(reason: str, now: datetime | None = None) -> str:
    """The name of a run started for ``reason``: ``fraud-training <reason> <UTC time>``."""
    now = now or datetime.now(UTC)
    return f"fraud-training {reason} {now:%Y-%m-%d %H:%M:%S} UTC"


def _with_reason(arguments: Mapping[str, Any] | None, reason: str | None) -> dict[str, Any]:
    """The arguments with ``trigger_reason`` set to ``reason`` (refused if they disagree)."""
    from fraud_detection.pipeline.parameters import ParameterError

    arguments = dict(arguments or {})
    if reason is None:
        return arguments
    given = arguments.setdefault("trigger_reason", reason)
    if given != reason:
        raise ParameterError(
            "trigger_reason", f"given twice, as {given!r} and as the reason {reason!r}"
        )
    return arguments


def submit(
    host: str,
    arguments: Mapping[str, Any] | None = None,
    package: str | Path | None = None,
    experiment: str = DEFAULT_EXPERIMENT,
    run_name: str | None = None,
    image: str | None = None,
    client_factory: ClientFactory | None = None,
    namespace: str | None = None,
    token: str | None = None,
    reason: str | None = None,
) -> Any:
    """Start one run: upload the package (compiled now when none is given) with ``arguments``.

    ``reason`` (why the run is started) sets the ``trigger_reason`` argument (``manual`` when
    neither is given); the run is named after it (:func:`run_name_for`) unless ``run_name`` is
    given.

    Raises :class:`~fraud_detection.pipeline.parameters.ParameterError` for a bad argument and
    ``FileNotFoundError`` for a missing package, before any request; :class:`ClusterError` when
    the cluster cannot be reached or refuses. ``client_factory`` makes the client (default
    :func:`make_client`).
    """
    from fraud_detection.pipeline.parameters import MANUAL_REASON, check_parameters

    arguments = _with_reason(arguments, reason)
    values = check_parameters(arguments)
    run_name = run_name or run_name_for(values.get("trigger_reason") or MANUAL_REASON)
    with tempfile.TemporaryDirectory(prefix="fraud-pipeline-") as scratch:
        pipeline_file = _package(package, image, scratch)
        with _cluster_errors(host):
            client = (client_factory or make_client)(host, namespace=namespace, token=token)
            return client.create_run_from_pipeline_package(
                pipeline_file=pipeline_file,
                arguments=arguments,
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
    namespace: str | None = None,
    token: str | None = None,
) -> Any:
    """Create a recurring run on ``cron`` (six fields, UTC), one run at a time, no catch-up.

    Its runs' ``trigger_reason`` is ``schedule`` unless the arguments say otherwise. The cron,
    the arguments and the package are checked before any request, as in :func:`submit`.
    """
    from fraud_detection.pipeline.parameters import SCHEDULE_REASON, check_parameters

    cron = check_cron(cron)
    arguments = dict(arguments or {})
    arguments.setdefault("trigger_reason", SCHEDULE_REASON)
    check_parameters(arguments)
    with tempfile.TemporaryDirectory(prefix="fraud-pipeline-") as scratch:
        pipeline_file = _package(package, image, scratch)
        with _cluster_errors(host):
            client = (client_factory or make_client)(host, namespace=namespace, token=token)
            experiment_record = client.create_experiment(name=experiment)
            return client.create_recurring_run(
                experiment_id=experiment_record.experiment_id,
                job_name=job_name,
                description=f"{PIPELINE_NAME} on cron {cron!r} (UTC), reason "
                f"{arguments['trigger_reason']!r}",
                cron_expression=cron,
                max_concurrency=1,
                no_catchup=True,
                params=arguments,
                pipeline_package_path=pipeline_file,
                enabled=True,
                enable_caching=False,
            )
