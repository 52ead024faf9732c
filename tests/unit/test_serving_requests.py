"""Scoring-request validation: the fast per-instance rules, their errors, and their agreement
with the pandera scoring schema."""

from __future__ import annotations

import math
from typing import Any

import pytest

from fraud_detection.serving.requests import (
    FIELD_RULES,
    RequestError,
    RequestLimits,
    check_instance,
    parse_instances,
    parse_v1_body,
)

GOOD: dict[str, Any] = {
    "transaction_id": "tx-1",
    "card_id": "card-0042",
    "merchant_id": "m-7",
    "amt": 12.5,
    "timestamp": "2026-02-01T10:00:00",
}

#: (name, changes to GOOD (None value = remove the field), the field the error must name).
BAD_ROWS: list[tuple[str, dict[str, Any], str | None]] = [
    ("missing transaction_id", {"transaction_id": None}, "transaction_id"),
    ("missing card_id", {"card_id": None}, "card_id"),
    ("missing merchant_id", {"merchant_id": None}, "merchant_id"),
    ("missing amt", {"amt": None}, "amt"),
    ("missing timestamp", {"timestamp": None}, "timestamp"),
    ("negative amt", {"amt": -3.0}, "amt"),
    ("zero amt", {"amt": 0}, "amt"),
    ("nan amt", {"amt": math.nan}, "amt"),
    ("inf amt", {"amt": math.inf}, "amt"),
    ("amt as boolean", {"amt": True}, "amt"),
    ("unparseable timestamp", {"timestamp": "yesterday"}, "timestamp"),
    ("timestamp as number", {"timestamp": 1767225600}, "timestamp"),
    ("impossible date", {"timestamp": "2026-02-30T10:00:00"}, "timestamp"),
    ("card number as card_id", {"card_id": "4111111111111111"}, "card_id"),
    ("empty card_id", {"card_id": ""}, "card_id"),
    ("card_id as float", {"card_id": 42.5}, "card_id"),
    ("card_id as boolean", {"card_id": True}, "card_id"),
    ("card number as integer", {"card_id": 4111111111111111}, "card_id"),
    ("grouped card number", {"card_id": "4111 1111 1111 1111"}, "card_id"),
    ("blank merchant_id", {"merchant_id": " "}, "merchant_id"),
    ("category as number", {"category": 3}, "category"),
    ("null category", {"category": "keep-null"}, "category"),
    ("amt as words", {"amt": "twelve"}, "amt"),
    ("amt as null", {"amt": "keep-null"}, "amt"),
    ("huge integer amt", {"amt": 10**400}, "amt"),
    ("year out of range", {"timestamp": "3000-01-01T00:00:00"}, "timestamp"),
]
GOOD_ROWS: list[tuple[str, dict[str, Any]]] = [
    ("plain", {}),
    ("integer amount", {"amt": 20}),
    ("tiny amount", {"amt": 0.01}),
    ("utc offset", {"timestamp": "2026-02-01T10:00:00+00:00"}),
    ("zulu", {"timestamp": "2026-02-01T10:00:00Z"}),
    ("other offset", {"timestamp": "2026-02-01T12:00:00+02:00"}),
    ("fractional seconds", {"timestamp": "2026-02-01T10:00:00.123456"}),
    ("with category", {"category": "grocery"}),
    ("numeric text amount", {"amt": "12.5"}),
    ("integer ids", {"transaction_id": 7, "merchant_id": 12}),
    ("space date separator", {"timestamp": "2026-02-01 10:00:00"}),
    ("digits that fail Luhn", {"card_id": "4111111111111112"}),
    ("short digit token", {"card_id": "123456"}),
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


@pytest.mark.parametrize(("name", "changes", "field"), BAD_ROWS, ids=[r[0] for r in BAD_ROWS])
def test_bad_instance_names_the_field(name: str, changes: dict[str, Any], field: str) -> None:
    with pytest.raises(RequestError) as caught:
        parse_instances([variant(changes)])
    error = caught.value
    assert error.status == 400
    assert error.field == f"instances[0].{field}", name
    assert error.reason
    body = error.to_dict()
    assert body["field"] == error.field and body["errors"][0]["reason"] == error.reason


@pytest.mark.parametrize(("name", "changes"), GOOD_ROWS, ids=[r[0] for r in GOOD_ROWS])
def test_good_instance_parses(name: str, changes: dict[str, Any]) -> None:
    row = variant(changes)
    (tx,) = parse_instances([row])
    assert tx.transaction_id == str(row["transaction_id"]) and isinstance(tx.merchant_id, str)
    assert tx.amount == float(row["amt"]) and isinstance(tx.timestamp_micros, int)


def test_duplicate_transaction_ids_in_one_request_are_refused() -> None:
    with pytest.raises(RequestError) as caught:
        parse_instances([variant({}), variant({"amt": 3.0})])
    assert caught.value.field == "instances[1].transaction_id"
    assert "duplicates instances[0]" in caught.value.reason


def test_timezones_are_converted_to_utc() -> None:
    naive = parse_instances([variant({})])[0].timestamp_micros
    shifted = parse_instances([variant({"timestamp": "2026-02-01T12:00:00+02:00"})])[0]
    assert shifted.timestamp_micros == naive


def test_every_problem_of_a_request_is_reported_with_its_position() -> None:
    rows = [variant({}), variant({"amt": -1}), variant({"timestamp": "x", "card_id": None})]
    with pytest.raises(RequestError) as caught:
        parse_instances(rows)
    fields = [problem.field for problem in caught.value.problems]
    assert fields == ["instances[1].amt", "instances[2].card_id", "instances[2].timestamp"]


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


def test_fast_validator_agrees_with_the_scoring_schema() -> None:
    """The same verdict, row by row, as the pandera scoring schema on the whole table."""
    import pandas as pd

    from fraud_detection.data import validation

    rows = [("good: " + name, variant(changes)) for name, changes in GOOD_ROWS]
    rows += [("bad: " + name, variant(changes)) for name, changes, _ in BAD_ROWS]
    for name, row in rows:
        fast_ok = not check_instance(row)
        try:
            frame = pd.DataFrame([row])
        except OverflowError:  # an integer no numeric dtype holds
            frame = pd.DataFrame([row], dtype=object)
        try:
            validation.SCORING_SCHEMA.validate(frame, lazy=True)
            schema_ok = True
        except Exception:
            schema_ok = False
        assert fast_ok == schema_ok, f"{name}: fast validator {fast_ok}, scoring schema {schema_ok}"
