"""Checkpoints of the transformer's live state, so a restart continues where it stopped.

The live state is what serving learned since the bundle's snapshot: every card's recent
transactions and every merchant's daily counts (:class:`~fraud_detection.features.
OnlineFeatureState`), plus the retry map (recent ``transaction_id`` → what was scored, so a
retry is answered the same and not counted twice) and the event-time clock.

A checkpoint is one gzip JSON file, ``checkpoint-<UTC time>-<sequence>.json.gz``, written
atomically (temporary file, fsync, rename) in the state directory; the newest
:data:`KEEP_CHECKPOINTS` are kept. :func:`load_latest` returns the newest checkpoint that reads
cleanly (a truncated or foreign file is skipped with a warning, never served from).

:func:`write_in_background` takes the checkpoint the way Redis saves in the background: it
forks, and the child serializes the state it inherited (a consistent point-in-time copy, by
copy-on-write) and writes the file, while the serving process goes on; the serving process only
pauses for the fork itself, never for the serialization, which would otherwise hold the GIL.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import os
import signal
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import count
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from fraud_detection.features import OnlineFeatureState

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
PREFIX = "checkpoint-"
SUFFIX = ".json.gz"
#: How many checkpoints stay on disk (the newest; older ones are removed after each write).
KEEP_CHECKPOINTS = 3
_SEQUENCE = count()


class Scored(NamedTuple):
    """What the retry map remembers of one transaction."""

    card_id: str
    merchant_id: str
    amount: float
    timestamp_micros: int
    features: list[float]
    mirrored: bool


@dataclass
class Checkpoint:
    """A restored live state."""

    features: OnlineFeatureState
    seen: OrderedDict[str, Scored]
    model_version: str | None
    path: Path | None = None


def checkpoint_payload(
    features: dict[str, Any],
    seen: OrderedDict[str, Scored],
    model_version: str | None,
) -> dict[str, Any]:
    """The JSON document of a checkpoint (``features`` from ``OnlineFeatureState.to_dict``)."""
    return {
        "format": CHECKPOINT_FORMAT,
        "written_at": datetime.now(UTC).isoformat(),
        "model_version": model_version,
        "features": features,
        "seen": [[key, *entry] for key, entry in seen.items()],
    }


def next_checkpoint_path(state_dir: str | Path) -> Path:
    """A new checkpoint file name in ``state_dir``, after every existing one."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    return Path(state_dir) / f"{PREFIX}{stamp}-{next(_SEQUENCE):06d}{SUFFIX}"


def write_checkpoint(
    state_dir: str | Path, payload: dict[str, Any], target: Path | None = None
) -> Path:
    """Write a checkpoint atomically into ``state_dir``; keep the newest few; return its path."""
    directory = Path(state_dir)
    directory.mkdir(parents=True, exist_ok=True)
    target = target or next_checkpoint_path(directory)
    data = orjson.dumps(payload)
    with tempfile.NamedTemporaryFile(dir=directory, delete=False, suffix=".tmp") as handle:
        with gzip.GzipFile(fileobj=handle, mode="wb", mtime=0, compresslevel=1) as archive:
            archive.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(handle.name, target)
    for stale in checkpoints(directory)[:-KEEP_CHECKPOINTS]:
        stale.unlink(missing_ok=True)
    for leftover in directory.glob("*.tmp"):  # from a writer killed half-way
        leftover.unlink(missing_ok=True)
    return target


def write_in_background(
    state_dir: str | Path,
    make_payload: Callable[[], dict[str, Any]],
    hold: contextlib.AbstractContextManager[Any],
    timeout_s: float = 600.0,
) -> Path:
    """Write a checkpoint from a forked child; wait for it (call this off the request path).

    ``hold`` (the state's lock) is held across the fork only, so the child inherits a state no
    request is half-way through changing; ``make_payload`` runs in the child and must not take
    that lock. Where ``fork`` does not exist, the checkpoint is written in this process.

    Raises:
        OSError: the child failed, or did not finish within ``timeout_s`` (it is killed).
    """
    directory = Path(state_dir)
    directory.mkdir(parents=True, exist_ok=True)
    target = next_checkpoint_path(directory)
    if not hasattr(os, "fork"):  # pragma: no cover - not Linux
        with hold:
            payload = make_payload()
        return write_checkpoint(directory, payload, target)
    with hold:
        pid = os.fork()
        if pid == 0:  # the child: serialize, write, leave without running any cleanup
            status = 1
            try:
                os.nice(10)
                write_checkpoint(directory, make_payload(), target)
                status = 0
            finally:
                os._exit(status)
    _wait_for_child(pid, timeout_s)
    return target


def _wait_for_child(pid: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            code = os.waitstatus_to_exitcode(status)
            if code != 0:
                raise OSError(f"the checkpoint writer (pid {pid}) exited with status {code}")
            return
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise OSError(f"the checkpoint writer (pid {pid}) took over {timeout_s:g} s; killed")
        time.sleep(0.01)


def checkpoints(state_dir: str | Path) -> list[Path]:
    """The checkpoint files in ``state_dir``, oldest first."""
    directory = Path(state_dir)
    if not directory.is_dir():
        return []
    return sorted(
        path
        for path in directory.iterdir()
        if path.name.startswith(PREFIX) and path.name.endswith(SUFFIX)
    )


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Read one checkpoint file.

    Raises:
        ValueError: the file is not a readable checkpoint of this format and feature set.
    """
    path = Path(path)
    try:
        with gzip.open(path, "rb") as archive:
            document = orjson.loads(archive.read())
    except (OSError, EOFError, ValueError, orjson.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a readable checkpoint ({exc})") from exc
    if not isinstance(document, dict) or document.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: checkpoint format is not {CHECKPOINT_FORMAT}")
    # A checkpoint's fraud counts came from bundle snapshots (and, since format 2, the labels
    # topic); an old one's, lacking transaction ids, are dropped and restored from those.
    features = OnlineFeatureState.from_dict(document["features"], drop_legacy_labels=True)
    seen: OrderedDict[str, Scored] = OrderedDict(
        (key, Scored(card, merchant, float(amount), int(stamp), list(row), bool(mirrored)))
        for key, card, merchant, amount, stamp, row, mirrored in document["seen"]
    )
    return Checkpoint(features, seen, document.get("model_version"), path)


def load_latest(state_dir: str | Path) -> Checkpoint | None:
    """The newest checkpoint in ``state_dir`` that reads cleanly, or None when there is none."""
    for path in reversed(checkpoints(state_dir)):
        try:
            return read_checkpoint(path)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("skipping checkpoint %s: %s", path, exc)
    return None
