"""What the ``fraud`` commands share: the error line and its exit status, where a command keeps
its files by default, and the log format of the long-running commands."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

_stderr = Console(stderr=True)


def error_exit(message: str, code: int) -> typer.Exit:
    """Print ``error: <message>`` to stderr; return the exit (status ``code``) to raise."""
    _stderr.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    return typer.Exit(code)


def state_path(relative: str | Path) -> Path:
    """``relative`` under the state directory: ``$FRAUD_STATE_DIR``, else ``./.fraud``."""
    from fraud_detection.streaming.broker import DEFAULT_STATE_ROOT, ENV_STATE_DIR

    return Path(os.environ.get(ENV_STATE_DIR) or DEFAULT_STATE_ROOT) / relative


def configure_logging(verbose: bool, always_info: Sequence[str] = ()) -> None:
    """Log to stderr, one line a record in UTC: the project's loggers at INFO (DEBUG when
    ``verbose``, except ``always_info``), everything else at WARNING; warnings are logged."""
    handler = logging.StreamHandler(sys.stderr)
    formatter = logging.Formatter(
        "%(asctime)s.%(msecs)03dZ %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S"
    )
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("fraud_detection").setLevel(logging.DEBUG if verbose else logging.INFO)
    for name in always_info:
        logging.getLogger(name).setLevel(logging.INFO)
    logging.captureWarnings(True)


def stop_on_signals() -> tuple[threading.Event, Callable[[], None]]:
    """An event that SIGINT and SIGTERM set from now on (instead of stopping the process), and
    the function that puts the previous handlers back."""
    stop = threading.Event()
    previous = {
        signum: signal.signal(signum, lambda *_: stop.set())
        for signum in (signal.SIGINT, signal.SIGTERM)
    }

    def restore() -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    return stop, restore
