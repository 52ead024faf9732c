"""Component ``export``: the model bundle (joblib, checked ONNX, feature state, drift reference)."""

from kfp.dsl import Artifact, Dataset, Input, Model, Output


def export(
    model: Input[Model],
    training_set: Input[Dataset],
    validated: Input[Dataset],
    evaluation: Input[Artifact],
    drift_reference_size: int,
    seed: int,
    trigger_reason: str,
    bundle: Output[Model],
):
    """Write the bundle directory: model.joblib (KServe sklearn runtime), model.onnx (fails the
    run if it differs from scikit-learn by more than 1e-5 on the test set), the online
    feature-state snapshot, the drift reference (held-out rows past the data's warm-up, with the
    model's scores) and the manifest with checksums, the trigger reason and the data's time
    span."""
    from fraud_detection.training.steps import export_step

    info = export_step(
        model.path,
        training_set.path,
        validated.path,
        evaluation.path,
        bundle.path,
        drift_reference_size=drift_reference_size,
        seed=seed,
        trigger_reason=trigger_reason,
    )
    bundle.metadata.update(
        {
            "model_version": info["model_version"],
            "onnx_max_abs_difference": info["onnx_max_abs_difference"],
            "trigger_reason": info["trigger_reason"],
            "data_start": info["data_start"],
            "data_end": info["data_end"],
            "drift_reference_rows": info["drift_reference_rows"],
            "drift_reference_days": info["drift_reference_days"],
            "drift_reference_warnings": info["drift_reference_warnings"],
        }
    )
