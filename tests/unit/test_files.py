"""Transaction files: schema mapping, the handbook data, round trips, globs and clear errors."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fraud_detection.data.files import (
    HANDBOOK,
    SOURCE_SCHEMAS,
    UnknownSchemaError,
    detect_schema,
    expand_paths,
    format_timestamps,
    read_transactions,
    to_canonical_names,
    write_transactions,
)
from fraud_detection.data.validation import to_canonical_types, validate_transactions
from fraud_detection.schema import (
    AMOUNT,
    CARD_ID,
    LABEL,
    MERCHANT_ID,
    REQUIRED_COLUMNS,
    TIMESTAMP,
    TRANSACTION_ID,
)

HANDBOOK_APRIL = "transactions-2018-04.csv.gz"


def handbook_rows() -> pd.DataFrame:
    """Three rows in the handbook's layout, integer ids and the answer-key column included."""
    return pd.DataFrame(
        {
            "TRANSACTION_ID": [0, 1, 2],
            "TX_DATETIME": ["2018-04-01 00:00:31", "2018-04-01 00:02:10", "2018-04-01 00:07:56"],
            "CUSTOMER_ID": [596, 4961, 2],
            "TERMINAL_ID": [3156, 3412, 1365],
            "TX_AMOUNT": [57.16, 81.51, 146.0],
            "TX_TIME_SECONDS": [31, 130, 476],
            "TX_TIME_DAYS": [0, 0, 0],
            "TX_FRAUD": [0, 0, 1],
            "TX_FRAUD_SCENARIO": [0, 0, 1],
        }
    )


@pytest.mark.handbook
def test_a_handbook_month_maps_to_canonical_names(handbook_dir: Path) -> None:
    frame = read_transactions([handbook_dir / HANDBOOK_APRIL])
    assert list(frame.columns) == [*REQUIRED_COLUMNS, LABEL]
    assert not any(column.startswith("TX_") for column in frame.columns)  # no answer key
    assert len(frame) == 288_062 and int(frame[LABEL].sum()) == 1_702  # as its README says
    assert frame.iloc[0].to_dict() == {
        TRANSACTION_ID: "0",
        CARD_ID: "596",
        MERCHANT_ID: "3156",
        AMOUNT: 57.16,
        TIMESTAMP: "2018-04-01 00:00:31",
        LABEL: 0,
    }
    for column in (TRANSACTION_ID, CARD_ID, MERCHANT_ID):
        assert frame[column].map(type).eq(str).all(), column


def test_the_handbook_layout_is_mapped_without_its_answer_key(tmp_path: Path) -> None:
    path = tmp_path / "handbook.csv.gz"
    handbook_rows().to_csv(path, index=False)
    frame = read_transactions([path])
    assert list(frame.columns) == [*REQUIRED_COLUMNS, LABEL]
    assert frame[CARD_ID].tolist() == ["596", "4961", "2"]
    assert validate_transactions(frame).ok
    typed = to_canonical_types(frame)
    assert typed[TIMESTAMP][2] == pd.Timestamp("2018-04-01T00:07:56Z")
    assert typed[LABEL].tolist() == [0, 0, 1]


def test_detect_schema() -> None:
    assert detect_schema(handbook_rows().columns) is HANDBOOK
    assert detect_schema([*REQUIRED_COLUMNS, "extra"]).name == "canonical"
    assert {schema.name for schema in SOURCE_SCHEMAS} == {"canonical", "handbook"}


def test_an_unknown_schema_lists_the_missing_fields() -> None:
    frame = pd.DataFrame({"id": ["1"], "amount": [2.0], TIMESTAMP: ["2018-04-01"]})
    with pytest.raises(UnknownSchemaError) as caught:
        to_canonical_names(frame, source="payments.csv")
    message = str(caught.value)
    assert message.startswith("payments.csv: unknown schema")
    for name in (TRANSACTION_ID, CARD_ID, MERCHANT_ID, AMOUNT, "CUSTOMER_ID", "TX_AMOUNT"):
        assert name in message
    assert "canonical schema lacks" in message and "handbook schema lacks" in message
    assert isinstance(caught.value, ValueError)


def test_reading_an_unknown_schema_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "other.csv"
    path.write_text("id,amount\n1,2.0\n")
    with pytest.raises(UnknownSchemaError, match=r"other\.csv: unknown schema"):
        read_transactions([path])


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz", ".parquet"])
def test_round_trip(tmp_path: Path, transactions: pd.DataFrame, suffix: str) -> None:
    expected = to_canonical_types(transactions)
    for frame in (transactions, expected):  # as read, and typed
        path = write_transactions(frame, tmp_path / f"out{suffix}")
        back = read_transactions([path])
        assert validate_transactions(back).ok
        pd.testing.assert_frame_equal(to_canonical_types(back), expected)


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz", ".parquet"])
def test_ids_with_leading_zeros_stay_text(
    tmp_path: Path, transactions: pd.DataFrame, suffix: str
) -> None:
    digits = ["0042", "007", "1", "00", "0100"]  # all digits: a reader must not guess numbers
    frame = transactions.assign(**{TRANSACTION_ID: digits, CARD_ID: digits, MERCHANT_ID: digits})
    path = tmp_path / f"ids{suffix}"
    if suffix == ".parquet":
        frame.to_parquet(path)
    else:
        frame.to_csv(path, index=False)  # written by pandas, not by write_transactions
    back = read_transactions([str(path)])
    for column in (TRANSACTION_ID, CARD_ID, MERCHANT_ID):
        assert back[column].tolist() == digits, column


def test_the_compressed_csv_is_byte_identical_for_the_same_data(
    tmp_path: Path, transactions: pd.DataFrame
) -> None:
    first = write_transactions(transactions, tmp_path / "a" / "out.csv.gz")
    second = write_transactions(transactions, tmp_path / "b" / "out.csv.gz")
    assert first.read_bytes() == second.read_bytes()
    text = gzip.decompress(first.read_bytes()).decode()
    assert "2018-04-01T01:07:56.000000Z" in text  # canonical UTC text, offset applied


def test_format_timestamps_accepts_every_iso_form() -> None:
    values = pd.Series(["2018-04-01 00:00:31", "2018-04-01T00:02:10Z", "2018-04-01T03:07:56+02:00"])
    assert format_timestamps(values).tolist() == [
        "2018-04-01T00:00:31.000000Z",
        "2018-04-01T00:02:10.000000Z",
        "2018-04-01T01:07:56.000000Z",
    ]


def test_missing_ids_stay_missing_and_integer_ids_stay_integers(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            TRANSACTION_ID: pd.array(["t0", None, "t2"], dtype="string"),
            CARD_ID: pd.array([7, None, 9], dtype="Int64"),
            MERCHANT_ID: np.array([11, 12, 13]),
            AMOUNT: [1.0, 2.0, 3.0],
            TIMESTAMP: pd.to_datetime(["2018-04-01"] * 3, utc=True),
        }
    )
    back = read_transactions([write_transactions(frame, tmp_path / "ids.parquet")])
    assert back[CARD_ID][0] == "7" and back[MERCHANT_ID].tolist() == ["11", "12", "13"]
    assert back[TRANSACTION_ID].isna().tolist() == [False, True, False]
    assert back[CARD_ID].isna().tolist() == [False, True, False]
    report = validate_transactions(back, labelled=False)
    assert [(f.column, f.check, f.examples) for f in report.failures] == [
        (TRANSACTION_ID, "not null", [1]),
        (CARD_ID, "not null", [1]),
    ]


def test_globs_and_several_files_concatenate(tmp_path: Path, transactions: pd.DataFrame) -> None:
    write_transactions(transactions.iloc[:2], tmp_path / "c.csv")
    write_transactions(transactions.iloc[2:4], tmp_path / "a.csv.gz")
    write_transactions(transactions.iloc[4:], tmp_path / "b.csv")
    (tmp_path / "notes.txt").write_text("not data")
    by_glob = read_transactions([str(tmp_path / "*.csv*")])  # sorted: a.csv.gz, b.csv, c.csv
    assert by_glob[TRANSACTION_ID].tolist() == ["t2", "t3", "t4", "0042", "t1"]
    assert list(by_glob.index) == list(range(5))
    listed = read_transactions(  # in the order given
        [tmp_path / "c.csv", tmp_path / "a.csv.gz", tmp_path / "b.csv"]
    )
    assert listed[TRANSACTION_ID].tolist() == ["0042", "t1", "t2", "t3", "t4"]
    pd.testing.assert_frame_equal(to_canonical_types(listed), to_canonical_types(transactions))


def test_a_glob_matching_nothing_names_the_pattern(tmp_path: Path) -> None:
    pattern = str(tmp_path / "*.parquet")
    with pytest.raises(FileNotFoundError, match="matches no file") as caught:
        read_transactions([pattern])
    assert pattern in str(caught.value)


def test_a_missing_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.csv"
    with pytest.raises(FileNotFoundError, match="no such file") as caught:
        read_transactions([path])
    assert str(path) in str(caught.value)
    with pytest.raises(FileNotFoundError, match="no input file"):
        expand_paths([])


def test_unsupported_suffixes(tmp_path: Path, transactions: pd.DataFrame) -> None:
    path = tmp_path / "data.json"
    path.write_text("{}")
    with pytest.raises(ValueError, match=r"data\.json: unsupported file type.*\.parquet"):
        read_transactions([path])
    with pytest.raises(ValueError, match=r"out\.txt: unsupported file type"):
        write_transactions(transactions, tmp_path / "out.txt")
    assert not (tmp_path / "out.txt").exists()
