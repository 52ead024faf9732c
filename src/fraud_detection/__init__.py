"""Real-time card fraud detection on Kubeflow Pipelines and KServe."""

__version__ = "0.1.0"
