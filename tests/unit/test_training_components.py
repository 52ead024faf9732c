"""Every component through ``.python_func`` with artifacts whose paths are in ``tmp_path``.

One chain of real steps on small generated data (module-scoped: it is shared by the tests):
ingest a CSV.gz file, validate, train, evaluate, gate, export (with its drift reference and the
manifest's reason and data span), report and deploy into a temporary registry, plus the failures
each early step must report.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pytest
from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Markdown, Metrics, Model

from fraud_detection.bundle import (
    DRIFT_REFERENCE,
    FEATURE_STATE,
    MODEL_JOBLIB,
    MODEL_ONNX,
    verify_bundle,
)
from fraud_detection.data.files import write_transactions
from fraud_detection.data.generator import GeneratorConfig, generate_transactions
from fraud_detection.data.validation import DataValidationError
from fraud_detection.features import FEATURE_NAMES
from fraud_detection.monitoring.reference import load_reference
from fraud_detection.pipeline.components import build_components
from fraud_detection.registry import ModelRegistry
from fraud_detection.schema import AMOUNT, LABEL, TIMESTAMP, TRANSACTION_ID
from fraud_detection.training.dataset import SPLIT_COLUMN, TEST
from fraud_detection.training.export import WARM_UP_DAYS
from fraud_detection.training.ingest import IngestError
from fraud_detection.training.steps import InsufficientDataError, export_step

TRAIN_ARGS: dict[str, Any] = {
    "split": "stratified",
    "test_size": 0.25,
    "train_start": "",
    "train_end": "",
    "test_start": "",
    "test_end": "",
    "train_days": 0,
    "gap_days": 7,
    "test_days": 7,
    "exclude_known_compromised": True,
    "n_estimators": 20,
    "max_depth": 12,
    "min_samples_leaf": 1,
    "max_features": "sqrt",
    "class_weight": "balanced",
    "max_train_rows": 200_000,
    "seed": 42,
}


def artifact(kind: type, directory: Path, name: str) -> Any:
    """A KFP artifact of ``kind`` whose path is ``directory/name``."""
    return kind(name=name, uri=str(directory / name))


@pytest.fixture(scope="module")
def steps() -> dict[str, Any]:
    """The plain component functions (``.python_func``) of the default-image components."""
    return {name: component.python_func for name, component in build_components().items()}


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    # 60 days: the drift reference skips the first 37 (warm-up) and spans the other 23.
    config = GeneratorConfig(n_transactions=20_000, n_cards=400, days=60, fraud_rate=0.01, seed=8)
    return generate_transactions(config)


@pytest.fixture(scope="module")
def chain(
    steps: dict[str, Any], frame: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """Run every step once, in pipeline order; return the artifacts and results."""
    root = tmp_path_factory.mktemp("chain")
    source = write_transactions(frame, root / "input" / "transactions.csv.gz")
    out: dict[str, Any] = {"root": root, "registry": root / "registry"}
    out["raw"] = artifact(Dataset, root, "raw")
    steps["ingest"](
        data=[str(root / "input" / "*.csv.gz")],
        kafka_bootstrap="",
        kafka_topic="",
        kafka_max_records=0,
        raw=out["raw"],
    )
    out["source"] = source
    out["validated"] = artifact(Dataset, root, "validated")
    out["validation_report"] = artifact(Markdown, root, "validation_report")
    steps["validate"](
        raw=out["raw"],
        max_invalid_fraction=0.0,
        validated=out["validated"],
        report=out["validation_report"],
    )
    out["model"] = artifact(Model, root, "model")
    out["training_set"] = artifact(Dataset, root, "training_set")
    steps["train"](
        validated=out["validated"],
        model=out["model"],
        training_set=out["training_set"],
        **TRAIN_ARGS,
    )
    for name, kind in (
        ("evaluation", Artifact),
        ("predictions", Dataset),
        ("metrics", Metrics),
        ("classification", ClassificationMetrics),
    ):
        out[name] = artifact(kind, root, name)
    steps["evaluate"](
        model=out["model"],
        training_set=out["training_set"],
        threshold=0.1,
        registry_dir=str(out["registry"]),
        review_cost=5.0,
        fraud_amount=0.0,
        evaluation=out["evaluation"],
        predictions=out["predictions"],
        metrics=out["metrics"],
        classification=out["classification"],
    )
    out["decision"] = artifact(Artifact, root, "decision")
    out["passed"] = steps["gate"](
        evaluation=out["evaluation"],
        min_recall=0.5,
        min_f1=0.1,
        tolerance=0.02,
        decision=out["decision"],
    )
    out["bundle"] = artifact(Model, root, "bundle")
    steps["export"](
        model=out["model"],
        training_set=out["training_set"],
        validated=out["validated"],
        evaluation=out["evaluation"],
        drift_reference_size=500,
        seed=42,
        trigger_reason="drift: 3 of the last 5 windows",
        bundle=out["bundle"],
    )
    out["run_report"] = artifact(HTML, root, "run_report")
    steps["report"](
        evaluation=out["evaluation"],
        decision=out["decision"],
        bundle=out["bundle"],
        run_report=out["run_report"],
    )
    out["deployment"] = artifact(Artifact, root, "deployment")
    steps["deploy"](
        bundle=out["bundle"],
        deploy_target="local",
        registry_dir=str(out["registry"]),
        service_name="fraud-detector",
        namespace="",
        predictor_image="unused",
        transformer_image="unused",
        models_uri="",
        deployment=out["deployment"],
    )
    return out


def test_ingest_reads_globs_and_records_the_source(
    chain: dict[str, Any], frame: pd.DataFrame
) -> None:
    raw = pd.read_parquet(chain["raw"].path)
    assert len(raw) == len(frame) == chain["raw"].metadata["rows"]
    assert str(chain["source"]) in chain["raw"].metadata["source"]


def test_validate_types_the_data_and_writes_a_passing_report(chain: dict[str, Any]) -> None:
    validated = pd.read_parquet(chain["validated"].path)
    assert str(validated[AMOUNT].dtype) == "float64"
    assert str(validated[LABEL].dtype) == "int8"
    assert "passed" in Path(chain["validation_report"].path).read_text()
    assert chain["validated"].metadata["frauds"] == 200


def test_train_writes_the_model_and_the_training_table(chain: dict[str, Any]) -> None:
    model = joblib.load(Path(chain["model"].path) / "model.joblib")
    assert model.n_estimators == 20 and model.random_state == 42
    table = pd.read_parquet(chain["training_set"].path)
    assert set(FEATURE_NAMES) <= set(table.columns)
    assert chain["training_set"].metadata["test_rows"] == 5000
    training = json.loads((Path(chain["model"].path) / "training.json").read_text())
    assert training["params"]["n_estimators"] == 20
    assert training["data_fingerprint"].startswith("sha256:")


def test_evaluate_logs_kfp_metrics_and_classification_metrics(chain: dict[str, Any]) -> None:
    evaluation = json.loads(Path(chain["evaluation"].path).read_text())
    metrics = chain["metrics"].metadata
    for name in ("recall", "precision", "f1", "pr_auc", "roc_auc", "card_precision_at_100"):
        assert metrics[name] == pytest.approx(evaluation["metrics"][name])
    assert metrics["threshold"] == 0.1
    classification = chain["classification"].metadata
    rows = classification["confusionMatrix"]["rows"]
    assert [row["row"] for row in rows] == [
        [float(value) for value in row] for row in evaluation["metrics"]["confusion_matrix"]
    ]
    assert len(classification["confidenceMetrics"]) > 10
    assert evaluation["deployed"] == {"evaluated": False, "note": "no model is deployed"}
    predictions = pd.read_parquet(chain["predictions"].path)
    assert len(predictions) == 5000
    assert predictions["fraud_probability"].between(0, 1).all()
    assert (predictions["flagged"] == (predictions["fraud_probability"] >= 0.1)).all()


def test_a_good_model_passes_the_gate(chain: dict[str, Any]) -> None:
    decision = json.loads(Path(chain["decision"].path).read_text())
    assert chain["passed"] is True and decision["passed"] is True
    assert chain["decision"].metadata["passed"] is True


def test_export_writes_a_verified_bundle(chain: dict[str, Any]) -> None:
    bundle = Path(chain["bundle"].path)
    manifest = verify_bundle(bundle)
    assert {MODEL_JOBLIB, MODEL_ONNX, FEATURE_STATE, DRIFT_REFERENCE} <= set(manifest.files)
    assert manifest.model_version == chain["bundle"].metadata["model_version"]
    assert manifest.feature_names == list(FEATURE_NAMES)
    assert manifest.threshold == 0.1
    assert manifest.parameters["n_estimators"] == 20
    assert manifest.parameters["split"]["kind"] == "stratified"
    assert manifest.metrics["onnx_max_abs_difference"] <= 1e-5
    assert manifest.data_fingerprint.startswith("sha256:")
    assert {"scikit-learn", "skl2onnx", "onnxruntime"} <= set(manifest.libraries)
    assert manifest.trigger_reason == "drift: 3 of the last 5 windows"
    assert chain["bundle"].metadata["trigger_reason"] == manifest.trigger_reason
    table = pd.read_parquet(chain["training_set"].path)
    assert manifest.data_start == table[TIMESTAMP].min().isoformat()
    assert manifest.data_end == table[TIMESTAMP].max().isoformat()


def test_the_drift_reference_is_held_out_rows_past_the_warm_up_scored_by_the_model(
    chain: dict[str, Any],
) -> None:
    bundle = Path(chain["bundle"].path)
    reference = load_reference(bundle)
    assert reference.rows == 500 and reference.scores is not None
    table = pd.read_parquet(chain["training_set"].path)
    # Each reference row is a test row (matched on its whole feature vector) ...
    keyed = table.set_index(list(FEATURE_NAMES))
    rows = keyed.loc[[tuple(row) for row in reference.features]]
    assert (rows[SPLIT_COLUMN] == TEST).all()
    # ... from after the first 37 days of the data, in time order ...
    first_day = table[TIMESTAMP].min().floor("D")
    assert (rows[TIMESTAMP] >= first_day + pd.Timedelta(days=WARM_UP_DAYS)).all()
    assert rows[TIMESTAMP].is_monotonic_increasing
    # ... with the model's own (out-of-sample) score.
    predictions = pd.read_parquet(chain["predictions"].path).set_index(TRANSACTION_ID)
    expected = predictions.loc[rows[TRANSACTION_ID], "fraud_probability"].round(6)
    np.testing.assert_array_equal(reference.scores, expected.to_numpy())
    drawn = verify_bundle(bundle).parameters["drift_reference"]
    assert drawn["rows"] == 500 and drawn["warm_up_days_skipped"] == WARM_UP_DAYS
    assert drawn["days"] == 23 and drawn["warnings"] == [] and drawn["seed"] == 42
    assert chain["bundle"].metadata["drift_reference_days"] == 23


def test_export_warns_when_the_reference_is_short(
    chain: dict[str, Any], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="fraud_detection.training.steps"):
        info = export_step(
            chain["model"].path,
            chain["training_set"].path,
            chain["validated"].path,
            chain["evaluation"].path,
            tmp_path / "bundle",
            drift_reference_size=100_000,
            seed=42,
        )
    (warning,) = info["drift_reference_warnings"]
    assert "fewer than the 100,000 requested" in warning
    assert f"drift reference: {warning}" in caplog.messages
    manifest = verify_bundle(tmp_path / "bundle")
    assert manifest.parameters["drift_reference"]["warnings"] == [warning]
    assert manifest.trigger_reason == "manual"  # the default


def test_report_embeds_the_charts(chain: dict[str, Any]) -> None:
    page = Path(chain["run_report"].path).read_text()
    assert page.count("data:image/png;base64,") == 8
    assert "Gate: <span class='passed'>passed</span>" in page


def test_deploy_promotes_into_the_registry(chain: dict[str, Any]) -> None:
    registry = ModelRegistry(chain["registry"])
    assert registry.current_version() == chain["bundle"].metadata["model_version"]
    assert chain["deployment"].metadata["target"] == "local"


def test_a_second_evaluation_compares_with_the_deployed_model(
    steps: dict[str, Any], chain: dict[str, Any], tmp_path: Path
) -> None:
    outputs = {
        name: artifact(kind, tmp_path, name)
        for name, kind in (
            ("evaluation", Artifact),
            ("predictions", Dataset),
            ("metrics", Metrics),
            ("classification", ClassificationMetrics),
        )
    }
    steps["evaluate"](
        model=chain["model"],
        training_set=chain["training_set"],
        threshold=0.1,
        registry_dir=str(chain["registry"]),
        review_cost=5.0,
        fraud_amount=0.0,
        **outputs,
    )
    evaluation = json.loads(Path(outputs["evaluation"].path).read_text())
    deployed = evaluation["deployed"]
    assert deployed["evaluated"] is True
    assert deployed["model_version"] == chain["bundle"].metadata["model_version"]
    assert deployed["metrics"]["f1"] == evaluation["metrics"]["f1"]  # the same model
    assert outputs["metrics"].metadata["deployed_recall"] == evaluation["metrics"]["recall"]
    strict = artifact(Artifact, tmp_path, "strict_decision")
    assert (
        steps["gate"](
            evaluation=outputs["evaluation"],
            min_recall=0.99,
            min_f1=0.1,
            tolerance=0.0,
            decision=strict,
        )
        is False
    )


# ------------------------------------------------------------------------------ early failures
def run_ingest(steps: dict[str, Any], tmp_path: Path, paths: list[str]) -> Any:
    raw = artifact(Dataset, tmp_path, "raw")
    steps["ingest"](data=paths, kafka_bootstrap="", kafka_topic="", kafka_max_records=0, raw=raw)
    return raw


def test_ingest_names_a_missing_file(steps: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(IngestError, match=r"missing\.csv: no such file"):
        run_ingest(steps, tmp_path, [str(tmp_path / "missing.csv")])
    with pytest.raises(IngestError, match="no input"):
        run_ingest(steps, tmp_path, [])


def test_ingest_names_an_unknown_schema(steps: dict[str, Any], tmp_path: Path) -> None:
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    with pytest.raises(IngestError, match=r"unknown schema.*canonical schema lacks amt"):
        run_ingest(steps, tmp_path, [str(tmp_path / "other.csv")])


def test_ingest_refuses_empty_data(
    steps: dict[str, Any], frame: pd.DataFrame, tmp_path: Path
) -> None:
    write_transactions(frame.head(0), tmp_path / "empty.parquet")
    with pytest.raises(IngestError, match=r"empty\.parquet: no transactions"):
        run_ingest(steps, tmp_path, [str(tmp_path / "empty.parquet")])


def test_validate_fails_with_the_report(
    steps: dict[str, Any], frame: pd.DataFrame, tmp_path: Path
) -> None:
    bad = frame.head(500).copy()
    bad.loc[[3, 7], AMOUNT] = -1.0
    write_transactions(bad, tmp_path / "bad.csv")
    raw = run_ingest(steps, tmp_path, [str(tmp_path / "bad.csv")])
    report = artifact(Markdown, tmp_path, "report")
    validated = artifact(Dataset, tmp_path, "validated")
    with pytest.raises(DataValidationError, match=r"amt: amt in range \(2 rows\)"):
        steps["validate"](raw=raw, max_invalid_fraction=0.0, validated=validated, report=report)
    text = Path(report.path).read_text()
    assert "FAILED" in text and "| amt | amt in range | 2 | 3, 7 | -1.0, -1.0 |" in text
    assert not Path(validated.path).exists()


def test_validate_refuses_a_single_class(
    steps: dict[str, Any], frame: pd.DataFrame, tmp_path: Path
) -> None:
    write_transactions(frame.head(500).assign(is_fraud=0), tmp_path / "legit.parquet")
    raw = run_ingest(steps, tmp_path, [str(tmp_path / "legit.parquet")])
    report = artifact(Markdown, tmp_path, "report")
    with pytest.raises(InsufficientDataError, match=r"single class.*all 500 rows are 0"):
        steps["validate"](
            raw=raw,
            max_invalid_fraction=0.0,
            validated=artifact(Dataset, tmp_path, "validated"),
            report=report,
        )
    assert "| is_fraud | both classes present | 500 |" in Path(report.path).read_text()


def test_validate_can_set_aside_a_small_share_of_failing_rows(
    steps: dict[str, Any], frame: pd.DataFrame, tmp_path: Path
) -> None:
    bad = frame.head(1000).copy()
    bad.loc[[3, 7], AMOUNT] = -1.0
    write_transactions(bad, tmp_path / "negative.csv")
    raw = run_ingest(steps, tmp_path, [str(tmp_path / "negative.csv")])
    report = artifact(Markdown, tmp_path, "report")
    validated = artifact(Dataset, tmp_path, "validated")
    with pytest.raises(DataValidationError):  # 0.2 % failing rows > 0.1 % allowed
        steps["validate"](raw=raw, max_invalid_fraction=0.001, validated=validated, report=report)
    steps["validate"](raw=raw, max_invalid_fraction=0.005, validated=validated, report=report)
    kept = pd.read_parquet(validated.path)
    assert len(kept) == 998 and (kept[AMOUNT] >= 0).all()
    assert validated.metadata["quarantined_rows"] == 2
    assert "2 failing rows (0.2000%) were set aside" in Path(report.path).read_text()
