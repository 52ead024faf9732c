"""Read one mirrored scoring record: CloudEvents binary mode over Kafka, JSON value.

The transformer writes the records (:mod:`fraud_detection.serving.mirror`): ``ce_*`` headers
(``ce_specversion``, ``ce_id``, ``ce_type`` = :data:`~fraud_detection.serving.mirror.CE_TYPE`,
``ce_source``, ``ce_time``...) and a JSON value ``{"transaction_id", "timestamp", "features":
{name: value}, "model_version", "fraud_probability", "is_fraud", "threshold"}``. The headers are
read with the CloudEvents SDK's Kafka binding (:func:`cloudevents.kafka.from_binary`), so any
producer that writes binary-mode CloudEvents is read the same way.

A record that cannot be used raises :class:`UnusableRecordError` with one of
:data:`SKIP_REASONS` and a message naming the field and what is wrong with it; the monitor
counts it under that reason and moves on. Nothing here touches Kafka: a record is its headers
and value.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from cloudevents import exceptions as ce_errors
from cloudevents.kafka import KafkaMessage, from_binary

from fraud_detection.features import timestamp_to_micros
from fraud_detection.schema import TIMESTAMP, TRANSACTION_ID
from fraud_detection.serving.mirror import CE_TYPE
from fraud_detection.streaming.record_error import RecordError

#: The value's fields the monitor reads (as :func:`fraud_detection.serving.mirror.record_value`
#: writes them).
FEATURES_FIELD = "features"
MODEL_VERSION_FIELD = "model_version"
SCORE_FIELD = "fraud_probability"

#: The binary-mode headers of the attributes CloudEvents requires, and of the event's time.
REQUIRED_HEADERS: tuple[str, ...] = ("ce_specversion", "ce_id", "ce_source", "ce_type")
CE_TIME = "ce_time"

SKIP_NOT_CLOUDEVENT = "not_cloudevent"
SKIP_UNSUPPORTED_TYPE = "unsupported_type"
SKIP_NOT_JSON = "not_json"
SKIP_MISSING_FIELD = "missing_field"
SKIP_INVALID_VALUE = "invalid_value"
SKIP_MISSING_FEATURES = "missing_features"
SKIP_UNKNOWN_MODEL_VERSION = "unknown_model_version"
SKIP_DUPLICATE = "duplicate"
#: Why a record can be skipped (the ``reason`` label of ``fraud_monitor_records_skipped``):
#:
#: * ``not_cloudevent`` — the headers are not a binary-mode CloudEvent (a required ``ce_*``
#:   attribute is missing, the spec version is unknown, or a header is not UTF-8);
#: * ``unsupported_type`` — a CloudEvent of another ``ce_type`` (e.g. a response event);
#: * ``not_json`` — the value is not a JSON object;
#: * ``missing_field`` — ``model_version``, ``features``, ``fraud_probability`` or the time is
#:   missing or of the wrong type;
#: * ``invalid_value`` — a feature or the score is not a finite number (the score not in
#:   [0, 1]), or the time is not an ISO-8601 timestamp;
#: * ``missing_features`` — a feature of the version's drift reference is absent;
#: * ``unknown_model_version`` — no drift reference for the record's model version;
#: * ``duplicate`` — a record with the same ``ce_id`` (the same transaction) is already in the
#:   window (the mirror may write a record twice when an acknowledgement is lost).
SKIP_REASONS: tuple[str, ...] = (
    SKIP_NOT_CLOUDEVENT,
    SKIP_UNSUPPORTED_TYPE,
    SKIP_NOT_JSON,
    SKIP_MISSING_FIELD,
    SKIP_INVALID_VALUE,
    SKIP_MISSING_FEATURES,
    SKIP_UNKNOWN_MODEL_VERSION,
    SKIP_DUPLICATE,
)


class UnusableRecordError(RecordError):
    """A record the monitor cannot use: its reason (:data:`SKIP_REASONS`), the field, why."""


@dataclass(frozen=True)
class ScoredEvent:
    """What one valid mirror record says, before it is matched to a drift reference.

    Attributes:
        event_id: the CloudEvents ``id`` (the same for every copy of one transaction's record).
        model_version: the version of the model that scored the transaction.
        time_micros: the transaction's time (the value's ``timestamp``; the CloudEvents ``time``
            when the value has none), microseconds since the epoch.
        features: the feature values by name, as the record carries them.
        fraud_probability: the model's score.
        transaction_id: the transaction's id, when the record names it.
    """

    event_id: str
    model_version: str
    time_micros: int
    features: Mapping[str, Any]
    fraud_probability: float
    transaction_id: str | None = None


#: The types a number has in parsed JSON (``bool`` is an ``int`` subclass, and not a number here).
_NUMBER_TYPES = frozenset((int, float))


def _is_number(value: Any) -> bool:
    return type(value) in _NUMBER_TYPES


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:37]}..."


def header_dict(headers: Iterable[tuple[str, bytes]] | None) -> dict[str, bytes]:
    """Kafka record headers (kafka-python's ``(key, bytes)`` pairs) as the SDK's mapping.

    A header repeated keeps its last value, as the SDK reads a mapping.
    """
    return {key: value for key, value in headers or () if value is not None}


def parse_event(headers: Iterable[tuple[str, bytes]] | None, value: bytes | None) -> ScoredEvent:
    """The scored transaction in one mirror record; :class:`UnusableRecordError` when it has none.

    Args:
        headers: the record's headers, as kafka-python gives them.
        value: the record's value.
    """
    attributes = header_dict(headers)
    absent = [name for name in REQUIRED_HEADERS if name not in attributes]
    if absent:  # the SDK would invent an id (and a time): a record must carry its own
        raise UnusableRecordError(SKIP_NOT_CLOUDEVENT, "headers", f"missing {', '.join(absent)}")
    try:
        event = from_binary(
            KafkaMessage(attributes, None, value or b""), data_unmarshaller=_identity
        )
    except (ce_errors.GenericException, UnicodeDecodeError) as exc:
        raise UnusableRecordError(SKIP_NOT_CLOUDEVENT, "headers", str(exc)) from None
    if event["type"] != CE_TYPE:
        raise UnusableRecordError(
            SKIP_UNSUPPORTED_TYPE, "ce_type", f"expected {CE_TYPE!r}, got {_short(event['type'])}"
        )
    try:
        body = orjson.loads(event.get_data() or b"")
    except orjson.JSONDecodeError as exc:
        raise UnusableRecordError(SKIP_NOT_JSON, "value", f"not JSON ({exc})") from None
    if not isinstance(body, dict):
        raise UnusableRecordError(
            SKIP_NOT_JSON, "value", f"must be a JSON object, got {type(body).__name__}"
        )
    version = body.get(MODEL_VERSION_FIELD)
    if not isinstance(version, str) or not version:
        raise UnusableRecordError(SKIP_MISSING_FIELD, MODEL_VERSION_FIELD, _missing(version))
    features = body.get(FEATURES_FIELD)
    if not isinstance(features, dict):
        raise UnusableRecordError(
            SKIP_MISSING_FIELD, FEATURES_FIELD, _missing(features, "an object")
        )
    score = body.get(SCORE_FIELD)
    if not _is_number(score):
        if SCORE_FIELD not in body:
            raise UnusableRecordError(SKIP_MISSING_FIELD, SCORE_FIELD, "missing")
        raise UnusableRecordError(
            SKIP_INVALID_VALUE, SCORE_FIELD, f"must be a number, got {_short(score)}"
        )
    if not 0.0 <= score <= 1.0:
        raise UnusableRecordError(
            SKIP_INVALID_VALUE, SCORE_FIELD, f"must be in [0, 1], got {score!r}"
        )
    transaction_id = body.get(TRANSACTION_ID)
    return ScoredEvent(
        event_id=str(event["id"]),
        model_version=version,
        time_micros=_event_time(body, event.get("time") if CE_TIME in attributes else None),
        features=features,
        fraud_probability=float(score),
        transaction_id=transaction_id if isinstance(transaction_id, str) else None,
    )


def _identity(data: Any) -> Any:
    return data


def _missing(value: Any, kind: str = "a non-empty string") -> str:
    return "missing" if value is None else f"must be {kind}, got {_short(value)}"


def _event_time(body: Mapping[str, Any], ce_time: Any) -> int:
    """The transaction's time: the value's ``timestamp``, else the CloudEvents ``time``."""
    field, stamp = (TIMESTAMP, body.get(TIMESTAMP))
    if stamp is None:
        field, stamp = (CE_TIME, ce_time)
    if stamp is None:
        raise UnusableRecordError(SKIP_MISSING_FIELD, TIMESTAMP, "missing (and no ce_time header)")
    if not isinstance(stamp, str):
        raise UnusableRecordError(
            SKIP_INVALID_VALUE, field, f"must be a string, got {_short(stamp)}"
        )
    try:
        return timestamp_to_micros(stamp)
    except (ValueError, OverflowError):
        raise UnusableRecordError(
            SKIP_INVALID_VALUE, field, f"not an ISO-8601 timestamp: {_short(stamp)}"
        ) from None


def feature_vector(features: Mapping[str, Any], names: Sequence[str]) -> np.ndarray:
    """The values of ``names`` from a record's features, in that order (float64).

    Raises:
        UnusableRecordError: ``missing_features`` naming the absent features, or ``invalid_value``
            naming the first value that is not a finite number.
    """
    try:
        raw = [features[name] for name in names]
    except KeyError:
        missing = [name for name in names if name not in features]
        shown = ", ".join(missing[:3])
        if len(missing) > 3:
            shown += f" (and {len(missing) - 3} more)"
        raise UnusableRecordError(
            SKIP_MISSING_FEATURES, FEATURES_FIELD, f"missing {shown}"
        ) from None
    if not {type(value) for value in raw} <= _NUMBER_TYPES or not math.isfinite(sum(raw)):
        # something is not a finite number, or finite numbers summed past the float range
        for name, value in zip(names, raw, strict=True):
            if not _is_number(value) or not math.isfinite(value):
                raise UnusableRecordError(
                    SKIP_INVALID_VALUE,
                    f"{FEATURES_FIELD}.{name}",
                    f"must be a finite number, got {_short(value)}",
                )
    return np.array(raw, dtype=np.float64)
