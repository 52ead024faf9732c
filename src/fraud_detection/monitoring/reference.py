"""A model version's drift reference, and where the monitor finds it.

The training pipeline's export step writes ``drift_reference.npz`` into every bundle
(:func:`fraud_detection.training.export.save_drift_reference`): ``features`` (rows x features,
float64) and ``feature_names``. The monitor also reads an optional ``fraud_probability`` array
(one score per reference row): the model's scores on those rows. Only scores the model did not
train on make an honest reference for the live scores (a forest scores its own training rows
with near-certain probabilities), so the monitor tests the score only when the bundle carries
them and never computes them itself from the reference rows.

Where a version's bundle is, is a :class:`BundleLocator`: :class:`RegistryLocator` (the local
registry, ``<root>/versions/<version>``), :class:`TemplateLocator` (any directory layout, e.g.
a volume a cluster mounts) or :class:`StorageLocator` (a URL template into object storage, e.g.
the model store ``s3://mlpipeline/fraud-detection/models/{version}`` the pipeline's deploy step
writes; each version's manifest and drift reference are fetched once into a local cache).
:func:`bundle_locator` picks one from the command line's ``--bundles``/``--registry``.
:class:`ReferenceCache` loads each version once and keeps the most recent ones.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from fraud_detection.bundle import (
    DRIFT_REFERENCE,
    MANIFEST,
    BundleError,
    BundleIntegrityError,
    read_manifest,
    safe_version,
    sha256_file,
)

log = logging.getLogger(__name__)

#: The optional array of reference scores in ``drift_reference.npz``.
SCORES_ARRAY = "fraud_probability"
FEATURES_ARRAY = "features"
NAMES_ARRAY = "feature_names"


class DriftReferenceError(BundleError):
    """A version's drift reference cannot be used (missing, changed, or malformed)."""


class UnknownVersionError(DriftReferenceError):
    """No bundle is known for the model version."""


@dataclass(frozen=True, eq=False)
class DriftReference:
    """The reference sample of one model version.

    Attributes:
        model_version: the version it belongs to.
        feature_names: the names of ``features``' columns.
        features: the reference rows (rows x features, float64, read-only).
        scores: the model's score of each row, or None when the bundle has none.
        source: the file it was read from.
        derived: what is computed once from the reference and kept with it, by key (e.g. the
            detector's calibration, :func:`fraud_detection.monitoring.detector.calibration_of`).
    """

    model_version: str
    feature_names: tuple[str, ...]
    features: np.ndarray
    scores: np.ndarray | None
    source: Path
    derived: dict[Hashable, Any] = field(default_factory=dict, repr=False)

    @property
    def rows(self) -> int:
        """The number of reference rows."""
        return int(self.features.shape[0])


def load_reference(bundle_dir: str | Path, model_version: str | None = None) -> DriftReference:
    """Read and check a bundle's drift reference.

    The file must be listed in the bundle's manifest with a matching sha256, hold a 2-D finite
    ``features`` array with one name per column (the manifest's feature names, in order) and,
    if present, one finite ``fraud_probability`` in [0, 1] per row.

    Raises:
        DriftReferenceError: naming the file, the array and what is wrong.
        fraud_detection.bundle.ModelMissingError: the directory holds no manifest.
    """
    bundle_dir = Path(bundle_dir)
    manifest = read_manifest(bundle_dir)
    if model_version is not None and manifest.model_version != model_version:
        raise DriftReferenceError(
            f"{bundle_dir}: the manifest's model_version is {manifest.model_version!r}, "
            f"expected {model_version!r}"
        )
    path = bundle_dir / DRIFT_REFERENCE
    expected = manifest.files.get(DRIFT_REFERENCE)
    if expected is None:
        raise DriftReferenceError(f"{bundle_dir}: the manifest lists no {DRIFT_REFERENCE}")
    if not path.is_file():
        raise DriftReferenceError(f"{path}: missing")
    if sha256_file(path) != expected:
        raise BundleIntegrityError(f"{path}: does not match its sha256 in the manifest")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except (OSError, ValueError) as exc:
        raise DriftReferenceError(f"{path}: unreadable ({exc})") from exc
    return _checked(path, manifest.model_version, list(manifest.feature_names), arrays)


def _checked(
    path: Path, version: str, manifest_names: list[str], arrays: dict[str, np.ndarray]
) -> DriftReference:
    for name in (FEATURES_ARRAY, NAMES_ARRAY):
        if name not in arrays:
            raise DriftReferenceError(f"{path}: {name}: missing")
    features = arrays[FEATURES_ARRAY]
    names = [str(name) for name in arrays[NAMES_ARRAY].tolist()]
    if features.ndim != 2 or features.shape[0] == 0:
        raise DriftReferenceError(
            f"{path}: {FEATURES_ARRAY}: must be a non-empty 2-D array, got shape {features.shape}"
        )
    if not np.issubdtype(features.dtype, np.number) or not np.isfinite(features).all():
        raise DriftReferenceError(f"{path}: {FEATURES_ARRAY}: must hold finite numbers only")
    if len(names) != features.shape[1] or len(set(names)) != len(names):
        raise DriftReferenceError(
            f"{path}: {NAMES_ARRAY}: {len(names)} names (distinct: {len(set(names))}) for "
            f"{features.shape[1]} columns"
        )
    if manifest_names and names != manifest_names:
        raise DriftReferenceError(
            f"{path}: {NAMES_ARRAY}: differ from the manifest's feature_names"
        )
    scores = arrays.get(SCORES_ARRAY)
    if scores is not None:
        if scores.shape != (features.shape[0],):
            raise DriftReferenceError(
                f"{path}: {SCORES_ARRAY}: must hold one score per row ({features.shape[0]}), "
                f"got shape {scores.shape}"
            )
        if not np.issubdtype(scores.dtype, np.number) or not (
            np.isfinite(scores).all() and (scores >= 0).all() and (scores <= 1).all()
        ):
            raise DriftReferenceError(f"{path}: {SCORES_ARRAY}: must be numbers in [0, 1]")
        scores = scores.astype(np.float64)
        scores.flags.writeable = False
    features = features.astype(np.float64)
    features.flags.writeable = False
    return DriftReference(version, tuple(names), features, scores, path)


class BundleLocator(Protocol):
    """Where the bundle of a model version is."""

    def locate(self, model_version: str) -> Path | None:
        """The bundle directory of ``model_version``, or None when it is not known."""
        ...


class TemplateLocator:
    """Bundles at a path made from a template: ``/models/{version}`` finds ``/models/v1``."""

    def __init__(self, template: str) -> None:
        if "{version}" not in template:
            raise ValueError(f"template: must contain {{version}}, got {template!r}")
        self.template = template

    def locate(self, model_version: str) -> Path | None:
        """The template's directory for ``model_version`` if it exists (safe names only)."""
        if not safe_version(model_version):
            return None
        path = Path(self.template.format(version=model_version))
        return path if path.is_dir() else None

    def __repr__(self) -> str:
        return f"TemplateLocator({self.template!r})"


class StorageLocator:
    """Bundles in object storage at a URL template: ``s3://bucket/models/{version}``.

    A version's manifest and drift reference (the files the monitors read, not the models) are
    fetched through :func:`fraud_detection.training.storage.fetch_tree` into
    ``<cache_dir>/<version>`` once; later lookups use the copy. A version with no complete
    bundle (no manifest: absent, or still being copied) is not known (None), and looked up again
    on a later call. A storage error (unreachable, access denied) raises
    :class:`~fraud_detection.training.storage.StorageError`, an ``OSError``: the callers
    (:class:`ReferenceCache`, :class:`~fraud_detection.monitoring.performance.BundleBaselines`)
    log it and retry later. S3 settings come from ``environ`` (default: the process
    environment; :func:`fraud_detection.training.storage.s3_options`).
    """

    #: The files fetched of each bundle.
    FILES: tuple[str, ...] = (MANIFEST, DRIFT_REFERENCE)

    def __init__(
        self,
        template: str,
        cache_dir: str | Path | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        from fraud_detection.training.storage import StorageError, filesystem, is_url

        if "{version}" not in template:
            raise ValueError(f"template: must contain {{version}}, got {template!r}")
        if not is_url(template):
            raise ValueError(
                f"template: must be a URL (s3://bucket/prefix/{{version}}), got {template!r}"
            )
        try:  # the protocol is known and its package installed: fail at the start, not later
            filesystem(template.replace("{version}", "v"), environ)
        except StorageError as exc:
            raise ValueError(f"template: {exc}") from exc
        self.template = template
        self.environ = environ
        self._lock = threading.Lock()
        self.cache_dir = Path(
            cache_dir if cache_dir is not None else tempfile.mkdtemp(prefix="fraud-bundles-")
        )

    def url(self, model_version: str) -> str:
        """The bundle's URL for ``model_version``."""
        return self.template.format(version=model_version)

    def locate(self, model_version: str) -> Path | None:
        """The local copy of ``model_version``'s bundle (fetched on first use), or None when
        the store holds no complete bundle of it (or the name is unsafe).

        Raises:
            fraud_detection.training.storage.StorageError: the store could not be read.
        """
        if not safe_version(model_version):
            return None
        with self._lock:  # the drift and the performance monitors share the locator
            local = self.cache_dir / model_version
            if not (local / MANIFEST).is_file() and not self._fetch(model_version, local):
                return None
            return local

    def _fetch(self, model_version: str, local: Path) -> bool:
        from fraud_detection.training.storage import StorageNotFoundError, fetch_tree

        url = self.url(model_version)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{model_version}-", dir=self.cache_dir))
        try:
            try:
                # The manifest is written last: its presence means the copy is complete.
                fetch_tree(url, staging, self.environ, include=(MANIFEST,))
            except StorageNotFoundError:
                log.debug("no complete bundle of %s at %s", model_version, url)
                return False
            others = [name for name in self.FILES if name != MANIFEST]
            try:
                fetch_tree(url, staging, self.environ, include=others)
            except StorageNotFoundError as exc:  # load_reference says what is missing
                log.warning("bundle of %s: %s", model_version, exc)
            shutil.rmtree(local, ignore_errors=True)
            os.replace(staging, local)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        log.info("fetched the bundle files of %s from %s", model_version, url)
        return True

    def __repr__(self) -> str:
        return f"StorageLocator({self.template!r})"


def bundle_locator(
    bundles: str | None = None,
    registry: str | Path | None = None,
    cache_dir: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> BundleLocator:
    """The locator of ``--bundles`` (a URL template: :class:`StorageLocator` caching under
    ``cache_dir``; a path template: :class:`TemplateLocator`), else the registry's.

    Raises ValueError naming the template and the reason when it cannot be used.
    """
    from fraud_detection.training.storage import is_url

    if bundles is None:
        return RegistryLocator(registry)
    if is_url(bundles):
        return StorageLocator(bundles, cache_dir, environ)
    return TemplateLocator(bundles)


def bundles_template_problem(bundles: str) -> str | None:
    """Why ``bundles`` (a ``--bundles`` template) cannot be used, or None when it can.

    It must contain ``{version}``; a URL's protocol must be known and its package installed.
    """
    if "{version}" not in bundles:
        return f"must contain {{version}}, got {bundles!r}"
    try:
        bundle_locator(bundles, cache_dir=Path("."))
    except ValueError as exc:
        return str(exc)
    return None


class RegistryLocator(TemplateLocator):
    """Every version promoted into the local registry: ``<root>/versions/<version>``."""

    def __init__(self, root: str | Path | None = None) -> None:
        from fraud_detection.registry import ModelRegistry

        versions = ModelRegistry(root).versions_dir
        super().__init__(str(versions / "{version}"))
        self.root = versions.parent


class ReferenceCache:
    """Drift references by model version: each loaded once, the ``capacity`` most recent kept.

    A version that cannot be loaded is not looked up again for ``retry_s`` seconds (a record
    naming it is skipped meanwhile), so a stream of records of an unknown version costs one
    lookup per interval, not one per record.
    """

    def __init__(
        self,
        locator: BundleLocator,
        capacity: int = 8,
        retry_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity: must be >= 1, got {capacity}")
        self.locator = locator
        self.capacity = capacity
        self.retry_s = retry_s
        self._clock = clock
        self._loaded: OrderedDict[str, DriftReference] = OrderedDict()
        self._failed: dict[str, tuple[float, str]] = {}

    def get(self, model_version: str) -> DriftReference:
        """The reference of ``model_version``.

        Raises:
            UnknownVersionError: no bundle, or its reference cannot be used (the message says
                why; the reason is logged once per retry interval).
        """
        reference = self._loaded.get(model_version)
        if reference is not None:
            self._loaded.move_to_end(model_version)
            return reference
        failed = self._failed.get(model_version)
        if failed is not None and self._clock() < failed[0]:
            raise UnknownVersionError(failed[1])
        try:
            reference = self._load(model_version)
        except (BundleError, OSError) as exc:
            message = f"model version {model_version!r}: {exc}"
            self._failed[model_version] = (self._clock() + self.retry_s, message)
            if len(self._failed) > 1024:  # forget the oldest failures; bounded memory
                self._failed.pop(next(iter(self._failed)))
            log.warning("no drift reference for %s", message)
            raise UnknownVersionError(message) from None
        self._failed.pop(model_version, None)
        self._loaded[model_version] = reference
        if len(self._loaded) > self.capacity:
            self._loaded.popitem(last=False)
        log.info(
            "drift reference of %s: %d rows, %d features%s (%s)",
            model_version,
            reference.rows,
            len(reference.feature_names),
            ", with scores" if reference.scores is not None else ", no scores",
            reference.source,
        )
        return reference

    def _load(self, model_version: str) -> DriftReference:
        bundle_dir = self.locator.locate(model_version)
        if bundle_dir is None:
            raise UnknownVersionError(f"no bundle found ({self.locator!r})")
        return load_reference(bundle_dir, model_version)
