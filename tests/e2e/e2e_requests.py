"""Scoring requests for the end-to-end tests: valid transactions stamped with the wall clock.

The cluster's transformer runs with ``--clock wall``, so a transaction must be recent; every
``transaction_id`` is new, so a rerun never collides with what the transformer has seen.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from fraud_detection.schema import (
    AMOUNT,
    CARD_ID,
    CATEGORY,
    MERCHANT_ID,
    TIMESTAMP,
    TRANSACTION_ID,
)


def transaction(amount: float = 912.5, card: int = 42, **fields: Any) -> dict[str, Any]:
    """One valid transaction of the scoring contract, now; ``fields`` override any field."""
    instance: dict[str, Any] = {
        TRANSACTION_ID: f"e2e-{uuid.uuid4()}",
        CARD_ID: f"card-{card:06d}",
        MERCHANT_ID: "merchant-000007",
        AMOUNT: amount,
        TIMESTAMP: datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        CATEGORY: "electronics",
    }
    instance.update(fields)
    return instance


def predict_path(model_name: str) -> str:
    """The KServe v1 predict path of ``model_name``."""
    return f"/v1/models/{model_name}:predict"
