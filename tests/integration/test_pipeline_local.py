"""The whole pipeline through ``kfp.local`` (SubprocessRunner): gate, reproducibility, bad input.

Three real runs share one registry, in order: a good model (through the ``fraud pipeline run``
command, with a ``--reason`` that the manifest and the summary record), the same data and seed
again (compared with the first, now deployed), and a model trained on shuffled labels, which the
gate must refuse. Bad inputs must fail the run in ingest or validate, with a message naming the
problem.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from fraud_detection.bundle import verify_bundle
from fraud_detection.cli import app
from fraud_detection.data.files import write_transactions
from fraud_detection.data.generator import GeneratorConfig, generate_transactions
from fraud_detection.pipeline.components import STEPS
from fraud_detection.pipeline.local import PipelineRunError, run_local, run_summary
from fraud_detection.registry import ModelRegistry
from fraud_detection.schema import AMOUNT, LABEL, TIMESTAMP

pytestmark = pytest.mark.integration

#: Small, fast settings; the data has 1 % fraud so a 30-tree forest learns it clearly.
FAST = {"n_estimators": 30, "seed": 42}
#: Why the first model is trained (``--reason``).
REASON = "drift: 3 of the last 5 windows"
METRICS = ("recall", "precision", "f1", "pr_auc", "roc_auc", "card_precision_at_100")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pipeline")


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    config = GeneratorConfig(n_transactions=30_000, n_cards=600, days=30, fraud_rate=0.01, seed=11)
    return generate_transactions(config)


@pytest.fixture(scope="module")
def data(workdir: Path, frame: pd.DataFrame) -> Path:
    return write_transactions(frame, workdir / "data" / "transactions.parquet")


@pytest.fixture(scope="module")
def registry(workdir: Path) -> Path:
    return workdir / "registry"


@pytest.fixture(scope="module")
def first(workdir: Path, data: Path, registry: Path) -> dict[str, Any]:
    """A good model, run through the CLI; the registry state right after it."""
    out = workdir / "first"
    result = CliRunner().invoke(
        app,
        [
            "pipeline",
            "run",
            "--data",
            str(data),
            "--output-dir",
            str(out),
            "--registry",
            str(registry),
            "--seed",
            "42",
            "--param",
            "n_estimators=30",
            "--reason",
            REASON,
        ],
    )
    assert result.exit_code == 0, result.output
    return {
        "out": out,
        "output": result.output,
        "metrics": json.loads((out / "metrics.json").read_text()),
        "current": ModelRegistry(registry).current_version(),
    }


@pytest.fixture(scope="module")
def second(first: dict[str, Any], workdir: Path, data: Path, registry: Path) -> dict[str, Any]:
    """The same data and seed again, with the first model deployed."""
    run = run_local(
        {"data": [str(data)], "registry_dir": str(registry), **FAST}, workdir / "second"
    )
    return {"run": run, "metrics": run_summary(run)}


@pytest.fixture(scope="module")
def poor(
    second: dict[str, Any], workdir: Path, frame: pd.DataFrame, registry: Path
) -> dict[str, Any]:
    """Shuffled labels: a model that has learnt nothing."""
    shuffled = frame.assign(
        **{LABEL: np.random.default_rng(0).permutation(frame[LABEL].to_numpy())}
    )
    path = write_transactions(shuffled, workdir / "data" / "shuffled.parquet")
    run = run_local({"data": [str(path)], "registry_dir": str(registry), **FAST}, workdir / "poor")
    return {"run": run, "metrics": run_summary(run)}


def test_a_good_model_is_deployed(first: dict[str, Any]) -> None:
    metrics = first["metrics"]
    assert metrics["gate_passed"] is True and metrics["deployed"] is True
    assert first["current"] == metrics["model_version"]
    assert metrics["recall"] >= 0.75 and metrics["f1"] >= 0.05
    verify_bundle(metrics["bundle"])
    assert "gate: passed" in first["output"]


def test_the_reason_and_the_data_span_are_recorded(
    first: dict[str, Any], frame: pd.DataFrame
) -> None:
    metrics = first["metrics"]
    manifest = verify_bundle(metrics["bundle"])
    assert manifest.trigger_reason == metrics["trigger_reason"] == REASON
    assert f"reason:  {REASON}" in first["output"]
    stamps = pd.to_datetime(frame[TIMESTAMP], utc=True)
    assert manifest.data_start == metrics["data_start"] == stamps.min().isoformat()
    assert manifest.data_end == metrics["data_end"] == stamps.max().isoformat()
    # 30 days of data, all inside the features' 37-day warm-up: the reference is still written,
    # with a warning in the export step's log, the manifest and the summary.
    reference = metrics["drift_reference"]
    assert reference["warm_up_days_skipped"] == 0 and reference["rows"] == 5000
    assert "no held-out row after the first 37 days" in reference["warnings"][0]
    assert "warning: drift reference: no held-out row" in " ".join(first["output"].split())
    log = (first["out"] / "pipeline.log").read_text()
    assert "drift reference: no held-out row after the first 37 days" in log


def test_metrics_json_and_the_report_are_written(first: dict[str, Any]) -> None:
    metrics = first["metrics"]
    required = {*METRICS, "threshold", "gate_passed", "deployed", "model_version", "report"}
    assert required <= set(metrics)
    assert metrics["threshold"] == 0.1
    assert set(metrics["step_seconds"]) == set(STEPS)
    page = (first["out"] / metrics["report"]).read_text()
    assert page.count("data:image/png;base64,") == 8
    assert (first["out"] / "pipeline.log").stat().st_size > 0


def test_two_runs_with_the_same_data_and_seed_agree_exactly(
    first: dict[str, Any], second: dict[str, Any]
) -> None:
    for name in (*METRICS, "confusion_matrix"):
        assert second["metrics"][name] == first["metrics"][name], name
    got = pd.read_parquet(second["metrics"]["predictions"])
    want = pd.read_parquet(first["metrics"]["predictions"])
    pd.testing.assert_frame_equal(got, want, check_exact=True)
    first_files = verify_bundle(first["metrics"]["bundle"]).files
    second_files = verify_bundle(second["metrics"]["bundle"]).files
    assert second_files["model.joblib"] == first_files["model.joblib"]
    assert second_files["model.onnx"] == first_files["model.onnx"]


def test_the_second_run_was_compared_with_the_deployed_model(
    first: dict[str, Any], second: dict[str, Any]
) -> None:
    deployed = second["metrics"]["previously_deployed"]
    assert deployed["model_version"] == first["metrics"]["model_version"]
    assert deployed["f1"] == second["metrics"]["f1"]  # the same model scores the same
    assert second["metrics"]["gate_passed"] and second["metrics"]["deployed"]


def test_a_model_trained_on_shuffled_labels_is_not_deployed(
    second: dict[str, Any], poor: dict[str, Any], registry: Path
) -> None:
    metrics = poor["metrics"]
    assert metrics["gate_passed"] is False and metrics["deployed"] is False
    assert "deploy" not in metrics["step_seconds"]
    assert any(reason.startswith("FAILED") for reason in metrics["gate_reasons"])
    assert metrics["f1"] < 0.05
    models = ModelRegistry(registry)
    assert models.current_version() == second["metrics"]["model_version"]
    assert metrics["model_version"] not in {model.version for model in models.list()}
    verify_bundle(metrics["bundle"])  # exported all the same, for inspection


# --------------------------------------------------------------------------------- bad input
def bad_inputs(frame: pd.DataFrame, directory: Path) -> dict[str, tuple[list[str], str, str]]:
    """Input paths, the step that must fail, and what its message must say."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "unknown.csv").write_text("when,how_much\n2026-01-01,3\n")
    negative = frame.head(3000).copy()
    negative.loc[[10, 20, 30], AMOUNT] = -5.0
    return {
        "missing file": ([str(directory / "nope.csv")], "ingest", "nope.csv: no such file"),
        "empty data": (
            [str(write_transactions(frame.head(0), directory / "empty.csv"))],
            "ingest",
            "empty.csv: no transactions",
        ),
        "unknown schema": ([str(directory / "unknown.csv")], "ingest", "unknown schema"),
        "schema violation": (
            [str(write_transactions(negative, directory / "negative.csv"))],
            "validate",
            "amt: amt in range (3 rows)",
        ),
        "single class": (
            [str(write_transactions(frame.head(3000).assign(is_fraud=0), directory / "one.csv"))],
            "validate",
            "is_fraud has a single class",
        ),
    }


@pytest.mark.parametrize(
    "case", ["missing file", "empty data", "unknown schema", "schema violation", "single class"]
)
def test_bad_input_fails_the_run_early_naming_the_problem(
    case: str, frame: pd.DataFrame, workdir: Path, tmp_path: Path
) -> None:
    paths, step, message = bad_inputs(frame, workdir / "bad")[case]
    with pytest.raises(PipelineRunError) as raised:
        run_local({"data": paths, "registry_dir": str(tmp_path / "registry")}, tmp_path / "run")
    error = raised.value
    assert error.step == step
    assert message in error.error
    log = error.log_path.read_text()
    assert "Executing task 'train'" not in log  # failed before any training
    if step == "validate":
        assert error.report_path is not None and "FAILED" in error.report_path.read_text()
    assert not ModelRegistry(tmp_path / "registry").list()


def test_the_run_command_reports_a_failure_with_exit_code_1(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        [
            "pipeline",
            "run",
            "--data",
            str(tmp_path / "nope.parquet"),
            "--output-dir",
            str(tmp_path / "run"),
        ],
    )
    assert result.exit_code == 1
    assert "step 'ingest' failed" in result.output and "nope.parquet: no such file" in result.output
