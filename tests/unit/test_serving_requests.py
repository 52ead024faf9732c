"""Scoring-request validation: the fast per-instance rules, their errors, their agreement with
the pandera scoring schema, and the v2 input tensors."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import pytest

from fraud_detection.data.validation import MAX_ID_LENGTH, luhn_valid
from fraud_detection.schema import MAX_AMOUNT
from fraud_detection.serving.requests import (
    FIELD_RULES,
    Problem,
    RequestError,
    RequestLimits,
    check_instance,
    parse_instances,
    parse_v1_body,
    v2_instances,
)

GOOD: dict[str, Any] = {
    "transaction_id": "tx-1",
    "card_id": "card-0042",
    "merchant_id": "m-7",
    "amt": 12.5,
    "timestamp": "2026-02-01T10:00:00",
}
PAN = "4111111111111111"  # a well-known test Visa number; passes the Luhn check


def in_digits_of(zero: int, number: str) -> str:
    """``number`` written with the decimal digits of another script (``zero``: its 0)."""
    return "".join(chr(zero + int(digit)) for digit in number)


FULL_WIDTH_ZERO, ARABIC_INDIC_ZERO, DOUBLE_STRUCK_ZERO = 0xFF10, 0x0660, 0x1D7D8
#: The digits of the card numbers below, as they must never appear in an error.
PAN_DIGITS = ("41111111", "55000055")

#: A raw card number in disguise: each one must be refused as a card number.
CARD_NUMBER_DISGUISES: list[tuple[str, str]] = [
    ("plain", PAN),
    ("grouped by spaces", "4111 1111 1111 1111"),
    ("grouped by dashes", "4111-1111-1111-1111"),
    ("dots", "4111.1111.1111.1111"),
    ("slashes", "4111/1111/1111/1111"),
    ("tabs", "4111\t1111\t1111\t1111"),
    ("double spaces", "4111  1111  1111  1111"),
    ("zero-width spaces", "4111\u200b1111\u200b1111\u200b1111"),
    ("full-width digits", in_digits_of(FULL_WIDTH_ZERO, PAN)),
    ("arabic-indic digits", in_digits_of(ARABIC_INDIC_ZERO, PAN)),
    ("pan: prefix", "pan:4111111111111111"),
    ("token prefix", "tok_4111111111111111"),
    ("surrounding spaces", "  4111111111111111 "),
    ("mastercard", "5500005555555559"),
]

#: (name, changes to GOOD (None value = remove the field), the field the error must name).
#: Both validators refuse these.
BAD_ROWS: list[tuple[str, dict[str, Any], str]] = [
    ("missing transaction_id", {"transaction_id": None}, "transaction_id"),
    ("missing card_id", {"card_id": None}, "card_id"),
    ("missing merchant_id", {"merchant_id": None}, "merchant_id"),
    ("missing amt", {"amt": None}, "amt"),
    ("missing timestamp", {"timestamp": None}, "timestamp"),
    ("negative amt", {"amt": -3.0}, "amt"),
    ("negative cent", {"amt": -0.01}, "amt"),
    ("amt over the maximum", {"amt": MAX_AMOUNT * 1.5}, "amt"),
    ("amt just over the maximum", {"amt": MAX_AMOUNT + 0.01}, "amt"),
    ("nan amt", {"amt": math.nan}, "amt"),
    ("inf amt", {"amt": math.inf}, "amt"),
    ("amt as boolean", {"amt": True}, "amt"),
    ("amt in unicode digits", {"amt": in_digits_of(DOUBLE_STRUCK_ZERO, "4111")}, "amt"),
    ("amt with an underscore", {"amt": "5_000"}, "amt"),
    ("unparseable timestamp", {"timestamp": "yesterday"}, "timestamp"),
    ("timestamp as number", {"timestamp": 1767225600}, "timestamp"),
    ("impossible date", {"timestamp": "2026-02-30T10:00:00"}, "timestamp"),
    ("nul between date and time", {"timestamp": "2026-02-01\x0010:00:00"}, "timestamp"),
    ("letter between date and time", {"timestamp": "2026-02-01x10:00:00"}, "timestamp"),
    ("zero-width space in a timestamp", {"timestamp": "2026-02-01\u200b10:00:00"}, "timestamp"),
    ("week date", {"timestamp": "2026-W05-7"}, "timestamp"),
    ("decimal comma", {"timestamp": "2026-02-01T10:00:00,5"}, "timestamp"),
    ("padded timestamp", {"timestamp": " 2026-02-01T10:00:00 "}, "timestamp"),
    ("empty card_id", {"card_id": ""}, "card_id"),
    ("card_id as float", {"card_id": 42.5}, "card_id"),
    ("card_id as boolean", {"card_id": True}, "card_id"),
    ("card number as integer", {"card_id": 4111111111111111}, "card_id"),
    ("blank merchant_id", {"merchant_id": " "}, "merchant_id"),
    ("category as number", {"category": 3}, "category"),
    ("null category", {"category": "keep-null"}, "category"),
    ("amt as words", {"amt": "twelve"}, "amt"),
    ("amt as null", {"amt": "keep-null"}, "amt"),
    ("huge integer amt", {"amt": 10**400}, "amt"),
    ("year out of range", {"timestamp": "3000-01-01T00:00:00"}, "timestamp"),
    (
        "transaction_id over the limit",
        {"transaction_id": "t" * (MAX_ID_LENGTH + 1)},
        "transaction_id",
    ),
    ("card_id over the limit", {"card_id": "c" * (MAX_ID_LENGTH + 1)}, "card_id"),
    ("merchant_id over the limit", {"merchant_id": "m" * (MAX_ID_LENGTH + 1)}, "merchant_id"),
    ("id with a space", {"merchant_id": "m 7"}, "merchant_id"),
    ("id with a tab", {"card_id": "card\t7"}, "card_id"),
    ("id with a newline", {"transaction_id": "tx-1\n"}, "transaction_id"),
    ("id with a zero-width space", {"card_id": "card\u200b7"}, "card_id"),
    ("id with an accent", {"merchant_id": "café-7"}, "merchant_id"),
    ("id with a lone surrogate", {"transaction_id": "tx-\ud800"}, "transaction_id"),
    ("id with a control character", {"card_id": "card-\x00"}, "card_id"),
    ("card number as transaction_id", {"transaction_id": "5500005555555559"}, "transaction_id"),
    ("card number as merchant_id", {"merchant_id": "pan:4111111111111111"}, "merchant_id"),
    ("card number in category", {"category": "4111 1111 1111 1111"}, "category"),
    ("category over the limit", {"category": "x" * 129}, "category"),
    ("category with a lone surrogate", {"category": "food\ud800"}, "category"),
    ("category with a control character", {"category": "food\x07"}, "category"),
    ("category with a newline", {"category": "food\n"}, "category"),
    *((f"card_id: {name}", {"card_id": value}, "card_id") for name, value in CARD_NUMBER_DISGUISES),
    *(
        (f"transaction_id: {name}", {"transaction_id": value}, "transaction_id")
        for name, value in CARD_NUMBER_DISGUISES
    ),
]
#: Both validators accept these.
GOOD_ROWS: list[tuple[str, dict[str, Any]]] = [
    ("plain", {}),
    ("integer amount", {"amt": 20}),
    ("tiny amount", {"amt": 0.01}),
    ("zero amount", {"amt": 0.0}),
    ("integer zero amount", {"amt": 0}),
    ("the maximum amount", {"amt": MAX_AMOUNT}),
    ("utc offset", {"timestamp": "2026-02-01T10:00:00+00:00"}),
    ("zulu", {"timestamp": "2026-02-01T10:00:00Z"}),
    ("other offset", {"timestamp": "2026-02-01T12:00:00+02:00"}),
    ("fractional seconds", {"timestamp": "2026-02-01T10:00:00.123456"}),
    ("with category", {"category": "grocery"}),
    ("category with accents", {"category": "épicerie fine"}),
    ("category at the limit", {"category": "x" * 128}),
    ("numeric text id", {"transaction_id": "7"}),
    ("space date separator", {"timestamp": "2026-02-01 10:00:00"}),
    ("date only", {"timestamp": "2026-02-01"}),
    ("basic format", {"timestamp": "20260201T100000Z"}),
    ("offset without colon", {"timestamp": "2026-02-01T12:00:00+0200"}),
    ("digits that fail Luhn", {"card_id": "4111111111111112"}),
    ("short digit token", {"card_id": "123456"}),
    ("12 digits", {"card_id": "411111111111"}),
    ("20 digits", {"card_id": "41111111111111111111"}),
    ("ids at the limit", {"transaction_id": "t" * MAX_ID_LENGTH, "card_id": "c" * MAX_ID_LENGTH}),
    ("punctuation in a token", {"card_id": "tok_AbC.9/+=:@-"}),
    ("uuid", {"transaction_id": "3f2504e0-4f89-41d3-9a0c-0305e82c3301"}),
    # Its digits together (7220214940531957427, 19 of them) pass Luhn.
    ("uuid whose digits pass Luhn", {"transaction_id": "c7a2ea20-b2f1-4c94-ae05-319acb5c7427"}),
    # Its first three groups (8051590831164877) are a Luhn-valid run of 16 digits.
    ("uuid with a Luhn-valid run", {"transaction_id": "80515908-3116-4877-a6c6-aa5f447edff1"}),
    # 3034515972939 passes Luhn, but is glued to letters: part of a hexadecimal word.
    ("hex token", {"card_id": "c3034515972939b0db43738610d5fe14"}),
]
#: Only the JSON validator refuses these: JSON types are strict (numbers are numbers, text is
#: text); the scoring schema reads files, where an amount or an id may arrive as either.
JSON_ONLY_BAD: list[tuple[str, dict[str, Any], str, str]] = [
    ("numeric text amount", {"amt": "12.5"}, "amt", "must be a number, got text"),
    ("padded numeric text amount", {"amt": " 12.5 "}, "amt", "must be a number, got text"),
    ("integer transaction_id", {"transaction_id": 7}, "transaction_id", "must be text"),
    ("integer merchant_id", {"merchant_id": 12}, "merchant_id", "must be text, got a number"),
    ("integer card_id", {"card_id": 42}, "card_id", "must be text, got a number"),
]


def variant(changes: dict[str, Any]) -> dict[str, Any]:
    """GOOD with fields changed (None removes the field; "keep-null" sets it to null)."""
    row = dict(GOOD)
    for key, value in changes.items():
        if value is None:
            row.pop(key, None)
        else:
            row[key] = None if value == "keep-null" else value
    return row


def refused(instances: Any, limits: RequestLimits | None = None) -> RequestError:
    """The error ``parse_instances`` raises for ``instances``."""
    with pytest.raises(RequestError) as caught:
        parse_instances(instances, limits)
    return caught.value


def assert_renderable(error: RequestError) -> None:
    """The error body encodes as JSON (strictly UTF-8) and quotes no card number."""
    body = error.to_dict()
    encoded = orjson.dumps(body)
    json.dumps(body, ensure_ascii=False).encode("utf-8")
    digits = re.sub(rb"[^0-9]", b"", encoded)
    assert not any(pan.encode() in digits for pan in PAN_DIGITS), encoded


@pytest.mark.parametrize(("name", "changes", "field"), BAD_ROWS, ids=[r[0] for r in BAD_ROWS])
def test_bad_instance_names_the_field(name: str, changes: dict[str, Any], field: str) -> None:
    error = refused([variant(changes)])
    assert error.status == 400
    assert error.field == f"instances[0].{field}", name
    assert error.reason and len(error.problems) == 1
    body = error.to_dict()
    assert body["field"] == error.field and body["errors"][0]["reason"] == error.reason
    assert_renderable(error)


@pytest.mark.parametrize(("name", "changes"), GOOD_ROWS, ids=[r[0] for r in GOOD_ROWS])
def test_good_instance_parses(name: str, changes: dict[str, Any]) -> None:
    row = variant(changes)
    (tx,) = parse_instances([row])
    assert (tx.transaction_id, tx.card_id, tx.merchant_id) == (
        row["transaction_id"],
        row["card_id"],
        row["merchant_id"],
    )
    assert tx.amount == float(row["amt"]) and isinstance(tx.amount, float)
    assert isinstance(tx.timestamp_micros, int) and tx.category == row.get("category")


@pytest.mark.parametrize(
    ("name", "changes", "field", "reason"), JSON_ONLY_BAD, ids=[r[0] for r in JSON_ONLY_BAD]
)
def test_json_types_are_strict(name: str, changes: dict[str, Any], field: str, reason: str) -> None:
    error = refused([variant(changes)])
    assert error.field == f"instances[0].{field}"
    assert error.reason.startswith(reason), error.reason


@pytest.mark.parametrize(
    ("name", "value"), CARD_NUMBER_DISGUISES, ids=[r[0] for r in CARD_NUMBER_DISGUISES]
)
@pytest.mark.parametrize("field", ["transaction_id", "card_id", "merchant_id", "category"])
def test_a_card_number_is_refused_as_such_in_every_text_field(
    name: str, value: str, field: str
) -> None:
    error = refused([variant({field: value})])
    assert error.field == f"instances[0].{field}"
    assert error.reason.startswith("looks like a card number"), (name, error.reason)
    assert_renderable(error)


def test_the_error_for_a_long_id_does_not_quote_it() -> None:
    error = refused([variant({"transaction_id": "x" * 400_000})])
    assert error.reason == f"must be at most {MAX_ID_LENGTH} characters, got 400,000"


def test_the_error_for_a_badly_formed_id_names_the_character() -> None:
    error = refused([variant({"card_id": "card\u200b7"})])
    assert error.reason == (
        "must be printable ASCII without whitespace; found '\\u200b' at position 4"
    )


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"timestamp": PAN}, "is not an ISO-8601 timestamp: '************1111'"),
        ({"timestamp": "4111 1111 1111 1111"}, "is not an ISO-8601 timestamp: '************1111'"),
        ({"amt": 4111111111111111}, "must be between 0 and 1,000,000,000, got ************1111"),
        ({"timestamp": "2026-02-01\ud800"}, "is not an ISO-8601 timestamp: '2026-02-01\\ud800'"),
        ({"timestamp": "x" * 100}, f"is not an ISO-8601 timestamp: '{'x' * 40}'..."),
        ({"amt": -2.5}, "must be between 0 and 1,000,000,000, got -2.5"),
        ({"amt": math.nan}, "must be a finite number, got nan"),
        ({"amt": "12.5"}, "must be a number, got text"),
        (
            {"category": "food\ud800"},
            "must not hold control characters or lone surrogates; found '\\ud800' at position 4",
        ),
    ],
)
def test_reasons_quote_values_redacted_and_escaped(changes: dict[str, Any], expected: str) -> None:
    error = refused([variant(changes)])
    assert error.reason == expected
    assert_renderable(error)


def test_a_card_number_id_is_neither_echoed_nor_returned() -> None:
    error = refused([variant({"transaction_id": "5500005555555559"}), variant({"amt": -1})])
    assert [problem.field for problem in error.problems] == [
        "instances[0].transaction_id",
        "instances[1].amt",
    ]
    assert "5500005555555559" not in str(error) and "5559" not in str(error)


def test_the_maximum_amount_is_set_per_server() -> None:
    limits = RequestLimits(max_amount=100.0)
    assert parse_instances([variant({"amt": 100})], limits)[0].amount == 100.0
    error = refused([variant({"amt": 100.5})], limits)
    assert (error.field, error.reason) == (
        "instances[0].amt",
        "must be between 0 and 100, got 100.5",
    )
    assert parse_instances([variant({"amt": 100.5})])[0].amount == 100.5  # the default maximum


@pytest.mark.parametrize(
    "options",
    [
        {"max_amount": MAX_AMOUNT * 2},
        {"max_amount": 0.0},
        {"max_amount": math.nan},
        {"max_instances": 0},
        {"max_problems": 0},
    ],
)
def test_limits_are_checked(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(options))):
        RequestLimits(**options)


def test_duplicate_transaction_ids_in_one_request_are_refused() -> None:
    error = refused([variant({}), variant({"amt": 3.0})])
    assert error.field == "instances[1].transaction_id"
    assert "duplicates instances[0]" in error.reason


def test_timezones_are_converted_to_utc() -> None:
    naive = parse_instances([variant({})])[0].timestamp_micros
    shifted = parse_instances([variant({"timestamp": "2026-02-01T12:00:00+02:00"})])[0]
    assert shifted.timestamp_micros == naive


def test_every_problem_of_a_request_is_reported_with_its_position() -> None:
    rows = [variant({}), variant({"amt": -1}), variant({"timestamp": "x", "card_id": None})]
    error = refused(rows)
    fields = [problem.field for problem in error.problems]
    assert fields == ["instances[1].amt", "instances[2].card_id", "instances[2].timestamp"]


def test_the_number_of_problems_reported_is_bounded() -> None:
    rows = [variant({"transaction_id": f"t{i}", "amt": -1}) for i in range(10)]
    error = refused(rows, RequestLimits(max_problems=3))
    assert [problem.field for problem in error.problems] == [
        "instances[0].amt",
        "instances[1].amt",
        "instances[2].amt",
    ]


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"instances": []}, 400, "instances"),
        ({"rows": [GOOD]}, 400, "instances"),
        ({"instances": GOOD}, 400, "instances"),
        ([GOOD], 400, "body"),
        ({"instances": ["text"]}, 400, "instances[0]"),
        ({"instances": [GOOD] * 4}, 413, "instances"),
    ],
)
def test_request_level_errors(body: Any, status: int, field: str) -> None:
    with pytest.raises(RequestError) as caught:
        parse_v1_body(body, RequestLimits(max_instances=3))
    assert (caught.value.status, caught.value.field) == (status, field)


def test_rules_cover_exactly_the_contract_fields() -> None:
    from fraud_detection.schema import OPTIONAL_COLUMNS, REQUIRED_COLUMNS

    assert {rule.name for rule in FIELD_RULES if rule.required} == set(REQUIRED_COLUMNS)
    assert {rule.name for rule in FIELD_RULES if not rule.required} == set(OPTIONAL_COLUMNS)


def test_the_tables_state_what_they_claim() -> None:
    """The card numbers pass Luhn, the Luhn-valid ids of GOOD_ROWS really are."""
    assert luhn_valid(PAN) and luhn_valid("5500005555555559")
    assert luhn_valid("8051590831164877") and luhn_valid("3034515972939")
    digits = re.sub(r"\D", "", "c7a2ea20-b2f1-4c94-ae05-319acb5c7427")
    assert digits == "7220214940531957427" and luhn_valid(digits)
    assert in_digits_of(DOUBLE_STRUCK_ZERO, "4111").isdecimal()
    assert int(in_digits_of(FULL_WIDTH_ZERO, PAN)) == int(PAN)


def test_fast_validator_agrees_with_the_scoring_schema() -> None:
    """The same verdict, row by row, as the pandera scoring schema on the whole table."""
    import pandas as pd

    from fraud_detection.data import validation

    rows = [("good: " + name, variant(changes), None) for name, changes in GOOD_ROWS]
    rows += [("bad: " + name, variant(changes), bad) for name, changes, bad in BAD_ROWS]
    for name, row, bad in rows:
        fast = {problem.field.removeprefix("instance.") for problem in check_instance(row)}
        try:
            frame = pd.DataFrame([row])
        except OverflowError:  # an integer no numeric dtype holds
            frame = pd.DataFrame([row], dtype=object)
        report = validation.validate_transactions(frame, labelled=False)
        schema = {failure.column for failure in report.failures}
        # Not only the same verdict: both name the field that is wrong, and only that one.
        expected = set() if bad is None else {bad}
        assert fast == expected, f"{name}: the fast validator names {fast}"
        assert schema == expected, f"{name}: the scoring schema names {schema}"
    # JSON typing is the JSON side's concern only: the schema reads these from files.
    for name, changes, _, _ in JSON_ONLY_BAD:
        row = variant(changes)
        assert check_instance(row), name
        assert validation.validate_transactions(pd.DataFrame([row]), labelled=False).ok, name


# ------------------------------------------------------------------------------------ v2
@dataclass
class Tensor:
    """A v2 input tensor, duck-typed like KServe's ``InferInput``."""

    name: Any
    shape: Any
    datatype: Any
    data: Any = None
    array: Any = None

    def as_numpy(self) -> np.ndarray:
        """The binary data, as KServe decodes it; raises when there is none."""
        if self.array is None:
            raise ValueError("no binary data")
        return self.array


@dataclass
class Request:
    """A v2 request: its input tensors."""

    inputs: Any


DATATYPES = {"amt": "FP64"}


def tensors(rows: list[dict[str, Any]], names: tuple[str, ...] | None = None) -> list[Tensor]:
    """One tensor of shape [len(rows)] per field (``names``, else every field of the rows)."""
    names = names or tuple(rows[0])
    return [
        Tensor(name, [len(rows)], DATATYPES.get(name, "BYTES"), [row[name] for row in rows])
        for name in names
    ]


TWO = [variant({"transaction_id": "tx-1"}), variant({"transaction_id": "tx-2", "amt": 0})]


def v2_refused(inputs: list[Tensor], limits: RequestLimits | None = None) -> RequestError:
    """The error ``v2_instances`` raises for ``inputs``, checked to be renderable."""
    with pytest.raises(RequestError) as caught:
        v2_instances(Request(inputs), limits)
    assert_renderable(caught.value)
    return caught.value


def test_v2_inputs_become_instances() -> None:
    instances = v2_instances(Request(tensors(TWO)))
    assert instances == TWO
    assert [tx.amount for tx in parse_instances(instances, where="inputs")] == [12.5, 0.0]


def test_v2_column_shapes_and_nested_data() -> None:
    inputs = tensors(TWO)
    for tensor in inputs:
        tensor.shape = [2, 1]
        tensor.data = [[value] for value in tensor.data]
    assert v2_instances(Request(inputs)) == TWO


def test_v2_bytes_and_binary_data_are_read() -> None:
    inputs = tensors(TWO)
    inputs[0].data = [value.encode() for value in inputs[0].data]
    amounts = next(tensor for tensor in inputs if tensor.name == "amt")
    amounts.data, amounts.array = None, np.array([12.5, 0.0], dtype=np.float32)
    amounts.datatype = "FP32"
    assert v2_instances(Request(inputs)) == TWO


def test_v2_with_kserve_tensors() -> None:
    from kserve.protocol.infer_type import InferInput, InferRequest

    inputs = [
        InferInput(tensor.name, tensor.shape, tensor.datatype, tensor.data)
        for tensor in tensors(TWO)
    ]
    amounts = next(tensor for tensor in inputs if tensor.name == "amt")
    amounts.set_data_from_numpy(np.array([12.5, 0.0]), binary_data=True)
    assert amounts.data is None  # read through as_numpy()
    request = InferRequest("fraud-detector", inputs)
    assert v2_instances(request) == TWO
    amounts.shape = [3]
    error = v2_refused(request.inputs)
    assert (error.field, error.reason) == ("inputs.amt", "cannot be read as FP64 of shape [3]")


@pytest.mark.parametrize(
    ("change", "field", "reason"),
    [
        (
            {"shape": [2], "data": [1.0]},
            "inputs.amt",
            "holds 1 values but its shape [2] declares 2",
        ),
        (
            {"shape": [1], "data": [1.0, 2.0]},
            "inputs.amt",
            "holds 2 values but its shape [1] declares 1",
        ),
        ({"shape": [2, 2]}, "inputs.amt", "must have shape [n] or [n, 1], got [2, 2]"),
        ({"shape": [-1]}, "inputs.amt", "must have shape [n] or [n, 1], got [-1]"),
        ({"shape": "2"}, "inputs.amt", "must have shape [n] or [n, 1], got '2'"),
        (
            {"datatype": "BYTES"},
            "inputs.amt",
            "must have datatype FP32, FP64, INT8, INT16, INT32, INT64; got 'BYTES'",
        ),
        (
            {"datatype": "BOOL"},
            "inputs.amt",
            "must have datatype FP32, FP64, INT8, INT16, INT32, INT64; got 'BOOL'",
        ),
        (
            {"datatype": "FP16"},
            "inputs.amt",
            "must have datatype FP32, FP64, INT8, INT16, INT32, INT64; got 'FP16'",
        ),
    ],
)
def test_v2_a_bad_amount_tensor_is_named(change: dict[str, Any], field: str, reason: str) -> None:
    inputs = tensors(TWO)
    amounts = next(tensor for tensor in inputs if tensor.name == "amt")
    for key, value in change.items():
        setattr(amounts, key, value)
    error = v2_refused(inputs)
    assert [(p.field, p.reason) for p in error.problems] == [(field, reason)]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ("12.5", "must hold its data as an array, got text"),
        (12.5, "must hold its data as an array, got a number"),
        ({"a": 1}, "must hold its data as an array, got an object"),
        (None, "cannot be read as FP64 of shape [2]"),
        ([], "cannot be read as FP64 of shape [2]"),
        ([[12.5, 1.0], [2.0, 3.0]], "holds 4 values but its shape [2] declares 2"),
    ],
)
def test_v2_data_must_be_an_array_of_the_declared_size(data: Any, reason: str) -> None:
    inputs = tensors(TWO)
    amounts = next(tensor for tensor in inputs if tensor.name == "amt")
    amounts.data = data
    error = v2_refused(inputs)
    assert [(p.field, p.reason) for p in error.problems] == [("inputs.amt", reason)]


def test_v2_datatypes_are_case_sensitive() -> None:
    inputs = tensors(TWO)
    inputs[0].datatype = "bytes"
    error = v2_refused(inputs)
    assert (error.field, error.reason) == (
        "inputs.transaction_id",
        "must have datatype BYTES; got 'bytes'",
    )


def test_v2_ids_must_be_bytes() -> None:
    inputs = tensors(TWO)
    inputs[0].datatype, inputs[0].data = "INT64", [1, 2]
    error = v2_refused(inputs)
    assert (error.field, error.reason) == (
        "inputs.transaction_id",
        "must have datatype BYTES; got 'INT64'",
    )


def test_v2_a_missing_input_is_named_as_the_input() -> None:
    error = v2_refused(tensors(TWO, ("transaction_id", "card_id", "merchant_id", "timestamp")))
    assert [(p.field, p.reason) for p in error.problems] == [("inputs.amt", "is required")]


def test_v2_duplicate_and_unknown_inputs_are_refused_together() -> None:
    inputs = tensors(TWO)
    inputs.append(Tensor("card_id", [2], "BYTES", ["a", "b"]))
    inputs.append(Tensor("features", [2], "FP32", [1.0, 2.0]))
    inputs.append(Tensor(PAN, [2], "BYTES", ["a", "b"]))
    error = v2_refused(inputs)
    assert [(p.field, p.reason) for p in error.problems] == [
        ("inputs.card_id", "appears more than once (inputs[1], inputs[5])"),
        (
            "inputs[6]",
            "unknown input 'features'; the inputs are transaction_id, card_id, merchant_id, "
            "amt, timestamp, category",
        ),
        (
            "inputs[7]",
            "unknown input '************1111'; the inputs are transaction_id, card_id, "
            "merchant_id, amt, timestamp, category",
        ),
    ]


def test_v2_all_input_problems_are_reported_up_to_the_limit() -> None:
    inputs = tensors(TWO, ("transaction_id", "card_id", "amt"))
    inputs[2].datatype = "BYTES"
    inputs += [Tensor(f"x{i}", [2], "BYTES", ["a", "b"]) for i in range(30)]
    error = v2_refused(inputs)
    assert len(error.problems) == 20
    assert error.problems[0] == Problem(
        "inputs.amt", "must have datatype FP32, FP64, INT8, INT16, INT32, INT64; got 'BYTES'"
    )
    few = v2_refused(tensors(TWO, ("transaction_id",)), RequestLimits(max_problems=2))
    assert [p.field for p in few.problems] == ["inputs.card_id", "inputs.merchant_id"]


def test_v2_inputs_of_different_lengths_are_refused() -> None:
    inputs = tensors(TWO)
    inputs[0].shape, inputs[0].data = [1], ["tx-1"]
    error = v2_refused(inputs)
    assert error.field == "inputs" and "same length" in error.reason


@pytest.mark.parametrize("inputs", [[], None])
def test_v2_without_inputs(inputs: Any) -> None:
    with pytest.raises(RequestError) as caught:
        v2_instances(Request(inputs))
    assert caught.value.field == "inputs"


def test_v2_values_are_checked_by_the_same_rules() -> None:
    inputs = tensors(TWO)
    inputs[1].data = [b"card-1", b"\xff\xfe"]  # card_id: not UTF-8
    inputs[0].data = ["tx-1", "5500 0055 5555 5559"]
    amounts = next(tensor for tensor in inputs if tensor.name == "amt")
    amounts.data = [True, "12.5"]
    with pytest.raises(RequestError) as caught:
        parse_instances(v2_instances(Request(inputs)), where="inputs")
    assert [(p.field, p.reason) for p in caught.value.problems] == [
        ("inputs[0].amt", "must be a number, got a boolean"),
        (
            "inputs[1].transaction_id",
            "looks like a card number; card numbers must be tokenized "
            "before they reach the system (PCI DSS)",
        ),
        ("inputs[1].card_id", "must be text, got bytes that are not UTF-8 text"),
        ("inputs[1].amt", "must be a number, got text"),
    ]
    assert_renderable(caught.value)


def test_a_v1_instance_with_an_unknown_field_is_refused_as_v2_is() -> None:
    error = refused([GOOD, variant({"currency": "EUR"}), variant({"4111111111111111": 1})])
    assert [problem.field for problem in error.problems] == ["instances[1]", "instances[2]"]
    assert error.problems[0].reason.startswith("has an unknown field 'currency'; the fields are")
    assert "4111111111111111" not in error.problems[1].reason  # never echoed
