"""Reading mirror records (as the transformer's mirror writes them) and the drift references
of the bundles in a registry; every bad record is counted under its reason and skipped."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from cloudevents.kafka import KafkaMessage, from_binary

from fraud_detection.bundle import DRIFT_REFERENCE, BundleIntegrityError, Manifest, write_manifest
from fraud_detection.features import FEATURE_NAMES, timestamp_to_micros
from fraud_detection.monitoring.records import (
    SKIP_DUPLICATE,
    SKIP_INVALID_VALUE,
    SKIP_MISSING_FEATURES,
    SKIP_MISSING_FIELD,
    SKIP_NOT_CLOUDEVENT,
    SKIP_NOT_JSON,
    SKIP_UNKNOWN_MODEL_VERSION,
    SKIP_UNSUPPORTED_TYPE,
    UnusableRecordError,
    feature_vector,
    parse_event,
)
from fraud_detection.monitoring.reference import (
    DriftReferenceError,
    ReferenceCache,
    RegistryLocator,
    TemplateLocator,
    UnknownVersionError,
    load_reference,
)
from fraud_detection.monitoring.stream import PartitionMonitor
from fraud_detection.monitoring.windows import CLOSED_BY_SIZE, WindowConfig
from fraud_detection.registry import ModelRegistry
from fraud_detection.serving.mirror import (
    CE_TYPE,
    MirrorConfig,
    MirrorEntry,
    event_id,
    record_headers,
    record_value,
)
from fraud_detection.training.export import save_drift_reference

MIRROR = MirrorConfig(bootstrap="127.0.0.1:1", topic="fraud-detector-requests")
START = timestamp_to_micros("2026-03-02T12:00:00Z")
WIDTH = len(FEATURE_NAMES)
Headers = list[tuple[str, bytes]]


def write_bundle(
    directory: Path, version: str, features: np.ndarray, scores: np.ndarray | None = None
) -> Path:
    """A bundle holding a drift reference and its manifest (no model: the monitor needs none).

    Without scores, the reference is written by the export step's own writer; with scores, in
    the same format plus the ``fraud_probability`` array the monitor reads.
    """
    directory.mkdir(parents=True)
    if scores is None:
        save_drift_reference(directory / DRIFT_REFERENCE, features)
    else:
        np.savez_compressed(
            directory / DRIFT_REFERENCE,
            features=features,
            feature_names=np.array(FEATURE_NAMES),
            fraud_probability=scores,
        )
    write_manifest(
        directory,
        Manifest(model_version=version, feature_names=list(FEATURE_NAMES), threshold=0.1),
    )
    return directory


def mirror_record(
    index: int, version: str = "v1", values: list[float] | None = None, seconds: float = 0.0
) -> tuple[Headers, bytes]:
    """The headers and value the transformer's mirror writes for one scored transaction."""
    entry = MirrorEntry(
        transaction_id=f"tx-{index}",
        card_id=f"card-{index % 7}",
        timestamp_micros=START + int(seconds * 1e6),
        features=values if values is not None else [float(index)] * len(FEATURE_NAMES),
        fraud_probability=0.02,
        is_fraud=False,
        threshold=0.1,
        model_version=version,
    )
    return record_headers(MIRROR, event_id(entry.transaction_id)), record_value(entry)


def edited(value: bytes, **changes: Any) -> bytes:
    """A mirror value with fields replaced (``None`` removes the field)."""
    body = orjson.loads(value)
    for name, new in changes.items():
        if new is None:
            body.pop(name, None)
        else:
            body[name] = new
    return orjson.dumps(body)


def without_header(headers: Headers, name: str) -> Headers:
    return [(key, value) for key, value in headers if key != name]


def with_header(headers: Headers, name: str, value: bytes) -> Headers:
    return [*without_header(headers, name), (name, value)]


@pytest.fixture
def registry(tmp_path: Path) -> Path:
    """A registry with versions v1 (features only) and v2 (features and scores)."""
    rng = np.random.default_rng(0)
    versions = ModelRegistry(tmp_path / "registry").versions_dir
    write_bundle(versions / "v1", "v1", rng.normal(size=(300, len(FEATURE_NAMES))))
    write_bundle(versions / "v2", "v2", rng.normal(size=(200, len(FEATURE_NAMES))), rng.random(200))
    return tmp_path / "registry"


# ------------------------------------------------------------------------ the record format
def test_the_sdk_reads_every_attribute_the_mirror_writes() -> None:
    headers, value = mirror_record(3)
    event = from_binary(KafkaMessage(dict(headers), b"card-3", value))
    attributes = event.get_attributes()
    assert attributes["specversion"] == "1.0"
    assert attributes["id"] == event_id("tx-3")
    assert attributes["type"] == CE_TYPE
    assert attributes["source"] == MIRROR.source
    assert attributes["inferenceservicename"] == MIRROR.inference_service
    assert attributes["datacontenttype"] == "application/json"
    assert timestamp_to_micros(attributes["time"]) > 0


def test_a_mirror_record_is_read_whole() -> None:
    values = [float(i) / 10 for i in range(len(FEATURE_NAMES))]
    headers, value = mirror_record(5, "v9", values, seconds=90.5)
    event = parse_event(headers, value)
    assert event.event_id == event_id("tx-5")
    assert event.model_version == "v9"
    assert event.time_micros == START + 90_500_000, "the transaction's time, not the send time"
    assert event.fraud_probability == 0.02
    assert event.transaction_id == "tx-5"
    assert feature_vector(event.features, FEATURE_NAMES).tolist() == values
    assert feature_vector(event.features, FEATURE_NAMES[::-1]).tolist() == values[::-1]


def test_without_a_timestamp_the_cloudevents_time_is_the_records_time() -> None:
    headers, value = mirror_record(1)
    headers = with_header(headers, "ce_time", b"2026-03-04T05:06:07.250Z")
    event = parse_event(headers, edited(value, timestamp=None))
    assert event.time_micros == timestamp_to_micros("2026-03-04T05:06:07.250Z")


BAD_RECORDS = [
    ("not_json", lambda h, v: (h, b"{not json"), SKIP_NOT_JSON, "value: not JSON"),
    ("json_list", lambda h, v: (h, b"[1, 2]"), SKIP_NOT_JSON, "value: must be a JSON object"),
    ("empty", lambda h, v: (h, None), SKIP_NOT_JSON, "value: not JSON"),
    (
        "no_ce_id",
        lambda h, v: (without_header(h, "ce_id"), v),
        SKIP_NOT_CLOUDEVENT,
        "headers: missing ce_id",
    ),
    (
        "no_headers",
        lambda h, v: (None, v),
        SKIP_NOT_CLOUDEVENT,
        "headers: missing ce_specversion, ce_id, ce_source, ce_type",
    ),
    (
        "old_specversion",
        lambda h, v: (with_header(h, "ce_specversion", b"0.2"), v),
        SKIP_NOT_CLOUDEVENT,
        "headers: Invalid specversion: 0.2",
    ),
    (
        "not_utf8",
        lambda h, v: (with_header(h, "ce_source", b"\xff\xfe"), v),
        SKIP_NOT_CLOUDEVENT,
        "headers: 'utf-8' codec can't decode",
    ),
    (
        "response_event",
        lambda h, v: (with_header(h, "ce_type", b"org.kubeflow.serving.inference.response"), v),
        SKIP_UNSUPPORTED_TYPE,
        "ce_type: expected 'org.kubeflow.serving.inference.request', got 'org.kubeflow",
    ),
    (
        "no_version",
        lambda h, v: (h, edited(v, model_version=None)),
        SKIP_MISSING_FIELD,
        "model_version: missing",
    ),
    (
        "numeric_version",
        lambda h, v: (h, edited(v, model_version=7)),
        SKIP_MISSING_FIELD,
        "model_version: must be a non-empty string, got 7",
    ),
    (
        "features_list",
        lambda h, v: (h, edited(v, features=[1.0, 2.0])),
        SKIP_MISSING_FIELD,
        "features: must be an object, got [1.0, 2.0]",
    ),
    (
        "no_score",
        lambda h, v: (h, edited(v, fraud_probability=None)),
        SKIP_MISSING_FIELD,
        "fraud_probability: missing",
    ),
    (
        "text_score",
        lambda h, v: (h, edited(v, fraud_probability="0.5")),
        SKIP_INVALID_VALUE,
        "fraud_probability: must be a number, got '0.5'",
    ),
    (
        "score_above_one",
        lambda h, v: (h, edited(v, fraud_probability=1.5)),
        SKIP_INVALID_VALUE,
        "fraud_probability: must be in [0, 1], got 1.5",
    ),
    (
        "bad_timestamp",
        lambda h, v: (h, edited(v, timestamp="yesterday")),
        SKIP_INVALID_VALUE,
        "timestamp: not an ISO-8601 timestamp: 'yesterday'",
    ),
    (
        "no_time_at_all",
        lambda h, v: (without_header(h, "ce_time"), edited(v, timestamp=None)),
        SKIP_MISSING_FIELD,
        "timestamp: missing (and no ce_time header)",
    ),
]


@pytest.mark.parametrize(
    ("make", "reason", "message"),
    [case[1:] for case in BAD_RECORDS],
    ids=[case[0] for case in BAD_RECORDS],
)
def test_a_bad_record_names_its_reason_and_field(make: Any, reason: str, message: str) -> None:
    headers, value = make(*mirror_record(1))
    with pytest.raises(UnusableRecordError) as error:
        parse_event(headers, value)
    assert error.value.reason == reason
    assert str(error.value).startswith(message), str(error.value)


def test_features_missing_or_not_finite_are_named() -> None:
    features = dict.fromkeys(FEATURE_NAMES, 1.0)
    for name in ("log_amount", "hour", "card_count_1d", "merchant_risk_7d"):
        del features[name]
    with pytest.raises(UnusableRecordError) as error:
        feature_vector(features, FEATURE_NAMES)
    assert error.value.reason == SKIP_MISSING_FEATURES
    assert str(error.value) == "features: missing log_amount, card_count_1d, hour (and 1 more)"

    for bad in (float("nan"), float("inf"), True, "3", None):
        features = {**dict.fromkeys(FEATURE_NAMES, 1.0), "amt_deviation": bad}
        with pytest.raises(UnusableRecordError) as error:
            feature_vector(features, FEATURE_NAMES)
        assert error.value.reason == SKIP_INVALID_VALUE
        assert str(error.value).startswith("features.amt_deviation: must be a finite number")


# ------------------------------------------------------------------------ a partition's stream
def test_bad_records_are_counted_by_reason_and_never_stall_the_partition(
    registry: Path, caplog: pytest.LogCaptureFixture
) -> None:
    skipped: list[str] = []
    monitor = PartitionMonitor(
        "mirror",
        0,
        ReferenceCache(RegistryLocator(registry)),
        WindowConfig(size=10, max_span_s=3600),
        on_skip=skipped.append,
    )
    good = iter(range(1_000))
    stream: list[tuple[Headers | None, bytes | None]] = []
    for round_ in range(3):
        stream += [mirror_record(next(good), seconds=round_) for _ in range(4)]
        stream.append((mirror_record(900)[0], b"garbage"))
        stream.append(mirror_record(next(good), version="v-unknown"))
        headers, value = mirror_record(next(good))
        short = dict.fromkeys(FEATURE_NAMES[:-1], 1.0)  # one feature short
        stream.append((headers, edited(value, features=short)))
        stream.append(stream[-4])  # the same transaction again
    stream += [mirror_record(next(good), seconds=5) for _ in range(10)]

    closed = []
    with caplog.at_level(logging.DEBUG, logger="fraud_detection.monitoring.stream"):
        for offset, (headers, value) in enumerate(stream):
            closed += monitor.process(offset, headers, value)

    assert [(w.first_offset, w.last_offset, w.closed_by) for w in closed] == [
        (0, 17, CLOSED_BY_SIZE),  # 10 valid records, with 8 bad ones among them
        (18, 31, CLOSED_BY_SIZE),
    ]
    assert closed[0].skipped == {
        SKIP_DUPLICATE: 2,
        SKIP_MISSING_FEATURES: 2,
        SKIP_NOT_JSON: 2,
        SKIP_UNKNOWN_MODEL_VERSION: 2,
    }
    assert dict(monitor.skipped) == {
        SKIP_NOT_JSON: 3,
        SKIP_UNKNOWN_MODEL_VERSION: 3,
        SKIP_MISSING_FEATURES: 3,
        SKIP_DUPLICATE: 3,
    }
    assert sorted(skipped) == sorted(monitor.skipped.elements())
    assert monitor.commit_offset == 32  # the open window's first record
    assert monitor.next_offset == len(stream)
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and r.name == "fraud_detection.monitoring.stream"
    ]
    assert len(warnings) == 4, "only the first record of each reason is logged as a warning"
    assert any(
        "offset 5 (unknown_model_version): model_version: model version 'v-unknown'" in m
        for m in warnings
    )
    assert any(
        "offset 6 (missing_features): features: missing merchant_risk_30d" in m for m in warnings
    )


def test_versions_switch_to_their_own_reference(registry: Path) -> None:
    monitor = PartitionMonitor(
        "mirror", 0, ReferenceCache(RegistryLocator(registry)), WindowConfig(size=6)
    )
    closed = []
    for offset, version in enumerate(["v1", "v1", "v2", "v1", "v2", "v2"]):
        closed += monitor.process(offset, *mirror_record(offset, version))
    (window,) = closed
    assert [(part.model_version, part.size, part.reference.rows) for part in window.slices] == [
        ("v1", 3, 300),
        ("v2", 3, 200),
    ]
    assert window.slices[0].reference.scores is None
    assert window.slices[1].reference.scores is not None


# ------------------------------------------------------------------------ drift references
def test_a_reference_is_read_from_the_bundle_the_export_writes(registry: Path) -> None:
    reference = load_reference(registry / "versions" / "v1", "v1")
    assert reference.model_version == "v1"
    assert reference.feature_names == FEATURE_NAMES
    assert reference.features.shape == (300, len(FEATURE_NAMES))
    assert reference.scores is None
    with_scores = load_reference(registry / "versions" / "v2")
    assert with_scores.scores is not None and with_scores.scores.shape == (200,)
    with pytest.raises(ValueError, match="read-only"):
        reference.features[0, 0] = 1.0


def test_a_changed_or_unlisted_reference_is_refused(tmp_path: Path) -> None:
    features = np.zeros((5, len(FEATURE_NAMES)))
    changed = write_bundle(tmp_path / "changed", "c", features)
    save_drift_reference(changed / DRIFT_REFERENCE, features + 1)
    with pytest.raises(
        BundleIntegrityError, match=r"drift_reference.npz: does not match its sha256"
    ):
        load_reference(changed)

    unlisted = write_bundle(tmp_path / "unlisted", "u", features)
    (unlisted / DRIFT_REFERENCE).rename(unlisted / "elsewhere.npz")
    write_manifest(unlisted, Manifest("u", list(FEATURE_NAMES), 0.1))
    with pytest.raises(DriftReferenceError, match=r"the manifest lists no drift_reference\.npz"):
        load_reference(unlisted)

    with pytest.raises(DriftReferenceError, match="model_version is 'u', expected 'v'"):
        load_reference(unlisted, "v")


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"features": np.zeros((0, WIDTH))}, "features: must be a non-empty 2-D array"),
        ({"features": np.full((3, WIDTH), np.nan)}, "features: must hold finite numbers only"),
        ({"feature_names": np.array(FEATURE_NAMES[:-1])}, "feature_names: 17 names"),
        ({"feature_names": np.array(FEATURE_NAMES[::-1])}, "differ from the manifest"),
        ({"fraud_probability": np.zeros(2)}, "fraud_probability: must hold one score per row"),
        ({"fraud_probability": np.full(3, 2.0)}, r"fraud_probability: must be numbers in \[0, 1\]"),
    ],
)
def test_a_malformed_reference_names_the_array(
    tmp_path: Path, arrays: dict[str, np.ndarray], message: str
) -> None:
    content = {"features": np.zeros((3, WIDTH)), "feature_names": np.array(FEATURE_NAMES), **arrays}
    tmp_path.joinpath("b").mkdir()
    np.savez_compressed(tmp_path / "b" / DRIFT_REFERENCE, **content)
    write_manifest(tmp_path / "b", Manifest("b", list(FEATURE_NAMES), 0.1))
    with pytest.raises(DriftReferenceError, match=message):
        load_reference(tmp_path / "b")


def test_the_cache_loads_each_version_once_and_retries_an_unknown_one(registry: Path) -> None:
    now = [0.0]
    cache = ReferenceCache(RegistryLocator(registry), capacity=1, retry_s=30, clock=lambda: now[0])
    first = cache.get("v1")
    (registry / "versions" / "v1" / DRIFT_REFERENCE).unlink()
    assert cache.get("v1") is first, "a loaded reference is not read again"

    with pytest.raises(UnknownVersionError, match="'v3': no bundle found"):
        cache.get("v3")
    rng = np.random.default_rng(1)
    write_bundle(registry / "versions" / "v3", "v3", rng.normal(size=(10, len(FEATURE_NAMES))))
    with pytest.raises(UnknownVersionError):
        cache.get("v3")  # not looked up again within the retry interval
    now[0] = 31.0
    assert cache.get("v3").rows == 10  # promoted meanwhile: found after the interval

    with pytest.raises(UnknownVersionError, match="'v1'"):
        cache.get("v1")  # evicted (capacity 1) and its file is gone


def test_locators_accept_only_plain_version_names(registry: Path, tmp_path: Path) -> None:
    locator = RegistryLocator(registry)
    assert locator.locate("v1") == registry / "versions" / "v1"
    for name in ("../v1", "v1/../v1", "", ".hidden", "a" * 200, "nope"):
        assert locator.locate(name) is None, name
    assert TemplateLocator(str(registry / "versions" / "{version}")).locate("v2") is not None
    with pytest.raises(ValueError, match=r"template: must contain \{version\}"):
        TemplateLocator(str(tmp_path))
