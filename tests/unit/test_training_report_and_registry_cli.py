"""The run report, Kafka record decoding, and the ``fraud model`` commands."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from fraud_detection.bundle import MODEL_JOBLIB, Manifest, write_manifest
from fraud_detection.cli import app
from fraud_detection.registry import ModelRegistry
from fraud_detection.schema import AMOUNT, CARD_ID
from fraud_detection.training.evaluate import (
    alert_rate,
    classification_metrics,
    confidence_intervals,
    expected_cost,
    fraud_value_caught,
    reliability,
    score_histogram,
    threshold_curve,
)
from fraud_detection.training.ingest import IngestError, arrow_safe, decode_records
from fraud_detection.training.report import deployment_statement, render_report, training_rows

IMPORTANCES = {"amt_deviation": 0.1, "log_amount": 0.5, "hour": 0.3, "is_night": 0.1}
PERMUTATION = {"amt_deviation": 0.02, "log_amount": 0.2, "hour": -0.01, "is_night": 0.05}


def synthetic_evaluation() -> dict:
    rng = np.random.default_rng(0)
    labels = (rng.random(2000) < 0.05).astype(int)
    scores = np.clip(rng.random(2000) * 0.4 + labels * 0.5, 0, 1)
    amounts = rng.gamma(2.0, 60.0, size=2000)
    stamps = pd.Timestamp("2026-01-01", tz="UTC") + pd.to_timedelta(rng.random(2000) * 10, "D")
    curve = threshold_curve(labels, scores)
    metrics = {**classification_metrics(labels, scores, 0.1), "card_precision_at_100": 0.2}
    metrics.update(alert_rate(metrics["flagged"], stamps))
    metrics.update(fraud_value_caught(amounts, labels, scores >= 0.1))
    metrics["confidence_intervals"] = confidence_intervals(labels, scores, 0.1, 0, resamples=50)
    return {
        "metrics": metrics,
        "class_names": ["legitimate", "fraud"],
        "pr_curve": {"precision": [1.0, 0.5, 0.05], "recall": [0.0, 0.8, 1.0]},
        "threshold_curve": curve,
        "cost": {
            "threshold": curve["threshold"],
            "expected_cost": expected_cost(curve, 5.0, 162.8),
            "review_cost": 5.0,
            "fraud_amount": 162.8,
            "fraud_amount_source": "test mean",
        },
        "score_histogram": score_histogram(labels, scores),
        "reliability": reliability(labels, scores),
        "feature_importances": IMPORTANCES,
        "permutation_importances": {
            "scoring": "average_precision",
            "repeats": 5,
            "seed": 0,
            "rows": 2000,
            "frauds": int(labels.sum()),
            "test_rows": 2000,
            "mean": PERMUTATION,
            "std": dict.fromkeys(PERMUTATION, 0.01),
        },
        "training": {
            "params": {"n_estimators": 10, "seed": 42},
            "split": {
                "kind": "stratified",
                "test_size": 0.2,
                "seed": 42,
                "train_start": "",
                "train_end": "",
                "test_start": "",
                "test_end": "",
                "train_days": 0,
                "gap_days": 7,
                "test_days": 7,
                "exclude_known_compromised": True,
                "train_rows": 8000,
                "train_frauds": 400,
                "test_rows": 2000,
                "test_frauds": int(labels.sum()),
            },
            "fit": {"rows_used": 8000},
        },
        "deployed": {"evaluated": False, "note": "no model is deployed"},
    }


def figures(page: str) -> list[tuple[str, str]]:
    """(alt text, caption) of each figure, in page order; each holds one image and caption."""
    found = re.findall(
        r"<figure><img alt='([^']*)' src='data:image/png;base64,[^']+'>"
        r"<figcaption>([^<]*)</figcaption></figure>",
        page,
    )
    assert len(found) == page.count("<figure>") == page.count("<img ")
    return found


def test_the_report_has_every_chart_and_the_gate_reasons() -> None:
    page = render_report(
        synthetic_evaluation(),
        {"passed": False, "reasons": ["FAILED: recall >= min_recall (0.5 vs 0.8)"]},
    )
    assert page.startswith("<!DOCTYPE html>")
    alts = [alt for alt, _ in figures(page)]
    assert alts == [
        "Precision-recall curve",
        "Recall, precision and F1 by threshold",
        "Score distribution",
        "Reliability",
        "Confusion matrix",
        "Impurity importance",
        "Permutation importance",
        "Expected cost",
    ]
    assert "class='failed'" in page and "FAILED: recall &gt;= min_recall" in page


def test_captions_explain_their_own_chart_once() -> None:
    captions = [caption for _, caption in figures(render_report(synthetic_evaluation()))]
    assert len(set(captions)) == len(captions)  # no caption repeated
    for alt, caption in figures(render_report(synthetic_evaluation())):
        assert caption.lower() != alt.lower() and len(caption) > 60, alt  # not the title again
    cost = captions[-1]
    assert "162.80, the mean amount of the test set&#x27;s frauds" in cost
    assert "review of 5 (pipeline parameter review_cost)" in cost
    assert "amount units" in cost


def test_the_report_shows_intervals_alerts_and_fraud_value_beside_the_estimates() -> None:
    evaluation = synthetic_evaluation()
    metrics = evaluation["metrics"]
    page = render_report(evaluation)
    recall = metrics["confidence_intervals"]["recall"]
    row = (
        f"<tr><td>recall</td><td>{metrics['recall']:.4f}</td>"
        f"<td>{recall['low']:.3f} to {recall['high']:.3f}</td><td>-</td></tr>"
    )
    assert row in page
    f1 = metrics["confidence_intervals"]["f1"]
    assert f"<td>{f1['low']:.3f} to {f1['high']:.3f}</td>" in page
    assert f"{metrics['alerts_per_day']:,.1f} alerts a day" in page
    assert f"over the {metrics['test_span_days']} days the test set spans" in page
    assert f"{metrics['fraud_value_caught_share']:.1%} of the fraud amount caught" in page
    assert "50 bootstrap resamples of the test set (seed 0)" in page


def test_the_deployment_statement_follows_the_gate_and_names_the_baseline() -> None:
    nothing = {"evaluated": False, "note": "no model is deployed"}
    previous = {"evaluated": True, "model_version": "v1", "metrics": {}}
    passed, baseline = deployment_statement({"passed": True}, nothing)
    assert "deploy step, which runs after this report, deploys this model." in passed
    assert baseline.startswith("No comparison with a previously deployed model: no model is")
    refused, _ = deployment_statement({"passed": False}, nothing)
    assert refused == "The gate refused this model: it is not deployed."
    refused, baseline = deployment_statement({"passed": False}, previous)
    assert refused == "The gate refused this model: it is not deployed; v1 stays deployed."
    assert "v1, was scored on the same test set" in baseline
    passed, _ = deployment_statement({"passed": True}, previous)
    assert "deploys this model in place of v1." in passed
    unknown, _ = deployment_statement(None, nothing)
    assert "not known" in unknown
    page = render_report(synthetic_evaluation(), {"passed": True, "reasons": []})
    assert "<h2>Deployment</h2>" in page and "deploys this model." in page


def capture_charts(monkeypatch: pytest.MonkeyPatch) -> dict[str, list]:
    """Record the labels of every horizontal bar chart and the font sizes of every figure."""
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.text import Text

    seen: dict[str, list] = {"bars": [], "fonts": []}
    barh, savefig = Axes.barh, Figure.savefig

    def record_barh(self: Axes, labels: Any, *args: Any, **kwargs: Any) -> Any:
        seen["bars"].append(list(labels))
        return barh(self, labels, *args, **kwargs)

    def record_savefig(self: Figure, *args: Any, **kwargs: Any) -> Any:
        self.canvas.draw()
        texts = [t for t in self.findobj(Text) if t.get_visible() and t.get_text().strip()]
        seen["fonts"].append(min(t.get_fontsize() for t in texts))
        return savefig(self, *args, **kwargs)

    monkeypatch.setattr(Axes, "barh", record_barh)
    monkeypatch.setattr(Figure, "savefig", record_savefig)
    return seen


def test_importances_are_sorted_by_value_and_every_label_is_readable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen = capture_charts(monkeypatch)
    render_report(synthetic_evaluation())
    impurity, permutation = seen["bars"]
    assert impurity == ["log_amount", "hour", "amt_deviation", "is_night"]  # ties by name
    assert permutation == ["log_amount", "is_night", "amt_deviation", "hour"]
    assert len(seen["fonts"]) == 8 and min(seen["fonts"]) >= 9


def test_the_training_table_lists_only_the_fields_of_the_split_used() -> None:
    training = synthetic_evaluation()["training"]
    fields = [field for field, _ in training_rows(training)]
    split = [field for field in fields if field.startswith("split.")]
    assert split == [
        "split.kind",
        "split.test_size",
        "split.seed",
        "split.train_rows",
        "split.train_frauds",
        "split.test_rows",
        "split.test_frauds",
    ]
    assert "params.n_estimators" in fields and "fit.rows_used" in fields
    temporal = {
        **training,
        "split": {
            **training["split"],
            "kind": "temporal",
            "windows": {
                "train_start": "2026-01-01T00:00:00+00:00",
                "train_end": "2026-01-20T00:00:00+00:00",
                "test_start": "2026-01-27T00:00:00+00:00",
                "test_end": "2026-02-03T00:00:00+00:00",
                "gap_days": "7.0",
            },
            "test_rows_excluded_known_compromised": 12,
        },
    }
    split = [field for field, _ in training_rows(temporal) if field.startswith("split.")]
    assert "split.windows.test_start" in split and "split.exclude_known_compromised" in split
    assert "split.test_rows_excluded_known_compromised" in split
    assert not {"split.test_size", "split.seed", "split.train_start"} & set(split)


# ------------------------------------------------------------------------- a real local run
@pytest.mark.integration
def test_the_report_of_a_real_run_says_what_metrics_json_says_about_deployment(
    tmp_path: Path,
) -> None:
    """A good model (deployed) and then a model of shuffled labels (refused), one registry."""
    from fraud_detection.data.files import write_transactions
    from fraud_detection.data.generator import GeneratorConfig, generate_transactions

    config = GeneratorConfig(n_transactions=20_000, n_cards=500, days=30, fraud_rate=0.01, seed=11)
    frame = generate_transactions(config)
    shuffled = frame.assign(is_fraud=np.random.default_rng(0).permutation(frame["is_fraud"]))
    runs = {}
    for name, data in (("good", frame), ("shuffled", shuffled)):
        path = write_transactions(data, tmp_path / f"{name}.parquet")
        out = tmp_path / name
        arguments = ["pipeline", "run", "--data", str(path), "--output-dir", str(out)]
        arguments += ["--registry", str(tmp_path / "registry"), "--param", "n_estimators=20"]
        result = CliRunner().invoke(app, arguments)
        # A refused model is a completed run too (the command's exit status tells it apart).
        assert (out / "metrics.json").is_file(), result.output
        metrics = json.loads((out / "metrics.json").read_text())
        runs[name] = (metrics, (out / metrics["report"]).read_text())

    metrics, page = runs["good"]
    assert metrics["gate_passed"] is True and metrics["deployed"] is True
    assert "deploy step, which runs after this report, deploys this model." in page
    assert "it is not deployed" not in page
    assert "No comparison with a previously deployed model: no model is deployed" in page
    assert metrics["model_version"] in page

    refused, page = runs["shuffled"]
    assert refused["gate_passed"] is False and refused["deployed"] is False
    assert (
        f"The gate refused this model: it is not deployed; {metrics['model_version']} stays "
        "deployed." in page
    )
    assert f"deployed before ({metrics['model_version']})" in page
    assert "deploys this model" not in page


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
