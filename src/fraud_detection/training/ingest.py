"""Ingestion: transactions from files (or globs), from a Kafka topic, or both, into one frame.

Files are CSV, CSV.gz or Parquet in the canonical or the handbook schema
(:mod:`fraud_detection.data.files`). A path may also be a URL (``s3://bucket/x.csv.gz``,
``gs://…``, ``memory://…``, ``file:///…``, globs allowed): it is read through fsspec
(:mod:`fraud_detection.training.storage`, S3 settings from the environment); a missing protocol
package (``s3://`` needs ``s3fs``) or an absent object is an :class:`IngestError` naming the URL.

A Kafka topic is read with a bound (:func:`fraud_detection.streaming.kafka.read_topic`): up to
``max_records`` records, or until the end offsets seen when the read started; each record's
value is one JSON transaction.

Values are kept as read (canonical names, no coercion): typing and checking is the validation
step's job, so that a bad value is reported there rather than silently changed here.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pandas as pd


class IngestError(ValueError):
    """No usable input: nothing given, a missing file, an unknown schema, no rows."""


def read_files(paths: Sequence[str]) -> tuple[pd.DataFrame, list[str]]:
    """Transactions from files or globs, and the files read; :class:`IngestError` names the
    problem (a missing file, a pattern matching nothing, an unknown schema or file type)."""
    from fraud_detection.data.files import expand_paths, read_transactions

    try:
        files = expand_paths(paths)
        return read_transactions(files), [str(path) for path in files]
    except (OSError, ValueError) as exc:  # FileNotFoundError, UnknownSchemaError, bad type
        raise IngestError(str(exc)) from exc


def read_urls(urls: Sequence[str]) -> tuple[pd.DataFrame, list[str]]:
    """Transactions from fsspec URLs (globs expanded), and the objects read.

    :class:`IngestError` names the URL and the problem: the protocol's package is missing, the
    object is absent or unreadable, the pattern matches nothing, the schema is unknown.
    """
    from fraud_detection.data.files import (
        UnsupportedFileTypeError,
        read_table,
        to_canonical_names,
    )
    from fraud_detection.training.storage import StorageError, describe_error, open_files

    frames, names = [], []
    for url in urls:
        try:
            opened = open_files(url)
        except StorageError as exc:
            raise IngestError(str(exc)) from exc
        for one in opened:
            name = one.fs.unstrip_protocol(one.path)
            try:
                frame = read_table(one, name)
            except UnsupportedFileTypeError as exc:
                raise IngestError(str(exc)) from exc
            except (OSError, EOFError) as exc:  # absent, refused, unreachable, truncated
                raise IngestError(describe_error(name, exc)) from exc
            try:
                frames.append(to_canonical_names(frame, name))
            except ValueError as exc:  # UnknownSchemaError
                raise IngestError(str(exc)) from exc
            names.append(name)
    frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    return frame, names


def read_paths(paths: Sequence[str]) -> tuple[pd.DataFrame, list[str]]:
    """Transactions from files, globs and URLs, in the order given, and what was read.

    Without URLs this is :func:`read_files`.
    """
    from fraud_detection.training.storage import is_url

    if not any(is_url(path) for path in paths):
        return read_files(paths)
    frames, names = [], []
    for path in paths:
        frame, read = read_urls([path]) if is_url(path) else read_files([path])
        frames.append(frame)
        names.extend(read)
    return pd.concat(frames, ignore_index=True, sort=False), names


def decode_records(records: Sequence[Any], topic: str) -> pd.DataFrame:
    """A frame from Kafka records whose values are JSON objects (bytes or str)."""
    from fraud_detection.data.files import to_canonical_names

    rows = []
    for record in records:
        raw = record.value
        try:
            value = json.loads(raw.decode("utf-8") if isinstance(raw, bytes | bytearray) else raw)
        except (UnicodeDecodeError, json.JSONDecodeError, TypeError) as exc:
            raise IngestError(
                f"kafka:{topic} partition {record.partition} offset {record.offset}: "
                f"not a JSON transaction ({exc})"
            ) from exc
        if not isinstance(value, dict):
            raise IngestError(
                f"kafka:{topic} partition {record.partition} offset {record.offset}: "
                f"expected a JSON object, got {type(value).__name__}"
            )
        rows.append(value)
    if not rows:
        raise IngestError(f"kafka:{topic}: the topic holds no records")
    try:
        return to_canonical_names(pd.DataFrame.from_records(rows), f"kafka:{topic}")
    except ValueError as exc:
        raise IngestError(str(exc)) from exc


def read_kafka(
    bootstrap: str, topic: str, max_records: int = 0, timeout_s: float = 60.0
) -> pd.DataFrame:
    """Transactions from a topic, read from the start up to the bound (0: the end offsets)."""
    from fraud_detection.streaming.kafka import UnknownTopicError, read_topic

    try:
        records = read_topic(bootstrap, topic, max_records=max_records or None, timeout_s=timeout_s)
    except (UnknownTopicError, TimeoutError) as exc:
        raise IngestError(f"kafka:{topic} at {bootstrap}: {exc}") from exc
    return decode_records(records, topic)


def ingest(
    paths: Sequence[str] = (),
    kafka_bootstrap: str = "",
    kafka_topic: str = "",
    kafka_max_records: int = 0,
) -> tuple[pd.DataFrame, str]:
    """Read the files and the Kafka topic that are given; return one frame and its source (the
    files read and the topic).

    Both together are the usual input of a retraining run: the history in files, and the
    transactions labelled since, from the topic they are published to. At least one source
    must be given; an empty result is an error.
    """
    paths = [str(path) for path in paths if str(path).strip()]
    if not paths and not kafka_topic:
        raise IngestError("no input: give data files (or globs, or URLs) or a Kafka topic")
    frames, sources = [], []
    if paths:
        frame, files = read_paths(paths)
        frames.append(frame)
        sources.append(", ".join(files))
    if kafka_topic:
        if not kafka_bootstrap:
            from fraud_detection.streaming.kafka import resolve_bootstrap

            kafka_bootstrap = resolve_bootstrap(None)
        frames.append(read_kafka(kafka_bootstrap, kafka_topic, kafka_max_records))
        sources.append(f"kafka:{kafka_topic}@{kafka_bootstrap}")
    source = " + ".join(sources)
    frame = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True, sort=False)
    if frame.empty:
        raise IngestError(f"{source}: no transactions (the input is empty)")
    return frame, source


def arrow_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """Make mixed-type object columns writable to Parquet by turning their values to text.

    Missing values stay missing; a column of one Python type is left alone.
    """
    out = frame.copy()
    for column in out.columns:
        if out[column].dtype != object:
            continue
        kinds = {type(value) for value in out[column].dropna()}
        if len(kinds) > 1:
            out[column] = out[column].map(lambda v: v if pd.isna(v) else str(v))
    return out
