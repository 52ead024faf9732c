"""The drift result of a window: the ``fraud-monitoring`` contract, and how it is computed.

One result per model version per closed window (a window holds one version, except while a
canary or a switch interleaves two). Its JSON object, keys sorted (:meth:`WindowResult.to_json`):

=====================  ===================================================================
``kind``               ``"feature_drift"``
``schema_version``     1
``window_id``          ``<model_version>:<topic>:<partition>:<first_offset>-<last_offset>``:
                       stable, so a result written again after a crash has the same id
``model_version``      the version whose records and reference were compared
``topic``,             where the window is: its first record and its last valid record
``partition``,
``first_offset``,
``last_offset``
``closed_by``          ``"size"`` (the window filled) or ``"span"`` (its time span ran out)
``size``               this version's records in the window (the ones tested)
``window_records``     valid records in the window, all versions
``skipped``            records skipped inside the window, by reason
``start``, ``end``,    the earliest and latest transaction time of the tested records
``span_seconds``       (ISO-8601 UTC) and the seconds between them
``tested``             false when ``size`` is below the minimum (then no statistics)
``p_val``,             the significance level, the multiple-test correction, and the corrected
``correction``,        threshold each p-value is compared with (``p_val`` / tested columns;
``threshold``          null when not tested)
``features``           per tested feature: ``statistic`` (KS), ``p_value`` (with the column's
                       design effect), ``is_drift``, ``iid_p_value`` (alibi-detect's, records
                       taken as independent), ``design_effect`` (>= 1)
``score``              the same for ``fraud_probability``, or null when the reference has
                       no scores (``score_monitored`` false)
``excluded``           features not tested
``drifted``            the names of the columns below the threshold
``is_drift``           any column below the threshold
``reference``          ``rows`` compared with, ``total_rows`` of the version's reference,
                       ``matched_on``: the strata the rows were drawn by (empty: all rows),
                       ``calibration``: whether the reference's design effects were estimated
                       (``calibrated``, ``reason``, ``blocks``, ``block_rows``,
                       ``design_effects``), null when not tested
``detector``           ``"alibi-detect KSDrift"``
=====================  ===================================================================
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from fraud_detection.monitoring.detector import (
    CORRECTION,
    ColumnTest,
    DetectorConfig,
    detect_drift,
    window_seed,
)
from fraud_detection.monitoring.windows import ClosedWindow, VersionSlice
from fraud_detection.serving.mirror import iso_timestamp

KIND = "feature_drift"
SCHEMA_VERSION = 1
DETECTOR = "alibi-detect KSDrift"
#: Every key of a result's JSON object.
RESULT_FIELDS: tuple[str, ...] = (
    "closed_by",
    "correction",
    "detector",
    "drifted",
    "end",
    "excluded",
    "features",
    "first_offset",
    "is_drift",
    "kind",
    "last_offset",
    "model_version",
    "p_val",
    "partition",
    "reference",
    "schema_version",
    "score",
    "score_monitored",
    "size",
    "skipped",
    "span_seconds",
    "start",
    "tested",
    "threshold",
    "topic",
    "window_id",
    "window_records",
)


def window_id(model_version: str, topic: str, partition: int, first: int, last: int) -> str:
    """The stable id of one version's result of one window."""
    return f"{model_version}:{topic}:{partition}:{first}-{last}"


@dataclass(frozen=True)
class WindowResult:
    """One version's drift result of one window (see the module docstring for each field)."""

    window_id: str
    model_version: str
    topic: str
    partition: int
    first_offset: int
    last_offset: int
    closed_by: str
    size: int
    window_records: int
    skipped: Mapping[str, int]
    start: str
    end: str
    span_seconds: float
    tested: bool
    p_val: float
    threshold: float | None
    features: Mapping[str, Mapping[str, Any]]
    score: Mapping[str, Any] | None
    score_monitored: bool
    excluded: tuple[str, ...]
    drifted: tuple[str, ...]
    is_drift: bool
    reference: Mapping[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        """The result's kind: ``"feature_drift"``."""
        return KIND

    def to_dict(self) -> dict[str, Any]:
        """The result as the contract's JSON object."""
        return {
            "kind": KIND,
            "schema_version": SCHEMA_VERSION,
            "window_id": self.window_id,
            "model_version": self.model_version,
            "topic": self.topic,
            "partition": self.partition,
            "first_offset": self.first_offset,
            "last_offset": self.last_offset,
            "closed_by": self.closed_by,
            "size": self.size,
            "window_records": self.window_records,
            "skipped": dict(self.skipped),
            "start": self.start,
            "end": self.end,
            "span_seconds": self.span_seconds,
            "tested": self.tested,
            "p_val": self.p_val,
            "correction": CORRECTION,
            "threshold": self.threshold,
            "features": {name: dict(test) for name, test in self.features.items()},
            "score": dict(self.score) if self.score is not None else None,
            "score_monitored": self.score_monitored,
            "excluded": list(self.excluded),
            "drifted": list(self.drifted),
            "is_drift": self.is_drift,
            "reference": dict(self.reference),
            "detector": DETECTOR,
        }

    def to_json(self) -> bytes:
        """The JSON object, keys sorted: the same result always gives the same bytes."""
        return orjson.dumps(self.to_dict(), option=orjson.OPT_SORT_KEYS)


def _column(test: ColumnTest) -> dict[str, Any]:
    return {
        "statistic": test.statistic,
        "p_value": test.p_value,
        "is_drift": test.is_drift,
        "iid_p_value": test.iid_p_value,
        "design_effect": test.design_effect,
    }


def evaluate_window(window: ClosedWindow, config: DetectorConfig) -> list[WindowResult]:
    """Test every version's records of a closed window; one result per version."""
    return [_evaluate(window, part, config) for part in window.slices]


def _evaluate(window: ClosedWindow, part: VersionSlice, config: DetectorConfig) -> WindowResult:
    reference = part.reference
    identity = window_id(
        part.model_version, window.topic, window.partition, window.first_offset, window.last_offset
    )
    test = detect_drift(part, config, window_seed(config.seed, identity))
    start, end = int(part.times.min()), int(part.times.max())
    excluded = tuple(name for name in reference.feature_names if name in config.excluded)
    return WindowResult(
        window_id=identity,
        model_version=part.model_version,
        topic=window.topic,
        partition=window.partition,
        first_offset=window.first_offset,
        last_offset=window.last_offset,
        closed_by=window.closed_by,
        size=part.size,
        window_records=window.records,
        skipped=dict(window.skipped),
        start=iso_timestamp(start),
        end=iso_timestamp(end),
        span_seconds=(end - start) / 1e6,
        tested=test is not None,
        p_val=config.p_val,
        threshold=test.threshold if test is not None else None,
        features={t.name: _column(t) for t in test.features} if test is not None else {},
        score=_column(test.score) if test is not None and test.score is not None else None,
        score_monitored=reference.scores is not None,
        excluded=excluded,
        drifted=tuple(test.drifted) if test is not None else (),
        is_drift=test.is_drift if test is not None else False,
        reference={
            "rows": test.reference_rows if test is not None else 0,
            "total_rows": reference.rows,
            "matched_on": list(test.matched_on) if test is not None else [],
            "calibration": (
                test.calibration.describe()
                if test is not None and test.calibration is not None
                else None
            ),
        },
    )
