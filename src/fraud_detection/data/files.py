"""Reading and writing transaction files (CSV, CSV.gz, Parquet) and mapping their schema.

Readers map every known source schema onto the canonical field names of
:mod:`fraud_detection.schema` and return the values *as read*: typing and checking is the job of
:mod:`fraud_detection.data.validation`, so that nothing is coerced or dropped silently here.
"""

from __future__ import annotations

import contextlib
import csv
import glob
import gzip
import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fraud_detection.schema import (
    AMOUNT,
    CARD_ID,
    CATEGORY,
    ID_COLUMNS,
    LABEL,
    MERCHANT_ID,
    REQUIRED_COLUMNS,
    TIMESTAMP,
    TRANSACTION_ID,
)

CSV_SUFFIXES = (".csv", ".csv.gz")
PARQUET_SUFFIXES = (".parquet", ".pq")
_SUPPORTED = ", ".join(CSV_SUFFIXES + PARQUET_SUFFIXES)


@dataclass(frozen=True)
class SourceSchema:
    """A file layout the loaders understand: source column -> canonical field."""

    name: str
    mapping: Mapping[str, str]

    def missing(self, columns: Iterable[str]) -> list[str]:
        """Source columns of the required canonical fields that ``columns`` lacks."""
        present = set(columns)
        required = {source for source, field in self.mapping.items() if field in REQUIRED_COLUMNS}
        return sorted(required - present)


CANONICAL = SourceSchema(
    "canonical", {field: field for field in (*REQUIRED_COLUMNS, CATEGORY, LABEL)}
)
#: The "Reproducible ML for Credit Card Fraud Detection" handbook's simulated transactions.
#: ``TX_FRAUD_SCENARIO`` is the answer key and is deliberately never read.
HANDBOOK = SourceSchema(
    "handbook",
    {
        "TRANSACTION_ID": TRANSACTION_ID,
        "CUSTOMER_ID": CARD_ID,
        "TERMINAL_ID": MERCHANT_ID,
        "TX_AMOUNT": AMOUNT,
        "TX_DATETIME": TIMESTAMP,
        "TX_FRAUD": LABEL,
    },
)
SOURCE_SCHEMAS: tuple[SourceSchema, ...] = (CANONICAL, HANDBOOK)


class UnknownSchemaError(ValueError):
    """A file's columns match none of the known source schemas."""


def detect_schema(columns: Iterable[str], source: str = "<frame>") -> SourceSchema:
    """Return the source schema whose required columns are all in ``columns``.

    Raises :class:`UnknownSchemaError` listing, for each known schema, the missing fields.
    """
    columns = list(columns)
    for schema in SOURCE_SCHEMAS:
        if not schema.missing(columns):
            return schema
    details = "; ".join(
        f"{schema.name} schema lacks {', '.join(schema.missing(columns))}"
        for schema in SOURCE_SCHEMAS
    )
    raise UnknownSchemaError(
        f"{source}: unknown schema (columns: {', '.join(map(str, columns)) or 'none'}); {details}"
    )


def to_canonical_names(frame: pd.DataFrame, source: str = "<frame>") -> pd.DataFrame:
    """Rename a frame of any known schema to canonical field names, dropping other columns."""
    schema = detect_schema(frame.columns, source)
    kept = {src: dst for src, dst in schema.mapping.items() if src in frame.columns}
    out = frame[list(kept)].rename(columns=kept)
    for column in ID_COLUMNS:
        out[column] = _ids_to_str(out[column])
    return out.reset_index(drop=True)


def _ids_to_str(values: pd.Series) -> pd.Series:
    """Identifiers are strings; keep missing values missing so validation can report them."""
    if values.dtype == object and pd.api.types.infer_dtype(values, skipna=True) == "string":
        return values
    # Through object first: a nullable Int64 id 7 must become "7", not "7.0".
    return values.astype(object).map(_id_to_str)


def _id_to_str(value: object) -> object:
    if isinstance(value, str):
        return value
    try:
        missing = bool(pd.isna(value))  # None, NaN, pd.NA, NaT
    except (TypeError, ValueError):
        missing = False
    return value if missing else str(value)


def expand_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Expand globs and check every path exists; the result is sorted within each pattern."""
    expanded: list[Path] = []
    for raw in paths:
        text = str(raw)
        if glob.has_magic(text):
            matches = sorted(Path(p) for p in glob.glob(text))
            if not matches:
                raise FileNotFoundError(f"{text}: the pattern matches no file")
            expanded.extend(matches)
        else:
            path = Path(text)
            if not path.is_file():
                raise FileNotFoundError(f"{text}: no such file")
            expanded.append(path)
    if not expanded:
        raise FileNotFoundError("no input file given")
    return expanded


class UnsupportedFileTypeError(ValueError):
    """A file whose name is neither CSV nor Parquet."""


def _opened(source: Any) -> contextlib.AbstractContextManager[Any]:
    """``source`` ready for pandas: a local path as it is, an fsspec ``OpenFile`` opened."""
    return contextlib.nullcontext(source) if isinstance(source, str | Path) else source


def read_table(source: Any, name: str) -> pd.DataFrame:
    """One CSV (or CSV.gz) or Parquet file as read, its format chosen by ``name``.

    ``source`` is a local path or an fsspec ``OpenFile`` (opened, and decompressed, as needed).
    Identifier columns of every known schema are read as text: "007" and "7" are different
    cards. Raises :class:`UnsupportedFileTypeError` naming ``name`` for another kind of file.
    """
    lower = name.lower()
    if lower.endswith(CSV_SUFFIXES):
        with _opened(source) as stream:
            header = pd.read_csv(stream, nrows=0).columns
        dtypes = {
            src: str
            for schema in SOURCE_SCHEMAS
            for src, dst in schema.mapping.items()
            if dst in ID_COLUMNS and src in header
        }
        with _opened(source) as stream:
            return pd.read_csv(stream, dtype=dtypes)
    if lower.endswith(PARQUET_SUFFIXES):
        with _opened(source) as stream:
            return pd.read_parquet(stream)
    raise UnsupportedFileTypeError(f"{name}: unsupported file type; expected one of {_SUPPORTED}")


@dataclass(frozen=True)
class SourceRows:
    """The rows one file contributed to a combined frame: positions ``start`` to
    ``start + rows - 1``."""

    path: Path
    start: int
    rows: int


def read_transaction_files(
    paths: Iterable[str | Path],
) -> tuple[pd.DataFrame, list[SourceRows]]:
    """:func:`read_transactions`, and which rows of the frame each file holds, in order."""
    files = expand_paths(paths)
    frames = [to_canonical_names(read_table(path, str(path)), str(path)) for path in files]
    sources, start = [], 0
    for path, frame in zip(files, frames, strict=True):
        sources.append(SourceRows(path, start, len(frame)))
        start += len(frame)
    frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    return frame, sources


def read_transactions(paths: Iterable[str | Path]) -> pd.DataFrame:
    """Read one or many transaction files (or globs) into one frame with canonical names.

    Values are returned as read (no type coercion, no row dropped); validate before use.
    """
    return read_transaction_files(paths)[0]


def locate_rows(sources: Sequence[SourceRows], positions: Iterable[int]) -> dict[int, str]:
    """Where each 0-based position of a combined frame is in its file.

    ``line N`` in a CSV file (the header is line 1; a record spanning several lines is named by
    its first), ``row N`` in a Parquet file (counted from 0, as pandas and pyarrow do); prefixed
    with the file name when the frame comes from several files.
    """
    wanted: dict[int, list[int]] = {}
    for position in positions:
        for index, source in enumerate(sources):
            if source.start <= position < source.start + source.rows:
                wanted.setdefault(index, []).append(position)
                break
    located: dict[int, str] = {}
    for index, found in wanted.items():
        source = sources[index]
        records = {position - source.start for position in found}
        is_csv = source.path.name.lower().endswith(CSV_SUFFIXES)
        lines = _csv_record_lines(source.path, records) if is_csv else {}
        prefix = f"{source.path.name} " if len(sources) > 1 else ""
        for position in found:
            record = position - source.start
            if not is_csv:
                located[position] = f"{prefix}row {record}"
            elif record in lines:
                located[position] = f"{prefix}line {lines[record]}"
            else:  # the file could not be re-read as CSV: count its data rows from 1
                located[position] = f"{prefix}data row {record + 1}"
    return located


def _csv_record_lines(path: Path, records: set[int]) -> dict[int, int]:
    """The line on which each of ``records`` (0-based data records of a CSV file) starts.

    Counts as pandas reads: the first record is the header, blank lines are skipped, a quoted
    field may span lines. Stops after the last record asked for.
    """
    found: dict[int, int] = {}
    last = max(records, default=-1)
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8", errors="replace", newline="") as handle:
            reader = csv.reader(handle)
            record, previous_end = -1, 0  # the header is record -1
            for fields in reader:
                start, previous_end = previous_end + 1, reader.line_num
                if not fields:
                    continue
                if record in records:
                    found[record] = start
                if record >= last:
                    break
                record += 1
    except (OSError, csv.Error):
        pass  # the caller falls back to data-row numbers
    return found


def format_timestamps(values: pd.Series) -> pd.Series:
    """ISO-8601 UTC text with microseconds and a ``Z`` suffix, the canonical wire format."""
    # ISO8601, not a format inferred from the first value: "...Z", offsets and naive text mix.
    stamps = pd.to_datetime(values, utc=True, format="ISO8601")
    stamps = stamps.dt.tz_convert(None).to_numpy("datetime64[us]")
    return pd.Series(np.char.add(np.datetime_as_string(stamps, unit="us"), "Z"), index=values.index)


def write_transactions(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write a canonical frame to CSV, CSV.gz or Parquet, chosen by the file name.

    The bytes depend only on the frame: gzip carries no timestamp, so the same data gives
    byte-identical files.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    name = path.name.lower()
    if name.endswith(PARQUET_SUFFIXES):
        frame.to_parquet(path, index=False)
        return path
    if not name.endswith(CSV_SUFFIXES):
        raise ValueError(f"{path}: unsupported file type; expected one of {_SUPPORTED}")
    out = frame.copy()
    if TIMESTAMP in out.columns:
        out[TIMESTAMP] = format_timestamps(out[TIMESTAMP])
    text = out.to_csv(index=False, lineterminator="\n")
    if name.endswith(".gz"):
        buffer = io.BytesIO()
        with gzip.GzipFile(
            fileobj=buffer, mode="wb", mtime=0, filename="", compresslevel=6
        ) as handle:
            handle.write(text.encode())
        path.write_bytes(buffer.getvalue())
    else:
        path.write_text(text)
    return path
