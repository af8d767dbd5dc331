"""The job the exactly-once chaos tests kill and restart (run as a subprocess).

FileSource (3 files) --+
                       +- union -> parse -> timestamps -> dedup -+-> tumbling -> sink A
slow FileSource (1) ---+                                         +-> sliding  -> sink B

The slow source's channel lags (it sleeps per small batch), so barriers reach
the executor at different times and alignment really buffers records.

Usage: python -m tests.pipeline.chaos_job INPUT_DIR STATE_DIR OUT_DIR [INTERVAL [SLOW_DELAY]]
       [--follow] [--hold-slow-barrier]

``--follow``: the files never end (appended lines are read); the job runs until killed.
``--hold-slow-barrier``: the slow channel delivers each barrier only after a fast
channel has put 5 batches behind the same barrier (see ``BarrierGate``): with
queues of 4 batches the executor has then pulled one of them while aligning, so
``runtime.during_alignment`` is certainly hit.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any

from eoscore.pipeline import (
    ChannelReader,
    EndOfInput,
    FileSource,
    Pipeline,
    Sliding,
    Tumbling,
    count,
    sum_of,
)
from eoscore.pipeline.sources import END
from eoscore.runtime import CheckpointConfig
from eoscore.sinks import FileSink

TUMBLING = Tumbling(100)
SLIDING = Sliding(200, 100)
OUT_OF_ORDERNESS = 60
#: Batches a fast channel puts behind a barrier before the slow one may deliver it:
#: the executor's queues hold at most 4 batches (``channel_capacity`` records), so it has pulled the
#: barrier and at least one batch behind it by then.
HOLD_BATCHES = 5


class _Slow(ChannelReader):
    def __init__(self, inner: ChannelReader, delay: float) -> None:
        self.inner = inner
        self.name = inner.name
        self.delay = delay

    def read(self) -> list[Any] | EndOfInput | None:
        time.sleep(self.delay)
        return self.inner.read()

    def position(self) -> Any:
        return self.inner.position()

    def close(self) -> None:
        self.inner.close()


class SlowFileSource(FileSource):
    """A FileSource whose channels sleep before every batch (a slow partition)."""

    delay = 0.015
    gate: BarrierGate | None = None

    def open(self, positions: Mapping[str, Any]) -> list[ChannelReader]:
        readers: list[ChannelReader] = [_Slow(r, self.delay) for r in super().open(positions)]
        if self.gate is not None:
            readers = [_Watched(r, self.gate, slow=True) for r in readers]
        return readers


class BarrierGate:
    """Holds the slow channel's barrier n until a fast channel is aligning on n.

    A channel thread (runtime/channels.py) calls ``reader.position()`` right after
    ``read()`` returned a batch or END, and otherwise only to inject a barrier; so
    a reader sees its barriers. Fast channel f after its n-th barrier: each new
    ``read()`` means the batch before it is in f's queue. After ``HOLD_BATCHES``
    such batches the executor has pulled f's barrier and a batch behind it; the
    slow channel still owed barrier n, so f was blocked and that batch went into
    the alignment buffer (``runtime.during_alignment``).
    """

    def __init__(self, timeout: float = 5.0) -> None:
        self.cond = threading.Condition()
        # Never wait forever: a fast channel that ends (or, following, runs dry) with
        # fewer than HOLD_BATCHES behind the barrier cannot tell when they are pulled.
        self.timeout = timeout
        self.fast: list[_Watched] = []

    def ready(self, n: int) -> bool:
        if any(f.barriers == n and f.queued >= HOLD_BATCHES for f in self.fast):
            return True
        # Nothing to align on: every fast channel ended with no batch behind barrier n.
        return all(f.ended and (f.barriers < n or f.behind == 0) for f in self.fast)

    def hold(self, n: int) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.ready(n), timeout=self.timeout)


class _Watched(ChannelReader):
    def __init__(self, inner: ChannelReader, gate: BarrierGate, *, slow: bool) -> None:
        self.inner = inner
        self.name = inner.name
        self.gate = gate
        self.slow = slow
        self.barriers = 0  # barriers injected so far
        self.behind = 0  # batches returned behind the last barrier
        self.queued = 0  # of which are in the queue for sure
        self.ended = False
        self._returned = True  # the executor asks the position once before the thread starts
        if not slow:
            gate.fast.append(self)

    def read(self) -> list[Any] | EndOfInput | None:
        with self.gate.cond:
            self.queued = self.behind  # the thread put the batch returned last
            self.gate.cond.notify_all()
        batch = self.inner.read()
        with self.gate.cond:
            if batch is END:
                self.ended = self._returned = True
                self.gate.cond.notify_all()
            elif batch:
                self._returned = True
                self.behind += 1
        return batch

    def position(self) -> Any:
        if self._returned:
            self._returned = False
        else:  # a barrier is being injected
            with self.gate.cond:
                self.barriers += 1
                self.behind = self.queued = 0
            if self.slow:
                self.gate.hold(self.barriers)
        return self.inner.position()

    def close(self) -> None:
        self.inner.close()


class _FastFileSource(FileSource):
    gate: BarrierGate | None = None

    def open(self, positions: Mapping[str, Any]) -> list[ChannelReader]:
        readers = super().open(positions)
        if self.gate is not None:
            readers = [_Watched(r, self.gate, slow=False) for r in readers]
        return readers


def add(acc: list[int], event: dict[str, Any]) -> list[int]:
    return [acc[0] + 1, acc[1] + event["v"]]


def build(
    input_dir: str,
    out_dir: str,
    slow_delay: float = SlowFileSource.delay,
    *,
    follow: bool = False,
    hold_slow_barrier: bool = False,
) -> Pipeline:
    p = Pipeline("chaos")
    fast_source = _FastFileSource(input_dir, pattern="events-[1-9].jsonl", follow=follow)
    slow_source = SlowFileSource(
        input_dir, pattern="events-0.jsonl", name="slow", read_bytes=8192, follow=follow
    )
    slow_source.delay = slow_delay
    if hold_slow_barrier:
        fast_source.gate = slow_source.gate = BarrierGate()
    fast = p.source(fast_source)
    slow = p.source(slow_source)
    events = (
        fast.union(slow)
        .map(json.loads)
        .assign_timestamps(lambda e: e["t"], out_of_orderness=OUT_OF_ORDERNESS)
        .dedup(lambda e: e["id"])
        .key_by(lambda e: e["k"])
    )
    events.window(TUMBLING).aggregate(lambda: [0, 0], add).sink(
        FileSink(f"{out_dir}/tumbling", name="tumbling")
    )
    events.window(SLIDING).aggregate(lambda: [0, 0], add).sink(
        FileSink(f"{out_dir}/sliding", name="sliding")
    )
    # The same windows with built-in aggregations (native state columns), written
    # in the generic ones' layout so one check covers both.
    # (Sliding windows natively: test_window_math's hypothesis test; kept out of
    # this run for the suite's time.)
    for assigner, name in ((TUMBLING, "tumbling-native"),):
        events.window(assigner).agg(n=count(), s=sum_of("v", "int64")).map(
            lambda w: [w.key, w.start, w.end, [w.value["n"], w.value["s"]]]
        ).sink(FileSink(f"{out_dir}/{name}", name=name))
    return p


def main() -> None:
    flags = {a for a in sys.argv[1:] if a.startswith("--")}
    unknown = flags - {"--follow", "--hold-slow-barrier"}
    if unknown:
        sys.exit(f"unknown options: {sorted(unknown)}")
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    input_dir, state_dir, out_dir = args[:3]
    interval = float(args[3]) if len(args) > 3 else 0.25
    delay = float(args[4]) if len(args) > 4 else SlowFileSource.delay
    pipeline = build(
        input_dir,
        out_dir,
        delay,
        follow="--follow" in flags,
        hold_slow_barrier="--hold-slow-barrier" in flags,
    )
    result = pipeline.run(state_dir, CheckpointConfig(interval=interval))
    print(json.dumps({"recovered_from": result.recovered_from, "records": result.records_in}))


if __name__ == "__main__":
    main()
