"""The deployment gate's rules."""

from __future__ import annotations

import math

import pytest

from fraud_detection.training.gate import GateConfig, decide

CONFIG = GateConfig(min_recall=0.8, min_f1=0.3, tolerance=0.02)


def test_a_good_model_with_nothing_deployed_passes() -> None:
    decision = decide({"recall": 0.85, "f1": 0.4}, None, CONFIG)
    assert decision.passed
    assert decision.reasons[-1] == "no deployed model to compare with"
    assert [check["rule"] for check in decision.checks] == ["recall >= min_recall", "f1 >= min_f1"]


@pytest.mark.parametrize(
    ("metrics", "failed_rule"),
    [
        ({"recall": 0.79, "f1": 0.4}, "recall >= min_recall"),
        ({"recall": 0.9, "f1": 0.29}, "f1 >= min_f1"),
        ({"recall": math.nan, "f1": 0.4}, "recall >= min_recall"),
        ({"f1": 0.4}, "recall >= min_recall"),
    ],
)
def test_a_model_below_a_bound_is_refused_and_the_reason_named(
    metrics: dict[str, float], failed_rule: str
) -> None:
    decision = decide(metrics, None, CONFIG)
    assert not decision.passed
    assert any(r.startswith(f"FAILED: {failed_rule}") for r in decision.reasons)


def test_the_new_model_may_not_be_worse_than_the_deployed_one_beyond_the_tolerance() -> None:
    deployed = {"recall": 0.90, "f1": 0.50}
    assert decide({"recall": 0.885, "f1": 0.49}, deployed, CONFIG).passed  # within 0.02
    worse = decide({"recall": 0.87, "f1": 0.49}, deployed, CONFIG)
    assert not worse.passed
    assert "FAILED: recall >= deployed recall - tolerance (0.8700 vs 0.8800)" in worse.reasons


def test_gate_bounds_must_be_numbers() -> None:
    with pytest.raises(ValueError, match="min_f1"):
        GateConfig(min_f1=-0.1)
