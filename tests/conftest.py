"""Shared fixtures: a few valid canonical transactions, and the external handbook data set."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from fraud_detection.schema import (
    AMOUNT,
    CARD_ID,
    CATEGORY,
    LABEL,
    MERCHANT_ID,
    TIMESTAMP,
    TRANSACTION_ID,
)
from support.bundles import SplitData, build_bundle, make_data

REPO = Path(__file__).resolve().parents[1]
DEFAULT_HANDBOOK_DIR = REPO.parent / "shared" / "data" / "handbook"


@pytest.fixture
def transactions() -> pd.DataFrame:
    """Five valid labelled transactions as a reader returns them (ids and timestamps as text).

    Timestamps mix the accepted forms: naive (UTC), ``Z``, an offset, microseconds.
    """
    return pd.DataFrame(
        {
            TRANSACTION_ID: ["0042", "t1", "t2", "t3", "t4"],
            CARD_ID: ["card-000123", "card-000124", "007", "card-000123", "tok_9f8e"],
            MERCHANT_ID: ["m1", "m2", "m1", "m3", "m2"],
            AMOUNT: [12.5, 99.99, 0.01, 250.0, 7.0],
            TIMESTAMP: [
                "2018-04-01 00:00:31",
                "2018-04-01T00:02:10Z",
                "2018-04-01T03:07:56+02:00",
                "2018-04-02T10:00:00.123456Z",
                "2018-04-03 23:59:59",
            ],
            CATEGORY: ["grocery", "travel", "grocery", "electronics", "food"],
            LABEL: [0, 0, 1, 0, 0],
        }
    )


@pytest.fixture
def handbook_dir() -> Path:
    """The handbook data: ``$FRAUD_HANDBOOK_DIR``, else ``<repo>/../shared/data/handbook``.

    Skips the test when the data is not there.
    """
    raw = os.environ.get("FRAUD_HANDBOOK_DIR")
    path = Path(raw) if raw else DEFAULT_HANDBOOK_DIR
    if not any(path.glob("transactions-*.csv.gz")):
        pytest.skip(f"handbook data not found in {path} (set FRAUD_HANDBOOK_DIR to its directory)")
    return path


# --- serving: one small, real model bundle per test session ---------------------------------


@pytest.fixture(scope="session")
def serving_data() -> SplitData:
    """Generated transactions split in time (train / held out)."""
    return make_data()


@pytest.fixture(scope="session")
def serving_bundle(tmp_path_factory: pytest.TempPathFactory, serving_data: SplitData) -> Path:
    """A complete bundle (joblib, ONNX, feature state, manifest) trained on the train split.

    Treat it as read-only: copy it before changing anything.
    """
    return build_bundle(tmp_path_factory.mktemp("bundle") / "test-1", serving_data.train)
