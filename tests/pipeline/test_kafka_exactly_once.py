"""Exactly-once on the real broker: KafkaSource -> dedup -> window -> KafkaSink,
SIGKILLed at the commit steps (the Kafka commit is the decision) and at random
moments; a read_committed consumer sees every window exactly once."""

from __future__ import annotations

import json
import random
import signal
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from tests.pipeline.kafka_job import WINDOW
from tests.pipeline.test_exactly_once import KILLED, expected, run_module

EVENTS = 30_000
KEYS = 20

FAILPOINTS = [
    ("runtime.after_batch", 10),
    ("runtime.after_pre_commit", 1),
    ("runtime.after_pending_write", 1),
    ("sink.kafka.before_commit", 1),  # offsets sent, transaction not committed
    ("runtime.after_decision", 1),
    ("runtime.after_complete", 1),
    ("runtime.mid_restore", 1),
]


def produce_input(bootstrap: str, topic: str, partitions: int) -> list[dict[str, int]]:
    rng = random.Random(5)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
    events = []
    pending: list[list[tuple[int, bytes]]] = [[] for _ in range(partitions)]
    sent = [0] * partitions
    for i in range(EVENTS):
        e = {"id": i, "k": rng.randrange(KEYS), "t": i // 4 + rng.randint(0, 40), "v": i % 89}
        events.append(e)
        p = i % partitions
        data = json.dumps(e).encode()
        producer.produce(topic, data, partition=p)
        sent[p] += 1
        if rng.random() < 0.05:
            pending[p].append((sent[p] + rng.randint(1, 30), data))
        while pending[p] and pending[p][0][0] <= sent[p]:
            producer.produce(topic, pending[p].pop(0)[1], partition=p)
            sent[p] += 1
        if i % 5000 == 0:
            producer.poll(0)
    for p in range(partitions):
        for _, data in pending[p]:
            producer.produce(topic, data, partition=p)
    assert producer.flush(30) == 0
    return events


def read_output(bootstrap: str, topic: str) -> list[Any]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"verify-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,  # every read starts at the beginning
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
        }
    )
    consumer.assign([TopicPartition(topic, 0)])
    out = []
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    return out
                raise AssertionError(msg.error())
            out.append(json.loads(msg.value()))
    finally:
        consumer.close()
    raise AssertionError(f"{topic}: no end of partition within 60 s")


@pytest.mark.slow
def test_kafka_to_kafka_exactly_once_under_sigkill(
    kafka_bootstrap: str, kafka_topic: Any, tmp_path: Path
) -> None:
    in_topic = kafka_topic(2)
    out_topic = kafka_topic(1)
    events = produce_input(kafka_bootstrap, in_topic, 2)
    args = [kafka_bootstrap, in_topic, out_topic, str(tmp_path / "state")]
    rng = random.Random(2)
    kills = 0
    fired = set()
    for name, at in FAILPOINTS:
        rc = run_module("tests.pipeline.kafka_job", args, f"{name}=kill@{at}", kill_after=90)
        if rc == -signal.SIGKILL:
            kills += 1
            fired.add(name)
    for _ in range(4):
        rc = run_module("tests.pipeline.kafka_job", args, None, kill_after=rng.uniform(0.8, 2.5))
        kills += rc in (-signal.SIGKILL, KILLED)
    assert run_module("tests.pipeline.kafka_job", args, None, kill_after=120) == 0
    assert fired == {name for name, _ in FAILPOINTS}
    rows = read_output(kafka_bootstrap, out_topic)
    counts = Counter((r[0], r[1]) for r in rows)
    assert not [k for k, c in counts.items() if c > 1], "a window was committed twice"
    got = {(r[0], r[1]): r[3] for r in rows}
    want = expected(events, WINDOW)
    assert set(got) == set(want), (len(got), len(want))
    assert got == want
    assert kills >= len(FAILPOINTS)
