"""``fraud pipeline ...`` and ``fraud model ...``: the training-pipeline commands of the CLI.

``pipeline run`` runs the Kubeflow pipeline locally with ``kfp.local`` (generating data first
when no input is given) and writes ``metrics.json`` and ``report.html``; ``compile``, ``submit``
and ``schedule`` target a Kubeflow Pipelines cluster. ``model list`` and ``model rollback``
manage the local model registry. Commands parse arguments and call the library; kfp and the
training code are imported only when a command runs.

Every run records why it was started: ``--reason`` (the ``trigger_reason`` parameter, default
``manual``; a schedule's runs say ``schedule``) goes into the bundle's manifest, the run's
name (``submit``) or directory and summary (``run``).

Every pipeline argument is checked
(:func:`~fraud_detection.pipeline.parameters.check_parameters`) before a step runs or anything is
sent to a cluster. The exit statuses are the ``EXIT_*`` constants below; :data:`RUN_EXIT_CODES`
and :data:`CLUSTER_EXIT_CODES` say what each means for ``run`` and for ``submit``/``schedule``,
and the commands' help shows them.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fraud_detection.schema import DEFAULT_THRESHOLD
from fraud_detection.training.gate import GateConfig

if TYPE_CHECKING:
    from fraud_detection.pipeline.parameters import ParameterError

#: Success: the model passed the gate and was deployed (``run``); the cluster accepted the run
#: or the schedule (``submit``, ``schedule``).
EXIT_OK = 0
#: A pipeline step failed (``run``); the cluster could not be reached or refused the request.
EXIT_FAILED = 1
#: Invalid arguments: nothing ran and nothing was sent.
EXIT_INVALID_ARGUMENTS = 2
#: The run completed but the gate refused the model: it was exported and reported, not deployed.
EXIT_GATE_REFUSED = 3
#: What each exit status of ``fraud pipeline run`` means.
RUN_EXIT_CODES: dict[int, str] = {
    EXIT_OK: "the model passed the gate and was deployed",
    EXIT_FAILED: "a step failed (the error names it)",
    EXIT_INVALID_ARGUMENTS: "invalid arguments, no step ran",
    EXIT_GATE_REFUSED: "the gate refused the model: exported and reported, not deployed",
}
#: What each exit status of ``fraud pipeline submit`` and ``schedule`` means.
CLUSTER_EXIT_CODES: dict[int, str] = {
    EXIT_OK: "the cluster accepted the request",
    EXIT_FAILED: "the cluster could not be reached or refused the request",
    EXIT_INVALID_ARGUMENTS: "invalid arguments, nothing was sent",
}
#: Environment variable holding the bearer token for a multi-user Kubeflow Pipelines.
TOKEN_ENV = "FRAUD_KFP_TOKEN"


def exit_status_help(codes: Mapping[int, str]) -> str:
    """The ``Exit status: 0 ...; 1 ...`` sentence of a command's help."""
    return "Exit status: " + "; ".join(f"{code} {meaning}" for code, meaning in codes.items()) + "."


console = Console()
err_console = Console(stderr=True)

pipeline_app = typer.Typer(
    help="The training pipeline: run locally (kfp.local), compile, submit, schedule.",
    no_args_is_help=True,
)
model_app = typer.Typer(
    help="The local model registry: list versions, roll back.", no_args_is_help=True
)

RegistryOption = Annotated[
    Path | None,
    typer.Option(
        "--registry", help="Model registry directory (default $FRAUD_REGISTRY or ./registry)."
    ),
]
HostOption = Annotated[str, typer.Option("--host", help="Kubeflow Pipelines API endpoint URL.")]
NamespaceOption = Annotated[
    str | None,
    typer.Option(
        "--namespace",
        help="The user's profile namespace in a multi-user Kubeflow (where the run and its "
        "experiment live; the model's InferenceService namespace is --param namespace=...).",
    ),
]
TokenOption = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar=TOKEN_ENV,
        show_envvar=True,
        help="Bearer token for the Kubeflow Pipelines API (multi-user deployments); prefer the "
        "environment variable, which other users cannot see in the process list.",
    ),
]
ParamOption = Annotated[
    list[str] | None,
    typer.Option(
        "--param",
        metavar="KEY=VALUE",
        help="Any pipeline parameter (repeatable); wins over an option that sets the same one.",
    ),
]
PackageOption = Annotated[
    Path | None,
    typer.Option(help="A compiled pipeline YAML to send (default: compile it now)."),
]
ImageOption = Annotated[
    str | None,
    typer.Option(help="Container image of the components (default $FRAUD_IMAGE or the project's)."),
]


def _fail(message: str, code: int = EXIT_FAILED) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    return typer.Exit(code)


def _registry_root(registry: Path | None) -> Path:
    from fraud_detection.registry import default_registry_root

    return (registry or default_registry_root()).resolve()


def _invalid(error: ParameterError, labels: Mapping[str, str]) -> typer.Exit:
    """Exit 2 with the error, naming the option (or ``--param NAME``) that set the parameter."""
    if error.name is None:
        return _fail(str(error), EXIT_INVALID_ARGUMENTS)
    label = labels.get(error.name, f"--param {error.name}")
    return _fail(f"{label}: {error.reason}", EXIT_INVALID_ARGUMENTS)


def _parameters(pairs: list[str] | None) -> dict[str, Any]:
    """``--param KEY=VALUE`` options as typed pipeline arguments (exit 2 when malformed)."""
    from fraud_detection.pipeline.parameters import ParameterError, parse_parameters

    try:
        return parse_parameters(pairs or [])
    except ParameterError as exc:
        if exc.name is None:
            raise _fail(f"--param {exc.reason}", EXIT_INVALID_ARGUMENTS) from exc
        raise _invalid(exc, {}) from exc


@contextlib.contextmanager
def _quiet_logs() -> Iterator[None]:
    """Silence library logging (the kfp client logs every retry with a traceback)."""
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        yield
    finally:
        logging.disable(previous)


def _default_output_dir(reason: str) -> Path:
    from fraud_detection.pipeline.local import run_directory_name

    return Path("runs") / run_directory_name(reason, datetime.now(UTC))


#: The ``run`` options that set a pipeline parameter, by parameter (for error messages).
RUN_OPTIONS: dict[str, str] = {
    "data": "--data",
    "registry_dir": "--registry",
    "min_recall": "--min-recall",
    "min_f1": "--min-f1",
    "threshold": "--threshold",
    "seed": "--seed",
    "split": "--split",
    "train_start": "--train-start",
    "train_end": "--train-end",
    "test_start": "--test-start",
    "test_end": "--test-end",
    "kafka_topic": "--kafka-topic",
    "kafka_bootstrap": "--kafka-bootstrap",
    "kafka_max_records": "--kafka-max-records",
    "trigger_reason": "--reason",
}
ReasonOption = Annotated[
    str,
    typer.Option(
        "--reason",
        metavar="TEXT",
        help="Why the model is trained, recorded in its manifest and the run's name (up to 200 "
        "characters, no control characters).",
    ),
]


@pipeline_app.command("run", epilog=exit_status_help(RUN_EXIT_CODES))
def run(
    data: Annotated[
        list[str] | None,
        typer.Option(
            "--data",
            metavar="PATH",
            help="Input file or glob (CSV, CSV.gz, Parquet); repeat for several: "
            "--data a.csv --data 'b/*.parquet'.",
        ),
    ] = None,
    output_dir: Annotated[
        Path | None, typer.Option(help="Run directory (default runs/run-<UTC time>-<reason>).")
    ] = None,
    registry: RegistryOption = None,
    min_recall: Annotated[
        float, typer.Option(help="Gate: minimum recall at the threshold, in [0, 1].")
    ] = GateConfig.min_recall,
    min_f1: Annotated[
        float, typer.Option(help="Gate: minimum F1 at the threshold, in [0, 1].")
    ] = GateConfig.min_f1,
    threshold: Annotated[
        float, typer.Option(help="Fraud threshold: flag a probability at least this, in (0, 1).")
    ] = DEFAULT_THRESHOLD,
    seed: Annotated[
        int, typer.Option(help="Seed of the split, the forest and generated data.")
    ] = 42,
    split: Annotated[str, typer.Option(help="stratified or temporal.")] = "stratified",
    train_start: Annotated[
        str | None, typer.Option(help="Temporal split: first training day.")
    ] = None,
    train_end: Annotated[
        str | None, typer.Option(help="Temporal split: last training day.")
    ] = None,
    test_start: Annotated[str | None, typer.Option(help="Temporal split: first test day.")] = None,
    test_end: Annotated[str | None, typer.Option(help="Temporal split: last test day.")] = None,
    kafka_topic: Annotated[
        str | None,
        typer.Option(help="Ingest from this Kafka topic (as well as the --data files, if any)."),
    ] = None,
    kafka_bootstrap: Annotated[
        str | None, typer.Option(help="Kafka bootstrap servers (default $FRAUD_KAFKA_BOOTSTRAP).")
    ] = None,
    kafka_max_records: Annotated[
        int, typer.Option(min=0, help="Read at most this many records (0: to the end offsets).")
    ] = 0,
    transactions: Annotated[
        int, typer.Option(min=1000, help="Without --data: transactions to generate.")
    ] = 200_000,
    cards: Annotated[int, typer.Option(min=1, help="Without --data: cards to generate.")] = 4_000,
    days: Annotated[int, typer.Option(min=1, help="Without --data: days to generate.")] = 60,
    reason: ReasonOption = "manual",
    param: ParamOption = None,
) -> None:
    """Run the whole pipeline locally with kfp.local and write metrics.json and report.html.

    Every argument is checked before the first step runs (or data are generated).
    """
    from fraud_detection.pipeline.local import PipelineRunError, run_local, write_run_summary
    from fraud_detection.pipeline.parameters import (
        ParameterError,
        check_parameters,
        check_trigger_reason,
    )

    params = _parameters(param)
    named_reason = str(params.get("trigger_reason", reason))
    arguments: dict[str, Any] = {
        "trigger_reason": reason,
        "seed": seed,
        "split": split,
        "min_recall": min_recall,
        "min_f1": min_f1,
        "threshold": threshold,
        "registry_dir": str(_registry_root(registry)),
        "deploy_target": "local",
    }
    bounds = {
        "train_start": train_start,
        "train_end": train_end,
        "test_start": test_start,
        "test_end": test_end,
    }
    arguments.update({name: value for name, value in bounds.items() if value is not None})
    generated = None
    labels = {name: label for name, label in RUN_OPTIONS.items() if name not in params}
    try:  # before the reason names the run's directory
        check_trigger_reason(named_reason)
    except ParameterError as exc:
        raise _invalid(exc, labels) from exc
    output_dir = (output_dir or _default_output_dir(named_reason)).resolve()
    if kafka_topic:
        arguments.update(
            kafka_topic=kafka_topic,
            kafka_bootstrap=kafka_bootstrap or "",
            kafka_max_records=kafka_max_records,
        )
    if data:
        # Absolute, so the components find them whatever their working directory.
        arguments["data"] = [os.path.abspath(os.path.expanduser(path)) for path in data]
    elif not kafka_topic:
        generated = output_dir / "data" / "transactions.parquet"
        arguments["data"] = [str(generated)]
    arguments.update(params)
    try:
        check_parameters(arguments)
    except ParameterError as exc:
        raise _invalid(exc, labels) from exc
    if generated is not None:
        _generate(generated, transactions, cards, days, seed)

    console.print(
        f"running the pipeline locally (reason: {escape(named_reason)}); outputs in {output_dir}"
    )
    try:
        result = run_local(arguments, output_dir, console=err_console)
    except PipelineRunError as exc:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)
        if exc.details:
            err_console.print(escape(exc.details), soft_wrap=True)
        if exc.report_path is not None:
            from rich.markdown import Markdown

            err_console.print(Markdown(exc.report_path.read_text()))
            err_console.print(f"report: {exc.report_path}")
        err_console.print(f"full log: {exc.log_path}")
        raise typer.Exit(EXIT_FAILED) from exc
    metrics_path = write_run_summary(result)
    _print_summary(result, metrics_path)
    if not result.gate_passed:
        err_console.print(
            f"the gate refused the model; nothing was deployed (exit status {EXIT_GATE_REFUSED})"
        )
        raise typer.Exit(EXIT_GATE_REFUSED)


def _generate(path: Path, transactions: int, cards: int, days: int, seed: int) -> Path:
    from fraud_detection.data.files import write_transactions
    from fraud_detection.data.generator import GeneratorConfig, generate_transactions

    config = GeneratorConfig(n_transactions=transactions, n_cards=cards, days=days, seed=seed)
    with console.status(f"generating {transactions:,} transactions"):
        path = write_transactions(generate_transactions(config), path)
    console.print(f"generated {transactions:,} transactions into {path}")
    return path


def _print_summary(result: Any, metrics_path: Path) -> None:
    metrics = result.evaluation["metrics"]
    table = Table(title=f"model {result.model_version}", title_justify="left", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    for name in ("recall", "precision", "f1", "pr_auc", "roc_auc", "card_precision_at_100"):
        table.add_row(name, f"{metrics[name]:.4f}")
    table.add_row("threshold", f"{metrics['threshold']:g}")
    console.print(table)
    manifest = result.manifest
    console.print(f"reason:  {escape(str(manifest.get('trigger_reason', '')))}")
    console.print(f"data:    {manifest.get('data_start', '')} to {manifest.get('data_end', '')}")
    reference = manifest.get("drift_reference") or {}
    if reference:
        console.print(
            f"drift reference: {reference.get('rows', 0):,} held-out rows over "
            f"{reference.get('days', 0)} days ({reference.get('first', '')[:10]} to "
            f"{reference.get('last', '')[:10]}), first {reference.get('warm_up_days_skipped', 0)} "
            "days of the data skipped"
        )
        for warning in reference.get("warnings", []):
            err_console.print(f"[yellow]warning:[/] drift reference: {escape(warning)}")
    verdict = "[green]passed[/]" if result.gate_passed else "[red]refused[/]"
    console.print(f"gate: {verdict}")
    for reason in result.decision.get("reasons", []):
        console.print(f"  {escape(reason)}")
    if result.deployed:
        console.print(f"deployed: {result.model_version} ({result.deployment.get('registry', '')})")
    else:
        console.print("deployed: no")
    console.print(f"report:  {result.output_dir / 'report.html'}")
    console.print(f"metrics: {metrics_path}")


@pipeline_app.command("compile")
def compile_(
    output: Annotated[Path, typer.Option(help="Where to write the pipeline YAML.")] = Path(
        "pipelines/fraud_training_pipeline.yaml"
    ),
    components_dir: Annotated[
        Path | None, typer.Option(help="Also write each component's YAML into this directory.")
    ] = None,
    image: ImageOption = None,
) -> None:
    """Compile the pipeline to IR YAML (upload it in the Kubeflow UI)."""
    from fraud_detection.pipeline.client import compile_components, compile_pipeline

    path = compile_pipeline(output, image)
    console.print(f"wrote {path}")
    if components_dir is not None:
        for written in compile_components(components_dir, image):
            console.print(f"wrote {written}")


@pipeline_app.command("submit", epilog=exit_status_help(CLUSTER_EXIT_CODES))
def submit(
    host: HostOption,
    param: ParamOption = None,
    package: PackageOption = None,
    experiment: Annotated[str, typer.Option(help="Experiment name.")] = "fraud-detection",
    run_name: Annotated[
        str | None,
        typer.Option(help="Run name shown in the UI (default: 'fraud-training <reason> <time>')."),
    ] = None,
    image: ImageOption = None,
    namespace: NamespaceOption = None,
    token: TokenOption = None,
    reason: ReasonOption = "manual",
) -> None:
    """Start one run of the pipeline on a Kubeflow Pipelines cluster.

    The arguments are checked before anything is sent.
    """
    from fraud_detection.pipeline import client
    from fraud_detection.pipeline.parameters import ParameterError

    arguments = _parameters(param)
    labels = {} if "trigger_reason" in arguments else {"trigger_reason": "--reason"}
    arguments.setdefault("trigger_reason", reason)
    try:
        with _quiet_logs():
            result = client.submit(
                host,
                arguments,
                package,
                experiment,
                run_name,
                image,
                namespace=namespace,
                token=token,
            )
    except ParameterError as exc:
        raise _invalid(exc, labels) from exc
    except FileNotFoundError as exc:
        raise _fail(str(exc), EXIT_INVALID_ARGUMENTS) from exc
    except client.ClusterError as exc:
        raise _fail(str(exc), EXIT_FAILED) from exc
    console.print(f"submitted run {getattr(result, 'run_id', result)} to {host}")


@pipeline_app.command("schedule", epilog=exit_status_help(CLUSTER_EXIT_CODES))
def schedule(
    host: HostOption,
    cron: Annotated[
        str, typer.Option(help="Six-field cron, seconds first, UTC (default: monthly).")
    ] = "0 0 2 1 * *",
    param: ParamOption = None,
    package: PackageOption = None,
    experiment: Annotated[str, typer.Option(help="Experiment name.")] = "fraud-detection",
    name: Annotated[str, typer.Option(help="Recurring run name.")] = "fraud-training-monthly",
    image: ImageOption = None,
    namespace: NamespaceOption = None,
    token: TokenOption = None,
) -> None:
    """Create a recurring run (one at a time, no catch-up) on a Kubeflow Pipelines cluster.

    Its runs' reason is "schedule". The cron and the arguments are checked before anything is
    sent.
    """
    from fraud_detection.pipeline import client
    from fraud_detection.pipeline.parameters import ParameterError

    arguments = _parameters(param)
    try:
        with _quiet_logs():
            result = client.schedule(
                host,
                cron,
                arguments,
                package,
                experiment,
                name,
                image,
                namespace=namespace,
                token=token,
            )
    except ParameterError as exc:
        raise _invalid(exc, {}) from exc
    except (client.ScheduleError, FileNotFoundError) as exc:
        raise _fail(str(exc), EXIT_INVALID_ARGUMENTS) from exc
    except client.ClusterError as exc:
        raise _fail(str(exc), EXIT_FAILED) from exc
    console.print(
        f"scheduled {name!r} on {cron!r} (UTC): {getattr(result, 'recurring_run_id', result)}"
    )


@model_app.command("list")
def list_models(registry: RegistryOption = None) -> None:
    """List the versions in the registry, oldest first; the current one is marked."""
    from fraud_detection.registry import ModelRegistry

    root = _registry_root(registry)
    models = ModelRegistry(root).list()
    if not models:
        console.print(f"no model in {root}", soft_wrap=True)
        return
    table = Table(title=f"models in {root}", title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("", no_wrap=True)
    table.add_column("version", no_wrap=True)
    table.add_column("created (UTC)", no_wrap=True)
    for name in ("recall", "f1", "pr_auc"):
        table.add_column(name, justify="right", no_wrap=True, min_width=6)
    for model in models:
        metrics = model.manifest.metrics
        table.add_row(
            "*" if model.is_current else "",
            model.version,
            model.manifest.created_at[:19],
            *(
                f"{metrics[name]:.4f}" if name in metrics else "-"
                for name in ("recall", "f1", "pr_auc")
            ),
        )
    console.print(table)


@model_app.command("rollback")
def rollback(
    version: Annotated[
        str | None, typer.Argument(help="Version to make current (default: the previous one).")
    ] = None,
    registry: RegistryOption = None,
) -> None:
    """Point the registry's current model at an earlier version."""
    from fraud_detection.bundle import BundleError
    from fraud_detection.registry import ModelRegistry

    model_registry = ModelRegistry(_registry_root(registry))
    before = model_registry.current_version()
    try:
        now = model_registry.rollback(version)
    except (ValueError, BundleError) as exc:
        raise _fail(str(exc)) from exc
    console.print(f"current model: {now} (was {before})")


def register(app: typer.Typer) -> None:
    """Add the ``pipeline`` and ``model`` command groups to the ``fraud`` app."""
    app.add_typer(pipeline_app, name="pipeline")
    app.add_typer(model_app, name="model")
