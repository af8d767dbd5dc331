"""Channel threads: each source channel is read on its own thread into a bounded queue.

The queue is the backpressure: when the executor stops pulling from a channel
(its alignment buffer is full), the queue fills and the reading thread waits.
Barriers are injected *by the reading thread*, between two batches, carrying
the channel's position at that point: everything before the barrier in the
queue is covered by the checkpoint, everything after it is not.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from typing import Any

from eoscore import failpoints
from eoscore.pipeline.sources import END, ChannelReader

log = logging.getLogger(__name__)

__all__ = ["Barrier", "Batch", "ChannelThread", "End"]


class Batch:
    __slots__ = ("position", "records")

    def __init__(self, records: list[Any], position: Any) -> None:
        self.records = records
        self.position = position  # right after the last record


class Barrier:
    __slots__ = ("checkpoint_id", "position")

    def __init__(self, checkpoint_id: int, position: Any) -> None:
        self.checkpoint_id = checkpoint_id
        self.position = position


class End:
    __slots__ = ("position",)

    def __init__(self, position: Any) -> None:
        self.position = position


Item = Batch | Barrier | End


class ChannelThread:
    """Reads one channel on a daemon thread; the executor ``poll``s its queue."""

    def __init__(
        self,
        index: int,
        source: str,
        reader: ChannelReader,
        wakeup: threading.Event,
        *,
        queue_batches: int = 4,
        idle_sleep: float = 0.02,
    ) -> None:
        self.index = index
        self.source = source
        self.reader = reader
        self.name = reader.name
        self.queue: queue.Queue[Item] = queue.Queue(maxsize=queue_batches)
        self._wakeup = wakeup
        self._idle = idle_sleep
        self._requests: deque[int] = deque()
        self._stop = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, name=f"eoscore-{source}-{reader.name}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def request_barrier(self, checkpoint_id: int) -> None:
        """Inject barrier ``checkpoint_id`` at the channel's next batch boundary."""
        self._requests.append(checkpoint_id)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.reader.close()

    def poll(self) -> Item | None:
        try:
            return self.queue.get_nowait()
        except queue.Empty:
            return None

    def get(self, timeout: float) -> Item | None:
        try:
            return self.queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def _put(self, item: Item) -> bool:
        while not self._stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
            except queue.Full:
                continue
            self._wakeup.set()
            return True
        return False

    def _run(self) -> None:
        reader = self.reader
        try:
            while not self._stop.is_set():
                while self._requests:
                    failpoints.hit("source.before_barrier")
                    if not self._put(Barrier(self._requests.popleft(), reader.position())):
                        return
                batch = reader.read()
                if batch is END:
                    self._put(End(reader.position()))
                    return
                if batch is None or not batch:
                    if batch is None:
                        self._stop.wait(self._idle)
                    continue
                assert isinstance(batch, list)
                if not self._put(Batch(batch, reader.position())):
                    return
        except BaseException as exc:  # reported to the executor, which stops
            log.exception("channel %s/%s failed", self.source, self.name)
            self.error = exc
            self._wakeup.set()
