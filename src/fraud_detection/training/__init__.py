"""Model training for the pipeline: data sets, the forest, evaluation, the gate, export, deploy.

The modules are plain library code with no dependency on Kubeflow Pipelines: the pipeline's
components (:mod:`fraud_detection.pipeline.components`) only read their inputs, call
:mod:`fraud_detection.training.steps` and record what it returns. Each step module is pure where
it can be (arrays in, dicts out); reading and writing files happens in
:mod:`~fraud_detection.training.steps`.
"""
