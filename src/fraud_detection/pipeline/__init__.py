"""The Kubeflow pipeline: components, the DAG, local runs (``kfp.local``) and the KFP client.

Nothing here runs at import time: :func:`fraud_detection.pipeline.dag.build_pipeline` builds the
components and the pipeline for a given container image when asked, so the image is one
configuration value (``FRAUD_IMAGE``) read at compile or run time.
"""
