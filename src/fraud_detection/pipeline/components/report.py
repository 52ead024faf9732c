"""Component ``report``: the run report as an HTML artifact."""

from kfp.dsl import HTML, Artifact, Input, Model, Output


def report(
    evaluation: Input[Artifact],
    decision: Input[Artifact],
    bundle: Input[Model],
    run_report: Output[HTML],
):
    """Render the run report: PR curve with the operating point, metrics by threshold, the
    confusion matrix, feature importances and the expected cost per threshold."""
    from fraud_detection.training.steps import report_step

    report_step(evaluation.path, decision.path, bundle.path, run_report.path)
