"""Kafka streaming: the local broker and small client helpers.

:mod:`fraud_detection.streaming.kafka` holds the topic names, client factories and bounded reads;
:mod:`fraud_detection.streaming.broker` starts and stops the local tansu broker. Neither imports
kafka-python at import time.
"""

from fraud_detection.streaming.broker import (
    BrokerBinaryNotFoundError,
    BrokerError,
    BrokerStartError,
    LocalBroker,
)
from fraud_detection.streaming.kafka import (
    ENV_BOOTSTRAP,
    FAST_GROUP_SETTINGS,
    BrokerUnavailableError,
    Topics,
    UnknownTopicError,
    create_topics,
    make_consumer,
    make_producer,
    read_topic,
    resolve_bootstrap,
    wait_for_broker,
)

__all__ = [
    "ENV_BOOTSTRAP",
    "FAST_GROUP_SETTINGS",
    "BrokerBinaryNotFoundError",
    "BrokerError",
    "BrokerStartError",
    "BrokerUnavailableError",
    "LocalBroker",
    "Topics",
    "UnknownTopicError",
    "create_topics",
    "make_consumer",
    "make_producer",
    "read_topic",
    "resolve_bootstrap",
    "wait_for_broker",
]
