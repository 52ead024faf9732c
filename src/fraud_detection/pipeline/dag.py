"""The training pipeline DAG: ingest → validate → train → evaluate → gate → export → deploy.

``deploy`` runs only inside ``dsl.If`` on the gate's boolean output. ``export`` and ``report`` run
whatever the gate decides, so a refused model is still inspectable. The gate returns a single
``bool`` (its ``Output``) so that the condition resolves both in Kubeflow and in ``kfp.local``.

Every hyperparameter, the split, the threshold and the gate bounds are pipeline parameters, with
the defaults below; :data:`PIPELINE_NAME` names the pipeline in the Kubeflow UI.
``trigger_reason`` says why the run was started (``manual``, ``schedule``, or the retraining
trigger's reason); the export step records it in the bundle's manifest.

No ``from __future__ import annotations`` here: KFP reads the pipeline function's annotations
as types.
"""

from typing import Any

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


def build_pipeline(image: str | None = None) -> Any:
    """The pipeline (a KFP ``GraphComponent``) whose components run in ``image``."""
    from typing import NamedTuple

    from kfp import dsl
    from kfp.dsl import HTML, Artifact, Dataset, Markdown, Model

    from fraud_detection.pipeline.components import build_components, default_image

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
        n_estimators: int = 100,
        max_depth: int = 20,
        min_samples_leaf: int = 1,
        max_features: str = "sqrt",
        class_weight: str = "balanced",
        max_train_rows: int = 200_000,
        seed: int = 42,
        threshold: float = 0.1,
        min_recall: float = 0.75,
        min_f1: float = 0.05,
        tolerance: float = 0.02,
        allow_uncompared: bool = False,
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
            )
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
