"""The native alignment buffer, and the executor's alignment driven item by item."""

from __future__ import annotations

import math
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
    ],
)
def test_none_for_a_typed_argument_raises_type_error(call: Any) -> None:
    with pytest.raises(TypeError):
        call(AlignmentBuffer(2, 5))
