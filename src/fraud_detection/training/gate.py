"""The deployment gate: a new model is deployed only when it is good enough, and not worse.

Rules, all of which must hold:

* recall at the operating threshold ≥ ``min_recall``;
* F1 at the operating threshold ≥ ``min_f1``;
* when a model is deployed and was scored on the same test set: the new model's recall and F1
  are each at most ``tolerance`` below the deployed model's;
* when a model is in service but could not be scored (the evaluation's ``status`` is
  :data:`UNAVAILABLE`: the Kubernetes API refused, the storage is unreachable, the bundle is
  unusable): refused, unless ``allow_uncompared``.

A metric that is missing or not a number fails its rule. The decision lists every rule with the
values compared, so the reasons for a refusal are on record. When there was no comparison the
reasons say why ("not compared with the served model: …"): a first deployment (no
InferenceService yet) and a model using other features pass on the absolute bounds alone.

The default bounds come from the rolling folds of the handbook data
(``benchmarks/bench_handbook.py``, which prints them against every fold): with the training
defaults, recall at 0.1 is 0.66-0.72 and F1 0.50-0.62 on the reported folds. ``min_recall`` 0.6
and ``min_f1`` 0.25 sit below every reported fold, so a normal week passes, and refuse what the
folds show going wrong: a model trained on a single week of history (recall 0.54), or one whose
alerts are mostly false (raw balanced weights: precision about 0.08, F1 about 0.14).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

GATED_METRICS: tuple[str, ...] = ("recall", "f1")

# The evaluation's ``deployed["status"]``: how the comparison with the model in service went.
#: Scored on the same test set.
COMPARED = "compared"
#: Nothing is in service (no InferenceService yet): a first deployment.
NOT_DEPLOYED = "not_deployed"
#: The model in service uses other features: not comparable on this test set.
INCOMPARABLE = "incomparable"
#: A model may be in service but could not be read or scored.
UNAVAILABLE = "unavailable"
#: The local registry's note when it holds no model.
NO_DEPLOYED_MODEL = "no model is deployed"
#: Where the evaluation found the model in service in a cluster (its ``source``).
KSERVE_SOURCE = "kserve"


@dataclass(frozen=True)
class GateConfig:
    """Gate thresholds."""

    min_recall: float = 0.6
    min_f1: float = 0.25
    tolerance: float = 0.02
    #: Pass (on the absolute bounds) when a model is in service but could not be scored.
    allow_uncompared: bool = False

    def __post_init__(self) -> None:
        for name in ("min_recall", "min_f1", "tolerance"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name}: must be a finite number >= 0, got {value!r}")
        if not isinstance(self.allow_uncompared, bool):
            raise ValueError(
                f"allow_uncompared: must be true or false, got {self.allow_uncompared!r}"
            )


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


def not_compared_reason(deployed: Mapping[str, Any]) -> str:
    """Why the evaluation's record of the deployed model holds no comparison, as a reason.

    "" when it was compared, or when the local registry simply holds no model.
    """
    if deployed.get("evaluated"):
        return ""
    note = str(deployed.get("note") or "no record of the model in service")
    if deployed.get("source") == KSERVE_SOURCE:
        return f"not compared with the served model: {note}"
    if note == NO_DEPLOYED_MODEL:
        return ""
    return f"not compared with the deployed model: {note}"


def decide(
    candidate: Mapping[str, Any],
    deployed: Mapping[str, Any] | None,
    config: GateConfig,
    *,
    not_compared: str = "",
    unavailable: bool = False,
) -> GateDecision:
    """Decide whether ``candidate`` may replace ``deployed`` (None when nothing is deployed).

    ``not_compared`` says why there is no comparison (:func:`not_compared_reason`); with
    ``unavailable`` (a model is in service but could not be scored) the decision fails unless
    ``config.allow_uncompared``.
    """
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
    reasons = [
        f"{'ok' if item['passed'] else 'FAILED'}: {item['rule']} "
        f"({item['value']:.4f} vs {item['bound']:.4f})"
        for item in checks
    ]
    if deployed is None and unavailable:
        allowed = config.allow_uncompared
        checks.append(
            {
                "rule": "the model in service was compared, or allow_uncompared",
                "value": None,
                "bound": None,
                "passed": allowed,
                "reason": not_compared,
            }
        )
        reasons.append(
            f"allowed (allow_uncompared): {not_compared}"
            if allowed
            else f"FAILED: {not_compared}; set allow_uncompared to deploy without the comparison"
        )
    elif deployed is None:
        reasons.append(not_compared or "no deployed model to compare with")
    passed = all(item["passed"] for item in checks)
    return GateDecision(passed=passed, checks=checks, reasons=reasons)
