"""The transformer: a ``kserve.Model`` in front of the predictor.

Per request (KServe v1 ``{"instances": [...]}``, or v2 with one input tensor per field):

1. validate every instance (:mod:`fraud_detection.serving.requests`; 4xx naming the field);
2. compute its features from the online per-card state
   (:class:`~fraud_detection.features.OnlineFeatureState`, which absorbs the transaction);
3. score the feature rows on the predictor (``--predictor_host``, ``--predictor_protocol``), or
   in-process with ``--collocated`` (one hop: the transformer loads the ONNX model itself);
4. apply the threshold (``--threshold``; the bundle's, 0.1, by default) and answer
   ``{"predictions": [{"transaction_id", "fraud_probability", "is_fraud", "threshold",
   "model_version"}]}``;
5. hand each scored transaction to the Kafka mirror (:mod:`fraud_detection.serving.mirror`),
   which never makes the request wait.

The live state (:mod:`fraud_detection.serving.live_state`) decides what a request may change:
timestamps must lie within a range around the clock (``--clock wall`` for live traffic,
``--clock event`` for replays), a ``transaction_id`` seen before must come with the same
payload (an identical retry is answered as the first time and mirrored once; another payload
is refused with 409), and nothing is absorbed unless the whole request is accepted.

Model updates: the transformer follows the same bundle source as the predictor (the registry's
current bundle, or a fixed directory); when it changes, or on ``SIGHUP``, a background thread
loads the new bundle and swaps it in with one assignment; requests in flight finish on the
bundle they started with. The live per-card state and the retry map survive the switch: from
the new bundle come the model, the threshold and what its feature snapshot adds (cards never
seen, merchant labels known at its training). With ``--state_dir`` the live state is
checkpointed every ``--checkpoint_interval`` seconds and at stop, and a restart resumes from
the newest checkpoint.

Labels: with ``--labels`` (the default when Kafka is configured) a background thread reads the
labels topic (``--labels_topic``) and keeps merchant risk current
(:mod:`fraud_detection.serving.labels_consumer`); labels are idempotent, and the group's offsets
are committed only up to what a checkpoint includes.

Metrics (:mod:`fraud_detection.serving.metrics`): transactions scored and flagged and their
probabilities, failed calls to the predictor by kind, the served version, model switches, the
cards in the live state, and labels applied and skipped, on ``/metrics``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fraud_detection.bundle import FEATURE_STATE, BundleError, Manifest, verify_bundle
from fraud_detection.features import OnlineFeatureState
from fraud_detection.schema import DEFAULT_THRESHOLD, MAX_AMOUNT, is_flagged, round_probability
from fraud_detection.serving.labels_consumer import (
    DEFAULT_GROUP_ID,
    LabelsConfig,
    LabelsConsumer,
    labels_config_from_args,
)
from fraud_detection.serving.live_state import (
    CLOCKS,
    DEFAULT_MAX_CLOCK_SKEW_S,
    DEFAULT_MAX_EVENT_AGE_S,
    WALL_CLOCK,
    Checkpointer,
    LiveState,
    TimePolicy,
)
from fraud_detection.serving.metrics import (
    count_predictor_failure,
    count_scored,
    watch_live_cards,
)
from fraud_detection.serving.mirror import (
    PRIORITIES,
    KafkaMirror,
    MirrorConfig,
    MirrorEntry,
    ProcessMirror,
)
from fraud_detection.serving.model import BundleSource, BundleWatcher, FollowsBundle, ScoringModel
from fraud_detection.serving.requests import (
    DEFAULT_MAX_INSTANCES,
    RequestError,
    RequestLimits,
    Transaction,
    parse_instances,
    parse_v1_body,
    v2_instances,
)

# Named, not __name__: run with `python -m`, this module is __main__.
log = logging.getLogger("fraud_detection.serving.transformer")

DEFAULT_MODEL_NAME = "fraud-detector"
DEFAULT_DEDUP_SIZE = 100_000
DEFAULT_CHECKPOINT_INTERVAL_S = 30.0
#: Larger amounts would let squared amounts in the features' running sums lose all precision.
MAX_AMOUNT_CEILING = 1e15
ENV_SERVING_STATE_DIR = "FRAUD_SERVING_STATE_DIR"


@dataclass
class ServingState:
    """What one bundle gives the transformer: its manifest and, collocated, its model."""

    path: Path
    manifest: Manifest
    model: ScoringModel | None = None

    @property
    def version(self) -> str:
        """The bundle's model version."""
        return self.manifest.model_version


def load_serving_state(
    bundle_dir: Path, collocated: bool, runtime: str = "onnx"
) -> tuple[ServingState, OnlineFeatureState]:
    """Verify a bundle; load its model (when ``collocated``) and its feature-state snapshot."""
    from fraud_detection.serving.model import load_scoring_model

    if collocated:
        model = load_scoring_model(bundle_dir, runtime)  # type: ignore[arg-type]
        manifest, path = model.manifest, model.path
    else:
        model = None
        path = Path(bundle_dir).resolve()
        manifest = verify_bundle(path)
    if FEATURE_STATE not in manifest.files:
        raise BundleError(f"{path}: the bundle has no {FEATURE_STATE}")
    snapshot = OnlineFeatureState.load(path / FEATURE_STATE)
    return ServingState(path, manifest, model), snapshot


@dataclass
class Batch:
    """One request on its way through preprocess → predict → postprocess."""

    transactions: list[Transaction]
    rows: list[list[float]]
    state: ServingState
    live: LiveState
    v2_request: Any = None
    probabilities: list[float] | None = None
    model_version: str | None = None


def make_transformer(
    name: str,
    source: BundleSource,
    *,
    predictor_host: str | None = None,
    predictor_protocol: str = "v1",
    predictor_timeout_s: float = 0.5,
    predictor_use_ssl: bool = False,
    collocated: bool = False,
    runtime: str = "onnx",
    threshold: float | None = None,
    limits: RequestLimits | None = None,
    mirror: KafkaMirror | ProcessMirror | None = None,
    dedup_size: int = DEFAULT_DEDUP_SIZE,
    reload_interval_s: float = 2.0,
    time_policy: TimePolicy | None = None,
    state_dir: Path | None = None,
    checkpoint_interval_s: float = DEFAULT_CHECKPOINT_INTERVAL_S,
    labels: LabelsConfig | None = None,
) -> Any:
    """A ``kserve.Model`` transformer (not loaded yet: call ``load()``).

    ``labels``: read the labels topic into merchant risk (None: no labels consumer).
    """
    if not collocated and not predictor_host:
        raise ValueError("a transformer needs --predictor_host unless it is --collocated")
    return _transformer_class()(
        name,
        source,
        predictor_host=predictor_host,
        predictor_protocol=predictor_protocol,
        predictor_timeout_s=predictor_timeout_s,
        predictor_use_ssl=predictor_use_ssl,
        collocated=collocated,
        runtime=runtime,
        threshold=threshold,
        limits=limits or RequestLimits(),
        mirror=mirror,
        dedup_size=dedup_size,
        reload_interval_s=reload_interval_s,
        time_policy=time_policy or TimePolicy(),
        state_dir=state_dir,
        checkpoint_interval_s=checkpoint_interval_s,
        labels=labels,
    )


def _transformer_class() -> type:
    from kserve import Model
    from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

    from fraud_detection.serving.app import PredictorUnavailableError
    from fraud_detection.serving.client import PredictorClient

    class Transformer(FollowsBundle, Model):
        """Validate, featurize, score, threshold, mirror."""

        def __init__(self, name: str, source: BundleSource, **options: Any) -> None:
            super().__init__(name)
            self.source = source
            self.collocated: bool = options["collocated"]
            self.runtime: str = options["runtime"]
            self.threshold_override: float | None = options["threshold"]
            self.limits: RequestLimits = options["limits"]
            self.mirror: KafkaMirror | ProcessMirror | None = options["mirror"]
            self.dedup_size: int = options["dedup_size"]
            self.reload_interval_s: float = options["reload_interval_s"]
            self.client = (
                None
                if self.collocated
                else PredictorClient(
                    options["predictor_host"],
                    name,
                    options["predictor_protocol"],
                    options["predictor_timeout_s"],
                    options["predictor_use_ssl"],
                )
            )
            self.time_policy: TimePolicy = options["time_policy"]
            self.state_dir: Path | None = options["state_dir"]
            self.checkpoint_interval_s: float = options["checkpoint_interval_s"]
            self.state: ServingState | None = None
            self.live: LiveState | None = None
            self.checkpointer: Checkpointer | None = None
            self.watcher: BundleWatcher | None = None
            self.labels_config: LabelsConfig | None = options["labels"]
            self.labels: LabelsConsumer | None = None

        # ------------------------------------------------------------------ lifecycle
        def load(self) -> bool:
            """Verify the bundle and load the feature state (and model, collocated)."""
            self.load_bundle(self.source.resolve())
            self.ready = True
            return self.ready

        @property
        def served_version(self) -> str | None:
            """The version of the bundle served now (its threshold and feature snapshot)."""
            return self.state.version if self.state is not None else None

        def _swap(self, bundle_dir: Path) -> None:
            state, snapshot = load_serving_state(bundle_dir, self.collocated, self.runtime)
            if self.live is None:
                self.live = LiveState.restore(
                    snapshot, self.state_dir, self.time_policy, self.dedup_size
                )
                watch_live_cards(self.live)
            else:
                self.live.adopt(snapshot)
            self.state = state
            log.info(
                "transformer serving %s (%d cards in the live feature state%s)",
                state.version,
                len(self.live),
                f", model {state.model.runtime}" if state.model else "",
            )

        def start(self) -> None:
            """Start the mirror, the checkpoints, the labels consumer and the bundle watcher."""
            super().start()
            if self.mirror is not None and not self.mirror.started:
                self.mirror.start()
            if self.state_dir is not None and self.checkpointer is None:
                self.checkpointer = Checkpointer(
                    lambda: self.live,
                    self.state_dir,
                    self.checkpoint_interval_s,
                    lambda: self.state.version if self.state is not None else None,
                ).start()
            if self.labels_config is not None and self.labels is None:
                self.labels = LabelsConsumer(
                    self.labels_config,
                    lambda: self.live,
                    self._checkpointed_label_offsets,
                ).start()
            current = self.state.path if self.state is not None else None
            self.follow_bundle(current, "transformer-reload")

        def _checkpointed_label_offsets(self) -> dict[tuple[str, int], int] | None:
            """The labels offsets the newest checkpoint includes; None without checkpoints."""
            return self.checkpointer.label_offsets if self.checkpointer is not None else None

        def stop(self) -> None:
            """Stop the watcher and the labels, write a final checkpoint, flush the mirror."""
            self.stop_following()
            if self.labels is not None:
                self.labels.halt()  # no label lands after the final checkpoint
            if self.checkpointer is not None:
                path = self.checkpointer.stop()
                if path is not None:
                    log.info("live state checkpointed to %s", path)
            if self.labels is not None:
                self.labels.close()  # commits what the final checkpoint includes
            if self.mirror is not None:
                self.mirror.stop()
            super().stop()

        async def aclose(self) -> None:
            """Close the connection pool to the predictor (on the server's event loop)."""
            if self.client is not None:
                await self.client.close()

        def threshold_for(self, state: ServingState) -> float:
            """The threshold in force: the override, else the bundle's, else 0.1."""
            if self.threshold_override is not None:
                return self.threshold_override
            return float(state.manifest.threshold or DEFAULT_THRESHOLD)

        # ------------------------------------------------------------------ request path
        def validate(self, payload: Any) -> Any:
            """Validation happens in :meth:`preprocess`; KServe's generic check does not apply."""
            return payload

        def preprocess(self, payload: Any, headers: dict[str, str] | None = None) -> Batch:
            """Validate the instances and compute their features."""
            state, live = self.state, self.live
            assert state is not None and live is not None
            v2_request = None
            if isinstance(payload, InferRequest):
                v2_request = payload
                where = "inputs"
                transactions = parse_instances(
                    v2_instances(payload, self.limits), self.limits, where
                )
            elif isinstance(payload, bytes | str):
                raise RequestError.single("content-type", "must be application/json", status=415)
            else:
                where = "instances"
                transactions = parse_v1_body(payload, self.limits)
            rows = live.score_features(transactions, where)
            return Batch(transactions, rows, state, live, v2_request)

        async def predict(self, batch: Batch, headers: dict[str, str] | None = None) -> Batch:
            """Score the feature rows: in-process when collocated, else on the predictor."""
            if batch.state.model is not None:
                batch.probabilities = batch.state.model.score(batch.rows)
                batch.model_version = batch.state.version
                return batch
            assert self.client is not None
            forwarded = None
            if headers and "x-request-id" in headers:
                forwarded = {"x-request-id": headers["x-request-id"]}
            try:
                probabilities, version = await self.client.score(batch.rows, forwarded)
            except PredictorUnavailableError as exc:
                count_predictor_failure(exc.kind)
                raise
            batch.probabilities = probabilities
            batch.model_version = version or batch.state.version
            return batch

        def postprocess(self, batch: Batch, headers: dict[str, str] | None = None, *_: Any) -> Any:
            """Apply the threshold, mirror, and shape the answer."""
            assert batch.probabilities is not None
            threshold = self.threshold_for(batch.state)
            version = batch.model_version or batch.state.version
            mirror = self.mirror
            predictions = []
            probabilities = []
            flagged_count = 0
            for tx, row, score in zip(
                batch.transactions, batch.rows, batch.probabilities, strict=True
            ):
                probability = round_probability(score)
                flagged = is_flagged(probability, threshold)
                probabilities.append(probability)
                flagged_count += flagged
                predictions.append(
                    {
                        "transaction_id": tx.transaction_id,
                        "fraud_probability": probability,
                        "is_fraud": flagged,
                        "threshold": threshold,
                        "model_version": version,
                    }
                )
                if mirror is not None and batch.live.claim_mirror(tx.transaction_id):
                    mirror.offer(
                        MirrorEntry(
                            tx.transaction_id,
                            tx.card_id,
                            tx.timestamp_micros,
                            row,
                            probability,
                            flagged,
                            threshold,
                            version,
                        )
                    )
            count_scored(probabilities, flagged_count)
            if batch.v2_request is None:
                return {"predictions": predictions}
            return self._v2_response(batch.v2_request, predictions, version)

        def _v2_response(
            self, request: Any, predictions: list[dict[str, Any]], version: str
        ) -> Any:
            n = len(predictions)
            columns = (
                ("transaction_id", "BYTES"),
                ("fraud_probability", "FP64"),
                ("is_fraud", "BOOL"),
                ("threshold", "FP64"),
                ("model_version", "BYTES"),
            )
            outputs = [
                InferOutput(
                    name=name,
                    shape=[n],
                    datatype=datatype,
                    data=[prediction[name] for prediction in predictions],
                )
                for name, datatype in columns
            ]
            return InferResponse(
                response_id=request.id or str(uuid.uuid4()),
                model_name=self.name,
                infer_outputs=outputs,
                model_version=version,
            )

        def get_input_types(self) -> list[dict[str, Any]]:
            """v2 metadata: one tensor per transaction field."""
            return [
                {"name": "transaction_id", "datatype": "BYTES", "shape": [-1]},
                {"name": "card_id", "datatype": "BYTES", "shape": [-1]},
                {"name": "merchant_id", "datatype": "BYTES", "shape": [-1]},
                {"name": "amt", "datatype": "FP64", "shape": [-1]},
                {"name": "timestamp", "datatype": "BYTES", "shape": [-1]},
                {"name": "category", "datatype": "BYTES", "shape": [-1], "optional": True},
            ]

        def get_output_types(self) -> list[dict[str, Any]]:
            """v2 metadata: one tensor per answer field."""
            return [
                {"name": "transaction_id", "datatype": "BYTES", "shape": [-1]},
                {"name": "fraud_probability", "datatype": "FP64", "shape": [-1]},
                {"name": "is_fraud", "datatype": "BOOL", "shape": [-1]},
                {"name": "threshold", "datatype": "FP64", "shape": [-1]},
                {"name": "model_version", "datatype": "BYTES", "shape": [-1]},
            ]

    return Transformer


def build_parser() -> argparse.ArgumentParser:
    """The transformer's arguments: KServe's standard ones plus the project's."""
    from kserve.model_server import parser as kserve_parser

    from fraud_detection.serving.app import (
        add_bundle_source_arguments,
        add_server_arguments,
        positive_int,
        strtobool,
    )
    from fraud_detection.serving.predictor import DEFAULT_MODEL_NAME as PREDICTOR_MODEL_NAME
    from fraud_detection.streaming.kafka import ENV_BOOTSTRAP, Topics

    parser = argparse.ArgumentParser(
        prog="python -m fraud_detection.serving.transformer",
        description="Fraud-scoring transformer: validation, online features, threshold, mirror.",
        parents=[kserve_parser],
    )
    add_bundle_source_arguments(parser)
    parser.add_argument(
        "--threshold",
        type=float,
        default=None,
        help=f"Flag at this probability or above (default: the bundle's, {DEFAULT_THRESHOLD}).",
    )
    parser.add_argument(
        "--collocated",
        action="store_true",
        help="Score in-process with the bundle's ONNX model (one hop, no predictor).",
    )
    parser.add_argument(
        "--predictor_timeout",
        type=float,
        default=0.5,
        help="Seconds to wait for the predictor before answering 503.",
    )
    parser.add_argument(
        "--max_instances",
        type=positive_int,
        default=DEFAULT_MAX_INSTANCES,
        help="Most instances per request; more get 413.",
    )
    parser.add_argument(
        "--dedup_size",
        type=int,
        default=DEFAULT_DEDUP_SIZE,
        help="Recent transaction ids remembered so a retried transaction is not counted twice.",
    )
    parser.add_argument(
        "--clock",
        choices=CLOCKS,
        default=WALL_CLOCK,
        help="wall: timestamps are checked against this server's clock (live traffic). event: the "
        "clock is the latest accepted timestamp (replays and backfills of historical data).",
    )
    parser.add_argument(
        "--max_clock_skew",
        type=float,
        default=None,
        help="Seconds a timestamp may be ahead of the clock; later ones get 400 (default: "
        + ", ".join(f"{s:g} with the {c} clock" for c, s in DEFAULT_MAX_CLOCK_SKEW_S.items())
        + "; at most a day).",
    )
    parser.add_argument(
        "--max_event_age",
        type=float,
        default=DEFAULT_MAX_EVENT_AGE_S,
        help="Seconds a timestamp may be behind the clock; older ones get 400 "
        "(at most the longest feature window, 30 days).",
    )
    parser.add_argument(
        "--max_amount",
        type=float,
        default=MAX_AMOUNT,
        help="Largest accepted amount; larger ones get 400.",
    )
    parser.add_argument(
        "--state_dir",
        type=Path,
        default=None,
        help="Checkpoint the live per-card state here and resume from the newest checkpoint at "
        f"start (default ${ENV_SERVING_STATE_DIR}; none: no checkpoints).",
    )
    parser.add_argument(
        "--checkpoint_interval",
        type=float,
        default=DEFAULT_CHECKPOINT_INTERVAL_S,
        help="Seconds between checkpoints of the live state (a crash loses at most this much).",
    )
    parser.add_argument(
        "--kafka_bootstrap",
        default=None,
        help=f"Kafka bootstrap servers for the mirror (default ${ENV_BOOTSTRAP}; none: no mirror).",
    )
    parser.add_argument(
        "--labels",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Read the labels topic into merchant risk, in the background (default: on when "
        "Kafka is configured).",
    )
    parser.add_argument(
        "--labels_topic",
        default=None,
        help=f"Labels topic (default $FRAUD_KAFKA_TOPIC_LABELS or {Topics().labels}).",
    )
    parser.add_argument(
        "--labels_group",
        default=DEFAULT_GROUP_ID,
        help="Consumer group of the labels consumer (each transformer replica needs its own).",
    )
    parser.add_argument(
        "--mirror_topic",
        default=None,
        help=f"Mirror topic (default $FRAUD_KAFKA_TOPIC_MIRROR or {Topics().mirror}).",
    )
    parser.add_argument("--mirror_queue_size", type=int, default=10_000, help="Mirror queue bound.")
    parser.add_argument(
        "--mirror_delivery_timeout_ms",
        type=int,
        default=10_000,
        help="Give up on a mirror record after this long.",
    )
    parser.add_argument(
        "--mirror_process",
        type=strtobool,
        default=True,
        help="Run the Kafka producer in a child process (else a thread of the server process).",
    )
    parser.add_argument(
        "--mirror_priority",
        choices=PRIORITIES,
        default="idle",
        help="CPU priority of the producer process: idle never delays scoring, but a saturated "
        "CPU starves it (records dropped and counted); low shares the CPU.",
    )
    parser.add_argument(
        "--inference_service_name",
        default=None,
        help="ce_inferenceservicename of mirrored records (default: the model name).",
    )
    add_server_arguments(parser)
    parser.set_defaults(model_name=PREDICTOR_MODEL_NAME)
    return parser


def bootstrap_from_args(args: argparse.Namespace) -> str | None:
    """``--kafka_bootstrap``, else ``$FRAUD_KAFKA_BOOTSTRAP``, else None (``none``: None)."""
    import os

    from fraud_detection.streaming.kafka import ENV_BOOTSTRAP

    bootstrap = args.kafka_bootstrap or os.environ.get(ENV_BOOTSTRAP)
    if not bootstrap or bootstrap.lower() == "none":
        return None
    return bootstrap


def mirror_from_args(args: argparse.Namespace) -> KafkaMirror | ProcessMirror | None:
    """The Kafka mirror the arguments and environment ask for, or None."""
    from fraud_detection.streaming.kafka import Topics

    bootstrap = bootstrap_from_args(args)
    if bootstrap is None:
        return None
    config = MirrorConfig(
        bootstrap=bootstrap,
        topic=args.mirror_topic or Topics.from_env().mirror,
        inference_service=args.inference_service_name or args.model_name,
        queue_size=args.mirror_queue_size,
        delivery_timeout_ms=args.mirror_delivery_timeout_ms,
        producer_priority=args.mirror_priority,
        log_format=args.log_format,
    )
    return ProcessMirror(config) if args.mirror_process else KafkaMirror(config)


def main(argv: list[str] | None = None) -> int:
    """Entry point: load the bundle (refusing a bad one) and serve until SIGTERM/SIGINT."""
    from fraud_detection.serving.app import serve_model, source_from_args

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.workers != 1:
        parser.error("--workers must be 1: the per-card feature state lives in the process")
    if not args.collocated and not args.predictor_host:
        parser.error("--predictor_host is required unless --collocated")
    source = source_from_args(args)
    protocol = args.predictor_protocol if args.predictor_protocol != "v1" else args.protocol
    if protocol == "grpc-v2":
        parser.error("the transformer calls the predictor over REST: use v1 or v2")
    try:
        policy = TimePolicy(args.clock, args.max_clock_skew, args.max_event_age)
    except ValueError as exc:
        parser.error(str(exc))
    if not 0 < args.max_amount <= MAX_AMOUNT_CEILING:
        parser.error(f"--max_amount must be within 0..{MAX_AMOUNT_CEILING:g}")
    if args.checkpoint_interval <= 0:
        parser.error("--checkpoint_interval must be positive")
    try:
        labels = labels_config_from_args(args, bootstrap_from_args(args))
    except ValueError as exc:
        parser.error(str(exc))
    transformer = make_transformer(
        args.model_name,
        source,
        predictor_host=args.predictor_host,
        predictor_protocol=protocol,
        predictor_timeout_s=args.predictor_timeout,
        predictor_use_ssl=args.predictor_use_ssl,
        collocated=args.collocated,
        threshold=args.threshold,
        limits=RequestLimits(max_instances=args.max_instances, max_amount=args.max_amount),
        mirror=mirror_from_args(args),
        dedup_size=args.dedup_size,
        reload_interval_s=args.reload_interval,
        time_policy=policy,
        state_dir=state_dir_from_args(args),
        checkpoint_interval_s=args.checkpoint_interval,
        labels=labels,
    )
    return serve_model(transformer, args, "transformer")


def state_dir_from_args(args: argparse.Namespace) -> Path | None:
    """``--state_dir``, else ``$FRAUD_SERVING_STATE_DIR``, else None (no checkpoints)."""
    import os

    if args.state_dir is not None:
        return None if str(args.state_dir).lower() == "none" else Path(args.state_dir)
    value = os.environ.get(ENV_SERVING_STATE_DIR)
    return Path(value) if value and value.lower() != "none" else None


if __name__ == "__main__":
    sys.exit(main())
