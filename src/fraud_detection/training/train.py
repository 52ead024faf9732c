"""The model: a random forest with class weights, seeded, on a bounded number of rows.

Fraud is rare (about 0.2 % of transactions), so the classes are weighted: a number gives the
fraud class that weight against 1 for legitimate rows (the default, 5), ``balanced`` gives each
class the same total weight over the full training set, ``none`` leaves them equal. The default
and the leaf size of 5 were chosen on the earliest rolling folds of the handbook data
(``benchmarks/bench_handbook.py``): a moderate weight ranked as well as none and better than
``balanced``: scikit-learn draws each tree's bootstrap in proportion to the weights, so with
balanced weights half of the draws are (repeated) frauds and a tree sees about 40 % of the
legitimate rows instead of 63 %.

Large training sets are bounded by ``max_train_rows``: every fraud is kept and legitimate rows
are down-sampled (seeded) to fit, each kept one weighing ``1 / rate`` so that the class totals
stay those of the full set. Together with a bounded ``max_depth`` this keeps training and the
ONNX export fast on a laptop (an unbounded forest on 800k rows has 600k+ nodes and takes
minutes to convert).

Class weights shape the trees (splits that isolate fraud gain more), but they also inflate every
leaf's fraud share by the weight ratio: a weighted forest's score of 0.1 is not a probability of
0.1, and the 0.1 threshold flags several times more transactions than the scores' face value says,
by a factor that depends on the weights (and, with ``balanced``, on each training set's fraud
share), so it changes from one training to the next. With ``prior_correction`` (the default) each
leaf's class shares are divided by the class weights after fitting (:func:`undo_class_weights`): a
tree then predicts the share of fraud among the training transactions that reach its leaf, as an
unweighted tree with the same splits would. The down-sampling needs no such correction: its
``1 / rate`` weights already restore the legitimate total. The corrected values are in the trees
themselves, so the saved model, its ONNX export and the served predictor all give the corrected
probability.
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from sklearn.ensemble import RandomForestClassifier

BALANCED = "balanced"
NO_WEIGHTS = "none"


class TrainingError(ValueError):
    """The training parameters or the training data cannot give a model."""


@dataclass(frozen=True)
class TrainParams:
    """Hyperparameters of the forest and of the training-set bound.

    ``max_depth`` 0 means unbounded; ``max_train_rows`` 0 means no down-sampling;
    ``max_features`` is ``sqrt``, ``log2``, ``all`` or a fraction such as ``0.5``.
    """

    n_estimators: int = 100
    max_depth: int = 20
    min_samples_leaf: int = 5
    max_features: str = "sqrt"
    class_weight: str = "5"
    max_train_rows: int = 200_000
    seed: int = 42
    n_jobs: int = -1
    prior_correction: bool = True

    def __post_init__(self) -> None:
        for name, low in (("n_estimators", 1), ("max_depth", 0), ("min_samples_leaf", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise TrainingError(f"{name}: must be an integer >= {low}, got {value!r}")
        if self.max_train_rows < 0:
            raise TrainingError(f"max_train_rows: must be >= 0, got {self.max_train_rows}")
        if self.seed < 0:
            raise TrainingError(f"seed: must be >= 0, got {self.seed}")
        parse_max_features(self.max_features)
        parse_class_weight(self.class_weight)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for manifests and reports."""
        return asdict(self)


def parse_max_features(value: str) -> str | float | None:
    """``sqrt``/``log2`` as is, ``all`` as None (every feature), or a fraction in (0, 1]."""
    text = str(value).strip().lower()
    if text in ("sqrt", "log2"):
        return text
    if text in ("all", "none", ""):
        return None
    try:
        fraction = float(text)
    except ValueError:
        fraction = -1.0
    if not 0.0 < fraction <= 1.0:
        raise TrainingError(
            f"max_features: must be sqrt, log2, all or a fraction in (0, 1], got {value!r}"
        )
    return fraction


def parse_class_weight(value: str) -> str | float | None:
    """``balanced``, ``none`` (None) or a positive fraud-class weight."""
    text = str(value).strip().lower()
    if text == BALANCED:
        return BALANCED
    if text in (NO_WEIGHTS, ""):
        return None
    try:
        weight = float(text)
    except ValueError:
        weight = -1.0
    if not weight > 0.0:
        raise TrainingError(
            f"class_weight: must be 'balanced', 'none' or a positive number, got {value!r}"
        )
    return weight


def seed_everything(seed: int) -> None:
    """Seed Python's and NumPy's global generators (the estimator gets ``random_state``)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    os.environ["PYTHONHASHSEED"] = str(seed)


def class_weights(labels: np.ndarray, spec: str) -> dict[int, float] | None:
    """Per-class weights over the full training set, or None for unweighted classes."""
    parsed = parse_class_weight(spec)
    if parsed is None:
        return None
    if parsed == BALANCED:
        counts = np.bincount(labels, minlength=2).astype(np.float64)
        return {cls: float(len(labels) / (2.0 * counts[cls])) for cls in (0, 1)}
    return {0: 1.0, 1: float(parsed)}


def downsample(
    labels: np.ndarray, max_rows: int, seed: int
) -> tuple[np.ndarray, np.ndarray | None, float]:
    """Rows to train on, their sample weights (None: all 1) and the legitimate sampling rate.

    All frauds are kept; legitimate rows are kept with probability ``rate`` so that about
    ``max_rows`` rows remain, and weigh ``1 / rate``.
    """
    n_rows = len(labels)
    if max_rows <= 0 or n_rows <= max_rows:
        return np.arange(n_rows), None, 1.0
    fraud = np.flatnonzero(labels == 1)
    legit = np.flatnonzero(labels == 0)
    if len(fraud) >= max_rows:
        raise TrainingError(
            f"max_train_rows={max_rows} is not above the {len(fraud)} fraudulent training rows"
        )
    rate = (max_rows - len(fraud)) / len(legit)
    rng = np.random.default_rng(seed)
    kept_legit = legit[rng.random(len(legit)) < rate]
    rows = np.sort(np.concatenate([fraud, kept_legit]))
    weights = np.where(labels[rows] == 0, 1.0 / rate, 1.0)
    return rows, weights, float(rate)


def undo_class_weights(model: RandomForestClassifier, weights: dict[int, float] | None) -> None:
    """Divide every node's class shares by the class weights, in place (prior correction).

    Each tree's ``value`` holds the weighted class shares of the training rows in a node; after
    this it holds their unweighted shares (sample weights, such as the down-sampling's, kept).
    """
    if not weights:
        return
    divisors = np.array([weights[0], weights[1]], dtype=np.float64)
    for tree in model.estimators_:
        values = tree.tree_.value  # a view on the tree's own array: edits stay in the model
        shares = values[:, 0, :] / divisors
        totals = shares.sum(axis=1, keepdims=True)
        values[:, 0, :] = shares / np.where(totals > 0, totals, 1.0)


def fit_forest(
    features: np.ndarray, labels: np.ndarray, params: TrainParams
) -> tuple[RandomForestClassifier, dict[str, Any]]:
    """Fit the forest; return it and what was done (rows, weights, timing, tree sizes)."""
    from sklearn.ensemble import RandomForestClassifier

    labels = labels.astype(np.int64)
    counts = np.bincount(labels, minlength=2)
    if len(counts) > 2 or counts.min() == 0:
        raise TrainingError(
            f"training data needs both classes 0 and 1, got counts {counts.tolist()}"
        )
    seed_everything(params.seed)
    rows, weights, rate = downsample(labels, params.max_train_rows, params.seed)
    weights_by_class = class_weights(labels, params.class_weight)
    model = RandomForestClassifier(
        n_estimators=params.n_estimators,
        max_depth=params.max_depth or None,
        min_samples_leaf=params.min_samples_leaf,
        max_features=parse_max_features(params.max_features),
        class_weight=weights_by_class,
        random_state=params.seed,
        n_jobs=params.n_jobs,
    )
    started = time.perf_counter()
    model.fit(features[rows], labels[rows], sample_weight=weights)
    seconds = time.perf_counter() - started
    if params.prior_correction:
        undo_class_weights(model, weights_by_class)
    # Threads add the trees' probabilities in whatever order they finish, which changes the last
    # bit of the sum; one thread makes predictions bit-reproducible (and costs little).
    model.set_params(n_jobs=1)
    info = {
        "rows_available": len(labels),
        "frauds_available": int(counts[1]),
        "rows_used": len(rows),
        "legit_sample_rate": rate,
        "class_weight": model.class_weight,
        "prior_correction": bool(params.prior_correction and weights_by_class),
        "fit_seconds": round(seconds, 3),
        "tree_nodes": int(sum(tree.tree_.node_count for tree in model.estimators_)),
        "deepest_tree": int(max(tree.tree_.max_depth for tree in model.estimators_)),
    }
    return model, info


def feature_importances(model: RandomForestClassifier, names: tuple[str, ...]) -> dict[str, float]:
    """Impurity-based importances by feature name, largest first."""
    pairs = sorted(zip(names, model.feature_importances_, strict=True), key=lambda p: -p[1])
    return {name: float(value) for name, value in pairs}
