"""The deployment gate: a new model is deployed only when it is good enough, and not worse.

Rules, all of which must hold:

* recall at the operating threshold ≥ ``min_recall``;
* F1 at the operating threshold ≥ ``min_f1``;
* when a model is deployed and was scored on the same test set: the new model's recall and F1
  are each at most ``tolerance`` below the deployed model's.

A metric that is missing or not a number fails its rule. The decision lists every rule with the
values compared, so the reasons for a refusal are on record.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

GATED_METRICS: tuple[str, ...] = ("recall", "f1")


@dataclass(frozen=True)
class GateConfig:
    """Gate thresholds."""

    min_recall: float = 0.75
    min_f1: float = 0.05
    tolerance: float = 0.02

    def __post_init__(self) -> None:
        for name in ("min_recall", "min_f1", "tolerance"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name}: must be a finite number >= 0, got {value!r}")


@dataclass
class GateDecision:
    """The outcome: passed or not, each rule checked, and the reasons in words."""

    passed: bool
    checks: list[dict[str, Any]] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for the decision artifact."""
        return asdict(self)


def _value(metrics: Mapping[str, Any] | None, name: str) -> float:
    try:
        value = float(metrics[name])  # type: ignore[index]
    except (KeyError, TypeError, ValueError):
        return math.nan
    return value


def decide(
    candidate: Mapping[str, Any],
    deployed: Mapping[str, Any] | None,
    config: GateConfig,
) -> GateDecision:
    """Decide whether ``candidate`` may replace ``deployed`` (None when nothing is deployed)."""
    checks: list[dict[str, Any]] = []

    def check(rule: str, value: float, bound: float) -> None:
        ok = math.isfinite(value) and value >= bound
        checks.append({"rule": rule, "value": value, "bound": bound, "passed": ok})

    check("recall >= min_recall", _value(candidate, "recall"), config.min_recall)
    check("f1 >= min_f1", _value(candidate, "f1"), config.min_f1)
    if deployed is not None:
        for name in GATED_METRICS:
            check(
                f"{name} >= deployed {name} - tolerance",
                _value(candidate, name),
                _value(deployed, name) - config.tolerance,
            )
    passed = all(item["passed"] for item in checks)
    reasons = [
        f"{'ok' if item['passed'] else 'FAILED'}: {item['rule']} "
        f"({item['value']:.4f} vs {item['bound']:.4f})"
        for item in checks
    ]
    if deployed is None:
        reasons.append("no deployed model to compare with")
    return GateDecision(passed=passed, checks=checks, reasons=reasons)
