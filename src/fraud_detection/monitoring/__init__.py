"""The monitors: feature drift from the mirrored scoring records, and model performance from the
labelled outcomes joined with them.

The transformer mirrors every scored transaction to Kafka (:mod:`fraud_detection.serving.mirror`);
the monitor reads that topic as a consumer group, cuts each partition's stream into tumbling
windows and compares every window with the drift reference of the model version that scored it
(alibi-detect ``KSDrift``, feature-wise, Bonferroni-corrected). Modules, pure where they can be:

* :mod:`~fraud_detection.monitoring.records` — one Kafka record (CloudEvents binary mode) to an
  observation, or the reason it is skipped;
* :mod:`~fraud_detection.monitoring.reference` — a model version's drift reference, found through
  a :class:`~fraud_detection.monitoring.reference.BundleLocator` (the local registry by default);
* :mod:`~fraud_detection.monitoring.windows` — tumbling windows of one partition, by count and by
  the records' own time;
* :mod:`~fraud_detection.monitoring.stream` — one partition's records through reading, skipping
  and windowing;
* :mod:`~fraud_detection.monitoring.detector` — the drift test of one window (arrays in, result
  out), against reference rows matched to the window's hours;
* :mod:`~fraud_detection.monitoring.results` — the result record (the ``fraud-monitoring``
  contract) and its window id;
* :mod:`~fraud_detection.monitoring.sinks` — where results go: a JSON-lines file and a topic;
* :mod:`~fraud_detection.monitoring.metrics` — the Prometheus metrics;
* :mod:`~fraud_detection.monitoring.consumer` — the thin Kafka shell: poll, window, write, commit.

The performance monitor (``fraud monitor`` runs it too, in a thread of its own) joins the labels
topic with the mirror by ``transaction_id`` and reports recall, precision and F1 per model
version and day of transaction time against the bundle's training metrics:

* :mod:`~fraud_detection.monitoring.labels_join` — the join: scored transactions and waiting
  labels, duplicates, corrections, bounded by a horizon of transaction time and by size;
* :mod:`~fraud_detection.monitoring.performance` — the windows' counts, when a window is
  reported (complete enough, revised as labels arrive, final at the horizon), the result record
  and the baseline from the bundle's manifest;
* :mod:`~fraud_detection.monitoring.performance_consumer` — the Kafka shell: both topics assigned
  manually, the state (join, windows, offsets) in a file saved atomically.

Nothing here imports alibi-detect (about 10 s: it pulls in ``transformers``) or kafka-python at
import time.
"""
