"""The run report, Kafka record decoding, and the ``fraud model`` commands."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from fraud_detection.bundle import MODEL_JOBLIB, Manifest, write_manifest
from fraud_detection.cli import app
from fraud_detection.registry import ModelRegistry
from fraud_detection.schema import AMOUNT, CARD_ID
from fraud_detection.training.evaluate import classification_metrics, expected_cost, threshold_curve
from fraud_detection.training.ingest import IngestError, arrow_safe, decode_records
from fraud_detection.training.report import render_report


def synthetic_evaluation() -> dict:
    rng = np.random.default_rng(0)
    labels = (rng.random(2000) < 0.05).astype(int)
    scores = np.clip(rng.random(2000) * 0.4 + labels * 0.5, 0, 1)
    curve = threshold_curve(labels, scores)
    return {
        "metrics": {**classification_metrics(labels, scores, 0.1), "card_precision_at_100": 0.2},
        "class_names": ["legitimate", "fraud"],
        "pr_curve": {"precision": [1.0, 0.5, 0.05], "recall": [0.0, 0.8, 1.0]},
        "threshold_curve": curve,
        "cost": {
            "threshold": curve["threshold"],
            "expected_cost": expected_cost(curve, 5.0, 120.0),
            "review_cost": 5.0,
            "fraud_amount": 120.0,
        },
        "feature_importances": {"amt_deviation": 0.6, "log_amount": 0.4},
        "training": {"params": {"n_estimators": 10}},
        "deployed": {"evaluated": False, "note": "no model is deployed"},
    }


def test_the_report_has_every_chart_and_the_gate_reasons() -> None:
    page = render_report(
        synthetic_evaluation(),
        {"passed": False, "reasons": ["FAILED: recall >= min_recall (0.5 vs 0.8)"]},
    )
    assert page.startswith("<!DOCTYPE html>")
    assert page.count("<img alt=") == 5
    for caption in (
        "Precision-recall curve",
        "Threshold",
        "Confusion matrix",
        "Feature importances",
        "Expected cost",
    ):
        assert f"<figcaption>{caption}</figcaption>" in page
    assert "class='failed'" in page and "FAILED: recall &gt;= min_recall" in page
    assert "no model is deployed" in page


@dataclass
class Record:
    value: bytes
    partition: int = 0
    offset: int = 0


def test_kafka_records_become_canonical_rows() -> None:
    records = [
        Record(
            b'{"TRANSACTION_ID": 1, "CUSTOMER_ID": 7, "TERMINAL_ID": 3, "TX_AMOUNT": 12.5,'
            b' "TX_DATETIME": "2018-04-01 00:00:31", "TX_FRAUD": 0}',
            offset=0,
        ),
    ]
    frame = decode_records(records, "transactions")
    assert frame.loc[0, CARD_ID] == "7" and frame.loc[0, AMOUNT] == 12.5
    with pytest.raises(IngestError, match="partition 0 offset 5: not a JSON transaction"):
        decode_records([Record(b"{oops", offset=5)], "transactions")
    with pytest.raises(IngestError, match="holds no records"):
        decode_records([], "transactions")


def test_mixed_value_types_are_written_as_text_for_parquet(tmp_path: Path) -> None:
    frame = pd.DataFrame({"amt": [1.5, "2.0", None], "card_id": ["a", "b", "c"]})
    safe = arrow_safe(frame)
    assert safe["amt"].tolist()[:2] == ["1.5", "2.0"] and safe["amt"].isna().tolist()[2]
    safe.to_parquet(tmp_path / "x.parquet")  # would raise on the mixed column


def make_bundle(directory: Path, version: str, created_at: str, recall: float) -> Path:
    directory.mkdir(parents=True)
    (directory / MODEL_JOBLIB).write_bytes(version.encode())
    manifest = Manifest(
        version,
        ["log_amount"],
        0.1,
        created_at=created_at,
        metrics={"recall": recall, "f1": 0.5, "pr_auc": 0.7},
    )
    write_manifest(directory, manifest)
    return directory


def test_model_list_and_rollback(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "registry")
    registry.promote(make_bundle(tmp_path / "a", "v1", "2026-01-01T00:00:00+00:00", 0.81))
    registry.promote(make_bundle(tmp_path / "b", "v2", "2026-02-01T00:00:00+00:00", 0.83))
    runner = CliRunner()
    listed = runner.invoke(app, ["model", "list", "--registry", str(registry.root)])
    assert listed.exit_code == 0, listed.output
    lines = [line for line in listed.output.splitlines() if "v1" in line or "v2" in line]
    assert "*" in lines[1] and "v2" in lines[1] and "0.8300" in lines[1]
    assert "*" not in lines[0]
    rolled = runner.invoke(app, ["model", "rollback", "--registry", str(registry.root)])
    assert rolled.exit_code == 0, rolled.output
    assert "current model: v1 (was v2)" in rolled.output
    assert registry.current_version() == "v1"
    unknown = runner.invoke(app, ["model", "rollback", "v9", "--registry", str(registry.root)])
    assert unknown.exit_code == 1 and "unknown model version 'v9'" in unknown.output


def test_model_list_reads_the_registry_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FRAUD_REGISTRY", str(tmp_path / "elsewhere"))
    result = CliRunner().invoke(app, ["model", "list"])
    assert result.exit_code == 0
    assert "no model in" in result.output and "elsewhere" in result.output
