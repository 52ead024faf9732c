"""Online scoring: the KServe predictor and transformer, the Kafka mirror, and ``fraud serve``.

Modules (none imports kserve at import time):

* :mod:`~fraud_detection.serving.model` — verified bundle → scoring model; bundle sources and
  the reload watcher;
* :mod:`~fraud_detection.serving.predictor` — the predictor ``kserve.Model`` and its entry point;
* :mod:`~fraud_detection.serving.transformer` — the transformer ``kserve.Model`` and its entry
  point;
* :mod:`~fraud_detection.serving.requests` — scoring-request validation (4xx naming the field);
* :mod:`~fraud_detection.serving.mirror` — the bounded asynchronous Kafka mirror;
* :mod:`~fraud_detection.serving.client` — the transformer's keep-alive client to the predictor;
* :mod:`~fraud_detection.serving.app` — what the stock ``ModelServer`` lacks (error handling,
  body limit, loopback binding);
* :mod:`~fraud_detection.serving.launcher` — start/stop the servers as local processes
  (``fraud serve``, tests, benchmarks, the demo).
"""
