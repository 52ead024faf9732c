"""In a cluster the evaluate step compares with the model the InferenceService serves.

Real parts: the steps (ingest, validate, train, evaluate, gate) on generated data, a real bundle
(made with the export step's own ONNX conversion and feature-state snapshot, see
``tests/support/bundles.py``) read through fsspec from ``file://`` and ``memory://`` URLs, and
from a real S3-protocol server (moto) when ``moto`` and ``s3fs`` are installed. Only the
Kubernetes API cannot run here: :class:`FakeKubernetesCustomObjectsApi` stands in for
``kubernetes.client.CustomObjectsApi`` and serves InferenceService objects from memory.
"""

from __future__ import annotations

import copy
import importlib.util
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pandas as pd
import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from fraud_detection.bundle import MODEL_JOBLIB, Manifest, read_manifest, write_manifest
from fraud_detection.data.files import write_transactions
from fraud_detection.registry import ModelRegistry
from fraud_detection.training.dataset import SPLIT_COLUMN, TEST, SplitConfig, feature_matrix
from fraud_detection.training.deploy import (
    KSERVE_GROUP,
    KSERVE_PLURAL,
    KSERVE_VERSION,
    ServiceSpec,
    deploy_kserve,
    inference_service,
    storage_patch,
)
from fraud_detection.training.gate import (
    COMPARED,
    INCOMPARABLE,
    NOT_DEPLOYED,
    UNAVAILABLE,
    GateConfig,
    decide,
)
from fraud_detection.training.served import (
    FOUND,
    ServedModel,
    find_served_model,
    predictor_storage_uri,
)
from fraud_detection.training.steps import (
    evaluate_served,
    evaluate_step,
    find_deployed,
    gate_step,
    ingest_step,
    read_json,
    train_step,
    validate_step,
)
from fraud_detection.training.storage import StorageError, fetch_tree, s3_options
from fraud_detection.training.train import TrainParams
from support.bundles import SplitData
from support.s3 import s3_server

NAMESPACE = "fraud-detection"
NAME = "fraud-detector"
SERVICE = f"{NAMESPACE}/{NAME}"
SERVING_SPEC = Path(__file__).resolve().parents[2] / "manifests" / "base" / "inferenceservice.yaml"
GATE = GateConfig(min_recall=0.0, min_f1=0.0, tolerance=0.02)


class FakeKubernetesCustomObjectsApi:
    """An in-memory stand-in for ``kubernetes.client.CustomObjectsApi`` (no cluster here).

    Holds InferenceService objects by (group, version, namespace, plural, name); ``refuse_with``
    makes every read fail with that HTTP status, as an API server refusing the call would.
    """

    def __init__(self, refuse_with: int | None = None) -> None:
        self.objects: dict[tuple[str, ...], dict[str, Any]] = {}
        self.reads: list[dict[str, Any]] = []
        self.refuse_with = refuse_with

    def add(self, service: dict[str, Any], namespace: str = NAMESPACE) -> None:
        """Store ``service`` as if it had been applied in ``namespace``."""
        name = service["metadata"]["name"]
        key = (KSERVE_GROUP, KSERVE_VERSION, namespace, KSERVE_PLURAL, name)
        self.objects[key] = copy.deepcopy(service)

    def get_namespaced_custom_object(self, **where: Any) -> dict[str, Any]:
        self.reads.append(where)
        if self.refuse_with is not None:
            raise ApiException(status=self.refuse_with, reason="Forbidden")
        key = tuple(where[k] for k in ("group", "version", "namespace", "plural", "name"))
        if key not in self.objects:
            raise ApiException(status=404, reason="Not Found")
        return copy.deepcopy(self.objects[key])

    def create_namespaced_custom_object(self, **call: Any) -> dict[str, Any]:
        body = call["body"]
        self.add(body, call["namespace"])
        return body

    def patch_namespaced_custom_object(self, **call: Any) -> dict[str, Any]:
        key = tuple(call[k] for k in ("group", "version", "namespace", "plural", "name"))
        stored = self.objects[key]
        stored["metadata"].setdefault("annotations", {}).update(
            call["body"]["metadata"]["annotations"]
        )
        for part, changes in call["body"]["spec"].items():  # merge patch: lists are replaced
            stored["spec"][part].update(copy.deepcopy(changes))
        return stored


def serving_manifest(storage_uri: str) -> dict[str, Any]:
    """The base InferenceService with both components' STORAGE_URI set to ``storage_uri``."""
    service = yaml.safe_load(SERVING_SPEC.read_text())
    for part in ("predictor", "transformer"):
        for container in service["spec"][part]["containers"]:
            for env in container["env"]:
                if env["name"] == "STORAGE_URI":
                    env["value"] = storage_uri
    return service


def api_serving(storage_uri: str) -> FakeKubernetesCustomObjectsApi:
    api = FakeKubernetesCustomObjectsApi()
    api.add(serving_manifest(storage_uri))
    return api


# ----------------------------------------------------------------------------- real pipeline
@pytest.fixture(scope="module")
def candidate(serving_data: SplitData, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A new model from the real steps: ingest, validate and train on generated data."""
    root = tmp_path_factory.mktemp("candidate")
    frame = pd.concat([serving_data.train, serving_data.held_out], ignore_index=True)
    source = write_transactions(frame, root / "transactions.parquet")
    ingest_step([str(source)], "", "", 0, root / "raw.parquet")
    validate_step(root / "raw.parquet", root / "validated.parquet", root / "validation.md")
    train_step(
        root / "validated.parquet",
        root / "model",
        root / "table.parquet",
        SplitConfig(kind="stratified", test_size=0.25, seed=3),
        TrainParams(n_estimators=10, max_depth=8, seed=3, n_jobs=1),
    )
    return {"root": root, "model": root / "model", "table": root / "table.parquet"}


@pytest.fixture(scope="module")
def test_set(candidate: dict[str, Path]) -> dict[str, Any]:
    """The candidate's test rows, their features and labels (what the evaluate step scores)."""
    table = pd.read_parquet(candidate["table"])
    test = table[table[SPLIT_COLUMN] == TEST].reset_index(drop=True)
    features, labels = feature_matrix(test)
    return {"test": test, "features": features, "labels": labels}


def evaluate(candidate: dict[str, Path], out: Path, deployed: Any) -> dict[str, Any]:
    return evaluate_step(
        candidate["model"],
        candidate["table"],
        0.1,
        out / "evaluation.json",
        out / "predictions.parquet",
        deployed_dir=deployed,
        seed=1,
    )


def gate(out: Path, config: GateConfig = GATE) -> tuple[bool, dict[str, Any]]:
    passed = gate_step(out / "evaluation.json", config, out / "decision.json")
    return passed, read_json(out / "decision.json")


def served(
    test_set: dict[str, Any], model: ServedModel, environ: dict[str, str] | None = None
) -> dict[str, Any]:
    return evaluate_served(
        model, test_set["features"], test_set["labels"], test_set["test"], 0.1, environ
    )


def found(uri: str) -> ServedModel:
    return ServedModel(SERVICE, FOUND, storage_uri=uri)


# ------------------------------------------------------------------ locating the served model
def test_the_storage_uri_is_read_where_the_manifests_and_the_deploy_step_put_it() -> None:
    # manifests/base/inferenceservice.yaml as committed: a custom predictor with STORAGE_URI.
    assert predictor_storage_uri(yaml.safe_load(SERVING_SPEC.read_text())) == (
        "s3://mlpipeline/fraud-detection/models/current"
    )
    spec = ServiceSpec(NAME, NAMESPACE, "s3://mlpipeline/v2/run-1/bundle", "v1")
    assert predictor_storage_uri(inference_service(spec)) == spec.storage_uri
    # A model-format predictor, patched by the deploy step: model.storageUri wins.
    model_format = {
        "spec": {
            "predictor": {
                "model": {"modelFormat": {"name": "sklearn"}, "storageUri": "s3://old/bundle"}
            }
        }
    }
    patched = copy.deepcopy(model_format)
    patched["spec"]["predictor"].update(storage_patch(model_format, spec)["spec"]["predictor"])
    assert predictor_storage_uri(patched) == spec.storage_uri
    legacy = {"spec": {"predictor": {"sklearn": {"storageUri": "gs://b/m"}}}}
    assert predictor_storage_uri(legacy) == "gs://b/m"
    listed = {"spec": {"predictor": {"storageUris": [{"uri": "s3://b/one"}]}}}
    assert predictor_storage_uri(listed) == "s3://b/one"
    sidecar_first = {
        "spec": {
            "predictor": {
                "containers": [
                    {"name": "sidecar", "env": [{"name": "STORAGE_URI", "value": "s3://x/side"}]},
                    {
                        "name": "kserve-container",
                        "env": [{"name": "STORAGE_URI", "value": "s3://x/m"}],
                    },
                ]
            }
        }
    }
    assert predictor_storage_uri(sidecar_first) == "s3://x/m"
    assert predictor_storage_uri({"spec": {"predictor": {"containers": [{"name": "c"}]}}}) is None


def test_what_the_deploy_step_rolls_out_is_what_the_evaluate_step_finds() -> None:
    api = FakeKubernetesCustomObjectsApi()
    first = ServiceSpec(NAME, NAMESPACE, "s3://mlpipeline/v2/run-1/bundle", "v1")
    deploy_kserve(first, api)  # created
    assert find_served_model(api, NAME, NAMESPACE).storage_uri == first.storage_uri
    second = ServiceSpec(NAME, NAMESPACE, "s3://mlpipeline/v2/run-2/bundle", "v2")
    assert deploy_kserve(second, api)["action"] == "patched"
    located = find_served_model(api, NAME, NAMESPACE)
    assert (located.status, located.storage_uri) == (FOUND, second.storage_uri)
    assert api.reads[-1] == {
        "group": "serving.kserve.io",
        "version": "v1beta1",
        "namespace": NAMESPACE,
        "plural": "inferenceservices",
        "name": NAME,
    }


def test_no_service_is_a_first_deployment_and_a_refusal_is_unavailable() -> None:
    missing = find_served_model(FakeKubernetesCustomObjectsApi(), NAME, NAMESPACE)
    assert missing.status == NOT_DEPLOYED
    assert missing.note == f"no InferenceService {SERVICE} yet (first deployment)"
    refused = find_served_model(FakeKubernetesCustomObjectsApi(refuse_with=403), NAME, NAMESPACE)
    assert refused.status == UNAVAILABLE
    assert refused.note == f"reading InferenceService {SERVICE} was refused: 403 Forbidden"
    bare = FakeKubernetesCustomObjectsApi()
    bare.add({"metadata": {"name": NAME}, "spec": {"predictor": {"containers": [{"name": "c"}]}}})
    assert find_served_model(bare, NAME, NAMESPACE).status == UNAVAILABLE


def test_find_deployed_keeps_the_local_registry_and_reads_the_service_in_kserve_mode(
    serving_bundle: Path, tmp_path: Path
) -> None:
    registry = tmp_path / "registry"
    assert find_deployed("local", str(registry)) is None
    ModelRegistry(registry).promote(serving_bundle)
    local = find_deployed("local", str(registry))
    assert isinstance(local, Path) and read_manifest(local).model_version == "test-1"
    api = api_serving("s3://mlpipeline/v2/run-1/bundle")
    in_cluster = find_deployed("kserve", str(registry), NAME, NAMESPACE, api=api)
    assert in_cluster == ServedModel(SERVICE, FOUND, storage_uri="s3://mlpipeline/v2/run-1/bundle")


# -------------------------------------------------------------- evaluate and gate, end to end
def test_the_served_bundle_is_fetched_verified_and_scored_on_the_same_test_set(
    candidate: dict[str, Path], serving_bundle: Path, tmp_path: Path
) -> None:
    api = api_serving(serving_bundle.as_uri())  # file:///…
    model = find_deployed("kserve", "", NAME, NAMESPACE, api=api)
    evaluation = evaluate(candidate, tmp_path, model)
    deployed = evaluation["deployed"]
    assert deployed["evaluated"] is True and deployed["status"] == COMPARED
    assert deployed["source"] == "kserve" and deployed["service"] == SERVICE
    assert deployed["storage_uri"] == serving_bundle.as_uri()
    assert deployed["model_version"] == "test-1"
    assert "path" not in deployed  # the temporary copy is gone; storage_uri says where it is
    # Scored on the same test rows as the new model, and differently (another model).
    assert deployed["metrics"]["test_rows"] == evaluation["metrics"]["test_rows"]
    assert deployed["metrics"]["pr_auc"] != evaluation["metrics"]["pr_auc"]
    passed, decision = gate(tmp_path, GateConfig(0.0, 0.0, tolerance=0.0))
    rules = [check["rule"] for check in decision["checks"]]
    assert "recall >= deployed recall - tolerance" in rules
    recall = next(c for c in decision["checks"] if c["rule"].startswith("recall >= deployed"))
    assert recall["bound"] == pytest.approx(deployed["metrics"]["recall"])
    new, old = evaluation["metrics"], deployed["metrics"]
    assert passed is (new["recall"] >= old["recall"] and new["f1"] >= old["f1"])
    assert decision["compared_with"] == {
        "source": "kserve",
        "service": SERVICE,
        "storage_uri": serving_bundle.as_uri(),
        "status": COMPARED,
    }
    assert decision["deployed_model_version"] == "test-1"


def test_a_first_deployment_passes_on_the_absolute_bounds_and_says_so(
    candidate: dict[str, Path], tmp_path: Path
) -> None:
    model = find_deployed("kserve", "", NAME, NAMESPACE, api=FakeKubernetesCustomObjectsApi())
    deployed = evaluate(candidate, tmp_path, model)["deployed"]
    assert deployed == {
        "evaluated": False,
        "source": "kserve",
        "service": SERVICE,
        "status": NOT_DEPLOYED,
        "note": f"no InferenceService {SERVICE} yet (first deployment)",
    }
    passed, decision = gate(tmp_path)
    assert passed is True
    assert decision["reasons"][-1] == (
        f"not compared with the served model: no InferenceService {SERVICE} yet (first deployment)"
    )
    strict = gate(tmp_path, GateConfig(min_recall=1.01, min_f1=0.0, tolerance=0.0))[0]
    assert strict is False  # the absolute bounds still apply


def test_an_unreachable_served_model_blocks_unless_allowed(
    candidate: dict[str, Path], tmp_path: Path
) -> None:
    gone = (tmp_path / "no-such-bundle").as_uri()
    model = find_deployed("kserve", "", NAME, NAMESPACE, api=api_serving(gone))
    deployed = evaluate(candidate, tmp_path, model)["deployed"]
    assert deployed["evaluated"] is False and deployed["status"] == UNAVAILABLE
    assert deployed["note"] == f"the served bundle is unreachable: {gone}: no such object or prefix"
    passed, decision = gate(tmp_path)
    assert passed is False
    assert decision["reasons"][-1] == (
        f"FAILED: not compared with the served model: the served bundle is unreachable: {gone}: "
        "no such object or prefix; set allow_uncompared to deploy without the comparison"
    )
    allowed = GateConfig(0.0, 0.0, 0.02, allow_uncompared=True)
    passed, decision = gate(tmp_path, allowed)
    assert passed is True and decision["config"]["allow_uncompared"] is True
    assert decision["reasons"][-1].startswith(
        "allowed (allow_uncompared): not compared with the served model: the served bundle is "
        "unreachable"
    )


def test_an_api_refusal_is_visible_and_blocks(candidate: dict[str, Path], tmp_path: Path) -> None:
    api = FakeKubernetesCustomObjectsApi(refuse_with=403)
    evaluate(candidate, tmp_path, find_deployed("kserve", "", NAME, NAMESPACE, api=api))
    passed, decision = gate(tmp_path)
    assert passed is False
    assert (
        f"reading InferenceService {SERVICE} was refused: 403 Forbidden"
        in (decision["reasons"][-1])
    )


# -------------------------------------------------------------- every other reason, one by one
def test_the_stock_pvc_storage_is_not_readable_from_the_step(test_set: dict[str, Any]) -> None:
    record = served(test_set, found("pvc://fraud-models/current"))
    assert record["status"] == UNAVAILABLE
    assert "pvc:// is not readable from a pipeline step" in record["note"]


def test_a_tampered_served_bundle_is_unusable(
    test_set: dict[str, Any], serving_bundle: Path, tmp_path: Path
) -> None:
    bundle = shutil.copytree(serving_bundle, tmp_path / "bundle")
    (bundle / MODEL_JOBLIB).write_bytes(b"not the model the manifest describes")
    record = served(test_set, found(bundle.as_uri()))
    assert record["status"] == UNAVAILABLE and record["evaluated"] is False
    assert record["note"].startswith("the served bundle is unusable:")
    assert MODEL_JOBLIB in record["note"]


def test_a_served_model_with_other_features_is_named_but_does_not_block(
    test_set: dict[str, Any], serving_bundle: Path, tmp_path: Path
) -> None:
    bundle = shutil.copytree(serving_bundle, tmp_path / "bundle")
    write_manifest(bundle, Manifest("other-1", ["log_amount"], 0.1))
    record = served(test_set, found(bundle.as_uri()))
    assert record["status"] == INCOMPARABLE and record["model_version"] == "other-1"
    assert record["note"] == "the served model uses other features; not comparable on this test set"
    decision = decide(
        {"recall": 0.9, "f1": 0.5}, None, GATE, not_compared=f"not compared: {record['note']}"
    )
    assert decision.passed and decision.reasons[-1] == f"not compared: {record['note']}"


@pytest.fixture
def memory_bundle(serving_bundle: Path) -> Iterator[str]:
    """The real bundle copied into fsspec's in-memory filesystem; its URL."""
    fs = fsspec.filesystem("memory")
    root = f"/served-{uuid.uuid4().hex}"
    for path in serving_bundle.rglob("*"):
        if path.is_file():
            fs.pipe(f"{root}/{path.relative_to(serving_bundle).as_posix()}", path.read_bytes())
    yield f"memory://{root}"
    fs.rm(root, recursive=True)


def test_any_fsspec_url_serves_the_bundle(
    test_set: dict[str, Any], memory_bundle: str, serving_bundle: Path, tmp_path: Path
) -> None:
    copied = fetch_tree(memory_bundle, tmp_path / "copy")
    assert sorted(p.name for p in copied.rglob("*") if p.is_file()) == sorted(
        p.name for p in serving_bundle.rglob("*") if p.is_file()
    )
    record = served(test_set, found(memory_bundle))
    assert record["status"] == COMPARED and record["model_version"] == "test-1"
    from_disk = served(test_set, found(str(serving_bundle)))  # a plain path
    assert from_disk["metrics"] == record["metrics"]
    with pytest.raises(StorageError, match="no such object or prefix"):
        fetch_tree(memory_bundle + "-missing", tmp_path / "none")


def test_gate_rejects_a_non_boolean_allow_uncompared() -> None:
    with pytest.raises(ValueError, match="allow_uncompared"):
        GateConfig(allow_uncompared="yes")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ S3
def test_s3_settings_come_from_the_pipeline_pods_environment() -> None:
    options = s3_options(
        {
            "AWS_ACCESS_KEY_ID": "minio",
            "AWS_SECRET_ACCESS_KEY": "minio123",
            "S3_ENDPOINT": "minio-service.kubeflow:9000",
            "S3_USE_HTTPS": "0",
            "AWS_REGION": "eu-west-1",
            "S3_VERIFY_SSL": "0",
        }
    )
    assert options["key"] == "minio" and options["secret"] == "minio123"
    assert options["endpoint_url"] == "http://minio-service.kubeflow:9000"
    assert options["client_kwargs"] == {"region_name": "eu-west-1", "verify": False}
    assert options["config_kwargs"]["s3"] == {"addressing_style": "path"}
    url = s3_options({"AWS_ENDPOINT_URL": "https://s3.example.com", "S3_ENDPOINT": "x:1"})
    assert url["endpoint_url"] == "https://s3.example.com"  # the AWS variable wins
    assert "key" not in s3_options({})  # the SDK's own chain (IRSA, instance roles) then


@pytest.fixture
def s3_endpoint() -> Iterator[str]:
    """A real S3-protocol server's endpoint URL."""
    with s3_server() as endpoint:
        yield endpoint


def test_the_served_bundle_is_read_from_s3(
    s3_endpoint: str, test_set: dict[str, Any], serving_bundle: Path
) -> None:
    import s3fs

    environ = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "eu-west-1",
        "S3_ENDPOINT": s3_endpoint.removeprefix("http://"),
        "S3_USE_HTTPS": "0",
    }
    fs = s3fs.S3FileSystem(**s3_options(environ))
    fs.makedirs("mlpipeline", exist_ok=True)  # moto's state outlives one server
    for path in serving_bundle.rglob("*"):
        if path.is_file():
            key = f"mlpipeline/v2/run-1/bundle/{path.relative_to(serving_bundle).as_posix()}"
            fs.pipe(key, path.read_bytes())
    # KFP records the artifact as minio://; the deploy step writes s3:// into the service.
    record = served(test_set, found("s3://mlpipeline/v2/run-1/bundle"), environ)
    assert record["status"] == COMPARED and record["model_version"] == "test-1"
    local = served(test_set, found(str(serving_bundle)))
    np.testing.assert_equal(record["metrics"]["recall"], local["metrics"]["recall"])
    absent = served(test_set, found("s3://mlpipeline/v2/run-2/bundle"), environ)
    assert absent["status"] == UNAVAILABLE
    assert "s3://mlpipeline/v2/run-2/bundle" in absent["note"]
    # Nothing listens on the discard port: the store is unreachable.
    unreachable = {**environ, "S3_ENDPOINT": "127.0.0.1:9"}
    record = served(test_set, found("s3://mlpipeline/v2/run-1/bundle"), unreachable)
    assert record["status"] == UNAVAILABLE
    assert record["note"].startswith("the served bundle is unreachable: s3://mlpipeline/")


def test_a_bundle_whose_protocol_package_is_missing_is_unavailable_and_names_it(
    test_set: dict[str, Any],
) -> None:
    missing = next(
        (
            (protocol, package)
            for protocol, package in (("gs", "gcsfs"), ("az", "adlfs"), ("s3", "s3fs"))
            if importlib.util.find_spec(package) is None
        ),
        None,
    )
    if missing is None:
        pytest.skip("gcsfs, adlfs and s3fs are all installed: no missing package to name")
    protocol, package = missing
    record = served(test_set, found(f"{protocol}://models/v2/run-1/bundle"))
    assert record["status"] == UNAVAILABLE
    assert f"{protocol}:// needs the {package} package" in record["note"]
