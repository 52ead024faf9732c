"""Bundle contents: the ONNX check, the feature-state snapshot, reference, fingerprint, version."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from fraud_detection.data.generator import GeneratorConfig, generate_transactions
from fraud_detection.features import FEATURE_NAMES, OnlineFeatureState, timestamps_to_micros
from fraud_detection.schema import AMOUNT, CARD_ID, MERCHANT_ID, TIMESTAMP
from fraud_detection.training.export import (
    OnnxParityError,
    check_onnx_parity,
    convert_to_onnx,
    data_fingerprint,
    drift_reference,
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


def test_the_drift_reference_is_a_seeded_sample(tmp_path) -> None:
    features = np.arange(300, dtype=np.float64).reshape(100, 3)
    sample = drift_reference(features, 10, seed=3)
    assert sample.shape == (10, 3)
    assert np.array_equal(sample, drift_reference(features, 10, seed=3))
    assert np.all(np.diff(sample[:, 0]) > 0)  # rows keep their order
    assert drift_reference(features, 1000, seed=3).shape == (100, 3)
    path = save_drift_reference(tmp_path / "ref.npz", sample)
    with np.load(path) as saved:
        assert list(saved["feature_names"]) == list(FEATURE_NAMES)
        np.testing.assert_array_equal(saved["features"], sample)


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
