"""The native alignment buffer, and the executor's alignment driven item by item."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from eoscore.pipeline import ChannelReader, CollectingSink, EndOfInput, Pipeline, Source
from eoscore.runtime import AlignmentBuffer, CheckpointConfig, Executor
from eoscore.runtime.channels import Barrier, Batch, End


def test_barrier_blocks_until_every_channel_delivered() -> None:
    buf = AlignmentBuffer(3, 100)
    assert buf.barrier(0, 7) == 2
    assert buf.blocked(0) and not buf.blocked(1)
    assert buf.push(0, "a", 10)
    assert buf.end(2) == 1  # an ended channel counts as aligned
    assert buf.barrier(1, 7) == 0
    assert buf.release() == [(0, "a")]
    assert not buf.blocked(0) and buf.pending == -1 and buf.buffered_records == 0


def test_full_buffer_means_backpressure() -> None:
    buf = AlignmentBuffer(2, 5)
    buf.barrier(0, 1)
    assert buf.push(0, "x", 3)
    assert not buf.push(0, "y", 2)  # now full: stop pulling from channel 0
    assert not buf.has_room(0)
    assert buf.buffered_records == 5


def test_a_newer_barrier_while_aligning_is_refused() -> None:
    buf = AlignmentBuffer(2, 5)
    buf.barrier(0, 1)
    with pytest.raises(ValueError, match="while aligning 1"):
        buf.barrier(1, 2)


def test_pushing_an_unblocked_channel_is_refused() -> None:
    buf = AlignmentBuffer(2, 5)
    with pytest.raises(ValueError, match="not blocked"):
        buf.push(1, "x", 1)
    with pytest.raises(IndexError):
        buf.blocked(2)
    with pytest.raises(ValueError):
        AlignmentBuffer(0, 5)


def test_watermark_is_the_minimum_and_never_goes_back() -> None:
    buf = AlignmentBuffer(2, 5)
    assert buf.watermark() == -math.inf
    assert buf.set_watermark(0, 10.0) == -math.inf
    assert buf.set_watermark(1, 4.0) == 4.0
    assert buf.set_watermark(1, 2.0) == 4.0
    buf.end(1)
    assert buf.watermark() == 10.0


def test_an_idle_channel_is_left_out_of_the_minimum_until_it_delivers() -> None:
    buf = AlignmentBuffer(2, 5)
    buf.set_idle_timeout(1, 1.0)
    buf.set_watermark(0, 20.0)
    buf.set_watermark(1, 3.0)
    assert buf.check_idle(100.0) == 0  # starts channel 1's clock
    assert buf.check_idle(100.5) == 0 and buf.watermark() == 3.0
    assert buf.check_idle(101.0) == 1  # a second without records
    assert buf.is_idle(1) and buf.watermark() == 20.0
    assert buf.check_idle(105.0) == 0  # already idle: reported once
    assert buf.delivered(1)  # active again: its own (old) watermark counts
    assert not buf.is_idle(1) and buf.watermark() == 3.0
    assert not buf.delivered(1)
    assert buf.set_watermark(1, 8.0) == 8.0


def test_delivering_restarts_the_idle_clock() -> None:
    buf = AlignmentBuffer(2, 5)
    buf.set_idle_timeout(0, 1.0)
    buf.check_idle(0.0)
    buf.delivered(0)
    assert buf.check_idle(0.5) == 0  # seen: the clock restarts at 0.5
    assert buf.check_idle(1.25) == 0
    assert buf.check_idle(1.5) == 1
    assert not buf.is_idle(1)  # no timeout: never idle
    assert buf.idle_timeout(0) == 1.0 and buf.idle_timeout(1) == math.inf


def test_when_every_channel_is_idle_the_minimum_is_over_all_of_them() -> None:
    buf = AlignmentBuffer(3, 5)
    for i in range(2):
        buf.set_idle_timeout(i, 1.0)
    buf.set_watermark(0, 10.0)
    buf.set_watermark(1, 30.0)
    buf.set_watermark(2, math.inf)  # a channel without event time
    buf.check_idle(0.0)
    buf.delivered(1)
    assert buf.check_idle(1.0) == 1 and buf.watermark() == 30.0  # channel 0 idle
    assert buf.check_idle(2.0) == 1  # channel 1 too: idleness alone cannot advance
    assert buf.watermark() == 10.0  # what it was without idleness (the caller keeps more)
    buf.end(0)  # an ended channel is not idle, and counts as +inf
    assert not buf.is_idle(0) and buf.watermark() == 30.0
    buf.end(1)
    assert buf.watermark() == math.inf


def test_idleness_does_not_change_alignment() -> None:
    buf = AlignmentBuffer(2, 2)
    buf.set_idle_timeout(0, 1.0)
    buf.set_idle_timeout(1, 1.0)
    buf.check_idle(0.0)
    buf.check_idle(1.0)
    assert buf.is_idle(0) and buf.is_idle(1)
    assert buf.barrier(0, 4) == 1  # an idle channel still owes its barrier
    assert buf.missing() == 1 and buf.open_channels() == [1]
    assert buf.is_idle(0)  # a barrier is not a record
    assert buf.barrier(1, 4) == 0
    buf.release()


def test_a_blocked_channel_with_a_full_buffer_is_backpressured_not_idle() -> None:
    buf = AlignmentBuffer(2, 2)
    buf.set_idle_timeout(0, 1.0)
    buf.check_idle(0.0)
    buf.barrier(0, 1)
    buf.delivered(0)
    assert not buf.push(0, "x", 2)  # full: channel 0 is not pulled any more
    assert buf.check_idle(5.0) == 0 and buf.check_idle(10.0) == 0
    buf.barrier(1, 1)
    buf.release()
    assert buf.check_idle(10.5) == 0  # the clock restarted at 10.0
    assert buf.check_idle(11.0) == 1


def test_a_blocked_channel_with_room_can_be_idle() -> None:
    buf = AlignmentBuffer(2, 2)
    buf.set_idle_timeout(0, 1.0)
    buf.check_idle(0.0)
    buf.barrier(0, 1)
    assert buf.check_idle(1.0) == 1


@pytest.mark.parametrize("seconds", [0.0, -1.0, math.nan])
def test_an_idle_timeout_must_be_positive(seconds: float) -> None:
    with pytest.raises(ValueError, match="must be positive"):
        AlignmentBuffer(2, 5).set_idle_timeout(0, seconds)


def test_idleness_against_a_model() -> None:
    """Random deliveries, checks, marks and ends agree with a plain-Python model."""
    rng = random.Random(7)
    for _ in range(200):
        n = rng.randint(1, 5)
        buf = AlignmentBuffer(n, 100)
        timeout = [rng.choice([math.inf, 1.0, 2.0]) for _ in range(n)]
        marks = [-math.inf] * n
        idle = [False] * n
        seen = [True] * n
        last = [0.0] * n
        ended = [False] * n
        for i, t in enumerate(timeout):
            if t != math.inf:
                buf.set_idle_timeout(i, t)
        now = 0.0
        for _ in range(40):
            i = rng.randrange(n)
            op = rng.random()
            if op < 0.3:
                buf.delivered(i)
                seen[i], idle[i] = True, False
                mark = float(rng.randint(0, 100))
                buf.set_watermark(i, mark)
                marks[i] = max(marks[i], mark)
            elif op < 0.35:
                buf.end(i)
                ended[i], idle[i], marks[i] = True, False, math.inf
            else:
                now += rng.choice([0.0, 0.5, 1.0, 1.5])
                count = 0
                for c in range(n):
                    if timeout[c] == math.inf or ended[c]:
                        continue
                    if seen[c]:
                        seen[c], last[c] = False, now
                    elif not idle[c] and now - last[c] >= timeout[c]:
                        idle[c] = True
                        count += 1
                assert buf.check_idle(now) == count
            active = [m for c, m in enumerate(marks) if not idle[c]]
            expected = min(active, default=math.inf)
            if any(idle) and expected == math.inf:
                expected = min(marks)
            assert buf.watermark() == expected
            assert [buf.is_idle(c) for c in range(n)] == idle


class _Idle(ChannelReader):
    def __init__(self, name: str) -> None:
        self.name = name

    def read(self) -> list[Any] | EndOfInput | None:
        return None

    def position(self) -> Any:
        return 0


class _Manual(Source):
    """Two channels whose items the test hands to the executor itself."""

    name = "manual"

    def open(self, positions: Mapping[str, Any]) -> list[ChannelReader]:
        return [_Idle("a"), _Idle("b")]


def test_records_after_a_barrier_wait_and_are_not_in_the_snapshot(tmp_path: Path) -> None:
    p = Pipeline("manual")
    sink = CollectingSink()
    p.source(_Manual()).key_by(lambda r: "all").aggregate(lambda: 0, lambda a, r: a + r).sink(sink)
    ex = Executor(p, tmp_path, CheckpointConfig(interval=None))
    ex._open(ex.coordinator.recover().meta)
    ex._handle(0, Batch([1, 2], 1))
    checkpoint_id = ex._trigger()
    ex._handle(0, Barrier(1, 1))
    ex._handle(0, Batch([100], 2))  # after the barrier: buffered, not processed
    assert ex.buffer is not None and ex.buffer.buffered_records == 1
    ex._handle(1, Batch([10], 5))  # before its barrier: processed
    ex._handle(1, Barrier(1, 5))  # aligned: snapshot, then the buffered batch runs
    ex.coordinator.finish()
    assert sink.committed == [("all", 1), ("all", 3), ("all", 13)]
    assert ex.buffer.buffered_records == 0
    meta = ex.store.written()[checkpoint_id]
    assert meta["positions"] == {"manual": {"a": 1, "b": 5}}
    ex._handle(0, End(2))
    ex._handle(1, End(5))
    ex._finish()
    assert sink.committed[-1] == ("all", 113)
    ex.coordinator.close()


@pytest.mark.parametrize(
    "call",
    [
        lambda b: b.blocked(None),
        lambda b: b.barrier(None, 1),
        lambda b: b.barrier(0, None),
        lambda b: b.push(None, "x", 1),
        lambda b: b.set_watermark(0, None),
        lambda b: b.end(None),
        lambda b: b.set_idle_timeout(None, 1.0),
        lambda b: b.set_idle_timeout(0, None),
        lambda b: b.delivered(None),
        lambda b: b.check_idle(None),
    ],
)
def test_none_for_a_typed_argument_raises_type_error(call: Any) -> None:
    with pytest.raises(TypeError):
        call(AlignmentBuffer(2, 5))
