"""The error of a Kafka record that cannot be used: why (a reason to count it under), which
field, and what is wrong with it. Consumers count such records by reason and skip them."""

from __future__ import annotations


class RecordError(ValueError):
    """A record that cannot be used: ``reason`` (a short key to count it under), ``field``
    (the field at fault) and ``detail`` (what is wrong); the message is ``field: detail``."""

    def __init__(self, reason: str, field: str, detail: str) -> None:
        super().__init__(f"{field}: {detail}")
        self.reason = reason
        self.field = field
        self.detail = detail
