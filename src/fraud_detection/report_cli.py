"""``fraud monitor-report``: the monitoring loop's results files to one HTML report.

Reads the JSON-lines files the loop writes (drift results, performance results, retraining
events), writes a self-contained HTML report and, with ``--timeline``, prints the loop's
timeline. Exit statuses: 0 the report was written; 1 it could not be written; 2 invalid
options (a results file missing or unreadable, ``--out`` a directory), nothing written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
REPORT_EPILOG = (
    "A drift result or performance window written twice counts once (a performance window "
    "keeps its highest revision); records of unknown kinds are counted and ignored; lines that "
    "are not JSON objects are skipped and listed in the report. "
    "Exit status: 0 the report was written; 1 it could not be written; 2 invalid options."
)

console = Console()
err_console = Console(stderr=True)


def _error(message: str, code: int) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    return typer.Exit(code)


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _check_results(paths: list[Path]) -> None:
    for path in paths:
        if not path.exists():
            raise _error(f"--results: {path}: no such file", EXIT_USAGE)
        if path.is_dir():
            raise _error(f"--results: {path}: is a directory, not a file", EXIT_USAGE)


def monitor_report(
    results: Annotated[
        list[Path],
        typer.Option(
            "--results",
            metavar="FILE",
            help="A JSON-lines file of the loop's results (repeatable): drift results, "
            "performance results, retraining events, in any order.",
        ),
    ],
    out: Annotated[Path, typer.Option(metavar="FILE", help="The HTML file to write.")] = Path(
        "monitoring-report.html"
    ),
    title: Annotated[
        str, typer.Option(metavar="TEXT", help="The report's title.")
    ] = "Fraud monitoring report",
    timeline: Annotated[
        bool, typer.Option("--timeline", help="Also print the loop's timeline.")
    ] = False,
) -> None:
    """Write an HTML report of the monitoring loop: drift, performance, retraining, promotions."""
    from fraud_detection.monitoring.report import render_monitoring_html
    from fraud_detection.monitoring.timeline import (
        collect_history,
        read_result_lines,
        render_timeline,
        timeline_rows,
    )

    _check_results(results)
    if out.is_dir():
        raise _error(f"--out: {out}: is a directory; give a file name", EXIT_USAGE)
    try:
        read = read_result_lines(results)
    except OSError as exc:
        raise _error(f"--results: {exc.filename}: cannot read: {exc.strerror}", EXIT_USAGE) from exc
    history = collect_history(read.records, read.bad_lines)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(render_monitoring_html(history, title), encoding="utf-8")
    except OSError as exc:
        raise _error(f"--out: {out}: cannot write: {exc.strerror or exc}", EXIT_FAILED) from exc
    if timeline:
        console.print(render_timeline(timeline_rows(history)))
    counts = [
        _count(len(history.drift), "drift window") + f" ({len(history.drift_windows)} drifted)",
        _count(len(history.performance), "performance window"),
        _count(len(history.triggers), "retraining trigger"),
        _count(len(history.promotions), "promotion"),
    ]
    console.print(
        f"wrote {out}: {', '.join(counts)}", soft_wrap=True, markup=False, highlight=False
    )
    if history.skipped:
        err_console.print(
            f"[yellow]warning:[/] skipped {len(history.skipped)} unreadable lines or records "
            f"(first: {escape(history.skipped[0].where)}: {escape(history.skipped[0].reason)}); "
            "the report lists them",
            soft_wrap=True,
        )
    if not history.drift and not history.performance and not history.retrains:
        err_console.print(
            "[yellow]warning:[/] no drift, performance or retraining records in "
            + escape(", ".join(str(path) for path in results)),
            soft_wrap=True,
        )


def register(app: typer.Typer) -> None:
    """Add ``fraud monitor-report`` to the ``fraud`` app."""
    app.command("monitor-report", epilog=REPORT_EPILOG)(monitor_report)
