"""Validation of canonical transactions: each defect is reported by column, check, count and rows;
typing, loading, the summary and the ``fraud validate`` command."""

from __future__ import annotations

import json
import pickle
import random
import re
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from rich.console import Console
from typer.testing import CliRunner

from fraud_detection.data.files import write_transactions
from fraud_detection.data.validation import (
    MAX_ID_LENGTH,
    SCORING_SCHEMA,
    TRAINING_SCHEMA,
    DataValidationError,
    ValidationReport,
    amount_in_range,
    category_format_problem,
    drop_invalid_rows,
    id_format_problem,
    is_card_number,
    is_timestamp_text,
    load_transactions,
    luhn_valid,
    redact,
    summarize,
    to_canonical_types,
    validate_transactions,
)
from fraud_detection.schema import (
    AMOUNT,
    CARD_ID,
    CATEGORY,
    LABEL,
    MAX_AMOUNT,
    MERCHANT_ID,
    TIMESTAMP,
    TRANSACTION_ID,
)

PAN = "4111111111111111"  # a well-known test Visa number; passes the Luhn check
IN_RANGE = "amt in range"
CARD_CHECK = "not a raw card number"


def in_digits_of(zero: int, number: str) -> str:
    """``number`` written with the decimal digits of another script (``zero``: its 0)."""
    return "".join(chr(zero + int(digit)) for digit in number)


FULL_WIDTH_PAN = in_digits_of(0xFF10, PAN)
ARABIC_INDIC_PAN = in_digits_of(0x0660, PAN)


def text_of(renderable: object, width: int = 200) -> str:
    """What a rich renderable prints, as plain text."""
    console = Console(record=True, width=width, color_system=None)
    console.print(renderable)
    return console.export_text()


def table_cells(line: str) -> tuple[str, ...]:
    """The non-empty cells of one printed table row."""
    return tuple(cell.strip() for cell in line.split("│") if cell.strip())


def only_failure(report: ValidationReport) -> tuple[str, str, int, list[int]]:
    assert not report.ok
    assert len(report.failures) == 1, report.summary()
    failure = report.failures[0]
    return failure.column, failure.check, failure.count, failure.examples


def test_good_rows_pass(transactions: pd.DataFrame) -> None:
    report = validate_transactions(transactions)
    assert report.ok, report.summary()
    assert (report.n_rows, report.failures) == (5, [])
    assert validate_transactions(transactions, labelled=False).ok


def test_the_schemas_differ_only_by_the_label() -> None:
    assert set(TRAINING_SCHEMA.columns) == set(SCORING_SCHEMA.columns)
    assert TRAINING_SCHEMA.columns[LABEL].required
    assert not SCORING_SCHEMA.columns[LABEL].required
    assert not TRAINING_SCHEMA.columns[CATEGORY].required


def set_values(column: str, values: dict[int, object]) -> Callable[[pd.DataFrame], None]:
    def change(frame: pd.DataFrame) -> None:
        cells = frame[column].astype(object).tolist()
        for row, value in values.items():
            cells[row] = value
        frame[column] = pd.Series(cells, index=frame.index, dtype=object)

    return change


BAD_CASES = {
    "NaN amt": (set_values(AMOUNT, {1: np.nan}), AMOUNT, "not null", [1]),
    "inf amt": (set_values(AMOUNT, {2: np.inf, 4: -np.inf}), AMOUNT, "finite", [2, 4]),
    "negative amt": (set_values(AMOUNT, {3: -5.0}), AMOUNT, IN_RANGE, [3]),
    "amt over the maximum": (
        set_values(AMOUNT, {0: MAX_AMOUNT + 0.01, 4: 1e300}),
        AMOUNT,
        IN_RANGE,
        [0, 4],
    ),
    "text amt": (set_values(AMOUNT, {1: "abc"}), AMOUNT, "type", [1]),
    "bad timestamps": (
        set_values(TIMESTAMP, {0: "yesterday", 3: "2018-02-30 10:00:00"}),
        TIMESTAMP,
        "parseable UTC timestamp",
        [0, 3],
    ),
    "missing timestamp": (set_values(TIMESTAMP, {2: None}), TIMESTAMP, "not null", [2]),
    "duplicate transaction_id": (
        set_values(TRANSACTION_ID, {3: "t1"}),
        TRANSACTION_ID,
        "unique",
        [1, 3],
    ),
    "empty id": (set_values(MERCHANT_ID, {4: ""}), MERCHANT_ID, "id format", [4]),
    "blank id": (set_values(CARD_ID, {1: "   "}), CARD_ID, "id format", [1]),
    "id over the limit": (
        set_values(TRANSACTION_ID, {2: "t" * (MAX_ID_LENGTH + 1)}),
        TRANSACTION_ID,
        "id format",
        [2],
    ),
    "ids with whitespace, non-ASCII or control characters": (
        set_values(MERCHANT_ID, {0: "m 1", 1: "m\t1", 2: "café", 3: "m\u200b1", 4: "m\ud800"}),
        MERCHANT_ID,
        "id format",
        [0, 1, 2, 3, 4],
    ),
    "missing id": (set_values(TRANSACTION_ID, {0: None}), TRANSACTION_ID, "not null", [0]),
    "float id": (set_values(MERCHANT_ID, {2: 3.5}), MERCHANT_ID, "type", [2]),
    "label 2": (set_values(LABEL, {3: 2}), LABEL, "is_fraud in {0, 1}", [3]),
    "label text": (set_values(LABEL, {0: "yes"}), LABEL, "is_fraud in {0, 1}", [0]),
    "category not text": (set_values(CATEGORY, {1: 5}), CATEGORY, "type", [1]),
    "category over the limit": (set_values(CATEGORY, {3: "x" * 129}), CATEGORY, "valid text", [3]),
    "category with a lone surrogate or a control character": (
        set_values(CATEGORY, {0: "food\ud800", 2: "food\x00", 4: "a\nb"}),
        CATEGORY,
        "valid text",
        [0, 2, 4],
    ),
    "card number": (set_values(CARD_ID, {2: PAN}), CARD_ID, CARD_CHECK, [2]),
    "card number with separators": (
        set_values(CARD_ID, {0: "4111.1111.1111.1111", 3: "5555-5555-5555-4444"}),
        CARD_ID,
        CARD_CHECK,
        [0, 3],
    ),
    "card number with a prefix or a slash": (
        set_values(CARD_ID, {1: "pan:4111111111111111", 4: "tok_4111/1111/1111/1111"}),
        CARD_ID,
        CARD_CHECK,
        [1, 4],
    ),
    "card number as an integer": (
        set_values(CARD_ID, {1: 4111111111111111}),
        CARD_ID,
        CARD_CHECK,
        [1],
    ),
    "card number as transaction_id": (
        set_values(TRANSACTION_ID, {3: "5500005555555559"}),
        TRANSACTION_ID,
        CARD_CHECK,
        [3],
    ),
    "card number as merchant_id": (
        set_values(MERCHANT_ID, {0: "5500-0055-5555-5559"}),
        MERCHANT_ID,
        CARD_CHECK,
        [0],
    ),
    "card number in category": (
        set_values(CATEGORY, {2: "card 4111-1111-1111-1111"}),
        CATEGORY,
        CARD_CHECK,
        [2],
    ),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_each_defect_is_reported_once(transactions: pd.DataFrame, case: str) -> None:
    change, column, check, rows = BAD_CASES[case]
    change(transactions)
    before = transactions.copy()
    report = validate_transactions(transactions)
    assert only_failure(report) == (column, check, len(rows), rows)
    assert report.n_rows == len(transactions)  # nothing dropped
    pd.testing.assert_frame_equal(transactions, before)  # nothing changed


@pytest.mark.parametrize("column", [MERCHANT_ID, TIMESTAMP, LABEL])
def test_a_missing_column_fails_every_row(transactions: pd.DataFrame, column: str) -> None:
    report = validate_transactions(transactions.drop(columns=column))
    assert only_failure(report) == (column, "column present", 5, [])


def test_the_card_number_failure_explains_pci_and_hides_the_number(
    transactions: pd.DataFrame,
) -> None:
    set_values(CARD_ID, {2: PAN, 4: "4111 1111 1111 1111"})(transactions)
    set_values(TRANSACTION_ID, {0: FULL_WIDTH_PAN, 1: "tx\t4111\u200b1111\u200b1111\u200b1111"})(
        transactions
    )
    report = validate_transactions(transactions)
    failure = report.failure(CARD_ID, CARD_CHECK)
    assert failure is not None
    assert "tokenized" in failure.message and "PCI DSS" in failure.message
    assert failure.values == ["'************1111'", "'************1111'"]
    # Whitespace and full-width digits fail the id format too: the values are masked there too.
    assert report.failure(CARD_ID, "id format").values == ["'************1111'"]  # type: ignore[union-attr]
    assert report.failure(TRANSACTION_ID, "id format").values == [  # type: ignore[union-attr]
        "'************1111'",
        "'tx\\t************1111'",
    ]
    for output in (text_of(report.render()), json.dumps(report.to_dict()), report.summary()):
        # Every number here starts 4111; a masked one shows its last four digits only.
        assert "4111" not in output and FULL_WIDTH_PAN[:4] not in output


@pytest.mark.parametrize(
    "token",
    [
        "4111111111111112",  # 16 digits, fails Luhn
        "card-000123",
        "tok_AbC.9/+=:@-",
        "411111111111",  # 12 digits
        "41111111111111111111",  # 20 digits
        "0",
        "t" * MAX_ID_LENGTH,
        # Digits glued to letters belong to a word: 3034515972939 passes Luhn.
        "c3034515972939b0db43738610d5fe14",
        # A canonical UUID never is a card number, whatever its digit runs: 8051590831164877.
        "80515908-3116-4877-a6c6-aa5f447edff1",
    ],
)
def test_opaque_tokens_and_non_card_numbers_are_accepted(
    transactions: pd.DataFrame, token: str
) -> None:
    set_values(CARD_ID, {1: token})(transactions)
    assert not is_card_number(token)
    assert validate_transactions(transactions).ok


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (PAN, True),
        ("4111 1111 1111 1111", True),
        ("4111-1111-1111-1111", True),
        ("4111.1111.1111.1111", True),
        ("4111/1111/1111/1111", True),
        ("4111\t1111\t1111\t1111", True),
        ("4111  1111  1111  1111", True),
        ("4111\u200b1111\u200b1111\u200b1111", True),
        ("4111 \u2060- 1111 1111 1111", True),  # word joiner, dash, spaces
        (FULL_WIDTH_PAN, True),
        (ARABIC_INDIC_PAN, True),
        ("pan:4111111111111111", True),
        ("PAN 4111 1111 1111 1111 exp 12/27", True),
        ("tok_4111111111111111", True),
        ("  4111111111111111 ", True),
        ("378282246310005", True),  # 15-digit Amex
        ("4222222222222", True),  # 13-digit Visa
        ("6011111111111117", True),
        (4111111111111111, True),
        ("4111111111111112", False),
        ("411111111111111a", False),
        ("tok4111111111111111", False),  # glued to letters
        ("card-000042", False),
        ("", False),
        (None, False),
        (True, False),
    ],
)
def test_is_card_number(value: object, expected: bool) -> None:
    assert is_card_number(value) is expected


def test_luhn() -> None:
    assert luhn_valid("79927398713") and luhn_valid("0") and luhn_valid(PAN)
    assert not any(map(luhn_valid, ["79927398710", "", "12a4", "١٢٣"]))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (PAN, "'************1111'"),
        ("card 4111 1111 1111 1111 ok", "'card ************1111 ok'"),
        (FULL_WIDTH_PAN, "'************1111'"),
        ("tok4111111111111111", "'tok************1111'"),  # masked even where not refused
        ("4111111111111112", "'************1112'"),  # any 13 digits or more, whatever Luhn says
        ("41111111111111111111111", "'*******************1111'"),
        (4111111111111111, "************1111"),
        (10**400, "<an integer of 1329 bits>"),
        ("card-000042", "'card-000042'"),
        ("123456789012", "'123456789012'"),  # 12 digits: no card number
        ("tx\ud800", "'tx\\ud800'"),  # lone surrogate escaped
        ("a\u200bb\x00", "'a\\u200bb\\x00'"),
        ("é", "'é'"),
        (-3.0, "-3.0"),
        (None, "None"),
        ("x" * 41, "'" + "x" * 40 + "'..."),
        # Cut inside a number: the visible digits are all masked.
        ("x" * 30 + " 4111 1111 1111 1111", "'" + "x" * 30 + " ********'..."),
        ("x" * 36 + "12 4", "'" + "x" * 36 + "12 4'"),
    ],
)
def test_redact(value: object, expected: str) -> None:
    assert redact(value) == expected
    json.dumps(expected, ensure_ascii=False).encode("utf-8")  # plain, encodable text


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("card-000042", None),
        ("3f2504e0-4f89-41d3-9a0c-0305e82c3301", None),
        ("tok_AbC.9/+=:@-", None),
        ("!" * MAX_ID_LENGTH, None),
        (PAN, None),  # well formed: whether it is a card number is another rule
        ("", "must not be empty"),
        ("x" * 400_000, f"must be at most {MAX_ID_LENGTH} characters, got 400,000"),
        ("m 1", "must be printable ASCII without whitespace; found ' ' at position 1"),
        ("tx\ud800", "must be printable ASCII without whitespace; found '\\ud800' at position 2"),
        ("café", "must be printable ASCII without whitespace; found '\\xe9' at position 3"),
    ],
)
def test_id_format_problem(text: str, reason: str | None) -> None:
    assert id_format_problem(text) == reason


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("grocery", None),
        ("épicerie fine", None),
        ("", None),
        ("x" * 128, None),
        ("x" * 129, "must be at most 128 characters, got 129"),
        ("a\tb", "must not hold control characters or lone surrogates; found '\\t' at position 1"),
        (
            "ab\x85",
            "must not hold control characters or lone surrogates; found '\\x85' at position 2",
        ),
        (
            "\udc80",
            "must not hold control characters or lone surrogates; found '\\udc80' at position 0",
        ),
    ],
)
def test_category_format_problem(text: str, reason: str | None) -> None:
    assert category_format_problem(text) == reason


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2018-04-01 00:00:31", True),
        ("2018-04-01T00:00:31.123456Z", True),
        ("2018-04-01T03:07:56+02:00", True),
        ("20180401T000031", True),
        ("2018-04-01", True),
        ("2018-04-01\x0000:00:31", False),
        ("2018-04-01_00:00:31", False),
        ("2018-W13-7", False),
        ("2018-04-01T00:00:31,5", False),
        ("2018-04-01T00:00:31 ", False),
        ("\uff12018-04-01", False),
        ("", False),
    ],
)
def test_is_timestamp_text(text: str, expected: bool) -> None:
    assert is_timestamp_text(text) is expected


def test_amount_in_range_on_numbers_and_arrays() -> None:
    assert amount_in_range(0.0) and amount_in_range(MAX_AMOUNT) and amount_in_range(12.5)
    assert not amount_in_range(-0.01) and not amount_in_range(MAX_AMOUNT + 1)
    assert not amount_in_range(float("nan"))
    assert amount_in_range(100.0, max_amount=100.0) and not amount_in_range(100.5, 100.0)
    numbers = np.array([-1.0, 0.0, 5.0, MAX_AMOUNT, 2 * MAX_AMOUNT, np.nan])
    assert amount_in_range(numbers).tolist() == [False, True, True, True, False, False]


def test_zero_amounts_are_valid(transactions: pd.DataFrame) -> None:
    set_values(AMOUNT, {0: 0.0, 2: -0.0, 4: MAX_AMOUNT})(transactions)
    assert validate_transactions(transactions).ok
    assert validate_transactions(transactions, labelled=False).ok


def test_reports_of_unusual_text_are_encodable(transactions: pd.DataFrame) -> None:
    set_values(MERCHANT_ID, {1: "m\ud800", 3: "m" * 10_000})(transactions)
    set_values(CATEGORY, {0: "food\udfff", 2: "[/b] tea\x00"})(transactions)
    report = validate_transactions(transactions)
    assert report.failure(MERCHANT_ID, "id format").values == [  # type: ignore[union-attr]
        "'m\\ud800'",
        "'" + "m" * 40 + "'...",
    ]
    assert report.failure(CATEGORY, "valid text").values == [  # type: ignore[union-attr]
        "'food\\udfff'",
        "'[/b] tea\\x00'",
    ]
    json.dumps(report.to_dict(), ensure_ascii=False).encode("utf-8")
    # Values are printed as they are, not read as rich markup.
    assert "'[/b] tea\\x00'" in text_of(report.render()).encode("utf-8").decode("utf-8")


def test_no_uuid_or_hex_token_is_taken_for_a_card_number() -> None:
    """Reading all digits of a random UUID as one number flags about 1 in 500 of them; runs
    broken by letters, glued digits and the UUID form must flag none."""
    rng = random.Random(11)
    for _ in range(20_000):
        value = uuid.UUID(int=rng.getrandbits(128), version=4)
        assert not is_card_number(str(value)), value
        assert not is_card_number(value.hex), value.hex
        assert not is_card_number(f"tok_{rng.getrandbits(160):040x}")


def luhn_check_digit(body: str) -> str:
    return next(str(d) for d in range(10) if luhn_valid(body + str(d)))


def disguised_number(rng: random.Random) -> str:
    """Digits, half of them Luhn-valid, grouped, in various scripts and with prefixes."""
    body = "".join(rng.choice("0123456789") for _ in range(rng.randint(11, 20)))
    digits = body + (luhn_check_digit(body) if rng.random() < 0.5 else "")
    if rng.random() < 0.5:
        separator = rng.choice([" ", "-", ".", "/", "\t", "  ", "\u200b", " - "])
        digits = separator.join(digits[i : i + 4] for i in range(0, len(digits), 4))
    if rng.random() < 0.2:
        digits = in_digits_of(rng.choice([0xFF10, 0x0660, 0x0966]), re.sub(r"\D", "", digits))
    return rng.choice(["", "", "pan:", "tok_", "tok", "card "]) + digits


def test_the_card_check_of_the_schema_agrees_with_is_card_number(
    transactions: pd.DataFrame,
) -> None:
    rng = random.Random(3)
    values = [disguised_number(rng) for _ in range(400)]
    frame = pd.concat([transactions.iloc[:1]] * len(values), ignore_index=True)
    frame[TRANSACTION_ID] = [f"t{i}" for i in range(len(values))]
    frame[CARD_ID] = values
    expected = [i for i, value in enumerate(values) if is_card_number(value)]
    assert 50 < len(expected) < 350  # both kinds are well represented
    report = validate_transactions(frame)
    failure = report.failure(CARD_ID, CARD_CHECK)
    assert failure is not None and failure.count == len(expected)
    assert failure.examples == expected[:5]
    flagged = set(expected)
    kept = frame[[i not in flagged for i in range(len(frame))]]
    assert validate_transactions(kept).failure(CARD_ID, CARD_CHECK) is None


def test_several_failures_are_all_reported(transactions: pd.DataFrame) -> None:
    set_values(AMOUNT, {0: np.nan, 2: -1.0, 4: "12,50"})(transactions)
    set_values(TIMESTAMP, {1: "not a time"})(transactions)
    set_values(TRANSACTION_ID, {4: "0042"})(transactions)
    set_values(CARD_ID, {3: PAN})(transactions)
    set_values(LABEL, {2: 7})(transactions)
    report = validate_transactions(transactions.drop(columns=MERCHANT_ID))
    found = {(f.column, f.check): (f.count, f.examples) for f in report.failures}
    assert found == {
        (TRANSACTION_ID, "unique"): (2, [0, 4]),
        (CARD_ID, "not a raw card number"): (1, [3]),
        (MERCHANT_ID, "column present"): (5, []),
        (AMOUNT, "not null"): (1, [0]),
        (AMOUNT, "type"): (1, [4]),
        (AMOUNT, IN_RANGE): (1, [2]),
        (TIMESTAMP, "parseable UTC timestamp"): (1, [1]),
        (LABEL, "is_fraud in {0, 1}"): (1, [2]),
    }
    # Listed in canonical column order.
    assert [f.column for f in report.failures][:3] == [TRANSACTION_ID, CARD_ID, MERCHANT_ID]


def test_values_of_any_kind_are_reported_not_raised(transactions: pd.DataFrame) -> None:
    set_values(TRANSACTION_ID, {0: ["a"], 2: {"x": 1}})(transactions)
    set_values(CARD_ID, {0: b"12", 1: 3.0, 2: [PAN], 3: None, 4: {"k": 1}})(transactions)
    set_values(AMOUNT, {1: {"a": 1}, 3: True})(transactions)
    set_values(TIMESTAMP, {4: 1522540831})(transactions)
    set_values(LABEL, {0: True, 1: "1"})(transactions)  # booleans and "1" are labels
    report = validate_transactions(transactions)
    found = {(f.column, f.check): f.examples for f in report.failures}
    assert found == {
        (TRANSACTION_ID, "type"): [0, 2],
        (CARD_ID, "not null"): [3],
        (CARD_ID, "type"): [0, 1, 2, 4],
        (AMOUNT, "type"): [1, 3],
        (TIMESTAMP, "parseable UTC timestamp"): [4],  # epoch numbers are ambiguous
    }


def test_examples_are_positions_and_at_most_five(transactions: pd.DataFrame) -> None:
    frame = pd.concat([transactions] * 4, ignore_index=True)
    frame[TRANSACTION_ID] = [f"t{i}" for i in range(len(frame))]
    frame[AMOUNT] = -1.0
    frame.index = range(100, 100 + len(frame))
    failure = only_failure(validate_transactions(frame))
    assert failure == (AMOUNT, IN_RANGE, 20, [0, 1, 2, 3, 4])


def test_report_render_and_dict(transactions: pd.DataFrame) -> None:
    set_values(AMOUNT, {1: -3.0, 3: 2e9})(transactions)
    report = validate_transactions(transactions)
    text = text_of(report.render())
    assert IN_RANGE in text and "1, 3" in text and "-3.0" in text
    assert "amounts must be between 0 and 1,000,000,000" in text
    line = next(line for line in text.splitlines() if IN_RANGE in line)
    assert AMOUNT in line and " 2 " in line
    as_dict = json.loads(json.dumps(report.to_dict()))
    assert as_dict["ok"] is False and as_dict["n_rows"] == 5
    assert as_dict["failures"][0] | {"message": ""} == {
        "column": AMOUNT,
        "check": IN_RANGE,
        "count": 2,
        "examples": [1, 3],
        "values": ["-3.0", "2000000000.0"],
        "message": "",
    }
    assert validate_transactions(transactions.iloc[[0, 2, 4]]).to_dict()["ok"] is True


def test_the_scoring_schema_needs_no_label(transactions: pd.DataFrame) -> None:
    unlabelled = transactions.drop(columns=[LABEL, CATEGORY])
    assert validate_transactions(unlabelled, labelled=False).ok
    assert only_failure(validate_transactions(unlabelled))[:2] == (LABEL, "column present")
    # A label that is present is checked all the same.
    set_values(LABEL, {1: 3})(transactions)
    assert only_failure(validate_transactions(transactions, labelled=False))[:2] == (
        LABEL,
        "is_fraud in {0, 1}",
    )


def test_to_canonical_types(transactions: pd.DataFrame) -> None:
    transactions[AMOUNT] = transactions[AMOUNT].map(str).astype(object)  # "12.5", as text
    transactions[MERCHANT_ID] = [7, 8, 7, 9, 8]
    shuffled = transactions[[LABEL, TIMESTAMP, *transactions.columns.drop([LABEL, TIMESTAMP])]]
    typed = to_canonical_types(shuffled)
    assert list(typed.columns) == [
        TRANSACTION_ID,
        CARD_ID,
        MERCHANT_ID,
        AMOUNT,
        TIMESTAMP,
        CATEGORY,
        LABEL,
    ]
    assert typed.dtypes.astype(str).to_dict() == {
        TRANSACTION_ID: "object",
        CARD_ID: "object",
        MERCHANT_ID: "object",
        AMOUNT: "float64",
        TIMESTAMP: "datetime64[ns, UTC]",
        CATEGORY: "object",
        LABEL: "int8",
    }
    assert typed[TRANSACTION_ID].tolist() == ["0042", "t1", "t2", "t3", "t4"]
    assert typed[CARD_ID][2] == "007"
    assert typed[MERCHANT_ID].tolist() == ["7", "8", "7", "9", "8"]
    assert typed[AMOUNT].tolist() == [12.5, 99.99, 0.01, 250.0, 7.0]
    assert typed[TIMESTAMP].tolist() == [
        pd.Timestamp("2018-04-01T00:00:31Z"),
        pd.Timestamp("2018-04-01T00:02:10Z"),
        pd.Timestamp("2018-04-01T01:07:56Z"),  # +02:00 converted
        pd.Timestamp("2018-04-02T10:00:00.123456Z"),
        pd.Timestamp("2018-04-03T23:59:59Z"),
    ]
    assert typed[LABEL].tolist() == [0, 0, 1, 0, 0]


def test_to_canonical_types_reads_naive_datetimes_as_utc_nanoseconds(
    transactions: pd.DataFrame,
) -> None:
    transactions[TIMESTAMP] = pd.Series(pd.to_datetime(["2018-04-01 10:00"] * 5)).dt.as_unit("us")
    typed = to_canonical_types(transactions.drop(columns=[CATEGORY, LABEL]))
    assert str(typed[TIMESTAMP].dtype) == "datetime64[ns, UTC]"
    assert typed[TIMESTAMP][0] == pd.Timestamp("2018-04-01T10:00:00Z")
    assert CATEGORY not in typed and LABEL not in typed


def test_to_canonical_types_never_turns_garbage_into_missing(transactions: pd.DataFrame) -> None:
    set_values(AMOUNT, {1: "abc"})(transactions)
    with pytest.raises(ValueError):
        to_canonical_types(transactions)


def test_load_transactions(tmp_path: Path, transactions: pd.DataFrame) -> None:
    path = write_transactions(transactions, tmp_path / "good.csv")
    typed = load_transactions(path)  # a single path is one file, not an iterable of letters
    pd.testing.assert_frame_equal(typed, to_canonical_types(transactions))
    with pytest.raises(DataValidationError) as caught:  # the same file twice: ids repeat
        load_transactions([path, path])
    assert only_failure(caught.value.report) == (TRANSACTION_ID, "unique", 10, [0, 1, 2, 3, 4])


def test_load_transactions_raises_with_the_report(
    tmp_path: Path, transactions: pd.DataFrame
) -> None:
    set_values(AMOUNT, {2: -1.0})(transactions)
    set_values(CARD_ID, {0: PAN})(transactions)
    path = write_transactions(transactions, tmp_path / "bad.csv")
    with pytest.raises(DataValidationError) as caught:
        load_transactions([path])
    error = caught.value
    assert isinstance(error, ValueError)
    assert [(f.column, f.check, f.count) for f in error.report.failures] == [
        (CARD_ID, CARD_CHECK, 1),
        (AMOUNT, IN_RANGE, 1),
    ]
    message = str(error)
    assert str(path) in message and "amt: amt in range (1 row)" in message
    assert "card_id: not a raw card number (1 row)" in message and PAN not in message
    assert len(message.splitlines()) <= 3
    copy = pickle.loads(pickle.dumps(error))
    assert (str(copy), copy.report) == (message, error.report)


def test_load_transactions_can_drop_the_failing_rows_on_purpose(
    tmp_path: Path, transactions: pd.DataFrame, caplog: pytest.LogCaptureFixture
) -> None:
    set_values(AMOUNT, {2: -0.01, 4: -3.0})(transactions)
    path = write_transactions(transactions, tmp_path / "bad.csv")
    typed = load_transactions(path, drop_invalid=True)
    assert typed[TRANSACTION_ID].tolist() == transactions[TRANSACTION_ID].iloc[[0, 1, 3]].tolist()
    assert "dropped 2 invalid rows" in caplog.text and IN_RANGE in caplog.text


def test_a_column_level_failure_cannot_be_dropped(transactions: pd.DataFrame) -> None:
    frame = transactions.drop(columns=MERCHANT_ID)
    with pytest.raises(DataValidationError, match="merchant_id: column present"):
        drop_invalid_rows(frame, validate_transactions(frame))


def test_load_transactions_of_no_rows(tmp_path: Path, transactions: pd.DataFrame) -> None:
    path = write_transactions(transactions.iloc[:0], tmp_path / "empty.csv")
    with pytest.raises(ValueError, match=r"no transactions in .*empty\.csv"):
        load_transactions([path])


def test_summarize(transactions: pd.DataFrame) -> None:
    for frame in (transactions, to_canonical_types(transactions)):
        text = text_of(summarize(frame))
        rows = dict(cells for cells in map(table_cells, text.splitlines()) if len(cells) == 2)
        assert rows["rows"] == "5" and rows["cards"] == "4" and rows["merchants"] == "3"
        assert rows["frauds"] == "1" and "20.00%" in text
        assert rows["first"] == "2018-04-01T00:00:31Z"
        assert rows["last"] == "2018-04-03T23:59:59Z"
    assert "fraud" not in text_of(summarize(transactions.drop(columns=LABEL)))


@pytest.mark.handbook
def test_the_handbook_data_is_valid_with_its_zero_amounts(handbook_dir: Path) -> None:
    """The handbook simulator rounds 19 amounts to 0.00: zero-amount transactions are real
    (account verifications), so every row of the three months is valid and nothing is dropped."""
    code, output = invoke(str(handbook_dir / "transactions-*.csv.gz"))
    assert code == 0, output
    assert "valid: 872,795 rows" in output
    april = load_transactions(handbook_dir / "transactions-2018-04.csv.gz")
    assert len(april) == 288_062
    zeros = april.index[april[AMOUNT] == 0].tolist()
    assert zeros == [129590, 187419, 207512, 238779]


# --- the command -----------------------------------------------------------------------------


def invoke(*args: str) -> tuple[int, str]:
    from fraud_detection.cli import app

    result = CliRunner().invoke(app, ["validate", *args], env={"COLUMNS": "200"})
    return result.exit_code, result.output


def test_cli_validate_good_file(tmp_path: Path, transactions: pd.DataFrame) -> None:
    path = write_transactions(transactions, tmp_path / "good.csv.gz")
    code, output = invoke(str(path))
    assert code == 0, output
    assert "valid" in output and "5 rows" in output
    assert "merchants" in output and "2018-04-03T23:59:59Z" in output


def test_cli_validate_unlabelled(tmp_path: Path, transactions: pd.DataFrame) -> None:
    path = write_transactions(transactions.drop(columns=LABEL), tmp_path / "requests.parquet")
    assert invoke(str(path))[0] == 1
    assert invoke("--unlabelled", str(path))[0] == 0


def test_cli_validate_bad_file(tmp_path: Path, transactions: pd.DataFrame) -> None:
    set_values(AMOUNT, {3: -2.0})(transactions)
    set_values(TIMESTAMP, {1: "soon"})(transactions)
    path = write_transactions(transactions, tmp_path / "bad.parquet")
    code, output = invoke(str(path))
    assert code == 1
    assert "parseable UTC timestamp" in output and IN_RANGE in output
    line = next(line for line in output.splitlines() if IN_RANGE in line)
    assert AMOUNT in line and "3" in line


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("missing.csv", None, "no such file"),
        ("unknown.csv", "id,amount\n1,2.0\n", "unknown schema"),
        ("data.json", "{}", "unsupported file type"),
    ],
)
def test_cli_validate_unreadable_input(
    tmp_path: Path, name: str, content: str | None, expected: str
) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    code, output = invoke(str(path))
    assert code == 1
    assert expected in output and name in output


def test_integer_ids_in_an_object_column_are_not_blank(transactions: pd.DataFrame) -> None:
    transactions[TRANSACTION_ID] = pd.Series([1, 2, 3, 4, 5], dtype=object)
    transactions[MERCHANT_ID] = pd.Series([7, 8, 9, 10, " "], dtype=object)
    report = validate_transactions(transactions)
    assert only_failure(report) == (MERCHANT_ID, "id format", 1, [4])
