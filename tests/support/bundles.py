"""Small, real model bundles for the serving tests and benchmarks.

A bundle here is made as the training pipeline exports one, with the export step's own ONNX
conversion and feature-state snapshot: a small class-weighted random forest trained on
:func:`~fraud_detection.features.compute_features` of generated transactions, dumped with
joblib, and a manifest with the sha256 of every file. It skips the pipeline's run time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from fraud_detection.bundle import FEATURE_STATE, MODEL_JOBLIB, MODEL_ONNX, Manifest, write_manifest
from fraud_detection.features import FEATURE_NAMES, compute_features
from fraud_detection.schema import LABEL, TIMESTAMP


@dataclass(frozen=True)
class SplitData:
    """A generated data set split in time: the bundle is made from ``train``."""

    train: pd.DataFrame
    held_out: pd.DataFrame


def make_data(
    n_transactions: int = 12_000, n_cards: int = 300, days: int = 30, seed: int = 7
) -> SplitData:
    """Generate transactions (2 % fraud, so a small forest learns something) split 85/15 in time."""
    from fraud_detection.data.generator import GeneratorConfig, generate_transactions

    frame = generate_transactions(
        GeneratorConfig(
            n_transactions=n_transactions, n_cards=n_cards, days=days, fraud_rate=0.02, seed=seed
        )
    )
    frame = frame.sort_values(TIMESTAMP, kind="stable").reset_index(drop=True)
    cut = int(len(frame) * 0.85)
    return SplitData(
        frame.iloc[:cut].reset_index(drop=True), frame.iloc[cut:].reset_index(drop=True)
    )


def build_bundle(
    target: str | Path,
    train: pd.DataFrame,
    model_version: str = "test-1",
    n_estimators: int = 20,
    max_depth: int | None = 8,
    threshold: float = 0.1,
) -> Path:
    """Train a forest on ``train`` and write a complete, checksummed bundle into ``target``."""
    import joblib
    from sklearn.ensemble import RandomForestClassifier

    from fraud_detection.training.export import convert_to_onnx, feature_state_snapshot

    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    features = compute_features(train)
    model = RandomForestClassifier(
        n_estimators=n_estimators,
        max_depth=max_depth,
        random_state=0,
        class_weight="balanced",
        n_jobs=1,
    )
    model.fit(features.to_numpy(), train[LABEL].to_numpy())
    joblib.dump(model, target / MODEL_JOBLIB)
    # The same conversion and snapshot as the pipeline's export step.
    (target / MODEL_ONNX).write_bytes(convert_to_onnx(model))
    feature_state_snapshot(train).save(target / FEATURE_STATE)
    write_manifest(
        target,
        Manifest(
            model_version=model_version, feature_names=list(FEATURE_NAMES), threshold=threshold
        ),
    )
    return target
