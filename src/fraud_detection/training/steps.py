"""The pipeline's steps as plain functions over file paths: the I/O edge of training.

Each Kubeflow component (:mod:`fraud_detection.pipeline.components`) is a thin shell that calls
one of these with its artifacts' paths and parameters, and records what it returns (metadata,
metrics). They are just as callable from tests or a notebook. Formats between steps:

* data sets are Parquet files (canonical column names);
* the trained model is a directory with ``model.joblib`` and ``training.json`` (parameters,
  split, data fingerprint, what the fit did);
* the evaluation and the gate decision are JSON files;
* the bundle is a directory laid out as :mod:`fraud_detection.bundle` defines.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from fraud_detection.features import FEATURE_NAMES
from fraud_detection.schema import (
    AMOUNT,
    CARD_ID,
    LABEL,
    TIMESTAMP,
    TRANSACTION_ID,
    flag_scores,
)

if TYPE_CHECKING:
    from fraud_detection.training.served import ServedModel

log = logging.getLogger(__name__)

MODEL_FILE = "model.joblib"
TRAINING_FILE = "training.json"
#: Score column of the predictions data set.
SCORE = "fraud_probability"
FLAGGED = "flagged"
#: Top-k of the Card Precision@k metric (the handbook's analyst capacity per day).
CARD_PRECISION_K = 100
_PR_CURVE_POINTS = 300
#: The check, beyond the schema, that training data needs.
CHECK_BOTH_CLASSES = "both classes present"


class InsufficientDataError(ValueError):
    """The data are valid but cannot train a classifier (for example, a single class)."""


# ------------------------------------------------------------------------------------ helpers
def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: str | Path, data: Mapping[str, Any]) -> Path:
    """Write ``data`` as indented JSON (numpy scalars converted, NaN/inf as null)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_jsonable(data), indent=2, sort_keys=True) + "\n")
    return path


def read_json(path: str | Path) -> dict[str, Any]:
    """Read a JSON object written by :func:`write_json`."""
    return json.loads(Path(path).read_text())


def _write_parquet(frame: pd.DataFrame, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path, index=False)


# ------------------------------------------------------------------------------------- ingest
def ingest_step(
    paths: Sequence[str],
    kafka_bootstrap: str,
    kafka_topic: str,
    kafka_max_records: int,
    out_path: str | Path,
) -> dict[str, Any]:
    """Read the input (files or Kafka) and write it as Parquet, values as read."""
    from fraud_detection.training.ingest import arrow_safe, ingest

    frame, source = ingest(paths, kafka_bootstrap, kafka_topic, kafka_max_records)
    _write_parquet(arrow_safe(frame), out_path)
    return {"rows": len(frame), "columns": list(map(str, frame.columns)), "source": source}


# ----------------------------------------------------------------------------------- validate
def validation_markdown(report: Any, source: str) -> str:
    """A validation report as Markdown (rendered by the Kubeflow UI)."""
    lines = [f"# Data validation: {'passed' if report.ok else 'FAILED'}", ""]
    lines.append(f"Source: `{source}`; {report.n_rows:,} rows.")
    if report.ok:
        return "\n".join(lines) + "\n"
    lines += ["", "| column | check | rows | example rows | example values | rule |"]
    lines.append("|---|---|---:|---|---|---|")
    for failure in report.failures:
        cells = [
            failure.column,
            failure.check,
            f"{failure.count:,}",
            ", ".join(map(str, failure.examples)),
            ", ".join(failure.values),
            failure.message,
        ]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def validate_step(
    in_path: str | Path,
    out_path: str | Path,
    report_path: str | Path,
    source: str = "",
    max_invalid_fraction: float = 0.0,
) -> dict[str, Any]:
    """Validate labelled transactions with pandera; write the report, then fail or type them.

    Raises :class:`~fraud_detection.data.validation.DataValidationError` (after writing the
    report and printing it) when a check fails, and :class:`InsufficientDataError` when the
    labels hold a single class. With ``max_invalid_fraction`` > 0, failing *rows* up to that
    share of the data are set aside (quarantined, and counted in the report) instead; the rest
    must then pass every check.
    """
    from rich.console import Console

    from fraud_detection.data.validation import (
        DataValidationError,
        Failure,
        ValidationReport,
        to_canonical_types,
        validate_transactions,
    )

    if not 0.0 <= max_invalid_fraction < 1.0:
        raise ValueError(f"max_invalid_fraction: must be in [0, 1), got {max_invalid_fraction}")
    frame = pd.read_parquet(in_path)
    source = source or str(in_path)
    report_file = Path(report_path)
    report_file.parent.mkdir(parents=True, exist_ok=True)
    report = validate_transactions(frame, labelled=True)
    quarantined: list[int] = []
    if not report.ok:
        rows = report.failing_rows() if max_invalid_fraction > 0 else None
        if rows is None or len(rows) > max_invalid_fraction * len(frame):
            report_file.write_text(validation_markdown(report, source))
            Console(width=160).print(report.render())
            raise DataValidationError(report, source)
        quarantined = rows
        frame = frame.drop(index=frame.index[rows]).reset_index(drop=True)
        remaining = validate_transactions(frame, labelled=True)
        if not remaining.ok:  # pragma: no cover - the schema is row-wise
            raise DataValidationError(remaining, source)
    typed = to_canonical_types(frame)
    counts = typed[LABEL].value_counts()
    if len(counts) < 2:
        only = int(counts.index[0]) if len(counts) else None
        message = "training needs fraudulent and legitimate transactions"
        failure = Failure(LABEL, CHECK_BOTH_CLASSES, len(typed), [], [str(only)], message)
        report_file.write_text(validation_markdown(ValidationReport(len(typed), [failure]), source))
        raise InsufficientDataError(
            f"{source}: {LABEL} has a single class (all {len(typed):,} rows are {only}); {message}"
        )
    text = validation_markdown(report, source)
    if quarantined:
        share = len(quarantined) / (len(typed) + len(quarantined))
        text += (
            f"\n**{len(quarantined):,} failing rows ({share:.4%}) were set aside** "
            f"(max_invalid_fraction={max_invalid_fraction:g}); training continues on "
            f"{len(typed):,} rows.\n"
        )
    report_file.write_text(text)
    _write_parquet(typed, out_path)
    return {
        "rows": len(typed),
        "quarantined_rows": len(quarantined),
        "frauds": int(counts.get(1, 0)),
        "fraud_rate": float(counts.get(1, 0) / len(typed)),
        "first": typed[TIMESTAMP].min().isoformat(),
        "last": typed[TIMESTAMP].max().isoformat(),
    }


# -------------------------------------------------------------------------------------- train
def train_step(
    dataset_path: str | Path,
    model_dir: str | Path,
    table_path: str | Path,
    split: Any,
    params: Any,
) -> dict[str, Any]:
    """Features, split and fit; write the model directory and the training table.

    ``split`` is a :class:`~fraud_detection.training.dataset.SplitConfig`, ``params`` a
    :class:`~fraud_detection.training.train.TrainParams`.
    """
    import joblib

    from fraud_detection.training.dataset import TRAIN, build_training_table, feature_matrix
    from fraud_detection.training.export import data_fingerprint
    from fraud_detection.training.train import fit_forest

    frame = pd.read_parquet(dataset_path)
    table, split_summary = build_training_table(frame, split)
    features, labels = feature_matrix(table, TRAIN)
    model, fit_info = fit_forest(features, labels, params)
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, model_dir / MODEL_FILE)
    _write_parquet(table, table_path)
    training = {
        "feature_names": list(FEATURE_NAMES),
        "params": params.to_dict(),
        "split": {**split.to_dict(), **split_summary},
        "fit": fit_info,
        "data_fingerprint": data_fingerprint(frame),
        "data_rows": len(frame),
    }
    write_json(model_dir / TRAINING_FILE, training)
    return training


# ----------------------------------------------------------------------------------- evaluate
def _load_model(model_dir: str | Path, name: str = MODEL_FILE) -> Any:
    import joblib

    return joblib.load(Path(model_dir) / name)


def _pr_curve(labels: np.ndarray, scores: np.ndarray) -> dict[str, list[float]]:
    from sklearn.metrics import precision_recall_curve

    precision, recall, _ = precision_recall_curve(labels, scores)
    if len(precision) > _PR_CURVE_POINTS:
        keep = np.unique(np.linspace(0, len(precision) - 1, _PR_CURVE_POINTS).round().astype(int))
        precision, recall = precision[keep], recall[keep]
    return {"precision": precision.tolist(), "recall": recall.tolist()}


def score_metrics(
    labels: np.ndarray, scores: np.ndarray, test: pd.DataFrame, threshold: float
) -> dict[str, Any]:
    """Classification metrics plus Card Precision@100 of scores on the test rows."""
    from fraud_detection.training.evaluate import card_precision_at_k, classification_metrics

    metrics = classification_metrics(labels, scores, threshold)
    days = pd.to_datetime(test[TIMESTAMP], utc=True).dt.floor("D").to_numpy()
    metrics[f"card_precision_at_{CARD_PRECISION_K}"] = card_precision_at_k(
        days, test[CARD_ID].to_numpy(), labels, scores, CARD_PRECISION_K
    )
    return metrics


def deployed_bundle(registry_dir: str | Path | None) -> Path | None:
    """The registry's current bundle directory, or None when nothing is deployed there."""
    from fraud_detection.registry import ModelRegistry

    current = ModelRegistry(registry_dir or None).current()
    return current if current is not None and current.is_dir() else None


def find_deployed(
    deploy_target: str,
    registry_dir: str | Path | None,
    service_name: str = "fraud-detector",
    namespace: str = "",
    api: Any = None,
) -> Path | ServedModel | None:
    """The model to compare with, where the deploy step would put the new one.

    ``local``: the registry's current bundle (:func:`deployed_bundle`). ``kserve``: the
    InferenceService ``service_name`` in ``namespace`` ("" = the pod's), located through ``api``
    (a ``CustomObjectsApi``; default: the cluster's), as a
    :class:`~fraud_detection.training.served.ServedModel`. ``auto``: kserve inside a pod.
    """
    from fraud_detection.training.deploy import KSERVE, resolve_target
    from fraud_detection.training.served import served_model

    if resolve_target(deploy_target) == KSERVE:
        return served_model(service_name, namespace, api)
    return deployed_bundle(registry_dir or None)


def _score_bundle(
    bundle_dir: Path,
    features: np.ndarray,
    labels: np.ndarray,
    test: pd.DataFrame,
    threshold: float,
    role: str,
) -> tuple[str, dict[str, Any]]:
    """Verify a bundle and score it on the test set: (status, record); ``role`` names it in
    notes ("deployed", "served")."""
    from fraud_detection.bundle import MODEL_JOBLIB, BundleError, verify_bundle
    from fraud_detection.training.gate import COMPARED, INCOMPARABLE, UNAVAILABLE

    try:
        manifest = verify_bundle(bundle_dir)
    except BundleError as exc:
        return UNAVAILABLE, {"evaluated": False, "note": f"the {role} bundle is unusable: {exc}"}
    if list(manifest.feature_names) != list(FEATURE_NAMES) or MODEL_JOBLIB not in manifest.files:
        return INCOMPARABLE, {
            "evaluated": False,
            "model_version": manifest.model_version,
            "note": f"the {role} model uses other features; not comparable on this test set",
        }
    model = _load_model(bundle_dir, MODEL_JOBLIB)
    scores = model.predict_proba(features)[:, 1]
    return COMPARED, {
        "evaluated": True,
        "model_version": manifest.model_version,
        "path": str(bundle_dir),
        "metrics": score_metrics(labels, scores, test, threshold),
    }


def evaluate_deployed(
    bundle_dir: Path | None,
    features: np.ndarray,
    labels: np.ndarray,
    test: pd.DataFrame,
    threshold: float,
) -> dict[str, Any]:
    """The deployed model's metrics on the same test set, or a note saying why there are none."""
    from fraud_detection.training.gate import NO_DEPLOYED_MODEL

    if bundle_dir is None:
        return {"evaluated": False, "note": NO_DEPLOYED_MODEL}
    return _score_bundle(bundle_dir, features, labels, test, threshold, "deployed")[1]


def evaluate_served(
    served: ServedModel,
    features: np.ndarray,
    labels: np.ndarray,
    test: pd.DataFrame,
    threshold: float,
    environ: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The served model's metrics on the same test set, or a ``status`` and ``note`` saying why
    there are none.

    The bundle at ``served.storage_uri`` is copied into a temporary directory (S3 settings from
    ``environ``, default the process environment), verified and scored as
    :func:`evaluate_deployed` scores the registry's. ``status`` is one of
    :mod:`fraud_detection.training.gate`'s ``COMPARED``, ``NOT_DEPLOYED``, ``INCOMPARABLE``,
    ``UNAVAILABLE``.
    """
    import tempfile

    from fraud_detection.training.gate import UNAVAILABLE
    from fraud_detection.training.served import FOUND
    from fraud_detection.training.storage import StorageError, fetch_tree

    record: dict[str, Any] = {"evaluated": False, **served.to_dict()}
    if served.status != FOUND:
        return record
    with tempfile.TemporaryDirectory(prefix="served-bundle-") as tmp:
        try:
            bundle = fetch_tree(served.storage_uri, Path(tmp) / "bundle", environ)
        except StorageError as exc:
            return {
                **record,
                "status": UNAVAILABLE,
                "note": f"the served bundle is unreachable: {exc}",
            }
        try:
            status, scored = _score_bundle(bundle, features, labels, test, threshold, "served")
        except Exception as exc:  # a model that cannot be loaded or scored here
            note = f"the served model could not be scored: {type(exc).__name__}: {exc}"
            return {**record, "status": UNAVAILABLE, "note": note}
    scored.pop("path", None)  # the temporary copy; storage_uri says where it is
    return {**record, **scored, "status": status}


def evaluate_step(
    model_dir: str | Path,
    table_path: str | Path,
    threshold: float,
    evaluation_path: str | Path,
    predictions_path: str | Path,
    deployed_dir: str | Path | ServedModel | None = None,
    review_cost: float = 5.0,
    fraud_amount: float = 0.0,
    seed: int | None = None,
) -> dict[str, Any]:
    """Score the test set; write the evaluation record and the predictions.

    ``deployed_dir`` is the bundle currently deployed (None: nothing deployed), or, in a
    cluster, the InferenceService's model (:func:`find_deployed`); it is scored on the same test
    set (:func:`evaluate_deployed`, :func:`evaluate_served`) and the record's ``deployed`` says
    so, or why not. ``fraud_amount`` 0 means the test set's average fraud amount. ``seed``
    (default: the training seed) seeds the bootstrap intervals and the permutation importances.

    The new model's metrics (not the deployed model's) also hold the alerts a day, the share of
    the fraud amount caught and the confidence intervals
    (:func:`~fraud_detection.training.evaluate.confidence_intervals`).
    """
    from fraud_detection.training.dataset import SPLIT_COLUMN, TEST, feature_matrix
    from fraud_detection.training.evaluate import (
        CLASS_NAMES,
        alert_rate,
        confidence_intervals,
        expected_cost,
        fraud_value_caught,
        mean_fraud_amount,
        permutation_importances,
        reliability,
        roc_points,
        score_histogram,
        threshold_curve,
    )
    from fraud_detection.training.train import feature_importances

    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold: must be in (0, 1), got {threshold}")
    model = _load_model(model_dir)
    training = read_json(Path(model_dir) / TRAINING_FILE)
    table = pd.read_parquet(table_path)
    test = table[table[SPLIT_COLUMN] == TEST].reset_index(drop=True)
    features, labels = feature_matrix(test)
    scores = model.predict_proba(features)[:, 1]
    seed = int(training["params"]["seed"]) if seed is None else seed
    flagged = flag_scores(scores, threshold)
    metrics = score_metrics(labels, scores, test, threshold)
    metrics.update(alert_rate(metrics["flagged"], test[TIMESTAMP]))
    metrics.update(fraud_value_caught(test[AMOUNT].to_numpy(), labels, flagged))
    metrics["confidence_intervals"] = confidence_intervals(labels, scores, threshold, seed)
    curve = threshold_curve(labels, scores)
    amount = fraud_amount or mean_fraud_amount(test[AMOUNT].to_numpy(), labels)
    fpr, tpr, roc_thresholds = roc_points(labels, scores)
    evaluation = {
        "metrics": metrics,
        "class_names": list(CLASS_NAMES),
        "pr_curve": _pr_curve(labels, scores),
        "roc_curve": {"fpr": fpr, "tpr": tpr, "threshold": roc_thresholds},
        "threshold_curve": curve,
        "cost": {
            "threshold": curve["threshold"],
            "expected_cost": expected_cost(curve, review_cost, amount),
            "review_cost": review_cost,
            "fraud_amount": amount,
            "fraud_amount_source": "parameter" if fraud_amount else "test mean",
        },
        "score_histogram": score_histogram(labels, scores),
        "reliability": reliability(labels, scores),
        "feature_importances": feature_importances(model, FEATURE_NAMES),
        "permutation_importances": permutation_importances(
            model, features, labels, FEATURE_NAMES, seed
        ),
        "training": {key: training[key] for key in ("params", "split", "fit")},
        "deployed": _evaluate_baseline(deployed_dir, features, labels, test, threshold),
    }
    write_json(evaluation_path, evaluation)
    predictions = test[[TRANSACTION_ID, CARD_ID, TIMESTAMP, AMOUNT, LABEL]].copy()
    predictions[SCORE] = scores
    predictions[FLAGGED] = flagged
    _write_parquet(predictions, predictions_path)
    return evaluation


def _evaluate_baseline(
    deployed: str | Path | ServedModel | None,
    features: np.ndarray,
    labels: np.ndarray,
    test: pd.DataFrame,
    threshold: float,
) -> dict[str, Any]:
    from fraud_detection.training.served import ServedModel

    if isinstance(deployed, ServedModel):
        return evaluate_served(deployed, features, labels, test, threshold)
    return evaluate_deployed(
        Path(deployed) if deployed else None, features, labels, test, threshold
    )


# --------------------------------------------------------------------------------------- gate
def gate_step(evaluation_path: str | Path, config: Any, decision_path: str | Path) -> bool:
    """Decide on the evaluation record; write the decision; return whether it passed.

    ``config`` is a :class:`~fraud_detection.training.gate.GateConfig`.
    """
    from fraud_detection.training.gate import UNAVAILABLE, decide, not_compared_reason

    evaluation = read_json(evaluation_path)
    deployed = evaluation.get("deployed") or {}
    decision = decide(
        evaluation["metrics"],
        deployed.get("metrics") if deployed.get("evaluated") else None,
        config,
        not_compared=not_compared_reason(deployed),
        unavailable=deployed.get("status") == UNAVAILABLE,
    )
    record = {
        **decision.to_dict(),
        "config": {
            "min_recall": config.min_recall,
            "min_f1": config.min_f1,
            "tolerance": config.tolerance,
            "allow_uncompared": config.allow_uncompared,
        },
        "deployed_model_version": deployed.get("model_version"),
    }
    if deployed.get("source"):
        record["compared_with"] = {
            key: deployed[key]
            for key in ("source", "service", "storage_uri", "status")
            if deployed.get(key)
        }
    write_json(decision_path, record)
    return decision.passed


# ------------------------------------------------------------------------------------- export
def export_step(
    model_dir: str | Path,
    table_path: str | Path,
    dataset_path: str | Path,
    evaluation_path: str | Path,
    bundle_dir: str | Path,
    drift_reference_size: int = 5000,
    seed: int = 42,
    created_at: datetime | None = None,
    trigger_reason: str = "manual",
) -> dict[str, Any]:
    """Write the bundle: joblib and ONNX models (checked), feature state, drift reference, manifest.

    The drift reference is drawn from the test rows past the data's warm-up, scored by the model
    (:func:`~fraud_detection.training.export.draw_drift_reference`); how it was drawn goes into
    the manifest's ``parameters["drift_reference"]``, and a reference too short for the monitor
    is logged as a warning. The manifest also records ``trigger_reason`` and the time span of the
    rows trained and tested on (``data_start``, ``data_end``).

    Raises :class:`~fraud_detection.training.export.OnnxParityError` when the ONNX model's
    probabilities differ from scikit-learn's by more than 1e-5 on the test set.
    """
    from fraud_detection.bundle import (
        DRIFT_REFERENCE,
        FEATURE_STATE,
        MODEL_JOBLIB,
        MODEL_ONNX,
        Manifest,
        sha256_file,
        verify_bundle,
        write_manifest,
    )
    from fraud_detection.features import timestamps_to_micros
    from fraud_detection.training.dataset import SPLIT_COLUMN, TEST, feature_matrix
    from fraud_detection.training.export import (
        check_onnx_parity,
        convert_to_onnx,
        draw_drift_reference,
        feature_state_snapshot,
        iso_utc,
        library_versions,
        model_version,
        save_drift_reference,
    )

    model_dir, bundle_dir = Path(model_dir), Path(bundle_dir)
    model = _load_model(model_dir)
    training = read_json(model_dir / TRAINING_FILE)
    evaluation = read_json(evaluation_path)
    table = pd.read_parquet(table_path)
    dataset = pd.read_parquet(dataset_path)
    test_features, _ = feature_matrix(table[table[SPLIT_COLUMN] == TEST])

    onnx_bytes = convert_to_onnx(model)
    expected = model.predict_proba(test_features)[:, 1]
    onnx_difference = check_onnx_parity(onnx_bytes, expected, test_features)

    bundle_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model_dir / MODEL_FILE, bundle_dir / MODEL_JOBLIB)
    (bundle_dir / MODEL_ONNX).write_bytes(onnx_bytes)
    feature_state_snapshot(dataset).save(bundle_dir / FEATURE_STATE)
    table_times = timestamps_to_micros(table[TIMESTAMP])
    features, times, held_out, source = drift_reference_rows(table, dataset, training["split"])
    reference = draw_drift_reference(
        features,
        times,
        held_out,
        lambda rows: model.predict_proba(rows)[:, 1],
        drift_reference_size,
        seed,
        data_start=int(timestamps_to_micros(dataset[TIMESTAMP]).min()),
    )
    save_drift_reference(bundle_dir / DRIFT_REFERENCE, reference.features, reference.scores)
    for warning in reference.warnings:
        log.warning("drift reference: %s", warning)

    created = created_at or datetime.now(UTC)
    metrics = {
        key: value
        for key, value in evaluation["metrics"].items()
        if isinstance(value, int | float | list)
    }
    metrics["onnx_max_abs_difference"] = onnx_difference
    manifest = Manifest(
        model_version=model_version(
            created, sha256_file(bundle_dir / MODEL_JOBLIB), training["data_fingerprint"]
        ),
        feature_names=list(FEATURE_NAMES),
        threshold=float(evaluation["metrics"]["threshold"]),
        created_at=created.isoformat(),
        libraries=library_versions(),
        data_fingerprint=training["data_fingerprint"],
        parameters=_jsonable(
            {
                **training["params"],
                "split": training["split"],
                "threshold": evaluation["metrics"]["threshold"],
                "drift_reference_size": drift_reference_size,
                "drift_reference": {**reference.describe(), "source": source, "seed": seed},
                "fit": training["fit"],
            }
        ),
        metrics=_jsonable(metrics),
        trigger_reason=trigger_reason,
        data_start=iso_utc(table_times.min()),
        data_end=iso_utc(table_times.max()),
    )
    write_manifest(bundle_dir, manifest)
    verify_bundle(bundle_dir)
    return {
        "model_version": manifest.model_version,
        "files": manifest.files,
        "onnx_max_abs_difference": onnx_difference,
        "drift_reference_rows": reference.rows,
        "drift_reference_days": reference.days,
        "drift_reference_warnings": list(reference.warnings),
        "trigger_reason": trigger_reason,
        "data_start": manifest.data_start,
        "data_end": manifest.data_end,
    }


def drift_reference_rows(
    table: pd.DataFrame, dataset: pd.DataFrame, split: Mapping[str, Any]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """Where the drift reference is drawn from: features, times, the rows eligible, and a
    description.

    With the temporal split, every transaction after the training window (the gap and the test
    window): traffic the model never saw, as live traffic is. The test set alone would not do,
    since it leaves out the cards known to be compromised, which live traffic still carries
    (their velocity features differ). With the stratified split, the test rows.
    """
    from fraud_detection.features import compute_features, timestamp_to_micros, timestamps_to_micros
    from fraud_detection.training.dataset import SPLIT_COLUMN, TEST, feature_matrix

    windows = split.get("windows") or {}
    if split.get("kind") == "temporal" and windows.get("train_end") and windows.get("test_end"):
        times = timestamps_to_micros(dataset[TIMESTAMP])
        after = timestamp_to_micros(windows["train_end"])
        until = timestamp_to_micros(windows["test_end"])
        held_out = (times >= after) & (times < until)
        features = compute_features(dataset).to_numpy()
        source = "every transaction after the training window (gap and test), scored out of sample"
        return features, times, held_out, source
    features, _ = feature_matrix(table)
    held_out = (table[SPLIT_COLUMN] == TEST).to_numpy()
    source = "the test split's rows, scored out of sample"
    return features, timestamps_to_micros(table[TIMESTAMP]), held_out, source


# ------------------------------------------------------------------------------------- report
def report_step(
    evaluation_path: str | Path,
    decision_path: str | Path | None,
    bundle_dir: str | Path | None,
    report_path: str | Path,
) -> Path:
    """Render the run report (HTML with embedded charts)."""
    from fraud_detection.bundle import read_manifest
    from fraud_detection.training.report import render_report

    evaluation = read_json(evaluation_path)
    if bundle_dir is not None:
        evaluation["model_version"] = read_manifest(bundle_dir).model_version
    decision = read_json(decision_path) if decision_path else None
    path = Path(report_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_report(evaluation, decision))
    return path


# ------------------------------------------------------------------------------------- deploy
def deploy_step(
    bundle_dir: str | Path,
    bundle_uri: str,
    target: str,
    registry_dir: str,
    service_name: str,
    namespace: str,
    record_path: str | Path,
    predictor_image: str = "fraud-detection-predictor:0.1.0",
    transformer_image: str = "fraud-detection-transformer:0.1.0",
    api: Any = None,
    models_uri: str = "",
    environ: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Deploy the bundle (local registry or InferenceService); write what was done.

    kserve: with ``models_uri`` ("" for none) the bundle is first copied into the model store
    (:func:`~fraud_detection.training.deploy.publish_bundle`) and the InferenceService is pointed
    at ``<models_uri>/<model_version>/``; without, at the export artifact ``bundle_uri``. The
    record says where (``storage_uri``), and, with a store, ``artifact_uri``, ``models_uri`` and
    ``store`` (``copied`` or ``exists``). ``models_uri`` plays no part in a local deployment.
    """
    from fraud_detection.bundle import verify_bundle
    from fraud_detection.training.deploy import (
        LOCAL,
        ServiceSpec,
        current_namespace,
        deploy_kserve,
        promote_local,
        publish_bundle,
        resolve_target,
        storage_uri,
    )

    manifest = verify_bundle(bundle_dir)
    if resolve_target(target) == LOCAL:
        record = promote_local(bundle_dir, registry_dir or None)
    else:
        store: dict[str, Any] = {}
        uri = storage_uri(bundle_uri)
        if models_uri.strip():
            published, action = publish_bundle(bundle_dir, models_uri, environ)
            store = {"artifact_uri": uri, "models_uri": models_uri.strip(), "store": action}
            uri = published
        spec = ServiceSpec(
            name=service_name,
            namespace=namespace or current_namespace(),
            storage_uri=uri,
            model_version=manifest.model_version,
            predictor_image=predictor_image,
            transformer_image=transformer_image,
        )
        record = {**deploy_kserve(spec, api), **store}
    write_json(record_path, record)
    return record
