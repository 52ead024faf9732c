"""Component ``gate``: the deployment decision, with its reasons as an artifact."""

from kfp.dsl import Artifact, Input, Output


def gate(
    evaluation: Input[Artifact],
    min_recall: float,
    min_f1: float,
    tolerance: float,
    decision: Output[Artifact],
    allow_uncompared: bool = False,
) -> bool:
    """True when recall >= min_recall, F1 >= min_f1 and, when a model is deployed, neither is
    more than ``tolerance`` below the deployed model's on the same test set. A model in service
    that could not be scored (API refused, storage unreachable, bundle unusable) refuses the new
    one unless ``allow_uncompared``."""
    from fraud_detection.training.gate import GateConfig
    from fraud_detection.training.steps import gate_step

    config = GateConfig(min_recall, min_f1, tolerance, allow_uncompared=allow_uncompared)
    passed = gate_step(evaluation.path, config, decision.path)
    decision.metadata["passed"] = passed
    return passed
