"""The exported bundle's contents: ONNX conversion and its check, drift reference, fingerprint.

The bundle layout and manifest are defined in :mod:`fraud_detection.bundle`; this module makes
what goes into it:

* :func:`convert_to_onnx` — the forest as ONNX (skl2onnx, input ``features`` float32, output
  ``probabilities``, no ZipMap), and :func:`check_onnx_parity`, which refuses a conversion whose
  fraud probabilities differ from scikit-learn's by more than :data:`ONNX_TOLERANCE` anywhere on
  the test set;
* :func:`feature_state_snapshot` — the online per-card state after the training data, from only
  the days any window can still see;
* :func:`draw_drift_reference` — the drift monitor's reference: held-out rows whose feature
  windows are full, scored out of sample, in time order (:func:`save_drift_reference` writes it);
* :func:`data_fingerprint`, :func:`library_versions`, :func:`model_version`.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import platform
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from fraud_detection.features import (
    FEATURE_NAMES,
    LABEL_DELAY_DAYS,
    MICROS_PER_DAY,
    WINDOW_DAYS,
    OnlineFeatureState,
)
from fraud_detection.schema import (
    AMOUNT,
    CARD_ID,
    LABEL,
    MERCHANT_ID,
    PROBABILITY_DECIMALS,
    TIMESTAMP,
    TRANSACTION_ID,
)

if TYPE_CHECKING:
    from sklearn.ensemble import RandomForestClassifier

#: Largest allowed difference between ONNX and scikit-learn fraud probabilities.
ONNX_TOLERANCE = 1e-5
ONNX_INPUT = "features"
ONNX_PROBABILITIES = "probabilities"
#: ONNX opsets of the export (default domain, ai.onnx.ml).
ONNX_OPSETS = {"": 17, "ai.onnx.ml": 3}
LIBRARIES: tuple[str, ...] = (
    "fraud-detection",
    "scikit-learn",
    "numpy",
    "pandas",
    "joblib",
    "skl2onnx",
    "onnx",
    "onnxruntime",
    "kfp",
)
#: Days of history before a row's feature windows are all full: the longest card window, and the
#: merchant windows' label delay on top of it.
WARM_UP_DAYS = max(WINDOW_DAYS) + LABEL_DELAY_DAYS
#: The fewest days a drift reference should span: the monitor compares with whole weeks.
MIN_REFERENCE_DAYS = 21
_FINGERPRINT_COLUMNS = (TRANSACTION_ID, CARD_ID, MERCHANT_ID, AMOUNT, TIMESTAMP, LABEL)


class OnnxParityError(RuntimeError):
    """The ONNX model's probabilities differ from scikit-learn's beyond the tolerance."""


def convert_to_onnx(model: RandomForestClassifier) -> bytes:
    """Serialized ONNX of a fitted forest over :data:`FEATURE_NAMES` (float32 input)."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    onnx_model = to_onnx(
        model,
        initial_types=[(ONNX_INPUT, FloatTensorType([None, len(FEATURE_NAMES)]))],
        options={id(model): {"zipmap": False}},
        target_opset=ONNX_OPSETS,
    )
    names = [output.name for output in onnx_model.graph.output]
    if ONNX_PROBABILITIES not in names:
        raise OnnxParityError(f"the ONNX model has no {ONNX_PROBABILITIES!r} output ({names})")
    return onnx_model.SerializeToString()


def onnx_fraud_probabilities(onnx_bytes: bytes, features: np.ndarray) -> np.ndarray:
    """Fraud probabilities of an exported model on ``features`` (onnxruntime, CPU)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(
        onnx_bytes, sess_options=options, providers=["CPUExecutionProvider"]
    )
    (probabilities,) = session.run([ONNX_PROBABILITIES], {ONNX_INPUT: features.astype(np.float32)})
    return np.asarray(probabilities)[:, 1].astype(np.float64)


def check_onnx_parity(
    onnx_bytes: bytes,
    expected: np.ndarray,
    features: np.ndarray,
    tolerance: float = ONNX_TOLERANCE,
) -> float:
    """The largest |ONNX - scikit-learn| fraud probability; raise when above ``tolerance``."""
    got = onnx_fraud_probabilities(onnx_bytes, features)
    difference = float(np.max(np.abs(got - expected))) if len(expected) else 0.0
    if not difference <= tolerance:
        worst = int(np.argmax(np.abs(got - expected)))
        raise OnnxParityError(
            f"ONNX and scikit-learn fraud probabilities differ by {difference:.3g} "
            f"(row {worst}: {got[worst]:.6f} vs {expected[worst]:.6f}), above {tolerance:g}"
        )
    return difference


def feature_state_snapshot(frame: pd.DataFrame) -> OnlineFeatureState:
    """The online feature state after every transaction (and label) of ``frame``.

    Only the days the windows can still see at the end of the data are replayed: card windows
    reach back ``max(WINDOW_DAYS)`` days and merchant windows another ``LABEL_DELAY_DAYS``;
    older transactions would be forgotten by the state anyway.
    """
    stamps = pd.to_datetime(frame[TIMESTAMP], utc=True)
    horizon = pd.Timedelta(days=max(WINDOW_DAYS) + LABEL_DELAY_DAYS + 2)
    recent = frame[(stamps >= stamps.max().floor("D") - horizon).to_numpy()]
    return OnlineFeatureState.from_frame(recent)


@dataclass(frozen=True)
class ReferenceDraw:
    """A drift reference drawn by :func:`draw_drift_reference`, and how it was drawn.

    Attributes:
        features: the reference rows (rows x features), in time order.
        scores: the model's out-of-sample fraud probability of each row (rounded as served).
        positions: each row's index in the arrays it was drawn from.
        requested: the rows asked for (0: every eligible row).
        eligible: the held-out rows after the warm-up (the rows it was drawn from).
        warm_up_days: the days skipped at the start of the data (0 when none could be).
        first: the transaction time of the first row (ISO-8601 UTC).
        last: the transaction time of the last row (ISO-8601 UTC).
        days: calendar days (UTC) from the first row's day to the last row's, inclusive.
        warnings: why the reference falls short of what the monitor needs (empty when not).
    """

    features: np.ndarray
    scores: np.ndarray
    positions: np.ndarray
    requested: int
    eligible: int
    warm_up_days: int
    first: str
    last: str
    days: int
    warnings: tuple[str, ...] = ()

    @property
    def rows(self) -> int:
        """The number of reference rows."""
        return int(self.features.shape[0])

    def describe(self) -> dict[str, Any]:
        """How the reference was drawn, for the manifest's parameters."""
        return {
            "rows": self.rows,
            "requested": self.requested,
            "eligible_rows": self.eligible,
            "warm_up_days_skipped": self.warm_up_days,
            "first": self.first,
            "last": self.last,
            "days": self.days,
            "scores": True,
            "warnings": list(self.warnings),
        }


def iso_utc(micros: int) -> str:
    """A time in microseconds since the epoch as ISO-8601 UTC."""
    return pd.Timestamp(int(micros), unit="us", tz="UTC").isoformat()


def draw_drift_reference(
    features: np.ndarray,
    timestamps: np.ndarray,
    held_out: np.ndarray,
    score: Callable[[np.ndarray], np.ndarray],
    size: int,
    seed: int,
    data_start: int | None = None,
    warm_up_days: int = WARM_UP_DAYS,
    min_days: int = MIN_REFERENCE_DAYS,
) -> ReferenceDraw:
    """The drift reference the monitor compares live traffic with.

    Drawn, seeded, from the ``held_out`` rows (rows the model did not train on) whose feature
    windows are full: rows before the first ``warm_up_days`` calendar days (UTC) of the data are
    skipped, since their card and merchant windows still miss history that live traffic has. The
    rows are kept in time order and scored by ``score`` (the model's fraud probability; held-out
    rows, so out of sample, as live traffic is), rounded as served.

    Args:
        features: every row's feature vector (rows x features).
        timestamps: every row's transaction time, microseconds since the epoch (UTC).
        held_out: boolean mask of the rows the model was not trained on.
        score: fraud probabilities of a feature matrix (e.g. ``predict_proba(x)[:, 1]``).
        size: rows to draw; 0 or fewer: every eligible row.
        seed: seed of the draw.
        data_start: the first transaction time of the data the features were computed over
            (default: the earliest of ``timestamps``).
        warm_up_days: days of history a row's features need (default: the longest window plus
            the label delay).
        min_days: the fewest days the reference should span (the monitor matches whole weeks).

    When no held-out row is past the warm-up, every held-out row is used and the warm-up is not
    skipped; that, a span under ``min_days`` or fewer rows than ``size`` are reported in
    :attr:`ReferenceDraw.warnings` (the reference is still drawn).

    Raises:
        ValueError: the arrays disagree in length, or there is no held-out row.
    """
    features = np.asarray(features, dtype=np.float64)
    timestamps = np.asarray(timestamps, dtype=np.int64)
    held_out = np.asarray(held_out, dtype=bool)
    if not len(features) == len(timestamps) == len(held_out):
        raise ValueError(
            f"features, timestamps and held_out: lengths differ ({len(features)}, "
            f"{len(timestamps)}, {len(held_out)})"
        )
    if not held_out.any():
        raise ValueError("held_out: no held-out row to draw a drift reference from")
    start = int(timestamps.min()) if data_start is None else int(data_start)
    cutoff = (start // MICROS_PER_DAY + warm_up_days) * MICROS_PER_DAY
    warnings: list[str] = []
    candidates = np.flatnonzero(held_out & (timestamps >= cutoff))
    skipped = warm_up_days
    if len(candidates) == 0:
        candidates, skipped = np.flatnonzero(held_out), 0
        warnings.append(
            f"no held-out row after the first {warm_up_days} days of the data (their feature "
            "windows are not full yet); the reference includes rows whose windows are not full"
        )
    if 0 < size < len(candidates):
        rng = np.random.default_rng(seed)
        candidates = np.sort(rng.choice(candidates, size, replace=False))
    positions = candidates[np.argsort(timestamps[candidates], kind="stable")]
    chosen = features[positions]
    scores = np.round(np.asarray(score(chosen), dtype=np.float64), PROBABILITY_DECIMALS)
    times = timestamps[positions]
    days = int(times[-1] // MICROS_PER_DAY - times[0] // MICROS_PER_DAY) + 1
    eligible = int(np.count_nonzero(held_out & (timestamps >= cutoff))) if skipped else 0
    if size > 0 and len(positions) < size:
        warnings.append(f"{len(positions):,} rows, fewer than the {size:,} requested")
    if days < min_days:
        warnings.append(
            f"spans {days} days, fewer than {min_days}: the monitor compares windows with the "
            "reference rows of the same hours and kind of day, and needs whole weeks of them"
        )
    return ReferenceDraw(
        features=chosen,
        scores=scores,
        positions=positions,
        requested=max(int(size), 0),
        eligible=eligible,
        warm_up_days=skipped,
        first=iso_utc(times[0]),
        last=iso_utc(times[-1]),
        days=days,
        warnings=tuple(warnings),
    )


def save_drift_reference(
    path: str | Path, features: np.ndarray, scores: np.ndarray | None = None
) -> Path:
    """Write the reference as ``.npz``: arrays ``features``, ``feature_names`` and, when given,
    ``fraud_probability`` (one score per row), as
    :func:`fraud_detection.monitoring.reference.load_reference` reads them."""
    path = Path(path)
    arrays = {"features": features.astype(np.float64), "feature_names": np.array(FEATURE_NAMES)}
    if scores is not None:
        if np.shape(scores) != (features.shape[0],):
            raise ValueError(
                f"scores: must hold one score per row ({features.shape[0]}), "
                f"got shape {np.shape(scores)}"
            )
        arrays["fraud_probability"] = np.asarray(scores, dtype=np.float64)
    with path.open("wb") as handle:
        np.savez_compressed(handle, **arrays)
    return path


def data_fingerprint(frame: pd.DataFrame) -> str:
    """sha256 over the canonical fields of every row (row order matters), as ``sha256:<hex>``."""
    columns = [column for column in _FINGERPRINT_COLUMNS if column in frame.columns]
    digest = hashlib.sha256(",".join(columns).encode())
    hashed = pd.util.hash_pandas_object(frame[columns], index=False)
    digest.update(hashed.to_numpy().tobytes())
    return f"sha256:{digest.hexdigest()}"


def library_versions() -> dict[str, str]:
    """Versions of Python and of the libraries that made the model."""
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def model_version(created_at: datetime, model_sha256: str, fingerprint: str) -> str:
    """``<UTC time>-<8 hex>``: sortable, and distinct for different models or data."""
    digest = hashlib.sha256(f"{model_sha256}:{fingerprint}".encode()).hexdigest()[:8]
    return f"{created_at:%Y%m%dT%H%M%SZ}-{digest}"


def manifest_parameters(parameters: dict[str, Any]) -> dict[str, Any]:
    """JSON-safe copy of parameters (numpy scalars become Python numbers)."""
    out: dict[str, Any] = {}
    for key, value in parameters.items():
        if isinstance(value, dict):
            out[key] = manifest_parameters(value)
        elif isinstance(value, np.generic):
            out[key] = value.item()
        else:
            out[key] = value
    return out
