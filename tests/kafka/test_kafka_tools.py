"""Exactly-once, refereed by Kafka's own tools (issue 14).

Kafka's ``VerifiableProducer`` writes the input; the ExactlyOnceProcessor and a
KafkaSource -> KafkaSink pipeline copy it while being SIGKILLed, some kills at
the moment between produce and commit (so aborted output is certain to sit in
the log); Kafka's ``ConsoleConsumer`` then reads the outputs. At
``read_committed`` it must see every produced value exactly once; at
``read_uncommitted`` the same tool must see the aborted copies too, which is
what makes the first check mean something.
"""

from __future__ import annotations

import random
import signal
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.fixtures.kafka import TopicFactory
from tests.kafka import _javatools as java
from tests.kafka._util import spawn_child, stop_child, wait_caught_up, wait_line
from tests.pipeline.test_exactly_once import KILLED, run_module

RECORDS = 4000

# The processor: batches of 50, 30 ms of "work" each, commits every 150 ms, so
# a transaction holds ~5 batches and the early ones are acknowledged long
# before a kill at kafka.before_commit (the outputs are in the log, uncommitted).
PROCESSOR_KILLS = [
    "kafka.before_commit=kill@2",  # offsets in the transaction, commit not sent
    "kafka.after_produce=kill@4",
    "kafka.after_commit=kill@2",
    "",  # the parent's SIGKILL at a random moment
]
# The pipeline: sink.kafka.before_commit comes after the sink's flush, so the
# killed checkpoint's output is certainly in the log, never committed.
PIPELINE_KILLS = [
    "sink.kafka.before_commit=kill@2",
    "runtime.after_pre_commit=kill@1",
    "sink.kafka.after_commit=kill@1",
    "",
]


def out_value(value: str) -> str:
    """What tests/kafka/_child.py's transform makes of an input value."""
    return "out:" + value[::-1]


def copy_value(value: str) -> str:
    """What tests/kafka/_copy_job.py makes of an input value."""
    return "copy:" + value


def run_processor(bootstrap: str, src: str, dst: str) -> list[str]:
    config = {
        "bootstrap": bootstrap,
        "group": f"tools-{uuid.uuid4().hex[:8]}",
        "input": src,
        "output": dst,
        "instance": "tools",
        "static": True,  # a restart takes the dead member's place at once
        "throttle_s": 0.03,
        "batch_size": 50,
        "commit_interval_ms": 150,
        "transaction_timeout_ms": 30_000,
        "producer_config": {"linger.ms": 1},
    }
    rng = random.Random(14)
    deaths = []
    for plan in PROCESSOR_KILLS:
        child = spawn_child(config, plan)
        assert wait_line(child, "first-batch", 60), child.communicate(timeout=30)[1][-2000:]
        if not plan:
            time.sleep(rng.uniform(0.1, 0.5))
            child.send_signal(signal.SIGKILL)
        _out, err = child.communicate(timeout=60)
        assert child.returncode == -signal.SIGKILL, f"{plan!r}: {err[-2000:]}"
        deaths.append(plan.split("=")[0] or "random")
    # An undisturbed instance finishes the work and stops cleanly.
    child = spawn_child({**config, "throttle_s": 0.0, "batch_size": 500})
    wait_caught_up(bootstrap, config["group"], src, timeout=60)
    code, _out, err = stop_child(child)
    assert code == 0, err[-2000:]
    return deaths


def run_pipeline(bootstrap: str, src: str, dst: str, state: Path) -> list[str]:
    args = [bootstrap, src, dst, str(state), "0.001"]
    rng = random.Random(41)
    deaths = []
    for plan in PIPELINE_KILLS:
        kill_after = 90.0 if plan else rng.uniform(0.8, 1.6)
        rc = run_module("tests.kafka._copy_job", args, plan or None, kill_after=kill_after)
        assert rc in (-signal.SIGKILL, KILLED), f"{plan!r}: the job ended ({rc}) before the kill"
        deaths.append(plan.split("=")[0] or "random")
    assert run_module("tests.kafka._copy_job", [*args[:4], "0"], None, kill_after=90) == 0
    return deaths


def test_copies_of_a_verifiable_producer_topic_are_exactly_once_for_kafkas_consumer(
    kafka_bootstrap: str, kafka_topic: TopicFactory, tmp_path: Path
):
    started = time.monotonic()
    src = kafka_topic(3)
    proc_out = kafka_topic(3, prefix="tools-processor-out")
    pipe_out = kafka_topic(1, prefix="tools-pipeline-out")

    produced = java.verifiable_produce(kafka_bootstrap, src, RECORDS, keys=60)
    # VerifiableProducer's values are 0..n-1, each acknowledged once.
    assert sorted(produced, key=int) == [str(i) for i in range(RECORDS)]

    with ThreadPoolExecutor(2) as pool:
        processor = pool.submit(run_processor, kafka_bootstrap, src, proc_out)
        pipeline = pool.submit(run_pipeline, kafka_bootstrap, src, pipe_out, tmp_path / "state")
        processor_deaths, pipeline_deaths = processor.result(), pipeline.result()
    assert len(processor_deaths) == len(PROCESSOR_KILLS)
    assert len(pipeline_deaths) == len(PIPELINE_KILLS)

    # Kafka's own consumer, both isolation levels at once, over both outputs.
    include = f"^({proc_out}|{pipe_out})$"
    committed_tool = java.start_console_consume(kafka_bootstrap, include, "read_committed")
    uncommitted_tool = java.start_console_consume(kafka_bootstrap, include, "read_uncommitted")
    committed = Counter(r.value for r in java.consumed(committed_tool, include))
    uncommitted = Counter(r.value for r in java.consumed(uncommitted_tool, include))

    want = Counter([out_value(v) for v in produced] + [copy_value(v) for v in produced])
    dups = {v: n for v, n in committed.items() if n > 1}
    missing = sorted(set(want) - set(committed))
    extra = sorted(set(committed) - set(want))
    assert not dups, f"{len(dups)} values read twice, e.g. {list(dups.items())[:5]}"
    assert not missing, f"{len(missing)} values missing, e.g. {missing[:5]}"
    assert not extra, f"{len(extra)} unexpected values, e.g. {extra[:5]}"
    assert committed == want

    # Not vacuous: the same tool at read_uncommitted sees the aborted copies.
    for label, make in (("processor", out_value), ("pipeline", copy_value)):
        seen = Counter({make(v): uncommitted[make(v)] for v in produced})
        assert all(n >= 1 for n in seen.values()), label
        again = sum(n - 1 for n in seen.values())
        assert again > 0, f"{label}: read_uncommitted saw no aborted data; the check is vacuous"
        assert sum(seen.values()) > len(produced), label
    print(
        f"processor deaths {processor_deaths}, pipeline deaths {pipeline_deaths}; "
        f"read_uncommitted {sum(uncommitted.values())} records for {2 * RECORDS} outputs; "
        f"{time.monotonic() - started:.1f}s"
    )
