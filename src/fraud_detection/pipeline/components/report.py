"""Component ``report``: the run report as an HTML artifact."""

from kfp.dsl import HTML, Artifact, Input, Model, Output


def report(
    evaluation: Input[Artifact],
    decision: Input[Artifact],
    bundle: Input[Model],
    run_report: Output[HTML],
):
    """Render the run report for an analyst: the gate's decision and what it means for
    deployment (this step runs before deploy), alerts a day and the share of the fraud amount
    caught, metrics with confidence intervals, the PR curve and metrics by threshold, the score
    distribution of each class, the confusion matrix, impurity and permutation importances and
    the expected cost per threshold."""
    from fraud_detection.training.steps import report_step

    report_step(evaluation.path, decision.path, bundle.path, run_report.path)
