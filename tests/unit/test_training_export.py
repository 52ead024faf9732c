"""Bundle contents: the ONNX check, the feature-state snapshot, the drift reference draw,
fingerprint, version, and the manifest's fields (round trip, older manifests)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from fraud_detection.bundle import MANIFEST, Manifest, read_manifest, write_manifest
from fraud_detection.data.generator import GeneratorConfig, generate_transactions
from fraud_detection.features import (
    FEATURE_NAMES,
    MICROS_PER_DAY,
    OnlineFeatureState,
    timestamps_to_micros,
)
from fraud_detection.schema import AMOUNT, CARD_ID, MERCHANT_ID, TIMESTAMP
from fraud_detection.training.export import (
    WARM_UP_DAYS,
    OnnxParityError,
    check_onnx_parity,
    convert_to_onnx,
    data_fingerprint,
    draw_drift_reference,
    feature_state_snapshot,
    library_versions,
    model_version,
    onnx_fraud_probabilities,
    save_drift_reference,
)
from fraud_detection.training.train import TrainParams, fit_forest


@pytest.fixture(scope="module")
def forest_and_data() -> tuple[object, np.ndarray]:
    rng = np.random.default_rng(1)
    labels = (rng.random(4000) < 0.05).astype(np.int64)
    features = np.abs(rng.normal(size=(4000, len(FEATURE_NAMES)))) * 50
    features[:, 1] += 2.0 * labels
    model, _ = fit_forest(features, labels, TrainParams(n_estimators=10, max_depth=10, seed=1))
    return model, features


def test_the_onnx_model_matches_scikit_learn(forest_and_data: tuple[object, np.ndarray]) -> None:
    model, features = forest_and_data
    onnx_bytes = convert_to_onnx(model)
    expected = model.predict_proba(features)[:, 1]
    assert check_onnx_parity(onnx_bytes, expected, features) <= 1e-5
    np.testing.assert_allclose(onnx_fraud_probabilities(onnx_bytes, features), expected, atol=1e-5)


def test_an_onnx_model_that_disagrees_fails_the_check(
    forest_and_data: tuple[object, np.ndarray],
) -> None:
    model, features = forest_and_data
    onnx_bytes = convert_to_onnx(model)
    expected = model.predict_proba(features)[:, 1].copy()
    expected[17] += 2e-5
    with pytest.raises(OnnxParityError, match=r"row 17.*above 1e-05"):
        check_onnx_parity(onnx_bytes, expected, features)


def test_the_snapshot_from_recent_days_scores_like_the_full_replay() -> None:
    frame = generate_transactions(
        GeneratorConfig(n_transactions=20_000, n_cards=200, days=90, fraud_rate=0.02, seed=5)
    )
    cut = int(len(frame) * 0.9)
    history, future = frame.iloc[:cut], frame.iloc[cut:]
    snapshot = feature_state_snapshot(history)
    full = OnlineFeatureState.from_frame(history)
    stamps = timestamps_to_micros(future[TIMESTAMP]).tolist()
    rows = zip(future[CARD_ID], future[MERCHANT_ID], future[AMOUNT], stamps, strict=True)
    for card, merchant, amount, stamp in rows:
        got = snapshot.process(card, merchant, float(amount), stamp)
        want = full.process(card, merchant, float(amount), stamp)
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)


# ----------------------------------------------------------------------------- drift reference
START = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z, in microseconds


@pytest.fixture(scope="module")
def days_of_rows(forest_and_data: tuple[object, np.ndarray]) -> dict[str, np.ndarray]:
    """80 days of 50 rows each (shuffled, not in time order) and a 25 % held-out mask."""
    _, features = forest_and_data
    rng = np.random.default_rng(4)
    times = START + np.sort(rng.integers(0, 80 * MICROS_PER_DAY, len(features)))
    order = rng.permutation(len(features))
    return {
        "features": features[order],
        "times": times[order],
        "held_out": rng.random(len(features)) < 0.25,
    }


def forest_score(model: Any) -> Callable[[np.ndarray], np.ndarray]:
    """The model's fraud probabilities."""
    return lambda rows: model.predict_proba(rows)[:, 1]


def test_the_reference_holds_only_held_out_rows_past_the_warm_up_in_time_order(
    forest_and_data: tuple[object, np.ndarray], days_of_rows: dict[str, np.ndarray]
) -> None:
    model, _ = forest_and_data
    features, times = days_of_rows["features"], days_of_rows["times"]
    held_out = days_of_rows["held_out"]
    draw = draw_drift_reference(features, times, held_out, forest_score(model), 300, seed=7)
    assert draw.rows == 300 and draw.requested == 300
    assert held_out[draw.positions].all()
    cutoff = START + WARM_UP_DAYS * MICROS_PER_DAY
    assert (times[draw.positions] >= cutoff).all()
    eligible = held_out & (times >= cutoff)
    assert draw.eligible == eligible.sum() > 300
    assert np.all(np.diff(times[draw.positions]) >= 0)  # time order
    np.testing.assert_array_equal(draw.features, features[draw.positions])
    # The scores are the model's probabilities of those (held-out) rows, rounded as served.
    want = np.round(model.predict_proba(features[draw.positions])[:, 1], 6)
    np.testing.assert_array_equal(draw.scores, want)
    assert draw.warm_up_days == WARM_UP_DAYS == 37
    assert draw.first.startswith("2026-02-07") and draw.last.startswith("2026-03-21")
    assert draw.days == 80 - WARM_UP_DAYS and draw.warnings == ()
    described = draw.describe()
    assert (described["rows"], described["days"], described["warm_up_days_skipped"]) == (
        300,
        43,
        37,
    )


def test_the_draw_is_seeded(
    forest_and_data: tuple[object, np.ndarray], days_of_rows: dict[str, np.ndarray]
) -> None:
    model, _ = forest_and_data
    args = (days_of_rows["features"], days_of_rows["times"], days_of_rows["held_out"])
    one = draw_drift_reference(*args, forest_score(model), 200, seed=1)
    again = draw_drift_reference(*args, forest_score(model), 200, seed=1)
    other = draw_drift_reference(*args, forest_score(model), 200, seed=2)
    np.testing.assert_array_equal(one.positions, again.positions)
    assert set(one.positions) != set(other.positions)
    everything = draw_drift_reference(*args, forest_score(model), 0, seed=1)
    assert everything.rows == everything.eligible  # 0: every eligible row


def test_the_warm_up_counts_from_the_start_of_the_whole_data(
    forest_and_data: tuple[object, np.ndarray], days_of_rows: dict[str, np.ndarray]
) -> None:
    model, _ = forest_and_data
    times = days_of_rows["times"]
    draw = draw_drift_reference(
        days_of_rows["features"],
        times,
        days_of_rows["held_out"],
        forest_score(model),
        0,
        seed=1,
        data_start=START - 20 * MICROS_PER_DAY,  # the features saw 20 earlier days
    )
    assert times[draw.positions].min() >= START + (WARM_UP_DAYS - 20) * MICROS_PER_DAY
    assert draw.days == 80 - (WARM_UP_DAYS - 20)


def test_a_short_reference_is_still_drawn_with_warnings(
    forest_and_data: tuple[object, np.ndarray], days_of_rows: dict[str, np.ndarray]
) -> None:
    model, _ = forest_and_data
    times = days_of_rows["times"]
    short = times < START + 50 * MICROS_PER_DAY  # 13 days past the warm-up
    draw = draw_drift_reference(
        days_of_rows["features"][short],
        times[short],
        days_of_rows["held_out"][short],
        forest_score(model),
        5_000,
        seed=3,
    )
    assert 0 < draw.rows < 5_000 and draw.days == 13
    assert any("fewer than the 5,000 requested" in warning for warning in draw.warnings)
    assert any("spans 13 days, fewer than 21" in warning for warning in draw.warnings)


def test_without_rows_past_the_warm_up_every_held_out_row_is_used(
    forest_and_data: tuple[object, np.ndarray], days_of_rows: dict[str, np.ndarray]
) -> None:
    model, _ = forest_and_data
    times = days_of_rows["times"]
    early = times < START + 30 * MICROS_PER_DAY
    held_out = days_of_rows["held_out"][early]
    draw = draw_drift_reference(
        days_of_rows["features"][early], times[early], held_out, forest_score(model), 0, seed=3
    )
    assert draw.rows == held_out.sum() and draw.warm_up_days == 0 and draw.eligible == 0
    assert "no held-out row after the first 37 days" in draw.warnings[0]
    with pytest.raises(ValueError, match="held_out: no held-out row"):
        draw_drift_reference(
            days_of_rows["features"], times, np.zeros(len(times), bool), forest_score(model), 5, 1
        )


def test_the_reference_is_saved_with_its_scores(tmp_path: Path) -> None:
    features = np.arange(30, dtype=np.float64).reshape(10, 3)
    scores = np.linspace(0, 1, 10)
    path = save_drift_reference(tmp_path / "ref.npz", features, scores)
    with np.load(path) as saved:
        assert list(saved["feature_names"]) == list(FEATURE_NAMES)
        np.testing.assert_array_equal(saved["features"], features)
        np.testing.assert_array_equal(saved["fraud_probability"], scores)
    with np.load(save_drift_reference(tmp_path / "bare.npz", features)) as saved:
        assert "fraud_probability" not in saved.files
    with pytest.raises(ValueError, match=r"scores: must hold one score per row \(10\)"):
        save_drift_reference(tmp_path / "bad.npz", features, scores[:3])


# ------------------------------------------------------------------------------------ manifest
def test_the_manifest_keeps_the_reason_and_the_data_span(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"onnx")
    manifest = Manifest(
        "v1",
        list(FEATURE_NAMES),
        0.1,
        trigger_reason="drift: 3 of the last 5 windows",
        data_start="2026-01-01T00:00:00+00:00",
        data_end="2026-03-01T23:59:00+00:00",
    )
    write_manifest(tmp_path, manifest)
    back = read_manifest(tmp_path)
    assert back.trigger_reason == "drift: 3 of the last 5 windows"
    assert (back.data_start, back.data_end) == (manifest.data_start, manifest.data_end)
    assert back == manifest


def test_a_manifest_written_before_the_new_fields_still_loads(tmp_path: Path) -> None:
    old = {
        "model_version": "v0",
        "feature_names": list(FEATURE_NAMES),
        "threshold": 0.1,
        "files": {},
        "created_at": "2025-01-01T00:00:00+00:00",
        "libraries": {},
        "data_fingerprint": "sha256:x",
        "parameters": {},
        "metrics": {},
    }
    (tmp_path / MANIFEST).write_text(json.dumps(old))
    manifest = read_manifest(tmp_path)
    assert manifest.model_version == "v0"
    assert (manifest.trigger_reason, manifest.data_start, manifest.data_end) == ("", "", "")


def test_the_fingerprint_changes_with_any_value_and_only_then() -> None:
    frame = generate_transactions(GeneratorConfig(n_transactions=500, n_cards=20, seed=2))
    fingerprint = data_fingerprint(frame)
    assert fingerprint.startswith("sha256:") and fingerprint == data_fingerprint(frame.copy())
    changed = frame.copy()
    changed.loc[250, AMOUNT] += 0.01
    assert data_fingerprint(changed) != fingerprint
    assert data_fingerprint(frame.assign(extra=1)) == fingerprint  # only canonical fields


def test_versions_sort_by_time_and_differ_by_model() -> None:
    created = datetime(2026, 3, 1, 2, 0, 5, tzinfo=UTC)
    version = model_version(created, "a" * 64, "sha256:x")
    assert version.startswith("20260301T020005Z-") and len(version) == len("20260301T020005Z-") + 8
    assert model_version(created, "b" * 64, "sha256:x") != version
    versions = library_versions()
    assert {"python", "scikit-learn", "skl2onnx", "onnxruntime", "numpy"} <= set(versions)


def test_timestamps_of_the_snapshot_source_may_be_text() -> None:
    frame = pd.DataFrame(
        {
            "transaction_id": ["t1", "t2"],
            CARD_ID: ["c1", "c1"],
            MERCHANT_ID: ["m", "m"],
            AMOUNT: [10.0, 20.0],
            TIMESTAMP: ["2026-01-01T00:00:00Z", "2026-03-01T00:00:00Z"],
            "is_fraud": [0, 0],
        }
    )
    state = feature_state_snapshot(frame)
    assert state.last_timestamp_micros == timestamps_to_micros(frame[TIMESTAMP]).max()
