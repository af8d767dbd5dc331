"""Two workers in one consumer group, one SIGKILLed mid-run: the survivor takes
its partitions (and their keyed state, from the shared checkpoint storage) and
the committed output is exact: every window once, with the batch values."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from tests.pipeline.repartition_job import REP_PARTITIONS
from tests.pipeline.test_exactly_once import expected
from tests.runtime.group_job import WINDOW

ROOT = Path(__file__).resolve().parents[2]
EVENTS = 24_000
KEYS = 40
PARTITIONS = 4


def make_events() -> list[dict[str, int]]:
    rng = random.Random(9)
    return [
        {"id": i, "k": rng.randrange(KEYS), "t": i // 4 + rng.randint(0, 40), "v": i % 71}
        for i in range(EVENTS)
    ]


def produce(
    bootstrap: str, topic: str, events: list[dict[str, int]], flush: bool, keyed: bool
) -> None:
    rng = random.Random(len(events))
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
    for e in events:
        data = json.dumps(e).encode()
        # Keyed input: a key's state lives with one partition. Otherwise a key's
        # records are everywhere and the job repartitions by key.
        p = e["k"] % PARTITIONS if keyed else rng.randrange(PARTITIONS)
        producer.produce(topic, data, partition=p)
        if rng.random() < 0.05:
            producer.produce(topic, data, partition=p)  # a duplicate
    if flush:
        for p in range(PARTITIONS):
            producer.produce(topic, json.dumps({"flush": 1, "t": 10**9}).encode(), partition=p)
    assert producer.flush(30) == 0


class Output:
    def __init__(self, bootstrap: str, topic: str) -> None:
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"verify-{topic}",
                "isolation.level": "read_committed",
                "auto.offset.reset": "earliest",
            }
        )
        self.consumer.assign([TopicPartition(topic, 0, 0)])
        self.rows: list[Any] = []

    def poll(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            msg = self.consumer.poll(0.2)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    continue
                raise AssertionError(msg.error())
            self.rows.append(json.loads(msg.value()))


def owned(log: Path) -> list[str] | None:
    """The tasks a worker owns after its last assignment change (from its log)."""
    lines = [line for line in log.read_text().splitlines() if ": owns [" in line]
    if not lines:
        return None
    inside = lines[-1].split(": owns [", 1)[1].rstrip("]")
    return inside.split(", ") if inside else []


def owns(log: Path) -> bool:
    """True when the worker's last assignment (in its log) is not empty."""
    return bool(owned(log))


def start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.runtime.group_job", *args],
        cwd=ROOT,
        env=dict(os.environ),
        stdout=subprocess.DEVNULL,
        stderr=open(log, "wb"),
    )


@pytest.mark.slow
@pytest.mark.parametrize("keyed", [True, False], ids=["keyed-input", "repartitioned"])
def test_survivor_takes_over_a_killed_workers_partitions(
    kafka_bootstrap: str, kafka_topic: Any, tmp_path: Path, keyed: bool
) -> None:
    in_topic, out_topic = kafka_topic(PARTITIONS), kafka_topic(1)
    events = make_events()
    half = len(events) // 2
    produce(kafka_bootstrap, in_topic, events[:half], flush=False, keyed=keyed)
    args = [kafka_bootstrap, in_topic, out_topic, str(tmp_path / "state")]
    tasks = [f"{in_topic}/{p}" for p in range(PARTITIONS)]
    if not keyed:
        rep_topic = kafka_topic(REP_PARTITIONS, prefix="rep")
        args.append(rep_topic)
        tasks = sorted([*tasks, *(f"{rep_topic}/{q}" for q in range(REP_PARTITIONS))])
    a = start(args, tmp_path / "a.log")
    b = start(args, tmp_path / "b.log")
    out = Output(kafka_bootstrap, out_topic)
    want = expected(events, WINDOW)
    try:
        # Kill A only once it owns partitions and output flows: B may have taken
        # all of them before A joined, and the rebalance that hands A its share
        # can come after a quarter of the output (no race: wait for both).
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if len(out.rows) >= len(want) // 4 and owns(tmp_path / "a.log"):
                break
            out.poll(0.5)
            assert a.poll() is None, (tmp_path / "a.log").read_text()[-3000:]
        assert len(out.rows) >= len(want) // 4, "no progress before the kill"
        assert owns(tmp_path / "a.log"), "A owned nothing"
        assert a.poll() is None, (tmp_path / "a.log").read_text()[-3000:]  # A alive, working
        a.send_signal(signal.SIGKILL)
        a.wait()
        # The rest of the input arrives after the kill: B must process A's partitions.
        produce(kafka_bootstrap, in_topic, events[half:], flush=True, keyed=keyed)
        deadline = time.monotonic() + 120
        while len({(r[0], r[1]) for r in out.rows}) < len(want) and time.monotonic() < deadline:
            out.poll(0.5)
            assert b.poll() is None, (tmp_path / "b.log").read_text()[-3000:]
        out.poll(2.0)  # anything committed twice would show up now
        log_b = (tmp_path / "b.log").read_text()
        assert b.poll() is None, log_b[-3000:]
        took = owned(tmp_path / "b.log")
        assert took == tasks, took  # A's too, now
    finally:
        for proc in (a, b):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        out.consumer.close()
    counts = Counter((r[0], r[1]) for r in out.rows)
    assert not [k for k, c in counts.items() if c > 1], "a window was committed twice"
    got = {(r[0], r[1]): r[3] for r in out.rows}
    assert set(got) == set(want), (len(got), len(want))
    assert got == want
