"""Deployment of a gated bundle: into the local registry, or as a KServe InferenceService.

* **local** — :meth:`fraud_detection.registry.ModelRegistry.promote`: the bundle is verified,
  copied in as a new version, and the ``current`` pointer is switched atomically; earlier
  versions stay for rollback.
* **kserve** — patch the existing ``InferenceService`` (normally applied from
  ``manifests/base/inferenceservice.yaml``) so that both its transformer and its predictor fetch
  the new bundle (``STORAGE_URI``), everything else unchanged; or create a minimal one when there
  is none. The bundle served is the pipeline's export artifact (a run-specific path), or, with a
  model store (``models_uri``), its copy at ``<models_uri>/<model_version>/``
  (:func:`publish_bundle`): one stable place per version, where the drift monitor finds it too.
  The Kubernetes API object is passed in (a ``kubernetes.client.CustomObjectsApi`` or anything
  with the same three methods), so the code path is the same in tests.

``auto`` picks ``kserve`` inside a Kubernetes pod (``KUBERNETES_SERVICE_HOST`` is set) and
``local`` elsewhere.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from fraud_detection.registry import ModelRegistry

LOCAL = "local"
KSERVE = "kserve"
AUTO = "auto"
TARGETS: tuple[str, ...] = (AUTO, LOCAL, KSERVE)

KSERVE_GROUP = "serving.kserve.io"
KSERVE_VERSION = "v1beta1"
KSERVE_PLURAL = "inferenceservices"
#: Where KServe's storage initializer puts the model files in the serving containers.
MODEL_MOUNT = "/mnt/models"
#: The environment variable that makes KServe fetch a custom container's model.
STORAGE_URI_ENV = "STORAGE_URI"
VERSION_ANNOTATION = "fraud-detection.example.com/model-version"
_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class DeployError(RuntimeError):
    """The model could not be deployed."""


class CustomObjectsApi(Protocol):
    """The part of ``kubernetes.client.CustomObjectsApi`` the deployment uses."""

    def get_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, name: str
    ) -> Any: ...

    def create_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, body: Any
    ) -> Any: ...

    def patch_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, name: str, body: Any
    ) -> Any: ...


def resolve_target(target: str, environ: Mapping[str, str] | None = None) -> str:
    """``local`` or ``kserve``; ``auto`` means kserve inside a Kubernetes pod."""
    target = target.strip().lower()
    if target not in TARGETS:
        raise DeployError(f"deploy_target: must be one of {', '.join(TARGETS)}, got {target!r}")
    if target != AUTO:
        return target
    env = os.environ if environ is None else environ
    return KSERVE if env.get("KUBERNETES_SERVICE_HOST") else LOCAL


def promote_local(bundle_dir: str | Path, registry_dir: str | Path | None) -> dict[str, Any]:
    """Promote the bundle into the registry and make it current; return what was done."""
    registry = ModelRegistry(registry_dir or None)
    previous = registry.current_version()
    version = registry.promote(bundle_dir)
    return {
        "target": LOCAL,
        "registry": str(registry.root.resolve()),
        "model_version": version,
        "previous_version": previous,
        "current": str(registry.current()),
    }


def version_uri(models_uri: str, model_version: str) -> str:
    """Where the model store keeps ``model_version``: ``<models_uri>/<model_version>/``.

    The trailing slash makes the URI a prefix of that version's objects only (``v1/`` never
    matches ``v10/``) for readers that list by prefix, as KServe's storage initializer does.
    """
    from fraud_detection.bundle import safe_version
    from fraud_detection.training.storage import is_url, join_url, normalize_url

    if not models_uri.strip():
        raise DeployError("models_uri: is empty (no model store)")
    if not is_url(models_uri):
        raise DeployError(
            f"models_uri: must be a URL such as s3://bucket/prefix, got {models_uri!r}"
        )
    if not safe_version(model_version):
        raise DeployError(f"model_version: not usable in a path, got {model_version!r}")
    return join_url(normalize_url(models_uri), model_version) + "/"


def publish_bundle(
    bundle_dir: str | Path, models_uri: str, environ: Mapping[str, str] | None = None
) -> tuple[str, str]:
    """Copy the (verified) bundle into the model store; return (its URI, ``copied``/``exists``).

    The manifest is written last, so a copy without one is incomplete and is written again. A
    complete copy of the same version (the same manifest) is left as it is; a different bundle
    under the same version is refused (:class:`DeployError`): a version, once published, does
    not change. S3 settings come from ``environ`` (default: the process environment).
    """
    from fraud_detection.bundle import MANIFEST, verify_bundle
    from fraud_detection.training.storage import StorageError, put_tree, read_object

    manifest = verify_bundle(bundle_dir)
    target = version_uri(models_uri, manifest.model_version)
    local = json.loads((Path(bundle_dir) / MANIFEST).read_text())
    try:
        existing = read_object(target + MANIFEST, environ)
        if existing is not None:
            try:
                published = json.loads(existing)
            except ValueError:
                published = None
            if published == local:
                return target, "exists"
            raise DeployError(
                f"models_uri: {target} already holds another bundle of version "
                f"{manifest.model_version} (its {MANIFEST} differs); a published version is "
                "never overwritten"
            )
        put_tree(bundle_dir, target, environ, last=(MANIFEST,))
    except StorageError as exc:
        raise DeployError(f"models_uri: copying the bundle failed: {exc}") from exc
    return target, "copied"


def storage_uri(artifact_uri: str) -> str:
    """The KServe ``storageUri`` of a pipeline artifact (KFP's ``minio://`` is S3 to KServe:
    :func:`~fraud_detection.training.storage.normalize_url`)."""
    from fraud_detection.training.storage import normalize_url

    return normalize_url(artifact_uri)


@dataclass(frozen=True)
class ServiceSpec:
    """Which InferenceService to roll out, to which bundle."""

    name: str
    namespace: str
    storage_uri: str
    model_version: str
    predictor_image: str = "fraud-detection-predictor:0.1.0"
    transformer_image: str = "fraud-detection-transformer:0.1.0"


def _container(image: str, spec: ServiceSpec) -> dict[str, Any]:
    return {
        "name": "kserve-container",
        "image": image,
        # The serving images' entry points start the predictor / transformer.
        "args": ["--model_name", spec.name, "--model_dir", MODEL_MOUNT, "--enable_grpc", "false"],
        # A custom container with STORAGE_URI gets KServe's storage initializer.
        "env": [{"name": STORAGE_URI_ENV, "value": spec.storage_uri}],
    }


def inference_service(spec: ServiceSpec) -> dict[str, Any]:
    """A new ``InferenceService``: the transformer in front of the predictor, one bundle.

    Used only when none exists yet; an existing one (normally applied from
    ``manifests/base/inferenceservice.yaml``) keeps its own settings and only gets the new bundle.
    """
    return {
        "apiVersion": f"{KSERVE_GROUP}/{KSERVE_VERSION}",
        "kind": "InferenceService",
        "metadata": {
            "name": spec.name,
            "namespace": spec.namespace,
            "labels": {"app.kubernetes.io/part-of": "fraud-detection"},
            "annotations": {VERSION_ANNOTATION: spec.model_version},
        },
        "spec": {
            "predictor": {"containers": [_container(spec.predictor_image, spec)]},
            # The transformer holds per-card state in memory: exactly one replica.
            "transformer": {
                "minReplicas": 1,
                "maxReplicas": 1,
                "containers": [_container(spec.transformer_image, spec)],
            },
        },
    }


def storage_patch(existing: Mapping[str, Any], spec: ServiceSpec) -> dict[str, Any]:
    """A JSON merge patch pointing every component of ``existing`` at ``spec.storage_uri``.

    Containers carry ``STORAGE_URI`` (set, or added); a component with a ``model`` section gets
    ``model.storageUri``. A merge patch replaces lists whole, so each container list is sent in
    full, copied from ``existing``: images, arguments and resources stay as they are.
    """
    patch_spec: dict[str, Any] = {}
    for part, component in (existing.get("spec") or {}).items():
        if not isinstance(component, Mapping):
            continue
        changed: dict[str, Any] = {}
        if component.get("containers"):
            containers = copy.deepcopy(list(component["containers"]))
            for container in containers:
                env = [e for e in container.get("env", []) if e.get("name") != STORAGE_URI_ENV]
                container["env"] = [{"name": STORAGE_URI_ENV, "value": spec.storage_uri}, *env]
            changed["containers"] = containers
        if isinstance(component.get("model"), Mapping):
            changed["model"] = {"storageUri": spec.storage_uri}
        if changed:
            patch_spec[part] = changed
    if not patch_spec:
        raise DeployError(
            f"InferenceService {spec.namespace}/{spec.name} has no container or model to point "
            "at the new bundle"
        )
    return {
        "metadata": {"annotations": {VERSION_ANNOTATION: spec.model_version}},
        "spec": patch_spec,
    }


def current_namespace(default: str = "default") -> str:
    """The pod's namespace (from its service-account mount), else ``default``."""
    try:
        return _NAMESPACE_FILE.read_text().strip() or default
    except OSError:
        return default


def inference_services(namespace: str) -> dict[str, str]:
    """The API arguments that address InferenceServices in ``namespace``."""
    return {
        "group": KSERVE_GROUP,
        "version": KSERVE_VERSION,
        "namespace": namespace,
        "plural": KSERVE_PLURAL,
    }


def read_inference_service(api: CustomObjectsApi, name: str, namespace: str) -> Any:
    """The InferenceService ``namespace/name`` (the client's ``ApiException`` when it cannot be
    read: status 404 when there is none)."""
    return api.get_namespaced_custom_object(name=name, **inference_services(namespace))


def apply_inference_service(api: CustomObjectsApi, spec: ServiceSpec) -> str:
    """Create the InferenceService, or patch the existing one to the new bundle.

    Returns ``created`` or ``patched``.
    """
    from kubernetes.client.exceptions import ApiException

    where = inference_services(spec.namespace)
    try:
        existing = read_inference_service(api, spec.name, spec.namespace)
    except ApiException as exc:
        if exc.status != 404:
            raise DeployError(
                f"reading InferenceService {spec.namespace}/{spec.name}: {exc.status} {exc.reason}"
            ) from exc
        api.create_namespaced_custom_object(body=inference_service(spec), **where)
        return "created"
    api.patch_namespaced_custom_object(name=spec.name, body=storage_patch(existing, spec), **where)
    return "patched"


def kubernetes_api() -> CustomObjectsApi:
    """A ``CustomObjectsApi`` from the in-cluster config (or ``~/.kube/config`` outside)."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.CustomObjectsApi()


def deploy_kserve(spec: ServiceSpec, api: CustomObjectsApi | None = None) -> dict[str, Any]:
    """Create or patch the InferenceService to ``spec.storage_uri``; return what was done."""
    api = api if api is not None else kubernetes_api()
    action = apply_inference_service(api, spec)
    return {
        "target": KSERVE,
        "action": action,
        "inference_service": f"{spec.namespace}/{spec.name}",
        "storage_uri": spec.storage_uri,
        "model_version": spec.model_version,
    }
