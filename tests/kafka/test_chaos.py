"""Crashes and zombies: processors in child processes, SIGKILLed and SIGSTOPped."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
import time
import uuid

from tests.fixtures.kafka import TopicFactory
from tests.kafka._util import (
    assert_exactly_once,
    f,
    inputs,
    process_state,
    produce_inputs,
    read_committed,
    spawn_child,
    stop_child,
    wait_caught_up,
    wait_line,
)

KILLS = 20
CHUNK = 500

# Where each round dies: the parent's SIGKILL at a random moment, or a failpoint
# that SIGKILLs the child exactly there.
PLANS = [
    "",  # random moment (often inside produce: produce dominates the loop)
    "kafka.mid_produce=kill%0.1",
    "kafka.before_commit=kill%0.8",  # offsets in the transaction, commit not sent
    "kafka.after_produce=kill%0.1",
    "kafka.after_commit=kill%0.3",
]


def test_sigkill_at_random_moments_loses_and_duplicates_nothing(
    kafka_bootstrap: str, kafka_topic: TopicFactory
):
    src, dst = kafka_topic(3), kafka_topic(3)
    group = f"g-{uuid.uuid4().hex[:8]}"
    config = {
        "bootstrap": kafka_bootstrap,
        "group": group,
        "input": src,
        "output": dst,
        "instance": "chaos",
        "static": True,  # a restart replaces the dead member without waiting out its session
        "throttle_s": 0.01,
        "batch_size": 200,
    }
    rng = random.Random(4)
    produced = [0]
    feeding = threading.Event()
    feeding.set()

    def feed() -> None:  # ~3000 records/s while the rounds run: always work in flight
        while feeding.is_set():
            start = produced[0]
            produce_inputs(kafka_bootstrap, src, inputs(start, start + CHUNK))
            produced[0] = start + CHUNK
            time.sleep(0.1)

    feeder = threading.Thread(target=feed)
    feeder.start()
    deaths: dict[str, int] = {}
    try:
        for round_no in range(KILLS):
            plan = PLANS[round_no % len(PLANS)]
            child = spawn_child(config, plan, seed=round_no)
            wait_line(child, "first-batch", 60)
            try:
                child.wait(timeout=rng.uniform(0.2, 2.5))  # a failpoint may fire first
                key = plan.split("=")[0]
            except subprocess.TimeoutExpired:
                child.send_signal(signal.SIGKILL)
                key = "random"
            _out, err = child.communicate(timeout=30)
            assert child.returncode == -signal.SIGKILL, f"round {round_no} ({plan}): {err[-2000:]}"
            deaths[key] = deaths.get(key, 0) + 1
    finally:
        feeding.clear()
        feeder.join()
    # A last, undisturbed instance finishes the work and stops cleanly.
    child = spawn_child(config)
    wait_caught_up(kafka_bootstrap, group, src, timeout=180)
    code, _out, err = stop_child(child)
    assert code == 0, err[-2000:]

    outputs = read_committed(kafka_bootstrap, dst)
    assert_exactly_once(outputs, (f(v) for _k, v in inputs(0, produced[0])))
    assert sum(deaths.values()) == KILLS
    print("deaths:", deaths, "records:", produced[0])
    assert deaths.get("kafka.before_commit", 0) >= 1, deaths
    assert deaths.get("kafka.mid_produce", 0) + deaths.get("random", 0) >= 1, deaths


def test_zombie_resumes_after_takeover_and_none_of_its_writes_are_visible(
    kafka_bootstrap: str, kafka_topic: TopicFactory
):
    src, dst = kafka_topic(3), kafka_topic(3)
    produce_inputs(kafka_bootstrap, src, inputs(0, 3000))
    group = f"g-{uuid.uuid4().hex[:8]}"
    base = {
        "bootstrap": kafka_bootstrap,
        "group": group,
        "input": src,
        "output": dst,
        "instance": "one",  # same transactional.id for old and new
        "transaction_timeout_ms": 60_000,  # the pause below is no timeout
        "batch_size": 100,
    }
    # The old instance stops itself with outputs produced and offsets sent,
    # just before commit_transaction: the worst moment to turn zombie.
    old = spawn_child({**base, "tag": "old"}, "kafka.before_commit=stop@1")
    deadline = time.monotonic() + 60
    while process_state(old.pid) != "T":
        assert old.poll() is None, old.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "old instance never reached the failpoint"
        time.sleep(0.05)

    new = spawn_child({**base, "tag": "new"})
    wait_caught_up(kafka_bootstrap, group, src, timeout=120)
    code, _out, err = stop_child(new)
    assert code == 0, err[-2000:]

    os.kill(old.pid, signal.SIGCONT)  # the zombie wakes up and commits
    _out, err = old.communicate(timeout=60)
    assert old.returncode == 3, err[-2000:]
    assert "ProducerFencedError" in err and "took over" in err

    outputs = read_committed(kafka_bootstrap, dst, with_headers=True)
    assert_exactly_once(outputs, (f(v) for _k, v in inputs(0, 3000)))
    tags = {dict(h)["instance"] for _k, _v, h in outputs}
    assert tags == {b"new"}
