"""Shared pieces of the processor tests: inputs, the verifier, child processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from eoscore.kafka import OutputRecord

TIMEOUT = 60.0
CHILD = Path(__file__).with_name("_child.py")
REPO = Path(__file__).resolve().parents[2]


def f(value: bytes) -> bytes:
    """The transform under test: deterministic, so outputs are checkable."""
    return b"out:" + value[::-1]


def make_transform(out_topic: str, headers: list[tuple[str, bytes]] | None = None):
    def transform(batch: list) -> list[OutputRecord]:
        return [OutputRecord(out_topic, f(m.value()), m.key(), headers) for m in batch]

    return transform


def produce_inputs(bootstrap: str, topic: str, items: Iterable[tuple[bytes, bytes]]) -> int:
    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 5, "enable.idempotence": True}
    )
    n = 0
    for key, value in items:
        while True:
            try:
                producer.produce(topic, value, key)
                break
            except BufferError:
                producer.poll(0.1)
        n += 1
    assert producer.flush(TIMEOUT) == 0
    return n


def inputs(start: int, stop: int) -> list[tuple[bytes, bytes]]:
    return [(b"k%d" % i, b"v%07d" % i) for i in range(start, stop)]


def read_committed(
    bootstrap: str, topic: str, *, with_headers: bool = False
) -> list[tuple[bytes | None, bytes, list | None]]:
    """Every record of ``topic`` a read_committed reader sees, up to the end."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    parts = sorted(admin.list_topics(topic=topic, timeout=TIMEOUT).topics[topic].partitions)
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"eoscore-verify-{uuid.uuid4().hex[:8]}",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "fetch.wait.max.ms": 50,
        }
    )
    out: list[tuple[bytes | None, bytes, list | None]] = []
    try:
        consumer.assign([TopicPartition(topic, p, 0) for p in parts])
        at_eof: set[int] = set()
        deadline = time.monotonic() + TIMEOUT
        while len(at_eof) < len(parts):
            assert time.monotonic() < deadline, f"verifier: no EOF on {topic} after {TIMEOUT}s"
            for msg in consumer.consume(10000, 0.5):
                err = msg.error()
                if err is not None:
                    assert err.code() == KafkaError._PARTITION_EOF, err
                    at_eof.add(msg.partition())
                    continue
                at_eof.discard(msg.partition())
                out.append((msg.key(), msg.value(), msg.headers() if with_headers else None))
    finally:
        consumer.close()
    return out


def assert_exactly_once(outputs: list, expected_values: Iterable[bytes]) -> None:
    got = Counter(value for _key, value, _h in outputs)
    want = Counter(expected_values)
    dups = {v: n for v, n in got.items() if n > 1}
    missing = [v for v in want if v not in got]
    extra = [v for v in got if v not in want]
    assert not dups, f"{len(dups)} duplicated outputs, e.g. {list(dups.items())[:5]}"
    assert not missing, f"{len(missing)} missing outputs, e.g. {missing[:5]}"
    assert not extra, f"{len(extra)} unexpected outputs, e.g. {extra[:5]}"
    assert got == want


def caught_up(bootstrap: str, group: str, topic: str) -> bool:
    """True when the group's committed offsets reached the end of ``topic``."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    parts = sorted(admin.list_topics(topic=topic, timeout=TIMEOUT).topics[topic].partitions)
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False}
    )
    try:
        committed = consumer.committed([TopicPartition(topic, p) for p in parts], TIMEOUT)
        for tp in committed:
            low, high = consumer.get_watermark_offsets(tp, TIMEOUT)
            if high == low:  # an empty partition (no committed offset ever) has no work
                continue
            if tp.offset < high:
                return False
        return True
    finally:
        consumer.close()


def wait_caught_up(bootstrap: str, group: str, topic: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not caught_up(bootstrap, group, topic):
        assert time.monotonic() < deadline, f"group {group} not caught up on {topic}"
        time.sleep(0.5)


def spawn_child(config: dict, failpoints: str = "", seed: int | None = None) -> subprocess.Popen:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    env["EOSCORE_FAILPOINTS"] = failpoints
    if seed is not None:
        env["EOSCORE_FAILPOINTS_SEED"] = str(seed)
    return subprocess.Popen(
        [sys.executable, str(CHILD), json.dumps(config)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def stop_child(proc: subprocess.Popen, timeout: float = 60.0) -> tuple[int, str, str]:
    """SIGTERM (clean stop: commit, leave group) and collect the outcome."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def process_state(pid: int) -> str:
    """One-letter state from /proc (``T`` when stopped)."""
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().rsplit(")", 1)[1].split()[0]


def wait_line(proc: subprocess.Popen, expected: str, timeout: float) -> bool:
    """Read ``proc``'s stdout until a line equals ``expected``; False on exit/timeout."""
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not sel.select(max(0.0, deadline - time.monotonic())):
                continue
            line = proc.stdout.readline()
            if not line:
                return False
            if line.strip() == expected:
                return True
        return False
    finally:
        sel.close()
