"""The local model registry: versioned bundles and an atomically switched ``current`` pointer.

Layout::

    <root>/versions/<model_version>/   one verified bundle per version (never modified)
    <root>/current                     symlink to versions/<model_version>

Promotion copies a bundle in, then replaces the ``current`` symlink with ``os.replace`` (atomic
on POSIX), so a server that follows ``current`` sees either the old or the new model, never a
half-written one. Earlier versions stay for :meth:`ModelRegistry.rollback`.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from fraud_detection.bundle import Manifest, read_manifest, verify_bundle

REGISTRY_ENV = "FRAUD_REGISTRY"
DEFAULT_REGISTRY = "registry"


def default_registry_root() -> Path:
    """``$FRAUD_REGISTRY``, or ``./registry`` in the working directory."""
    return Path(os.environ.get(REGISTRY_ENV, DEFAULT_REGISTRY))


@dataclass(frozen=True)
class RegisteredModel:
    """One version in the registry."""

    version: str
    path: Path
    manifest: Manifest
    is_current: bool


class ModelRegistry:
    """Versioned model bundles in a directory."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_registry_root()
        self.versions_dir = self.root / "versions"
        self.pointer = self.root / "current"

    def current(self) -> Path | None:
        """The bundle directory ``current`` points to, or None when nothing is deployed."""
        if not self.pointer.is_symlink() and not self.pointer.exists():
            return None
        return self.pointer.resolve()

    def current_version(self) -> str | None:
        """The deployed model version, or None."""
        path = self.current()
        return path.name if path is not None else None

    def promote(self, bundle_dir: str | Path) -> str:
        """Verify a bundle, copy it in as a new version and make it current; return the version."""
        manifest = verify_bundle(bundle_dir)
        target = self.versions_dir / manifest.model_version
        if not target.exists():
            self.versions_dir.mkdir(parents=True, exist_ok=True)
            staging = self.versions_dir / f".{manifest.model_version}.staging"
            shutil.rmtree(staging, ignore_errors=True)
            shutil.copytree(bundle_dir, staging)
            os.replace(staging, target)
        self._point_to(manifest.model_version)
        return manifest.model_version

    def list(self) -> list[RegisteredModel]:
        """Every version, oldest first (by creation time recorded in its manifest)."""
        current = self.current_version()
        models = (
            [
                RegisteredModel(path.name, path, read_manifest(path), path.name == current)
                for path in self.versions_dir.glob("*")
                if path.is_dir() and not path.name.startswith(".")
            ]
            if self.versions_dir.is_dir()
            else []
        )
        return sorted(models, key=lambda model: (model.manifest.created_at, model.version))

    def rollback(self, version: str | None = None) -> str:
        """Point ``current`` at ``version``, or at the version promoted before the current one."""
        models = self.list()
        if not models:
            raise ValueError(f"the registry at {self.root} is empty: no model to roll back to")
        if version is None:
            current = self.current_version()
            names = [model.version for model in models]
            if current not in names or names.index(current) == 0:
                raise ValueError("no earlier version to roll back to")
            version = names[names.index(current) - 1]
        elif version not in {model.version for model in models}:
            raise ValueError(f"unknown model version {version!r}")
        verify_bundle(self.versions_dir / version)
        self._point_to(version)
        return version

    def _point_to(self, version: str) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        temporary = self.root / f".current.{os.getpid()}"
        if temporary.is_symlink() or temporary.exists():
            temporary.unlink()
        temporary.symlink_to(Path("versions") / version)
        os.replace(temporary, self.pointer)
