"""Tools the offline checks run (kubectl, checkov, hadolint): skip without them, except under
``make test``, which installs them and sets ``FRAUD_REQUIRE_TOOLS=1`` so that a missing one
fails instead."""

from __future__ import annotations

import os

import pytest


def require(condition: bool, reason: str) -> None:
    """Skip with ``reason`` when ``condition`` is false; fail instead under ``make test``."""
    if condition:
        return
    if os.environ.get("FRAUD_REQUIRE_TOOLS") == "1":
        pytest.fail(f"{reason} (FRAUD_REQUIRE_TOOLS=1: `make install` provides it)")
    pytest.skip(reason)
