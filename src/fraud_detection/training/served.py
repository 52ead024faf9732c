"""The model an InferenceService serves: where its bundle is, and a local copy of it.

In a cluster the evaluate step compares the new model with the model in service, not with a
local registry. The InferenceService (``fraud-detector``) is read through the same
``CustomObjectsApi`` protocol as the deploy step (:mod:`fraud_detection.training.deploy`); the
bundle's location is its predictor's storage URI, wherever the spec puts it:

* ``predictor.model.storageUri`` (a model-format predictor; the deploy step sets it too);
* ``predictor.<framework>.storageUri`` (``sklearn``, ``onnx``, …: the older form);
* ``predictor.storageUris`` with a single entry;
* the ``STORAGE_URI`` environment variable of the predictor's containers (a custom predictor,
  as ``manifests/base/inferenceservice.yaml`` and the deploy step write it),
  ``kserve-container`` first.

The bundle is then copied from that URL (:func:`fraud_detection.training.storage.fetch_tree`).
Every way this can fail is a :class:`ServedModel` with a ``status`` and a ``note`` saying why, so
the evaluation and the gate can say so.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fraud_detection.training.deploy import (
    STORAGE_URI_ENV,
    CustomObjectsApi,
    current_namespace,
    read_inference_service,
)
from fraud_detection.training.gate import NOT_DEPLOYED, UNAVAILABLE

#: The InferenceService's model was located (``storage_uri`` is set). The other statuses are
#: the gate's: NOT_DEPLOYED (no InferenceService yet) and UNAVAILABLE (a model may be in service,
#: but where its bundle is cannot be known or read).
FOUND = "found"
#: Predictor sections that carry a ``storageUri`` (v1beta1 framework specs).
FRAMEWORKS: tuple[str, ...] = (
    "sklearn",
    "onnx",
    "xgboost",
    "lightgbm",
    "tensorflow",
    "pytorch",
    "triton",
    "pmml",
    "paddle",
    "huggingface",
)
_MAIN_CONTAINER = "kserve-container"


@dataclass(frozen=True)
class ServedModel:
    """Where the InferenceService's bundle is (``status`` FOUND), or why that is not known."""

    service: str
    status: str
    storage_uri: str = ""
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The fields the evaluation records (empty ones left out)."""
        record = {"source": "kserve", "service": self.service, "status": self.status}
        if self.storage_uri:
            record["storage_uri"] = self.storage_uri
        if self.note:
            record["note"] = self.note
        return record


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def _container_uri(containers: Any) -> str:
    if not isinstance(containers, list):
        return ""
    ordered = sorted(
        (c for c in containers if isinstance(c, Mapping)),
        key=lambda c: c.get("name") != _MAIN_CONTAINER,
    )
    for container in ordered:
        for env in container.get("env") or []:
            named = isinstance(env, Mapping) and env.get("name") == STORAGE_URI_ENV
            if named and (uri := _text(env.get("value"))):
                return uri
    return ""


def predictor_storage_uri(service: Mapping[str, Any]) -> str | None:
    """The storage URI of the InferenceService's predictor, or None when it names none."""
    predictor = (service.get("spec") or {}).get("predictor")
    if not isinstance(predictor, Mapping):
        return None
    for section in ("model", *FRAMEWORKS):
        part = predictor.get(section)
        if isinstance(part, Mapping) and (uri := _text(part.get("storageUri"))):
            return uri
    uris = predictor.get("storageUris")
    single = isinstance(uris, list) and len(uris) == 1 and isinstance(uris[0], Mapping)
    if single and (uri := _text(uris[0].get("uri"))):
        return uri
    return _container_uri(predictor.get("containers")) or None


def find_served_model(api: CustomObjectsApi, name: str, namespace: str) -> ServedModel:
    """Read the InferenceService ``namespace/name`` and locate its predictor's bundle."""
    from kubernetes.client.exceptions import ApiException

    service = f"{namespace}/{name}"
    try:
        found = read_inference_service(api, name, namespace)
    except ApiException as exc:
        if exc.status == 404:
            return ServedModel(
                service, NOT_DEPLOYED, note=f"no InferenceService {service} yet (first deployment)"
            )
        return ServedModel(
            service,
            UNAVAILABLE,
            note=f"reading InferenceService {service} was refused: {exc.status} {exc.reason}",
        )
    except Exception as exc:  # connection errors from the client's HTTP layer
        return ServedModel(
            service,
            UNAVAILABLE,
            note=f"the Kubernetes API could not be reached: {type(exc).__name__}: {exc}",
        )
    if not isinstance(found, Mapping):
        return ServedModel(service, UNAVAILABLE, note=f"InferenceService {service}: not an object")
    uri = predictor_storage_uri(found)
    if uri is None:
        return ServedModel(
            service,
            UNAVAILABLE,
            note=(
                f"InferenceService {service} names no storage URI for its predictor "
                f"(model.storageUri or {STORAGE_URI_ENV})"
            ),
        )
    return ServedModel(service, FOUND, storage_uri=uri)


def served_model(
    name: str, namespace: str = "", api: CustomObjectsApi | None = None
) -> ServedModel:
    """:func:`find_served_model` through the cluster's API (in-cluster config, else kubeconfig).

    ``namespace`` "" means the pod's own namespace. A missing API configuration is reported as
    UNAVAILABLE, not raised.
    """
    from fraud_detection.training.deploy import kubernetes_api

    namespace = namespace or current_namespace()
    if api is None:
        try:
            api = kubernetes_api()
        except Exception as exc:  # no in-cluster config and no kubeconfig
            return ServedModel(
                f"{namespace}/{name}",
                UNAVAILABLE,
                note=f"no Kubernetes API configuration: {type(exc).__name__}: {exc}",
            )
    return find_served_model(api, name, namespace)
