"""Barrier alignment: a keyed two-input operator fed by a fast and a slow channel
gives the same result aligned, unaligned, and after an alignment timeout, and
an unaligned checkpoint's channel state is restored in order after a crash.

Nothing here depends on timing: a ``Gate`` orders the two channels around the
first ``GATED`` checkpoints (see its docstring), and the fast channel reads at
most ``PACE`` batches per checkpoint, so it is live for all of them."""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from eoscore.checkpoint import FileCheckpointStorage
from eoscore.pipeline import ChannelReader, EndOfInput, FileSource, KeyedAccess, Pipeline, Tumbling
from eoscore.pipeline.sources import END, Source
from eoscore.runtime import CheckpointConfig, CheckpointCoordinator, RunResult
from eoscore.runtime.executor import Executor
from eoscore.sinks import FileSink
from tests.pipeline.chaos_job import SlowFileSource
from tests.pipeline.test_exactly_once import read_committed

QUEUE = 4  # batches a channel queue holds at most (records bound, see channel_capacity)
GATED = 3  # checkpoints whose barriers the gate orders
PACE = 12  # batches the fast channel reads per barrier, at most
FAST_BYTES = 1 << 15  # ~110 batches of left.jsonl: more than GATED * PACE + QUEUE + 1
STUCK = 30.0  # seconds a gate waits before it reports a deadlock (a bug, never a pass)


class Trickle(SlowFileSource):
    delay = 0.04


class Gate:
    """Orders the fast and the slow channel around checkpoints 1..GATED.

    The slow channel reads a batch, then *parks* with it until the checkpoint it
    has not delivered a barrier for yet (n) reached the point under test; the
    executor triggers a checkpoint only once the slow channel is parked (a
    wrapped ``Executor._trigger``). So barrier n reaches the slow channel's
    thread while it holds that batch: the batch is queued right before the
    barrier (runtime/channels.py injects requested barriers after the batch in
    hand), and the fast channel, never held, delivers barrier n first.

    - ``unaligned``: the slow channel parks until the executor started to
      unalign n (a wrapped ``Executor._unaligned``, after ``unaligned=True`` or
      ``aligned_timeout``): with the slow barrier held back, the timeout must
      expire; the parked batch, queued after that, is taken out as channel state.
    - ``aligned``: the slow channel parks until the fast channel put QUEUE + 1
      batches behind barrier n: its queue holds QUEUE, so the executor pulled
      the barrier and a batch behind it, which went into the alignment buffer.
    """

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.cond = threading.Condition()
        self.fast: Tracked | None = None
        self.slow: Tracked | None = None
        self.unaligning = 0  # the checkpoint attempt the executor last unaligned
        self.released = False

    def slow_may_go(self) -> bool:
        fast, slow = self.fast, self.slow
        assert fast is not None and slow is not None
        n = slow.barriers + 1
        if self.released or fast.ended or n > GATED:
            return True
        if self.mode == "unaligned":
            return self.unaligning >= n
        return fast.barriers >= n and fast.queued > QUEUE

    def ready_to_trigger(self) -> bool:
        slow = self.slow
        assert slow is not None
        return self.released or slow.parked or slow.ended or slow.barriers >= GATED

    def release(self) -> None:
        """Stop ordering (the run is over): nothing waits any more."""
        with self.cond:
            self.released = True
            self.cond.notify_all()

    def wait(self, predicate: Callable[[], bool], what: str) -> None:
        if not self.cond.wait_for(predicate, timeout=STUCK):
            raise RuntimeError(f"alignment gate ({self.mode}): stuck waiting for {what}")


class Tracked(ChannelReader):
    """A channel that sees its barriers: the channel thread asks ``position()``
    right after ``read()`` returned a batch or END, and otherwise only to inject
    a barrier."""

    def __init__(self, inner: ChannelReader, gate: Gate, *, slow: bool) -> None:
        self.inner = inner
        self.name = inner.name
        self.gate = gate
        self.slow = slow
        self.barriers = 0  # barriers injected so far
        self.behind = 0  # batches returned behind the last barrier
        self.queued = 0  # of which are in the queue for sure
        self.parked = False
        self.ended = False
        self._returned = True  # the executor asks the position once before the thread starts
        if slow:
            gate.slow = self
        else:
            gate.fast = self

    def read(self) -> list[Any] | EndOfInput | None:
        gate = self.gate
        with gate.cond:
            self.queued = self.behind  # the thread put the batch returned last
            gate.cond.notify_all()
        if not self.slow and self.behind >= PACE:
            return None  # nothing ready until the next barrier
        batch = self.inner.read()
        with gate.cond:
            if batch is END:
                self.ended = self._returned = True
            elif batch:
                self._returned = True
                self.behind += 1
                if self.slow and self.barriers < GATED:
                    self.parked = True
                    gate.cond.notify_all()
                    try:
                        gate.wait(gate.slow_may_go, f"checkpoint {self.barriers + 1}")
                    finally:
                        self.parked = False
            gate.cond.notify_all()
        return batch

    def position(self) -> Any:
        if self._returned:
            self._returned = False
        else:  # a barrier is being injected
            with self.gate.cond:
                self.barriers += 1
                self.behind = self.queued = 0
                self.gate.cond.notify_all()
        return self.inner.position()

    def close(self) -> None:
        self.inner.close()


class Gated(Source):
    def __init__(self, inner: Source, gate: Gate, *, slow: bool) -> None:
        self.inner = inner
        self.name = inner.name
        self.gate = gate
        self.slow = slow

    def open(self, positions: Mapping[str, Any]) -> list[ChannelReader]:
        readers = self.inner.open(positions)
        assert len(readers) == 1, "one channel per side"
        return [Tracked(readers[0], self.gate, slow=self.slow)]


@pytest.fixture
def gated(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], Gate]]:
    """Makes gates and hooks the executor's trigger and unalign steps to them."""
    gates: list[Gate] = []
    trigger, unaligned = Executor._trigger, Executor._unaligned

    def gated_trigger(self: Executor) -> int:
        gate = gates[-1]
        with gate.cond:
            gate.wait(gate.ready_to_trigger, "the slow channel to park")
        return trigger(self)

    def gated_unaligned(self: Executor) -> None:
        gate = gates[-1]
        assert self._align is not None
        with gate.cond:
            gate.unaligning = self._align.attempt
            gate.cond.notify_all()
        unaligned(self)

    def make(mode: str) -> Gate:
        gates.append(Gate(mode))
        return gates[-1]

    monkeypatch.setattr(Executor, "_trigger", gated_trigger)
    monkeypatch.setattr(Executor, "_unaligned", gated_unaligned)
    yield make
    for gate in gates:
        gate.release()


def make_input(directory: Path) -> None:
    rng = random.Random(3)
    directory.mkdir()
    for side, n in (("left", 100_000), ("right", 2_000)):
        with open(directory / f"{side}.jsonl", "w") as f:
            for i in range(n):
                t = i * (50 if side == "right" else 1) + rng.randint(0, 9)
                f.write(json.dumps({"k": rng.randrange(40), "t": t, "x": i % 11}) + "\n")


def first_three(slot: int) -> Any:
    def fn(state: KeyedAccess, record: dict[str, Any]) -> list[tuple[Any, float, int]]:
        seen = state.get([0, 0])
        seen = [seen[0] + (slot == 0), seen[1] + (slot == 1)]
        state.put(seen)
        # The first three records per key and side count double: output depends on state.
        weight = 2 if seen[slot] <= 3 else 1
        return [(record["k"], record["t"], record["x"] * weight + 1000 * slot)]

    return fn


def run(input_dir: Path, work: Path, config: CheckpointConfig, gate: Gate | None) -> RunResult:
    p = Pipeline("align")
    # Many batches on the fast channel, small ones trickling in on the slow one.
    fast: Source = FileSource(input_dir, pattern="left.jsonl", name="left", read_bytes=FAST_BYTES)
    slow: Source = Trickle(input_dir, pattern="right.jsonl", name="right", read_bytes=4096)
    if gate is not None:
        fast, slow = Gated(fast, gate, slow=False), Gated(slow, gate, slow=True)
    left = p.source(fast).map(json.loads)
    right = p.source(slow).map(json.loads)
    joined = left.key_by(lambda r: r["k"]).connect(right.key_by(lambda r: r["k"]))
    (
        joined.process(first_three(0), first_three(1))
        .assign_timestamps(lambda r: r[1], out_of_orderness=10)
        .key_by(lambda r: r[0])
        .window(Tumbling(500))
        .aggregate(lambda: 0, lambda acc, r: acc + r[2])
        .sink(FileSink(work / "out"))
    )
    return p.run(work / "state", config)


def output(work: Path) -> dict[tuple[int, int], int]:
    rows = read_committed(work / "out")
    result = {(r[0], r[1]): r[3] for r in rows}
    assert len(result) == len(rows), "a window was emitted twice"
    return result


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("align") / "in"
    make_input(d)
    return d


@pytest.fixture(scope="module")
def reference(inputs: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[Any, int]:
    work = tmp_path_factory.mktemp("reference")
    run(inputs, work, CheckpointConfig(interval=None), None)
    return output(work)


def test_aligned_checkpoints(
    inputs: Path, reference: dict[Any, int], tmp_path: Path, gated: Callable[[str], Gate]
) -> None:
    result = run(inputs, tmp_path, CheckpointConfig(interval=0.05), gated("aligned"))
    assert result.checkpoints.aligned >= GATED
    assert result.checkpoints.unaligned == 0
    assert result.checkpoints.buffered_records > 0  # the fast channel really waited
    assert output(tmp_path) == reference


def test_unaligned_checkpoints_keep_in_flight_records_as_channel_state(
    inputs: Path, reference: dict[Any, int], tmp_path: Path, gated: Callable[[str], Gate]
) -> None:
    config = CheckpointConfig(interval=0.05, unaligned=True)
    result = run(inputs, tmp_path, config, gated("unaligned"))
    assert result.checkpoints.unaligned >= GATED
    assert result.checkpoints.channel_state_records > 0
    assert output(tmp_path) == reference


def test_alignment_timeout_switches_to_unaligned(
    inputs: Path, reference: dict[Any, int], tmp_path: Path, gated: Callable[[str], Gate]
) -> None:
    # The slow channel's barrier comes only once the executor unaligns: after the timeout.
    config = CheckpointConfig(interval=0.05, aligned_timeout=0.0)
    result = run(inputs, tmp_path, config, gated("unaligned"))
    assert result.checkpoints.unaligned >= GATED
    assert result.checkpoints.channel_state_records > 0
    assert output(tmp_path) == reference


class Crash(Exception):
    pass


def test_channel_state_is_restored_in_order_after_a_crash(
    inputs: Path,
    reference: dict[Any, int],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    gated: Callable[[str], Gate],
) -> None:
    config = CheckpointConfig(interval=0.05, unaligned=True)
    gate = gated("unaligned")
    decide = CheckpointCoordinator._decide

    def crash_after_channel_state(self: Any, n: int, meta: Any) -> None:
        decide(self, n, meta)
        if meta["channel_state"]:
            gate.release()  # nothing may wait for a checkpoint that never comes
            raise Crash(n)  # right after a checkpoint with records in flight completed

    with monkeypatch.context() as patch:
        patch.setattr(CheckpointCoordinator, "_decide", crash_after_channel_state)
        with pytest.raises(Crash):
            run(inputs, tmp_path, config, gate)
    storage = FileCheckpointStorage(tmp_path / "state" / "state", readonly=True)
    latest = storage.latest()
    assert latest is not None
    in_flight = storage.read_manifest(latest).sources["channel_state"]
    assert sum(len(v) for v in in_flight.values()) > 0, "the crash came after no channel state"
    result = run(inputs, tmp_path, config, gated("unaligned"))
    assert result.recovered_from is not None
    assert output(tmp_path) == reference
