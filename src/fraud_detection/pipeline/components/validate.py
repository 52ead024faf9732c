"""Component ``validate``: pandera checks; bad data fails the run with the report."""

from kfp.dsl import Dataset, Input, Markdown, Output


def validate(
    raw: Input[Dataset],
    max_invalid_fraction: float,
    validated: Output[Dataset],
    report: Output[Markdown],
):
    """Check the ingested transactions against the canonical schema. Writes the report (column,
    check, count, example rows) in every case; fails when a check fails (unless the failing
    rows are at most ``max_invalid_fraction`` of the data: then they are set aside and counted)
    or the labels hold a single class; otherwise writes the typed data set."""
    from fraud_detection.training.steps import validate_step

    summary = validate_step(
        raw.path,
        validated.path,
        report.path,
        source=raw.metadata.get("source", ""),
        max_invalid_fraction=max_invalid_fraction,
    )
    validated.metadata.update(summary)
