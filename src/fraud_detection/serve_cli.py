"""``fraud serve`` and ``fraud demo-score``: the serving commands of the ``fraud`` CLI.

They parse arguments and call :mod:`fraud_detection.serving`; nothing heavy is imported until a
command runs.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

console = Console()
err_console = Console(stderr=True)


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
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    log_dir: Annotated[Path | None, typer.Option(help="Keep the servers' logs here.")] = None,
) -> None:
    """Start predictor and transformer (and a local Kafka broker) until Ctrl-C or SIGTERM."""
    from fraud_detection.bundle import BundleError
    from fraud_detection.registry import default_registry_root
    from fraud_detection.serving.launcher import ServerStartError, ServingStack, StackConfig
    from fraud_detection.streaming.broker import BrokerError

    if model_dir is None:
        registry = registry or default_registry_root()
        from fraud_detection.registry import ModelRegistry

        if ModelRegistry(registry).current() is None:
            err_console.print(
                f"[bold red]error:[/] the registry at {registry} has no current model; "
                "train one first or pass --model-dir"
            )
            raise typer.Exit(1)
    else:
        registry = None
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
    )
    stop = threading.Event()
    stack = ServingStack(config)
    previous = {
        signum: signal.signal(signum, lambda *_: stop.set())
        for signum in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        with console.status("starting the model servers"):
            stack.start()
        for name, url in stack.urls().items():
            typer.echo(f"{name:>26}: {url}")
        source = model_dir if model_dir is not None else f"registry {registry} (current, followed)"
        typer.echo(f"{'model':>26}: {source}")
        typer.echo("Ctrl-C or SIGTERM stops everything; SIGHUP reloads the model.", err=False)
        signal.signal(signal.SIGHUP, lambda *_: _reload(stack))
        while not stop.wait(0.5):
            for server in (stack.transformer, stack.predictor):
                if server is not None and not server.running:
                    err_console.print(
                        f"[bold red]error:[/] the {server.name} exited; log {server.log_path}"
                    )
                    stop.set()
    except (ServerStartError, BrokerError, BundleError) as exc:
        err_console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(1) from exc
    finally:
        with console.status("stopping"):
            stack.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    console.print("stopped")


def existing_bootstrap() -> str | None:
    """$FRAUD_KAFKA_BOOTSTRAP, else the running `fraud kafka up` broker's address, else None."""
    import os

    from fraud_detection.streaming.broker import status
    from fraud_detection.streaming.kafka import ENV_BOOTSTRAP

    if os.environ.get(ENV_BOOTSTRAP):
        return os.environ[ENV_BOOTSTRAP]
    try:
        current = status(timeout_s=1.0)
    except Exception:
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
    app.command("serve")(serve)
    app.command("demo-score")(demo_score)
