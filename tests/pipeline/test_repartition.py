"""Repartitioning through a Kafka topic inside the transaction (two stages).

The input puts the records of a key on every partition, so the keyed window
only works after stage 1 re-keys it through the internal topic. On the real
broker: the topic holds each input record exactly once, each key in one
partition; the windowed output equals the batch computation, also when the
job is SIGKILLed at the commit steps and at random moments."""

from __future__ import annotations

import json
import random
import signal
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest
import xxhash
from confluent_kafka import Consumer, KafkaError, TopicPartition

from eoscore.errors import EosError
from eoscore.pipeline.eventtime import BEFORE_TIME, END_OF_TIME
from eoscore.pipeline.operators import Node, RuntimeContext
from eoscore.pipeline.repartition import (
    MARK_HEADER,
    Repartition,
    Routed,
    RoutedNode,
    _pack_mark,
    _unpack_mark,
    key_bytes,
)
from tests.pipeline.repartition_job import REP_PARTITIONS, WINDOW
from tests.pipeline.test_exactly_once import KILLED, expected, run_module
from tests.pipeline.test_kafka_exactly_once import produce_input, read_output

# ---- without a broker -------------------------------------------------------------


def test_key_bytes_are_stable_and_partitioning_is_xxh3() -> None:
    assert key_bytes(42) == b"42"
    assert key_bytes("kä") == "kä".encode()
    assert key_bytes(b"\x00") == b"\x00"
    assert key_bytes(True) == b"true"
    assert key_bytes(("a", 1)) == b'["a",1]'
    assert key_bytes({"b": 1, "a": 2}) == b'{"a":2,"b":1}'
    rep = Repartition("127.0.0.1:1", "t", partitions=7, upstream_topic="in", key=lambda e: e)
    for k in [0, 1, 17, "customer-9", b"raw", ("x", 2)]:
        assert rep.partition_of(k) == xxhash.xxh3_64_intdigest(key_bytes(k)) % 7
    spread = Counter(rep.partition_of(k) for k in range(7000))
    assert set(spread) == set(range(7)) and min(spread.values()) > 850


def test_markers_round_trip_and_reject_garbage() -> None:
    for mark, inputs in [(12_500_000, (0,)), (END_OF_TIME, (0, 1, 2, 3)), (-3, ()),
                         (BEFORE_TIME, (5,))]:
        assert _unpack_mark(_pack_mark(mark, inputs)) == (mark, inputs)
    for bad in [b"", b"\x00" * 7, b"\x00" * 10]:
        with pytest.raises(EosError, match="marker"):
            _unpack_mark(bad)
    assert MARK_HEADER == "eoscore-wm"


class _Collect(Node):
    def __init__(self) -> None:
        super().__init__("collect")
        self.got: list[tuple[Any, float]] = []

    def push(self, values: list[Any], times: Any, port: int = 0) -> None:
        self.got.extend(zip(values, times, strict=True))


def test_routed_node_watermark_is_the_slowest_inputs_marker() -> None:
    rep = Repartition("127.0.0.1:1", "t", partitions=2, upstream_topic="in", key=lambda e: e)
    rep._upstreams = 3  # three input partitions feed stage 1
    seen: list[tuple[int, float]] = []
    ctx = RuntimeContext()
    ctx.channel = 5
    ctx.observe = lambda channel, mark: seen.append((channel, mark))
    node = RoutedNode("source-rep", rep)
    node.ctx = ctx
    out = _Collect()
    node.connect_to(out)
    node.push([Routed(1, b'{"v":1}', 10), Routed(1, None, None, 50, (0, 2))], None)
    assert out.got == [({"v": 1}, 10)]
    assert seen == [(5, BEFORE_TIME)]  # input 1 has not spoken: nothing may fire yet
    node.push([Routed(1, None, None, 30, (1,)), Routed(1, b'{"v":2}', 31)], None)
    assert seen[-1] == (5, 30)
    node.push([Routed(1, None, None, 20, (1,))], None)  # an older marker never lowers it
    assert seen[-1] == (5, 30)
    # The per-input marks are state: a restored node continues from them.
    again = RoutedNode("source-rep", rep)
    again.state = node.state
    again.after_restore()
    assert again.marks == {1: [50, 30, 50]}


# ---- on the real broker -------------------------------------------------------------

INPUT_PARTITIONS = 3
FAILPOINTS = [
    ("runtime.after_batch", 25),
    ("runtime.after_pre_commit", 3),
    ("sink.kafka.before_commit", 2),  # offsets and markers sent, transaction open
    ("runtime.after_decision", 3),
    ("runtime.mid_restore", 1),
]


def read_topic(bootstrap: str, topic: str, partitions: int) -> dict[int, list[Any]]:
    """Committed records of every partition: ``(key, value, headers)``."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"verify-{topic}",
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
        }
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    out: dict[int, list[Any]] = defaultdict(list)
    ended: set[int] = set()
    deadline = time.monotonic() + 60
    while len(ended) < partitions and time.monotonic() < deadline:
        msg = consumer.poll(1.0)
        if msg is None:
            continue
        if msg.error():
            if msg.error().code() == KafkaError._PARTITION_EOF:
                ended.add(msg.partition())
                continue
            raise AssertionError(msg.error())
        out[msg.partition()].append((msg.key(), msg.value(), dict(msg.headers() or ())))
    consumer.close()
    assert len(ended) == partitions, "timed out reading the topic"
    return out


def check_output(bootstrap: str, out_topic: str, events: list[dict[str, int]]) -> None:
    rows = read_output(bootstrap, out_topic)
    counts = Counter((r[0], r[1]) for r in rows)
    assert not [k for k, c in counts.items() if c > 1], "a window was committed twice"
    got = {(r[0], r[1]): r[3] for r in rows}
    want = expected(events, WINDOW)
    assert set(got) == set(want), (len(got), len(want))
    assert got == want


@pytest.mark.slow
def test_repartitioned_window_is_exact_and_topic_holds_each_record_once(
    kafka_bootstrap: str, kafka_topic: Any, tmp_path: Path
) -> None:
    in_topic, out_topic = kafka_topic(INPUT_PARTITIONS), kafka_topic(1)
    rep_topic = kafka_topic(REP_PARTITIONS, prefix="rep")
    events = produce_input(kafka_bootstrap, in_topic, INPUT_PARTITIONS)
    keys_per_input = {p: {e["k"] for e in events[p::INPUT_PARTITIONS]} for p in range(3)}
    assert all(len(ks) > 10 for ks in keys_per_input.values())  # keys really are spread
    args = [kafka_bootstrap, in_topic, out_topic, rep_topic, str(tmp_path / "state")]
    assert run_module("tests.pipeline.repartition_job", args, None, kill_after=120) == 0
    check_output(kafka_bootstrap, out_topic, events)

    topic = read_topic(kafka_bootstrap, rep_topic, REP_PARTITIONS)
    where: dict[int, set[int]] = defaultdict(set)
    ids: Counter[int] = Counter()
    ends = Counter()
    for part, records in topic.items():
        for key, value, headers in records:
            if MARK_HEADER in headers:
                mark, inputs = _unpack_mark(headers[MARK_HEADER])
                if mark == END_OF_TIME:
                    ends[part] += 1
                    assert inputs == tuple(range(INPUT_PARTITIONS))
                continue
            e = json.loads(value)
            assert key == str(e["k"]).encode()
            where[e["k"]].add(part)
            ids[e["id"]] += 1
    assert all(len(parts) == 1 for parts in where.values()), "a key in two partitions"
    assert len(ids) == len(events)
    # Each input record once: the input's own duplicates (~5%) and nothing more.
    assert sum(ids.values()) == sum(1 for _ in _input_records(kafka_bootstrap, in_topic))
    assert set(ends) == set(range(REP_PARTITIONS))


def _input_records(bootstrap: str, topic: str) -> list[Any]:
    return [r for rs in read_topic(bootstrap, topic, INPUT_PARTITIONS).values() for r in rs]


@pytest.mark.slow
def test_repartitioned_window_is_exact_under_sigkill(
    kafka_bootstrap: str, kafka_topic: Any, tmp_path: Path
) -> None:
    in_topic, out_topic = kafka_topic(INPUT_PARTITIONS), kafka_topic(1)
    rep_topic = kafka_topic(REP_PARTITIONS, prefix="rep")
    events = produce_input(kafka_bootstrap, in_topic, INPUT_PARTITIONS)
    args = [kafka_bootstrap, in_topic, out_topic, rep_topic, str(tmp_path / "state")]
    rng = random.Random(4)
    kills = 0
    fired = set()
    for name, at in FAILPOINTS:
        rc = run_module("tests.pipeline.repartition_job", args, f"{name}=kill@{at}", 90)
        if rc == -signal.SIGKILL:
            kills += 1
            fired.add(name)
    for _ in range(4):
        rc = run_module("tests.pipeline.repartition_job", args, None, rng.uniform(1.0, 3.0))
        kills += rc in (-signal.SIGKILL, KILLED)
    assert run_module("tests.pipeline.repartition_job", args, None, kill_after=120) == 0
    assert fired == {name for name, _ in FAILPOINTS}
    assert kills >= len(FAILPOINTS)
    check_output(kafka_bootstrap, out_topic, events)
