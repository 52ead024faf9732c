"""Score held-out transactions over HTTP and summarise: the serving half of the demo.

:func:`score_over_http` sends transactions one request at a time (as a payment switch would),
in time order, to a running transformer and measures each round trip; :func:`demo_score` starts
the local stack (:class:`~fraud_detection.serving.launcher.ServingStack`), scores, and stops it.
"""

from __future__ import annotations

import numbers
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fraud_detection.schema import (
    AMOUNT,
    CARD_ID,
    CATEGORY,
    LABEL,
    MERCHANT_ID,
    TIMESTAMP,
    TRANSACTION_ID,
)


@dataclass(frozen=True)
class ScoreReport:
    """What scoring a set of transactions over HTTP gave."""

    scored: int
    flagged: int
    errors: int
    latencies_ms: list[float]
    model_versions: tuple[str, ...]
    actual_fraud: int | None = None
    caught_fraud: int | None = None

    def percentile(self, q: float) -> float:
        """A latency percentile in milliseconds (nan when nothing was scored)."""
        if not self.latencies_ms:
            return float("nan")
        return float(np.percentile(self.latencies_ms, q))

    def render(self) -> str:
        """A few human-readable lines."""
        lines = [
            f"scored {self.scored} transactions over HTTP ({self.errors} errors), "
            f"model {', '.join(self.model_versions) or '-'}",
            f"latency per request: p50 {self.percentile(50):.2f} ms, "
            f"p95 {self.percentile(95):.2f} ms, p99 {self.percentile(99):.2f} ms, "
            f"max {max(self.latencies_ms, default=float('nan')):.2f} ms",
            f"flagged as fraud (probability >= threshold): {self.flagged}",
        ]
        if self.actual_fraud is not None:
            recall = self.caught_fraud / self.actual_fraud if self.actual_fraud else float("nan")
            lines.append(
                f"labelled fraud among them: {self.actual_fraud}, flagged: {self.caught_fraud} "
                f"(recall {recall:.2f})"
            )
        return "\n".join(lines)


def to_instance(row: dict[str, Any]) -> dict[str, Any]:
    """A scoring instance (canonical fields, JSON types) from a transaction row.

    Ids are sent as JSON strings (an integral number, also one a reader made a float, as its
    digits: ``42`` and ``42.0`` both become ``"42"``), the amount as a JSON number, the timestamp
    as ISO 8601 text. The request validator refuses integer ids and numeric text.
    """
    instance = {
        TRANSACTION_ID: id_text(row[TRANSACTION_ID]),
        CARD_ID: id_text(row[CARD_ID]),
        MERCHANT_ID: id_text(row[MERCHANT_ID]),
        AMOUNT: float(row[AMOUNT]),
        TIMESTAMP: timestamp_text(row[TIMESTAMP]),
    }
    category = row.get(CATEGORY)
    if isinstance(category, str):
        instance[CATEGORY] = category
    return instance


def id_text(value: Any) -> str:
    """An id as text: integral numbers (``42``, ``42.0``, numpy integers) as their digits."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool | np.bool_):
        raise TypeError(f"an id cannot be a boolean, got {value!r}")
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real) and float(value).is_integer():
        return str(int(value))
    return str(value)


def timestamp_text(value: Any) -> str:
    """A timestamp as ISO 8601 text (text is passed through unchanged)."""
    if isinstance(value, str):
        return value
    return pd.Timestamp(value).isoformat()


def score_over_http(predict_url: str, frame: pd.DataFrame, timeout_s: float = 5.0) -> ScoreReport:
    """Score every transaction of ``frame`` (in time order), one request each."""
    import httpx

    ordered = frame.sort_values(TIMESTAMP, kind="stable")
    labels = ordered[LABEL].astype(int).tolist() if LABEL in ordered else None
    latencies: list[float] = []
    flagged = errors = caught = 0
    versions: set[str] = set()
    with httpx.Client(timeout=timeout_s) as client:
        for index, row in enumerate(ordered.to_dict("records")):
            body = {"instances": [to_instance(row)]}
            started = time.perf_counter()
            response = client.post(predict_url, json=body)
            elapsed = (time.perf_counter() - started) * 1000
            if response.status_code != 200:
                errors += 1
                continue
            latencies.append(elapsed)
            prediction = response.json()["predictions"][0]
            versions.add(prediction["model_version"])
            if prediction["is_fraud"]:
                flagged += 1
                if labels is not None and labels[index]:
                    caught += 1
    return ScoreReport(
        scored=len(latencies),
        flagged=flagged,
        errors=errors,
        latencies_ms=latencies,
        model_versions=tuple(sorted(versions)),
        actual_fraud=sum(labels) if labels is not None else None,
        caught_fraud=caught if labels is not None else None,
    )


def held_out(frame: pd.DataFrame, count: int) -> pd.DataFrame:
    """The first ``count`` transactions of ``frame`` by timestamp.

    Given a hold-out file that continues the training data in time, these are the transactions
    that come right after what the model and its feature state have seen.
    """
    times = pd.to_datetime(frame[TIMESTAMP], utc=True)
    order = np.argsort(times.to_numpy(), kind="stable")
    return frame.iloc[order[:count]]


def demo_score(
    data: pd.DataFrame,
    count: int = 300,
    model_dir: Path | None = None,
    registry: Path | None = None,
    kafka: str | None = None,
    mirror: bool = True,
) -> ScoreReport:
    """Start the stack, score the first ``count`` transactions of ``data``, stop everything.

    The data is historical, so the transformer runs on the event clock (its clock is the latest
    scored timestamp) and without checkpoints: the demo's state is not kept.
    """
    from fraud_detection.registry import default_registry_root
    from fraud_detection.serving.launcher import ServingStack, StackConfig

    if model_dir is None and registry is None:
        registry = default_registry_root()
    config = StackConfig(
        model_dir=model_dir,
        registry=registry,
        kafka=kafka,
        mirror=mirror,
        clock="event",
        state_dir=None,
    )
    with ServingStack(config) as stack:
        return score_over_http(stack.predict_url, held_out(data, count))
