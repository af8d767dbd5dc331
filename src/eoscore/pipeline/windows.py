"""Event-time windows: tumbling and sliding, with allowed lateness and late output.

A window ``[start, end)`` fires when the watermark reaches ``end`` (no record
with an earlier time can still come). With ``allowed_lateness`` L its state
is kept until the watermark reaches ``end + L``; a record arriving in between
updates it and fires it again (an updated result). A record whose every
window is past ``end + L`` is *late*: it goes to the late side output. With
nothing connected there it is dropped, counted in ``late_records`` (summed
into ``RunResult.late_records``) and logged as a warning at most once per
``LATE_WARNING_INTERVAL`` seconds, so it never vanishes without a trace.
"""

from __future__ import annotations

import heapq
import logging
import math
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, NamedTuple, cast

from eoscore.pipeline.operators import Node, PassNode, Times, max_timestamp
from eoscore.state import ValueState

__all__ = ["LATE_WARNING_INTERVAL", "Sliding", "Tumbling", "WindowNode", "WindowResult"]

log = logging.getLogger(__name__)

#: Seconds between two warnings about late records dropped with no side output.
LATE_WARNING_INTERVAL = 10.0


class WindowResult(NamedTuple):
    """One window's result for one key."""

    key: Any
    start: float
    end: float
    value: Any


@dataclass(frozen=True)
class Tumbling:
    """Fixed, non-overlapping windows of ``size``, aligned to ``offset``."""

    size: float
    offset: float = 0

    def __post_init__(self) -> None:
        if self.size <= 0:
            raise ValueError(f"window size must be positive, not {self.size}")

    def assign(self, t: float) -> list[float]:
        return [t - ((t - self.offset) % self.size)]

    @property
    def length(self) -> float:
        return self.size


@dataclass(frozen=True)
class Sliding:
    """Windows of ``size`` starting every ``slide`` (each record is in size/slide windows)."""

    size: float
    slide: float
    offset: float = 0

    def __post_init__(self) -> None:
        if self.size <= 0 or self.slide <= 0:
            raise ValueError("sliding windows need a positive size and slide")
        if self.slide > self.size:
            raise ValueError(f"slide {self.slide} is larger than size {self.size} (gaps)")

    def assign(self, t: float) -> list[float]:
        last = t - ((t - self.offset) % self.slide)
        starts = []
        start = last
        while start > t - self.size:
            starts.append(start)
            start -= self.slide
        return starts

    @property
    def length(self) -> float:
        return self.size


Assigner = Tumbling | Sliding


def _exact(x: float) -> float:
    """Window bounds as ints when they are whole (stable keys, readable output)."""
    return int(x) if float(x).is_integer() else x


class WindowNode(Node):
    """Keyed windowed aggregate. State: ``(key, start) -> [accumulator, fired]``."""

    kind = "window"

    def __init__(
        self,
        name: str,
        key: Callable[[Any], Hashable],
        assigner: Assigner,
        init: Callable[[], Any],
        add: Callable[[Any, Any], Any],
        result: Callable[[Any], Any] | None,
        allowed_lateness: float,
    ) -> None:
        super().__init__(name)
        self.key = key
        self.assigner = assigner
        self.init = init
        self.add = add
        self.result = result
        self.lateness = allowed_lateness
        self.state = ValueState(f"{name}.windows")
        self.late = PassNode(f"{name}.late")
        self.watermark = -math.inf
        self._fire_at: list[tuple[float, float]] = []  # heap of (end, start) not yet fired
        self._clean_at: list[tuple[float, float]] = []  # heap of (end + lateness, start)
        self._keys: dict[float, set[Hashable]] = {}  # start -> keys with state
        self.late_records = 0
        self._warned_at = -math.inf  # monotonic time of the last dropped-late warning
        self._warned_count = 0  # late_records at that warning

    def _track(self, start: float, key: Hashable) -> None:
        keys = self._keys.get(start)
        if keys is None:
            keys = self._keys[start] = set()
            end = start + self.assigner.length
            heapq.heappush(self._fire_at, (end, start))
            heapq.heappush(self._clean_at, (end + self.lateness, start))
        keys.add(key)

    def push(self, values: list[Any], times: Times, port: int = 0) -> None:
        if times is None:
            raise ValueError(
                f"window {self.name!r}: records have no event time; "
                "call assign_timestamps(...) before window(...)"
            )
        state, key_fn, add, init = self.state, self.key, self.add, self.init
        mark, size, lateness = self.watermark, self.assigner.length, self.lateness
        late_values: list[Any] = []
        late_times: list[float] = []
        refire: set[tuple[Hashable, float]] = set()
        for v, t in zip(values, times, strict=True):
            key = key_fn(v)
            placed = False
            for start in self.assigner.assign(t):
                start = _exact(start)
                end = start + size
                if end + lateness <= mark:
                    continue  # this window is gone
                placed = True
                slot = state.get((key, start))
                if slot is None:
                    state.put((key, start), [add(init(), v), False])
                    self._track(start, key)
                else:
                    state.put((key, start), [add(slot[0], v), slot[1]])
                    if slot[1]:
                        refire.add((key, start))
            if not placed:
                late_values.append(v)
                late_times.append(t)
        if late_values:
            self.late_records += len(late_values)
            if self.late.downstream:
                self.late.emit(late_values, late_times)
            else:
                self._warn_dropped()
        if refire:
            self._fire(sorted(refire, key=lambda ks: ks[1]))

    def _warn_dropped(self) -> None:
        """Late records with no side output connected: warn, rate limited."""
        now = time.monotonic()
        if now - self._warned_at < LATE_WARNING_INTERVAL:
            return
        log.warning(
            "window %r dropped %d late records (%d in total; watermark %s, allowed "
            "lateness %s): nothing is connected to its late side output, "
            "connect .late() to keep them",
            self.name,
            self.late_records - self._warned_count,
            self.late_records,
            self.watermark,
            self.lateness,
        )
        self._warned_at, self._warned_count = now, self.late_records

    def _fire(self, windows: list[tuple[Hashable, float]]) -> None:
        out: list[Any] = []
        out_times: list[float] = []
        size, result = self.assigner.length, self.result
        for key, start in windows:
            slot = self.state.get((key, start))
            if slot is None:
                continue
            end = _exact(start + size)
            out.append(WindowResult(key, start, end, result(slot[0]) if result else slot[0]))
            out_times.append(max_timestamp(end))
            if self.lateness > 0:
                self.state.put((key, start), [slot[0], True])
            else:
                self.state.delete((key, start))
        self.emit(out, out_times)

    def on_watermark(self, mark: float) -> None:
        if mark <= self.watermark:
            return
        self.watermark = mark
        fire_at, clean_at = self._fire_at, self._clean_at
        while fire_at and fire_at[0][0] <= mark:
            _, start = heapq.heappop(fire_at)
            keys = self._keys.get(start, ())
            self._fire([(k, start) for k in keys if not self.state.get((k, start), [0, True])[1]])
        while clean_at and clean_at[0][0] <= mark:
            _, start = heapq.heappop(clean_at)
            for k in self._keys.pop(start, ()):
                self.state.delete((k, start))

    def states(self) -> dict[str, ValueState]:
        return {self.state.name: self.state}

    def after_restore(self) -> None:
        self._fire_at, self._clean_at, self._keys = [], [], {}
        for slot, _value in self.state.items():
            key, start = cast(tuple[Hashable, float], slot)
            self._track(start, key)
        self.watermark = -math.inf
