"""The comparison servers of ``bench_serving.py``: the stock KServe stack and a do-nothing pair.

``predictor-sklearn``
    A faithful equivalent of KServe's sklearn runtime (``kserve/python/sklearnserver``): one
    ``.joblib``/``.pkl``/``.pickle`` file in ``--model_dir`` loaded with joblib,
    ``get_predict_input`` → ``predict_proba`` (``PREDICT_PROBA=true``) → ``get_predict_response``,
    failures wrapped in ``InferenceError``.
``transformer-stock``
    A minimal KServe transformer in front of it: features from the same online state, KServe's
    own ``Model.predict`` (its httpx client) to the predictor, the threshold on the answer.
``predictor-noop``
    A do-nothing model server: answers every instance with 0. Alone, it is the floor of any
    KServe model server (one hop: HTTP, JSON, KServe's data plane).
``transformer-noop``
    A do-nothing transformer (KServe's default pre/postprocess and client) in front of
    ``predictor-noop``: the floor of KServe's two-hop architecture.

Server settings are KServe's own arguments (``kserve.model_server.parser``), plus the two this
project's servers also take, with the same meaning: ``--bind_host`` and ``--access_log``.
``--access_log false`` silences the per-request log lines (uvicorn's access log and KServe's
request timings, logger ``kserve.trace``) exactly as the project's servers do;
``--enable_latency_logging false`` is KServe's switch for its per-request latency line. The
benchmark passes the same values to every server it starts, this script's and the project's.
At start the script logs the settings it runs with.
"""

from __future__ import annotations

import argparse
import logging
import os
import pathlib
import sys
from typing import Any

import joblib
import kserve
import kserve.model_server as kms
from kserve.errors import InferenceError, ModelMissingError
from kserve.logging import logger
from kserve.utils.utils import get_predict_input, get_predict_response, strtobool

MODEL_EXTENSIONS = (".joblib", ".pkl", ".pickle")


class SKLearnModel(kserve.Model):
    """KServe's sklearn runtime, as in sklearnserver/model.py."""

    def __init__(self, name: str, model_dir: str) -> None:
        super().__init__(name)
        self.model_dir = model_dir
        self.ready = False

    def load(self) -> bool:
        model_path = pathlib.Path(self.model_dir)
        model_files = [
            model_path / name
            for name in os.listdir(model_path)
            if (model_path / name).is_file() and name.endswith(MODEL_EXTENSIONS)
        ]
        if not model_files:
            raise ModelMissingError(str(model_path))
        if len(model_files) > 1:
            raise RuntimeError(f"More than one model file is detected: {model_files}")
        self._model = joblib.load(model_files[0])
        self.ready = True
        return self.ready

    def predict(self, payload: Any, headers: dict[str, str] | None = None) -> Any:
        try:
            instances = get_predict_input(payload)
            if os.environ.get("PREDICT_PROBA", "false").lower() == "true" and hasattr(
                self._model, "predict_proba"
            ):
                result = self._model.predict_proba(instances)
            else:
                result = self._model.predict(instances)
            return get_predict_response(payload, result, self.name)
        except Exception as exc:
            raise InferenceError(str(exc)) from exc


class StockTransformer(kserve.Model):
    """A minimal transformer: online features in, KServe's client to the predictor, threshold."""

    def __init__(self, name: str, feature_state: str, threshold: float) -> None:
        super().__init__(name)
        from fraud_detection.features import OnlineFeatureState

        self.state = OnlineFeatureState.load(feature_state)
        self.threshold = threshold
        self.ready = True

    def preprocess(self, payload: Any, headers: dict[str, str] | None = None) -> Any:
        instances = payload["instances"]
        # The same headers dict reaches postprocess: it carries the ids across the await.
        headers["x-bench-ids"] = [instance["transaction_id"] for instance in instances]
        return {"instances": [self.state.process_transaction(i) for i in instances]}

    def postprocess(self, result: Any, headers: Any = None, response_headers: Any = None) -> Any:
        return {
            "predictions": [
                {
                    "transaction_id": tx,
                    "fraud_probability": row[1],
                    "is_fraud": row[1] >= self.threshold,
                    "threshold": self.threshold,
                }
                for tx, row in zip(headers["x-bench-ids"], result["predictions"], strict=True)
            ]
        }


class NoopPredictor(kserve.Model):
    """Answers every instance with 0."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.ready = True

    def predict(self, payload: Any, headers: dict[str, str] | None = None) -> Any:
        return {"predictions": [0.0] * len(payload["instances"])}


class NoopTransformer(kserve.Model):
    """Forwards the request unchanged (KServe's default pre/postprocess)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.ready = True


def build_model(args: argparse.Namespace) -> kserve.Model:
    """The model of ``args.role``, loaded and ready."""
    if args.role == "predictor-sklearn":
        os.environ["PREDICT_PROBA"] = "true"
        model: kserve.Model = SKLearnModel(args.model_name, str(pathlib.Path(args.model_dir)))
        model.load()
        return model
    if args.role == "transformer-stock":
        return StockTransformer(
            args.model_name,
            str(pathlib.Path(args.model_dir) / "feature_state.json.gz"),
            args.threshold,
        )
    if args.role == "predictor-noop":
        return NoopPredictor(args.model_name)
    if args.role == "transformer-noop":
        return NoopTransformer(args.model_name)
    sys.exit(f"unknown role {args.role}")


def main() -> None:
    """Parse KServe's arguments and the role, then serve until SIGTERM."""
    parser = argparse.ArgumentParser(parents=[kms.parser])
    parser.add_argument("role")
    parser.add_argument("--model_dir")
    parser.add_argument("--threshold", type=float, default=0.1)
    parser.add_argument("--bind_host", default="0.0.0.0")
    parser.add_argument(
        "--access_log",
        type=strtobool,
        default=True,
        help="Log per-request lines (uvicorn access log, KServe request timings).",
    )
    args = parser.parse_args()

    class LoopbackRESTServer(kms.RESTServer):
        def __init__(self, *positional: Any, **keywords: Any) -> None:
            super().__init__(*positional, **keywords)
            self.config.host = args.bind_host

    kms.RESTServer = LoopbackRESTServer
    model = build_model(args)
    # Every setting from this parser, as the project's servers pass them: KServe's defaults
    # come from its own import-time parse of the command line, where argparse reads the
    # abbreviation ``--access_log`` as ``--access_log_format``. The constructor configures
    # KServe's logging, so the levels below are set after it.
    server = kserve.ModelServer(
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        workers=1,
        max_threads=args.max_threads,
        max_asyncio_workers=args.max_asyncio_workers,
        enable_grpc=args.enable_grpc,
        enable_docs_url=args.enable_docs_url,
        enable_latency_logging=args.enable_latency_logging,
        access_log_format=args.access_log_format,
        event_loop=args.event_loop,
        timeout_keep_alive=args.timeout_keep_alive,
    )
    if not args.access_log:
        logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
        logging.getLogger("kserve.trace").setLevel(logging.WARNING)
    logger.info(
        "%s: access log %s, latency logging %s, grpc %s",
        args.role,
        "on" if args.access_log else "off",
        "on" if args.enable_latency_logging else "off",
        "on" if args.enable_grpc else "off",
    )
    server.start([model])


if __name__ == "__main__":
    main()
