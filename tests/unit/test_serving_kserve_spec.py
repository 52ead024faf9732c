"""The InferenceService (manifests/base/inferenceservice.yaml) and the kserve/ Dockerfiles,
checked against the kserve SDK's own models and against the servers' argument parsers."""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import json
import re
import shlex
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from fraud_detection.schema import DEFAULT_THRESHOLD
from fraud_detection.streaming.kafka import ENV_BOOTSTRAP, ENV_TOPIC_MIRROR, Topics

REPO = Path(__file__).resolve().parents[2]
KSERVE_DIR = REPO / "kserve"
SPEC = REPO / "manifests" / "base" / "inferenceservice.yaml"
#: The ConfigMap the transformer takes its Kafka settings and threshold from (envFrom).
CONFIG = REPO / "manifests" / "base" / "config.yaml"


class _Response:
    """What ``ApiClient.deserialize`` reads: an object with the JSON text in ``data``."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.data = json.dumps(document)


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return yaml.safe_load(SPEC.read_text())


def deserialize(document: dict[str, Any]) -> Any:
    """The document read by kserve's ApiClient as a ``V1beta1InferenceService``.

    The kserve models name ``V1ObjectMeta``, ``V1Container`` and so on, which live in the
    kubernetes client package, while the SDK's deserializer only looks in ``kserve.models``:
    they are lent to ``kserve.models`` for the call only, and removed afterwards.
    """
    import kserve
    import kubernetes.client.models as k8s

    with pytest.MonkeyPatch.context() as patch:
        for name in dir(k8s):
            if name.startswith("V1") and not hasattr(kserve.models, name):
                patch.setattr(kserve.models, name, getattr(k8s, name), raising=False)
        return kserve.ApiClient().deserialize(_Response(document), "V1beta1InferenceService")


@pytest.fixture(scope="module")
def isvc(document: dict[str, Any]) -> Any:
    return deserialize(document)


def test_reading_the_spec_leaves_the_sdk_unchanged(document: dict[str, Any]) -> None:
    import kserve

    before = set(vars(kserve.models))
    assert deserialize(document).metadata.name == "fraud-detector"
    assert set(vars(kserve.models)) == before
    assert not hasattr(kserve.models, "V1Container")


def test_the_spec_is_an_inference_service_the_sdk_reads_without_loss(
    document: dict[str, Any], isvc: Any
) -> None:
    import kserve

    assert isinstance(isvc, kserve.V1beta1InferenceService)
    assert (isvc.api_version, isvc.kind) == ("serving.kserve.io/v1beta1", "InferenceService")
    # Every key survives a round trip through the SDK models: no misspelt or unknown field.
    assert kserve.ApiClient().sanitize_for_serialization(isvc) == document


def config() -> dict[str, str]:
    return yaml.safe_load(CONFIG.read_text())["data"]


def env(container: Any) -> dict[str, str]:
    """The container's environment: fraud-detection-config (envFrom), then its own env."""
    found: dict[str, str] = {}
    for source in container.env_from or []:
        assert source.config_map_ref.name == "fraud-detection-config"
        found.update(config())
    found.update({variable.name: variable.value for variable in container.env or []})
    return found


def expand(args: list[str]) -> list[str]:
    """``args`` with ``$(VAR)`` taken from the ConfigMap, as the kubelet expands them."""
    values = config()
    return [re.sub(r"\$\(([A-Z0-9_]+)\)", lambda m: values[m.group(1)], arg) for arg in args]


def test_transformer_and_predictor(isvc: Any) -> None:
    from fraud_detection.serving import predictor, transformer

    (predictor_container,) = isvc.spec.predictor.containers
    (transformer_container,) = isvc.spec.transformer.containers
    predictor_args = predictor.build_parser().parse_args(expand(predictor_container.args))
    # KServe appends --model_name, --predictor_host and --http_port to the transformer.
    injected = ["--predictor_host", "fraud-detector-predictor.default", "--http_port", "8080"]
    transformer_args = transformer.build_parser().parse_args(
        [*expand(transformer_container.args), *injected]
    )
    assert predictor_args.model_name == transformer_args.model_name == isvc.metadata.name
    assert str(predictor_args.model_dir) == str(transformer_args.model_dir) == "/mnt/models"
    assert transformer_args.threshold == DEFAULT_THRESHOLD
    assert not transformer_args.collocated
    assert env(predictor_container)["STORAGE_URI"] == env(transformer_container)["STORAGE_URI"]
    transformer_env = env(transformer_container)
    assert transformer_env[ENV_BOOTSTRAP]
    assert transformer_env[ENV_TOPIC_MIRROR] == Topics().mirror
    # The per-card feature state lives in the transformer process: exactly one replica.
    assert isvc.spec.transformer.min_replicas == isvc.spec.transformer.max_replicas == 1
    for container in (predictor_container, transformer_container):
        assert container.readiness_probe.http_get.path == f"/v1/models/{isvc.metadata.name}"


def test_both_components_are_scraped_by_prometheus(isvc: Any) -> None:
    """The scrape annotations name the port each server listens on and KServe's /metrics."""
    from fraud_detection.serving import predictor, transformer

    for component, parser, injected in (
        (isvc.spec.predictor, predictor.build_parser(), []),
        # KServe appends --model_name, --predictor_host and --http_port to the transformer.
        (isvc.spec.transformer, transformer.build_parser(), ["--predictor_host", "p:80"]),
    ):
        (container,) = component.containers
        annotations = component.annotations
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/path"] == "/metrics"
        (port,) = container.ports
        args = parser.parse_args([*expand(container.args), *injected])
        assert annotations["prometheus.io/port"] == str(port.container_port) == str(args.http_port)
        assert container.readiness_probe.http_get.port == port.container_port
        assert args.log_format == "json"


def test_the_metrics_endpoint_is_where_the_annotations_say(serving_bundle: Path) -> None:
    """The servers' application serves the fraud_* metrics on the annotated path."""
    from fraud_detection.serving.app import build_app
    from fraud_detection.serving.model import BundleSource
    from fraud_detection.serving.predictor import make_predictor

    model = make_predictor("fraud-detector", BundleSource(model_dir=serving_bundle))
    model.load()
    app = build_app([model])
    path = yaml.safe_load(SPEC.read_text())["spec"]["predictor"]["annotations"][
        "prometheus.io/path"
    ]

    async def scrape() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            return await client.get(path)

    response = asyncio.run(scrape())
    assert response.status_code == 200
    assert 'fraud_model_info{version="test-1"} 1.0' in response.text
    assert "# HELP fraud_requests_rejected_total " in response.text


@pytest.mark.parametrize(
    ("dockerfile", "module"),
    [
        ("Dockerfile.predictor", "fraud_detection.serving.predictor"),
        ("Dockerfile.transformer", "fraud_detection.serving.transformer"),
    ],
)
def test_dockerfiles(dockerfile: str, module: str) -> None:
    text = (KSERVE_DIR / dockerfile).read_text()
    instructions = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert "pip install --no-cache-dir --prefix=/install -c requirements.lock '.[serving]'" in text
    for line in instructions:
        if line.startswith("COPY") and "--from" not in line:
            *sources, _target = shlex.split(line)[1:]
            for source in sources:
                assert (REPO / source).exists(), f"{dockerfile}: COPY {source} does not exist"

    def exec_form(keyword: str) -> list[str]:
        (found,) = [line for line in instructions if line.startswith(f"{keyword} ")]
        return json.loads(found.split(" ", 1)[1])

    assert exec_form("ENTRYPOINT") == ["python", "-m", module]
    assert importlib.util.find_spec(module) is not None
    cmd = exec_form("CMD")
    parser = importlib.import_module(module).build_parser()
    extra = ["--predictor_host", "p:80"] if module.endswith("transformer") else []
    assert parser.parse_args([*cmd, *extra]).model_name == "fraud-detector"
    assert re.search(r"^USER (?!root|0$)", text, re.MULTILINE), "runs as a non-root user"
    assert "EXPOSE 8080" in text


def test_no_python_package_named_kserve_shadows_the_sdk() -> None:
    import kserve

    assert not (KSERVE_DIR / "__init__.py").exists()
    assert "site-packages" in str(Path(kserve.__file__))
