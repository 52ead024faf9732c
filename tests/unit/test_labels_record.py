"""The labels topic's record (:mod:`fraud_detection.streaming.labels`): a label survives its
own encoding, and every unusable record names its field and its reason."""

from __future__ import annotations

import orjson
import pytest

from fraud_detection.streaming.labels import BAD_REASONS, Label, LabelRecordError, parse_label

AT = 1_772_409_600 * 1_000_000  # 2026-03-02T00:00:00Z


@pytest.mark.parametrize(
    "label",
    [
        Label("tx-1", 1, AT),
        Label("tx-2", 0, AT + 1, merchant_id="m-7", timestamp_micros=AT - 86_400_000_000),
    ],
)
def test_a_label_round_trips_through_its_record(label: Label) -> None:
    assert parse_label(label.value()) == label
    assert label.key() == label.transaction_id.encode()


def test_booleans_are_accepted_as_the_label() -> None:
    value = orjson.dumps(
        {"transaction_id": "t", "is_fraud": True, "labelled_at": "2026-03-02T00:00:00Z"}
    )
    assert parse_label(value) == Label("t", 1, AT)


GOOD = {"transaction_id": "t", "is_fraud": 1, "labelled_at": "2026-03-02T00:00:00Z"}


@pytest.mark.parametrize(
    ("value", "reason", "field"),
    [
        (b"{not json", "not_json", "value"),
        (b"[1, 2]", "not_json", "value"),
        (None, "not_json", "value"),
        ({**GOOD, "transaction_id": None}, "missing_field", "transaction_id"),
        ({**GOOD, "transaction_id": ""}, "invalid_value", "transaction_id"),
        ({**GOOD, "transaction_id": 12}, "invalid_value", "transaction_id"),
        ({k: v for k, v in GOOD.items() if k != "is_fraud"}, "missing_field", "is_fraud"),
        ({**GOOD, "is_fraud": 2}, "invalid_value", "is_fraud"),
        ({**GOOD, "is_fraud": "1"}, "invalid_value", "is_fraud"),
        ({**GOOD, "is_fraud": 1.0}, "invalid_value", "is_fraud"),
        ({k: v for k, v in GOOD.items() if k != "labelled_at"}, "missing_field", "labelled_at"),
        ({**GOOD, "labelled_at": "yesterday"}, "invalid_value", "labelled_at"),
        ({**GOOD, "labelled_at": 12}, "invalid_value", "labelled_at"),
        ({**GOOD, "merchant_id": ""}, "invalid_value", "merchant_id"),
        ({**GOOD, "timestamp": "soon"}, "invalid_value", "timestamp"),
    ],
)
def test_an_unusable_record_names_its_field_and_reason(
    value: object, reason: str, field: str
) -> None:
    raw = orjson.dumps(value) if isinstance(value, dict) else value
    with pytest.raises(LabelRecordError) as caught:
        parse_label(raw)  # type: ignore[arg-type]
    assert caught.value.reason == reason and reason in BAD_REASONS
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")
