"""The scoring model of a bundle, and where bundles come from (a directory or the registry).

:func:`load_scoring_model` is the one place a bundle becomes something that scores: it checks
every file against the manifest (:func:`~fraud_detection.bundle.verify_bundle`) before reading
any of them, checks that the model was trained on this code's :data:`FEATURE_NAMES`, and then
loads ``model.onnx`` into onnxruntime (the fast path: about 10 µs for one row of a 100-tree
forest) or, when asked, when there is no ONNX file or onnxruntime is missing, ``model.joblib``
into scikit-learn (about 4 ms for one row). Both give the same probabilities to within float32
rounding.

As KServe's sklearn server does, a directory without a model raises a specific error
(:class:`~fraud_detection.bundle.ModelMissingError`) and one with more than one candidate model
file of a kind raises :class:`AmbiguousModelError` instead of picking one.

:class:`BundleSource` names where the bundle comes from (a fixed directory, or the local
registry's ``current`` pointer) and :class:`BundleWatcher` follows it: a background thread that
loads a new bundle when the registry's current version changes or when a reload is requested,
then hands it to a callback. Loading happens off the serving event loop; the swap is a single
reference assignment, so requests in flight finish on the object they started with.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from fraud_detection.bundle import (
    MODEL_JOBLIB,
    MODEL_ONNX,
    BundleError,
    BundleIntegrityError,
    Manifest,
    ModelMissingError,
    verify_bundle,
)
from fraud_detection.features import FEATURE_NAMES

log = logging.getLogger(__name__)

Runtime = Literal["auto", "onnx", "sklearn"]
RUNTIMES: tuple[str, ...] = ("auto", "onnx", "sklearn")
ONNX_EXTENSIONS: tuple[str, ...] = (".onnx",)
#: The file name endings KServe's sklearn server treats as models.
SKLEARN_EXTENSIONS: tuple[str, ...] = (".joblib", ".pkl", ".pickle")
#: Name of the ONNX input and output the export writes (skl2onnx, ``zipmap=False``).
ONNX_INPUT = "features"
ONNX_PROBABILITIES = "probabilities"


class AmbiguousModelError(BundleError):
    """More than one model file of a kind: the server will not guess which one to serve."""


@dataclass(frozen=True)
class _Candidates:
    onnx: Path | None
    sklearn: Path | None


def _model_files(bundle_dir: Path, manifest: Manifest) -> _Candidates:
    """The ONNX and sklearn model files; refuses several of a kind or one the manifest misses."""
    found: dict[str, list[Path]] = {"onnx": [], "sklearn": []}
    for path in sorted(bundle_dir.iterdir()):
        if not path.is_file():
            continue
        if path.name.endswith(ONNX_EXTENSIONS):
            found["onnx"].append(path)
        elif path.name.endswith(SKLEARN_EXTENSIONS):
            found["sklearn"].append(path)
    for kind, paths in found.items():
        if len(paths) > 1:
            names = ", ".join(path.name for path in paths)
            raise AmbiguousModelError(
                f"{bundle_dir}: more than one {kind} model file ({names}); only one is allowed"
            )
    candidates = _Candidates(
        onnx=found["onnx"][0] if found["onnx"] else None,
        sklearn=found["sklearn"][0] if found["sklearn"] else None,
    )
    for path in (candidates.onnx, candidates.sklearn):
        if path is not None and path.name not in manifest.files:
            raise BundleIntegrityError(
                f"{bundle_dir}: refusing to load: {path.name} is not covered by the manifest"
            )
    if candidates.onnx is None and candidates.sklearn is None:
        raise ModelMissingError(
            f"{bundle_dir}: no model file ({MODEL_ONNX} or {MODEL_JOBLIB}) in the bundle"
        )
    return candidates


class ScoringModel:
    """A verified bundle's model: feature rows in, fraud probabilities out.

    Attributes:
        path: the bundle directory it was loaded from.
        manifest: the bundle's manifest (version, threshold, checksums).
        runtime: ``"onnx"`` or ``"sklearn"``, whichever was loaded.
    """

    def __init__(self, path: Path, manifest: Manifest, runtime: str, scorer: Any) -> None:
        self.path = path
        self.manifest = manifest
        self.runtime = runtime
        self._scorer = scorer
        self.n_features = len(manifest.feature_names)
        if runtime == "onnx":
            self._output_index = [out.name for out in scorer.get_outputs()].index(
                ONNX_PROBABILITIES
            )
            self.predict_proba = self._onnx_proba
        else:
            self._fraud_column = list(scorer.classes_).index(1)
            self.predict_proba = self._sklearn_proba

    @property
    def version(self) -> str:
        """The model version recorded in the manifest."""
        return self.manifest.model_version

    def _onnx_proba(self, matrix: np.ndarray) -> np.ndarray:
        """Fraud probability of each row of a float matrix (n_rows x n_features)."""
        features = np.ascontiguousarray(matrix, dtype=np.float32)
        outputs = self._scorer.run(None, {ONNX_INPUT: features})
        return outputs[self._output_index][:, 1]

    def _sklearn_proba(self, matrix: np.ndarray) -> np.ndarray:
        """Fraud probability of each row of a float matrix (n_rows x n_features)."""
        features = np.asarray(matrix, dtype=np.float64)
        return self._scorer.predict_proba(features)[:, self._fraud_column]

    def score(self, rows: Sequence[Sequence[float]]) -> list[float]:
        """Fraud probabilities of feature rows, as Python floats."""
        return self.predict_proba(np.asarray(rows, dtype=np.float32)).tolist()

    def __repr__(self) -> str:
        return f"ScoringModel({self.version!r}, runtime={self.runtime!r}, path={str(self.path)!r})"


def _onnx_session(path: Path) -> Any:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    # One request is one or a few rows: threads cost more than they bring, and the server
    # process shares the cores with the event loop.
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(
        str(path), sess_options=options, providers=["CPUExecutionProvider"]
    )


def load_scoring_model(bundle_dir: str | Path, runtime: Runtime = "auto") -> ScoringModel:
    """Verify a bundle and load its model.

    Args:
        bundle_dir: the bundle directory.
        runtime: ``"onnx"`` (fail without an ONNX model), ``"sklearn"`` (the joblib model), or
            ``"auto"``: ONNX when the bundle has one and onnxruntime is installed, else sklearn.

    Raises:
        ModelMissingError: no manifest or no model file.
        AmbiguousModelError: several model files of one kind.
        BundleIntegrityError: a file differs from its sha256 in the manifest, is missing, or a
            model file is not covered by the manifest; also a model trained on other features.
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    path = Path(bundle_dir).resolve()
    if not path.is_dir():
        raise ModelMissingError(f"{path}: no such model directory")
    manifest = verify_bundle(path)
    if list(manifest.feature_names) != list(FEATURE_NAMES):
        raise BundleIntegrityError(
            f"{path}: refusing to load: the model was trained on features "
            f"{manifest.feature_names}, this server computes {list(FEATURE_NAMES)}"
        )
    candidates = _model_files(path, manifest)
    if runtime in ("auto", "onnx") and candidates.onnx is not None:
        try:
            session = _onnx_session(candidates.onnx)
        except ImportError:
            if runtime == "onnx":
                raise
            log.warning("onnxruntime is not installed; falling back to the sklearn model")
        else:
            return _warmed(ScoringModel(path, manifest, "onnx", session))
    if runtime == "onnx":
        raise ModelMissingError(f"{path}: runtime 'onnx' requested but there is no {MODEL_ONNX}")
    if candidates.sklearn is None:
        raise ModelMissingError(f"{path}: no {MODEL_JOBLIB} for the sklearn runtime")
    import joblib

    return _warmed(ScoringModel(path, manifest, "sklearn", joblib.load(candidates.sklearn)))


def _warmed(model: ScoringModel) -> ScoringModel:
    """Score one row once, so the first request does not pay for lazy initialisation."""
    model.predict_proba(np.zeros((1, model.n_features)))
    return model


# --------------------------------------------------------------------------- where bundles live
@dataclass(frozen=True)
class BundleSource:
    """Where the bundle to serve comes from: a fixed directory, or the registry's current one."""

    model_dir: Path | None = None
    registry_root: Path | None = None

    def __post_init__(self) -> None:
        if (self.model_dir is None) == (self.registry_root is None):
            raise ValueError("give exactly one of model_dir and registry_root")

    @property
    def follows_registry(self) -> bool:
        """Whether the source changes when the registry promotes or rolls back."""
        return self.registry_root is not None

    def resolve(self) -> Path:
        """The bundle directory to serve now.

        Raises:
            ModelMissingError: the registry has no current model.
        """
        if self.model_dir is not None:
            return Path(self.model_dir).resolve()
        from fraud_detection.registry import ModelRegistry

        current = ModelRegistry(self.registry_root).current()
        if current is None:
            raise ModelMissingError(
                f"the model registry at {self.registry_root} has no current model"
            )
        return current

    def describe(self) -> str:
        """Human-readable description for logs."""
        if self.model_dir is not None:
            return f"model directory {self.model_dir}"
        return f"model registry {self.registry_root} (current)"


class BundleWatcher:
    """Background thread that reloads when the source's bundle changes or a reload is requested.

    ``load`` is called with the new bundle directory, in the watcher's thread; it should build
    the new objects completely and then swap them in. A failing load is logged and the old
    model keeps serving; the same directory is not retried until it changes or a reload is
    requested.
    """

    def __init__(
        self,
        source: BundleSource,
        load: Callable[[Path], object],
        current: Path,
        interval_s: float = 2.0,
        name: str = "bundle-watcher",
    ) -> None:
        self.source = source
        self._load = load
        self._current = current
        self._failed: Path | None = None
        self.interval_s = interval_s
        self._wake = threading.Event()
        self._reload_requested = False
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.reloads = 0
        self.failures = 0

    def start(self) -> BundleWatcher:
        """Start watching; returns ``self``."""
        self._thread.start()
        return self

    def request_reload(self) -> None:
        """Reload the bundle soon, even if it did not change (safe in signal handlers)."""
        self._reload_requested = True
        self._wake.set()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the thread and wait for it."""
        self._stopped.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def check(self, force: bool = False) -> bool:
        """Load the source's bundle if it changed (or ``force``); return whether one was loaded."""
        try:
            target = self.source.resolve()
        except BundleError as exc:
            log.warning("model source unavailable: %s", exc)
            return False
        if not force and (target == self._current or target == self._failed):
            return False
        try:
            self._load(target)
        except Exception as exc:
            self._failed = target
            self.failures += 1
            log.error("not switching to %s, still serving %s: %s", target, self._current, exc)
            return False
        log.debug("loaded %s in place of %s", target, self._current)
        self._current, self._failed = target, None
        self.reloads += 1
        return True

    def _run(self) -> None:
        while not self._stopped.is_set():
            self._wake.wait(self.interval_s if self.source.follows_registry else None)
            self._wake.clear()
            if self._stopped.is_set():
                return
            force, self._reload_requested = self._reload_requested, False
            self.check(force=force)


class FollowsBundle:
    """Load, start, stop and reload plumbing shared by the predictor and the transformer models.

    The host class sets ``source``, ``reload_interval_s`` and ``watcher = None`` and implements
    ``_swap(bundle_dir)``, which builds the new serving objects and swaps them in, and
    ``served_version``. Every load goes through :meth:`load_bundle`: the served version is
    exported (``fraud_model_info``), and each load after the first is counted as a switch
    (``fraud_model_switches_total``) and logged at INFO with the old and the new version.
    """

    source: BundleSource
    reload_interval_s: float
    watcher: BundleWatcher | None

    def _swap(self, bundle_dir: Path) -> None:
        raise NotImplementedError

    @property
    def served_version(self) -> str | None:
        """The model version served now (None before the first load)."""
        raise NotImplementedError

    def load_bundle(self, bundle_dir: Path) -> None:
        """Swap in the bundle of ``bundle_dir``; export, count and log the switch.

        Raises:
            BundleError: and whatever loading raises; the served bundle does not change (a
                refused switch is counted in ``fraud_model_switch_failures_total``).
        """
        from fraud_detection.serving.metrics import count_switch_failure, model_served

        before = self.served_version
        try:
            self._swap(bundle_dir)
        except Exception:
            if before is not None:
                count_switch_failure()
            raise
        after = self.served_version
        assert after is not None
        model_served(after, switched=before is not None)
        role = type(self).__name__.lower()
        if before is None:
            return
        if before == after:
            log.info("%s reloaded model %s from %s", role, after, bundle_dir)
        else:
            log.info("%s switched model from %s to %s (%s)", role, before, after, bundle_dir)

    def follow_bundle(self, current: Path | None, name: str) -> None:
        """Start the watcher once a bundle is loaded (``current`` is its directory)."""
        if self.watcher is None and current is not None:
            self.watcher = BundleWatcher(
                self.source, self.load_bundle, current, self.reload_interval_s, name=name
            ).start()

    def stop_following(self) -> None:
        """Stop the watcher, if any."""
        if self.watcher is not None:
            self.watcher.stop()

    def request_reload(self) -> None:
        """Reload the bundle in the background (e.g. on SIGHUP)."""
        if self.watcher is not None:
            self.watcher.request_reload()
