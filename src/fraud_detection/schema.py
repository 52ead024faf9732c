"""The canonical transaction contract: field names, label, and the production threshold.

Every other module refers to these names; nothing else spells a column name as a literal.
The pandera schemas that check data against this contract live in
:mod:`fraud_detection.data.validation`.
"""

from __future__ import annotations

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
