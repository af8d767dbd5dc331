"""The executor: pulls batches from channels, runs the operator graph, aligns barriers.

One processing thread runs every operator (batches, not records, cross
between them); each source channel is read on its own thread. The executor
is the graph's single multi-input point, so barrier alignment happens here,
across all channels: see docs/runtime.md.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from eoscore import failpoints
from eoscore._native._align import AlignmentBuffer
from eoscore.pipeline.errors import CheckpointFailureReason, PipelineError, RecoveryError
from eoscore.pipeline.eventtime import BEFORE_TIME, END_OF_TIME, TIME_UNIT
from eoscore.pipeline.operators import Node, RuntimeContext, TimestampNode
from eoscore.pipeline.sources import Source
from eoscore.runtime.channels import Barrier, Batch, ChannelThread, End, Item
from eoscore.runtime.config import CheckpointConfig
from eoscore.runtime.coordinator import CheckpointCoordinator, CheckpointStats
from eoscore.runtime.store import FileCheckpointStore
from eoscore.state import Snapshottable

if TYPE_CHECKING:
    from eoscore.pipeline.builder import Pipeline

__all__ = ["Executor", "RunResult"]

BURST = 2  # items pulled from one channel before moving to the next
IDLE_CHECK = 0.005  # seconds between two idleness checks (when a channel has a timeout)
#: Channel state is stored per channel as the JSON text of ``Source.encode``: one
#: string for the checkpoint's own JSON, not thousands of records (7x cheaper).
CHANNEL_STATE_FORMAT = "json-text"


@dataclass
class RunResult:
    """What one run did."""

    recovered_from: int | None
    records_in: int
    late_records: int
    checkpoints: CheckpointStats
    seconds: float


class _Alignment:
    def __init__(self, attempt: int, checkpoint_id: int) -> None:
        self.attempt = attempt
        self.checkpoint_id = checkpoint_id
        self.started = time.monotonic()
        self.positions: dict[int, Any] = {}
        self.records_in = 0  # the executor's records_in when the barriers were requested


class Executor:
    """Runs a ``Pipeline`` with checkpoints into ``state_dir``."""

    def __init__(
        self,
        pipeline: Pipeline,
        state_dir: str | os.PathLike[str],
        checkpoints: CheckpointConfig | None = None,
        *,
        stop: threading.Event | None = None,
        worker: str = "0",
    ) -> None:
        if not pipeline.sources:
            raise PipelineError(f"pipeline {pipeline.name!r} has no source")
        self.pipeline = pipeline
        self.config = checkpoints or CheckpointConfig()
        self.stop_event = stop or threading.Event()
        self.ctx = RuntimeContext()
        self.ctx.observe = self._observe
        for node in pipeline.nodes:
            node.ctx = self.ctx
        self.order = _topological(pipeline.nodes)
        states: dict[str, Snapshottable] = {}
        for node in self.order:
            for name, state in node.states().items():
                if name in states:
                    raise PipelineError(f"two operators keep state named {name!r}")
                states[name] = state
        self.store = FileCheckpointStore(Path(state_dir), states, retained=self.config.retained)
        self.coordinator = CheckpointCoordinator(
            pipeline.name, self.store, pipeline.sinks, self.config, worker=worker
        )
        self.channels: list[ChannelThread] = []
        self._channel_source: list[tuple[Source, Node]] = []
        self.wakeup = threading.Event()
        self.positions: dict[int, Any] = {}
        self.watermark = BEFORE_TIME  # int64 microseconds (eoscore.pipeline.eventtime)
        self._idleness = False  # some channel has an idle timeout
        self._next_idle_check = 0.0
        self.records_in = 0
        self._attempt = 0
        self._align: _Alignment | None = None
        self._stop_at: int | None = None  # once stopping: the checkpoint to finish with
        self.buffer: AlignmentBuffer | None = None

    # ---- setup -------------------------------------------------------------------

    def _key(self, index: int) -> str:
        return f"{self._channel_source[index][0].name}/{self.channels[index].name}"

    def _open(self, meta: Mapping[str, Any] | None) -> None:
        positions = (meta or {}).get("positions", {})
        for source, node in self.pipeline.sources:
            for reader in source.open(positions.get(source.name, {})):
                ch = ChannelThread(
                    len(self.channels),
                    source.name,
                    reader,
                    self.wakeup,
                    capacity=self.config.channel_capacity,
                )
                self.channels.append(ch)
                self._channel_source.append((source, node))
                self.positions[ch.index] = reader.position()
        self.buffer = AlignmentBuffer(len(self.channels), self.config.alignment_capacity)
        timed = _watermark_sources(self.pipeline)
        marks = (meta or {}).get("watermarks", {})
        for i, (_, node) in enumerate(self._channel_source):
            if id(node) not in timed:
                self.buffer.set_watermark(i, math.inf)
                continue
            if self._key(i) in marks:
                self.buffer.set_watermark(i, _buffer_mark(_mark_from_json(marks[self._key(i)])))
            idle_timeout = timed[id(node)]
            if idle_timeout is not None:
                self.buffer.set_idle_timeout(i, idle_timeout)
                self._idleness = True
        for node in self.order:
            node.after_restore()
        # The pipeline's watermark may be above the minimum of the channels' own
        # (idle channels were left out of it): it never goes back, across recovery too.
        self._advance_watermark(_mark_from_json((meta or {}).get("watermark", BEFORE_TIME)))
        # Unaligned checkpoints: records that were in flight replay first, in order.
        inflight = (meta or {}).get("channel_state", {})
        as_text = (meta or {}).get("channel_state_format") == CHANNEL_STATE_FORMAT
        for i, (source, node) in enumerate(self._channel_source):
            data = inflight.get(self._key(i))
            if data and as_text:
                data = _decode_channel_state(self._key(i), data)
            if data:
                self._process(i, node, source.decode(data))

    # ---- the loop ------------------------------------------------------------------

    def run(self) -> RunResult:
        started = time.monotonic()
        try:
            recovered = self.coordinator.recover()
            self._open(recovered.meta)
            for ch in self.channels:
                ch.start()
            self._loop()
            late = sum(getattr(n, "late_records", 0) for n in self.order)
            return RunResult(
                recovered.checkpoint_id,
                self.records_in,
                late,
                self.coordinator.stats,
                time.monotonic() - started,
            )
        finally:
            for ch in self.channels:
                ch.stop()
            self.coordinator.close()

    def _loop(self) -> None:
        buffer = self.buffer
        assert buffer is not None
        coordinator = self.coordinator
        n = len(self.channels)
        start = 0
        while True:
            self.wakeup.clear()
            now = time.monotonic()
            self._maybe_trigger(now)
            progressed = False
            for k in range(n):
                i = (start + k) % n
                # A few items per channel per round: channels progress unevenly,
                # as they would across machines, so alignment really buffers.
                for _ in range(BURST):
                    if buffer.ended(i) or (buffer.blocked(i) and not buffer.has_room(i)):
                        break
                    item = self.channels[i].poll()
                    if item is None:
                        break
                    progressed = True
                    self._handle(i, item)
                    if isinstance(item, Batch):
                        # Between two batches, not once per round: behind a slow
                        # operator a round takes many batches, and neither the
                        # next trigger nor the end of the one in flight waits.
                        coordinator.poll()
                        self._maybe_trigger(time.monotonic())
            start = (start + 1) % n
            if self._idleness and now >= self._next_idle_check:
                self._next_idle_check = now + IDLE_CHECK
                self._check_idle(now)
            self._check_channels()
            if self._align is not None:
                self._check_alignment(now)
            coordinator.poll()
            if buffer.all_ended() and self._align is None:
                self._finish()
                return
            if self._stop_at is not None and self._align is None and not coordinator.busy:
                if coordinator.next_id > self._stop_at:
                    return
            if not progressed:
                self.wakeup.wait(0.02)

    def _maybe_trigger(self, now: float) -> None:
        """Start the next checkpoint when it is due (or, once stopping, the last one)."""
        assert self.buffer is not None
        if self._align is not None or self.buffer.all_ended():
            return
        stopping = self.stop_event.is_set() and self._stop_at is None
        if self.coordinator.due(now) or (stopping and not self.coordinator.busy):
            checkpoint_id = self._trigger()
            if stopping:
                self._stop_at = checkpoint_id

    def _check_channels(self) -> None:
        for ch in self.channels:
            if ch.error is not None:
                raise PipelineError(
                    f"source {ch.source!r} channel {ch.name!r} failed: {ch.error}"
                ) from ch.error

    def _check_idle(self, now: float) -> None:
        """Channels silent for their idle timeout leave the watermark minimum."""
        assert self.buffer is not None
        if self.buffer.check_idle(now):
            self._advance_watermark()

    def _finish(self) -> None:
        """Every channel ended: fire what is left and take a final checkpoint."""
        self._advance_watermark()
        self.coordinator.finish()
        cid = self.coordinator.begin_checkpoint()
        self._snapshot(cid, {}, {})
        self.coordinator.finish()

    # ---- items -----------------------------------------------------------------------

    def _handle(self, i: int, item: Item) -> None:
        buffer = self.buffer
        assert buffer is not None
        if isinstance(item, Batch):
            buffer.delivered(i)  # an idle channel is active again (even if blocked)
            if buffer.blocked(i):
                failpoints.hit("runtime.during_alignment")
                buffer.push(i, item, len(item.records))
                return
            self._apply(i, item)
        elif isinstance(item, Barrier):
            align = self._align
            if align is None or item.checkpoint_id != align.attempt:
                return  # a barrier of a cancelled checkpoint
            align.positions[i] = item.position
            if buffer.barrier(i, align.attempt) == 0:
                self._aligned()
        else:
            if buffer.blocked(i):
                buffer.push(i, item, 0)
                return
            self._apply(i, item)
            if self._align is not None:
                self._align.positions.setdefault(i, item.position)
                if buffer.missing() == 0:
                    self._aligned()

    def _apply(self, i: int, item: Batch | End) -> None:
        """Process a batch, or the end of a channel (no alignment logic)."""
        assert self.buffer is not None
        if isinstance(item, Batch):
            self._process(i, self._channel_source[i][1], item.records)
            self.positions[i] = item.position
            failpoints.hit("runtime.after_batch")
        else:
            self.positions[i] = item.position
            self.buffer.end(i)
            self._advance_watermark()

    def _process(self, i: int, node: Node, records: list[Any]) -> None:
        self.ctx.channel = i
        self.records_in += len(records)
        node.push(records, None)
        self._advance_watermark()

    def _observe(self, channel: int, mark: int) -> None:
        assert self.buffer is not None
        self.buffer.set_watermark(channel, float(mark))  # exact: |mark| < 2**53

    def _advance_watermark(self, floor: int = BEFORE_TIME) -> None:
        assert self.buffer is not None
        mark = max(_from_buffer(self.buffer.watermark()), floor)
        if mark > self.watermark:
            self.watermark = mark
            for node in self.order:
                node.on_watermark(mark)

    # ---- checkpoints -------------------------------------------------------------------

    def _trigger(self) -> int:
        """Request barriers on every open channel; unaligned, take the cut right away."""
        assert self.buffer is not None
        self._attempt += 1
        align = self._align = _Alignment(self._attempt, self.coordinator.begin_checkpoint())
        align.records_in = self.records_in
        overtake = self.config.unaligned
        for i, ch in enumerate(self.channels):
            if not self.buffer.ended(i):
                ch.request_barrier(self._attempt, overtake=overtake)
        if overtake:
            # The barriers go to the front of the queues: nothing is processed
            # until every channel delivered its barrier (docs/runtime.md).
            self._unaligned()
        return align.checkpoint_id

    def _check_alignment(self, now: float) -> None:
        align = self._align
        assert align is not None and self.buffer is not None
        waited = now - align.started
        if waited > self.config.timeout:
            self._release()
            self.coordinator.cancel(align.checkpoint_id, CheckpointFailureReason.TIMEOUT)
        elif (
            self.config.aligned_timeout is not None
            and waited > self.config.aligned_timeout
            and self.buffer.pending != -1
        ):
            self._unaligned()

    def _aligned(self) -> None:
        align = self._align
        assert align is not None
        self.coordinator.stats.aligned += 1
        self.coordinator.stats.barrier_records.append(self.records_in - align.records_in)
        self._snapshot(align.checkpoint_id, align.positions, {})
        self._release()

    def _unaligned(self) -> None:
        """The barrier overtakes: records in flight before it become channel state.

        For every channel that owes the barrier, the barrier is taken out of its
        queue (an overtaking one is at the front; an aligned one, after
        ``aligned_timeout``, anywhere). The batches read before it and still
        queued are the channel's state; they stay queued and are processed after
        the snapshot, in order, by the loop. Nothing is processed here.
        """
        align = self._align
        assert align is not None and self.buffer is not None
        state: dict[str, Any] = {}
        for i in self.buffer.open_channels():
            while (cut := self.channels[i].queue.cut(align.attempt, timeout=0.1)) is None:
                self._check_channels()
            mark, batches = cut
            align.positions[i] = mark.position
            if isinstance(mark, Barrier):
                self.buffer.barrier(i, align.attempt)
            records = [r for b in batches for r in b.records]
            self.coordinator.stats.channel_state_records += len(records)
            if records:
                encoded = self._channel_source[i][0].encode(records)
                state[self._key(i)] = msgspec.json.encode(encoded).decode("utf-8")
        self.coordinator.stats.unaligned += 1
        self.coordinator.stats.barrier_records.append(self.records_in - align.records_in)
        self._snapshot(align.checkpoint_id, align.positions, state)
        self._release()

    def _snapshot(self, checkpoint_id: int, barrier: Mapping[int, Any], state: Any) -> None:
        assert self.buffer is not None
        started = time.monotonic()
        positions: dict[str, dict[str, Any]] = {}
        marks: dict[str, int] = {}
        for i, ch in enumerate(self.channels):
            source = self._channel_source[i][0].name
            positions.setdefault(source, {})[ch.name] = barrier.get(i, self.positions[i])
            marks[self._key(i)] = _from_buffer(self.buffer.channel_watermark(i))
        for node in self.order:
            node.before_snapshot()
        extra = {
            "watermarks": marks,
            "watermark": self.watermark,
            "time_unit": TIME_UNIT,
            "channel_state": state,
            "channel_state_format": CHANNEL_STATE_FORMAT,
        }
        self.coordinator.snapshot(checkpoint_id, positions, extra)
        stall = time.monotonic() - started
        stats = self.coordinator.stats
        stats.last_stall = stall
        stats.max_stall = max(stats.max_stall, stall)

    def _release(self) -> None:
        assert self.buffer is not None
        self._align = None
        self.coordinator.stats.buffered_records += self.buffer.buffered_records
        pending = deque(self.buffer.release())
        while pending:
            i, item = pending.popleft()
            self._handle(i, item)
            if isinstance(item, Batch):
                self.coordinator.poll()  # the checkpoint just taken completes meanwhile


def _decode_channel_state(channel: str, data: Any) -> Any:
    """One channel's checkpointed in-flight records, from their JSON text."""
    if not isinstance(data, str):
        raise RecoveryError(f"channel {channel}: checkpointed channel state is not JSON text")
    try:
        return msgspec.json.decode(data)
    except msgspec.DecodeError as exc:
        raise RecoveryError(
            f"channel {channel}: checkpointed channel state is not valid JSON ({exc})"
        ) from None


def _from_buffer(mark: float) -> int:
    """A watermark from the alignment buffer (doubles; +-inf at the ends) as an int."""
    if math.isinf(mark):
        return END_OF_TIME if mark > 0 else BEFORE_TIME
    return int(mark)


def _buffer_mark(mark: int) -> float:
    if mark >= END_OF_TIME:
        return math.inf
    if mark <= BEFORE_TIME:
        return -math.inf
    return float(mark)


def _mark_from_json(mark: Any) -> int:
    if not isinstance(mark, int) or isinstance(mark, bool):
        raise PipelineError(f"checkpointed watermark {mark!r} is not an integer")
    return mark


def _topological(nodes: list[Node]) -> list[Node]:
    indegree = {id(n): 0 for n in nodes}
    for n in nodes:
        for d, _ in n.downstream:
            indegree[id(d)] += 1
    ready = deque(n for n in nodes if indegree[id(n)] == 0)
    order: list[Node] = []
    while ready:
        n = ready.popleft()
        order.append(n)
        for d, _ in n.downstream:
            indegree[id(d)] -= 1
            if indegree[id(d)] == 0:
                ready.append(d)
    if len(order) != len(nodes):
        raise PipelineError("the pipeline graph has a cycle")
    return order


def _watermark_sources(pipeline: Pipeline) -> dict[int, float | None]:
    """Source nodes from which a TimestampNode is reachable (their channels hold
    watermarks), by id, with the idle timeout of their channels: the smallest
    ``idle_timeout`` among those TimestampNodes, None if none has one."""
    found: dict[int, float | None] = {}
    for _, start in pipeline.sources:
        seen: set[int] = set()
        todo: list[Node] = [start]
        timeouts: list[float] = []
        timed = False
        while todo:
            node = todo.pop()
            if id(node) in seen:
                continue
            seen.add(id(node))
            if isinstance(node, TimestampNode):
                timed = True
                if node.idle_timeout is not None:
                    timeouts.append(node.idle_timeout)
            todo.extend(d for d, _ in node.downstream)
        if timed:
            found[id(start)] = min(timeouts, default=None)
    return found
