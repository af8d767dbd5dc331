"""Window assigners, in integer microseconds.

A window of a ``Sliding(size, slide, offset)`` assigner is identified by an
integer index ``i``: it is ``[i * slide + offset, i * slide + offset + size)``.
A record at ``t`` is in window ``i`` exactly when ``start(i) <= t < end(i)``,
that is for ``i`` in ``(floor((t - offset - size) / slide), floor((t - offset)
/ slide)]``, computed with integer floor division over the whole batch.
``Tumbling(size)`` is ``Sliding(size, size)``. Starts and ends are derived
from the index, so every logical window has one identity and is emitted once.

``Session(gap)`` windows are not assigned per record: they grow and merge per
key (``eoscore.pipeline.sessions``).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from eoscore.pipeline.errors import PipelineDefinitionError
from eoscore.pipeline.eventtime import Ticks, duration

__all__ = ["Assigner", "Session", "Sliding", "Tumbling", "WindowAssigner"]

Seconds = float | int | dt.timedelta
I64 = npt.NDArray[np.int64]


@dataclass(frozen=True)
class WindowAssigner:
    """Windows of ``size`` starting every ``slide``, aligned to ``offset`` (seconds)."""

    size: Seconds
    slide: Seconds
    offset: Seconds = 0
    size_us: int = field(init=False, repr=False, compare=False)
    slide_us: int = field(init=False, repr=False, compare=False)
    offset_us: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        size, slide = duration(self.size, "window size"), duration(self.slide, "window slide")
        if size <= 0 or slide <= 0:
            raise PipelineDefinitionError(
                f"windows need a positive size and slide, not {self.size} and {self.slide}"
            )
        if slide > size:
            raise PipelineDefinitionError(
                f"slide {self.slide} is larger than size {self.size} (records would fall in gaps)"
            )
        object.__setattr__(self, "size_us", size)
        object.__setattr__(self, "slide_us", slide)
        # The offset only matters modulo the slide.
        object.__setattr__(self, "offset_us", duration(self.offset, "window offset") % slide)

    @property
    def per_record(self) -> int:
        """The most windows one record is in."""
        return -(-self.size_us // self.slide_us)

    def start(self, index: int) -> int:
        return index * self.slide_us + self.offset_us

    def end(self, index: int) -> int:
        return index * self.slide_us + self.offset_us + self.size_us

    def last_index(self, t: Ticks) -> I64:
        """The index of the last window that contains each time."""
        return np.floor_divide(t - self.offset_us, self.slide_us)

    def first_closed(self, mark: int) -> int:
        """The smallest index whose window is not yet complete at watermark ``mark``
        (windows below it have ``end <= mark``)."""
        # end(i) <= mark  <=>  i <= floor((mark - offset - size) / slide)
        return (mark - self.offset_us - self.size_us) // self.slide_us + 1

    def assign(self, t: Ticks) -> tuple[I64, I64]:
        """(row, index) pairs: record ``row`` of the batch is in window ``index``.

        Rows come out grouped by window lag (all last windows, then all
        second-to-last ones...), each group in batch order.
        """
        last = self.last_index(t)
        k = self.per_record
        if k == 1:
            return np.arange(t.shape[0], dtype=np.int64), last
        rows_parts: list[I64] = []
        index_parts: list[I64] = []
        rows = np.arange(t.shape[0], dtype=np.int64)
        for lag in range(k):
            index = last - lag
            # Window ``index`` holds t while t < end(index) (start <= t holds already).
            inside = t < index * self.slide_us + (self.offset_us + self.size_us)
            if lag and not inside.all():
                rows_parts.append(rows[inside])
                index_parts.append(index[inside])
            else:
                rows_parts.append(rows)
                index_parts.append(index)
        return np.concatenate(rows_parts), np.concatenate(index_parts)


class Tumbling(WindowAssigner):
    """Fixed, non-overlapping windows of ``size`` seconds, aligned to ``offset``."""

    def __init__(self, size: Seconds, offset: Seconds = 0) -> None:
        super().__init__(size, size, offset)

    def __repr__(self) -> str:
        return f"Tumbling({self.size!r}, offset={self.offset!r})"


class Sliding(WindowAssigner):
    """Windows of ``size`` seconds starting every ``slide`` (each record in size/slide)."""


@dataclass(frozen=True)
class Session:
    """Per-key windows that close after ``gap`` seconds with no record of that key.

    A record at ``t`` opens ``[t, t + gap)``; windows of a key that overlap
    (share a microsecond) merge into one, so records less than ``gap`` apart
    share a session and a step of ``gap`` or more starts a new one. A session
    fires when the watermark reaches its end (``eoscore.pipeline.sessions``).
    """

    gap: Seconds
    gap_us: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        gap = duration(self.gap, "session gap")
        if gap <= 0:
            raise PipelineDefinitionError(f"a session gap must be positive, not {self.gap}")
        object.__setattr__(self, "gap_us", gap)


Assigner = WindowAssigner | Session
