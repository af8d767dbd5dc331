"""Channel threads: each source channel is read on its own thread into a bounded queue.

The queue is the backpressure: when the executor stops pulling from a channel
(its alignment buffer is full), the queue fills and the reading thread waits.
It is bounded in *records*, not batches (``CheckpointConfig.channel_capacity``):
the thread reads the next batch only while fewer records than that are queued,
so a queue never holds more than ``capacity - 1`` records plus one batch, and
what a barrier can wait behind does not grow with the number of batches.

Barriers are injected *by the reading thread*, between two batches, carrying
the channel's position at that point: everything read before the barrier is
covered by the checkpoint, everything after it is not. A thread waiting for
room injects a requested barrier at once. An aligned barrier goes to the back of
the queue. An *overtaking* one (unaligned checkpoints) goes to the front and
carries the batches it overtook: they are the channel's in-flight records,
stored as channel state, and stay queued to be processed after the snapshot.
Design: docs/runtime.md, "Barrier overtaking and queue bounds".
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from eoscore import failpoints
from eoscore.pipeline.sources import END, ChannelReader

log = logging.getLogger(__name__)

__all__ = ["Barrier", "Batch", "ChannelQueue", "ChannelThread", "End"]


class Batch:
    __slots__ = ("position", "records")

    def __init__(self, records: list[Any], position: Any) -> None:
        self.records = records
        self.position = position  # right after the last record


class Barrier:
    __slots__ = ("checkpoint_id", "overtaken", "position")

    def __init__(self, checkpoint_id: int, position: Any) -> None:
        self.checkpoint_id = checkpoint_id
        self.position = position
        #: Batches read before the barrier that it overtook in the queue, in order
        #: (empty for an aligned barrier). They are still queued behind it.
        self.overtaken: list[Batch] = []


class End:
    __slots__ = ("position",)

    def __init__(self, position: Any) -> None:
        self.position = position


Item = Batch | Barrier | End


class ChannelQueue:
    """One channel's items in order, bounded in records.

    The channel's thread asks for room (``wait_room``: fewer than ``capacity``
    records queued) *before* it reads a batch, then queues it whole, so the
    queue holds at most ``capacity - 1`` records plus one batch. Barriers and
    ends take no room. One thread puts (the channel's), one takes (the executor).
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"a channel queue holds at least one record, not {capacity}")
        self.capacity = capacity
        self.records = 0  # records queued now
        self._items: deque[Item] = deque()
        self._cond = threading.Condition()

    def __len__(self) -> int:
        return len(self._items)

    def wait_room(self, interrupted: Callable[[], object]) -> bool:
        """Wait until fewer than ``capacity`` records are queued (True), or until
        ``interrupted()`` (False: a barrier was requested, or the channel stops)."""
        with self._cond:
            while self.records >= self.capacity:
                if interrupted():
                    return False
                self._cond.wait(0.1)
        return True

    def put_batch(self, batch: Batch) -> None:
        """Queue ``batch`` (room was asked for before it was read)."""
        with self._cond:
            self._items.append(batch)
            self.records += len(batch.records)
            self._cond.notify_all()

    def put(self, item: Barrier | End) -> None:
        """Queue a barrier (aligned: behind everything) or the end of the channel."""
        with self._cond:
            self._items.append(item)
            self._cond.notify_all()

    def put_overtaking(self, barrier: Barrier) -> None:
        """Queue ``barrier`` ahead of every queued batch; they become its ``overtaken``."""
        with self._cond:
            barrier.overtaken = [it for it in self._items if isinstance(it, Batch)]
            self._items.appendleft(barrier)
            self._cond.notify_all()

    def wake(self) -> None:
        """Wake a thread waiting in ``put_batch`` or ``get`` (to look at its flags)."""
        with self._cond:
            self._cond.notify_all()

    def get(self) -> Item | None:
        """The next item, or None if there is none."""
        with self._cond:
            if not self._items:
                return None
            item = self._items.popleft()
            if isinstance(item, Batch):
                self.records -= len(item.records)
                self._cond.notify_all()
            return item

    def cut(self, checkpoint_id: int, timeout: float) -> tuple[Barrier | End, list[Batch]] | None:
        """Take barrier ``checkpoint_id`` out of the queue, for an unaligned checkpoint.

        Waits up to ``timeout`` seconds for the barrier (None if it did not come)
        or for the channel's end. Returns the barrier, or the ``End`` (left
        queued), with the batches read before it that are still queued, in
        order: the batches ahead of it and those it overtook. Those batches stay
        queued, to be processed after the snapshot.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                ahead: list[Batch] = []
                for k, item in enumerate(self._items):
                    if isinstance(item, Batch):
                        ahead.append(item)
                    elif isinstance(item, End):
                        return item, ahead
                    elif item.checkpoint_id == checkpoint_id:
                        del self._items[k]
                        return item, ahead + item.overtaken
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)


class ChannelThread:
    """Reads one channel on a daemon thread; the executor ``poll``s its queue."""

    def __init__(
        self,
        index: int,
        source: str,
        reader: ChannelReader,
        wakeup: threading.Event,
        *,
        capacity: int = 1_000,
        idle_sleep: float = 0.02,
    ) -> None:
        self.index = index
        self.source = source
        self.reader = reader
        self.name = reader.name
        self.queue = ChannelQueue(capacity)
        self._wakeup = wakeup
        self._idle = idle_sleep
        self._requests: deque[tuple[int, bool]] = deque()
        self._stop = threading.Event()
        self._nudge = threading.Event()  # cuts the idle sleep short
        self.error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, name=f"eoscore-{source}-{reader.name}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def request_barrier(self, checkpoint_id: int, *, overtake: bool = False) -> None:
        """Inject barrier ``checkpoint_id`` at the channel's next batch boundary.

        With ``overtake`` it goes to the front of the queue (unaligned checkpoint).
        """
        self._requests.append((checkpoint_id, overtake))
        self._nudge.set()
        self.queue.wake()

    def stop(self) -> None:
        self._stop.set()
        self._nudge.set()
        self.queue.wake()
        self._thread.join(timeout=5)
        self.reader.close()

    def poll(self) -> Item | None:
        return self.queue.get()

    def _inject(self) -> None:
        position = self.reader.position
        while self._requests:
            checkpoint_id, overtake = self._requests.popleft()
            failpoints.hit("source.before_barrier")
            barrier = Barrier(checkpoint_id, position())
            if overtake:
                self.queue.put_overtaking(barrier)
            else:
                self.queue.put(barrier)
            self._wakeup.set()

    def _run(self) -> None:
        reader = self.reader
        stopped, requests = self._stop.is_set, self._requests

        def interrupted() -> bool:
            return bool(requests) or stopped()

        try:
            while not stopped():
                if requests:
                    self._inject()
                # Room first, then read: no batch is ever held back outside the
                # queue, so a barrier requested meanwhile goes in right away.
                if not self.queue.wait_room(interrupted):
                    continue
                batch = reader.read()
                if batch is END:
                    self.queue.put(End(reader.position()))
                    self._wakeup.set()
                    return
                if batch is None or not batch:
                    if batch is None:
                        self._nudge.wait(self._idle)
                        self._nudge.clear()
                    continue
                assert isinstance(batch, list)
                self.queue.put_batch(Batch(batch, reader.position()))
                self._wakeup.set()
        except BaseException as exc:  # reported to the executor, which stops
            log.exception("channel %s/%s failed", self.source, self.name)
            self.error = exc
            self._wakeup.set()
