"""Component ``train``: features, the split and the random forest."""

from kfp.dsl import Dataset, Input, Model, Output


def train(
    validated: Input[Dataset],
    split: str,
    test_size: float,
    train_start: str,
    train_end: str,
    test_start: str,
    test_end: str,
    train_days: int,
    gap_days: int,
    test_days: int,
    exclude_known_compromised: bool,
    n_estimators: int,
    max_depth: int,
    min_samples_leaf: int,
    max_features: str,
    class_weight: str,
    max_train_rows: int,
    seed: int,
    model: Output[Model],
    training_set: Output[Dataset],
):
    """Compute the point-in-time features, split (stratified or temporal), fit the seeded
    forest; write the model directory and the training table (features, label, split)."""
    from fraud_detection.training.dataset import SplitConfig
    from fraud_detection.training.steps import train_step
    from fraud_detection.training.train import TrainParams

    split_config = SplitConfig(
        kind=split,
        test_size=test_size,
        seed=seed,
        train_start=train_start,
        train_end=train_end,
        test_start=test_start,
        test_end=test_end,
        train_days=train_days,
        gap_days=gap_days,
        test_days=test_days,
        exclude_known_compromised=exclude_known_compromised,
    )
    params = TrainParams(
        n_estimators=n_estimators,
        max_depth=max_depth,
        min_samples_leaf=min_samples_leaf,
        max_features=max_features,
        class_weight=class_weight,
        max_train_rows=max_train_rows,
        seed=seed,
    )
    training = train_step(validated.path, model.path, training_set.path, split_config, params)
    model.metadata.update({"framework": "scikit-learn", **training["fit"]})
    training_set.metadata.update(
        {key: value for key, value in training["split"].items() if not isinstance(value, dict)}
    )
