"""The comparison servers of ``bench_serving.py``: the stock KServe stack and a do-nothing pair.

``predictor-sklearn``
    A faithful equivalent of KServe's sklearn runtime (``kserve/python/sklearnserver``): one
    ``.joblib``/``.pkl``/``.pickle`` file in ``--model_dir`` loaded with joblib,
    ``get_predict_input`` → ``predict_proba`` (``PREDICT_PROBA=true``) → ``get_predict_response``,
    failures wrapped in ``InferenceError``.
``transformer-stock``
    A minimal KServe transformer in front of it: features from the same online state, KServe's
    own ``Model.predict`` (its httpx client) to the predictor, the threshold on the answer.
``predictor-noop`` / ``transformer-noop``
    A do-nothing pair: the floor of KServe's two-hop architecture.

All run with KServe's default server settings (latency logging, access log); only the bind
address is set to loopback.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
from typing import Any

import joblib
import kserve
import kserve.model_server as kms
from kserve.errors import InferenceError, ModelMissingError
from kserve.utils.utils import get_predict_input, get_predict_response

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


def main() -> None:
    parser = argparse.ArgumentParser(parents=[kms.parser])
    parser.add_argument("role")
    parser.add_argument("--model_dir")
    parser.add_argument("--threshold", type=float, default=0.1)
    parser.add_argument("--bind_host", default="0.0.0.0")
    args = parser.parse_args()

    class LoopbackRESTServer(kms.RESTServer):
        def __init__(self, *positional: Any, **keywords: Any) -> None:
            super().__init__(*positional, **keywords)
            self.config.host = args.bind_host

    kms.RESTServer = LoopbackRESTServer
    if args.role == "predictor-sklearn":
        os.environ["PREDICT_PROBA"] = "true"
        model_dir = pathlib.Path(args.model_dir)
        model: kserve.Model = SKLearnModel(args.model_name, str(model_dir))
        model.load()
    elif args.role == "transformer-stock":
        model = StockTransformer(
            args.model_name,
            str(pathlib.Path(args.model_dir) / "feature_state.json.gz"),
            args.threshold,
        )
    elif args.role == "predictor-noop":
        model = NoopPredictor(args.model_name)
    elif args.role == "transformer-noop":
        model = NoopTransformer(args.model_name)
    else:
        sys.exit(f"unknown role {args.role}")
    kserve.ModelServer(http_port=args.http_port, enable_grpc=False).start([model])


if __name__ == "__main__":
    main()
