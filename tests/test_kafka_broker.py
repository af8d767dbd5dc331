"""The real broker filters aborted transactions; librdkafka's mock cluster does not.

This is the ground every exactly-once test stands on: a ``read_committed``
consumer sees exactly the committed records, a ``read_uncommitted`` one sees the
aborted ones too.
"""

from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from tests.fixtures.kafka import TopicFactory

pytestmark = pytest.mark.kafka

TIMEOUT = 30.0


def _produce_in_transaction(producer: Producer, topic: str, values: list[str], *, commit: bool):
    producer.begin_transaction()
    for v in values:
        producer.produce(topic, key=v.encode(), value=v.encode(), partition=0)
    # Flush before aborting: abort_transaction() purges records still queued in
    # the client, and we want the aborted records to reach the log.
    assert producer.flush(TIMEOUT) == 0
    if commit:
        producer.commit_transaction(TIMEOUT)
    else:
        producer.abort_transaction(TIMEOUT)


def _read_all(bootstrap: str, topic: str, isolation: str) -> list[tuple[int, str]]:
    """(offset, value) of every record partition 0 delivers, up to its end."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"eoscore-test-{uuid.uuid4().hex[:8]}",
            "isolation.level": isolation,
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "fetch.wait.max.ms": 50,  # the EOF arrives with an empty fetch
        }
    )
    try:
        # Offset 0, not OFFSET_BEGINNING: the latter costs librdkafka an offset
        # query that waits ~0.5 s for the partition leader on a new client.
        consumer.assign([TopicPartition(topic, 0, 0)])
        seen: list[tuple[int, str]] = []
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error() is not None:
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    return seen
                raise AssertionError(f"consumer error: {msg.error()}")
            seen.append((msg.offset(), msg.value().decode()))
        raise AssertionError(f"{isolation}: no end of partition after {TIMEOUT}s; saw {seen}")
    finally:
        consumer.close()


def test_read_committed_skips_aborted_transaction(
    kafka_bootstrap: str, kafka_topic: TopicFactory
) -> None:
    topic = kafka_topic(1)
    producer = Producer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "transactional.id": f"eoscore-test-{uuid.uuid4().hex}",
            "linger.ms": 0,
        }
    )
    producer.init_transactions(TIMEOUT)
    _produce_in_transaction(producer, topic, ["c0", "c1", "c2"], commit=True)
    _produce_in_transaction(producer, topic, ["a0", "a1"], commit=False)
    _produce_in_transaction(producer, topic, ["c3"], commit=True)

    committed = _read_all(kafka_bootstrap, topic, "read_committed")
    uncommitted = _read_all(kafka_bootstrap, topic, "read_uncommitted")

    # Each transaction ends with a control record (commit/abort marker) that
    # takes an offset but is never delivered: hence the gaps at 3, 6 and 8.
    assert uncommitted == [(0, "c0"), (1, "c1"), (2, "c2"), (4, "a0"), (5, "a1"), (7, "c3")]
    assert committed == [(0, "c0"), (1, "c1"), (2, "c2"), (7, "c3")]


def test_topic_factory_creates_partitions(kafka_admin, kafka_topic: TopicFactory) -> None:
    topic = kafka_topic(3, config={"retention.ms": "600000"})
    md = kafka_admin.list_topics(topic=topic, timeout=TIMEOUT).topics[topic]
    assert sorted(md.partitions) == [0, 1, 2]
    assert all(p.leader == 1 for p in md.partitions.values())
    assert kafka_topic(prefix="explicit").startswith("eoscore-explicit-")
