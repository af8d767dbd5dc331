"""ExactlyOnceProcessor on the real broker: exactness, dedup, rebalance, timeout."""

from __future__ import annotations

import threading
import time
import uuid

import numpy as np
import pytest

from eoscore.dedup import Deduplicator
from eoscore.kafka import ExactlyOnceProcessor, OutputRecord, TransactionTimeoutError
from tests.fixtures.kafka import TopicFactory
from tests.kafka._util import (
    assert_exactly_once,
    caught_up,
    f,
    inputs,
    make_transform,
    produce_inputs,
    read_committed,
    wait_caught_up,
)

CONSUMER = {"session.timeout.ms": 6000, "heartbeat.interval.ms": 500}


def _until_caught_up(bootstrap: str, group: str, topic: str, every_s: float = 0.5):
    last = [0.0]

    def until() -> bool:
        now = time.monotonic()
        if now - last[0] < every_s:
            return False
        last[0] = now
        return caught_up(bootstrap, group, topic)

    return until


def test_output_is_f_of_input_exactly_100k(kafka_bootstrap: str, kafka_topic: TopicFactory):
    src, dst = kafka_topic(6), kafka_topic(6)
    n = produce_inputs(kafka_bootstrap, src, inputs(0, 100_000))
    group = f"g-{uuid.uuid4().hex[:8]}"
    proc = ExactlyOnceProcessor(
        bootstrap_servers=kafka_bootstrap,
        group_id=group,
        topics=[src],
        transform=make_transform(dst),
        instance_id="solo",
        consumer_config=CONSUMER,
    )
    proc.run(until=_until_caught_up(kafka_bootstrap, group, src))
    outputs = read_committed(kafka_bootstrap, dst)
    assert len(outputs) == n
    assert_exactly_once(outputs, (f(v) for _k, v in inputs(0, 100_000)))
    # Keys pass through, so each output sits in the partition of its key.
    assert {k for k, _v, _h in outputs} == {k for k, _v in inputs(0, 100_000)}
    snap = proc.metrics.snapshot()
    assert snap.records_in == n and snap.records_out == n
    assert snap.txns_committed >= 1 and snap.txns_aborted == 0
    assert snap.commit_latency_p99_ms >= snap.commit_latency_p50_ms > 0
    # Commits overlapped the next batches, and those outputs still came exactly once.
    assert proc.metrics.batches_during_commit > 0


class SetDedup:
    """Model deduplicator: exact, unbounded."""

    def __init__(self) -> None:
        self.seen: set[bytes | str | int] = set()

    def check_and_add(self, keys: list[bytes | str | int]) -> np.ndarray:
        out = np.empty(len(keys), dtype=bool)
        for i, k in enumerate(keys):
            out[i] = k not in self.seen
            self.seen.add(k)
        return out


def _dedups() -> list:
    return [
        pytest.param(SetDedup, id="model"),
        pytest.param(lambda: Deduplicator(100_000), id="eoscore.dedup"),
    ]


@pytest.mark.parametrize("make_dedup", _dedups())
def test_duplicates_in_input_appear_once(
    kafka_bootstrap: str, kafka_topic: TopicFactory, make_dedup
):
    src, dst = kafka_topic(3), kafka_topic(3)
    uniques = inputs(0, 6000)
    # Duplicates right next to the original, far behind it, and (second phase)
    # after the original's transaction committed.
    early = uniques[:2000] + uniques[:300] + uniques[2000:4000] + uniques[100:900:3]
    late = uniques[4000:] + uniques[3900:4100] + uniques[::7]
    produce_inputs(kafka_bootstrap, src, early)
    group = f"g-{uuid.uuid4().hex[:8]}"
    proc = ExactlyOnceProcessor(
        bootstrap_servers=kafka_bootstrap,
        group_id=group,
        topics=[src],
        transform=make_transform(dst),
        instance_id="dedup",
        dedup=make_dedup(),
        consumer_config=CONSUMER,
    )
    state = {"phase": 0}
    caught = _until_caught_up(kafka_bootstrap, group, src)

    def until() -> bool:
        if not caught():
            return False
        if state["phase"] == 0:
            state["phase"] = 1
            produce_inputs(kafka_bootstrap, src, late)
            return False
        return True

    proc.run(until=until)
    outputs = read_committed(kafka_bootstrap, dst)
    assert_exactly_once(outputs, (f(v) for _k, v in uniques))
    assert proc.metrics.duplicates_dropped == len(early) + len(late) - len(uniques)


def test_rebalance_mid_run_loses_and_duplicates_nothing(
    kafka_bootstrap: str, kafka_topic: TopicFactory
):
    src, dst = kafka_topic(6), kafka_topic(3)
    group = f"g-{uuid.uuid4().hex[:8]}"
    produced = [0]
    feeding = threading.Event()
    feeding.set()

    def feed() -> None:  # input keeps arriving through both rebalances
        while feeding.is_set():
            produce_inputs(kafka_bootstrap, src, inputs(produced[0], produced[0] + 500))
            produced[0] += 500
            time.sleep(0.1)

    def member(name: str) -> ExactlyOnceProcessor:
        return ExactlyOnceProcessor(
            bootstrap_servers=kafka_bootstrap,
            group_id=group,
            topics=[src],
            transform=make_transform(dst),
            instance_id=name,
            consumer_config=CONSUMER,
        )

    def wait_for(cond, what: str) -> None:
        deadline = time.monotonic() + 90
        while not cond():
            assert time.monotonic() < deadline, f"never: {what}"
            assert not errors, errors
            time.sleep(0.05)

    first, second = member("first"), member("second")
    errors: list[BaseException] = []

    def run(proc: ExactlyOnceProcessor) -> None:
        try:
            proc.run()
        except BaseException as exc:
            errors.append(exc)

    feeder = threading.Thread(target=feed)
    feeder.start()
    t1 = threading.Thread(target=run, args=(first,))
    t2 = threading.Thread(target=run, args=(second,))
    try:
        t1.start()
        wait_for(lambda: first.metrics.records_in >= 3000, "first member processing")
        t2.start()  # joins: the group splits the 6 partitions
        wait_for(lambda: second.metrics.records_in >= 3000, "second member processing")
        assert len(first.assignment) < 6  # really shared
        second.stop()  # leaves (commits, LeaveGroup): the first member gets all back
        t2.join(60)
        mark = first.metrics.records_in
        wait_for(lambda: len(first.assignment) == 6, "first member whole again")
        wait_for(lambda: first.metrics.records_in >= mark + 3000, "processing after the leave")
    finally:
        feeding.clear()
        feeder.join(60)
    wait_caught_up(kafka_bootstrap, group, src)
    first.stop()
    t1.join(60)
    assert not errors, errors
    assert first.metrics.rebalances >= 3  # assigned, shared, whole again
    outputs = read_committed(kafka_bootstrap, dst)
    assert_exactly_once(outputs, (f(v) for _k, v in inputs(0, produced[0])))


def test_abortable_error_aborts_rewinds_and_reprocesses(
    kafka_bootstrap: str, kafka_topic: TopicFactory
):
    src = kafka_topic(3)
    dst = kafka_topic(3, config={"max.message.bytes": "100000"})
    produce_inputs(kafka_bootstrap, src, inputs(0, 5000))
    group = f"g-{uuid.uuid4().hex[:8]}"
    poisoned = {"left": 1}

    def transform(batch: list) -> list[OutputRecord]:
        out = [OutputRecord(dst, f(m.value()), m.key()) for m in batch]
        if poisoned["left"] and any(m.offset() > 500 for m in batch):
            # The broker rejects this record (too large for dst): the transaction
            # becomes abortable, and everything in it must be redone.
            poisoned["left"] -= 1
            out.append(OutputRecord(dst, b"x" * 200_000, b"poison"))
        return out

    proc = ExactlyOnceProcessor(
        bootstrap_servers=kafka_bootstrap,
        group_id=group,
        topics=[src],
        transform=transform,
        instance_id="abort",
        batch_size=100,
        consumer_config=CONSUMER,
        producer_config={"batch.size": 16384},  # normal batches stay under the limit
    )
    proc.run(until=_until_caught_up(kafka_bootstrap, group, src))
    assert proc.metrics.txns_aborted >= 1
    assert proc.metrics.records_in > 5000  # the aborted transaction's inputs came again
    outputs = read_committed(kafka_bootstrap, dst)
    assert_exactly_once(outputs, (f(v) for _k, v in inputs(0, 5000)))


def test_transaction_timeout_is_not_reported_as_fencing(
    kafka_bootstrap: str, kafka_topic: TopicFactory
):
    src, dst = kafka_topic(1), kafka_topic(1)
    produce_inputs(kafka_bootstrap, src, inputs(0, 50))
    calls = {"n": 0}

    def slow(batch: list) -> list[OutputRecord]:
        calls["n"] += 1
        if calls["n"] == 2:
            time.sleep(3.5)  # the coordinator aborts the 2 s transaction meanwhile
        return [OutputRecord(dst, f(m.value()), m.key()) for m in batch]

    proc = ExactlyOnceProcessor(
        bootstrap_servers=kafka_bootstrap,
        group_id=f"g-{uuid.uuid4().hex[:8]}",
        topics=[src],
        transform=slow,
        instance_id="slow",
        batch_size=10,
        commit_interval_ms=1000,
        transaction_timeout_ms=2000,
        consumer_config=CONSUMER,
    )
    with pytest.raises(TransactionTimeoutError, match=r"transaction\.timeout\.ms"):
        proc.run()
    assert read_committed(kafka_bootstrap, dst) == []
