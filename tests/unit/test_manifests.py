"""manifests/ (kustomize), checked offline: every overlay renders, every object validates against
its schema (core kinds with kubernetes-validate, custom resources against their CRD), checkov
finds nothing, and the names, ports, topics and variables agree with what the code reads.

Needs ``kubectl`` (with its built-in kustomize) on PATH, the CRDs of ``../shared/k8s-schemas``
(or ``$FRAUD_K8S_SCHEMAS``) and checkov in ``.venv-tools``; each test that lacks one skips with
the reason, except checkov under ``make test`` (``FRAUD_REQUIRE_TOOLS=1``: `make install` puts it
there), where its absence fails.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from support.tools import require

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "manifests"
TARGETS = {
    "base": MANIFESTS / "base",
    "kind": MANIFESTS / "overlays" / "kind",
    "production": MANIFESTS / "overlays" / "production",
}
NAMESPACE = "fraud-detection"
ISVC_NAME = "fraud-detector"
#: The Kubernetes release the core kinds are validated against (the clusters run 1.32+).
KUBERNETES_VERSION = "1.32.0"
#: Images built from this repository, by the Dockerfile that builds each (its header command).
PROJECT_IMAGES = {
    "fraud-detection-predictor": "kserve/Dockerfile.predictor",
    "fraud-detection-transformer": "kserve/Dockerfile.transformer",
    "fraud-detection-monitor": "drift/Dockerfile",
}
TAGS = {"base": "0.1.0", "kind": "ci", "production": "0.1.0"}
BOOTSTRAP = {
    "kind": "kafka-broker.fraud-detection.svc:9092",
    "production": "fraud-kafka-kafka-bootstrap.fraud-detection.svc:9092",
}
CRD_FILES = (
    "kserve-v0.20.0-inferenceservices.crd.yaml",
    "strimzi-1.2.0-kafka.crd.yaml",
    "strimzi-1.2.0-kafkanodepool.crd.yaml",
    "strimzi-1.2.0-kafkatopic.crd.yaml",
)
#: Where the pods need a writable directory under their read-only root filesystem.
WRITABLE = {
    "predictor": {"/tmp"},
    "transformer": {"/tmp", "/var/lib/fraud-state"},
    "fraud-monitor": {"/tmp", "/var/lib/fraud-monitor"},
}
VARIABLE = re.compile(r"\$\(([A-Z0-9_]+)\)")
#: Who may reach Kafka: the namespace's pods, and the pipeline's steps (Argo workflow pods of
#: Kubeflow Pipelines in namespace kubeflow; the ingest step reads the transactions topic).
KAFKA_PEERS = [
    {"podSelector": {}},
    {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kubeflow"}},
        "podSelector": {
            "matchExpressions": [{"key": "workflows.argoproj.io/workflow", "operator": "Exists"}]
        },
    },
]

Obj = dict[str, Any]


# ---------------------------------------------------------------------------- rendering
def kustomize(target: Path) -> list[Obj]:
    """``kubectl kustomize target`` as a list of objects; a failure names the target."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not on PATH: it renders the kustomizations")
    done = subprocess.run(
        [str(kubectl), "kustomize", str(target)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"kubectl kustomize {target.relative_to(REPO)}:\n{done.stderr}"
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[Obj]]:
    """Every target rendered once: ``{"base": [...], "kind": [...], "production": [...]}``."""
    return {name: kustomize(path) for name, path in TARGETS.items()}


def find(objects: list[Obj], kind: str, name: str | None = None) -> list[Obj]:
    """The objects of ``kind`` (and ``name``, if given)."""
    return [
        o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]


def one(objects: list[Obj], kind: str, name: str) -> Obj:
    """The single object of ``kind`` named ``name``."""
    found = find(objects, kind, name)
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def config_of(objects: list[Obj]) -> dict[str, str]:
    """The data of ConfigMap fraud-detection-config."""
    return one(objects, "ConfigMap", "fraud-detection-config")["data"]


def pod_specs(objects: list[Obj]) -> Iterator[tuple[str, Obj]]:
    """``(name, pod spec)`` of every workload: Deployments, Jobs and the InferenceService's
    components (whose spec is a pod spec with KServe's fields added)."""
    for o in objects:
        if o["kind"] in ("Deployment", "StatefulSet", "Job"):
            yield o["metadata"]["name"], o["spec"]["template"]["spec"]
        elif o["kind"] == "InferenceService":
            for component in ("predictor", "transformer"):
                if component in o["spec"]:
                    yield component, o["spec"][component]


def test_every_target_renders_into_the_namespace(rendered: dict[str, list[Obj]]) -> None:
    for name, objects in rendered.items():
        kinds = {o["kind"] for o in objects}
        assert {"Namespace", "InferenceService", "Deployment", "ConfigMap"} <= kinds, name
        for o in objects:
            if o["kind"] != "Namespace":
                where = f"{name}: {o['kind']} {o['metadata']['name']}"
                assert o["metadata"].get("namespace") == NAMESPACE, where
        assert not {"ClusterRole", "ClusterRoleBinding"} & kinds, f"{name}: cluster-wide RBAC"


# ---------------------------------------------------------------------------- schemas
def test_core_kinds_validate_against_the_kubernetes_schemas(
    rendered: dict[str, list[Obj]],
) -> None:
    import kubernetes_validate

    errors = []
    for name, objects in rendered.items():
        for o in objects:
            if o in custom_resources(objects):
                continue  # checked against its CRD below
            try:
                kubernetes_validate.validate(o, KUBERNETES_VERSION, strict=True)
            except kubernetes_validate.ValidationError as exc:
                path = "/".join(str(p) for p in exc.path)
                errors.append(f"{name}: {o['kind']} {o['metadata']['name']}: {path}: {exc.message}")
    assert not errors, "\n".join(errors)


def test_a_misspelt_field_fails_the_core_validation(rendered: dict[str, list[Obj]]) -> None:
    import kubernetes_validate

    monitor = copy.deepcopy(one(rendered["base"], "Deployment", "fraud-monitor"))
    kubernetes_validate.validate(monitor, KUBERNETES_VERSION, strict=True)
    monitor["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError, match="imagePullPolicyy"):
        kubernetes_validate.validate(monitor, KUBERNETES_VERSION, strict=True)


def schemas_dir() -> Path:
    """``$FRAUD_K8S_SCHEMAS``, else ``<repo>/../shared/k8s-schemas``."""
    return Path(os.environ.get("FRAUD_K8S_SCHEMAS") or REPO.parent / "shared" / "k8s-schemas")


def strict_schema(schema: Any) -> Any:
    """A CRD's ``openAPIV3Schema`` as a JSON Schema that rejects unknown fields.

    The API server prunes (rejects, with strict field validation) fields a structural schema
    does not declare, except below ``x-kubernetes-preserve-unknown-fields: true``; JSON Schema
    accepts them unless told. So every object schema with ``properties`` and no preserve flag
    gets ``additionalProperties: false`` (branches of ``anyOf``/``oneOf``/``allOf``/``not`` are
    constraints on the declared fields and are left open). ``nullable`` and
    ``x-kubernetes-int-or-string`` become the JSON Schema types they mean.
    """
    if isinstance(schema, list):
        return [strict_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key in ("anyOf", "oneOf", "allOf", "not"):
            out[key] = value
        elif key in ("properties", "patternProperties"):
            out[key] = {name: strict_schema(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = strict_schema(value)
        else:
            out[key] = value
    if out.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if out.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    preserve = out.get("x-kubernetes-preserve-unknown-fields") is True
    if "properties" in out and "additionalProperties" not in out and not preserve:
        out["additionalProperties"] = False
    return out


@pytest.fixture(scope="module")
def crds() -> dict[tuple[str, str], Obj]:
    """``{(apiVersion, kind): openAPIV3Schema}`` of the served versions of the shared CRDs."""
    folder = schemas_dir()
    missing = [name for name in CRD_FILES if not (folder / name).is_file()]
    if missing:
        pytest.skip(f"CRD schemas absent from {folder} (set FRAUD_K8S_SCHEMAS): {missing}")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    found = {}
    for name in CRD_FILES:
        crd = yaml.load((folder / name).read_text(), Loader=loader)
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if version.get("served"):
                found[(f"{group}/{version['name']}", kind)] = version["schema"]["openAPIV3Schema"]
    return found


def crd_errors(o: Obj, crds: dict[tuple[str, str], Obj], strict: bool = True) -> list[str]:
    """Why ``o`` does not validate against its CRD (empty: it does)."""
    import jsonschema

    key = (o["apiVersion"], o["kind"])
    assert key in crds, f"no served CRD version for {key}"
    schema = strict_schema(crds[key]) if strict else crds[key]
    validator = jsonschema.Draft7Validator(schema)
    return [
        f"{o['kind']} {o['metadata']['name']}: {'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(o)
    ]


def custom_resources(objects: list[Obj]) -> list[Obj]:
    """The objects of the KServe and Strimzi API groups."""
    return [
        o for o in objects if o["apiVersion"].split("/")[0].endswith(("kserve.io", "strimzi.io"))
    ]


def test_custom_resources_validate_against_their_crds(
    rendered: dict[str, list[Obj]], crds: dict[tuple[str, str], Obj]
) -> None:
    errors = []
    for name, objects in rendered.items():
        for o in custom_resources(objects):
            errors += [f"{name}: {error}" for error in crd_errors(o, crds)]
    assert not errors, "\n".join(errors)
    kinds = {o["kind"] for o in custom_resources(rendered["production"])}
    assert kinds == {"InferenceService", "Kafka", "KafkaNodePool", "KafkaTopic"}


@pytest.mark.parametrize(
    ("path", "field"),
    [
        (("spec", "predictor"), "minReplica"),
        (("spec", "transformer", "containers", 0), "imagePullPolicyy"),
        (("spec", "predictor", "containers", 0, "securityContext"), "readOnlyRootFileSystem"),
    ],
)
def test_a_misspelt_field_in_the_inference_service_fails_the_crd_check(
    rendered: dict[str, list[Obj]], crds: dict[tuple[str, str], Obj], path: tuple, field: str
) -> None:
    isvc = copy.deepcopy(one(rendered["base"], "InferenceService", ISVC_NAME))
    assert not crd_errors(isvc, crds)
    node: Any = isvc
    for step in path:
        node = node[step]
    node[field] = 1
    errors = crd_errors(isvc, crds)
    assert errors and all(field in error for error in errors), errors
    # The CRD schema alone lets the misspelling through: the strict conversion is what catches it.
    assert not crd_errors(isvc, crds, strict=False)


def test_fields_below_preserve_unknown_fields_stay_open(crds: dict[tuple[str, str], Obj]) -> None:
    schema = strict_schema(crds[("serving.kserve.io/v1beta1", "InferenceService")])
    status = schema["properties"]["status"]
    assert status.get("x-kubernetes-preserve-unknown-fields") is True
    assert "additionalProperties" not in status
    assert schema["properties"]["spec"]["additionalProperties"] is False
    topic = crds[("kafka.strimzi.io/v1", "KafkaTopic")]
    config = strict_schema(topic)["properties"]["spec"]["properties"]["config"]
    assert config.get("additionalProperties") is not False  # free-form topic configuration


# ---------------------------------------------------------------------------- checkov
def checkov_binary() -> Path | None:
    """checkov of ``.venv-tools`` (``$FRAUD_CHECKOV`` overrides), or None."""
    explicit = os.environ.get("FRAUD_CHECKOV")
    path = Path(explicit) if explicit else REPO / ".venv-tools" / "bin" / "checkov"
    return path if path.is_file() else None


def run_checkov(files: list[Path], frameworks: list[str]) -> list[Obj]:
    """checkov's JSON report (one entry per framework) for ``files``; offline, no upload."""
    binary = checkov_binary()
    require(binary is not None, "checkov is not installed in .venv-tools (`make install`)")
    command = [str(binary), "--framework", *frameworks, "--skip-download", "-o", "json"]
    for path in files:
        command += ["-f", str(path)]
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false"}
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=300, env=env, check=False
    )
    assert done.stdout.strip(), f"checkov printed nothing:\n{done.stderr[-2000:]}"
    report = json.loads(done.stdout)
    return report if isinstance(report, list) else [report]


def checkov_findings(reports: list[Obj]) -> tuple[list[str], list[Obj]]:
    """``(failed checks as lines, skipped checks)`` of checkov reports."""
    failed, skipped = [], []
    for report in reports:
        results = report.get("results", {})
        failed += [
            f"{c['check_id']} {c['check_name']}: {c['resource']} ({c['file_path']})"
            for c in results.get("failed_checks", [])
        ]
        skipped += results.get("skipped_checks", [])
    return failed, skipped


@pytest.fixture(scope="module")
def checkov_manifests(
    rendered: dict[str, list[Obj]], tmp_path_factory: pytest.TempPathFactory
) -> list[Obj]:
    """checkov's kubernetes checks over every rendered target, run once."""
    folder = tmp_path_factory.mktemp("rendered")
    files = []
    for name, objects in rendered.items():
        path = folder / f"{name}.yaml"
        path.write_text(yaml.safe_dump_all(objects, sort_keys=False))
        files.append(path)
    return run_checkov(files, ["kubernetes"])


def test_checkov_finds_nothing_in_the_rendered_manifests(checkov_manifests: list[Obj]) -> None:
    failed, skipped = checkov_findings(checkov_manifests)
    assert not failed, "\n".join(failed)
    passed = sum(r.get("summary", {}).get("passed", 0) for r in checkov_manifests)
    assert passed > 100  # the checks ran on the objects
    for check in skipped:
        reason = check.get("check_result", {}).get("suppress_comment") or ""
        assert len(reason) > 20, f"{check['check_id']} on {check['resource']}: skip needs a reason"


def test_every_checkov_skip_is_an_annotation_with_a_reason(rendered: dict[str, list[Obj]]) -> None:
    for o in rendered["kind"] + rendered["production"]:
        for key, value in (o["metadata"].get("annotations") or {}).items():
            if key.startswith("checkov.io/skip"):
                check, _, reason = value.partition("=")
                assert re.fullmatch(r"CKV_K8S_\d+", check), f"{o['metadata']['name']}: {value}"
                assert len(reason) > 20, f"{o['metadata']['name']}: {check} needs a reason"


# ---------------------------------------------------------------------------- pod security
def test_every_pod_runs_restricted(rendered: dict[str, list[Obj]]) -> None:
    for target, objects in rendered.items():
        namespace = one(objects, "Namespace", NAMESPACE)
        assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
        for name, spec in pod_specs(objects):
            where = f"{target}: {name}"
            pod = spec.get("securityContext", {})
            assert pod.get("runAsNonRoot") is True, where
            assert pod.get("runAsUser") == 1000, where
            assert pod.get("seccompProfile") == {"type": "RuntimeDefault"}, where
            assert spec.get("automountServiceAccountToken") is False, where
            for container in spec["containers"] + spec.get("initContainers", []):
                context = container.get("securityContext", {})
                assert context.get("runAsNonRoot") is True, where
                assert context.get("runAsUser", 1000) == 1000, where
                assert context.get("allowPrivilegeEscalation") is False, where
                assert context.get("capabilities") == {"drop": ["ALL"]}, where
                assert context.get("seccompProfile") == {"type": "RuntimeDefault"}, where
                assert "resources" in container and container["resources"].get("limits"), where
                if name == "kafka-broker":  # the image writes its config: see the checkov skip
                    assert "CKV_K8S_22=" in json.dumps(one(objects, "Deployment", name))
                    continue
                assert context.get("readOnlyRootFilesystem") is True, where
            mounts = {m["mountPath"] for c in spec["containers"] for m in c.get("volumeMounts", [])}
            assert WRITABLE.get(name, {"/tmp"} if name.startswith("kafka") else set()) <= mounts


def test_only_the_deployer_and_the_trigger_get_api_rights(rendered: dict[str, list[Obj]]) -> None:
    objects = rendered["base"]
    deployer = one(objects, "Role", "fraud-pipeline-deployer")
    assert deployer["rules"] == [
        {
            "apiGroups": ["serving.kserve.io"],
            "resources": ["inferenceservices"],
            "verbs": ["get", "create", "patch"],
        }
    ]
    trigger = one(objects, "Role", "fraud-trigger")
    assert {g for rule in trigger["rules"] for g in rule["apiGroups"]} == {"pipelines.kubeflow.org"}
    assert not {v for rule in trigger["rules"] for v in rule["verbs"]} & {"delete", "*", "update"}
    bound = {
        subject["name"]
        for binding in find(objects, "RoleBinding")
        for subject in binding["subjects"]
        if subject["kind"] == "ServiceAccount" and subject["namespace"] == NAMESPACE
    }
    assert bound == {"fraud-pipeline-deployer", "fraud-trigger"}
    for name in ("fraud-detector-storage", "fraud-monitor"):
        assert one(objects, "ServiceAccount", name)["automountServiceAccountToken"] is False
    storage = one(objects, "ServiceAccount", "fraud-detector-storage")
    assert storage["secrets"] == [{"name": "fraud-models-s3"}]
    monitor = one(objects, "Deployment", "fraud-monitor")["spec"]["template"]["spec"]
    assert monitor["serviceAccountName"] == "fraud-monitor"


def selects(policy: Obj, labels: dict[str, str]) -> bool:
    """Whether the NetworkPolicy's podSelector (matchLabels only) selects ``labels``."""
    wanted = policy["spec"]["podSelector"].get("matchLabels", {})
    return all(labels.get(k) == v for k, v in wanted.items())


def test_network_policies_deny_by_default_and_open_only_the_entry_points(
    rendered: dict[str, list[Obj]],
) -> None:
    objects = rendered["kind"]
    policies = find(objects, "NetworkPolicy")
    (deny,) = [p for p in policies if not p["spec"]["podSelector"] and "ingress" not in p["spec"]]
    assert deny["spec"]["policyTypes"] == ["Ingress"]
    isvc = one(objects, "InferenceService", ISVC_NAME)
    transformer_labels = isvc["spec"]["transformer"]["labels"]
    predictor_labels = isvc["spec"]["predictor"]["labels"]
    (to_predictor,) = [p for p in policies if selects(p, predictor_labels) and p is not deny]
    (source,) = to_predictor["spec"]["ingress"][0]["from"]
    assert source == {"podSelector": {"matchLabels": transformer_labels}}
    (to_transformer,) = [p for p in policies if selects(p, transformer_labels) and p is not deny]
    assert "from" not in to_transformer["spec"]["ingress"][0]  # reachable from outside
    monitor = one(objects, "Deployment", "fraud-monitor")["spec"]["template"]["metadata"]
    (to_monitor,) = [p for p in policies if selects(p, monitor["labels"]) and p is not deny]
    (peer,) = to_monitor["spec"]["ingress"][0]["from"]
    assert set(peer) == {"namespaceSelector", "podSelector"}  # Prometheus in its namespace only
    kafka = one(objects, "Deployment", "kafka-broker")["spec"]["template"]["metadata"]
    (to_kafka,) = [p for p in policies if selects(p, kafka["labels"]) and p is not deny]
    assert to_kafka["spec"]["ingress"][0]["from"] == KAFKA_PEERS


# ---------------------------------------------------------------------------- the contract
def expand(args: list[str], config: dict[str, str]) -> list[str]:
    """``args`` with ``$(VAR)`` replaced as the kubelet does; an unknown variable fails."""

    def value(match: re.Match[str]) -> str:
        assert match.group(1) in config, f"$({match.group(1)}) is not in fraud-detection-config"
        return config[match.group(1)]

    return [VARIABLE.sub(value, arg) for arg in args]


def env_of(container: Obj, config: dict[str, str]) -> dict[str, str]:
    """The container's environment: ``envFrom`` the ConfigMap, then its own ``env``."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        assert source["configMapRef"]["name"] == "fraud-detection-config"
        env.update(config)
    env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    return env


def test_the_config_holds_exactly_what_the_code_reads(rendered: dict[str, list[Obj]]) -> None:
    from fraud_detection.monitoring import sinks
    from fraud_detection.schema import DEFAULT_THRESHOLD
    from fraud_detection.streaming import kafka
    from fraud_detection.training import storage

    read_by_code = {
        kafka.ENV_BOOTSTRAP: None,
        kafka.ENV_TOPIC_MIRROR: kafka.Topics().mirror,
        kafka.ENV_TOPIC_LABELS: kafka.Topics().labels,
        sinks.ENV_TOPIC_MONITORING: sinks.DEFAULT_RESULTS_TOPIC,
        storage.S3_ENDPOINT_ENV: None,
        storage.S3_USE_HTTPS_ENV: None,
    }
    for target, objects in rendered.items():
        config = config_of(objects)
        referenced = {
            name
            for _, spec in pod_specs(objects)
            for container in spec["containers"]
            for arg in container.get("args", [])
            for name in VARIABLE.findall(arg)
        }
        # Every key is read by the code or expanded into arguments, and nothing else.
        assert set(config) == set(read_by_code) | referenced, target
        for name, default in read_by_code.items():
            if default is not None:
                assert config[name] == default, f"{target}: {name}"
        assert float(config["FRAUD_THRESHOLD"]) == DEFAULT_THRESHOLD
        if target in BOOTSTRAP:
            assert config[kafka.ENV_BOOTSTRAP] == BOOTSTRAP[target]


def test_the_servers_accept_their_arguments_and_agree_on_the_model(
    rendered: dict[str, list[Obj]],
) -> None:
    from fraud_detection.serving import predictor, transformer

    for target, objects in rendered.items():
        config = config_of(objects)
        isvc = one(objects, "InferenceService", ISVC_NAME)
        annotations = isvc["metadata"]["annotations"]
        assert annotations["serving.kserve.io/deploymentMode"] == "Standard"
        (p,) = isvc["spec"]["predictor"]["containers"]
        (t,) = isvc["spec"]["transformer"]["containers"]
        p_args = predictor.build_parser().parse_args(expand(p["args"], config))
        # KServe appends --predictor_host and --http_port to the transformer's arguments.
        injected = ["--predictor_host", f"{ISVC_NAME}-predictor.{NAMESPACE}", "--http_port", "8080"]
        t_args = transformer.build_parser().parse_args([*expand(t["args"], config), *injected])
        assert p_args.model_name == t_args.model_name == predictor.DEFAULT_MODEL_NAME == ISVC_NAME
        assert str(p_args.model_dir) == str(t_args.model_dir) == "/mnt/models"
        assert t_args.threshold == float(config["FRAUD_THRESHOLD"])
        assert str(t_args.state_dir) in {m["mountPath"] for m in t["volumeMounts"]}
        for container, args in ((p, p_args), (t, t_args)):
            (port,) = container["ports"]
            assert port["containerPort"] == args.http_port == 8080, target
            assert container["readinessProbe"]["httpGet"] == {
                "path": f"/v1/models/{ISVC_NAME}",
                "port": args.http_port,
            }
            assert container["livenessProbe"]["httpGet"]["port"] == args.http_port
        for component in ("predictor", "transformer"):
            spec = isvc["spec"][component]
            assert spec["serviceAccountName"] == "fraud-detector-storage"
            assert spec["annotations"]["prometheus.io/port"] == "8080"
        p_env, t_env = env_of(p, config), env_of(t, config)
        assert p_env["STORAGE_URI"] == t_env["STORAGE_URI"]
        assert p_env["STORAGE_URI"].startswith("s3://")
        # The per-card state lives in the transformer's memory: exactly one replica, always.
        transformer_spec = isvc["spec"]["transformer"]
        assert transformer_spec["minReplicas"] == transformer_spec["maxReplicas"] == 1, target


def merge_patch(target: Any, patch: Any) -> Any:
    """``target`` with the JSON merge patch (RFC 7386) ``patch`` applied, as the API server does."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def deployed(isvc: Obj, uri: str) -> Obj:
    """``isvc`` after the pipeline's deploy step rolled it out to the bundle at ``uri``."""
    from fraud_detection.training.deploy import ServiceSpec, storage_patch, storage_uri

    spec = ServiceSpec(
        name=ISVC_NAME,
        namespace=NAMESPACE,
        storage_uri=storage_uri(uri),
        model_version="20261129T000000Z-00000000",
    )
    return merge_patch(isvc, storage_patch(isvc, spec))


def test_the_deploy_step_points_both_components_at_the_new_bundle(
    rendered: dict[str, list[Obj]],
) -> None:
    """The pipeline's deploy step, on the real spec: STORAGE_URI of both containers changes to
    the export artifact (KFP's minio:// as s3://), everything else stays."""
    isvc = one(rendered["kind"], "InferenceService", ISVC_NAME)
    artifact = "minio://mlpipeline/v2/artifacts/fraud-training/run-1/export/bundle"
    after = deployed(isvc, artifact)
    for component in ("predictor", "transformer"):
        (before_c,) = isvc["spec"][component]["containers"]
        (after_c,) = after["spec"][component]["containers"]
        assert {"name": "STORAGE_URI", "value": "s3://" + artifact[len("minio://") :]} in after_c[
            "env"
        ]
        assert {k: v for k, v in after_c.items() if k != "env"} == {
            k: v for k, v in before_c.items() if k != "env"
        }
        assert (
            after["spec"][component]["securityContext"]
            == isvc["spec"][component]["securityContext"]
        )


def test_the_deployed_inference_service_still_validates(
    rendered: dict[str, list[Obj]], crds: dict[tuple[str, str], Obj]
) -> None:
    isvc = one(rendered["production"], "InferenceService", ISVC_NAME)
    after = deployed(isvc, "s3://mlpipeline/v2/artifacts/fraud-training/run-2/export/bundle")
    assert after != isvc
    assert not crd_errors(after, crds)


def test_the_monitor_runs_with_options_it_accepts_on_the_metrics_port(
    rendered: dict[str, list[Obj]],
) -> None:
    import typer

    from fraud_detection.monitor_cli import monitor

    entrypoint = dockerfile_entrypoint(REPO / "drift" / "Dockerfile")
    assert entrypoint[:3] == ["python", "-m", "fraud_detection.monitoring"]
    app = typer.Typer()
    app.command()(monitor)
    command = typer.main.get_command(app)
    for target, objects in rendered.items():
        config = config_of(objects)
        deployment = one(objects, "Deployment", "fraud-monitor")
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert container["image"] == f"fraud-detection-monitor:{TAGS[target]}"
        assert "command" not in container  # the image's entrypoint runs, with these arguments
        params = command.make_context(
            "monitor", [*entrypoint[3:], *expand(container["args"], config)]
        ).params
        assert params["metrics_host"] == "0.0.0.0"
        port = params["metrics_port"]
        assert f"EXPOSE {port}" in (REPO / "drift" / "Dockerfile").read_text()
        assert container["ports"][0]["containerPort"] == port == 9108
        service = one(objects, "Service", "fraud-monitor")
        assert service["spec"]["ports"][0]["port"] == port
        assert (
            service["spec"]["selector"].items()
            <= deployment["spec"]["template"]["metadata"]["labels"].items()
        )
        assert params["window_size"] == int(config["FRAUD_MONITOR_WINDOW_SIZE"])
        env = env_of(container, config)
        assert {"FRAUD_KAFKA_BOOTSTRAP", "FRAUD_KAFKA_TOPIC_MIRROR"} <= set(env)
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert "/var/lib/fraud-monitor" in mounts  # the image's state (and the bundle cache)
        # The bundles come from the model store the pipeline's deploy step writes.
        assert params["bundles"] == config["FRAUD_MODELS_URI"] + "/{version}"
        assert params["registry"] is None


def test_the_monitor_reads_the_model_store_with_the_serving_credentials(
    rendered: dict[str, list[Obj]],
) -> None:
    from fraud_detection.monitoring.reference import StorageLocator, bundle_locator
    from fraud_detection.training.storage import S3_ENDPOINT_ENV, S3_USE_HTTPS_ENV, s3_options

    for target, objects in rendered.items():
        config = config_of(objects)
        assert config["FRAUD_MODELS_URI"] == "s3://mlpipeline/fraud-detection/models", target
        pod = one(objects, "Deployment", "fraud-monitor")["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        secret_env = {
            e["name"]: e["valueFrom"]["secretKeyRef"]
            for e in container["env"]
            if "secretKeyRef" in e.get("valueFrom", {})
        }
        # The keys of the Secret KServe's storage initializer uses (ServiceAccount
        # fraud-detector-storage), under the names the S3 client reads.
        assert secret_env == {
            key: {"name": "fraud-models-s3", "key": key}
            for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
        }, target
        env = {**env_of(container, config), **{k: "x" for k in secret_env}}
        options = s3_options(env)
        assert options["endpoint_url"] == f"http://{config[S3_ENDPOINT_ENV]}", target
        assert options["key"] == "x"
        # The registry volume is gone: nothing mounts a claim any more.
        assert not find(objects, "PersistentVolumeClaim"), target
        assert all("persistentVolumeClaim" not in v for v in pod.get("volumes", []))
        template = expand(["$(FRAUD_MODELS_URI)/{version}"], config)[0]
        assert isinstance(bundle_locator(template, cache_dir=Path("unused")), StorageLocator)
    kind = config_of(rendered["kind"])
    secret = one(rendered["kind"], "Secret", "fraud-models-s3")["metadata"]["annotations"]
    # One store: the endpoint KServe's storage initializer downloads from is the monitor's.
    assert secret["serving.kserve.io/s3-endpoint"] == kind[S3_ENDPOINT_ENV]
    assert secret["serving.kserve.io/s3-usehttps"] == kind[S3_USE_HTTPS_ENV]


def dockerfile_entrypoint(path: Path) -> list[str]:
    """The exec-form ENTRYPOINT of a Dockerfile."""
    (line,) = [x for x in path.read_text().splitlines() if x.startswith("ENTRYPOINT ")]
    return json.loads(line.split(" ", 1)[1])


def test_the_images_are_the_ones_the_dockerfiles_build(rendered: dict[str, list[Obj]]) -> None:
    for name, dockerfile in PROJECT_IMAGES.items():
        header = (REPO / dockerfile).read_text()
        assert f"docker build -f {dockerfile} -t {name}:0.1.0 ." in header, dockerfile
    for target, objects in rendered.items():
        images = {
            c["image"]
            for _, spec in pod_specs(objects)
            for c in spec["containers"]
            if not c["image"].startswith("apache/kafka")
        }
        assert images == {f"{name}:{TAGS[target]}" for name in PROJECT_IMAGES}, target
    isvc = one(rendered["base"], "InferenceService", ISVC_NAME)
    entry = {
        component: dockerfile_entrypoint(REPO / PROJECT_IMAGES[f"fraud-detection-{component}"])
        for component in ("predictor", "transformer")
    }
    assert entry["predictor"][-1] == "fraud_detection.serving.predictor"
    assert entry["transformer"][-1] == "fraud_detection.serving.transformer"
    assert isvc["spec"]["predictor"]["containers"][0]["image"].startswith(
        "fraud-detection-predictor:"
    )


def versions_env() -> dict[str, str]:
    """scripts/versions.env as a dict (plain KEY=value lines)."""
    path = REPO / "scripts" / "versions.env"
    require(path.is_file(), "scripts/versions.env is absent")
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {k.strip(): v.strip() for k, v in pairs if not k.startswith("#")}


def test_the_kind_kafka_serves_the_topics_the_code_uses(rendered: dict[str, list[Obj]]) -> None:
    from fraud_detection.monitoring.sinks import DEFAULT_RESULTS_TOPIC
    from fraud_detection.streaming.kafka import Topics

    objects = rendered["kind"]
    kafka_image = versions_env()["KAFKA_IMAGE"]
    broker = one(objects, "Deployment", "kafka-broker")["spec"]["template"]["spec"]
    assert broker["enableServiceLinks"] is False
    (container,) = broker["containers"]
    assert container["image"] == kafka_image
    env = {e["name"]: e["value"] for e in container["env"]}
    service = one(objects, "Service", "kafka-broker")
    host, port = BOOTSTRAP["kind"].rsplit(":", 1)
    assert host == f"{service['metadata']['name']}.{NAMESPACE}.svc"
    assert service["spec"]["ports"][0]["port"] == int(port)
    assert env["KAFKA_ADVERTISED_LISTENERS"] == f"PLAINTEXT://{BOOTSTRAP['kind']}"
    job = one(objects, "Job", "kafka-create-topics")["spec"]["template"]["spec"]
    (creator,) = job["containers"]
    assert creator["image"] == kafka_image
    script = "\n".join(creator["args"])
    assert BOOTSTRAP["kind"] in script
    created = dict(re.findall(r"^create (\S+) --config (\S+)$", script, re.MULTILINE))
    topics = Topics()
    assert set(created) == {
        topics.mirror,
        topics.labels,
        topics.transactions,
        DEFAULT_RESULTS_TOPIC,
    }
    assert created[topics.mirror] == f"retention.ms={7 * 86_400_000}"
    assert created[topics.labels] == f"retention.ms={90 * 86_400_000}"
    assert created[DEFAULT_RESULTS_TOPIC] == "cleanup.policy=compact"


def test_the_strimzi_kafka_serves_the_topics_the_code_uses(rendered: dict[str, list[Obj]]) -> None:
    from fraud_detection.monitoring.sinks import DEFAULT_RESULTS_TOPIC
    from fraud_detection.streaming.kafka import Topics

    objects = rendered["production"]
    kafka = one(objects, "Kafka", "fraud-kafka")
    assert kafka["apiVersion"] == "kafka.strimzi.io/v1"
    (listener,) = kafka["spec"]["kafka"]["listeners"]
    host, port = BOOTSTRAP["production"].rsplit(":", 1)
    assert host == f"{kafka['metadata']['name']}-kafka-bootstrap.{NAMESPACE}.svc"
    assert listener["port"] == int(port)
    assert listener["networkPolicyPeers"] == KAFKA_PEERS
    (pool,) = find(objects, "KafkaNodePool")
    assert pool["metadata"]["labels"]["strimzi.io/cluster"] == "fraud-kafka"
    assert sorted(pool["spec"]["roles"]) == ["broker", "controller"]
    topics = {t["spec"]["topicName"]: t for t in find(objects, "KafkaTopic")}
    names = Topics()
    assert set(topics) == {names.mirror, names.labels, names.transactions, DEFAULT_RESULTS_TOPIC}
    for topic in topics.values():
        assert topic["metadata"]["labels"]["strimzi.io/cluster"] == "fraud-kafka"
    assert topics[names.mirror]["spec"]["config"]["retention.ms"] == 7 * 86_400_000
    assert topics[names.labels]["spec"]["config"]["retention.ms"] == 90 * 86_400_000
    assert topics[DEFAULT_RESULTS_TOPIC]["spec"]["config"]["cleanup.policy"] == "compact"
    assert not find(objects, "Deployment", "kafka-broker")


def test_production_scales_the_predictor_and_nothing_else(rendered: dict[str, list[Obj]]) -> None:
    objects = rendered["production"]
    isvc = one(objects, "InferenceService", ISVC_NAME)
    assert isvc["metadata"]["annotations"]["serving.kserve.io/autoscalerClass"] == "external"
    (hpa,) = find(objects, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": f"{ISVC_NAME}-predictor",
    }
    predictor = isvc["spec"]["predictor"]
    assert hpa["spec"]["minReplicas"] == predictor["minReplicas"] >= 2
    assert hpa["spec"]["maxReplicas"] == predictor["maxReplicas"]
    (pdb,) = find(objects, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == predictor["labels"]
    assert not find(rendered["kind"], "HorizontalPodAutoscaler")


def test_the_s3_credentials_exist_only_as_the_kind_defaults(rendered: dict[str, list[Obj]]) -> None:
    assert not find(rendered["base"], "Secret")
    assert not find(rendered["production"], "Secret")
    secret = one(rendered["kind"], "Secret", "fraud-models-s3")
    annotations = secret["metadata"]["annotations"]
    assert annotations["serving.kserve.io/s3-endpoint"] == "minio-service.kubeflow:9000"
    assert annotations["serving.kserve.io/s3-usehttps"] == "0"
    assert "serving.kserve.io/s3-region" in annotations
    assert set(secret["data"]) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
