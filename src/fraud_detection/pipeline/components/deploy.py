"""Component ``deploy``: promote the bundle (local registry) or roll out the InferenceService."""

from kfp.dsl import Artifact, Input, Model, Output


def deploy(
    bundle: Input[Model],
    deploy_target: str,
    registry_dir: str,
    service_name: str,
    namespace: str,
    predictor_image: str,
    transformer_image: str,
    models_uri: str,
    deployment: Output[Artifact],
):
    """``local``: promote into the model registry (atomic switch of ``current``). ``kserve``:
    point the InferenceService's transformer and predictor at the bundle's storageUri (creating
    the service when there is none); with ``models_uri``, the bundle is first copied to
    ``<models_uri>/<model_version>/`` (the model store) and the service points there. ``auto``:
    kserve inside a Kubernetes pod, local elsewhere."""
    from fraud_detection.training.steps import deploy_step

    record = deploy_step(
        bundle.path,
        bundle.uri,
        deploy_target,
        registry_dir,
        service_name,
        namespace,
        deployment.path,
        predictor_image=predictor_image,
        transformer_image=transformer_image,
        models_uri=models_uri,
    )
    deployment.metadata.update({k: v for k, v in record.items() if v is not None})
