"""``fraud replay``: send historical transactions to the scoring endpoint in time order and
publish their labels once they are due (see :mod:`fraud_detection.replay`).

Nothing heavy is imported until the command runs. Exit statuses:

* 0 (:data:`EXIT_OK`): replayed (requests refused with a 4xx are counted, not fatal);
* 1 (:data:`EXIT_FAILED`): the server or the broker could not be reached, the server refused
  the data's timestamps, no transaction was scored, or a record was not acknowledged;
* 2 (:data:`EXIT_USAGE`): invalid options or unreadable data files; nothing was sent;
* 130 (:data:`EXIT_INTERRUPTED`): stopped by Ctrl-C (published records flushed first).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape

from fraud_detection.cli_support import error_exit
from fraud_detection.replay import (
    DEFAULT_BATCH,
    DEFAULT_CONNECT_TIMEOUT_S,
    DEFAULT_REQUEST_TIMEOUT_S,
    DEFAULT_URL,
)

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from fraud_detection.replay import ReplayData, ReplaySummary

console = Console()
err_console = Console(stderr=True)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
#: Seconds between two writes of the ``--summary`` file while the replay runs.
SUMMARY_EVERY_S = 1.0
REPLAY_EPILOG = (
    "The data time is the timestamp of the latest transaction sent. A transaction's label "
    "(is_fraud) is due at its time + --label-delay-days and is published to the labels topic "
    "before the first batch whose data time reaches that (at most one batch early, never "
    "before the transaction itself); with --labelled-transactions the transaction, with its "
    "label, goes to the transactions topic at the same moment (what a retraining run ingests). "
    "Rejected transactions get no label. The server must run on the event clock for past data "
    "(`fraud serve --clock event`). "
    "Exit status: 0 replayed (4xx answers are counted, not fatal); 1 the server or broker could "
    "not be reached, refused the data's timestamps, nothing was scored, or a record was not "
    "acknowledged; 2 invalid options or unreadable data; 130 interrupted."
)


def _usage(message: str) -> typer.Exit:
    return error_exit(message, EXIT_USAGE)


def _failed(message: str) -> typer.Exit:
    return error_exit(message, EXIT_FAILED)


def parse_date(flag: str, text: str | None) -> int | None:
    """An ISO date or date-time (naive means UTC) as microseconds; exit 2 naming ``flag``."""
    if text is None:
        return None
    import pandas as pd

    try:
        stamp = pd.Timestamp(text)
    except (ValueError, TypeError):
        raise _usage(f"{flag}: not an ISO-8601 date or time: {text!r}") from None
    if stamp is pd.NaT:
        raise _usage(f"{flag}: not an ISO-8601 date or time: {text!r}")
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    return int(stamp.as_unit("us").value)


def replay(
    data: Annotated[
        list[Path],
        typer.Option(
            "--data",
            metavar="FILE",
            help="Transactions to replay (CSV, CSV.gz, Parquet; canonical or handbook schema); "
            "repeatable. Files without is_fraud are replayed without labels.",
        ),
    ],
    url: Annotated[str, typer.Option(help="The transformer's base URL.")] = DEFAULT_URL,
    model: Annotated[
        str | None,
        typer.Option(help="The served model's name [default: the one `fraud serve` serves]."),
    ] = None,
    bootstrap: Annotated[
        str | None,
        typer.Option(
            help="Kafka bootstrap servers. Default: $FRAUD_KAFKA_BOOTSTRAP, else the broker of "
            "`fraud kafka up` if it runs, else 127.0.0.1:9092."
        ),
    ] = None,
    labels_topic: Annotated[
        str | None,
        typer.Option(help="Labels topic [default: $FRAUD_KAFKA_TOPIC_LABELS, else fraud-labels]."),
    ] = None,
    transactions_topic: Annotated[
        str | None,
        typer.Option(
            help="Topic of the labelled transactions [default: $FRAUD_KAFKA_TOPIC_TRANSACTIONS, "
            "else transactions]."
        ),
    ] = None,
    labelled_transactions: Annotated[
        bool,
        typer.Option(
            help="Also publish each labelled transaction (with is_fraud) to the transactions "
            "topic when its label is published."
        ),
    ] = True,
    label_delay_days: Annotated[
        float | None,
        typer.Option(
            help="Days from a transaction to its label, >= 0 [default: the label delay the "
            "features assume, 7]."
        ),
    ] = None,
    rate: Annotated[
        float, typer.Option(help="Transactions per second; 0 for as fast as possible.")
    ] = 0.0,
    batch: Annotated[int, typer.Option(help="Transactions per request.")] = DEFAULT_BATCH,
    start: Annotated[
        str | None,
        typer.Option(help="Replay transactions from this time on (ISO date or time, UTC)."),
    ] = None,
    until: Annotated[
        str | None,
        typer.Option(help="Replay transactions before this time (ISO date or time, UTC)."),
    ] = None,
    flush_labels: Annotated[
        bool,
        typer.Option(help="At the end, also publish the labels not due yet."),
    ] = False,
    summary: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE",
            help="Write the summary here as JSON: every second while the replay runs (how far "
            "it has got), and the final one at the end.",
        ),
    ] = None,
    pause_file: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE",
            help="While this file exists the replay holds: nothing is sent or published and "
            "data time stands still; it resumes at its rate once the file is removed.",
        ),
    ] = None,
    timeout: Annotated[
        float, typer.Option(help="Seconds to wait for one answer.")
    ] = DEFAULT_REQUEST_TIMEOUT_S,
    connect_timeout: Annotated[
        float,
        typer.Option(help="Seconds to keep retrying while the server (or broker) does not answer."),
    ] = DEFAULT_CONNECT_TIMEOUT_S,
) -> None:
    """Replay transactions to the scoring endpoint in time order, publishing labels when due."""
    from fraud_detection.replay import default_delay_days, delay_micros

    if not data:
        raise _usage("--data: give at least one file")
    if label_delay_days is None:
        label_delay_days = default_delay_days()
    try:
        delay = delay_micros(label_delay_days)
    except ValueError as exc:
        raise _usage(f"--label-delay-days: {exc}") from None
    if not (math.isfinite(rate) and rate >= 0):
        raise _usage(f"--rate: must be a number >= 0 (0: as fast as possible), got {rate:g}")
    if batch < 1:
        raise _usage(f"--batch: must be at least 1, got {batch}")
    if not (math.isfinite(timeout) and timeout > 0):
        raise _usage(f"--timeout: must be a positive number of seconds, got {timeout:g}")
    if not (math.isfinite(connect_timeout) and connect_timeout >= 0):
        raise _usage(
            f"--connect-timeout: must be a number of seconds >= 0, got {connect_timeout:g}"
        )
    if not url.startswith(("http://", "https://")):
        raise _usage(f"--url: must start with http:// or https://, got {url!r}")
    first = parse_date("--start", start)
    stop = parse_date("--until", until)
    if first is not None and stop is not None and stop <= first:
        raise _usage(f"--until: must be after --start ({start}), got {until}")
    if model is not None and not model.strip():
        raise _usage("--model: must not be empty")
    for name, value in (
        ("--labels-topic", labels_topic),
        ("--transactions-topic", transactions_topic),
    ):
        if value is not None and not value.strip():
            raise _usage(f"{name}: must not be empty")
    if summary is not None and summary.is_dir():
        raise _usage(f"--summary: {summary} is a directory")

    from fraud_detection.data.files import read_transactions
    from fraud_detection.replay import prepare

    try:
        frame = read_transactions(data)
    except (OSError, ValueError) as exc:  # FileNotFoundError, UnknownSchemaError, bad type
        raise _usage(f"--data: {exc}") from None
    prepared = prepare(frame, first, stop)
    if not len(prepared):
        raise _usage(
            "--data: no transactions to replay"
            + (" within --start/--until" if first or stop else "")
        )
    code = run(
        prepared,
        url=url,
        model=model,
        bootstrap=bootstrap,
        labels_topic=labels_topic,
        transactions_topic=transactions_topic,
        labelled_transactions=labelled_transactions,
        delay=delay,
        rate=rate,
        batch=batch,
        flush_labels=flush_labels,
        summary_file=summary,
        timeout_s=timeout,
        connect_timeout_s=connect_timeout,
        pause_file=pause_file,
    )
    if code != EXIT_OK:
        raise typer.Exit(code)


def _note(message: str) -> None:
    err_console.print(f"[yellow]note:[/] {escape(message)}", soft_wrap=True, highlight=False)


def _progress() -> Progress:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("sent"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("labels {task.fields[labels]}  rejected {task.fields[rejected]}"),
        TextColumn("data time {task.fields[data_time]}"),
        TimeElapsedColumn(),
        console=err_console,
        transient=False,
    )


class _SummaryWriter:
    """Writes the summary file (whole, by atomic replace) at most every
    :data:`SUMMARY_EVERY_S` seconds, so it shows how far the replay has got while it runs."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.written = -math.inf

    def write(self, summary: ReplaySummary, force: bool = False) -> None:
        now = time.monotonic()
        if self.path is None or not (force or now - self.written >= SUMMARY_EVERY_S):
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(self.path.name + ".partial")
        partial.write_text(json.dumps(summary.to_dict(), indent=2) + "\n")
        partial.replace(self.path)
        self.written = now


def _on_progress(
    progress: Progress, task: TaskID, summary: ReplaySummary, writer: _SummaryWriter
) -> None:
    _update(progress, task, summary)
    writer.write(summary)


def _update(progress: Progress, task: TaskID, summary: ReplaySummary) -> None:
    progress.update(
        task,
        completed=summary.sent,
        labels=f"{summary.labels:,}",
        rejected=f"{sum(summary.rejected.values()):,}",
        data_time=summary.data_time(),
    )


def run(
    prepared: ReplayData,
    *,
    url: str,
    model: str | None,
    bootstrap: str | None,
    labels_topic: str | None,
    transactions_topic: str | None,
    labelled_transactions: bool,
    delay: int,
    rate: float,
    batch: int,
    flush_labels: bool,
    summary_file: Path | None,
    timeout_s: float,
    connect_timeout_s: float,
    pause_file: Path | None = None,
) -> int:
    """Replay ``prepared``; return the exit status. The summary is printed (and written to
    ``summary_file``) however the replay ends; it holds while ``pause_file`` exists."""
    from fraud_detection.replay import (
        LabelPublisher,
        ReplayError,
        ReplaySummary,
        ScoringClient,
        run_replay,
    )
    from fraud_detection.serving.launcher import MODEL_NAME
    from fraud_detection.streaming.kafka import Topics, resolve_bootstrap

    publisher = None
    if not prepared.has_labels:
        _note("the data has no is_fraud column: replaying without labels")
    else:
        unlabelled = sum(label < 0 for label in prepared.labels)
        if unlabelled:
            _note(f"{unlabelled:,} transaction(s) have no is_fraud of 0 or 1: no label for them")
        if bootstrap is None:
            from fraud_detection.serve_cli import existing_bootstrap

            bootstrap = existing_bootstrap()
        topics = Topics.from_env()
        publisher = LabelPublisher(
            resolve_bootstrap(bootstrap),
            labels_topic or topics.labels,
            (transactions_topic or topics.transactions) if labelled_transactions else None,
            connect_timeout_s=connect_timeout_s,
        )
    if prepared.skipped:
        _note(f"{sum(prepared.skipped.values()):,} row(s) cannot be sent and are skipped")
    scorer = ScoringClient(
        url, model or MODEL_NAME, timeout_s=timeout_s, connect_timeout_s=connect_timeout_s
    )
    summary = ReplaySummary()
    writer = _SummaryWriter(summary_file)
    code = EXIT_OK
    try:
        if publisher is not None:
            publisher.start()
        where = (
            f"labels to {publisher.labels_topic} on {publisher.bootstrap}"
            if publisher
            else "no labels"
        )
        err_console.print(
            f"replaying {len(prepared):,} transactions to {scorer.predict_url}; {where}",
            soft_wrap=True,
            markup=False,
            highlight=False,
        )
        with _progress() as progress:
            task = progress.add_task(
                "replay", total=len(prepared), labels="0", rejected="0", data_time="-"
            )
            run_replay(
                prepared,
                scorer,
                publisher,
                delay=delay,
                batch=batch,
                rate=rate,
                flush=flush_labels,
                progress=lambda current: _on_progress(progress, task, current, writer),
                summary=summary,
                held=None if pause_file is None else pause_file.exists,
            )
    except ReplayError as exc:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)
        code = EXIT_FAILED
    except KeyboardInterrupt:
        err_console.print("interrupted; flushing what was published", highlight=False)
        code = EXIT_INTERRUPTED
    finally:
        scorer.close()
        if publisher is not None:
            try:
                publisher.close()
            except ReplayError as exc:
                err_console.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)
                code = code or EXIT_FAILED
    if code == EXIT_OK and summary.sent and not summary.scored:
        err_console.print("[bold red]error:[/] no transaction was scored", soft_wrap=True)
        code = EXIT_FAILED
    _report(summary, writer)
    return code


def _report(summary: ReplaySummary, writer: _SummaryWriter) -> None:
    for reason in summary.reasons:
        err_console.print(f"rejected: {reason}", soft_wrap=True, markup=False, highlight=False)
    if "413" in summary.rejected:
        _note("413: the request is larger than the server accepts; lower --batch")
    console.print(summary.render(), soft_wrap=True, markup=False, highlight=False)
    writer.write(summary, force=True)


def register(app: typer.Typer) -> None:
    """Add ``fraud replay`` to the ``fraud`` app."""
    app.command("replay", epilog=REPLAY_EPILOG)(replay)
