"""The model bundle: the directory the training pipeline exports and the servers load.

A bundle holds the model (``model.joblib`` for KServe's sklearn runtime, ``model.onnx`` for the
fast path), the online feature-state snapshot, a drift reference sample and ``manifest.json``,
which records the version, the feature names, the threshold, the metrics, the sha256 of every
other file, why the model was trained (``trigger_reason``) and the time span of its data
(``data_start``, ``data_end``). Servers call :func:`verify_bundle` before loading anything.
Manifests written before a field existed still load (the field is then empty).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MODEL_JOBLIB = "model.joblib"
MODEL_ONNX = "model.onnx"
FEATURE_STATE = "feature_state.json.gz"
DRIFT_REFERENCE = "drift_reference.npz"
MANIFEST = "manifest.json"
#: What a model version may look like before it is used in a path or URL (no separators).
VERSION_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def safe_version(model_version: str) -> bool:
    """Whether ``model_version`` may be used in a path or URL (no separators, no ``..``)."""
    return bool(VERSION_PATTERN.fullmatch(model_version)) and ".." not in model_version


class BundleError(RuntimeError):
    """Base class for a bundle that cannot be served."""


class ModelMissingError(BundleError):
    """The directory holds no bundle (no manifest or no model file)."""


class BundleIntegrityError(BundleError):
    """A file differs from the checksum recorded in the manifest, or is missing."""


@dataclass
class Manifest:
    """What a bundle contains and how it was made."""

    model_version: str
    feature_names: list[str]
    threshold: float
    files: dict[str, str] = field(default_factory=dict)  # name -> sha256
    created_at: str = ""
    libraries: dict[str, str] = field(default_factory=dict)
    data_fingerprint: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    #: Why the model was trained: ``manual``, ``schedule``, or the retraining trigger's reason.
    trigger_reason: str = ""
    #: The first and last transaction time the model was trained and tested on (ISO-8601 UTC).
    data_start: str = ""
    data_end: str = ""

    def to_json(self) -> str:
        """Stable, human-readable JSON."""
        return json.dumps(asdict(self), indent=2, sort_keys=True)


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(bundle_dir: str | Path, manifest: Manifest) -> Path:
    """Checksum every file in ``bundle_dir`` (but the manifest) into ``manifest`` and write it."""
    bundle_dir = Path(bundle_dir)
    manifest.files = {
        path.name: sha256_file(path)
        for path in sorted(bundle_dir.iterdir())
        if path.is_file() and path.name != MANIFEST
    }
    target = bundle_dir / MANIFEST
    with tempfile.NamedTemporaryFile("w", dir=bundle_dir, delete=False, suffix=".tmp") as handle:
        handle.write(manifest.to_json())
    os.replace(handle.name, target)
    return target


def read_manifest(bundle_dir: str | Path) -> Manifest:
    """Read ``manifest.json``; :class:`ModelMissingError` when there is none."""
    path = Path(bundle_dir) / MANIFEST
    if not path.is_file():
        raise ModelMissingError(f"{bundle_dir}: no {MANIFEST}; not a model bundle")
    try:
        return Manifest(**json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError) as exc:
        raise BundleIntegrityError(f"{path}: unreadable manifest ({exc})") from exc


def verify_bundle(bundle_dir: str | Path) -> Manifest:
    """Check every file listed in the manifest against its sha256 and return the manifest.

    Raises :class:`ModelMissingError` when the bundle has no model file at all, and
    :class:`BundleIntegrityError` naming each file that is missing or was changed.
    """
    bundle_dir = Path(bundle_dir)
    manifest = read_manifest(bundle_dir)
    if not {MODEL_JOBLIB, MODEL_ONNX} & set(manifest.files):
        raise ModelMissingError(
            f"{bundle_dir}: the manifest lists no {MODEL_ONNX} or {MODEL_JOBLIB}"
        )
    problems = []
    for name, expected in sorted(manifest.files.items()):
        path = bundle_dir / name
        if not path.is_file():
            problems.append(f"{name} is missing")
        elif sha256_file(path) != expected:
            problems.append(f"{name} does not match its sha256 in {MANIFEST}")
    if problems:
        raise BundleIntegrityError(f"{bundle_dir}: refusing to load: {'; '.join(problems)}")
    return manifest
