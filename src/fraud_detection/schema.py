"""The canonical transaction contract: field names, label, and the production threshold.

Every other module refers to these names; nothing else spells a column name as a literal.
The pandera schemas that check data against this contract live in
:mod:`fraud_detection.data.validation`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
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
