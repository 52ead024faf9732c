"""Waiting for an event in a test: poll until it happens, fail after a generous deadline.

Tests never assume how fast something happens; they wait for the event itself. The deadline
only bounds a test that would otherwise hang, so it is generous enough for a loaded 2-core
machine.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

#: Deadline for any awaited event.
DEADLINE_S = 60.0


def wait_until(
    condition: Callable[[], Any], what: str, timeout_s: float = DEADLINE_S, poll_s: float = 0.02
) -> Any:
    """Poll ``condition`` until it returns something truthy (returned); fail naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout_s:g} s for {what}")
        time.sleep(poll_s)
    return value
