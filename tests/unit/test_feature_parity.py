"""Train/serve parity: replaying transactions through the online state gives the offline frame."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fraud_detection.data.generator import GeneratorConfig, generate_transactions
from fraud_detection.features import FEATURE_NAMES, OnlineFeatureState, compute_features

TOLERANCE = 1e-9


def assert_parity(frame: pd.DataFrame) -> None:
    """Online replay in time order equals the vectorised features, column by column."""
    offline = compute_features(frame).to_numpy()
    online = OnlineFeatureState().replay(frame)
    worst = np.abs(online - offline).max(axis=0)
    mismatched = {
        name: float(gap) for name, gap in zip(FEATURE_NAMES, worst, strict=True) if gap > TOLERANCE
    }
    assert not mismatched, f"online and offline features differ: {mismatched}"


def test_parity_on_generated_data() -> None:
    frame = generate_transactions(
        GeneratorConfig(n_transactions=40_000, n_cards=600, days=45, fraud_rate=0.01, seed=3)
    )
    features = compute_features(frame)
    # The data must exercise every feature, or parity would be checked on zeros.
    assert (features.std() > 0).all(), features.std()[features.std() == 0]
    assert_parity(frame)


@pytest.mark.handbook
def test_parity_on_a_slice_of_the_handbook_data(handbook_dir) -> None:
    from fraud_detection.data.validation import load_transactions

    frame = load_transactions(handbook_dir / "transactions-2018-04.csv.gz")
    frame = frame[frame["timestamp"] < pd.Timestamp("2018-04-22", tz="UTC")]
    assert frame["is_fraud"].sum() > 0
    assert_parity(frame)
