"""One partition's records in, closed windows out: reading, skipping and windowing together.

:class:`PartitionMonitor` is what the Kafka shell calls for every record of a partition, in
offset order. It turns the record into an observation (:func:`~fraud_detection.monitoring.records.
parse_event`, the version's reference, the feature vector) or counts it as skipped under its
reason, and feeds the partition's windows. No Kafka client here: a record is its offset, headers
and value, so everything the monitor decides about records is testable without a broker.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Iterable

from fraud_detection.monitoring.records import (
    MODEL_VERSION_FIELD,
    SKIP_DUPLICATE,
    SKIP_UNKNOWN_MODEL_VERSION,
    UnusableRecordError,
    feature_vector,
    parse_event,
)
from fraud_detection.monitoring.reference import ReferenceCache, UnknownVersionError
from fraud_detection.monitoring.windows import (
    ClosedWindow,
    Observation,
    PartitionWindows,
    WindowConfig,
)

log = logging.getLogger(__name__)


class PartitionMonitor:
    """Reads one partition's records into windows; counts and logs the skipped ones.

    Args:
        topic: the topic read.
        partition: the partition.
        references: the drift references by model version.
        config: how windows are cut.
        on_skip: called with the reason of every skipped record (e.g. a metrics counter).
    """

    def __init__(
        self,
        topic: str,
        partition: int,
        references: ReferenceCache,
        config: WindowConfig | None = None,
        on_skip: Callable[[str], None] | None = None,
    ) -> None:
        self.topic = topic
        self.partition = partition
        self.references = references
        self.windows = PartitionWindows(topic, partition, config)
        self.skipped: collections.Counter[str] = collections.Counter()
        self._on_skip = on_skip

    @property
    def commit_offset(self) -> int | None:
        """The offset that is safe to commit once every closed window was written."""
        return self.windows.commit_offset

    @property
    def next_offset(self) -> int | None:
        """The offset after the last record processed."""
        return self.windows.next_offset

    def process(
        self, offset: int, headers: Iterable[tuple[str, bytes]] | None, value: bytes | None
    ) -> list[ClosedWindow]:
        """Process the record at ``offset``; the windows it closed (usually none)."""
        try:
            observation = self._observe(offset, headers, value)
        except UnusableRecordError as skipped:
            self._skip(offset, skipped)
            return []
        return self.windows.add(observation)

    def _observe(
        self, offset: int, headers: Iterable[tuple[str, bytes]] | None, value: bytes | None
    ) -> Observation:
        event = parse_event(headers, value)
        if self.windows.contains(event.event_id):
            raise UnusableRecordError(
                SKIP_DUPLICATE, "ce_id", f"{event.event_id} is already in the window"
            )
        try:
            reference = self.references.get(event.model_version)
        except UnknownVersionError as exc:
            raise UnusableRecordError(
                SKIP_UNKNOWN_MODEL_VERSION, MODEL_VERSION_FIELD, str(exc)
            ) from None
        values = feature_vector(event.features, reference.feature_names)
        return Observation(
            offset, event.event_id, event.time_micros, reference, values, event.fraud_probability
        )

    def _skip(self, offset: int, skipped: UnusableRecordError) -> None:
        self.windows.skip(offset, skipped.reason)
        first = not self.skipped[skipped.reason]
        self.skipped[skipped.reason] += 1
        if self._on_skip is not None:
            self._on_skip(skipped.reason)
        log.log(
            logging.WARNING if first else logging.DEBUG,
            "skipped %s partition %d offset %d (%s): %s%s",
            self.topic,
            self.partition,
            offset,
            skipped.reason,
            skipped,
            "; further records skipped for this reason are counted, not logged" if first else "",
        )
