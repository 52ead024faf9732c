"""Component ``export``: the model bundle (joblib, checked ONNX, feature state, drift reference)."""

from kfp.dsl import Artifact, Dataset, Input, Model, Output


def export(
    model: Input[Model],
    training_set: Input[Dataset],
    validated: Input[Dataset],
    evaluation: Input[Artifact],
    drift_reference_size: int,
    seed: int,
    bundle: Output[Model],
):
    """Write the bundle directory: model.joblib (KServe sklearn runtime), model.onnx (fails the
    run if it differs from scikit-learn by more than 1e-5 on the test set), the online
    feature-state snapshot, a drift reference sample and the manifest with checksums."""
    from fraud_detection.training.steps import export_step

    info = export_step(
        model.path,
        training_set.path,
        validated.path,
        evaluation.path,
        bundle.path,
        drift_reference_size=drift_reference_size,
        seed=seed,
    )
    bundle.metadata.update(
        {
            "model_version": info["model_version"],
            "onnx_max_abs_difference": info["onnx_max_abs_difference"],
        }
    )
