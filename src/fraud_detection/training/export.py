"""The exported bundle's contents: ONNX conversion and its check, drift reference, fingerprint.

The bundle layout and manifest are defined in :mod:`fraud_detection.bundle`; this module makes
what goes into it:

* :func:`convert_to_onnx` — the forest as ONNX (skl2onnx, input ``features`` float32, output
  ``probabilities``, no ZipMap), and :func:`check_onnx_parity`, which refuses a conversion whose
  fraud probabilities differ from scikit-learn's by more than :data:`ONNX_TOLERANCE` anywhere on
  the test set;
* :func:`feature_state_snapshot` — the online per-card state after the training data, from only
  the days any window can still see;
* :func:`drift_reference` — a seeded sample of training feature vectors for the drift monitor;
* :func:`data_fingerprint`, :func:`library_versions`, :func:`model_version`.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import platform
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from fraud_detection.features import (
    FEATURE_NAMES,
    LABEL_DELAY_DAYS,
    WINDOW_DAYS,
    OnlineFeatureState,
)
from fraud_detection.schema import (
    AMOUNT,
    CARD_ID,
    LABEL,
    MERCHANT_ID,
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


def drift_reference(features: np.ndarray, size: int, seed: int) -> np.ndarray:
    """A seeded sample of at most ``size`` feature vectors (rows kept in their order)."""
    if size <= 0 or len(features) <= size:
        return features.copy()
    rng = np.random.default_rng(seed)
    return features[np.sort(rng.choice(len(features), size, replace=False))]


def save_drift_reference(path: str | Path, features: np.ndarray) -> Path:
    """Write the reference as ``.npz`` with arrays ``features`` and ``feature_names``."""
    path = Path(path)
    with path.open("wb") as handle:
        np.savez_compressed(
            handle, features=features.astype(np.float64), feature_names=np.array(FEATURE_NAMES)
        )
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
