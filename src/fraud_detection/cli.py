"""The ``fraud`` command line. Commands parse arguments and call the library; nothing more."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from fraud_detection.cli_support import error_exit
from fraud_detection.loop_demo import register as register_demo
from fraud_detection.monitor_cli import register as register_monitor
from fraud_detection.pipeline_cli import EXIT_INVALID_ARGUMENTS
from fraud_detection.pipeline_cli import register as register_pipeline
from fraud_detection.replay_cli import register as register_replay
from fraud_detection.report_cli import register as register_report
from fraud_detection.serve_cli import register as register_serving
from fraud_detection.trigger_cli import register as register_trigger

#: The distribution whose version ``fraud --version`` prints.
DISTRIBUTION = "fraud-detection"

app = typer.Typer(
    help="Real-time card fraud detection on Kubeflow Pipelines and KServe.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain help, for every command: help text is printed as written (rich markup would read
    # "[default: ...]" as a style tag and drop it), flags show no value type, and long words
    # wrap instead of being cut. Lines use the terminal's width, up to 120 columns.
    rich_markup_mode=None,
    context_settings={"max_content_width": 120},
)
console = Console()
err_console = Console(stderr=True)


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print an error to stderr and return the exit to raise."""
    return error_exit(message, code)


def _print_version(value: bool) -> None:
    """The eager ``--version`` option: print the installed package's version and exit."""
    if not value:
        return
    from importlib.metadata import PackageNotFoundError, version

    try:
        installed = version(DISTRIBUTION)
    except PackageNotFoundError:
        installed = "unknown (the package is not installed)"
    console.print(f"{DISTRIBUTION} {installed}", markup=False, highlight=False)
    raise typer.Exit()


@app.callback()
def options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", is_eager=True, callback=_print_version, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Real-time card fraud detection on Kubeflow Pipelines and KServe."""


@app.command()
def generate(
    out: Annotated[Path, typer.Option(help="Output file: .csv, .csv.gz or .parquet.")],
    transactions: Annotated[int, typer.Option(min=1, help="Number of transactions.")] = 100_000,
    cards: Annotated[int, typer.Option(min=1, help="Number of cards.")] = 2_000,
    days: Annotated[int, typer.Option(min=1, help="Days the data spans.")] = 30,
    fraud_rate: Annotated[
        float, typer.Option(min=0.0, max=0.5, help="Share of fraudulent transactions.")
    ] = 0.0017,
    seed: Annotated[int, typer.Option(help="Random seed; same arguments, same bytes.")] = 42,
    drift_start_day: Annotated[
        int | None,
        typer.Option(help="From this day on, shift legitimate spending and add a fraud pattern."),
    ] = None,
    holdout_days: Annotated[
        int, typer.Option(min=0, help="Write the last D days to --holdout-out instead of --out.")
    ] = 0,
    holdout_out: Annotated[
        Path | None, typer.Option(help="File for the held-out days (the 'future' to score).")
    ] = None,
) -> None:
    """Generate a seeded synthetic data set of card transactions."""
    import pandas as pd

    from fraud_detection.data.files import write_transactions
    from fraud_detection.data.generator import GeneratorConfig, generate_transactions
    from fraud_detection.schema import TIMESTAMP

    try:
        config = GeneratorConfig(
            n_transactions=transactions,
            n_cards=cards,
            days=days,
            fraud_rate=fraud_rate,
            seed=seed,
            drift_start_day=drift_start_day,
        )
    except ValueError as exc:
        raise fail(str(exc), code=EXIT_INVALID_ARGUMENTS) from exc
    if (holdout_days > 0) != (holdout_out is not None):
        raise fail("--holdout-days and --holdout-out go together", code=EXIT_INVALID_ARGUMENTS)
    if holdout_days >= days:
        raise fail(
            f"--holdout-days must be below --days ({days}), got {holdout_days}",
            code=EXIT_INVALID_ARGUMENTS,
        )
    with console.status(f"generating {transactions:,} transactions"):
        frame = generate_transactions(config)
    cut = config.start_timestamp + pd.Timedelta(days=days - holdout_days)
    parts = {out: frame[frame[TIMESTAMP] < cut]}
    if holdout_out is not None:
        parts[holdout_out] = frame[frame[TIMESTAMP] >= cut]
    for path, part in parts.items():
        try:
            write_transactions(part, path)
        except ValueError as exc:
            raise fail(str(exc), code=EXIT_INVALID_ARGUMENTS) from exc
        console.print(f"wrote {len(part):,} transactions to {path}")


@app.command()
def validate(
    paths: Annotated[list[str], typer.Argument(help="Files or globs (CSV, CSV.gz, Parquet).")],
    unlabelled: Annotated[
        bool, typer.Option("--unlabelled", help="Check as scoring requests (no is_fraud).")
    ] = False,
) -> None:
    """Check transaction files against the canonical schema; exit 1 with a report if invalid.

    Example rows are named by where they are: the line of a CSV file (the header is line 1),
    the row of a Parquet file (counted from 0), after the file's name when there are several.
    """
    from fraud_detection.data.files import UnknownSchemaError, locate_rows, read_transaction_files
    from fraud_detection.data.validation import summarize, validate_transactions

    try:
        frame, sources = read_transaction_files(paths)
    except (FileNotFoundError, UnknownSchemaError, ValueError) as exc:
        raise fail(str(exc)) from exc
    report = validate_transactions(frame, labelled=not unlabelled)
    if not report.ok:
        examples = {row for failure in report.failures for row in failure.examples}
        err_console.print(report.render(locate_rows(sources, examples)))
        raise typer.Exit(1)
    console.print(f"[green]valid[/]: {len(frame):,} rows")
    console.print(summarize(frame))


kafka_app = typer.Typer(
    help="The local Kafka-protocol broker (tansu) for development and tests.",
    no_args_is_help=True,
)
app.add_typer(kafka_app, name="kafka")

StateDirOption = Annotated[
    Path | None,
    typer.Option(
        help="State and log directory [default: $FRAUD_STATE_DIR/kafka, else .fraud/kafka]."
    ),
]


@kafka_app.command("up")
def kafka_up(
    port: Annotated[
        int | None, typer.Option(min=1, max=65535, help="Port to listen on [default: a free one].")
    ] = None,
    topic: Annotated[
        list[str] | None,
        typer.Option(
            "--topic",
            metavar="NAME",
            help="Topic to create (repeatable) [default: the project's topics].",
        ),
    ] = None,
    partitions: Annotated[int, typer.Option(min=1, help="Partitions per created topic.")] = 1,
    state_dir: StateDirOption = None,
) -> None:
    """Start a local broker in the background (or report the one already running)."""
    from fraud_detection.streaming.broker import BrokerError, start_detached

    try:
        state, started = start_detached(
            state_dir, port=port, topics=topic or None, partitions=partitions
        )
    except BrokerError as exc:
        raise fail(str(exc)) from exc
    verb = "started" if started else "already running:"
    console.print(
        f"kafka broker {verb} {state.bootstrap} (pid {state.pid}, log {state.log_path})",
        soft_wrap=True,
        markup=False,
    )
    if not started and port is not None and port != state.port:
        err_console.print(f"[yellow]note:[/] --port {port} ignored; `fraud kafka down` first")
    console.print(f"export FRAUD_KAFKA_BOOTSTRAP={state.bootstrap}", soft_wrap=True)


@kafka_app.command("down")
def kafka_down(state_dir: StateDirOption = None) -> None:
    """Stop the background broker; succeeds when none is running."""
    from fraud_detection.streaming.broker import BrokerError, stop_detached

    try:
        state = stop_detached(state_dir)
    except BrokerError as exc:
        raise fail(str(exc)) from exc
    if state is None:
        console.print("no kafka broker running")
    else:
        console.print(f"kafka broker stopped ({state.bootstrap}, pid {state.pid})")


@kafka_app.command("status")
def kafka_status(state_dir: StateDirOption = None) -> None:
    """Show the background broker; exit 1 when none is running and answering."""
    from fraud_detection.streaming.broker import status

    report = status(state_dir)
    console.print(report.describe(), soft_wrap=True, markup=False)
    if not report.running:
        raise typer.Exit(1)


register_serving(app)
register_pipeline(app)
register_monitor(app)
register_replay(app)
register_trigger(app)
register_demo(app)
register_report(app)


def main() -> None:
    """Entry point for ``python -m fraud_detection``."""
    app()
