"""Scoring-request validation: every rule of the scoring schema, checked per instance, fast.

The transformer checks each instance of ``{"instances": [...]}`` (KServe v1), or the input
tensors of a v2 request (:func:`v2_instances`), before computing anything. The value rules are
those of the scoring schema (:data:`fraud_detection.data.validation.SCORING_SCHEMA`) and are the
same functions (:func:`~fraud_detection.data.validation.id_format_problem`,
:func:`~fraud_detection.data.validation.is_card_number`,
:func:`~fraud_detection.data.validation.amount_in_range`, ...), applied to plain JSON values
instead of a DataFrame (pandas costs ~1 ms per request; this a few µs per instance). A unit
test runs both on the same table of good and bad rows and requires the same verdicts.

On top of the schema, JSON types are strict, one rule for every field: ``amt`` is a JSON number
(not a boolean, not text such as ``"12.5"``), identifiers, ``timestamp`` and ``category`` are
JSON strings (not numbers: clients send identifiers as text). Nothing is converted.

Every failure becomes a :class:`RequestError`: an HTTP status (400, 413 or 415), the field (as a
JSON path such as ``instances[3].amt``, or ``inputs.amt`` for a v2 input tensor) and the reason.
A reason that quotes a value quotes it through :func:`~fraud_detection.data.validation.redact`
(card numbers masked to their last four digits, control characters and lone surrogates
escaped), so it is always plain, JSON-encodable text. The servers turn an error into
``{"error": "<field>: <reason>", "field": ..., "reason": ..., "errors": [{"field", "reason"}]}``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from fraud_detection.data.validation import (
    CARD_NUMBER_REASON,
    MAX_CATEGORY_LENGTH,
    MAX_ID_LENGTH,
    amount_in_range,
    category_format_problem,
    id_format_problem,
    is_card_number,
    is_timestamp_text,
    redact,
)
from fraud_detection.features import timestamp_to_micros
from fraud_detection.schema import (
    AMOUNT,
    CARD_ID,
    CATEGORY,
    MAX_AMOUNT,
    MERCHANT_ID,
    TIMESTAMP,
    TRANSACTION_ID,
)

#: Default cap on instances per request (the transformer's ``--max_instances``).
DEFAULT_MAX_INSTANCES = 1_000
#: Default cap on the request body (the servers' ``--max_body_bytes``).
DEFAULT_MAX_BODY_BYTES = 1 << 20
#: Default cap on the problems one error reports.
DEFAULT_MAX_PROBLEMS = 20
INSTANCES = "instances"
INPUTS = "inputs"
#: The timestamps pandas (and so the scoring schema and the training data) can represent.
_MIN_MICROS = -9_223_372_036_854_775
_MAX_MICROS = 9_223_372_036_854_775
#: v2 datatypes accepted for an ``amount`` input, and for every text input.
AMOUNT_DATATYPES: tuple[str, ...] = ("FP32", "FP64", "INT8", "INT16", "INT32", "INT64")
TEXT_DATATYPES: tuple[str, ...] = ("BYTES",)


@dataclass(frozen=True)
class FieldRule:
    """One field of a scoring request: its name, kind and whether it is required.

    Kinds: ``id`` (a JSON string: 1 to 128 printable ASCII characters without whitespace, not
    a card number), ``amount`` (a JSON number, finite, from 0 to the server's maximum),
    ``timestamp`` (an ISO-8601 JSON string within the range pandas represents; naive means
    UTC), ``text`` (a JSON string of at most 128 characters without control characters or
    lone surrogates, not a card number; not null when present).
    """

    name: str
    kind: str
    required: bool = True

    @property
    def v2_datatypes(self) -> tuple[str, ...]:
        """The v2 tensor datatypes this field may be sent as."""
        return AMOUNT_DATATYPES if self.kind == "amount" else TEXT_DATATYPES


#: The scoring schema's fields, one rule each; the single definition both protocols use.
FIELD_RULES: tuple[FieldRule, ...] = (
    FieldRule(TRANSACTION_ID, "id"),
    FieldRule(CARD_ID, "id"),
    FieldRule(MERCHANT_ID, "id"),
    FieldRule(AMOUNT, "amount"),
    FieldRule(TIMESTAMP, "timestamp"),
    FieldRule(CATEGORY, "text", required=False),
)
_RULES_BY_NAME = {rule.name: rule for rule in FIELD_RULES}


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a request: where and why."""

    field: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        """``{"field", "reason"}``."""
        return {"field": self.field, "reason": self.reason}


class RequestError(ValueError):
    """A request the servers refuse, with the HTTP status and the problems to report."""

    def __init__(self, problems: Sequence[Problem], status: int = 400) -> None:
        if not problems:
            raise ValueError("a RequestError needs at least one problem")
        self.problems = list(problems)
        self.status = status
        first = self.problems[0]
        more = f" (and {len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
        super().__init__(f"{first.field}: {first.reason}{more}")

    @classmethod
    def single(cls, field_name: str, reason: str, status: int = 400) -> RequestError:
        """An error with one problem."""
        return cls([Problem(field_name, reason)], status)

    @property
    def field(self) -> str:
        """The first problem's field."""
        return self.problems[0].field

    @property
    def reason(self) -> str:
        """The first problem's reason."""
        return self.problems[0].reason

    def to_dict(self) -> dict[str, Any]:
        """The JSON error body."""
        return {
            "error": str(self),
            "field": self.field,
            "reason": self.reason,
            "errors": [problem.to_dict() for problem in self.problems],
        }


class Transaction(NamedTuple):
    """A validated scoring instance; the timestamp as microseconds since the epoch (UTC)."""

    transaction_id: str
    card_id: str
    merchant_id: str
    amount: float
    timestamp_micros: int
    category: str | None


@dataclass
class RequestLimits:
    """Bounds on one scoring request.

    ``max_amount`` is the largest accepted ``amt``: :data:`fraud_detection.schema.MAX_AMOUNT`
    by default (the training data's bound too); a server may be stricter (``--max_amount``),
    never looser.
    """

    max_instances: int = DEFAULT_MAX_INSTANCES
    max_problems: int = DEFAULT_MAX_PROBLEMS
    max_amount: float = MAX_AMOUNT

    def __post_init__(self) -> None:
        if self.max_instances < 1:
            raise ValueError(f"max_instances: must be at least 1, got {self.max_instances}")
        if self.max_problems < 1:
            raise ValueError(f"max_problems: must be at least 1, got {self.max_problems}")
        if not 0 < self.max_amount <= MAX_AMOUNT:
            raise ValueError(
                f"max_amount: must be greater than 0 and at most {MAX_AMOUNT:,.0f}, "
                f"got {self.max_amount}"
            )


# ------------------------------------------------------------------------------ single values
def describe_value(value: object) -> str:
    """A JSON value's kind, for error reasons (never the value itself)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, bytes | bytearray):
        return "bytes that are not UTF-8 text"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list | tuple):
        return "an array"
    return type(value).__name__


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _format_amount(amount: float) -> str:
    return f"{amount:,.2f}".rstrip("0").rstrip(".")


def _text_problem(
    value: object, max_length: int, format_problem: Callable[[str], str | None]
) -> str | None:
    if not isinstance(value, str):
        return f"must be text, got {describe_value(value)}"
    # Text over the limit is refused for its length, unread. Otherwise the card check comes
    # first: its reason is the one that matters, and it never quotes the value.
    if len(value) <= max_length and is_card_number(value):
        return CARD_NUMBER_REASON
    return format_problem(value)


def _amount_problem(value: object, max_amount: float) -> str | None:
    if not _is_number(value):
        return f"must be a number, got {describe_value(value)}"
    # Integers beyond the float range are "infinite" for the finiteness rule.
    too_large = isinstance(value, int) and abs(value) >= 2**1023
    number = math.inf if too_large else float(value)  # type: ignore[arg-type]
    if not math.isfinite(number):
        return f"must be a finite number, got {redact(value)}"
    if not amount_in_range(number, max_amount):
        return f"must be between 0 and {_format_amount(max_amount)}, got {redact(value)}"
    return None


def _timestamp_micros(text: str) -> int | None:
    """Microseconds since the epoch of a timestamp of the accepted form; None otherwise."""
    if not is_timestamp_text(text):
        return None
    try:
        return timestamp_to_micros(text)
    except (ValueError, OverflowError):
        return None


def _timestamp_problem(value: object) -> str | None:
    if not isinstance(value, str):
        return f"must be an ISO-8601 timestamp as text, got {describe_value(value)}"
    micros = _timestamp_micros(value)
    if micros is None:
        return f"is not an ISO-8601 timestamp: {redact(value)}"
    if not _MIN_MICROS <= micros <= _MAX_MICROS:
        return f"is out of range (years 1678-2261): {redact(value)}"
    return None


def check_value(rule: FieldRule, value: object, max_amount: float = MAX_AMOUNT) -> str | None:
    """The reason ``value`` (a decoded JSON value) breaks ``rule``, or None when it is valid."""
    if rule.kind == "id":
        return _text_problem(value, MAX_ID_LENGTH, id_format_problem)
    if rule.kind == "amount":
        return _amount_problem(value, max_amount)
    if rule.kind == "timestamp":
        return _timestamp_problem(value)
    if rule.kind == "text":
        return _text_problem(value, MAX_CATEGORY_LENGTH, category_format_problem)
    raise AssertionError(f"unknown rule kind {rule.kind!r}")  # pragma: no cover


_KNOWN_FIELDS = frozenset(rule.name for rule in FIELD_RULES)


def check_instance(
    instance: object, where: str = "instance", limits: RequestLimits | None = None
) -> list[Problem]:
    """Every problem of one instance (empty when it is valid); one per field at most."""
    if not isinstance(instance, Mapping):
        return [Problem(where, f"must be an object, got {describe_value(instance)}")]
    max_amount = (limits or RequestLimits()).max_amount
    problems = []
    for rule in FIELD_RULES:
        if rule.name not in instance:
            if rule.required:
                problems.append(Problem(f"{where}.{rule.name}", "is required"))
            continue
        reason = check_value(rule, instance[rule.name], max_amount)
        if reason is not None:
            problems.append(Problem(f"{where}.{rule.name}", reason))
    if not _KNOWN_FIELDS.issuperset(instance):
        unknown = next(name for name in instance if name not in _KNOWN_FIELDS)
        problems.append(
            Problem(
                where,
                f"has an unknown field {redact(unknown)}; the fields are "
                + ", ".join(rule.name for rule in FIELD_RULES),
            )
        )
    return problems


def parse_instance(instance: Mapping[str, Any]) -> Transaction:
    """A :class:`Transaction` from an instance that passed :func:`check_instance`."""
    return Transaction(
        instance[TRANSACTION_ID],
        instance[CARD_ID],
        instance[MERCHANT_ID],
        float(instance[AMOUNT]),
        timestamp_to_micros(instance[TIMESTAMP]),
        instance.get(CATEGORY),
    )


# --------------------------------------------------------------------------------- v1 requests
def _check_count(count: int, where: str, limits: RequestLimits) -> None:
    if not count:
        raise RequestError.single(where, "must not be empty")
    if count > limits.max_instances:
        raise RequestError.single(
            where, f"{count} instances; at most {limits.max_instances} per request", status=413
        )


def parse_instances(
    instances: object, limits: RequestLimits | None = None, where: str = INSTANCES
) -> list[Transaction]:
    """Validate a request's instances and return them as transactions.

    A pure function: nothing is returned unless every instance is valid, and every problem of
    the request is reported together.

    Raises:
        RequestError: 400 naming every bad field (up to ``limits.max_problems``), or 413 when
            there are more than ``limits.max_instances`` instances.
    """
    limits = limits or RequestLimits()
    if not isinstance(instances, list):
        raise RequestError.single(where, f"must be an array, got {describe_value(instances)}")
    _check_count(len(instances), where, limits)
    problems: list[Problem] = []
    first_seen: dict[str, int] = {}
    for index, instance in enumerate(instances):
        found = check_instance(instance, f"{where}[{index}]", limits)
        problems.extend(found)
        if not found and len(instances) > 1:
            key = instance[TRANSACTION_ID]
            if key in first_seen:
                problems.append(
                    Problem(
                        f"{where}[{index}].{TRANSACTION_ID}",
                        f"duplicates {where}[{first_seen[key]}] in the same request",
                    )
                )
            else:
                first_seen[key] = index
        if len(problems) >= limits.max_problems:
            break
    if problems:
        raise RequestError(problems[: limits.max_problems])
    return [parse_instance(instance) for instance in instances]


def parse_v1_body(body: object, limits: RequestLimits | None = None) -> list[Transaction]:
    """Validate a decoded v1 body ``{"instances": [...]}``."""
    if not isinstance(body, Mapping):
        raise RequestError.single("body", f"must be a JSON object, got {describe_value(body)}")
    if INSTANCES not in body:
        raise RequestError.single(INSTANCES, "is required")
    return parse_instances(body[INSTANCES], limits)


# --------------------------------------------------------------------------------- v2 requests
def columns_to_instances(columns: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Rows from named columns of equal length (the v2 protocol sends one tensor per field)."""
    lengths = {name: len(values) for name, values in columns.items()}
    if len(set(lengths.values())) > 1:
        detail = ", ".join(f"{name}: {length}" for name, length in lengths.items())
        raise RequestError.single(INPUTS, f"all inputs must have the same length ({detail})")
    names = list(columns)
    return [dict(zip(names, row, strict=True)) for row in zip(*columns.values(), strict=True)]


def _flatten(data: Sequence[Any]) -> list[Any]:
    """The values of a tensor's data, nested lists flattened in row-major order."""
    flat: list[Any] = []
    pending = [iter(data)]
    while pending:
        for item in pending[-1]:
            if isinstance(item, list | tuple):
                pending.append(iter(item))
                break
            flat.append(item)
        else:
            pending.pop()
    return flat


def _declared_size(shape: object) -> int | None:
    """The number of values a column shape (``[n]`` or ``[n, 1]``) declares; None otherwise."""
    if not isinstance(shape, list | tuple) or not 1 <= len(shape) <= 2:
        return None
    if not all(isinstance(dim, int) and not isinstance(dim, bool) and dim >= 0 for dim in shape):
        return None
    if len(shape) == 2 and shape[1] != 1:
        return None
    return int(shape[0])


def _tensor_values(infer_input: Any, declared: int) -> tuple[str | None, list[Any]]:
    """Why the values of a v2 input cannot be read (or None), and its flat values: JSON data,
    or binary data through ``as_numpy``."""
    data = infer_input.data
    if hasattr(data, "tolist"):  # a numpy array
        data = data.tolist()
    if data is None or (isinstance(data, list | tuple) and not data and declared):
        # Binary data (gRPC raw contents, the REST binary extension) lives behind as_numpy().
        try:
            data = infer_input.as_numpy().tolist()
        except Exception:
            shape = list(infer_input.shape)
            return f"cannot be read as {infer_input.datatype} of shape {shape}", []
    if not isinstance(data, list | tuple):
        return f"must hold its data as an array, got {describe_value(data)}", []
    return None, [_decoded(value) for value in _flatten(data)]


def _decoded(value: Any) -> Any:
    """BYTES elements as text; bytes that are not UTF-8 stay bytes, for the rules to refuse."""
    if isinstance(value, bytes | bytearray):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return value
    return value


def _input_problem(infer_input: Any, rule: FieldRule) -> tuple[str | None, list[Any]]:
    """Why a known input cannot be read as its field's column (or None), and its values."""
    if infer_input.datatype not in rule.v2_datatypes:
        allowed = ", ".join(rule.v2_datatypes)
        return f"must have datatype {allowed}; got {redact(infer_input.datatype)}", []
    declared = _declared_size(infer_input.shape)
    if declared is None:
        return f"must have shape [n] or [n, 1], got {redact(infer_input.shape)}", []
    reason, values = _tensor_values(infer_input, declared)
    if reason is not None:
        return reason, []
    if len(values) != declared:
        shape = list(infer_input.shape)
        return f"holds {len(values)} values but its shape {shape} declares {declared}", []
    return None, values


def _v2_columns(inputs: Sequence[Any]) -> tuple[dict[str, list[Any]], list[Problem]]:
    columns: dict[str, list[Any]] = {}
    problems: list[Problem] = []
    first_seen: dict[str, int] = {}
    expected = ", ".join(rule.name for rule in FIELD_RULES)
    for index, infer_input in enumerate(inputs):
        name = infer_input.name
        rule = _RULES_BY_NAME.get(name) if isinstance(name, str) else None
        if rule is None:
            reason = f"unknown input {redact(name)}; the inputs are {expected}"
            problems.append(Problem(f"{INPUTS}[{index}]", reason))
            continue
        if name in first_seen:
            reason = f"appears more than once ({INPUTS}[{first_seen[name]}], {INPUTS}[{index}])"
            problems.append(Problem(f"{INPUTS}.{name}", reason))
            continue
        first_seen[name] = index
        reason, values = _input_problem(infer_input, rule)
        if reason is not None:
            problems.append(Problem(f"{INPUTS}.{name}", reason))
        columns[name] = values
    for rule in FIELD_RULES:
        if rule.required and rule.name not in columns:
            problems.append(Problem(f"{INPUTS}.{rule.name}", "is required"))
    return columns, problems


def v2_instances(request: Any, limits: RequestLimits | None = None) -> list[dict[str, Any]]:
    """Instances (one dict per transaction) from a v2 request with one input per field.

    ``request.inputs`` is a sequence of tensors, each with ``name``, ``shape``, ``datatype``,
    ``data`` and ``as_numpy()`` (KServe's ``InferInput``). Each input must be a transaction
    field (once), ``amt`` of datatype FP32, FP64 or INT8-INT64 and the others BYTES, of shape
    ``[n]`` or ``[n, 1]`` holding exactly the values the shape declares, all inputs of one
    length; every required field must be there. BYTES values are decoded as UTF-8. The values
    themselves are checked by :func:`parse_instances` (``where="inputs"``).

    Raises:
        RequestError: 400 naming every bad input (``inputs.amt``; ``inputs[3]`` for an
            unknown one), up to ``limits.max_problems``.
    """
    limits = limits or RequestLimits()
    inputs = request.inputs
    if not isinstance(inputs, list | tuple) or not inputs:
        raise RequestError.single(INPUTS, "must be a non-empty array of input tensors")
    columns, problems = _v2_columns(inputs)
    if problems:
        raise RequestError(problems[: limits.max_problems])
    return columns_to_instances(columns)


def known_fields() -> Iterable[str]:
    """The field names a scoring instance may carry."""
    return (rule.name for rule in FIELD_RULES)
