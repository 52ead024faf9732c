"""``fraud trigger``: the retraining trigger (see :mod:`fraud_detection.monitoring.trigger_runner`).

Parses and checks the options, then runs :class:`~fraud_detection.monitoring.trigger_runner.
RetrainTrigger` until Ctrl-C or SIGTERM. Nothing heavy is imported until the command runs.
Exit statuses:

* 0 (:data:`EXIT_OK`): stopped by Ctrl-C or SIGTERM (a local run in flight is stopped too);
* 1 (:data:`EXIT_FAILED`): the broker could not be reached;
* 2 (:data:`EXIT_USAGE`): invalid options; nothing started.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from fraud_detection.cli_support import (
    configure_logging,
    error_exit,
    state_path,
    stop_on_signals,
)

console = Console(stderr=True)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
#: The port ``/metrics`` listens on by default.
DEFAULT_METRICS_PORT = 9110
EVENTS_FILE = Path("monitoring") / "retrain-events.jsonl"
RUNS_DIR = Path("runs")
TRIGGER_EPILOG = (
    "Rules (only results of the served model version count; stream time is the results' end "
    "time): drift in at least --drift-k of the last --drift-m tested drift windows; "
    "performance below the baseline minus the tolerance in at least --perf-k of the last "
    "--perf-m complete performance windows; the served model's data_end older than "
    "--max-model-age-days. A run starts unless one is in flight or one started less than "
    "--cool-down-days of stream time ago. Locally the run is `fraud pipeline run --reason ...` "
    "in --runs-dir, on --data and/or the labelled transactions of --kafka-topic, with a "
    "temporal split training on the --train-days before a 7-day gap and the last 7 days (the "
    "test); with --kfp-host it is submitted to Kubeflow Pipelines. "
    "Exit status: 0 stopped by Ctrl-C or SIGTERM (a local run in flight is stopped too); "
    "1 the broker could not be reached; 2 invalid options."
)


def _usage(message: str) -> typer.Exit:
    return error_exit(message, EXIT_USAGE)


def default_events_file() -> Path:
    """``monitoring/retrain-events.jsonl`` in ``$FRAUD_STATE_DIR``, else in ``./.fraud``."""
    return state_path(EVENTS_FILE)


def trigger(
    results_file: Annotated[
        Path | None,
        typer.Option(
            help="Follow this results JSON-lines file (tail -f, from its start) instead of the "
            "results topic."
        ),
    ] = None,
    kafka: Annotated[
        str | None,
        typer.Option(
            help="Kafka bootstrap servers. Default: $FRAUD_KAFKA_BOOTSTRAP, else the broker of "
            "`fraud kafka up` if it runs, else 127.0.0.1:9092."
        ),
    ] = None,
    results_topic: Annotated[
        str | None,
        typer.Option(
            help="The results topic read (without --results-file) and where events go "
            "[default: $FRAUD_KAFKA_TOPIC_MONITORING, else fraud-monitoring]. With "
            "--results-file, events go to a topic only when this is given."
        ),
    ] = None,
    no_events_topic: Annotated[
        bool, typer.Option("--no-events-topic", help="Write no events to the results topic.")
    ] = False,
    group: Annotated[str, typer.Option(help="Consumer group.")] = "fraud-retrain-trigger",
    events_file: Annotated[
        Path | None,
        typer.Option(
            help="JSON-lines file of the events (started, finished, suppressed) [default: "
            "monitoring/retrain-events.jsonl in $FRAUD_STATE_DIR, else in ./.fraud]; the last "
            "run's cool-down is read back from it at start."
        ),
    ] = None,
    registry: Annotated[
        Path | None,
        typer.Option(
            help="Model registry: the served model is its current version, and local runs "
            "deploy into it [default: $FRAUD_REGISTRY, else ./registry]."
        ),
    ] = None,
    bundles: Annotated[
        str | None,
        typer.Option(
            help="Find bundles with this path or URL template (e.g. /mnt/models/{version}, "
            "s3://mlpipeline/fraud-detection/models/{version}) when the "
            "registry has no current model."
        ),
    ] = None,
    data: Annotated[
        list[str] | None,
        typer.Option("--data", metavar="PATH", help="Train on these files or globs (repeatable)."),
    ] = None,
    kafka_topic: Annotated[
        str | None,
        typer.Option(
            help="Train on the labelled transactions of this topic too (with --data: the files "
            "hold the history, the topic what was labelled since) [default without --data: "
            "$FRAUD_KAFKA_TOPIC_TRANSACTIONS, else transactions]."
        ),
    ] = None,
    split: Annotated[str, typer.Option(help="stratified or temporal.")] = "temporal",
    train_days: Annotated[
        int, typer.Option(min=0, help="Temporal split: days of training data (0: all).")
    ] = 28,
    param: Annotated[
        list[str] | None,
        typer.Option(
            "--param", metavar="KEY=VALUE", help="Any pipeline parameter of the runs (repeatable)."
        ),
    ] = None,
    runs_dir: Annotated[
        Path, typer.Option(help="Local runs: their directories go here.")
    ] = RUNS_DIR,
    kfp_host: Annotated[
        str | None,
        typer.Option(help="Submit runs to the Kubeflow Pipelines API at this URL instead."),
    ] = None,
    namespace: Annotated[
        str | None, typer.Option(help="--kfp-host: the user's profile namespace.")
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(envvar="FRAUD_KFP_TOKEN", show_envvar=True, help="--kfp-host: bearer token."),
    ] = None,
    package: Annotated[
        Path | None, typer.Option(help="--kfp-host: a compiled pipeline YAML (default: compile).")
    ] = None,
    image: Annotated[str | None, typer.Option(help="--kfp-host: the components' image.")] = None,
    experiment: Annotated[str, typer.Option(help="--kfp-host: experiment.")] = "fraud-detection",
    poll_interval: Annotated[
        float, typer.Option(min=1.0, help="--kfp-host: seconds between two looks at a run.")
    ] = 30.0,
    drift_k: Annotated[int, typer.Option(min=1, help="Drift windows that must drift.")] = 3,
    drift_m: Annotated[int, typer.Option(min=1, help="... of the last this many tested.")] = 5,
    perf_k: Annotated[
        int, typer.Option(min=1, help="Performance windows that must be below the baseline.")
    ] = 2,
    perf_m: Annotated[int, typer.Option(min=1, help="... of the last this many complete.")] = 3,
    max_model_age_days: Annotated[
        float, typer.Option(min=0.0, help="Retrain when the model's data is older (days).")
    ] = 30.0,
    cool_down_days: Annotated[
        float, typer.Option(min=0.0, help="Stream days after a run starts before another.")
    ] = 7.0,
    drift_wait_days: Annotated[
        float,
        typer.Option(
            min=0.0,
            help="Drift fires only once it has lasted this many stream days (0: at once), so "
            "that labelled drifted traffic is in the run's data.",
        ),
    ] = 0.0,
    metrics_port: Annotated[
        int, typer.Option(help="Port of /metrics (Prometheus); 0 for none.")
    ] = DEFAULT_METRICS_PORT,
    metrics_host: Annotated[str, typer.Option(help="Address /metrics listens on.")] = "127.0.0.1",
    verbose: Annotated[bool, typer.Option("--verbose", help="Log debug messages.")] = False,
) -> None:
    """Retrain when the monitoring results say so: drift, falling performance, or age.

    Reads the drift and performance results, decides with a pure policy (k of the last m
    windows, cool-down, one run at a time) and starts the training pipeline with the reason.
    Stops on Ctrl-C or SIGTERM.
    """
    from fraud_detection.monitoring.trigger import TriggerConfig

    try:
        config = TriggerConfig(
            drift_k=drift_k,
            drift_m=drift_m,
            perf_k=perf_k,
            perf_m=perf_m,
            max_model_age_days=max_model_age_days,
            cool_down_days=cool_down_days,
            drift_wait_days=drift_wait_days,
        )
    except ValueError as exc:
        raise _usage(f"--{str(exc).replace('_', '-')}") from exc
    if split not in ("stratified", "temporal"):
        raise _usage(f"--split: must be stratified or temporal, got {split!r}")
    if bundles is not None:
        from fraud_detection.monitoring.reference import bundles_template_problem

        problem = bundles_template_problem(bundles)
        if problem is not None:
            raise _usage(f"--bundles: {problem}")
    if no_events_topic and results_topic is not None and results_file is not None:
        raise _usage("--results-topic and --no-events-topic exclude each other here")
    from fraud_detection.pipeline.parameters import ParameterError, parse_parameters

    try:
        params = parse_parameters(param or [])
    except ParameterError as exc:
        raise _usage(f"--param {exc}") from exc

    # --data alone: the files; --kafka-topic alone, or neither: the topic; both: both (the
    # history in files and the transactions labelled since).
    training_topic = kafka_topic
    if not data and not kafka_topic:
        from fraud_detection.streaming.kafka import Topics

        training_topic = Topics.from_env().transactions
    needs_kafka = results_file is None or training_topic is not None
    if needs_kafka and kafka is None:
        from fraud_detection.serve_cli import existing_bootstrap

        kafka = existing_bootstrap()
    from fraud_detection.monitoring.sinks import results_topic as default_results_topic
    from fraud_detection.streaming.kafka import resolve_bootstrap

    bootstrap = resolve_bootstrap(kafka)
    topic = results_topic or default_results_topic()
    events_topic = None
    if not no_events_topic and (results_file is None or results_topic is not None):
        events_topic = topic
    raise typer.Exit(
        run(
            config,
            results_file=results_file,
            bootstrap=bootstrap,
            topic=topic,
            group=group,
            events_file=events_file or default_events_file(),
            events_topic=events_topic,
            registry=registry,
            bundles=bundles,
            data=tuple(data or ()),
            training_topic=training_topic,
            split=split,
            train_days=train_days,
            params=tuple(param or ()),
            parsed_params=params,
            runs_dir=runs_dir,
            cluster={
                "host": kfp_host,
                "namespace": namespace,
                "token": token,
                "package": package,
                "image": image,
                "experiment": experiment,
                "poll_interval_s": poll_interval,
            },
            metrics_port=metrics_port or None,
            metrics_host=metrics_host,
            verbose=verbose,
        )
    )


def _configure_logging(verbose: bool) -> None:
    configure_logging(verbose)


def run(
    config: Any,
    *,
    results_file: Path | None,
    bootstrap: str,
    topic: str,
    group: str,
    events_file: Path,
    events_topic: str | None,
    registry: Path | None,
    bundles: str | None,
    data: tuple[str, ...],
    training_topic: str | None,
    split: str,
    train_days: int,
    params: tuple[str, ...],
    parsed_params: dict[str, Any],
    runs_dir: Path,
    cluster: dict[str, Any],
    metrics_port: int | None,
    metrics_host: str,
    verbose: bool = False,
) -> int:
    """Run the trigger until SIGINT or SIGTERM; return the exit status."""
    import kafka.errors

    from fraud_detection.monitoring.metrics import serve_metrics
    from fraud_detection.monitoring.reference import BundleLocator, bundle_locator
    from fraud_detection.monitoring.trigger_runner import (
        ClusterLauncher,
        ClusterOptions,
        EventWriter,
        Launcher,
        LocalLauncher,
        LocalRunOptions,
        RetrainTrigger,
        ServedModels,
        TriggerMetrics,
        describe_sources,
        open_source,
        restored_state,
    )
    from fraud_detection.registry import default_registry_root

    _configure_logging(verbose)
    registry_root = (registry or default_registry_root()).resolve()
    # A URL template (s3://.../{version}) reads the model store; its files are cached by version.
    locator: BundleLocator = bundle_locator(
        bundles or None, registry_root, events_file.parent / "bundles"
    )
    launcher: Launcher
    if cluster["host"]:
        arguments: dict[str, Any] = {"split": split}
        if split == "temporal":
            arguments["train_days"] = train_days
        if data:
            arguments["data"] = list(data)
        if training_topic:
            arguments.update(kafka_topic=training_topic, kafka_bootstrap=bootstrap)
        arguments.update(parsed_params)
        launcher = ClusterLauncher(ClusterOptions(arguments=arguments, **cluster))
        where_runs = f"Kubeflow Pipelines at {cluster['host']}"
    else:
        launcher = LocalLauncher(
            LocalRunOptions(
                runs_dir=runs_dir.resolve(),
                registry=registry_root,
                data=tuple(os.path.abspath(os.path.expanduser(path)) for path in data),
                kafka_topic=training_topic,
                kafka_bootstrap=bootstrap if training_topic else None,
                split=split,
                train_days=train_days,
                params=params,
            )
        )
        where_runs = f"local runs in {runs_dir.resolve()}"
    stop, restore_signals = stop_on_signals()
    metrics = TriggerMetrics()
    server = None
    try:
        source = open_source(results_file, bootstrap, topic, group)
        events = EventWriter(events_file, bootstrap, events_topic)
        if metrics_port is not None:
            server = serve_metrics(metrics, metrics_port, metrics_host)  # type: ignore[arg-type]
        worker = RetrainTrigger(
            source,
            launcher,
            events,
            ServedModels(registry_root, locator),
            config,
            metrics,
            restored_state(events_file),
        )
        reads = f"file {results_file}" if results_file else f"topic {topic} on {bootstrap}"
        outputs = [f"events to {events_file}"]
        if events_topic:
            outputs.append(f"topic {events_topic}")
        if metrics_port is not None:
            outputs.append(f"http://{metrics_host}:{metrics_port}/metrics")
        console.print(
            f"retrain trigger: reading {reads}, served model from {registry_root}, "
            f"{where_runs}; {describe_sources(outputs)}. Ctrl-C or SIGTERM stops.",
            soft_wrap=True,
            markup=False,
            highlight=False,
        )
        worker.run(stop)
    except (kafka.errors.KafkaError, OSError) as exc:
        console.print(
            f"[bold red]error:[/] {escape(type(exc).__name__)}: {escape(str(exc))} "
            f"(Kafka at {escape(bootstrap)})",
            soft_wrap=True,
        )
        return EXIT_FAILED
    finally:
        if server is not None:
            server.shutdown()
        restore_signals()
    console.print("retrain trigger stopped", highlight=False)
    return EXIT_OK


def register(app: typer.Typer) -> None:
    """Add ``fraud trigger`` to the ``fraud`` app."""
    app.command("trigger", epilog=TRIGGER_EPILOG)(trigger)
