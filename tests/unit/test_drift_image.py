"""drift/Dockerfile, the monitor's image: its build installs what the monitor imports, its
entrypoint's options are the monitor's, and it runs as a non-root user with /metrics exposed."""

from __future__ import annotations

import ast
import json
import re
import shlex
import sys
from importlib.metadata import PackageNotFoundError, distribution, packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "drift" / "Dockerfile"
#: The code the monitor runs: the monitoring package and what it reads bundles and Kafka with.
MONITOR_CODE = [
    *sorted((REPO / "src" / "fraud_detection" / "monitoring").glob("*.py")),
    *(
        REPO / "src" / "fraud_detection" / name
        for name in (
            "monitor_cli.py",
            "cli_support.py",
            "metrics_registry.py",
            "registry.py",
            "bundle.py",
            "features.py",
            "schema.py",
            "streaming/kafka.py",
            "training/storage.py",  # --bundles s3://...: fsspec, s3fs
            "streaming/labels.py",
        )
    ),
]


def instructions() -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments left out."""
    joined = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    return [line for line in joined.splitlines() if line.strip() and not line.startswith("#")]


def pip_install() -> list[str]:
    """The words of the build stage's ``pip install``."""
    (line,) = [line for line in instructions() if line.startswith("RUN pip install")]
    return shlex.split(line)[1:]


def installed_closure(requirements: list[str]) -> set[str]:
    """The distributions these requirements install (from this environment's metadata, which
    requirements.lock pins), by canonical name."""
    visited: set[tuple[str, tuple[str, ...]]] = set()
    pending = [Requirement(text) for text in requirements]
    while pending:
        requirement = pending.pop()
        extras = tuple(sorted(requirement.extras))
        key = (canonicalize_name(requirement.name), extras)
        if key in visited:
            continue
        visited.add(key)
        try:
            requires = distribution(requirement.name).requires or []
        except PackageNotFoundError:
            continue
        environments = [{"extra": extra} for extra in extras] or [{"extra": ""}]
        for text in requires:
            child = Requirement(text)
            if child.marker is None or any(child.marker.evaluate(env) for env in environments):
                pending.append(child)
    return {name for name, _ in visited}


def third_party_imports(path: Path) -> set[str]:
    """Top-level modules ``path`` imports (at module level or in a function), stdlib left out."""
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.add(node.module.split(".")[0])
    return {m for m in modules if m not in sys.stdlib_module_names and m != "fraud_detection"}


def test_the_build_installs_every_package_the_monitor_imports() -> None:
    words = pip_install()
    assert words[:6] == [
        "pip",
        "install",
        "--no-cache-dir",
        "--prefix=/install",
        "-c",
        "requirements.lock",
    ]
    targets = words[6:]
    assert ".[drift]" in targets
    packages = [target for target in targets if not target.startswith(".")]
    provided = installed_closure(["fraud-detection[drift]", *packages])
    owners = packages_distributions()
    missing = {
        (module, path.name)
        for path in MONITOR_CODE
        for module in third_party_imports(path)
        if not {canonicalize_name(d) for d in owners.get(module, [module])} & provided
    }
    assert not missing, f"imported by the monitor, not installed in the image: {sorted(missing)}"
    # Only what the monitor needs: neither the serving nor the pipeline stack.
    assert not {"kserve", "kfp", "onnxruntime", "torch", "tensorflow"} & provided


def test_the_build_installs_the_drift_extra_with_every_version_from_the_lock() -> None:
    words = pip_install()
    assert words[words.index("-c") + 1] == "requirements.lock"
    targets = [word for word in words if word.startswith(".[")]
    assert targets == [".[drift]"]
    pinned = {
        canonicalize_name(line.split("==")[0])
        for line in (REPO / "requirements.lock").read_text().splitlines()
        if "==" in line and not line.startswith(" ")
    }
    assert installed_closure(["fraud-detection[drift]"]) <= pinned | {"fraud-detection"}


def test_the_copied_sources_exist_and_the_final_stage_runs_as_uid_1000() -> None:
    lines = instructions()
    for line in lines:
        if line.startswith("COPY") and "--from" not in line:
            *sources, _target = shlex.split(line)[1:]
            for source in sources:
                assert (REPO / source).exists(), f"COPY {source} does not exist"
    froms = [line for line in lines if line.startswith("FROM")]
    assert len(froms) == 2 and len({line.split()[1] for line in froms}) == 1  # one pinned base
    final = lines[lines.index(froms[1]) :]
    assert "USER 1000" in final
    assert not any(re.search(r"\b(apt-get|gcc|pip install)\b", line) for line in final)


def test_the_entrypoint_runs_the_monitor_with_options_it_accepts() -> None:
    import typer

    from fraud_detection.monitor_cli import monitor

    (line,) = [line for line in instructions() if line.startswith("ENTRYPOINT ")]
    entrypoint = json.loads(line.split(" ", 1)[1])
    assert entrypoint[:3] == ["python", "-m", "fraud_detection.monitoring"]
    app = typer.Typer()
    app.command()(monitor)
    command = typer.main.get_command(app)
    context = command.make_context("monitor", entrypoint[3:])
    assert context.params["metrics_host"] == "0.0.0.0"
    port = context.params["metrics_port"]
    assert f"EXPOSE {port}" in instructions()
    with pytest.raises(Exception, match="No such option"):  # the parse does check
        command.make_context("monitor", ["--no-such-option"])
