"""Barrier overtaking and record-bounded channel queues (issue 14).

Behind a slow operator a barrier used to wait behind every batch queued in
its channel. Now an unaligned barrier goes to the front of the queue (what it
overtakes becomes channel state), and queues are bounded in records, so an
aligned barrier waits behind at most ``channel_capacity - 1`` records plus one
batch per channel (docs/runtime.md, "Barrier overtaking and queue bounds").

No assertion here is about time: the bounds are on records processed between
a checkpoint's trigger and its cut (``CheckpointStats.barrier_records``), and
on how many checkpoints fit into an input that a map sleeping per record
makes last at least a known time. The chaos test SIGKILLs an unaligned job at
commit steps and at random moments and checks that every record is counted
once, in order. This module is also that job:
``python -m tests.runtime.test_barrier_overtake INPUT STATE OUT``.
"""

from __future__ import annotations

import random
import signal
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from eoscore.checkpoint import FileCheckpointStorage
from eoscore.pipeline import ChannelReader, EndOfInput, FileSource, Pipeline
from eoscore.runtime import CheckpointConfig, RunResult
from eoscore.runtime.channels import Barrier, Batch, ChannelQueue, ChannelThread, End
from eoscore.sinks import FileSink
from tests.pipeline.test_exactly_once import KILLED, read_committed, run_module

LINE = 12  # bytes per input line ("ff,iiiiiiii\n"): a FileSource read is exactly one batch


def make_input(directory: Path, channels: int, records: int) -> None:
    directory.mkdir(parents=True)
    for c in range(channels):
        with open(directory / f"in-{c}.txt", "w") as f:
            f.write("".join(f"{c:02d},{i:08d}\n" for i in range(records)))


def slow(rate: float, step: int = 25) -> Any:
    """A map function at ``rate`` records/s: sleeps ``step / rate`` s every ``step``
    records (the GIL stays free, as behind an operator that waits for a service)."""
    seen = 0

    def fn(line: str) -> tuple[int, int]:
        nonlocal seen
        seen += 1
        if seen % step == 0:
            time.sleep(step / rate)
        f, i = line.split(",")
        return int(f), int(i)

    return fn


def run(inputs: Path, work: Path, batch: int, rate: float, config: CheckpointConfig) -> RunResult:
    p = Pipeline("overtake")
    source = FileSource(inputs, read_bytes=batch * LINE)
    p.source(source).map(slow(rate)).sink(FileSink(work / "out"))
    return p.run(work / "state", config)


def committed_once(work: Path, channels: int, records: int) -> None:
    rows = sorted(tuple(r) for r in read_committed(work / "out"))
    assert rows == [(c, i) for c in range(channels) for i in range(records)]


# ---- the queue ----------------------------------------------------------------


def batch(n: int, position: int) -> Batch:
    return Batch(list(range(n)), position)


def test_queue_is_bounded_in_records_not_batches() -> None:
    q = ChannelQueue(100)
    never = lambda: False  # noqa: E731
    assert q.wait_room(never)
    q.put_batch(batch(60, 60))
    assert q.wait_room(never)  # 60 < 100: one more batch may be read
    q.put_batch(batch(60, 120))  # 120: capacity - 1 plus one batch at most
    assert not q.wait_room(lambda: True)  # full: only an interruption ends the wait
    taken = q.get()
    assert isinstance(taken, Batch) and taken.position == 60
    assert q.records == 60 and q.wait_room(never)


def test_an_overtaking_barrier_goes_first_and_carries_what_it_overtook() -> None:
    q = ChannelQueue(1000)
    first, second = batch(10, 10), batch(10, 20)
    q.put_batch(first)
    q.put_batch(second)
    barrier = Barrier(1, 20)
    q.put_overtaking(barrier)
    assert barrier.overtaken == [first, second]
    cut = q.cut(1, timeout=0)
    assert cut is not None and cut[0] is barrier and cut[1] == [first, second]
    # The overtaken batches are still queued, in order, to be processed after the cut.
    assert q.get() is first and q.get() is second and q.get() is None


def test_cut_of_an_aligned_barrier_keeps_the_batches_ahead_of_it() -> None:
    q = ChannelQueue(1000)
    ahead, behind = batch(5, 5), batch(5, 10)
    q.put_batch(ahead)
    q.put(Barrier(3, 5))
    q.put_batch(behind)
    assert q.cut(2, timeout=0) is None  # another checkpoint's barrier is not taken
    cut = q.cut(3, timeout=0)
    assert cut is not None and cut[0].position == 5 and cut[1] == [ahead]
    assert [q.get(), q.get(), q.get()] == [ahead, behind, None]


def test_cut_stops_at_the_end_of_the_channel() -> None:
    q = ChannelQueue(1000)
    last = batch(5, 5)
    q.put_batch(last)
    q.put(End(5))
    cut = q.cut(1, timeout=0)
    assert cut is not None and isinstance(cut[0], End) and cut[1] == [last]
    assert q.get() is last and isinstance(q.get(), End)  # the end stays queued


class Endless(ChannelReader):
    """Batches of 10 records, as fast as they are asked for."""

    name = "endless"

    def __init__(self) -> None:
        self.offset = 0

    def read(self) -> list[Any] | EndOfInput | None:
        self.offset += 10
        return list(range(10))

    def position(self) -> int:
        return self.offset

    def close(self) -> None:
        pass


@pytest.mark.parametrize("overtake", [False, True])
def test_a_reader_waiting_for_room_injects_a_barrier_at_once(overtake: bool) -> None:
    reader = Endless()
    ch = ChannelThread(0, "src", reader, threading.Event(), capacity=25)
    ch.start()
    try:
        # Nobody takes from the queue: it fills to 30 records and the reader waits.
        while ch.queue.records < 30:
            time.sleep(0.001)
        ch.request_barrier(1, overtake=overtake)
        cut = None
        while cut is None:
            cut = ch.queue.cut(1, timeout=5.0)
        barrier, before = cut
        assert barrier.position == 30 and sum(len(b.records) for b in before) == 30
        assert isinstance(barrier, Barrier) and len(barrier.overtaken) == (3 if overtake else 0)
        assert ch.queue.records <= 25 - 1 + 10
    finally:
        ch.stop()


# ---- bounds in a running pipeline ----------------------------------------------

CHANNELS = 3
BATCH = 50
CAPACITY = 120
#: Records an aligned barrier can wait behind in each channel: the queue's bound.
PER_CHANNEL = CAPACITY - 1 + BATCH


@pytest.fixture(scope="module")
def small_input(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("overtake") / "in"
    make_input(d, CHANNELS, 3_000)
    return d


def test_aligned_barriers_wait_behind_at_most_the_queue_bound(
    small_input: Path, tmp_path: Path
) -> None:
    config = CheckpointConfig(interval=0.02, channel_capacity=CAPACITY)
    result = run(small_input, tmp_path, BATCH, 20_000, config)
    stats = result.checkpoints
    assert stats.aligned >= 5 and stats.unaligned == 0
    # (With queues of 4 batches, each channel held up to 5 batches = 250 > PER_CHANNEL.)
    assert max(stats.barrier_records) <= CHANNELS * PER_CHANNEL, stats.barrier_records
    assert max(stats.barrier_records) > BATCH  # the queues really were full
    committed_once(tmp_path, CHANNELS, 3_000)


def test_unaligned_barriers_overtake_every_queued_batch(
    small_input: Path, tmp_path: Path
) -> None:
    config = CheckpointConfig(interval=0.02, unaligned=True, channel_capacity=CAPACITY)
    result = run(small_input, tmp_path, BATCH, 20_000, config)
    stats = result.checkpoints
    assert stats.unaligned >= 5 and stats.aligned <= 1  # the final checkpoint may align
    # Nothing is processed between the trigger and the cut: the barriers were first.
    assert stats.barrier_records[: stats.unaligned] == [0] * stats.unaligned
    assert 0 < stats.channel_state_records <= stats.unaligned * CHANNELS * PER_CHANNEL
    committed_once(tmp_path, CHANNELS, 3_000)


def test_unaligned_checkpoints_keep_pace_with_a_slow_operator(tmp_path: Path) -> None:
    """4 channels x 2,000 records through a map at 5,000 records/s: at least 1.6 s.

    Overtaking, a checkpoint takes about one interval plus one batch (0.1 s).
    Allowing three times that, at least 5 complete. Before overtaking, each
    barrier waited behind 4 x 5 batches (1 s): one or two completed.
    """
    channels, records, batch_size, rate, interval = 4, 2_000, 250, 5_000.0, 0.05
    make_input(tmp_path / "in", channels, records)
    config = CheckpointConfig(interval=interval, unaligned=True)
    result = run(tmp_path / "in", tmp_path, batch_size, rate, config)
    least_seconds = channels * records / rate
    bound = int(least_seconds / (3 * (interval + batch_size / rate)))
    periodic = result.checkpoints.completed - 1  # the last one is the final checkpoint
    assert periodic >= bound, (periodic, bound, result.checkpoints.durations)
    committed_once(tmp_path, channels, records)


# ---- exactly once under SIGKILL, unaligned ---------------------------------------

JOB_CHANNELS = 3
JOB_RECORDS = 8_000
JOB_KEYS = 5  # per channel: a key's records come from one channel, in file order
JOB_FAILPOINTS = [
    ("source.before_barrier", 7),
    ("runtime.mid_snapshot", 3),  # a checkpoint with channel state being written
    ("runtime.after_pending_write", 4),
    ("runtime.after_decision", 5),
    ("runtime.mid_restore", 1),
]


def job(input_dir: str, state_dir: str, out_dir: str) -> None:
    """Slow map -> per key running (count, last id) -> FileSink; unaligned every 30 ms."""
    p = Pipeline("overtake-chaos")
    (
        p.source(FileSource(input_dir, read_bytes=100 * LINE))
        .map(slow(10_000))
        .key_by(lambda r: (r[0], r[1] % JOB_KEYS))
        .aggregate(lambda: (0, -1), lambda acc, r: (acc[0] + 1, r[1]))
        .sink(FileSink(out_dir))
    )
    p.run(state_dir, CheckpointConfig(interval=0.03, unaligned=True, channel_capacity=300))


def check_counts(out_dir: Path) -> None:
    """Each key's committed (count, id) rows are exactly 1..n over its ids in file order."""
    per_key: dict[tuple[int, int], list[tuple[int, int]]] = defaultdict(list)
    for key, (n, i) in read_committed(out_dir):
        per_key[(key[0], key[1])].append((n, i))
    assert len(per_key) == JOB_CHANNELS * JOB_KEYS
    for (c, k), rows in per_key.items():
        rows.sort()
        want = [(n + 1, i) for n, i in enumerate(range(k, JOB_RECORDS, JOB_KEYS))]
        assert rows == want, f"key {(c, k)}: {len(rows)} rows, first wrong at " + str(
            next((a, b) for a, b in zip(rows, want, strict=False) if a != b)
            if rows[: len(want)] != want[: len(rows)]
            else "the end"
        )


def in_flight_in_latest(state_dir: Path) -> int:
    path = state_dir / "state"
    if not path.exists():
        return 0
    storage = FileCheckpointStorage(path, readonly=True)
    latest = storage.latest()
    if latest is None:
        return 0
    state = storage.read_manifest(latest).sources.get("channel_state", {})
    return sum(len(v) for v in state.values())


@pytest.mark.slow
def test_unaligned_overtaking_is_exactly_once_under_sigkill(tmp_path: Path) -> None:
    make_input(tmp_path / "in", JOB_CHANNELS, JOB_RECORDS)
    args = [str(tmp_path / "in"), str(tmp_path / "state"), str(tmp_path / "out")]
    module = "tests.runtime.test_barrier_overtake"
    rng = random.Random(14)
    fired: set[str] = set()
    kills = restored_in_flight = 0
    for name, at in JOB_FAILPOINTS:
        for failpoint, kill_after in ((f"{name}=kill@{at}", 60.0), (None, rng.uniform(0.6, 1.0))):
            rc = run_module(module, args, failpoint, kill_after)
            if rc == -signal.SIGKILL:
                fired.add(name)
            kills += rc in (-signal.SIGKILL, KILLED)
            restored_in_flight += in_flight_in_latest(tmp_path / "state") > 0
    assert run_module(module, args, kill_after=60) == 0
    check_counts(tmp_path / "out")
    assert fired == {name for name, _ in JOB_FAILPOINTS}
    assert kills >= 8, kills
    assert restored_in_flight >= 3, "too few restarts from a checkpoint with channel state"


if __name__ == "__main__":
    job(*sys.argv[1:4])
