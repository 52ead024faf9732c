"""Deployment: target choice, local promotion, and the InferenceService create/patch calls.

No cluster runs here: :class:`FakeKubernetesCustomObjectsApi` stands in for
``kubernetes.client.CustomObjectsApi`` and records exactly what would be sent.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from fraud_detection.bundle import MODEL_JOBLIB, Manifest, write_manifest
from fraud_detection.registry import ModelRegistry
from fraud_detection.training.deploy import (
    KSERVE_GROUP,
    KSERVE_PLURAL,
    KSERVE_VERSION,
    MODEL_MOUNT,
    VERSION_ANNOTATION,
    DeployError,
    ServiceSpec,
    deploy_kserve,
    inference_service,
    promote_local,
    resolve_target,
    storage_patch,
    storage_uri,
)
from fraud_detection.training.steps import deploy_step


class FakeKubernetesCustomObjectsApi:
    """An in-memory stand-in for ``CustomObjectsApi``: stores objects, records every call."""

    def __init__(self, fail_get_with: int | None = None) -> None:
        self.objects: dict[tuple[str, ...], dict[str, Any]] = {}
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.fail_get_with = fail_get_with

    def get_namespaced_custom_object(self, **where: Any) -> dict[str, Any]:
        self.calls.append(("get", where))
        if self.fail_get_with is not None:
            raise ApiException(status=self.fail_get_with, reason="Forbidden")
        key = tuple(where[k] for k in ("group", "version", "namespace", "plural", "name"))
        if key not in self.objects:
            raise ApiException(status=404, reason="Not Found")
        return self.objects[key]

    def create_namespaced_custom_object(self, **call: Any) -> dict[str, Any]:
        self.calls.append(("create", copy.deepcopy(call)))
        body = call["body"]
        key = (call["group"], call["version"], call["namespace"], call["plural"])
        self.objects[(*key, body["metadata"]["name"])] = copy.deepcopy(body)
        return body

    def patch_namespaced_custom_object(self, **call: Any) -> dict[str, Any]:
        self.calls.append(("patch", copy.deepcopy(call)))
        key = tuple(call[k] for k in ("group", "version", "namespace", "plural", "name"))
        stored = self.objects[key]
        stored["metadata"]["annotations"].update(call["body"]["metadata"]["annotations"])
        for part, changes in call["body"]["spec"].items():  # merge patch: lists are replaced
            stored["spec"][part].update(copy.deepcopy(changes))
        return stored


SPEC = ServiceSpec(
    name="fraud-detector",
    namespace="fraud",
    storage_uri="s3://mlpipeline/v2/artifacts/run-1/export/bundle",
    model_version="20260301T020000Z-aaaa1111",
)
KEY = (KSERVE_GROUP, KSERVE_VERSION, "fraud", KSERVE_PLURAL, "fraud-detector")
#: The InferenceService as the serving manifests define it (what a cluster normally runs).
SERVING_SPEC = Path(__file__).resolve().parents[2] / "manifests" / "base" / "inferenceservice.yaml"


def make_bundle(directory: Path, version: str, created_at: str) -> Path:
    """A minimal checksummed bundle (the registry only needs a model file and a manifest)."""
    directory.mkdir(parents=True)
    (directory / MODEL_JOBLIB).write_bytes(version.encode())
    write_manifest(directory, Manifest(version, ["log_amount"], 0.1, created_at=created_at))
    return directory


def test_auto_means_kserve_inside_a_pod_and_local_elsewhere() -> None:
    assert resolve_target("auto", {"KUBERNETES_SERVICE_HOST": "10.0.0.1"}) == "kserve"
    assert resolve_target("auto", {}) == "local"
    assert resolve_target("LOCAL", {"KUBERNETES_SERVICE_HOST": "x"}) == "local"
    with pytest.raises(DeployError, match="deploy_target"):
        resolve_target("cloud")


def test_kfp_minio_artifacts_are_s3_to_kserve() -> None:
    assert storage_uri("minio://mlpipeline/v2/x/bundle") == "s3://mlpipeline/v2/x/bundle"
    assert storage_uri("gs://bucket/x") == "gs://bucket/x"


def test_a_new_inference_service_runs_transformer_and_predictor_from_the_bundle() -> None:
    service = inference_service(SPEC)
    assert service["apiVersion"] == "serving.kserve.io/v1beta1"
    assert service["kind"] == "InferenceService"
    assert service["metadata"]["annotations"][VERSION_ANNOTATION] == SPEC.model_version
    for part, image in (
        ("predictor", "fraud-detection-predictor:0.1.0"),
        ("transformer", "fraud-detection-transformer:0.1.0"),
    ):
        (container,) = service["spec"][part]["containers"]
        assert container["image"] == image
        assert container["args"][:4] == [
            "--model_name",
            "fraud-detector",
            "--model_dir",
            MODEL_MOUNT,
        ]
        assert {"name": "STORAGE_URI", "value": SPEC.storage_uri} in container["env"]
    assert service["spec"]["transformer"]["maxReplicas"] == 1


def test_a_missing_inference_service_is_created() -> None:
    api = FakeKubernetesCustomObjectsApi()
    record = deploy_kserve(SPEC, api)
    assert record["action"] == "created"
    assert [name for name, _ in api.calls] == ["get", "create"]
    _, create = api.calls[1]
    assert create == {
        "group": KSERVE_GROUP,
        "version": KSERVE_VERSION,
        "namespace": "fraud",
        "plural": KSERVE_PLURAL,
        "body": inference_service(SPEC),
    }


def test_the_serving_manifest_is_patched_to_the_new_bundle_and_nothing_else() -> None:
    existing = yaml.safe_load(SERVING_SPEC.read_text())
    existing["metadata"]["namespace"] = "fraud"
    api = FakeKubernetesCustomObjectsApi()
    api.objects[KEY] = copy.deepcopy(existing)
    assert deploy_kserve(SPEC, api)["action"] == "patched"
    name, patch = api.calls[-1]
    assert name == "patch" and patch["name"] == "fraud-detector"
    assert patch["body"]["metadata"] == {"annotations": {VERSION_ANNOTATION: SPEC.model_version}}
    assert set(patch["body"]["spec"]) == {"predictor", "transformer"}
    stored = api.objects[KEY]
    for part in ("predictor", "transformer"):
        (before,) = existing["spec"][part]["containers"]
        (after,) = stored["spec"][part]["containers"]
        env = {item["name"]: item.get("value") for item in after["env"]}
        assert env["STORAGE_URI"] == SPEC.storage_uri
        assert [e for e in after["env"] if e["name"] != "STORAGE_URI"] == [
            e for e in before["env"] if e["name"] != "STORAGE_URI"
        ]
        for field in ("image", "args", "resources", "readinessProbe"):
            assert after[field] == before[field], (part, field)
        assert stored["spec"][part]["maxReplicas"] == existing["spec"][part]["maxReplicas"]


def test_a_model_section_gets_the_storage_uri_and_an_empty_spec_is_refused() -> None:
    existing = {"spec": {"predictor": {"model": {"modelFormat": {"name": "sklearn"}}}}}
    patch = storage_patch(existing, SPEC)
    assert patch["spec"] == {"predictor": {"model": {"storageUri": SPEC.storage_uri}}}
    with pytest.raises(DeployError, match="no container or model"):
        storage_patch({"spec": {}}, SPEC)


def test_an_api_error_other_than_not_found_is_a_deploy_error() -> None:
    api = FakeKubernetesCustomObjectsApi(fail_get_with=403)
    with pytest.raises(DeployError, match="403 Forbidden"):
        deploy_kserve(SPEC, api)
    assert [name for name, _ in api.calls] == ["get"]


def test_local_promotion_switches_current_and_keeps_the_previous_version(tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    first = make_bundle(tmp_path / "b1", "v1", "2026-01-01T00:00:00+00:00")
    second = make_bundle(tmp_path / "b2", "v2", "2026-02-01T00:00:00+00:00")
    assert promote_local(first, registry)["previous_version"] is None
    record = promote_local(second, registry)
    assert record == {
        "target": "local",
        "registry": str(registry.resolve()),
        "model_version": "v2",
        "previous_version": "v1",
        "current": str((registry / "versions" / "v2").resolve()),
    }
    assert ModelRegistry(registry).rollback() == "v1"


def test_the_deploy_step_sends_the_artifact_uri_to_kserve(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "bundle", "v9", "2026-03-01T00:00:00+00:00")
    record, api = _deploy_to_kserve(
        bundle, tmp_path / "record.json", predictor_image="p:1", transformer_image="t:1"
    )
    assert record["storage_uri"] == "s3://mlpipeline/v2/artifacts/run/export/bundle"
    assert record["model_version"] == "v9"
    body = api.calls[-1][1]["body"]
    assert body["metadata"]["annotations"][VERSION_ANNOTATION] == "v9"
    assert body["spec"]["predictor"]["containers"][0]["image"] == "p:1"
    assert (tmp_path / "record.json").is_file()


def _deploy_to_kserve(
    bundle: Path, record: Path, **options: Any
) -> tuple[dict[str, Any], FakeKubernetesCustomObjectsApi]:
    """The deploy step to KServe (a fake API) with KFP's artifact URI; ``options`` as given."""
    api = FakeKubernetesCustomObjectsApi()
    result = deploy_step(
        bundle,
        "minio://mlpipeline/v2/artifacts/run/export/bundle",
        "kserve",
        "",
        "fraud-detector",
        "fraud",
        record,
        api=api,
        **options,
    )
    return result, api


def test_the_deploy_step_copies_the_bundle_into_the_s3_model_store(tmp_path: Path) -> None:
    from fraud_detection.training.storage import fetch_tree
    from support.s3 import s3_bucket

    bundle = make_bundle(tmp_path / "bundle", "v9", "2026-03-01T00:00:00+00:00")
    with s3_bucket() as (bucket, environ):
        store = f"{bucket}/fraud-detection/{tmp_path.name}/models"
        record, api = _deploy_to_kserve(
            bundle, tmp_path / "record.json", models_uri=store, environ=environ
        )
        assert record["storage_uri"] == f"{store}/v9/"
        assert record["store"] == "copied"
        assert record["models_uri"] == store
        assert record["artifact_uri"] == "s3://mlpipeline/v2/artifacts/run/export/bundle"
        (container,) = api.calls[-1][1]["body"]["spec"]["predictor"]["containers"]
        assert {"name": "STORAGE_URI", "value": f"{store}/v9/"} in container["env"]
        copy = fetch_tree(record["storage_uri"], tmp_path / "copy", environ)
        assert sorted(p.name for p in copy.iterdir()) == sorted(p.name for p in bundle.iterdir())
        # A second run of the same version leaves the complete copy as it is.
        again, _ = _deploy_to_kserve(
            bundle, tmp_path / "again.json", models_uri=store, environ=environ
        )
        assert (again["store"], again["storage_uri"]) == ("exists", record["storage_uri"])
    assert yaml.safe_load((tmp_path / "record.json").read_text()) == record


@pytest.mark.parametrize("scheme", ["file", "memory"])
def test_the_deploy_step_uses_the_store_on_any_fsspec_url(tmp_path: Path, scheme: str) -> None:
    bundle = make_bundle(tmp_path / "bundle", "v7", "2026-03-01T00:00:00+00:00")
    store = (tmp_path / "store").as_uri() if scheme == "file" else f"memory://{tmp_path.name}/m"
    record, _ = _deploy_to_kserve(bundle, tmp_path / "record.json", models_uri=store)
    assert record["storage_uri"] == f"{store}/v7/" and record["store"] == "copied"
    from fraud_detection.training.storage import read_object

    assert read_object(f"{store}/v7/manifest.json") == (bundle / "manifest.json").read_bytes()


def test_without_a_store_and_for_local_deployment_nothing_is_copied(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "bundle", "v8", "2026-03-01T00:00:00+00:00")
    record, _ = _deploy_to_kserve(bundle, tmp_path / "r.json", models_uri="")
    assert "store" not in record and record["storage_uri"].startswith("s3://mlpipeline/v2/")
    local = deploy_step(
        bundle,
        "",
        "local",
        str(tmp_path / "registry"),
        "fraud-detector",
        "fraud",
        tmp_path / "l.json",
        models_uri=(tmp_path / "store").as_uri(),
    )
    assert local["target"] == "local" and not (tmp_path / "store").exists()


def test_a_bad_store_fails_the_deploy_before_the_service_is_touched(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "bundle", "v6", "2026-03-01T00:00:00+00:00")
    for store, message in (("/var/models", "must be a URL"), ("pvc://claim/m", "pvc://")):
        api = FakeKubernetesCustomObjectsApi()
        with pytest.raises(DeployError, match=message):
            deploy_step(
                bundle,
                "s3://a/b",
                "kserve",
                "",
                "fraud-detector",
                "fraud",
                tmp_path / "r.json",
                api=api,
                models_uri=store,
            )
        assert api.calls == []
