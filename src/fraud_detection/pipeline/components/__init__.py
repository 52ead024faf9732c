"""The pipeline's components: one thin function per step, in one module per step.

Each function reads its artifacts' paths and parameters, calls one step of
:mod:`fraud_detection.training.steps` and records what it returns. Kubeflow Pipelines embeds the
function's source in the compiled YAML and runs it in the project's image, so all imports are
inside the functions and no logic lives here. :func:`build_components` wraps them as KFP
components for an image.
"""

import os
from collections.abc import Callable
from typing import Any

#: Environment variable naming the project's container image (the components' base image).
IMAGE_ENV = "FRAUD_IMAGE"
DEFAULT_IMAGE = "fraud-detection-pipeline:0.1.0"
#: Step names in pipeline order.
STEPS: tuple[str, ...] = (
    "ingest",
    "validate",
    "train",
    "evaluate",
    "gate",
    "export",
    "report",
    "deploy",
)


def default_image() -> str:
    """``$FRAUD_IMAGE``, else :data:`DEFAULT_IMAGE`."""
    return os.environ.get(IMAGE_ENV) or DEFAULT_IMAGE


def component_functions() -> dict[str, Callable[..., Any]]:
    """The plain component functions by step name (importing this needs kfp)."""
    from fraud_detection.pipeline.components.deploy import deploy
    from fraud_detection.pipeline.components.evaluate import evaluate
    from fraud_detection.pipeline.components.export import export
    from fraud_detection.pipeline.components.gate import gate
    from fraud_detection.pipeline.components.ingest import ingest
    from fraud_detection.pipeline.components.report import report
    from fraud_detection.pipeline.components.train import train
    from fraud_detection.pipeline.components.validate import validate

    functions = {
        "ingest": ingest,
        "validate": validate,
        "train": train,
        "evaluate": evaluate,
        "gate": gate,
        "export": export,
        "report": report,
        "deploy": deploy,
    }
    return {step: functions[step] for step in STEPS}


def build_components(image: str | None = None) -> dict[str, Any]:
    """KFP components of every step, running in ``image`` (default: :func:`default_image`).

    The image already holds the project and its dependencies, so nothing is pip-installed at
    run time (not even kfp).
    """
    from kfp import dsl

    base_image = image or default_image()
    return {
        step: dsl.component(
            function,
            base_image=base_image,
            packages_to_install=[],
            install_kfp_package=False,
        )
        for step, function in component_functions().items()
    }
