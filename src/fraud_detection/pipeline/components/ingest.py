"""Component ``ingest``: transactions from files/globs or a Kafka topic into one data set."""

from kfp.dsl import Dataset, Output


def ingest(
    data: list,
    kafka_bootstrap: str,
    kafka_topic: str,
    kafka_max_records: int,
    raw: Output[Dataset],
):
    """Read CSV, CSV.gz or Parquet files (canonical or handbook schema), or a bounded read of a
    Kafka topic (``kafka_max_records`` records, 0: up to the end offsets seen at the start), and
    write them as one Parquet data set with canonical column names, values as read."""
    from fraud_detection.training.steps import ingest_step

    summary = ingest_step(data, kafka_bootstrap, kafka_topic, kafka_max_records, raw.path)
    raw.metadata.update(summary)
