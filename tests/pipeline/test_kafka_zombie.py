"""Zombies of the pipeline's KafkaSink: a paused instance wakes after a new one took over.

The old instance SIGSTOPs itself at ``sink.kafka.before_commit`` of its
second checkpoint (output produced, offsets in the transaction, commit not
sent). Its state directory is LOCKed, so a second instance on the same
directory is refused (and changes nothing). The zombie case needs the lock
lost while its holder lives (an NFS lock lease that expired during the pause,
shared storage across hosts): ``--steal-lock`` stands in for that. The new
instance then fences the old one (same transactional id, ``init_transactions``
bumps the epoch) and runs to the end. The old one, continued, must fail on its
commit naming the fencing and must not touch the checkpoint store; a later
run adds nothing; a read_committed reader sees every window exactly once.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer

import eoscore.sinks.kafka
from eoscore.errors import EosError
from eoscore.runtime import CheckpointConfig
from eoscore.runtime.store import FileCheckpointStore
from tests.kafka._util import process_state
from tests.pipeline.kafka_job import WINDOW, build
from tests.pipeline.test_exactly_once import ROOT, expected
from tests.pipeline.test_kafka_exactly_once import produce_input, read_output

JOB = "tests.pipeline.kafka_job"


def spawn(args: list[str], failpoints: str | None = None) -> subprocess.Popen[str]:
    env = dict(os.environ)
    env.pop("EOSCORE_FAILPOINTS", None)
    if failpoints:
        env["EOSCORE_FAILPOINTS"] = failpoints
    return subprocess.Popen(
        [sys.executable, "-m", JOB, *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[str], timeout: float = 60) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, err


def files(state_dir: Path) -> dict[str, str]:
    """Every file of the checkpoint store and its digest."""
    return {
        str(p.relative_to(state_dir)): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(state_dir.rglob("*"))
        if p.is_file()
    }


@pytest.mark.slow
def test_zombie_sink_is_fenced_and_leaves_store_and_output_intact(
    kafka_bootstrap: str, kafka_topic: Any, tmp_path: Path
) -> None:
    in_topic, out_topic = kafka_topic(2), kafka_topic(1)
    events = produce_input(kafka_bootstrap, in_topic, 2)
    state = tmp_path / "state"
    args = [kafka_bootstrap, in_topic, out_topic, str(state)]

    old = spawn([*args, "--tag", "old"], "sink.kafka.before_commit=stop@2")
    deadline = time.monotonic() + 60
    while process_state(old.pid) != "T":
        assert old.poll() is None, finish(old)[1][-2000:]
        assert time.monotonic() < deadline, "old instance never reached the failpoint"
        time.sleep(0.05)
    try:
        # Checkpoint 1 is decided (its output committed); 2 is pending in the store.
        before = read_output(kafka_bootstrap, out_topic)
        at_stop = files(state)

        # The LOCK refuses a second writer while the old one lives, and it changes nothing.
        code, err = finish(spawn([*args, "--tag", "refused"]))
        assert code != 0 and "LOCK is held" in err, err[-2000:]
        assert files(state) == at_stop

        # The lock lost: the new instance fences the old one and runs to the end.
        code, err = finish(spawn([*args, "--tag", "new", "--steal-lock"]), timeout=120)
        assert code == 0, err[-2000:]
        after_new = files(state)
    finally:
        os.kill(old.pid, signal.SIGCONT)  # the zombie wakes up and commits
    code, err = finish(old)
    assert code not in (0, -signal.SIGKILL), f"the zombie exited {code}: {err[-2000:]}"
    assert "ProducerFencedError" in err and "took over" in err, err[-2000:]
    assert files(state) == after_new, "the zombie changed the checkpoint store"
    rows = read_output(kafka_bootstrap, out_topic)

    # A later run finds the new instance's decision and has nothing left to add.
    code, err = finish(spawn([*args, "--tag", "final"]))
    assert code == 0, err[-2000:]
    assert read_output(kafka_bootstrap, out_topic) == rows

    counts = Counter((r[0], r[1]) for r in rows)
    assert not [k for k, c in counts.items() if c > 1], "a window was committed twice"
    assert {(r[0], r[1]): r[3] for r in rows} == expected(events, WINDOW)
    # Of the old instance only what it committed before its pause is visible.
    assert [r for r in rows if r[4] == "old"] == before
    assert {r[4] for r in rows} <= {"old", "new"}


def test_refused_second_store_leaves_the_writers_files_alone(tmp_path: Path) -> None:
    first = FileCheckpointStore(tmp_path, {})
    try:
        tmp = tmp_path / "decisions" / "0000000007.json.tmp"  # a decision being renamed
        tmp.write_text("{}")
        with pytest.raises(EosError, match="LOCK is held"):
            FileCheckpointStore(tmp_path, {})
        assert tmp.exists(), "a refused second store removed the writer's decision temp file"
    finally:
        first.close()


def test_kafka_sink_keeps_one_consumer_over_many_checkpoints(
    kafka_bootstrap: str, kafka_topic: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    created: list[Consumer] = []

    class CountingConsumer(Consumer):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            created.append(self)

    monkeypatch.setattr(eoscore.sinks.kafka, "Consumer", CountingConsumer)
    in_topic, out_topic = kafka_topic(2), kafka_topic(1)
    events = produce_input(kafka_bootstrap, in_topic, 2)
    # Small batches and queues: a barrier waits behind few records, checkpoints are many.
    pipeline = build(kafka_bootstrap, in_topic, out_topic, batch_size=200, pause_per_1000=0.02)
    result = pipeline.run(tmp_path / "state", CheckpointConfig(interval=0.02, channel_capacity=200))
    assert result.checkpoints.completed >= 10, result.checkpoints
    # One for the sink's life (read_decision, then every commit's group metadata).
    completed = result.checkpoints.completed
    assert len(created) == 1, f"{len(created)} consumers for {completed} checkpoints"
    rows = read_output(kafka_bootstrap, out_topic)
    assert {(r[0], r[1]): r[3] for r in rows} == expected(events, WINDOW)
