"""Idle channels (``assign_timestamps(idle_timeout=...)``): a channel that stops
delivering holds every window back, unless it is marked idle after its timeout.

The threaded runs wait for outcomes (with a generous bound), never for a
duration; the executor driven item by item uses a fake clock."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from eoscore.pipeline import (
    ChannelReader,
    CollectingSink,
    EndOfInput,
    Pipeline,
    PipelineDefinitionError,
    Source,
    Tumbling,
    WindowResult,
)
from eoscore.pipeline.sources import END
from eoscore.runtime import CheckpointConfig, Executor, RunResult
from eoscore.runtime.channels import Barrier, Batch


def us(seconds: int) -> int:
    """The runtime's event time unit: microseconds."""
    return seconds * 1_000_000


BOUND = 30.0  # seconds an outcome may take before the test fails (a bug, never a pass)


class _FeedChannel(ChannelReader):
    def __init__(self, name: str, inbox: queue.Queue[list[Any] | None], offset: int) -> None:
        self.name = name
        self.inbox = inbox
        self.offset = offset

    def read(self) -> list[Any] | EndOfInput | None:
        try:
            batch = self.inbox.get_nowait()
        except queue.Empty:
            return None
        if batch is None:
            return END
        self.offset += len(batch)
        return batch

    def position(self) -> int:
        return self.offset


def records(channel: str, *times: float, weight: int = 1) -> list[tuple[str, float, int]]:
    return [(channel, t, weight) for t in times]


class Feed(Source):
    """Channels ``a`` and ``b``; the test hands each its batches of ``(channel, time, weight)``."""

    name = "feed"

    def __init__(self) -> None:
        self.inboxes: dict[str, queue.Queue[list[Any] | None]] = {
            "a": queue.Queue(),
            "b": queue.Queue(),
        }

    def open(self, positions: Mapping[str, Any]) -> list[ChannelReader]:
        return [
            _FeedChannel(name, inbox, int(positions.get(name, 0)))
            for name, inbox in self.inboxes.items()
        ]

    def send(self, channel: str, *times: float, weight: int = 1) -> None:
        self.inboxes[channel].put(records(channel, *times, weight=weight))

    def end(self) -> None:
        for inbox in self.inboxes.values():
            inbox.put(None)


def build(idle_timeout: float | None) -> tuple[Pipeline, Feed, list[tuple[float, int]]]:
    """Sums of weights per tumbling window of 10; ``fired`` sees each result as it fires."""
    feed = Feed()
    fired: list[tuple[float, int]] = []

    def seen(w: WindowResult) -> WindowResult:
        fired.append((w.start, w.value))
        return w

    p = Pipeline("idle")
    (
        p.source(feed)
        .assign_timestamps(lambda r: r[1], idle_timeout=idle_timeout)
        .key_by(lambda r: "all")
        .window(Tumbling(10))
        .aggregate(lambda: 0, lambda acc, r: acc + r[2])
        .map(seen)
        .sink(CollectingSink())
    )
    return p, feed, fired


def late_records(p: Pipeline) -> int:
    return sum(getattr(n, "late_records", 0) for n in p.nodes)


def wait_for(
    predicate: Callable[[], bool],
    what: str,
    thread: threading.Thread,
    tick: Callable[[], None] = lambda: None,
) -> None:
    deadline = time.monotonic() + BOUND
    while not predicate():
        tick()
        if not thread.is_alive():
            raise AssertionError(f"the executor stopped while waiting for {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"stuck waiting for {what}")
        time.sleep(0.01)


def start(ex: Executor) -> tuple[threading.Thread, list[RunResult | BaseException]]:
    outcome: list[RunResult | BaseException] = []

    def main() -> None:
        try:
            outcome.append(ex.run())
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=main, name="idle-test-executor", daemon=True)
    thread.start()
    return thread, outcome


def finish(thread: threading.Thread, outcome: list[RunResult | BaseException]) -> RunResult:
    thread.join(BOUND)
    assert not thread.is_alive(), "the executor did not finish"
    assert len(outcome) == 1
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return outcome[0]


def test_a_silent_channel_holds_windows_back_without_idle_timeout(tmp_path: Path) -> None:
    p, feed, fired = build(None)
    ex = Executor(p, tmp_path, CheckpointConfig(interval=0.02))
    thread, outcome = start(ex)
    feed.send("a", 1, 5, 12, 25)
    feed.send("b", 3)  # then nothing
    wait_for(lambda: ex.records_in == 5, "the records", thread)
    completed = ex.coordinator.stats.completed
    wait_for(lambda: ex.coordinator.stats.completed >= completed + 3, "checkpoints", thread)
    assert fired == [] and ex.watermark == us(3)
    assert ex.buffer is not None and not ex.buffer.is_idle(1)
    feed.end()  # every channel ended: what is left fires
    finish(thread, outcome)
    assert fired == [(0, 3), (10, 1), (20, 1)]


def test_an_idle_channel_lets_windows_fire_and_counts_again_once_it_resumes(
    tmp_path: Path,
) -> None:
    p, feed, fired = build(0.2)
    ex = Executor(p, tmp_path, CheckpointConfig(interval=0.02))
    thread, outcome = start(ex)
    feed.send("a", 1, 5, 12, 25)
    feed.send("b", 3)  # then nothing: idle after 0.2 s
    # a stays busy (records of weight 0): were it silent too, every channel
    # would be idle and the watermark would stay where it is.
    wait_for(
        lambda: len(fired) == 2,
        "the windows to fire",
        thread,
        tick=lambda: feed.send("a", 25, weight=0),
    )
    assert fired == [(0, 3), (10, 1)]
    assert ex.watermark == us(25)  # channel a's alone: b is idle (only a record ends that)
    assert ex.buffer is not None and ex.buffer.is_idle(1)
    feed.send("b", 15, 27)  # b resumes; 15 is behind the watermark: late
    wait_for(lambda: late_records(p) == 1, "b's records", thread)
    assert ex.buffer.channel_watermark(1) == us(27)
    feed.send("a", 31)
    feed.end()
    result = finish(thread, outcome)
    assert fired == [(0, 3), (10, 1), (20, 2), (30, 1)]  # b's 27 counted, 15 did not
    assert result.late_records == 1


class _Silent(ChannelReader):
    def __init__(self, name: str) -> None:
        self.name = name

    def read(self) -> list[Any] | EndOfInput | None:
        return None

    def position(self) -> Any:
        return 0


class _Manual(Feed):
    """Channels ``a`` and ``b`` whose items the test hands to the executor itself."""

    def open(self, positions: Mapping[str, Any]) -> list[ChannelReader]:
        return [_Silent("a"), _Silent("b")]


def manual(tmp_path: Path) -> tuple[Executor, Pipeline, list[tuple[float, int]]]:
    p, _, fired = build(1.0)
    p.sources = [(_Manual(), p.sources[0][1])]
    ex = Executor(p, tmp_path, CheckpointConfig(interval=None))
    ex._open(ex.coordinator.recover().meta)
    return ex, p, fired


def test_idleness_driven_item_by_item(tmp_path: Path) -> None:
    ex, _, fired = manual(tmp_path)
    buffer = ex.buffer
    assert buffer is not None
    ex._handle(0, Batch(records("a", 5, 12, 25), 3))
    ex._handle(1, Batch(records("b", 3), 1))
    ex._check_idle(100.0)  # starts the clocks
    ex._check_idle(100.5)
    assert ex.watermark == us(3) and fired == []
    ex._handle(0, Batch(records("a", 26), 4))
    ex._check_idle(101.5)  # b silent for its timeout, a delivered
    assert buffer.is_idle(1) and not buffer.is_idle(0)
    assert ex.watermark == us(26) and fired == [(0, 2), (10, 1)]

    # A checkpoint while b is idle: b still delivers its barrier.
    checkpoint_id = ex._trigger()
    ex._handle(0, Barrier(1, 4))
    assert ex._align is not None  # b's barrier is still owed
    ex._handle(1, Barrier(1, 1))
    assert ex._align is None
    ex.coordinator.finish()
    meta = ex.store.written()[checkpoint_id]
    assert meta["watermarks"] == {"feed/a": us(26), "feed/b": us(3)}
    assert meta["watermark"] == us(26)  # above the channels' minimum: b was left out

    # b resumes: its watermark counts again, holding a's back.
    ex._handle(1, Batch(records("b", 28), 2))
    assert not buffer.is_idle(1)
    ex._handle(0, Batch(records("a", 60), 5))
    assert ex.watermark == us(28) and fired == [(0, 2), (10, 1)]
    ex._handle(1, Batch(records("b", 45), 3))
    assert ex.watermark == us(45) and fired[2:] == [(20, 3)]

    # Both idle: idleness alone does not advance the watermark to a's 60.
    ex._check_idle(102.0)
    ex._check_idle(103.0)
    assert buffer.is_idle(0) and buffer.is_idle(1)
    assert ex.watermark == us(45) and fired[3:] == []
    ex.coordinator.close()


def test_recovery_starts_every_channel_active_from_the_checkpointed_watermark(
    tmp_path: Path,
) -> None:
    ex, _, _ = manual(tmp_path)
    ex._handle(0, Batch(records("a", 25), 1))
    ex._handle(1, Batch(records("b", 3), 1))
    ex._check_idle(0.0)
    ex._handle(0, Batch(records("a", 26), 2))
    ex._check_idle(1.0)  # b idle
    assert ex.watermark == us(26)
    ex._trigger()
    ex._handle(0, Barrier(1, 2))
    ex._handle(1, Barrier(1, 1))
    ex.coordinator.finish()
    ex.coordinator.close()

    again, p, fired = manual(tmp_path)
    buffer = again.buffer
    assert buffer is not None
    assert not buffer.is_idle(0) and not buffer.is_idle(1)
    assert buffer.channel_watermark(1) == us(3)
    assert again.watermark == us(26)  # not the channels' minimum, 3: it never goes back
    again._handle(1, Batch(records("b", 15), 2))
    assert late_records(p) == 1  # behind the restored watermark
    again._handle(0, Batch(records("a", 50), 4))
    assert again.watermark == us(26)  # b counts again after recovery
    assert fired == []  # [0, 10) and [10, 20) fired before the checkpoint
    again.coordinator.close()


@pytest.mark.parametrize("seconds", [0, -1.0, float("nan")])
def test_idle_timeout_must_be_positive(seconds: float) -> None:
    p = Pipeline("bad")
    with pytest.raises(PipelineDefinitionError, match="idle_timeout"):
        p.source(Feed()).assign_timestamps(lambda r: r[1], idle_timeout=seconds)
