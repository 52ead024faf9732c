"""``fraud serve`` and ``fraud demo-score``: the serving commands of the ``fraud`` CLI.

They parse arguments and call :mod:`fraud_detection.serving`; nothing heavy is imported until a
command runs.

``fraud serve`` supervises what it started (``ServingStack.supervise`` in
:mod:`fraud_detection.serving.launcher`): a child that exits is restarted with back-off; when one
keeps exiting it stops everything and exits with :data:`EXIT_CHILD_FAILED`. Its exit statuses:

* 0 (:data:`EXIT_OK`): stopped by Ctrl-C or SIGTERM, everything stopped;
* 1 (:data:`EXIT_START_FAILED`): nothing to serve, or starting failed;
* 2 (:data:`EXIT_USAGE`): invalid options;
* 3 (:data:`EXIT_CHILD_FAILED`): a child kept exiting (restart limit reached);
* 4 (:data:`EXIT_STOP_FAILED`): stopped on request, but a child could not be stopped.
"""

from __future__ import annotations

import enum
import logging
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape

from fraud_detection.cli_support import error_exit

if TYPE_CHECKING:
    from fraud_detection.serving.launcher import ServingStack

console = Console()
err_console = Console(stderr=True)

EXIT_OK = 0
EXIT_START_FAILED = 1
EXIT_USAGE = 2
EXIT_CHILD_FAILED = 3
EXIT_STOP_FAILED = 4
#: How long ``fraud serve`` waits for the predictor and the transformer to be ready, by default.
DEFAULT_STARTUP_TIMEOUT_S = 60.0
SERVE_EPILOG = (
    "A child (predictor, transformer, broker) that exits is restarted on the same port after a "
    "back-off (0.5 s, doubling up to 10 s; reset once it stayed up for 30 s); when one exits "
    "again after --max-restarts restarts within --restart-window seconds, everything is stopped. "
    "Exit status: 0 stopped by Ctrl-C or SIGTERM; 1 nothing to serve or starting failed; "
    "2 invalid options; 3 a child (predictor, transformer, broker) kept exiting and the restart "
    "limit was reached; 4 stopped on request, but a child could not be stopped."
)


class Clock(enum.StrEnum):
    """The transformer's clock for timestamp checks."""

    wall = "wall"
    event = "event"


class LogFormat(enum.StrEnum):
    """The servers' log format."""

    text = "text"
    json = "json"


def serve(
    model_dir: Annotated[
        Path | None,
        typer.Option(help="Serve this bundle directory instead of the registry's current model."),
    ] = None,
    registry: Annotated[
        Path | None,
        typer.Option(help="Model registry root (default $FRAUD_REGISTRY or ./registry)."),
    ] = None,
    kafka: Annotated[
        str | None,
        typer.Option(
            help="Kafka bootstrap servers to mirror to. Default: $FRAUD_KAFKA_BOOTSTRAP, else the "
            "broker of `fraud kafka up` if it runs, else a local broker started for this run."
        ),
    ] = None,
    port: Annotated[int, typer.Option(min=1, max=65535, help="Transformer HTTP port.")] = 8080,
    predictor_port: Annotated[
        int | None, typer.Option(min=1, max=65535, help="Predictor HTTP port (a free one).")
    ] = None,
    threshold: Annotated[
        float | None, typer.Option(min=0.0, max=1.0, help="Fraud threshold (the bundle's: 0.1).")
    ] = None,
    collocated: Annotated[
        bool, typer.Option(help="Run the model inside the transformer (one hop, no predictor).")
    ] = False,
    mirror: Annotated[bool, typer.Option(help="Mirror scored transactions to Kafka.")] = True,
    topic: Annotated[str | None, typer.Option(help="Mirror topic.")] = None,
    labels: Annotated[
        bool,
        typer.Option(
            help="Keep merchant risk current from the labels topic (needs Kafka, as the mirror)."
        ),
    ] = True,
    labels_topic: Annotated[
        str | None,
        typer.Option(help="Labels topic (default $FRAUD_KAFKA_TOPIC_LABELS or fraud-labels)."),
    ] = None,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    log_dir: Annotated[
        Path | None,
        typer.Option(
            help="Keep the servers' logs here, after stop too. Default: logs/ in "
            "$FRAUD_STATE_DIR or ./.fraud."
        ),
    ] = None,
    log_format: Annotated[
        LogFormat,
        typer.Option(
            help="The servers' logs: text lines, or one JSON object per line (time, level, "
            "logger, pid, message, exception)."
        ),
    ] = LogFormat.text,
    clock: Annotated[
        Clock,
        typer.Option(
            help="wall: a timestamp must be close to this machine's clock (live traffic). "
            "event: the clock is the latest accepted timestamp (replays of past data)."
        ),
    ] = Clock.wall,
    state_dir: Annotated[
        Path | None,
        typer.Option(
            help="Checkpoint the transformer's live state here and resume from it. Default: "
            "$FRAUD_SERVING_STATE_DIR, else serving/ in $FRAUD_STATE_DIR or ./.fraud."
        ),
    ] = None,
    no_state: Annotated[
        bool, typer.Option("--no-state", help="No checkpoints: start from the bundle's state.")
    ] = False,
    checkpoint_interval: Annotated[
        float | None,
        typer.Option(min=0.001, help="Seconds between checkpoints (the transformer's default)."),
    ] = None,
    max_restarts: Annotated[
        int,
        typer.Option(
            min=0, help="Give up when a child exits again after this many restarts in the window."
        ),
    ] = 5,
    restart_window: Annotated[
        float, typer.Option(min=0.001, help="The restart limit's window, in seconds.")
    ] = 60.0,
    startup_timeout: Annotated[
        float,
        typer.Option(
            help="Seconds to wait for the predictor and the transformer to be ready; starting "
            "fails (exit 1) after that."
        ),
    ] = DEFAULT_STARTUP_TIMEOUT_S,
    max_instances: Annotated[
        int | None,
        typer.Option(min=1, help="Most instances per request; more get 413 (default 1,000)."),
    ] = None,
    max_body_bytes: Annotated[
        int | None,
        typer.Option(
            min=1, help="Largest request body in bytes; larger ones get 413 (default 1 MiB)."
        ),
    ] = None,
) -> None:
    """Start predictor and transformer (and a local Kafka broker) until Ctrl-C or SIGTERM.

    Supervised: a child that exits is restarted (see below). Exit statuses: see below.
    """
    from fraud_detection.serving.launcher import (
        ServingStack,
        StackConfig,
        default_serving_state_dir,
    )

    if no_state and state_dir is not None:
        raise error_exit("--state-dir and --no-state exclude each other", EXIT_USAGE)
    if not 0.0 < startup_timeout < float("inf"):
        raise error_exit(
            f"--startup-timeout: must be a positive number of seconds, got {startup_timeout:g}",
            EXIT_USAGE,
        )
    registry = _registry_or_exit(model_dir, registry)
    if mirror and kafka is None:
        kafka = existing_bootstrap()
    config = StackConfig(
        model_dir=model_dir,
        registry=registry,
        kafka=kafka,
        mirror=mirror,
        mirror_topic=topic,
        port=port,
        predictor_port=predictor_port,
        host=host,
        threshold=threshold,
        collocated=collocated,
        log_dir=log_dir,
        log_format=log_format.value,
        max_instances=max_instances,
        max_body_bytes=max_body_bytes,
        clock=clock.value,
        state_dir=None if no_state else (state_dir or default_serving_state_dir()),
        checkpoint_interval_s=checkpoint_interval,
        max_restarts=max_restarts,
        restart_window_s=restart_window,
        startup_timeout_s=startup_timeout,
        transformer_args=labels_arguments(labels and mirror, labels_topic),
    )
    _log_supervision(log_format.value)
    source = model_dir if model_dir is not None else f"registry {registry} (current, followed)"
    code = run_stack(ServingStack(config), str(source))
    if code != EXIT_OK:
        raise typer.Exit(code)


def labels_arguments(labels: bool, labels_topic: str | None) -> list[str]:
    """The transformer's labels options for ``fraud serve --labels/--no-labels``.

    The labels consumer reads from the Kafka the mirror uses, so ``--no-mirror`` turns it off too.
    """
    if not labels:
        return ["--no-labels"]
    return ["--labels", *(["--labels_topic", labels_topic] if labels_topic else [])]


def _registry_or_exit(model_dir: Path | None, registry: Path | None) -> Path | None:
    """The registry to serve from (None with --model-dir); exit 1 when it has no model."""
    if model_dir is not None:
        return None
    from fraud_detection.registry import ModelRegistry, default_registry_root

    registry = registry or default_registry_root()
    if ModelRegistry(registry).current() is None:
        err_console.print(
            f"[bold red]error:[/] the registry at {registry} has no current model; "
            "train one first or pass --model-dir"
        )
        raise typer.Exit(EXIT_START_FAILED)
    return registry


def _log_supervision(log_format: str) -> None:
    """Show the supervisor's messages (exits, restarts, stop failures) on stderr, in the
    servers' log format."""
    from fraud_detection.serving.app import install_log_handler

    install_log_handler(
        log_format, {"": logging.WARNING, "fraud_detection.serving.launcher": logging.INFO}
    )


def run_stack(stack: ServingStack, source: str) -> int:
    """Start ``stack``, supervise it until SIGINT/SIGTERM, stop it; return the exit status."""
    from fraud_detection.bundle import BundleError
    from fraud_detection.serving.launcher import ChildFailedError, ServerStartError
    from fraud_detection.streaming.broker import BrokerError

    stop = threading.Event()
    handlers = {signum: lambda *_: stop.set() for signum in (signal.SIGINT, signal.SIGTERM)}
    handlers[signal.SIGHUP] = lambda *_: _reload(stack)
    previous = {signum: signal.signal(signum, handler) for signum, handler in handlers.items()}
    code = EXIT_OK
    try:
        with console.status("starting the model servers"):
            stack.start()
        for name, url in stack.urls().items():
            typer.echo(f"{name:>26}: {url}")
        typer.echo(f"{'model':>26}: {source}")
        typer.echo(f"{'logs (kept after stop)':>26}: {stack.log_dir}")
        typer.echo("Ctrl-C or SIGTERM stops everything; SIGHUP reloads the model.")
        stack.supervise(stop)
    except (ServerStartError, BrokerError, BundleError, OSError) as exc:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)
        code = EXIT_START_FAILED
    except ChildFailedError as exc:
        err_console.print(
            f"[bold red]error:[/] {escape(str(exc))}\nstopping everything", soft_wrap=True
        )
        code = EXIT_CHILD_FAILED
    finally:
        with console.status("stopping"):
            problems = stack.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if problems:  # each was logged as an error by the stack
        err_console.print(
            f"[bold red]error:[/] {len(problems)} process(es) could not be stopped (see above)"
        )
        return EXIT_STOP_FAILED if code == EXIT_OK else code
    console.print("stopped")
    return code


def existing_bootstrap() -> str | None:
    """$FRAUD_KAFKA_BOOTSTRAP, else the running `fraud kafka up` broker's address, else None.

    A failure to look for the `fraud kafka up` broker is reported (and a local broker is started).
    """
    import os

    from fraud_detection.streaming.broker import BrokerError, status
    from fraud_detection.streaming.kafka import ENV_BOOTSTRAP

    if os.environ.get(ENV_BOOTSTRAP):
        return os.environ[ENV_BOOTSTRAP]
    try:
        current = status(timeout_s=1.0)
    except (BrokerError, OSError, ValueError) as exc:
        err_console.print(
            "[yellow]warning:[/] could not check for a `fraud kafka up` broker "
            f"({type(exc).__name__}: {escape(str(exc))}); starting a local broker",
            soft_wrap=True,
        )
        return None
    return current.state.bootstrap if current.running and current.state else None


def _reload(stack: object) -> None:
    for server in (getattr(stack, "transformer", None), getattr(stack, "predictor", None)):
        if server is not None:
            server.signal(signal.SIGHUP)


def demo_score(
    data: Annotated[
        Path,
        typer.Option(help="Held-out transactions (after the training data); the first are scored."),
    ],
    count: Annotated[int, typer.Option(min=1, help="How many transactions to score.")] = 300,
    model_dir: Annotated[
        Path | None, typer.Option(help="Bundle directory (default: the registry's current).")
    ] = None,
    registry: Annotated[Path | None, typer.Option(help="Model registry root.")] = None,
    kafka: Annotated[
        str | None, typer.Option(help="Kafka bootstrap servers; a local broker when omitted.")
    ] = None,
    mirror: Annotated[bool, typer.Option(help="Mirror scored transactions to Kafka.")] = True,
) -> None:
    """Serve the model, score held-out transactions over HTTP, report latency, stop."""
    from fraud_detection.data.files import read_transactions
    from fraud_detection.serving.demo import demo_score as run_demo

    frame = read_transactions([data])
    report = run_demo(
        frame, count=count, model_dir=model_dir, registry=registry, kafka=kafka, mirror=mirror
    )
    console.print(report.render())
    if report.errors:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add the serving commands to the ``fraud`` app."""
    app.command("serve", epilog=SERVE_EPILOG)(serve)
    app.command("demo-score")(demo_score)
