"""Checking transaction frames against the canonical contract, with pandera.

Frames arrive *as read* by :mod:`fraud_detection.data.files`: identifiers as text, timestamps as
text or date-times, amounts possibly of ``object`` dtype when a file holds garbage. Validation
never raises on bad data and never drops a row: every failing check is collected (lazy
validation) into a :class:`ValidationReport` naming the column, the check, how many rows fail
and which. Only a frame that passes is typed by :func:`to_canonical_types`.

The value rules are written once here, as plain functions on one value, and shared with the
JSON validator of scoring requests (:mod:`fraud_detection.serving.requests`):

* identifiers (``transaction_id``, ``card_id``, ``merchant_id``): 1 to :data:`MAX_ID_LENGTH`
  printable ASCII characters without whitespace (:func:`id_format_problem`);
* ``amt``: finite, from 0 (a zero-amount authorization is a real transaction) to
  :data:`~fraud_detection.schema.MAX_AMOUNT` (:func:`amount_in_range`);
* ``timestamp``: ISO-8601 text of the form :func:`is_timestamp_text` describes, or a
  date-time;
* ``category``: at most :data:`MAX_CATEGORY_LENGTH` characters, no control characters or lone
  surrogates (:func:`category_format_problem`);
* no identifier and no category may hold a raw card number (:func:`is_card_number`: a run of
  13 to 19 digits of any script, joined by separators, passing the Luhn check): card numbers
  must be tokenized before they reach the system (PCI DSS).

Every value quoted in a report or an error goes through :func:`redact`, which shows at most the
last four digits of anything that looks like a card number.
"""

from __future__ import annotations

import logging
import math
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.config import ValidationDepth, config_context
from pandera.errors import SchemaErrorReason, SchemaErrors
from rich.table import Table
from rich.text import Text

from fraud_detection.data.files import read_transactions
from fraud_detection.schema import (
    AMOUNT,
    CARD_ID,
    CATEGORY,
    ID_COLUMNS,
    LABEL,
    MAX_AMOUNT,
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
    "amount_in_range",
    "category_format_problem",
    "drop_invalid_rows",
    "id_format_problem",
    "is_card_number",
    "is_timestamp_text",
    "load_transactions",
    "luhn_valid",
    "redact",
    "summarize",
    "to_canonical_types",
    "validate_transactions",
]

logger = logging.getLogger(__name__)

#: How many failing rows a :class:`Failure` lists as examples.
MAX_EXAMPLES = 5
#: Longest identifier (``transaction_id``, ``card_id``, ``merchant_id``), in characters.
MAX_ID_LENGTH = 128
#: Longest ``category``, in characters.
MAX_CATEGORY_LENGTH = 128
#: Card numbers (PANs) have 13 to 19 digits.
MIN_PAN_DIGITS = 13
MAX_PAN_DIGITS = 19
#: Longest piece of a value quoted in an error message or a report (before escaping).
MAX_QUOTED_CHARS = 40
#: Longest explanation quoted from a check that could not run.
MAX_DETAIL_CHARS = 200

# Short, human names of the checks, as they appear in reports.
CHECK_PRESENT = "column present"
CHECK_NOT_NULL = "not null"
CHECK_TYPE = "type"
CHECK_ID_FORMAT = "id format"
CHECK_TEXT = "valid text"
CHECK_UNIQUE = "unique"
CHECK_NOT_CARD_NUMBER = "not a raw card number"
CHECK_FINITE = "finite"
CHECK_AMOUNT_RANGE = f"{AMOUNT} in range"
CHECK_TIMESTAMP = "parseable UTC timestamp"
CHECK_LABEL = f"{LABEL} in {{0, 1}}"

PCI_MESSAGE = (
    "card numbers must be tokenized before they reach the system (PCI DSS); "
    f"{CARD_ID} must be an opaque token and no other field may hold a card number"
)
_MESSAGES = {
    CHECK_PRESENT: "the column is required",
    CHECK_NOT_NULL: "values must not be missing",
    CHECK_ID_FORMAT: (
        f"identifiers must be 1 to {MAX_ID_LENGTH} printable ASCII characters without whitespace"
    ),
    CHECK_TEXT: (
        f"categories must be at most {MAX_CATEGORY_LENGTH} characters, without control "
        "characters or lone surrogates"
    ),
    CHECK_UNIQUE: f"each {TRANSACTION_ID} must occur once (all rows sharing one are listed)",
    CHECK_NOT_CARD_NUMBER: PCI_MESSAGE,
    CHECK_FINITE: "amounts must be finite",
    CHECK_AMOUNT_RANGE: f"amounts must be between 0 and {MAX_AMOUNT:,.0f}",
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
    CHECK_ID_FORMAT,
    CHECK_TEXT,
    CHECK_UNIQUE,
    CHECK_NOT_CARD_NUMBER,
    CHECK_FINITE,
    CHECK_AMOUNT_RANGE,
    CHECK_TIMESTAMP,
    CHECK_LABEL,
)
_PANDERA_CHECK_NAMES = {"column_in_dataframe": CHECK_PRESENT, "not_nullable": CHECK_NOT_NULL}


# --------------------------------------------------------------------------------------------
# The value rules, shared with the JSON validator (fraud_detection.serving.requests)
# --------------------------------------------------------------------------------------------

#: An identifier: 1 to MAX_ID_LENGTH printable ASCII characters, no whitespace (``!`` to ``~``).
_ID_RE = re.compile(rf"[!-~]{{1,{MAX_ID_LENGTH}}}")
#: What text must never hold: C0 and C1 control characters, and surrogate code points (a JSON
#: decoder joins an escaped pair into one character, so one left in a string is a lone
#: surrogate, which no UTF-8 text can carry).
_FORBIDDEN_TEXT_RE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
#: A maximal run of decimal digits (any script) joined only by separators: anything that is
#: neither a letter nor a digit (whitespace, punctuation, symbols, format characters such as
#: the zero-width space). Letters end a run.
_DIGIT_RUN_RE = re.compile(r"\d(?:[\W_]*\d)*")
#: A UUID in its canonical text form (8-4-4-4-12 hexadecimal digits).
_UUID_RE = re.compile(r"[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}")
#: The text of a timestamp: an ISO-8601 calendar date (``2026-03-01`` or ``20260301``), then
#: optionally ``T`` or a space and the time and offset (digits, ``:``, ``.``, ``+``, ``-``,
#: ``Z``, spaces), ending in a digit or ``Z``. The parsers of both paths read more (any
#: character between date and time, week dates, decimal commas, padding): not the same more.
_TIMESTAMP_TEXT_RE = re.compile(r"[0-9]{4}-?[0-9]{2}-?[0-9]{2}(?:[T ][0-9:.+\-Z ]*[0-9Z])?")
_ASCII_DIGITS = re.compile(r"[0-9]+")
_SEPARATORS_ONLY = re.compile(r"[\W_]*")

CARD_NUMBER_REASON = (
    "looks like a card number; card numbers must be tokenized before they reach the system "
    "(PCI DSS)"
)


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


def _run_digits(run: str) -> str:
    """The digits of a run as ASCII digits (full-width, Arabic-Indic, ... digits mapped)."""
    if run.isascii():
        return "".join(_ASCII_DIGITS.findall(run))
    return "".join(str(unicodedata.decimal(char)) for char in run if char.isdecimal())


def _is_letter_at(text: str, index: int) -> bool:
    return 0 <= index < len(text) and text[index].isalpha()


def _card_number_in(text: str) -> bool:
    if len(text) < MIN_PAN_DIGITS or _UUID_RE.fullmatch(text):
        return False
    for run in _DIGIT_RUN_RE.finditer(text):
        if _is_letter_at(text, run.start() - 1) or _is_letter_at(text, run.end()):
            continue  # digits glued to letters belong to a word (hex tokens), not a number
        digits = _run_digits(run.group())
        if MIN_PAN_DIGITS <= len(digits) <= MAX_PAN_DIGITS and luhn_valid(digits):
            return True
    return False


def is_card_number(value: object) -> bool:
    """True when ``value`` holds what looks like a raw payment card number (PAN).

    The text is read as runs of digits: a run is a maximal sequence of decimal digits of any
    script (``unicodedata``: full-width, Arabic-Indic, ... digits count as 0-9) joined only by
    separators (anything that is neither a letter nor a digit: spaces, tabs, dots, slashes,
    dashes, zero-width and other format characters). Letters end a run. A run of 13 to 19
    digits passing the Luhn check is a card number, wherever it stands (``"pan:4111 1111 ..."``).

    So that legitimate identifiers are not refused by chance: a run glued to a letter (no
    separator between them) is part of an alphanumeric word, as in hexadecimal tokens, and a
    canonical UUID (8-4-4-4-12 hex digits) is never a card number; a run longer than 19 digits
    is not one either. Integers are read as their decimal digits; anything else that is not
    text (missing values, floats) is not a card number.
    """
    if isinstance(value, bool | np.bool_):
        return False
    if isinstance(value, int | np.integer):
        value = _int_text(int(value))
    return isinstance(value, str) and _card_number_in(value)


def _int_text(number: int) -> str:
    """An integer in decimal; a description for the few too long to write out."""
    if number.bit_length() > 256:
        return f"<an integer of {number.bit_length()} bits>"
    return str(number)


def _mask_digit_runs(text: str, cut: bool) -> str:
    """``text`` with every run of 13 or more digits (any Luhn result, any length, glued to
    letters or not) replaced by ``*`` and its last four digits; with ``cut``, a run followed
    by nothing but separators (it may go on beyond the end) is masked whatever its length,
    showing no digit.
    """
    pieces = []
    position = 0
    for run in _DIGIT_RUN_RE.finditer(text):
        digits = _run_digits(run.group())
        if cut and _SEPARATORS_ONLY.fullmatch(text, run.end()):
            masked = "*" * len(digits)
        elif len(digits) >= MIN_PAN_DIGITS:
            masked = "*" * (len(digits) - 4) + digits[-4:]
        else:
            continue
        pieces += [text[position : run.start()], masked]
        position = run.end()
    return "".join(pieces) + text[position:] if pieces else text


def redact(value: object, limit: int = MAX_QUOTED_CHARS) -> str:
    """``value`` as it may be quoted in an error message or a validation report.

    Anything that looks like a card number (a run of 13 or more digits, as in
    :func:`is_card_number` but whatever its Luhn check) shows at most its last four digits.
    Text is quoted with :func:`repr`, so control characters, format characters and lone
    surrogates are escaped and the result is plain, JSON-encodable text; at most ``limit``
    characters of the value are shown, then ``...``. Other values are written with ``str``.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        text = _int_text(value)
    else:
        text = value if isinstance(value, str) else str(value)
    cut = len(text) > limit
    shown = _mask_digit_runs(text[:limit] if cut else text, cut)
    if isinstance(value, str):
        shown = repr(shown)
    else:
        shown = shown.encode("ascii", "backslashreplace").decode("ascii")
    return shown + "..." if cut else shown


def _first_offending(text: str, allowed: Callable[[str], bool]) -> str:
    index = next(i for i, char in enumerate(text) if not allowed(char))
    return f"{text[index]!a} at position {index}"


def id_format_problem(text: str) -> str | None:
    """Why ``text`` is not a well-formed identifier, or None when it is one.

    An identifier (``transaction_id``, ``card_id``, ``merchant_id``) is 1 to
    :data:`MAX_ID_LENGTH` (128) printable ASCII characters without whitespace (``!`` to ``~``):
    UUIDs, ``card-000042``, ``tok_AbC.9/+=:@-``. Whether it looks like a card number is
    :func:`is_card_number`'s question, checked as well.
    """
    if _ID_RE.fullmatch(text):
        return None
    if not text:
        return "must not be empty"
    if len(text) > MAX_ID_LENGTH:
        return f"must be at most {MAX_ID_LENGTH} characters, got {len(text):,}"
    offending = _first_offending(text, lambda char: "!" <= char <= "~")
    return f"must be printable ASCII without whitespace; found {offending}"


def category_format_problem(text: str) -> str | None:
    """Why ``text`` is not a valid ``category``, or None when it is one.

    A category is free text of at most :data:`MAX_CATEGORY_LENGTH` (128) characters without
    control characters or lone surrogates; whether it looks like a card number is
    :func:`is_card_number`'s question, checked as well.
    """
    if len(text) > MAX_CATEGORY_LENGTH:
        return f"must be at most {MAX_CATEGORY_LENGTH} characters, got {len(text):,}"
    if _FORBIDDEN_TEXT_RE.search(text):
        offending = _first_offending(text, lambda char: not _FORBIDDEN_TEXT_RE.match(char))
        return f"must not hold control characters or lone surrogates; found {offending}"
    return None


def is_timestamp_text(text: str) -> bool:
    """Whether ``text`` has the form of an ISO-8601 timestamp the contract accepts.

    A calendar date (``2026-03-01``, ``20260301``), optionally followed by ``T`` or a space and
    the time of day with an optional offset (``10:00:00``, ``10:00:00.123456Z``,
    ``10:00+02:00``); ASCII only, no surrounding whitespace. Whether it is a real date-time
    (no 30 February) is the parser's question, checked as well.
    """
    return _TIMESTAMP_TEXT_RE.fullmatch(text) is not None


def amount_in_range(amounts: Any, max_amount: float = MAX_AMOUNT) -> Any:
    """Whether amounts lie in ``[0, max_amount]``: a bool for a number, a mask for an array.

    A zero amount is a real transaction (an account verification); NaN is never in range.
    """
    return (amounts >= 0) & (amounts <= max_amount)


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


def _each(values: pd.Series, predicate: Callable[[Any], bool]) -> pd.Series:
    """``predicate`` of every value, as a boolean series (a plain loop: twice as fast as map)."""
    return pd.Series([predicate(value) for value in values.tolist()], values.index, dtype=bool)


def _passes(text: pd.Series, problem: Callable[[str], str | None]) -> pd.Series:
    """Which values pass a text rule; values that are not text (a "type" failure) pass here."""
    return _each(text, lambda value: not isinstance(value, str) or problem(value) is None)


def _id_well_formed(values: pd.Series) -> pd.Series:
    # As text, so that integer ids are checked as the decimal text they become.
    return _passes(_as_text(values), id_format_problem)


def _id_unique(values: pd.Series) -> pd.Series:
    # Compare ids as they will be typed: the integer 7 and the text "7" are the same id.
    # Values that are no id at all are a "type" failure, not duplicates of each other.
    keys = _as_text(values)
    return keys.isna() | ~keys.duplicated(keep=False)


def _not_card_number(values: pd.Series) -> pd.Series:
    text = _as_text(values)
    passes = pd.Series(True, index=text.index)
    # Only text of 13 characters or more can hold 13 digits.
    candidates = text[(text.str.len() >= MIN_PAN_DIGITS).fillna(False).astype(bool)]
    if not candidates.empty:
        passes[candidates.index] = ~_each(candidates, is_card_number)
    return passes


def _amount_is_number(values: pd.Series) -> pd.Series | bool:
    if pd.api.types.is_numeric_dtype(values.dtype) and not pd.api.types.is_bool_dtype(values.dtype):
        return True
    return _as_number(values).notna()


def _amount_finite(values: pd.Series) -> pd.Series:
    numbers = _as_number(values)
    return numbers.isna() | np.isfinite(numbers)


def _amount_in_range(values: pd.Series) -> pd.Series:
    numbers = _as_number(values)
    # NaN (not a number: a "type" failure) and +-inf ("finite") are reported once, elsewhere.
    return ~np.isfinite(numbers) | numbers.isna() | amount_in_range(numbers)


def _timestamp_well_formed(value: object) -> bool:
    # Date-times pass; text must have the accepted form, which the parser alone does not check.
    return not isinstance(value, str) or is_timestamp_text(value)


def _timestamp_parseable(values: pd.Series) -> pd.Series:
    return _as_timestamps(values).notna() & _each(values, _timestamp_well_formed)


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


def _category_well_formed(values: pd.Series) -> pd.Series:
    return _passes(values, category_format_problem)


def _check(function: Callable[[pd.Series], Any], name: str, message: str) -> pa.Check:
    return pa.Check(function, name=name, error=message)


def _id_checks(column: str) -> list[pa.Check]:
    checks = [
        _check(_id_is_text, CHECK_TYPE, _TYPE_MESSAGES[column]),
        _check(_id_well_formed, CHECK_ID_FORMAT, _MESSAGES[CHECK_ID_FORMAT]),
    ]
    if column == TRANSACTION_ID:
        checks.append(_check(_id_unique, CHECK_UNIQUE, _MESSAGES[CHECK_UNIQUE]))
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
            _check(_amount_in_range, CHECK_AMOUNT_RANGE, _MESSAGES[CHECK_AMOUNT_RANGE]),
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
        [
            _check(_category_is_text, CHECK_TYPE, _TYPE_MESSAGES[CATEGORY]),
            _check(_category_well_formed, CHECK_TEXT, _MESSAGES[CHECK_TEXT]),
            _check(_not_card_number, CHECK_NOT_CARD_NUMBER, PCI_MESSAGE),
        ],
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

    def render(self, locations: Mapping[int, str] | None = None) -> Table:
        """A table naming each failing column and check, the count and example rows.

        ``locations`` names example rows by where they are in their files (``line 12``);
        without it, or for a row it lacks, a row is its 0-based position in the frame.
        """
        if self.ok:
            table = Table(title=f"valid: {self.n_rows:,} rows", show_header=False)
            return table
        table = Table(
            title=f"invalid: {self._headline()}",
            title_justify="left",
            # Messages and values quote data: printed as they are, never read as rich markup.
            caption=Text(
                "\n".join(
                    dict.fromkeys(
                        f"{failure.column} / {failure.check}: {failure.message}"
                        for failure in self.failures
                        if failure.message
                    )
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
                ", ".join((locations or {}).get(row, str(row)) for row in failure.examples),
                Text(", ".join(failure.values)),
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
        detail = redact(cases, MAX_DETAIL_CHARS)
        return Failure(column, str(check_name), n_rows, message=f"{message} ({detail})".strip())
    index = pd.to_numeric(cases["index"], errors="coerce").to_numpy(dtype="float64")
    present = ~np.isnan(index)
    if not present.any():
        detail = "; ".join(map(redact, cases["failure_case"]))
        return Failure(column, str(check_name), n_rows, message=f"{message} ({detail})".strip())
    positions = index[present].astype(np.int64)
    values = cases["failure_case"].to_numpy()[present]
    # The smallest row numbers, without sorting every failing row.
    k = min(MAX_EXAMPLES, len(positions))
    pick = np.argpartition(positions, k - 1)[:k] if len(positions) > k else np.arange(k)
    pick = pick[np.argsort(positions[pick], kind="stable")]
    return Failure(
        column,
        str(check_name),
        len(positions),
        examples=[int(position) for position in positions[pick]],
        values=[redact(value) for value in values[pick]],
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
