"""``fraud monitor`` (also ``python -m fraud_detection.monitoring``): the feature-drift monitor and
the performance monitor.

Parses and checks the options, then runs :class:`fraud_detection.monitoring.consumer.
DriftMonitor` and, in a thread of its own (unless ``--no-performance``),
:class:`fraud_detection.monitoring.performance_consumer.PerformanceMonitor` until Ctrl-C or
SIGTERM; both write to the same sinks (one at a time) and share ``/metrics``. Nothing heavy is
imported until the command runs; alibi-detect (about 10 s) is imported in the background once
the monitor starts. Exit statuses:

* 0 (:data:`EXIT_OK`): stopped by Ctrl-C or SIGTERM (what is safe was committed);
* 1 (:data:`EXIT_FAILED`): the broker could not be reached, results could not be written
  (nothing more was committed: a restart writes them), or the performance state is unusable;
  either monitor failing stops both;
* 2 (:data:`EXIT_USAGE`): invalid options; nothing started.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape

from fraud_detection.cli_support import (
    configure_logging,
    error_exit,
    state_path,
    stop_on_signals,
)

if TYPE_CHECKING:
    from fraud_detection.monitoring.consumer import MonitorConfig
    from fraud_detection.monitoring.performance_consumer import PerformanceMonitorConfig

console = Console(stderr=True)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
#: The port ``/metrics`` listens on by default.
DEFAULT_METRICS_PORT = 9108
RESULTS_FILE = Path("monitoring") / "feature-drift.jsonl"
#: The directory, in the state directory, of the bundle files fetched from a --bundles URL.
BUNDLE_CACHE = "bundles"
MONITOR_EPILOG = (
    "Windows: each partition's records are cut into windows of --window-size valid records, or "
    "shorter when the transactions' own time passes --max-span seconds after the window's first "
    "record (replays and restarts cut the same windows as live traffic). Each model version's "
    "records in a window are compared with that version's drift reference (the bundle's "
    "drift_reference.npz) by feature-wise KS tests, Bonferroni-corrected at --p-val; the score is "
    "tested too when the reference holds scores. "
    "Performance (on by default): labels from --labels-topic are joined with the mirrored scores "
    "by transaction_id; recall, precision and F1 at the served threshold are reported per model "
    "version and --performance-window of transaction time once --min-coverage of its "
    "transactions are labelled, again when the coverage rose by --update-step, and finally at "
    "--label-horizon-days; each against the bundle's training metrics minus --tolerance. "
    "The join and the offsets are kept in --state-dir. "
    "Exit status: 0 stopped by Ctrl-C or SIGTERM; 1 the broker could not be reached or results "
    "could not be written; 2 invalid options."
)


def _usage(message: str) -> typer.Exit:
    return error_exit(message, EXIT_USAGE)


def default_results_file() -> Path:
    """``monitoring/feature-drift.jsonl`` in ``$FRAUD_STATE_DIR``, else in ``./.fraud``."""
    return state_path(RESULTS_FILE)


def monitor(
    kafka: Annotated[
        str | None,
        typer.Option(
            help="Kafka bootstrap servers. Default: $FRAUD_KAFKA_BOOTSTRAP, else the broker of "
            "`fraud kafka up` if it runs, else 127.0.0.1:9092."
        ),
    ] = None,
    topic: Annotated[
        str | None,
        typer.Option(
            help="The mirror topic [default: $FRAUD_KAFKA_TOPIC_MIRROR, else "
            "fraud-detector-requests]."
        ),
    ] = None,
    group: Annotated[str, typer.Option(help="Consumer group.")] = "fraud-drift-monitor",
    registry: Annotated[
        Path | None,
        typer.Option(
            help="Model registry root: a version's bundle is <registry>/versions/<version> "
            "[default: $FRAUD_REGISTRY, else ./registry]."
        ),
    ] = None,
    bundles: Annotated[
        str | None,
        typer.Option(
            help="Find bundles with this template instead of the registry: a path, e.g. "
            "/mnt/models/{version}, or a URL into object storage, e.g. "
            "s3://mlpipeline/fraud-detection/models/{version} (the model store the pipeline's "
            "deploy step writes; S3 settings from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, "
            "S3_ENDPOINT, S3_USE_HTTPS). A URL's manifests and drift references are cached "
            "under <state dir>/bundles."
        ),
    ] = None,
    results_topic: Annotated[
        str | None,
        typer.Option(
            help="Topic of the window results [default: $FRAUD_KAFKA_TOPIC_MONITORING, else "
            "fraud-monitoring]."
        ),
    ] = None,
    no_results_topic: Annotated[
        bool, typer.Option("--no-results-topic", help="Write no results to Kafka.")
    ] = False,
    results_file: Annotated[
        Path | None,
        typer.Option(
            help="JSON-lines file the results are appended to [default: "
            "monitoring/feature-drift.jsonl in $FRAUD_STATE_DIR, else in ./.fraud]."
        ),
    ] = None,
    window_size: Annotated[int, typer.Option(help="Valid records per window.")] = 1_000,
    max_span: Annotated[
        float,
        typer.Option(help="Longest window, in seconds of the transactions' own time."),
    ] = 3_600.0,
    min_records: Annotated[
        int, typer.Option(help="A version's records in a window below this are not tested.")
    ] = 100,
    p_val: Annotated[
        float, typer.Option(help="Significance level of a window's test, before correction.")
    ] = 0.05,
    exclude: Annotated[
        list[str] | None,
        typer.Option(
            "--exclude",
            metavar="FEATURE",
            help="A feature not to test (repeatable), besides hour, is_night and is_weekend.",
        ),
    ] = None,
    test_calendar: Annotated[
        bool,
        typer.Option(
            "--test-calendar", help="Test hour, is_night and is_weekend too (excluded by default)."
        ),
    ] = False,
    match_time: Annotated[
        bool,
        typer.Option(
            help="Compare each window with the reference rows of the same hours of the day and "
            "kind of day (weekend or not)."
        ),
    ] = True,
    seed: Annotated[int, typer.Option(help="Seed of the reference draws.")] = 0,
    metrics_port: Annotated[
        int, typer.Option(help="Port of /metrics (Prometheus); 0 for none.")
    ] = DEFAULT_METRICS_PORT,
    metrics_host: Annotated[str, typer.Option(help="Address /metrics listens on.")] = "127.0.0.1",
    performance: Annotated[
        bool,
        typer.Option(
            "--performance/--no-performance",
            help="Also join labels with the scores and report recall, precision and F1.",
        ),
    ] = True,
    labels_topic: Annotated[
        str | None,
        typer.Option(
            help="The labels topic [default: $FRAUD_KAFKA_TOPIC_LABELS, else fraud-labels]."
        ),
    ] = None,
    state_dir: Annotated[
        Path | None,
        typer.Option(
            help="Directory of the performance monitor's state (join, windows, offsets) "
            "[default: the results file's directory]."
        ),
    ] = None,
    performance_window: Annotated[
        int, typer.Option(help="Performance window, in seconds of transaction time (UTC-aligned).")
    ] = 86_400,
    min_coverage: Annotated[
        float,
        typer.Option(help="Share of a window's transactions labelled for it to be complete."),
    ] = 0.9,
    update_step: Annotated[
        float, typer.Option(help="Coverage gain that makes a reported window be reported again.")
    ] = 0.05,
    tolerance: Annotated[
        float | None,
        typer.Option(
            help="How far below the bundle's recall or F1 a complete window may fall "
            "[default: the deployment gate's tolerance]."
        ),
    ] = None,
    label_horizon_days: Annotated[
        float,
        typer.Option(help="How long (transaction time) a window waits for its labels."),
    ] = 30.0,
    verbose: Annotated[bool, typer.Option("--verbose", help="Log every skipped record.")] = False,
) -> None:
    """Watch the mirrored scoring records for feature drift, one result per window, and the
    model's recall, precision and F1 on the labelled outcomes.

    Results go to a topic, a JSON-lines file and Prometheus metrics. Stops on Ctrl-C or SIGTERM.
    """
    from fraud_detection.features import FEATURE_NAMES
    from fraud_detection.monitoring.consumer import MonitorConfig
    from fraud_detection.monitoring.detector import CALENDAR_FEATURES, DetectorConfig
    from fraud_detection.monitoring.sinks import results_topic as default_results_topic
    from fraud_detection.monitoring.windows import WindowConfig
    from fraud_detection.streaming.kafka import Topics, resolve_bootstrap

    if not 0.0 < p_val < 1.0:
        raise _usage(f"--p-val: must be in (0, 1), got {p_val:g}")
    if window_size < 2:
        raise _usage(f"--window-size: must be >= 2, got {window_size}")
    if not 0.0 < max_span < float("inf"):
        raise _usage(f"--max-span: must be a positive number of seconds, got {max_span:g}")
    if not 1 <= min_records <= window_size:
        raise _usage(
            f"--min-records: must be between 1 and --window-size ({window_size}), got {min_records}"
        )
    if seed < 0:
        raise _usage(f"--seed: must be >= 0, got {seed}")
    if not 0 <= metrics_port <= 65535:
        raise _usage(f"--metrics-port: must be between 0 and 65535, got {metrics_port}")
    unknown = [name for name in exclude or [] if name not in FEATURE_NAMES]
    if unknown:
        raise _usage(
            f"--exclude: unknown feature {unknown[0]!r}; known: {', '.join(FEATURE_NAMES)}"
        )
    if bundles is not None and registry is not None:
        raise _usage("--bundles and --registry exclude each other")
    if bundles is not None:
        from fraud_detection.monitoring.reference import bundles_template_problem

        problem = bundles_template_problem(bundles)
        if problem is not None:
            raise _usage(f"--bundles: {problem}")
    if no_results_topic and results_topic is not None:
        raise _usage("--results-topic and --no-results-topic exclude each other")
    excluded = tuple(
        dict.fromkeys([*(() if test_calendar else CALENDAR_FEATURES), *(exclude or [])])
    )
    if len(excluded) == len(FEATURE_NAMES):
        raise _usage("--exclude: every feature is excluded; nothing would be tested")

    if performance_window < 1:
        raise _usage(f"--performance-window: must be >= 1 second, got {performance_window}")
    if not 0.0 < min_coverage <= 1.0:
        raise _usage(f"--min-coverage: must be in (0, 1], got {min_coverage:g}")
    if not 0.0 < update_step <= 1.0:
        raise _usage(f"--update-step: must be in (0, 1], got {update_step:g}")
    if tolerance is not None and not 0.0 <= tolerance < float("inf"):
        raise _usage(f"--tolerance: must be a number >= 0, got {tolerance:g}")
    if not 0.0 < label_horizon_days < float("inf"):
        raise _usage(f"--label-horizon-days: must be a positive number, got {label_horizon_days:g}")
    if not performance and labels_topic is not None:
        raise _usage("--labels-topic and --no-performance exclude each other")

    if kafka is None:
        from fraud_detection.serve_cli import existing_bootstrap

        kafka = existing_bootstrap()
    config = MonitorConfig(
        bootstrap=resolve_bootstrap(kafka),
        topic=topic or Topics.from_env().mirror,
        group_id=group,
        results_topic=None if no_results_topic else results_topic or default_results_topic(),
        results_file=results_file or default_results_file(),
        windows=WindowConfig(size=window_size, max_span_s=max_span),
        detector=DetectorConfig(
            p_val=p_val,
            min_records=min_records,
            excluded=excluded,
            match_time=match_time,
            seed=seed,
        ),
        metrics_port=metrics_port or None,
        metrics_host=metrics_host,
    )
    performance_config = None
    if performance:
        from fraud_detection.monitoring.performance import DEFAULT_TOLERANCE, PerformanceConfig
        from fraud_detection.monitoring.performance_consumer import PerformanceMonitorConfig

        results_dir = (config.results_file or default_results_file()).parent
        performance_config = PerformanceMonitorConfig(
            bootstrap=config.bootstrap,
            mirror_topic=config.topic,
            labels_topic=labels_topic or Topics.from_env().labels,
            state_dir=state_dir or results_dir,
            performance=PerformanceConfig(
                window_s=performance_window,
                min_coverage=min_coverage,
                update_step=update_step,
                tolerance=DEFAULT_TOLERANCE if tolerance is None else tolerance,
                horizon_s=label_horizon_days * 86_400.0,
            ),
        )
    bundle_cache = (state_dir or (config.results_file or default_results_file()).parent) / (
        BUNDLE_CACHE
    )
    raise typer.Exit(
        run(
            config,
            registry=registry,
            bundles=bundles,
            verbose=verbose,
            performance=performance_config,
            bundle_cache=bundle_cache,
        )
    )


def _configure_logging(verbose: bool) -> None:
    configure_logging(verbose, always_info=("fraud_detection.monitoring.consumer",))


def run(
    config: MonitorConfig,
    registry: Path | None = None,
    bundles: str | None = None,
    verbose: bool = False,
    performance: PerformanceMonitorConfig | None = None,
    bundle_cache: Path | None = None,
) -> int:
    """Run the monitors of ``config`` (and ``performance``, when given) until SIGINT or SIGTERM;
    return the exit status.

    Bundles are found with ``bundles`` (a path or URL template with ``{version}``; a URL's
    files are cached in ``bundle_cache``, default a temporary directory) if given, else in the
    registry at ``registry`` (default ``$FRAUD_REGISTRY`` or ``./registry``). The drift
    monitor runs in this thread, the performance monitor in another; either failing stops both.
    """
    import kafka.errors

    from fraud_detection.monitoring.consumer import DriftMonitor, open_sinks
    from fraud_detection.monitoring.metrics import MonitorMetrics, PerformanceMetrics
    from fraud_detection.monitoring.performance import BundleBaselines
    from fraud_detection.monitoring.performance_consumer import PerformanceMonitor, StateError
    from fraud_detection.monitoring.reference import (
        BundleLocator,
        ReferenceCache,
        bundle_locator,
    )
    from fraud_detection.monitoring.sinks import LockedSink, ResultSink, SinkError

    _configure_logging(verbose)
    locator: BundleLocator = bundle_locator(bundles or None, registry, bundle_cache)
    stop, restore_signals = stop_on_signals()
    failures: list[BaseException] = []
    sinks: list[ResultSink] = []
    worker: threading.Thread | None = None

    def run_performance(monitor: PerformanceMonitor) -> None:
        try:
            monitor.run(stop)
        except BaseException as exc:
            failures.append(exc)
            logging.getLogger(__name__).error("performance monitor failed: %s", exc)
        finally:
            stop.set()

    try:
        sinks = open_sinks(config)
        metrics = MonitorMetrics()
        shared: list[ResultSink] = list(sinks)
        if performance is not None:
            lock = threading.Lock()
            shared = [LockedSink(sink, lock) for sink in sinks]
            worker = threading.Thread(
                target=run_performance,
                args=(
                    PerformanceMonitor(
                        performance,
                        BundleBaselines(locator),
                        shared,
                        PerformanceMetrics(metrics.registry),
                    ),
                ),
                name="performance-monitor",
                daemon=True,
            )
        monitor = DriftMonitor(config, ReferenceCache(locator), shared, metrics)
        where = [f"results file {config.results_file}"] if config.results_file else []
        if config.results_topic:
            where.append(f"topic {config.results_topic}")
        if config.metrics_port:
            where.append(f"http://{config.metrics_host}:{config.metrics_port}/metrics")
        console.print(
            f"drift monitor: {config.topic} on {config.bootstrap} (group {config.group_id}), "
            f"bundles from {locator!r}; results to {', '.join(where)}. Ctrl-C or SIGTERM stops.",
            soft_wrap=True,
            markup=False,
            highlight=False,
        )
        if performance is not None and worker is not None:
            console.print(
                f"performance monitor: labels {performance.labels_topic} joined with "
                f"{performance.mirror_topic}; state in {performance.state_file}",
                soft_wrap=True,
                markup=False,
                highlight=False,
            )
            worker.start()
        monitor.run(stop)
    except (kafka.errors.KafkaError, SinkError, StateError, OSError) as exc:
        failures.insert(0, exc)
    finally:
        stop.set()
        if worker is not None and worker.is_alive():
            worker.join()
        for sink in sinks:
            with contextlib.suppress(Exception):
                sink.close()
        restore_signals()
    if failures:
        exc = failures[0]
        if not isinstance(exc, kafka.errors.KafkaError | SinkError | StateError | OSError):
            raise exc
        console.print(
            f"[bold red]error:[/] {escape(type(exc).__name__)}: {escape(str(exc))} "
            f"(Kafka at {escape(config.bootstrap)})",
            soft_wrap=True,
        )
        return EXIT_FAILED
    console.print("monitor stopped", highlight=False)
    return EXIT_OK


def register(app: typer.Typer) -> None:
    """Add ``fraud monitor`` to the ``fraud`` app."""
    app.command("monitor", epilog=MONITOR_EPILOG)(monitor)


def main() -> None:
    """Entry point of ``python -m fraud_detection.monitoring``: the ``monitor`` command alone."""
    app = typer.Typer(
        add_completion=False,
        pretty_exceptions_enable=False,
        rich_markup_mode=None,
        context_settings={"max_content_width": 120},
    )
    app.command(epilog=MONITOR_EPILOG)(monitor)
    app(prog_name="python -m fraud_detection.monitoring")
