"""The processor's durable dedup: keys commit with the offsets, one TTL clock per partition."""

from __future__ import annotations

import random
import signal
import time
import uuid
from collections import Counter

import pytest

from eoscore.kafka import ExactlyOnceProcessor
from eoscore.kafka.dedup_changelog import DurableDedup
from eoscore.kafka.errors import KafkaProcessorError
from tests.fixtures.kafka import TopicFactory
from tests.kafka._util import (
    caught_up,
    f,
    make_transform,
    produce_inputs,
    read_committed,
    spawn_child,
    stop_child,
)

CONSUMER = {"session.timeout.ms": 6000, "heartbeat.interval.ms": 500}


def _with_repeats(n: int, rng: random.Random, first: int = 0) -> list[tuple[bytes, bytes]]:
    """Keys first..first+n, each once, then a repeat of about a third of all keys
    seen so far, spread far from their first occurrence."""
    items = [(b"k%d" % i, b"v%07d" % i) for i in range(first, first + n)]
    repeats = [(b"k%d" % i, b"v%07d" % i) for i in rng.sample(range(first + n), (first + n) // 3)]
    return items + repeats


def _distinct_outputs(outputs: list) -> tuple[Counter[bytes], set[bytes]]:
    got = Counter(value for _k, value, _h in outputs)
    return got, set(got)


class _Msg:
    def __init__(self, key: bytes, partition: int, ts_ms: int) -> None:
        self._key, self._p, self._ts = key, partition, ts_ms

    def key(self) -> bytes:
        return self._key

    def topic(self) -> str:
        return "t"

    def partition(self) -> int:
        return self._p

    def timestamp(self) -> tuple[int, int]:
        return (1, self._ts)


def test_each_partition_ages_its_keys_by_its_own_record_times() -> None:
    # Four partitions, one new key per record; partition p's time advances 10**p
    # times faster. A key lives at least ttl and at most ttl*G/(G-1) on its own
    # partition's clock (the Deduplicator's documented bound), whatever the others do.
    ttl, gens = 100.0, 4
    dedup = DurableDedup("unused", ttl_s=ttl)
    rng = random.Random(3)
    clocks = [0.0] * 4
    first_seen: dict[int, list[float]] = {p: [] for p in range(4)}
    for step in range(4000):
        p = rng.randrange(4)
        clocks[p] += 0.01 * 10**p
        key = b"p%d-%d" % (p, step)
        assert dedup.check([key], [_Msg(key, p, int(clocks[p] * 1000))]) == [True]
        first_seen[p].append(clocks[p])
    for p in range(4):
        now = clocks[p]
        at_least = sum(1 for t in first_seen[p] if t > now - ttl)
        at_most = sum(1 for t in first_seen[p] if t > now - ttl * gens / (gens - 1) - 1e-9)
        live = dedup.live_keys(("t", p))
        assert at_least <= live <= at_most, (p, live, at_least, at_most)
    # The slowest partition kept every key: its clock never reached the ttl.
    assert dedup.live_keys(("t", 0)) == len(first_seen[0])


def test_keys_survive_a_restart_and_repeats_are_dropped(
    kafka_bootstrap: str, kafka_topic: TopicFactory
) -> None:
    src, dst = kafka_topic(3), kafka_topic(3)
    prefix = f"dd-{uuid.uuid4().hex[:8]}"
    group = f"g-{uuid.uuid4().hex[:8]}"
    rng = random.Random(1)
    produce_inputs(kafka_bootstrap, src, _with_repeats(2000, rng))

    def run() -> ExactlyOnceProcessor:
        proc = ExactlyOnceProcessor(
            bootstrap_servers=kafka_bootstrap,
            group_id=group,
            topics=[src],
            transform=make_transform(dst),
            instance_id="dd",
            batch_size=300,
            dedup=DurableDedup(prefix),
            consumer_config=CONSUMER,
        )
        proc.run(until=lambda: caught_up(kafka_bootstrap, group, src))
        return proc

    first = run()
    assert first.metrics.duplicates_dropped > 0
    # Phase 2 repeats keys of phase 1 only: a fresh process must know them all.
    produce_inputs(kafka_bootstrap, src, [(b"k%d" % i, b"v%07d" % i) for i in range(0, 2000, 7)])
    second = run()
    assert second.metrics.duplicates_dropped == len(range(0, 2000, 7))
    got, distinct = _distinct_outputs(read_committed(kafka_bootstrap, dst))
    assert distinct == {f(b"v%07d" % i) for i in range(2000)}
    assert max(got.values()) == 1


@pytest.mark.soak  # hung once in CI (1 of 2 runs), not yet explained: see issue 14's note
def test_duplicates_straddling_sigkills_are_dropped(
    kafka_bootstrap: str, kafka_topic: TopicFactory
) -> None:
    src, dst = kafka_topic(3), kafka_topic(3)
    group = f"g-{uuid.uuid4().hex[:8]}"
    config = {
        "bootstrap": kafka_bootstrap,
        "group": group,
        "input": src,
        "output": dst,
        "instance": "dd-chaos",
        "static": True,
        "throttle_s": 0.01,
        "batch_size": 100,
        "dedup": f"dd-{uuid.uuid4().hex[:8]}",
    }
    rng = random.Random(7)
    plans = [
        "kafka.before_commit=kill@1",  # keys and offsets in the transaction, not committed
        "kafka.mid_produce=kill@3",
        "kafka.after_commit=kill@1",
        "",  # the parent's SIGKILL at a random moment
    ]
    total, kills = 0, 0
    for plan in plans:
        # Each round's input repeats keys of every earlier round: only a restored
        # index can drop them.
        produce_inputs(kafka_bootstrap, src, _with_repeats(600, rng, first=total))
        total += 600
        child = spawn_child(config, plan)
        try:
            child.wait(timeout=rng.uniform(2.0, 4.0) if not plan else 60)
        except Exception:
            child.send_signal(signal.SIGKILL)
            child.wait(30)
        kills += child.returncode == -signal.SIGKILL
    # The last run has work too, so "caught up" means this run committed it.
    produce_inputs(kafka_bootstrap, src, _with_repeats(300, rng, first=total))
    total += 300
    child = spawn_child(config)
    deadline = time.monotonic() + 120
    while not caught_up(kafka_bootstrap, group, src):
        if child.poll() is not None or time.monotonic() > deadline:
            if child.poll() is None:
                child.send_signal(signal.SIGUSR1)  # the child dumps its stacks
                time.sleep(1)
            code, _out, err = stop_child(child)
            raise AssertionError(f"the last run never caught up (exit {code}): {err[-4000:]}")
        time.sleep(0.5)
    code, _out, err = stop_child(child)
    assert code == 0, err[-2000:]
    assert kills == len(plans), kills
    got, distinct = _distinct_outputs(read_committed(kafka_bootstrap, dst))
    assert distinct == {f(b"v%07d" % i) for i in range(total)}
    dups = {v: n for v, n in got.items() if n > 1}
    assert not dups, f"{len(dups)} duplicates passed, e.g. {list(dups.items())[:3]}"


def test_a_corrupt_changelog_record_is_refused(
    kafka_bootstrap: str, kafka_topic: TopicFactory
) -> None:
    src = kafka_topic(1)
    prefix = f"dd-{uuid.uuid4().hex[:8]}"
    dedup = DurableDedup(prefix)
    dedup.bind(kafka_bootstrap)
    dedup.ensure_topics([(src, 1)])
    produce_inputs(kafka_bootstrap, dedup.changelog_topic(src), [(b"bkey", b"short")])
    with pytest.raises(KafkaProcessorError, match="not 8"):
        dedup.restore([(src, 0)])
    dedup.close()
