"""The canonical transaction contract: field names, label, and the production threshold.

Every other module refers to these names; nothing else spells a column name as a literal.
The pandera schemas that check data against this contract live in
:mod:`fraud_detection.data.validation`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

TRANSACTION_ID = "transaction_id"
CARD_ID = "card_id"
MERCHANT_ID = "merchant_id"
AMOUNT = "amt"
TIMESTAMP = "timestamp"
CATEGORY = "category"
LABEL = "is_fraud"

ID_COLUMNS: tuple[str, ...] = (TRANSACTION_ID, CARD_ID, MERCHANT_ID)
#: Fields every transaction carries, in canonical order.
REQUIRED_COLUMNS: tuple[str, ...] = (TRANSACTION_ID, CARD_ID, MERCHANT_ID, AMOUNT, TIMESTAMP)
#: Fields a transaction may carry.
OPTIONAL_COLUMNS: tuple[str, ...] = (CATEGORY,)

#: Fraud is flagged at this probability or above (recall over precision).
DEFAULT_THRESHOLD = 0.1
#: Probabilities are reported, and compared with the threshold, rounded to this many decimals:
#: the ONNX runtime scores in float32 (an exact 0.1 arrives as 0.09999998658895493), scikit-learn
#: in float64, and both must flag the same transactions.
PROBABILITY_DECIMALS = 6
#: Largest accepted amount, in the transaction's currency units (``--max_amount`` in serving).
#: Well above any card payment, also in currencies of small units, and small enough that the
#: features' running sums of squared amounts stay finite and precise.
MAX_AMOUNT = 1_000_000_000.0


_SCALE = 10.0**PROBABILITY_DECIMALS


def round_probability(probability: float) -> float:
    """A fraud probability as it is reported and compared: rounded to PROBABILITY_DECIMALS.

    The same float operations as ``numpy.round`` (scale, round half to even, unscale), which
    :func:`flag_scores` uses, so one score gets one verdict everywhere; a hundred times faster
    on one number than numpy's scalar path.
    """
    return round(float(probability) * _SCALE) / _SCALE


def is_flagged(probability: float, threshold: float) -> bool:
    """Whether a probability is at or above the threshold (after :func:`round_probability`)."""
    return round_probability(probability) >= threshold


def flag_scores(scores: np.ndarray, threshold: float) -> np.ndarray:
    """Vectorised :func:`is_flagged`: the same rule for a whole array of scores (offline)."""
    import numpy as np

    return np.round(np.asarray(scores, dtype=np.float64), PROBABILITY_DECIMALS) >= threshold


def to_utc_timestamp(value: object) -> pd.Timestamp:
    """A date or date-time as a UTC timestamp; a naive value is UTC, as in the contract.

    Raises ``ValueError`` naming the value when it is not a date.
    """
    import pandas as pd

    try:
        stamp = pd.Timestamp(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"not a date or datetime: {value!r}") from exc
    if pd.isna(stamp):
        raise ValueError(f"not a date or datetime: {value!r}")
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
