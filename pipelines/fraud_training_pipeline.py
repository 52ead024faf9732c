"""Compile the training pipeline for the Kubeflow UI.

Usage: ``python pipelines/fraud_training_pipeline.py [--image IMAGE]`` (or
``fraud pipeline compile --components-dir components``) rewrites
``pipelines/fraud_training_pipeline.yaml`` and the per-step ``components/<step>.yaml``.

The DAG and the components are defined in the installed package
(:mod:`fraud_detection.pipeline.dag`, :mod:`fraud_detection.pipeline.components`) so that
``fraud pipeline run`` works wherever the package is installed; this file only compiles them.
Upload the YAML in the Kubeflow UI, or use ``fraud pipeline submit`` / ``fraud pipeline schedule``.
A test fails when the committed YAML is stale.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HERE = Path(__file__).resolve().parent
PIPELINE_YAML = HERE / "fraud_training_pipeline.yaml"
COMPONENTS_DIR = HERE.parent / "components"


def main() -> None:
    """Compile the pipeline and its components into the repository."""
    from fraud_detection.pipeline.client import compile_components, compile_pipeline

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default=None, help="Component image (default $FRAUD_IMAGE).")
    args = parser.parse_args()
    print(compile_pipeline(PIPELINE_YAML, args.image))
    for path in compile_components(COMPONENTS_DIR, args.image):
        print(path)


if __name__ == "__main__":
    main()
