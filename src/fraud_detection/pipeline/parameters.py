"""The training pipeline's parameters: parsed from ``KEY=VALUE`` text and checked before a run.

:func:`check_parameters` is the one check of a run's arguments, made before anything runs or is
sent: by :func:`fraud_detection.pipeline.local.run_local` and the ``fraud pipeline run`` command
(before any step starts, before data are generated), and by
:func:`fraud_detection.pipeline.client.submit` and :func:`~fraud_detection.pipeline.client.schedule`
(before the cluster is contacted). A bad argument raises :class:`ParameterError` naming the
parameter and the reason.

The names, KFP types and defaults are the pipeline's own
(:func:`fraud_detection.pipeline.dag.pipeline_parameters`). The rules come from where the steps
enforce them: the split from :class:`~fraud_detection.training.dataset.SplitConfig` and its
window bounds, the forest from :class:`~fraud_detection.training.train.TrainParams`, the gate
from :class:`~fraud_detection.training.gate.GateConfig`, the deploy target from
:func:`~fraud_detection.training.deploy.resolve_target`. :data:`RANGES` holds the bounds of the
numbers no such class checks.
"""

from __future__ import annotations

import json
import math
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: ``name -> (KFP type name, default)``, as the pipeline declares them.
Declared = Mapping[str, tuple[str, Any]]


class ParameterError(ValueError):
    """A pipeline argument the run would refuse; ``name`` is the parameter (None: several)."""

    def __init__(self, name: str | None, reason: str) -> None:
        self.name = name
        self.reason = reason
        super().__init__(f"{name}: {reason}" if name else reason)


@dataclass(frozen=True)
class Range:
    """A closed or half-open interval of finite numbers; ``high`` None means unbounded."""

    low: float
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def problem(self, value: float) -> str | None:
        """Why ``value`` is outside the range, or None when it is inside."""
        inside = (
            math.isfinite(value)
            and (value > self.low if self.low_open else value >= self.low)
            and (self.high is None or (value < self.high if self.high_open else value <= self.high))
        )
        return None if inside else f"must be {self.describe()}, got {_show(value)}"

    def describe(self) -> str:
        """The range in words: ``between 0 and 1``, ``in (0, 1)``, ``a finite number >= 0``."""
        if self.high is None:
            return f"a finite number {'>' if self.low_open else '>='} {_show(self.low)}"
        if not (self.low_open or self.high_open):
            return f"between {_show(self.low)} and {_show(self.high)}"
        left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
        return f"in {left}{_show(self.low)}, {_show(self.high)}{right}"


#: Bounds of the numeric parameters that no training class checks itself.
RANGES: dict[str, Range] = {
    "min_recall": Range(0.0, 1.0),
    "min_f1": Range(0.0, 1.0),
    "threshold": Range(0.0, 1.0, low_open=True, high_open=True),
    "max_invalid_fraction": Range(0.0, 1.0, high_open=True),
    "kafka_max_records": Range(0),
    "review_cost": Range(0.0),
    "fraud_amount": Range(0.0),
}

#: The longest ``trigger_reason`` accepted, in characters.
MAX_REASON_LENGTH = 200
#: Why a run was started, when nobody says otherwise; the recurring run's reason.
MANUAL_REASON = "manual"
SCHEDULE_REASON = "schedule"
#: Unicode categories refused in a reason: control characters and line or paragraph breaks.
_REFUSED_CATEGORIES = ("Cc", "Zl", "Zp")

_KINDS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "Integer": ("an integer", lambda value: isinstance(value, int) and not isinstance(value, bool)),
    "Float": (
        "a number",
        lambda value: isinstance(value, int | float) and not isinstance(value, bool),
    ),
    "Boolean": ("true or false", lambda value: isinstance(value, bool)),
    "String": ("text", lambda value: isinstance(value, str)),
    "List": (
        "a list of text",
        lambda value: isinstance(value, list) and all(isinstance(item, str) for item in value),
    ),
}


def check_trigger_reason(reason: Any) -> str:
    """``reason`` if it is a valid ``trigger_reason``: text that is not blank, at most
    :data:`MAX_REASON_LENGTH` characters, without control characters or line breaks.

    Raises:
        ParameterError: naming ``trigger_reason`` and what is wrong.
    """
    name = "trigger_reason"
    if not isinstance(reason, str):
        raise ParameterError(name, f"must be text, got {reason!r}")
    if not reason.strip():
        raise ParameterError(name, "must not be empty")
    if len(reason) > MAX_REASON_LENGTH:
        raise ParameterError(
            name, f"must be at most {MAX_REASON_LENGTH} characters, got {len(reason)}"
        )
    for position, char in enumerate(reason):
        if unicodedata.category(char) in _REFUSED_CATEGORIES:
            raise ParameterError(
                name, f"must not hold control characters, got {char!r} at position {position}"
            )
    return reason


def _show(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else repr(value)


def declared_parameters() -> dict[str, tuple[str, Any]]:
    """The pipeline's parameters, ``name -> (KFP type name, default)`` (builds the pipeline)."""
    from fraud_detection.pipeline.dag import pipeline_parameters

    return pipeline_parameters()


def _kind_of(name: str, declared: Declared) -> str:
    if name not in declared:
        raise ParameterError(
            name, f"unknown pipeline parameter; known: {', '.join(sorted(declared))}"
        )
    return declared[name][0]


def parse_parameters(pairs: Sequence[str], declared: Declared | None = None) -> dict[str, Any]:
    """``KEY=VALUE`` strings as pipeline arguments, typed as the pipeline declares them.

    Lists take JSON (``data=["a.csv","b.csv"]``) or comma-separated values; booleans
    ``true``/``false``. Unknown names are refused. The values are not checked here: see
    :func:`check_parameters`.
    """
    if not pairs:
        return {}
    declared = declared if declared is not None else declared_parameters()
    out: dict[str, Any] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ParameterError(None, f"{pair!r}: expected KEY=VALUE")
        out[name] = coerce(name, _kind_of(name, declared), text)
    return out


def coerce(name: str, kind: str, text: str) -> Any:
    """One parameter value from text, as the KFP type ``kind`` wants it."""
    try:
        if kind == "Integer":
            return int(text)
        if kind == "Float":
            return float(text)
        if kind == "Boolean":
            lowered = text.strip().lower()
            if lowered not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(text)
            return lowered in ("true", "1", "yes")
        if kind == "List":
            stripped = text.strip()
            if stripped.startswith("["):
                value = json.loads(stripped)
                if not isinstance(value, list):
                    raise ValueError(text)
                return value
            return [item.strip() for item in stripped.split(",") if item.strip()]
    except (ValueError, json.JSONDecodeError) as exc:
        raise ParameterError(name, f"{text!r} is not a valid {kind}") from exc
    return text


def _named(error: Exception, declared: Declared) -> ParameterError:
    """A training class's ``"name: reason"`` error as a :class:`ParameterError`."""
    name, sep, reason = str(error).partition(": ")
    if sep and name in declared:
        return ParameterError(name, reason)
    return ParameterError(None, str(error))


def check_parameters(
    arguments: Mapping[str, Any], declared: Declared | None = None
) -> dict[str, Any]:
    """Check a run's arguments; return every parameter's value (the defaults filled in).

    Raises :class:`ParameterError` for an unknown name, a value of the wrong type or out of
    range, an inconsistent split (window bounds), no input (neither data files nor a Kafka
    topic; both together are one input), or a ``trigger_reason`` :func:`check_trigger_reason`
    refuses.
    """
    number = _KINDS["Float"][1]
    # The ranges first: they need neither the pipeline's declarations (kfp) nor pandas.
    for name, value in arguments.items():
        if name in RANGES and number(value) and (problem := RANGES[name].problem(value)):
            raise ParameterError(name, problem)
    declared = declared if declared is not None else declared_parameters()
    for name, value in arguments.items():
        what, ok = _KINDS.get(_kind_of(name, declared), ("", lambda _: True))
        if not ok(value):
            raise ParameterError(name, f"must be {what}, got {value!r}")
    values = {name: default for name, (_, default) in declared.items()} | dict(arguments)
    if "trigger_reason" in values:
        check_trigger_reason(values["trigger_reason"])
    from fraud_detection.training.dataset import SplitConfig, TimeWindows, parse_bound
    from fraud_detection.training.deploy import DeployError, resolve_target
    from fraud_detection.training.gate import GateConfig
    from fraud_detection.training.train import TrainParams

    data = [path for path in values["data"] if path.strip()]
    if not data and not values["kafka_topic"].strip():
        raise ParameterError(None, "no input: give data (files or globs) or kafka_topic")
    try:
        split = SplitConfig(
            kind=values["split"],
            test_size=values["test_size"],
            seed=values["seed"],
            train_start=values["train_start"],
            train_end=values["train_end"],
            test_start=values["test_start"],
            test_end=values["test_end"],
            train_days=values["train_days"],
            gap_days=values["gap_days"],
            test_days=values["test_days"],
            exclude_known_compromised=values["exclude_known_compromised"],
        )
        TrainParams(
            n_estimators=values["n_estimators"],
            max_depth=values["max_depth"],
            min_samples_leaf=values["min_samples_leaf"],
            max_features=values["max_features"],
            class_weight=values["class_weight"],
            max_train_rows=values["max_train_rows"],
            seed=values["seed"],
        )
        GateConfig(values["min_recall"], values["min_f1"], values["tolerance"])
        resolve_target(values["deploy_target"], environ={})
    except (ValueError, DeployError) as exc:
        raise _named(exc, declared) from exc
    models_uri = values.get("models_uri", "")
    if isinstance(models_uri, str) and models_uri.strip():
        from fraud_detection.training.storage import is_url

        if not is_url(models_uri):
            raise ParameterError(
                "models_uri",
                f"must be a URL such as s3://bucket/prefix (or empty: no model store), "
                f"got {models_uri!r}",
            )
    if all(split.bounds()):
        bounds = {}
        for name in ("train_start", "train_end", "test_start", "test_end"):
            try:
                bounds[name] = parse_bound(values[name], end=name.endswith("_end"))
            except ValueError as exc:
                raise ParameterError(name, str(exc)) from exc
        try:
            TimeWindows(**bounds)
        except ValueError as exc:
            raise ParameterError(None, str(exc)) from exc
    return values
