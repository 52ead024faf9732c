"""Component ``evaluate``: metrics at the threshold, for the new and the deployed model."""

from kfp.dsl import Artifact, ClassificationMetrics, Dataset, Input, Metrics, Model, Output


def evaluate(
    model: Input[Model],
    training_set: Input[Dataset],
    threshold: float,
    registry_dir: str,
    review_cost: float,
    fraud_amount: float,
    evaluation: Output[Artifact],
    predictions: Output[Dataset],
    metrics: Output[Metrics],
    classification: Output[ClassificationMetrics],
    deploy_target: str = "auto",
    service_name: str = "fraud-detector",
    namespace: str = "",
):
    """Score the test set; log recall, precision, F1, PR-AUC, ROC-AUC and Card Precision@100,
    their 95 % confidence bounds, the alerts a day and the share of the fraud amount caught as
    Metrics and the confusion matrix and ROC curve as ClassificationMetrics. The deployed model
    (the registry's, or with deploy_target kserve the one the InferenceService serves) is scored
    on the same test set, or the evaluation says why it could not be."""
    from fraud_detection.training.steps import evaluate_step, find_deployed

    result = evaluate_step(
        model.path,
        training_set.path,
        threshold,
        evaluation.path,
        predictions.path,
        deployed_dir=find_deployed(deploy_target, registry_dir, service_name, namespace),
        review_cost=review_cost,
        fraud_amount=fraud_amount,
    )
    scores = result["metrics"]
    for name in ("recall", "precision", "f1", "pr_auc", "roc_auc", "card_precision_at_100"):
        metrics.log_metric(name, float(scores[name]))
    metrics.log_metric("threshold", float(scores["threshold"]))
    for name in ("alerts_per_day", "fraud_value_caught_share"):
        metrics.log_metric(name, float(scores[name]))
    for name, interval in scores["confidence_intervals"].items():
        if isinstance(interval, dict):
            metrics.log_metric(f"{name}_ci_low", float(interval["low"]))
            metrics.log_metric(f"{name}_ci_high", float(interval["high"]))
    deployed = result["deployed"]
    evaluation.metadata["deployed"] = {
        key: deployed[key]
        for key in ("source", "status", "note", "model_version", "storage_uri")
        if key in deployed
    }
    if deployed.get("evaluated"):
        for name in ("recall", "f1", "pr_auc"):
            metrics.log_metric(f"deployed_{name}", float(deployed["metrics"][name]))
    classification.log_confusion_matrix(result["class_names"], scores["confusion_matrix"])
    roc = result["roc_curve"]
    classification.log_roc_curve(roc["fpr"], roc["tpr"], roc["threshold"])
