"""The compiled pipeline: the committed YAML is current, and the DAG gates deploy."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pytest
import yaml

from fraud_detection.pipeline.client import compile_components, compile_pipeline
from fraud_detection.pipeline.components import DEFAULT_IMAGE, IMAGE_ENV, STEPS
from fraud_detection.pipeline.dag import (
    KFP_ARTIFACT_STORE,
    PIPELINE_NAME,
    S3_STEPS,
    pipeline_parameters,
)
from fraud_detection.training.gate import GateConfig
from fraud_detection.training.storage import S3_ENDPOINT_URL_ENV
from fraud_detection.training.train import TrainParams

REPO = Path(__file__).resolve().parents[2]
COMMITTED = REPO / "pipelines" / "fraud_training_pipeline.yaml"
COMPONENTS = REPO / "components"
REGENERATE = "regenerate with: python pipelines/fraud_training_pipeline.py"


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pipeline compiled now, with the default image."""
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv(IMAGE_ENV, raising=False)
        return compile_pipeline(tmp_path_factory.mktemp("compiled") / "pipeline.yaml")


@pytest.fixture(scope="module")
def documents(compiled: Path) -> list[dict]:
    """The compiled file's documents: the pipeline spec, then its platform (Kubernetes) spec."""
    return [doc for doc in yaml.safe_load_all(compiled.read_text()) if doc]


@pytest.fixture(scope="module")
def spec(documents: list[dict]) -> dict:
    return documents[0]


def test_the_s3_steps_get_the_store_credentials_from_the_kfp_secret(
    documents: list[dict], spec: dict
) -> None:
    (platform,) = documents[1:]
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert set(executors) == {f"exec-{step}" for step in S3_STEPS}
    assert set(S3_STEPS) == {"ingest", "evaluate", "deploy"}
    for name, config in executors.items():
        (secret,) = config["secretAsEnv"]
        assert secret["secretName"] == "mlpipeline-minio-artifact", name
        assert secret["optional"] is False
        assert {item["secretKey"]: item["envVar"] for item in secret["keyToEnv"]} == {
            "accesskey": "AWS_ACCESS_KEY_ID",
            "secretkey": "AWS_SECRET_ACCESS_KEY",
        }
        container = spec["deploymentSpec"]["executors"][name]["container"]
        assert {"name": S3_ENDPOINT_URL_ENV, "value": "http://minio-service.kubeflow:9000"} in (
            container["env"]
        ), name
    for name, executor in spec["deploymentSpec"]["executors"].items():
        if name not in executors:
            assert "env" not in executor["container"], name  # only the S3 steps


def test_without_s3_access_the_pipeline_has_no_platform_spec(tmp_path: Path) -> None:
    path = compile_pipeline(tmp_path / "p.yaml", s3=None)
    (only,) = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    for executor in only["deploymentSpec"]["executors"].values():
        assert "env" not in executor["container"]
    assert KFP_ARTIFACT_STORE.endpoint.startswith("http://")


def test_the_model_store_is_off_by_default() -> None:
    assert pipeline_parameters()["models_uri"] == ("String", "")


def test_the_committed_pipeline_yaml_is_current(compiled: Path) -> None:
    assert COMMITTED.is_file(), REGENERATE
    assert compiled.read_text() == COMMITTED.read_text(), f"stale {COMMITTED}; {REGENERATE}"


def test_the_committed_component_yamls_are_current(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(IMAGE_ENV, raising=False)
    for path in compile_components(tmp_path):
        committed = COMPONENTS / path.name
        assert committed.is_file(), f"missing {committed}; {REGENERATE}"
        assert path.read_text() == committed.read_text(), f"stale {committed}; {REGENERATE}"
    assert sorted(p.name for p in COMPONENTS.glob("*.yaml")) == sorted(f"{s}.yaml" for s in STEPS)


def test_deploy_is_the_only_task_inside_the_gate_condition(spec: dict) -> None:
    root = spec["root"]["dag"]["tasks"]
    assert set(root) == {*STEPS, "condition-1"} - {"deploy"}
    condition = root["condition-1"]
    assert condition["triggerPolicy"]["condition"] == (
        "inputs.parameter_values['pipelinechannel--gate-Output'] == true"
    )
    assert "gate" in condition["dependentTasks"]
    inner = spec["components"]["comp-condition-1"]["dag"]["tasks"]
    assert set(inner) == {"deploy"}


def test_every_component_runs_the_project_image_without_installing_anything(spec: dict) -> None:
    executors = spec["deploymentSpec"]["executors"]
    assert len(executors) == len(STEPS)
    for executor in executors.values():
        container = executor["container"]
        assert container["image"] == DEFAULT_IMAGE
        script = " ".join(container["command"])
        assert "pip install" not in script
        assert "from fraud_detection." in script  # the component calls the library


def test_no_task_is_cached(spec: dict) -> None:
    tasks = {
        **spec["root"]["dag"]["tasks"],
        **spec["components"]["comp-condition-1"]["dag"]["tasks"],
    }
    for name, task in tasks.items():
        if name != "condition-1":
            assert task["cachingOptions"] == {}, name  # enableCaching false is omitted


def test_the_image_is_one_configuration_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(IMAGE_ENV, "registry.example/fraud:9.9")
    spec = next(yaml.safe_load_all(compile_pipeline(tmp_path / "p.yaml").read_text()))
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert images == {"registry.example/fraud:9.9"}


def test_the_pipeline_parameters_have_the_documented_defaults() -> None:
    parameters = pipeline_parameters()
    assert parameters["threshold"] == ("Float", 0.1)
    assert parameters["split"] == ("String", "stratified")
    assert parameters["class_weight"] == ("String", "5")
    assert parameters["min_samples_leaf"] == ("Integer", 5)
    assert parameters["max_depth"] == ("Integer", 20)
    assert parameters["data"] == ("List", [])
    assert {"min_recall", "min_f1", "tolerance", "seed", "n_estimators"} <= set(parameters)


def test_the_pipeline_defaults_are_those_of_training_and_the_gate() -> None:
    parameters = pipeline_parameters()
    for name, value in {**asdict(TrainParams()), **asdict(GateConfig())}.items():
        if name in parameters:
            assert parameters[name][1] == value, name
    assert {"n_estimators", "class_weight", "min_recall", "min_f1"} <= set(parameters)


def test_the_pipeline_has_its_name(spec: dict) -> None:
    assert spec["pipelineInfo"]["name"] == PIPELINE_NAME


def test_the_component_image_holds_what_the_components_import() -> None:
    import tomllib

    text = (COMPONENTS / "Dockerfile").read_text()
    assert "pip install --no-cache-dir --prefix=/install -c requirements.lock '.[pipeline]'" in text
    assert f"-t {DEFAULT_IMAGE} ." in text  # the documented build tag is the default image
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pipeline_extra = extras["optional-dependencies"]["pipeline"]
    # Components run `python -m kfp.dsl.executor_main` and convert the forest to ONNX.
    for package in ("kfp", "skl2onnx", "onnxruntime"):
        assert any(dep.startswith(package) for dep in pipeline_extra), package
