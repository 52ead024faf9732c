"""The training pipeline DAG: ingest → validate → train → evaluate → gate → export → deploy.

``deploy`` runs only inside ``dsl.If`` on the gate's boolean output. ``export`` and ``report`` run
whatever the gate decides, so a refused model is still inspectable. The gate returns a single
``bool`` (its ``Output``) so that the condition resolves both in Kubeflow and in ``kfp.local``.

Every hyperparameter, the split, the threshold and the gate bounds are pipeline parameters, with
the defaults below; :data:`PIPELINE_NAME` names the pipeline in the Kubeflow UI.
``trigger_reason`` says why the run was started (``manual``, ``schedule``, or the retraining
trigger's reason); the export step records it in the bundle's manifest.

``models_uri`` ("" by default: none) is the versioned model store: with it, the deploy step
(kserve target) copies the bundle to ``<models_uri>/<model_version>/`` and points the
InferenceService there instead of at the run's export artifact.

In a cluster the steps that read or write ``s3://`` (ingest, evaluate, deploy) take the store's
credentials from a Kubernetes Secret (``kfp.kubernetes.use_secret_as_env``) and its endpoint
from an environment variable: :data:`KFP_ARTIFACT_STORE` (Kubeflow Pipelines standalone's own
MinIO) unless :func:`build_pipeline` is given another :class:`S3Access`, or None. ``kfp.local``
ignores the Kubernetes part; local runs build the pipeline without any
(:func:`fraud_detection.pipeline.local.run_local`), so no cluster endpoint reaches them.

No ``from __future__ import annotations`` here: KFP reads the pipeline function's annotations
as types.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fraud_detection.training.storage import S3_ENDPOINT_URL_ENV

PIPELINE_NAME = "fraud-training-pipeline"
PIPELINE_DESCRIPTION = (
    "Card-fraud model training: ingest, validate (pandera), train a class-weighted random forest, "
    "evaluate at the 0.1 threshold, gate, export (joblib, ONNX, feature state, drift reference) "
    "and deploy when the gate passes."
)
#: Pipeline outputs (artifacts) by name.
OUTPUTS: tuple[str, ...] = (
    "validation_report",
    "evaluation",
    "predictions",
    "decision",
    "bundle",
    "run_report",
)


#: The steps that read or write ``s3://`` URLs (data, the served bundle, the model store).
S3_STEPS: tuple[str, ...] = ("ingest", "evaluate", "deploy")


@dataclass(frozen=True)
class S3Access:
    """How the S3 steps reach the object store in a cluster.

    Attributes:
        secret: the Kubernetes Secret (in the namespace the steps run in) holding the keys.
        keys: the Secret's key -> the environment variable it becomes.
        endpoint: the store's URL (``http://host:port``), set as ``AWS_ENDPOINT_URL_S3``; ""
            for the AWS default.
    """

    secret: str
    keys: Mapping[str, str] = field(
        default_factory=lambda: {
            "AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY",
        }
    )
    endpoint: str = ""

    def __post_init__(self) -> None:
        if not self.secret.strip():
            raise ValueError("secret: must name a Kubernetes Secret, got ''")
        if not self.keys:
            raise ValueError("keys: must map at least one Secret key to a variable")
        if self.endpoint and "://" not in self.endpoint:
            raise ValueError(f"endpoint: must be a URL (http://host:port), got {self.endpoint!r}")


#: Kubeflow Pipelines standalone's artifact store: its MinIO service and the Secret it keeps
#: in namespace kubeflow, where the steps run.
KFP_ARTIFACT_STORE = S3Access(
    secret="mlpipeline-minio-artifact",
    keys={"accesskey": "AWS_ACCESS_KEY_ID", "secretkey": "AWS_SECRET_ACCESS_KEY"},
    endpoint="http://minio-service.kubeflow:9000",
)


def use_s3_access(task: Any, access: S3Access) -> Any:
    """Give ``task`` the store's credentials (from the Secret) and endpoint; return it."""
    from kfp import kubernetes

    kubernetes.use_secret_as_env(
        task, secret_name=access.secret, secret_key_to_env=dict(access.keys)
    )
    if access.endpoint:
        task.set_env_variable(S3_ENDPOINT_URL_ENV, access.endpoint)
    return task


def build_pipeline(image: str | None = None, s3: S3Access | None = KFP_ARTIFACT_STORE) -> Any:
    """The pipeline (a KFP ``GraphComponent``) whose components run in ``image``.

    ``s3``: where the S3 steps (:data:`S3_STEPS`) get the store's credentials and endpoint in a
    cluster; None for none (local runs).
    """
    from typing import NamedTuple

    from kfp import dsl
    from kfp.dsl import HTML, Artifact, Dataset, Markdown, Model

    from fraud_detection.pipeline.components import build_components, default_image
    from fraud_detection.training.gate import GateConfig
    from fraud_detection.training.train import TrainParams

    image = image or default_image()
    steps = build_components(image)

    class Outputs(NamedTuple):
        validation_report: Markdown
        evaluation: Artifact
        predictions: Dataset
        decision: Artifact
        bundle: Model
        run_report: HTML

    @dsl.pipeline(name=PIPELINE_NAME, description=PIPELINE_DESCRIPTION)
    def fraud_training_pipeline(
        data: list = [],  # noqa: B006 - KFP pipeline parameters need literal defaults
        kafka_bootstrap: str = "",
        kafka_topic: str = "",
        kafka_max_records: int = 0,
        max_invalid_fraction: float = 0.0,
        split: str = "stratified",
        test_size: float = 0.2,
        train_start: str = "",
        train_end: str = "",
        test_start: str = "",
        test_end: str = "",
        train_days: int = 0,
        gap_days: int = 7,
        test_days: int = 7,
        exclude_known_compromised: bool = True,
        n_estimators: int = TrainParams.n_estimators,
        max_depth: int = TrainParams.max_depth,
        min_samples_leaf: int = TrainParams.min_samples_leaf,
        max_features: str = TrainParams.max_features,
        class_weight: str = TrainParams.class_weight,
        max_train_rows: int = TrainParams.max_train_rows,
        seed: int = TrainParams.seed,
        threshold: float = 0.1,
        min_recall: float = GateConfig.min_recall,
        min_f1: float = GateConfig.min_f1,
        tolerance: float = GateConfig.tolerance,
        allow_uncompared: bool = GateConfig.allow_uncompared,
        review_cost: float = 5.0,
        fraud_amount: float = 0.0,
        drift_reference_size: int = 5000,
        trigger_reason: str = "manual",
        deploy_target: str = "auto",
        registry_dir: str = "",
        service_name: str = "fraud-detector",
        namespace: str = "fraud-detection",
        predictor_image: str = "fraud-detection-predictor:0.1.0",
        transformer_image: str = "fraud-detection-transformer:0.1.0",
        models_uri: str = "",
    ) -> Outputs:
        ingest = steps["ingest"](
            data=data,
            kafka_bootstrap=kafka_bootstrap,
            kafka_topic=kafka_topic,
            kafka_max_records=kafka_max_records,
        )
        validate = steps["validate"](
            raw=ingest.outputs["raw"], max_invalid_fraction=max_invalid_fraction
        )
        train = steps["train"](
            validated=validate.outputs["validated"],
            split=split,
            test_size=test_size,
            train_start=train_start,
            train_end=train_end,
            test_start=test_start,
            test_end=test_end,
            train_days=train_days,
            gap_days=gap_days,
            test_days=test_days,
            exclude_known_compromised=exclude_known_compromised,
            n_estimators=n_estimators,
            max_depth=max_depth,
            min_samples_leaf=min_samples_leaf,
            max_features=max_features,
            class_weight=class_weight,
            max_train_rows=max_train_rows,
            seed=seed,
        )
        evaluate = steps["evaluate"](
            model=train.outputs["model"],
            training_set=train.outputs["training_set"],
            threshold=threshold,
            registry_dir=registry_dir,
            review_cost=review_cost,
            fraud_amount=fraud_amount,
            deploy_target=deploy_target,
            service_name=service_name,
            namespace=namespace,
        )
        gate = steps["gate"](
            evaluation=evaluate.outputs["evaluation"],
            min_recall=min_recall,
            min_f1=min_f1,
            tolerance=tolerance,
            allow_uncompared=allow_uncompared,
        )
        export = steps["export"](
            model=train.outputs["model"],
            training_set=train.outputs["training_set"],
            validated=validate.outputs["validated"],
            evaluation=evaluate.outputs["evaluation"],
            drift_reference_size=drift_reference_size,
            seed=seed,
            trigger_reason=trigger_reason,
        )
        report = steps["report"](
            evaluation=evaluate.outputs["evaluation"],
            decision=gate.outputs["decision"],
            bundle=export.outputs["bundle"],
        )
        with dsl.If(gate.outputs["Output"] == True, name="gate-passed"):  # noqa: E712 - a KFP condition
            deploy = steps["deploy"](
                bundle=export.outputs["bundle"],
                deploy_target=deploy_target,
                registry_dir=registry_dir,
                service_name=service_name,
                namespace=namespace,
                predictor_image=predictor_image,
                transformer_image=transformer_image,
                models_uri=models_uri,
            )
        if s3 is not None:
            tasks = {"ingest": ingest, "evaluate": evaluate, "deploy": deploy}
            for step in S3_STEPS:
                use_s3_access(tasks[step], s3)
        for task in (ingest, validate, train, evaluate, gate, export, report, deploy):
            # Inputs change between runs behind the same parameters (files, topics, the deployed
            # model): never reuse a cached result.
            task.set_caching_options(False)
        for task in (validate, train, evaluate, export):
            task.set_memory_request("4G").set_cpu_request("1")
        train.set_memory_limit("16G")
        return Outputs(
            validation_report=validate.outputs["report"],
            evaluation=evaluate.outputs["evaluation"],
            predictions=evaluate.outputs["predictions"],
            decision=gate.outputs["decision"],
            bundle=export.outputs["bundle"],
            run_report=report.outputs["run_report"],
        )

    return fraud_training_pipeline


def pipeline_parameters(pipeline: Any = None) -> dict[str, tuple[str, Any]]:
    """The pipeline's parameters: name -> (KFP type name, default)."""
    pipeline = pipeline if pipeline is not None else build_pipeline()
    return {
        name: (spec.type, spec.default) for name, spec in pipeline.component_spec.inputs.items()
    }
