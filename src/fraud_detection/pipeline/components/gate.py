"""Component ``gate``: the deployment decision, with its reasons as an artifact."""

from kfp.dsl import Artifact, Input, Output


def gate(
    evaluation: Input[Artifact],
    min_recall: float,
    min_f1: float,
    tolerance: float,
    decision: Output[Artifact],
) -> bool:
    """True when recall >= min_recall, F1 >= min_f1 and, when a model is deployed, neither is
    more than ``tolerance`` below the deployed model's on the same test set."""
    from fraud_detection.training.gate import GateConfig
    from fraud_detection.training.steps import gate_step

    passed = gate_step(evaluation.path, GateConfig(min_recall, min_f1, tolerance), decision.path)
    decision.metadata["passed"] = passed
    return passed
