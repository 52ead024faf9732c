"""Checking transaction frames against the canonical contract, with pandera.

Frames arrive *as read* by :mod:`fraud_detection.data.files`: identifiers as text, timestamps as
text or date-times, amounts possibly of ``object`` dtype when a file holds garbage. Validation
never raises on bad data and never drops a row: every failing check is collected (lazy
validation) into a :class:`ValidationReport` naming the column, the check, how many rows fail
and which. Only a frame that passes is typed by :func:`to_canonical_types`.

``card_id`` must be an opaque token. A value that looks like a raw card number (13 to 19 digits,
optionally grouped by spaces or dashes, passing the Luhn check) is rejected: card numbers must
be tokenized before they reach the system (PCI DSS), and the report shows only their last four
digits.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.config import ValidationDepth, config_context
from pandera.errors import SchemaErrorReason, SchemaErrors
from rich.table import Table

from fraud_detection.data.files import read_transactions
from fraud_detection.schema import (
    AMOUNT,
    CARD_ID,
    CATEGORY,
    ID_COLUMNS,
    LABEL,
    MERCHANT_ID,
    OPTIONAL_COLUMNS,
    REQUIRED_COLUMNS,
    TIMESTAMP,
    TRANSACTION_ID,
)

__all__ = [
    "SCORING_SCHEMA",
    "TRAINING_SCHEMA",
    "DataValidationError",
    "Failure",
    "ValidationReport",
    "drop_invalid_rows",
    "is_card_number",
    "load_transactions",
    "luhn_valid",
    "summarize",
    "to_canonical_types",
    "validate_transactions",
]

logger = logging.getLogger(__name__)

#: How many failing rows a :class:`Failure` lists as examples.
MAX_EXAMPLES = 5

# Short, human names of the checks, as they appear in reports.
CHECK_PRESENT = "column present"
CHECK_NOT_NULL = "not null"
CHECK_TYPE = "type"
CHECK_NON_EMPTY = "non-empty"
CHECK_UNIQUE = "unique"
CHECK_NOT_CARD_NUMBER = "not a raw card number"
CHECK_FINITE = "finite"
CHECK_POSITIVE = f"{AMOUNT} > 0"
CHECK_TIMESTAMP = "parseable UTC timestamp"
CHECK_LABEL = f"{LABEL} in {{0, 1}}"

PCI_MESSAGE = (
    "card numbers must be tokenized before they reach the system (PCI DSS); "
    f"{CARD_ID} must be an opaque token"
)
_MESSAGES = {
    CHECK_PRESENT: "the column is required",
    CHECK_NOT_NULL: "values must not be missing",
    CHECK_NON_EMPTY: "identifiers must not be empty or blank",
    CHECK_UNIQUE: f"each {TRANSACTION_ID} must occur once (all rows sharing one are listed)",
    CHECK_NOT_CARD_NUMBER: PCI_MESSAGE,
    CHECK_FINITE: "amounts must be finite",
    CHECK_POSITIVE: "amounts must be greater than 0",
    CHECK_TIMESTAMP: "ISO-8601 date-time expected (values without an offset are read as UTC)",
    CHECK_LABEL: "labels must be 0 or 1",
}
_TYPE_MESSAGES = {
    **dict.fromkeys(ID_COLUMNS, "identifiers must be text"),
    AMOUNT: "amounts must be numbers",
    CATEGORY: "categories must be text",
}
#: The order failures are listed in.
_COLUMN_ORDER = (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS, LABEL)
_CHECK_ORDER = (
    CHECK_PRESENT,
    CHECK_NOT_NULL,
    CHECK_TYPE,
    CHECK_NON_EMPTY,
    CHECK_UNIQUE,
    CHECK_NOT_CARD_NUMBER,
    CHECK_FINITE,
    CHECK_POSITIVE,
    CHECK_TIMESTAMP,
    CHECK_LABEL,
)
_PANDERA_CHECK_NAMES = {"column_in_dataframe": CHECK_PRESENT, "not_nullable": CHECK_NOT_NULL}


# --------------------------------------------------------------------------------------------
# Raw card numbers: Luhn check, scalar and vectorised
# --------------------------------------------------------------------------------------------

#: 13 to 19 ASCII digits, optionally grouped by single spaces or dashes.
_CARD_PATTERN = r"[0-9](?:[ -]?[0-9]){12,18}"
_CARD_RE = re.compile(_CARD_PATTERN)
_SEPARATORS = re.compile(r"[ -]")
#: Longest text that can still be a grouped 19-digit number (digits plus separators).
_MAX_CARD_TEXT = 19 + 18
_PAN_WIDTH = 19


def luhn_valid(digits: str) -> bool:
    """True when the string of ASCII digits passes the Luhn (mod 10) check.

    Returns False for an empty string or one holding anything but the digits 0-9.
    """
    if not digits or not digits.isascii() or not digits.isdigit():
        return False
    total = 0
    for position, char in enumerate(reversed(digits)):
        digit = ord(char) - 48
        if position % 2:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return total % 10 == 0


def is_card_number(value: object) -> bool:
    """True when ``value`` looks like a raw payment card number (PAN).

    That is 13 to 19 digits, optionally grouped by spaces or dashes, passing the Luhn check.
    Integers are read as their decimal digits; anything else (opaque tokens such as
    ``"card-000123"``, a 16-digit number failing Luhn, missing values) is not a card number.
    """
    if isinstance(value, bool):
        return False
    if isinstance(value, int | np.integer):
        value = str(value)
    if not isinstance(value, str):
        return False
    text = value.strip()
    if not _CARD_RE.fullmatch(text):
        return False
    return luhn_valid(_SEPARATORS.sub("", text))


def _luhn_valid_array(digits: pd.Series) -> np.ndarray:
    """Vectorised Luhn check of digit-only strings of at most 19 characters."""
    if digits.empty:
        return np.zeros(0, dtype=bool)
    # Leading zeros do not change a Luhn sum, so pad every number to the same width.
    padded = "".join(digits.str.zfill(_PAN_WIDTH)).encode("ascii")
    matrix = np.frombuffer(padded, dtype=np.uint8).reshape(-1, _PAN_WIDTH).astype(np.int64) - 48
    # Counting from the right, every second digit (the check digit is first) is doubled;
    # with an odd width these are the odd positions from the left.
    doubled = matrix[:, 1::2] * 2
    doubled -= 9 * (doubled > 9)
    total = matrix[:, 0::2].sum(axis=1) + doubled.sum(axis=1)
    return total % 10 == 0


def _card_number_mask(text: pd.Series) -> pd.Series:
    """Which values of a text series (NaN for non-text) look like raw card numbers."""
    mask = pd.Series(False, index=text.index)
    lengths = text.str.len()
    # Cheap filter first: opaque tokens and short numeric ids never reach the regex.
    candidates = text[lengths.between(13, _MAX_CARD_TEXT)].str.strip()
    if candidates.empty:
        return mask
    shaped = candidates[candidates.str.fullmatch(_CARD_PATTERN).fillna(False).astype(bool)]
    if shaped.empty:
        return mask
    digits = shaped.str.replace(_SEPARATORS, "", regex=True)
    mask.loc[shaped.index] = _luhn_valid_array(digits)
    return mask


def _mask_card_number(value: object) -> str:
    """Only the last four digits of a card number may be shown."""
    digits = _SEPARATORS.sub("", str(value).strip())
    return "*" * (len(digits) - 4) + digits[-4:]


# --------------------------------------------------------------------------------------------
# Element helpers shared by the checks, the typing and the summary
# --------------------------------------------------------------------------------------------


def _all_text(values: pd.Series) -> bool:
    return pd.api.types.infer_dtype(values, skipna=True) in ("string", "empty")


def _is_integer_value(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


def _as_text(values: pd.Series) -> pd.Series:
    """Identifiers as text: strings kept, integers written in decimal, anything else NaN."""
    if _all_text(values):
        return values
    if pd.api.types.is_bool_dtype(values.dtype):
        return pd.Series(np.nan, index=values.index, dtype=object)
    if pd.api.types.is_integer_dtype(values.dtype):
        return values.astype(object).map(str)
    text = values.astype(object).map(
        lambda v: v if isinstance(v, str) else str(v) if _is_integer_value(v) else np.nan
    )
    return text.astype(object)


def _as_number(values: pd.Series) -> pd.Series:
    """Numbers as float64; NaN for missing values and anything that is not a number."""
    if pd.api.types.is_bool_dtype(values.dtype):
        return pd.Series(np.nan, index=values.index)
    if pd.api.types.is_numeric_dtype(values.dtype):
        return values.astype("float64")
    objects = values.astype(object)
    numbers = pd.to_numeric(objects, errors="coerce").astype("float64")
    return numbers.mask(objects.map(lambda v: isinstance(v, bool | np.bool_ | bytes)))


def _as_timestamps(values: pd.Series, errors: str = "coerce") -> pd.Series:
    """Parse date-times as UTC (naive values are UTC); NaT where unparseable."""
    if isinstance(values.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_dtype(
        values.dtype
    ):
        return pd.to_datetime(values, utc=True)
    if pd.api.types.is_numeric_dtype(values.dtype) or pd.api.types.is_bool_dtype(values.dtype):
        # Epoch numbers are ambiguous (seconds? milliseconds?): not a canonical timestamp.
        if errors == "raise" and len(values):
            raise ValueError(f"{TIMESTAMP}: numbers are not ISO-8601 date-times")
        return pd.Series(pd.NaT, index=values.index, dtype="datetime64[ns, UTC]")
    objects = values.astype(object)
    try:
        return pd.to_datetime(objects, utc=True, format="ISO8601", errors=errors)
    except (TypeError, ValueError, OverflowError):
        if errors == "raise":
            raise
        return objects.map(_parse_one).astype("datetime64[ns, UTC]")


def _parse_one(value: object) -> pd.Timestamp:
    if isinstance(value, bool | int | float | np.number):
        return pd.NaT
    try:
        return pd.to_datetime(value, utc=True, format="ISO8601")
    except (TypeError, ValueError, OverflowError):
        return pd.NaT


# --------------------------------------------------------------------------------------------
# The checks (vectorised; pandera removes missing values before calling them)
# --------------------------------------------------------------------------------------------


def _id_is_text(values: pd.Series) -> pd.Series | bool:
    if _all_text(values) or pd.api.types.is_integer_dtype(values.dtype):
        return True
    return values.map(lambda v: isinstance(v, str) or _is_integer_value(v))


def _id_not_blank(values: pd.Series) -> pd.Series | bool:
    if not (values.dtype == object or isinstance(values.dtype, pd.StringDtype)):
        return True
    # As text, so that integer ids in an object column are not taken for blanks.
    lengths = _as_text(values).str.strip().str.len()
    return (lengths.isna() | (lengths > 0)).astype(bool)


def _id_unique(values: pd.Series) -> pd.Series:
    # Compare ids as they will be typed: the integer 7 and the text "7" are the same id.
    # Values that are no id at all are a "type" failure, not duplicates of each other.
    keys = _as_text(values)
    return keys.isna() | ~keys.duplicated(keep=False)


def _not_card_number(values: pd.Series) -> pd.Series:
    return ~_card_number_mask(_as_text(values))


def _amount_is_number(values: pd.Series) -> pd.Series | bool:
    if pd.api.types.is_numeric_dtype(values.dtype) and not pd.api.types.is_bool_dtype(values.dtype):
        return True
    return _as_number(values).notna()


def _amount_finite(values: pd.Series) -> pd.Series:
    numbers = _as_number(values)
    return numbers.isna() | np.isfinite(numbers)


def _amount_positive(values: pd.Series) -> pd.Series:
    numbers = _as_number(values)
    # NaN (not a number: a "type" failure) and +-inf ("finite") are reported once, elsewhere.
    return ~np.isfinite(numbers) | numbers.isna() | (numbers > 0)


def _timestamp_parseable(values: pd.Series) -> pd.Series:
    return _as_timestamps(values).notna()


def _label_binary(values: pd.Series) -> pd.Series | bool:
    if pd.api.types.is_bool_dtype(values.dtype):
        return True
    if pd.api.types.is_numeric_dtype(values.dtype):
        return values.isin([0, 1])
    # Text "0"/"1" and booleans are labels too; anything else is not.
    return pd.to_numeric(values.astype(object), errors="coerce").isin([0, 1])


def _category_is_text(values: pd.Series) -> pd.Series | bool:
    if _all_text(values):
        return True
    return values.map(lambda v: isinstance(v, str))


def _check(function: Callable[[pd.Series], Any], name: str, message: str) -> pa.Check:
    return pa.Check(function, name=name, error=message)


def _id_checks(column: str) -> list[pa.Check]:
    checks = [
        _check(_id_is_text, CHECK_TYPE, _TYPE_MESSAGES[column]),
        _check(_id_not_blank, CHECK_NON_EMPTY, _MESSAGES[CHECK_NON_EMPTY]),
    ]
    if column == TRANSACTION_ID:
        checks.append(_check(_id_unique, CHECK_UNIQUE, _MESSAGES[CHECK_UNIQUE]))
    if column == CARD_ID:
        checks.append(_check(_not_card_number, CHECK_NOT_CARD_NUMBER, PCI_MESSAGE))
    return checks


def _build_schema(labelled: bool) -> pa.DataFrameSchema:
    columns: dict[str, pa.Column] = {
        column: pa.Column(None, _id_checks(column), nullable=False) for column in ID_COLUMNS
    }
    columns[AMOUNT] = pa.Column(
        None,
        [
            _check(_amount_is_number, CHECK_TYPE, _TYPE_MESSAGES[AMOUNT]),
            _check(_amount_finite, CHECK_FINITE, _MESSAGES[CHECK_FINITE]),
            _check(_amount_positive, CHECK_POSITIVE, _MESSAGES[CHECK_POSITIVE]),
        ],
        nullable=False,
    )
    columns[TIMESTAMP] = pa.Column(
        None,
        _check(_timestamp_parseable, CHECK_TIMESTAMP, _MESSAGES[CHECK_TIMESTAMP]),
        nullable=False,
    )
    columns[CATEGORY] = pa.Column(
        None,
        _check(_category_is_text, CHECK_TYPE, _TYPE_MESSAGES[CATEGORY]),
        nullable=False,
        required=False,
    )
    # Scoring data need not carry a label; one that is present must still be valid, so that a
    # frame that passes can always be typed.
    columns[LABEL] = pa.Column(
        None,
        _check(_label_binary, CHECK_LABEL, _MESSAGES[CHECK_LABEL]),
        nullable=False,
        required=labelled,
    )
    kind = "training" if labelled else "scoring"
    return pa.DataFrameSchema(
        columns, strict=False, ordered=False, name=f"canonical transaction ({kind})"
    )


#: Labelled transactions, for training and evaluation.
TRAINING_SCHEMA: pa.DataFrameSchema = _build_schema(labelled=True)
#: Transactions to score: no label required (one that is present is checked all the same).
SCORING_SCHEMA: pa.DataFrameSchema = _build_schema(labelled=False)


# --------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Failure:
    """One failing check on one column.

    ``examples`` are up to :data:`MAX_EXAMPLES` row numbers (0-based positions in the frame);
    ``values`` holds the offending value of each example row, as text (card numbers masked).
    """

    column: str
    check: str
    count: int
    examples: list[int] = field(default_factory=list)
    values: list[str] = field(default_factory=list)
    message: str = ""
    #: Every failing row number; None when the check failed for the column as a whole.
    rows: tuple[int, ...] | None = field(default=None, repr=False, compare=False)

    def describe(self) -> str:
        """``column: check (n rows)``, the one-line form used in error messages."""
        rows = "row" if self.count == 1 else "rows"
        return f"{self.column}: {self.check} ({self.count:,} {rows})"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable form."""
        return {
            "column": self.column,
            "check": self.check,
            "count": self.count,
            "examples": list(self.examples),
            "values": list(self.values),
            "message": self.message,
        }


@dataclass(frozen=True)
class ValidationReport:
    """The outcome of validating a frame: every failing check, nothing dropped."""

    n_rows: int
    failures: list[Failure] = field(default_factory=list)
    labelled: bool = True

    @property
    def ok(self) -> bool:
        """True when no check failed."""
        return not self.failures

    def failure(self, column: str, check: str) -> Failure | None:
        """The failure of ``check`` on ``column``, if any."""
        for failure in self.failures:
            if failure.column == column and failure.check == check:
                return failure
        return None

    def failing_rows(self) -> list[int] | None:
        """Every row that failed a row-level check; None when a whole column failed."""
        if any(failure.rows is None for failure in self.failures):
            return None
        return sorted({row for failure in self.failures for row in failure.rows or ()})

    def summary(self) -> str:
        """One line: the verdict, then each failing column, check and count."""
        if self.ok:
            return f"{self.n_rows:,} rows valid"
        problems = "; ".join(failure.describe() for failure in self.failures)
        return f"{self._headline()}: {problems}"

    def _headline(self) -> str:
        checks = "check" if len(self.failures) == 1 else "checks"
        rows = "row" if self.n_rows == 1 else "rows"
        return f"{len(self.failures)} failed {checks} on {self.n_rows:,} {rows}"

    def render(self) -> Table:
        """A table naming each failing column and check, the count and example rows."""
        if self.ok:
            table = Table(title=f"valid: {self.n_rows:,} rows", show_header=False)
            return table
        table = Table(
            title=f"invalid: {self._headline()}",
            title_justify="left",
            caption="\n".join(
                dict.fromkeys(
                    f"{failure.column} / {failure.check}: {failure.message}"
                    for failure in self.failures
                    if failure.message
                )
            ),
            caption_justify="left",
        )
        table.add_column("column", no_wrap=True, style="bold")
        table.add_column("check", no_wrap=True)
        table.add_column("rows", justify="right", no_wrap=True)
        table.add_column("example rows", overflow="fold")
        table.add_column("example values", overflow="fold")
        for failure in self.failures:
            table.add_row(
                failure.column,
                failure.check,
                f"{failure.count:,}",
                ", ".join(map(str, failure.examples)),
                ", ".join(failure.values),
            )
        return table

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable form, for pipeline artifacts."""
        return {
            "ok": self.ok,
            "n_rows": self.n_rows,
            "labelled": self.labelled,
            "failures": [failure.to_dict() for failure in self.failures],
        }


class DataValidationError(ValueError):
    """Transactions failed validation; ``report`` holds every failure."""

    def __init__(self, report: ValidationReport, source: str | None = None) -> None:
        self.report = report
        self.source = source
        where = f" in {source}" if source else ""
        super().__init__(f"invalid transactions{where}: {report.summary()}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.report, self.source))


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def _show(value: object) -> str:
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _failure_from_error(error: Any, n_rows: int) -> Failure:
    check = error.check
    check_name = _PANDERA_CHECK_NAMES.get(check, check) if isinstance(check, str) else check.name
    cases = error.failure_cases
    if error.reason_code == SchemaErrorReason.COLUMN_NOT_IN_DATAFRAME:
        column = cases if not isinstance(cases, pd.DataFrame) else cases["failure_case"].iloc[0]
        return Failure(str(column), CHECK_PRESENT, n_rows, message=_MESSAGES[CHECK_PRESENT])
    column = str(getattr(error.schema, "name", None) or "<frame>")
    message = _TYPE_MESSAGES.get(column, "") if check_name == CHECK_TYPE else ""
    message = message or _MESSAGES.get(str(check_name), "")
    if not isinstance(cases, pd.DataFrame) or "index" not in cases:
        # A check that could not run at all: every row is suspect.
        return Failure(column, str(check_name), n_rows, message=f"{message} ({cases})".strip())
    index = pd.to_numeric(cases["index"], errors="coerce").to_numpy(dtype="float64")
    present = ~np.isnan(index)
    if not present.any():
        detail = "; ".join(map(str, cases["failure_case"]))
        return Failure(column, str(check_name), n_rows, message=f"{message} ({detail})".strip())
    positions = index[present].astype(np.int64)
    values = cases["failure_case"].to_numpy()[present]
    # The smallest row numbers, without sorting every failing row.
    k = min(MAX_EXAMPLES, len(positions))
    pick = np.argpartition(positions, k - 1)[:k] if len(positions) > k else np.arange(k)
    pick = pick[np.argsort(positions[pick], kind="stable")]
    show = _mask_card_number if check_name == CHECK_NOT_CARD_NUMBER else _show
    return Failure(
        column,
        str(check_name),
        len(positions),
        examples=[int(position) for position in positions[pick]],
        values=[show(value) for value in values[pick]],
        message=message,
        rows=tuple(np.unique(positions).tolist()),
    )


def _order(failure: Failure) -> tuple[int, int, str, str]:
    def rank(sequence: tuple[str, ...], item: str) -> int:
        return sequence.index(item) if item in sequence else len(sequence)

    return (
        rank(_COLUMN_ORDER, failure.column),
        rank(_CHECK_ORDER, failure.check),
        failure.column,
        failure.check,
    )


def validate_transactions(frame: pd.DataFrame, labelled: bool = True) -> ValidationReport:
    """Check a frame of canonical transactions; collect every failure, never raise on bad data.

    ``labelled`` selects :data:`TRAINING_SCHEMA` (``is_fraud`` required) or
    :data:`SCORING_SCHEMA`. Row numbers in the report are 0-based positions in ``frame``.
    """
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"expected a pandas DataFrame, got {type(frame).__name__}")
    schema = TRAINING_SCHEMA if labelled else SCORING_SCHEMA
    positional = frame.index.equals(pd.RangeIndex(len(frame)))
    data = frame if positional else frame.reset_index(drop=True)
    try:
        # Whatever the environment says (PANDERA_VALIDATION_ENABLED, ..._DEPTH), check the data.
        with config_context(
            validation_enabled=True, validation_depth=ValidationDepth.SCHEMA_AND_DATA
        ):
            schema.validate(data, lazy=True, inplace=True)
    except SchemaErrors as errors:
        failures = [_failure_from_error(error, len(data)) for error in errors.schema_errors]
        return ValidationReport(len(data), sorted(failures, key=_order), labelled)
    return ValidationReport(len(data), [], labelled)


# --------------------------------------------------------------------------------------------
# Typing, loading and summarising
# --------------------------------------------------------------------------------------------


def to_canonical_types(frame: pd.DataFrame) -> pd.DataFrame:
    """Type a validated frame: ids ``str``, ``amt`` float64, ``timestamp`` datetime64[ns, UTC],
    ``category`` ``str`` and ``is_fraud`` int8 when present.

    Canonical columns come first, in canonical order; other columns are kept unchanged after
    them. Call it on a frame that passed :func:`validate_transactions`: a value that cannot be
    typed raises ``ValueError`` rather than being turned into a missing value.
    """
    out = frame.copy()
    for column in ID_COLUMNS:
        if column in out:
            text = _as_text(out[column])
            if text.isna().any():
                raise ValueError(f"{column}: missing or non-text identifiers; validate first")
            out[column] = text.astype(object)
    if AMOUNT in out:
        amounts = out[AMOUNT]
        if not pd.api.types.is_float_dtype(amounts.dtype):
            amounts = pd.to_numeric(amounts.astype(object), errors="raise")
        out[AMOUNT] = amounts.astype("float64")
    if TIMESTAMP in out:
        stamps = _as_timestamps(out[TIMESTAMP], errors="raise")
        out[TIMESTAMP] = stamps.dt.tz_convert("UTC").dt.as_unit("ns")
    if CATEGORY in out:
        out[CATEGORY] = out[CATEGORY].astype(str).astype(object)
    if LABEL in out:
        labels = pd.to_numeric(out[LABEL].astype(object), errors="raise")
        if not labels.isin([0, 1]).all():
            raise ValueError(f"{LABEL}: values other than 0 and 1; validate first")
        out[LABEL] = labels.astype("int8")
    canonical = [column for column in _COLUMN_ORDER if column in out]
    return out[canonical + [column for column in out.columns if column not in canonical]]


def drop_invalid_rows(frame: pd.DataFrame, report: ValidationReport) -> pd.DataFrame:
    """``frame`` without the rows that failed a row-level check of ``report``.

    For external data with known bad rows, dropped on purpose and counted; a failure of a whole
    column (missing, wrong type) cannot be fixed by dropping rows and raises
    :class:`DataValidationError`.
    """
    bad = report.failing_rows()
    if bad is None:
        raise DataValidationError(report)
    return frame.drop(index=frame.index[bad])


def _describe_paths(paths: Iterable[str | Path]) -> str:
    return ", ".join(map(str, paths)) or "<no path>"


def load_transactions(
    paths: str | Path | Iterable[str | Path], labelled: bool = True, drop_invalid: bool = False
) -> pd.DataFrame:
    """Read, validate and type transaction files (CSV, CSV.gz, Parquet; globs allowed).

    Raises ``FileNotFoundError`` / :class:`~fraud_detection.data.files.UnknownSchemaError` from
    the reader, ``ValueError`` when there is no transaction at all, and
    :class:`DataValidationError` (with the full report) when any check fails. With
    ``drop_invalid`` the failing rows are removed instead, and the report is logged as a warning.
    """
    paths = [paths] if isinstance(paths, str | Path) else list(paths)
    source = _describe_paths(paths)
    frame = read_transactions(paths)
    if frame.empty:
        raise ValueError(f"no transactions in {source}")
    report = validate_transactions(frame, labelled=labelled)
    if not report.ok:
        if not drop_invalid:
            raise DataValidationError(report, source)
        frame = drop_invalid_rows(frame, report).reset_index(drop=True)
        logger.warning(
            "%s: dropped %d invalid rows (%s)", source, report.n_rows - len(frame), report.summary()
        )
    return to_canonical_types(frame)


def _format_stamp(value: pd.Timestamp) -> str:
    return "-" if pd.isna(value) else value.isoformat().replace("+00:00", "Z")


def summarize(frame: pd.DataFrame) -> Table:
    """A table of rows, cards, merchants, fraud count and rate (when labelled), first and last
    timestamp. Works on frames as read and on typed frames."""
    table = Table(title="transactions", show_header=False, title_justify="left")
    table.add_column("", style="bold")
    table.add_column("", justify="right")
    n_rows = len(frame)
    table.add_row("rows", f"{n_rows:,}")
    if CARD_ID in frame:
        table.add_row("cards", f"{frame[CARD_ID].nunique():,}")
    if MERCHANT_ID in frame:
        table.add_row("merchants", f"{frame[MERCHANT_ID].nunique():,}")
    if LABEL in frame:
        frauds = int(_as_number(frame[LABEL]).fillna(0).sum())
        rate = frauds / n_rows if n_rows else math.nan
        table.add_row("frauds", f"{frauds:,}")
        table.add_row("fraud rate", "-" if math.isnan(rate) else f"{rate:.2%}")
    if TIMESTAMP in frame:
        stamps = _as_timestamps(frame[TIMESTAMP])
        table.add_row("first", _format_stamp(stamps.min()))
        table.add_row("last", _format_stamp(stamps.max()))
    return table
