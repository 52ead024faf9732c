"""``fraud pipeline run`` end to end with ``kfp.local``: its exit status tells success from a
refused model, and several ``--data`` inputs are all ingested.

The data and the working directory are those of tests/integration/test_pipeline_local.py (its
fixtures, imported). A failed step (exit status 1) is covered there.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from test_pipeline_local import data, frame, workdir  # noqa: F401 - fixtures, shared
from typer.testing import CliRunner

from fraud_detection.cli import app
from fraud_detection.data.files import write_transactions
from fraud_detection.pipeline_cli import EXIT_GATE_REFUSED, EXIT_OK
from fraud_detection.registry import ModelRegistry
from fraud_detection.schema import TRANSACTION_ID

pytestmark = pytest.mark.integration


def run_command(out: Path, registry: Path, *args: str) -> tuple[int, str, dict]:
    """``fraud pipeline run`` with a small forest: exit status, output and metrics.json."""
    result = CliRunner().invoke(
        app,
        [
            "pipeline",
            "run",
            "--output-dir",
            str(out),
            "--registry",
            str(registry),
            "--param",
            "n_estimators=30",
            *args,
        ],
    )
    metrics_path = out / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    return result.exit_code, result.output, metrics


def test_two_data_files_are_both_ingested_and_the_deployed_model_exits_0(
    workdir: Path,  # noqa: F811 - the shared fixture
    frame: pd.DataFrame,  # noqa: F811 - the shared fixture
) -> None:
    half = len(frame) // 2
    first = write_transactions(frame.iloc[:half], workdir / "two" / "first.csv")
    second = write_transactions(frame.iloc[half:], workdir / "two" / "second.parquet")
    out, registry = workdir / "two-files", workdir / "two-files-registry"
    code, output, metrics = run_command(out, registry, "--data", str(first), "--data", str(second))
    assert code == EXIT_OK, output
    assert metrics["gate_passed"] and metrics["deployed"]
    assert metrics["trigger_reason"] == "manual"  # no --reason: the default
    assert ModelRegistry(registry).current_version() == metrics["model_version"]
    (raw,) = (out / "kfp").glob("*/ingest/raw")
    ingested = pd.read_parquet(raw)
    assert len(ingested) == len(frame)
    assert ingested[TRANSACTION_ID].tolist() == frame[TRANSACTION_ID].tolist()
    (report,) = (out / "kfp").glob("*/validate/report")
    assert f"Source: `{first}, {second}`" in report.read_text()


def test_a_model_the_gate_refuses_exits_3_and_is_not_deployed(
    workdir: Path,  # noqa: F811 - the shared fixture
    data: Path,  # noqa: F811 - the shared fixture
) -> None:
    out, registry = workdir / "refused", workdir / "refused-registry"
    code, output, metrics = run_command(out, registry, "--data", str(data), "--min-f1", "1")
    assert code == EXIT_GATE_REFUSED, output
    assert "gate: refused" in output and "FAILED: f1 >= min_f1" in output
    assert "deployed: no" in output
    assert metrics["gate_passed"] is False and metrics["deployed"] is False
    assert (out / "report.html").is_file()
    assert ModelRegistry(registry).list() == []
