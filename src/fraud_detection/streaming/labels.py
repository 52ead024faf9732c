"""The labels topic's record: one labelled outcome of one transaction (a chargeback, an analyst's
decision), written days after the transaction was scored.

A record is keyed by ``transaction_id`` (so every label of one transaction lands in one
partition, in order) and its value is a JSON object:

===================  ===========================================================================
``transaction_id``   the transaction's id, as it was scored (required)
``is_fraud``         ``0`` or ``1`` (``true``/``false`` are accepted) (required)
``labelled_at``      when the outcome became known, ISO-8601 UTC (required)
``merchant_id``      the transaction's merchant (optional: lets the transformer count the label
                     towards merchant risk without having to remember the transaction)
``timestamp``        the transaction's own time, ISO-8601 UTC (optional, as ``merchant_id``)
===================  ===========================================================================

Readers: the performance monitor (joins labels with the scores the mirror carries) and the
transformer (merchant risk, :meth:`~fraud_detection.features.OnlineFeatureState.record_label`).
A record that cannot be used raises :class:`LabelRecordError` naming the field and the reason;
readers count it under :attr:`LabelRecordError.reason` and move on. Nothing here touches Kafka.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from fraud_detection.features import timestamp_to_micros
from fraud_detection.schema import LABEL, MERCHANT_ID, TIMESTAMP, TRANSACTION_ID
from fraud_detection.streaming.record_error import RecordError

LABELLED_AT = "labelled_at"

BAD_NOT_JSON = "not_json"
BAD_MISSING_FIELD = "missing_field"
BAD_INVALID_VALUE = "invalid_value"
#: Why a label record can be unusable: its value is not a JSON object (``not_json``), a required
#: field is absent (``missing_field``), or a field has a wrong type or value (``invalid_value``).
BAD_REASONS: tuple[str, ...] = (BAD_NOT_JSON, BAD_MISSING_FIELD, BAD_INVALID_VALUE)


class LabelRecordError(RecordError):
    """A label record that cannot be used: its reason (:data:`BAD_REASONS`), the field, why."""


@dataclass(frozen=True)
class Label:
    """One labelled outcome (see the module docstring for each field).

    ``labelled_at_micros`` and ``timestamp_micros`` are microseconds since the epoch, UTC.
    """

    transaction_id: str
    is_fraud: int
    labelled_at_micros: int
    merchant_id: str | None = None
    timestamp_micros: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The record's JSON object (optional fields only when known)."""
        from fraud_detection.serving.mirror import iso_timestamp

        body: dict[str, Any] = {
            TRANSACTION_ID: self.transaction_id,
            LABEL: self.is_fraud,
            LABELLED_AT: iso_timestamp(self.labelled_at_micros),
        }
        if self.merchant_id is not None:
            body[MERCHANT_ID] = self.merchant_id
        if self.timestamp_micros is not None:
            body[TIMESTAMP] = iso_timestamp(self.timestamp_micros)
        return body

    def key(self) -> bytes:
        """The record's key: the transaction id."""
        return self.transaction_id.encode()

    def value(self) -> bytes:
        """The record's value: its JSON object."""
        return orjson.dumps(self.to_dict())


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:37]}..."


def _time(body: Mapping[str, Any], field: str, required: bool) -> int | None:
    stamp = body.get(field)
    if stamp is None:
        if required:
            raise LabelRecordError(BAD_MISSING_FIELD, field, "missing")
        return None
    if not isinstance(stamp, str):
        raise LabelRecordError(BAD_INVALID_VALUE, field, f"must be a string, got {_short(stamp)}")
    try:
        return timestamp_to_micros(stamp)
    except (ValueError, OverflowError):
        raise LabelRecordError(
            BAD_INVALID_VALUE, field, f"not an ISO-8601 timestamp: {_short(stamp)}"
        ) from None


def parse_label(value: bytes | str | None) -> Label:
    """The label in one record's value; :class:`LabelRecordError` when it has none."""
    try:
        body = orjson.loads(value or b"")
    except orjson.JSONDecodeError as exc:
        raise LabelRecordError(BAD_NOT_JSON, "value", f"not JSON ({exc})") from None
    if not isinstance(body, dict):
        raise LabelRecordError(
            BAD_NOT_JSON, "value", f"must be a JSON object, got {type(body).__name__}"
        )
    transaction_id = body.get(TRANSACTION_ID)
    if transaction_id is None:
        raise LabelRecordError(BAD_MISSING_FIELD, TRANSACTION_ID, "missing")
    if not isinstance(transaction_id, str) or not transaction_id:
        raise LabelRecordError(
            BAD_INVALID_VALUE,
            TRANSACTION_ID,
            f"must be a non-empty string, got {_short(transaction_id)}",
        )
    is_fraud = body.get(LABEL)
    if is_fraud is None:
        raise LabelRecordError(BAD_MISSING_FIELD, LABEL, "missing")
    if is_fraud not in (0, 1) or type(is_fraud) not in (int, bool):
        raise LabelRecordError(BAD_INVALID_VALUE, LABEL, f"must be 0 or 1, got {_short(is_fraud)}")
    labelled_at = _time(body, LABELLED_AT, required=True)
    merchant_id = body.get(MERCHANT_ID)
    if merchant_id is not None and (not isinstance(merchant_id, str) or not merchant_id):
        raise LabelRecordError(
            BAD_INVALID_VALUE,
            MERCHANT_ID,
            f"must be a non-empty string, got {_short(merchant_id)}",
        )
    assert labelled_at is not None
    return Label(
        transaction_id=transaction_id,
        is_fraud=int(is_fraud),
        labelled_at_micros=labelled_at,
        merchant_id=merchant_id,
        timestamp_micros=_time(body, TIMESTAMP, required=False),
    )


__all__ = [
    "BAD_REASONS",
    "LABELLED_AT",
    "Label",
    "LabelRecordError",
    "parse_label",
]
