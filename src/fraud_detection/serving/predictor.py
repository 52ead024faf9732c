"""The predictor: a ``kserve.Model`` serving a bundle's random forest.

onnxruntime by default, the sklearn ``model.joblib`` as a fallback (``--runtime``). Before
loading, every file is checked against its sha256 in the manifest; a mismatch stops the server
with a clear error, and a missing or ambiguous model raises a specific error, as KServe's sklearn
server does (see :mod:`fraud_detection.serving.model`).

Protocols (rows are feature vectors in :data:`~fraud_detection.features.FEATURE_NAMES` order):

* v1: ``{"instances": [[f1, ..., fn], ...]}`` →
  ``{"predictions": [p, ...], "model_version": "..."}``
* v2: one input tensor ``features`` (FP32/FP64, shape ``[rows, n]``) → one output tensor
  ``fraud_probability`` (FP32, shape ``[rows]``), ``model_version`` set.

Malformed rows get a 4xx naming the field, never a 5xx: rows of the wrong length, values that
are not JSON numbers (text, booleans, null), non-finite or out-of-range numbers, no rows, a
tensor whose shape or datatype does not fit, or more than ``--max_rows`` rows (413).

Model updates: when serving the registry's current model, a watcher thread loads the new bundle
when ``current`` changes and swaps it in; ``SIGHUP`` forces a reload. Requests in flight finish
on the model they started with.

Run: ``python -m fraud_detection.serving.predictor --model_name fraud-detector
--model_dir DIR`` (or ``--registry ROOT``) plus any standard KServe server argument.
"""

from __future__ import annotations

import argparse
import logging
import sys
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from fraud_detection.features import FEATURE_NAMES
from fraud_detection.serving.model import (
    RUNTIMES,
    BundleSource,
    BundleWatcher,
    FollowsBundle,
    ScoringModel,
    load_scoring_model,
)
from fraud_detection.serving.requests import DEFAULT_MAX_BODY_BYTES, RequestError

# Named, not __name__: run with `python -m`, this module is __main__.
log = logging.getLogger("fraud_detection.serving.predictor")

DEFAULT_MODEL_NAME = "fraud-detector"
FEATURES_INPUT = "features"
PROBABILITY_OUTPUT = "fraud_probability"
#: Most feature rows scored per request (larger batches get 413; the body limit bounds it too).
DEFAULT_MAX_ROWS = 10_000
#: v2 datatypes the predictor reads as feature values.
NUMERIC_DATATYPES = frozenset(
    {
        "FP16",
        "FP32",
        "FP64",
        "INT8",
        "INT16",
        "INT32",
        "INT64",
        "UINT8",
        "UINT16",
        "UINT32",
        "UINT64",
    }
)
_NUMBER_TYPES = frozenset({int, float})


def rows_from_v1(payload: Any, n_features: int, max_rows: int = DEFAULT_MAX_ROWS) -> np.ndarray:
    """The feature matrix of a v1 body; :class:`RequestError` naming the problem otherwise."""
    if not isinstance(payload, dict):
        raise RequestError.single("body", "must be a JSON object with instances")
    key = "instances" if "instances" in payload else "inputs" if "inputs" in payload else None
    if key is None:
        raise RequestError.single("instances", "is required")
    values = payload[key]
    if not isinstance(values, list):
        raise RequestError.single(key, f"must be an array of rows of {n_features} numbers")
    if values and _is_number_row(values):
        values = [values]  # one row, sent flat
    _check_row_count(len(values), key, max_rows)
    for index, row in enumerate(values):
        if not isinstance(row, list) or len(row) != n_features:
            found = f"has {len(row)} values" if isinstance(row, list) else "is not an array"
            raise RequestError.single(
                key, f"must be rows of {n_features} numbers; row {index} {found}"
            )
        if not _is_number_row(row):
            raise RequestError.single(
                key, f"must be rows of numbers; row {index} holds something else"
            )
    return _matrix(values, key, n_features)


def _is_number_row(values: list[Any]) -> bool:
    """Whether every value is a JSON number (booleans and numeric text are not)."""
    return set(map(type, values)) <= _NUMBER_TYPES


def _check_row_count(rows: int, where: str, max_rows: int) -> None:
    if rows == 0:
        raise RequestError.single(where, "must not be empty")
    if rows > max_rows:
        raise RequestError.single(where, f"{rows} rows; at most {max_rows} per request", status=413)


def _flat_numbers(data: list[Any], where: str) -> None:
    """Refuse v2 JSON tensor data (flat or nested) holding anything but numbers."""
    stack = [data]
    while stack:
        values = stack.pop()
        nested = [value for value in values if isinstance(value, list)]
        if nested:
            if len(nested) != len(values):
                raise RequestError.single(where, "must not mix numbers and arrays")
            stack.extend(nested)
        elif not _is_number_row(values):
            raise RequestError.single(where, "must contain only numbers")


def _matrix(values: Any, where: str, n_features: int) -> np.ndarray:
    try:
        matrix = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        raise RequestError.single(
            where, f"must be rows of {n_features} numbers within the 64-bit float range"
        ) from None
    if matrix.ndim == 1 and matrix.size == n_features:
        matrix = matrix.reshape(1, n_features)
    if matrix.ndim != 2 or matrix.shape[1] != n_features:
        raise RequestError.single(
            where, f"must have shape [rows, {n_features}], got {list(matrix.shape)}"
        )
    if matrix.shape[0] == 0:
        raise RequestError.single(where, "must not be empty")
    if not np.isfinite(matrix).all():
        row = int(np.flatnonzero(~np.isfinite(matrix).all(axis=1))[0])
        raise RequestError.single(f"{where}[{row}]", "must contain only finite numbers")
    return matrix


def rows_from_v2_input(
    infer_input: Any, n_features: int, max_rows: int = DEFAULT_MAX_ROWS
) -> np.ndarray:
    """The feature matrix of a v2 input tensor; :class:`RequestError` naming the problem else."""
    where = f"inputs.{infer_input.name}"
    if infer_input.datatype not in NUMERIC_DATATYPES:
        raise RequestError.single(
            f"{where}.datatype", "must be a numeric datatype such as FP32 or FP64"
        )
    shape = infer_input.shape
    if not isinstance(shape, list) or not all(type(dim) is int and dim >= 0 for dim in shape):
        raise RequestError.single(f"{where}.shape", "must be a list of sizes (whole numbers >= 0)")
    if isinstance(infer_input.data, list):
        _flat_numbers(infer_input.data, where)
    try:
        values = infer_input.as_numpy()
    except Exception:
        raise RequestError.single(
            where, f"cannot be read as a tensor of its shape {_shape_text(infer_input.shape)}"
        ) from None
    matrix = _matrix(values, where, n_features)
    _check_row_count(matrix.shape[0], where, max_rows)
    return matrix


def _shape_text(shape: Any) -> str:
    return str(shape)[:40]


#: Bytes of one feature value in a JSON body, at most (``-1.7976931348623157e+308,``).
MAX_VALUE_JSON_BYTES = 25


def limits_for_batches(max_instances: int) -> tuple[int, int]:
    """``(--max_rows, --max_body_bytes)`` a predictor needs to score a transformer's batches of
    up to ``max_instances`` rows (the defaults when they suffice)."""
    row_bytes = MAX_VALUE_JSON_BYTES * len(FEATURE_NAMES) + 3
    body_bytes = max_instances * row_bytes + 1_024
    return max(DEFAULT_MAX_ROWS, max_instances), max(DEFAULT_MAX_BODY_BYTES, body_bytes)


def make_predictor(
    name: str,
    source: BundleSource,
    runtime: str = "auto",
    reload_interval_s: float = 2.0,
    max_rows: int = DEFAULT_MAX_ROWS,
) -> Any:
    """A ``kserve.Model`` serving ``source``'s bundle (not loaded yet: call ``load()``)."""
    return _predictor_class()(name, source, runtime, reload_interval_s, max_rows)


def _predictor_class() -> type:
    from kserve import Model
    from kserve.errors import InferenceError
    from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

    class Predictor(FollowsBundle, Model):
        """Fraud probability of each feature row, from the current bundle's model."""

        def __init__(
            self,
            name: str,
            source: BundleSource,
            runtime: str,
            reload_interval_s: float,
            max_rows: int,
        ) -> None:
            super().__init__(name)
            self.source = source
            self.runtime = runtime
            self.reload_interval_s = reload_interval_s
            self.max_rows = max_rows
            self.scoring_model: ScoringModel | None = None
            self.watcher: BundleWatcher | None = None

        def load(self) -> bool:
            """Verify and load the bundle; raises the bundle errors on failure."""
            self.load_bundle(self.source.resolve())
            self.ready = True
            return self.ready

        @property
        def served_version(self) -> str | None:
            """The version of the model served now."""
            return self.scoring_model.version if self.scoring_model is not None else None

        def _swap(self, bundle_dir: Path) -> None:
            scoring_model = load_scoring_model(bundle_dir, self.runtime)  # type: ignore[arg-type]
            self.scoring_model = scoring_model
            log.info("predictor serving %r", scoring_model)

        def start(self) -> None:
            """Start following the bundle source (registry changes, reload requests)."""
            super().start()
            current = self.scoring_model.path if self.scoring_model is not None else None
            self.follow_bundle(current, "predictor-reload")

        def stop(self) -> None:
            """Stop the watcher."""
            self.stop_following()
            super().stop()

        def get_input_types(self) -> list[dict[str, Any]]:
            """v2 metadata: one FP32 matrix of feature rows."""
            n = self.scoring_model.n_features if self.scoring_model else -1
            return [{"name": FEATURES_INPUT, "datatype": "FP32", "shape": [-1, n]}]

        def get_output_types(self) -> list[dict[str, Any]]:
            """v2 metadata: one FP32 probability per row."""
            return [{"name": PROBABILITY_OUTPUT, "datatype": "FP32", "shape": [-1]}]

        def predict(self, payload: Any, headers: dict[str, str] | None = None) -> Any:
            """Score v1 dict or v2 ``InferRequest`` payloads."""
            model = self.scoring_model
            if model is None:  # pragma: no cover - the server only routes to a ready model
                raise InferenceError("no model loaded")
            if isinstance(payload, InferRequest):
                return self._predict_v2(model, payload)
            matrix = rows_from_v1(payload, model.n_features, self.max_rows)
            try:
                probabilities = model.predict_proba(matrix).tolist()
            except Exception as exc:
                raise InferenceError(f"{type(exc).__name__}: {exc}") from exc
            return {"predictions": probabilities, "model_version": model.version}

        def _predict_v2(self, model: ScoringModel, payload: Any) -> Any:
            infer_input = payload.get_input_by_name(FEATURES_INPUT)
            if infer_input is None:
                if len(payload.inputs) != 1:
                    raise RequestError.single("inputs", f"needs one input named {FEATURES_INPUT!r}")
                infer_input = payload.inputs[0]
            matrix = rows_from_v2_input(infer_input, model.n_features, self.max_rows)
            try:
                probabilities = model.predict_proba(matrix).astype(np.float32)
            except Exception as exc:
                raise InferenceError(f"{type(exc).__name__}: {exc}") from exc
            output = InferOutput(
                name=PROBABILITY_OUTPUT,
                shape=[len(probabilities)],
                datatype="FP32",
                data=probabilities.tolist(),
            )
            return InferResponse(
                response_id=payload.id or str(uuid.uuid4()),
                model_name=self.name,
                infer_outputs=[output],
                model_version=model.version,
            )

    return Predictor


def build_parser() -> argparse.ArgumentParser:
    """The predictor's arguments: KServe's standard ones plus the bundle source and runtime."""
    from kserve.model_server import parser as kserve_parser

    from fraud_detection.serving.app import (
        add_bundle_source_arguments,
        add_server_arguments,
        positive_int,
    )

    parser = argparse.ArgumentParser(
        prog="python -m fraud_detection.serving.predictor",
        description="Serve a fraud-detection model bundle (KServe v1 and v2 protocols).",
        parents=[kserve_parser],
    )
    add_bundle_source_arguments(parser)
    parser.add_argument("--runtime", choices=RUNTIMES, default="auto", help="Model runtime.")
    parser.add_argument(
        "--max_rows",
        type=positive_int,
        default=DEFAULT_MAX_ROWS,
        help="Most feature rows per request; larger batches get 413.",
    )
    add_server_arguments(parser)
    parser.set_defaults(model_name=DEFAULT_MODEL_NAME)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: load (refusing a bad bundle) and serve until SIGTERM/SIGINT."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.workers != 1:
        parser.error("--workers must be 1 (run more replicas instead)")
    from fraud_detection.serving.app import serve_model, source_from_args

    source = source_from_args(args)
    predictor = make_predictor(
        args.model_name, source, args.runtime, args.reload_interval, args.max_rows
    )
    return serve_model(predictor, args, "predictor")


if __name__ == "__main__":
    sys.exit(main())
