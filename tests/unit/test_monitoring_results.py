"""The window result: the ``fraud-monitoring`` contract field by field, its stable id, the
JSON-lines file that holds it, and the Prometheus metrics it updates."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest
from prometheus_client import generate_latest

from fraud_detection.features import FEATURE_NAMES, MICROS_PER_HOUR
from fraud_detection.monitoring.detector import CALENDAR_FEATURES, DetectorConfig
from fraud_detection.monitoring.metrics import MonitorMetrics
from fraud_detection.monitoring.reference import DriftReference
from fraud_detection.monitoring.results import (
    RESULT_FIELDS,
    WindowResult,
    evaluate_window,
    window_id,
)
from fraud_detection.monitoring.sinks import JsonLinesSink, results_topic
from fraud_detection.monitoring.windows import (
    ClosedWindow,
    Observation,
    PartitionWindows,
    WindowConfig,
)

NAMES = list(FEATURE_NAMES)
START = 1_772_452_800 * 1_000_000  # 2026-03-02T12:00:00Z, a Monday


def rows(rng: np.random.Generator, n: int, hours: np.ndarray, shift: float = 0.0) -> np.ndarray:
    """Feature rows: standard normal, the calendar features from ``hours`` (weekdays)."""
    values = rng.normal(size=(n, len(NAMES)))
    values[:, NAMES.index("hour")] = hours
    values[:, NAMES.index("is_night")] = hours < 6
    values[:, NAMES.index("is_weekend")] = 0.0
    values[:, NAMES.index("log_amount")] += shift
    return values


def reference(version: str, rng: np.random.Generator, scores: bool) -> DriftReference:
    features = rows(rng, 3_000, rng.integers(0, 24, 3_000).astype(float))
    return DriftReference(
        version, FEATURE_NAMES, features, rng.beta(1, 20, 3_000) if scores else None, Path("m")
    )


def closed_window(
    versions: list[str], shift: float = 0.0, skipped_at: tuple[int, ...] = ()
) -> ClosedWindow:
    """One window of ``len(versions)`` records, 3.6 s apart from START, on partition 2."""
    rng = np.random.default_rng(0)
    references = {
        "v1": reference("v1", rng, scores=False),
        "v2": reference("v2", rng, scores=True),
    }
    windows = PartitionWindows("mirror", 2, WindowConfig(size=len(versions), max_span_s=86_400))
    n = len(versions)
    times = START + np.arange(n) * MICROS_PER_HOUR // 1_000
    values = rows(rng, n, ((times // MICROS_PER_HOUR) % 24).astype(float), shift)
    scores = rng.beta(1, 20, n)
    closed: list[ClosedWindow] = []
    offset = 100
    for index, version in enumerate(versions):
        while offset in skipped_at:
            windows.skip(offset, "not_json")
            offset += 1
        closed += windows.add(
            Observation(
                offset,
                f"e{index}",
                int(times[index]),
                references[version],
                values[index],
                float(scores[index]),
            )
        )
        offset += 1
    (window,) = closed
    return window


def test_one_result_per_version_with_every_field_of_the_contract() -> None:
    window = closed_window(["v1"] * 300 + ["v2"] * 200, skipped_at=(101, 150))
    results = evaluate_window(window, DetectorConfig())

    assert [r.model_version for r in results] == ["v1", "v2"]
    for result in results:
        record = orjson.loads(result.to_json())
        assert sorted(record) == sorted(RESULT_FIELDS)
        assert record["kind"] == "feature_drift" and record["schema_version"] == 1
        assert record["window_id"] == f"{result.model_version}:mirror:2:100-601"
        assert (record["topic"], record["partition"]) == ("mirror", 2)
        assert (record["first_offset"], record["last_offset"]) == (100, 601)
        assert record["closed_by"] == "size"
        assert record["window_records"] == 500
        assert record["skipped"] == {"not_json": 2}
        assert record["tested"] is True
        assert record["p_val"] == 0.05 and record["correction"] == "bonferroni"
        tested = [name for name in NAMES if name not in CALENDAR_FEATURES]
        assert sorted(record["features"]) == sorted(tested)
        for test in record["features"].values():
            assert sorted(test) == [
                "design_effect",
                "iid_p_value",
                "is_drift",
                "p_value",
                "statistic",
            ]
            assert 0 <= test["p_value"] <= 1 and 0 <= test["statistic"] <= 1
            assert test["is_drift"] == (test["p_value"] < record["threshold"])
        assert record["excluded"] == list(CALENDAR_FEATURES)
        assert record["is_drift"] == bool(record["drifted"])
        assert record["detector"] == "alibi-detect KSDrift"
        assert record["reference"]["total_rows"] == 3_000
        assert record["reference"]["matched_on"] == ["hour", "is_weekend"]
        assert 0 < record["reference"]["rows"] < 3_000

    first, second = (orjson.loads(r.to_json()) for r in results)
    assert first["size"] == 300 and second["size"] == 200
    assert first["start"] == "2026-03-02T12:00:00.000000Z"
    assert first["end"] == "2026-03-02T12:17:56.400000Z"  # record 299, 3.6 s apart
    assert first["span_seconds"] == pytest.approx(299 * 3.6)
    assert second["start"] == "2026-03-02T12:18:00.000000Z"
    # v1's reference has no scores, v2's has: one more column in v2's corrected family.
    assert first["score"] is None and not first["score_monitored"]
    assert first["threshold"] == pytest.approx(0.05 / len(tested))
    assert sorted(second["score"]) == [
        "design_effect",
        "iid_p_value",
        "is_drift",
        "p_value",
        "statistic",
    ]
    assert second["score_monitored"]
    assert second["threshold"] == pytest.approx(0.05 / (len(tested) + 1))


def test_a_shifted_window_is_drift_and_names_the_feature() -> None:
    (result,) = evaluate_window(closed_window(["v1"] * 400, shift=0.5), DetectorConfig())
    assert result.is_drift and result.drifted == ("log_amount",)
    assert result.features["log_amount"]["is_drift"]


def test_a_window_below_the_minimum_is_reported_untested() -> None:
    window = closed_window(["v1"] * 150 + ["v2"] * 50)
    v1, v2 = evaluate_window(window, DetectorConfig(min_records=100))
    assert v1.tested and not v2.tested
    record = orjson.loads(v2.to_json())
    assert record["is_drift"] is False and record["threshold"] is None
    assert record["features"] == {} and record["drifted"] == [] and record["score"] is None
    assert record["reference"] == {
        "rows": 0,
        "total_rows": 3_000,
        "matched_on": [],
        "calibration": None,
    }
    assert record["size"] == 50 and record["window_records"] == 200


def test_the_same_window_gives_the_same_bytes_and_id() -> None:
    """A window re-formed after a restart is written again identically: same id, same bytes."""
    config = DetectorConfig(seed=3)
    first = [r.to_json() for r in evaluate_window(closed_window(["v1"] * 300), config)]
    again = [r.to_json() for r in evaluate_window(closed_window(["v1"] * 300), config)]
    assert first == again
    assert window_id("v1", "mirror", 2, 100, 399) == orjson.loads(first[0])["window_id"]
    other_seed = evaluate_window(closed_window(["v1"] * 300), DetectorConfig(seed=4))
    assert other_seed[0].window_id == orjson.loads(first[0])["window_id"]


def test_the_json_lines_file_gets_one_result_per_line(tmp_path: Path) -> None:
    results = evaluate_window(closed_window(["v1"] * 150 + ["v2"] * 150), DetectorConfig())
    path = tmp_path / "monitoring" / "drift.jsonl"
    sink = JsonLinesSink(path)
    sink.write(results)
    sink.write(results[:1])
    sink.close()

    lines = path.read_bytes().splitlines()
    assert [orjson.loads(line)["window_id"] for line in lines] == [
        results[0].window_id,
        results[1].window_id,
        results[0].window_id,
    ]
    assert lines[0] == results[0].to_json()


def test_a_line_cut_short_by_a_crash_is_removed_when_the_file_is_opened(tmp_path: Path) -> None:
    (result,) = evaluate_window(closed_window(["v1"] * 150), DetectorConfig())
    path = tmp_path / "drift.jsonl"
    whole = result.to_json() + b"\n"
    path.write_bytes(whole + whole[:57])  # the second write was interrupted

    sink = JsonLinesSink(path)
    assert path.read_bytes() == whole
    sink.write([result])
    sink.close()
    assert path.read_bytes() == whole * 2

    cut = tmp_path / "only-a-fragment.jsonl"
    cut.write_bytes(whole[:10])
    JsonLinesSink(cut).close()
    assert cut.read_bytes() == b""


def test_the_metrics_show_the_last_windows_p_values_and_count_drift() -> None:
    metrics = MonitorMetrics()
    drifted = evaluate_window(closed_window(["v2"] * 400, shift=0.5), DetectorConfig())
    calm = evaluate_window(closed_window(["v2"] * 400), DetectorConfig())
    for result in [*drifted, *calm]:
        metrics.observe(result)
    metrics.skipped.labels(reason="not_json").inc(3)
    text = generate_latest(metrics.registry).decode()

    assert 'fraud_monitor_windows_total{model_version="v2"} 2.0' in text
    assert 'fraud_monitor_drift_windows_total{model_version="v2"} 1.0' in text
    assert 'fraud_monitor_records_skipped_total{reason="not_json"} 3.0' in text
    assert 'fraud_monitor_records_skipped_total{reason="duplicate"} 0.0' in text
    last: WindowResult = calm[0]
    p_value = last.features["log_amount"]["p_value"]
    assert (
        f'fraud_monitor_feature_p_value{{feature="log_amount",model_version="v2"}} {p_value!r}'
        in text
    )
    assert last.score is not None
    assert f'feature="fraud_probability",model_version="v2"}} {last.score["p_value"]!r}' in text
    assert "fraud_monitor_threshold" in text and "fraud_monitor_last_window_end_seconds" in text


def test_the_results_topic_is_configurable() -> None:
    assert results_topic({}) == "fraud-monitoring"
    assert results_topic({"FRAUD_KAFKA_TOPIC_MONITORING": "drift"}) == "drift"
