"""Per-key time-to-live for keyed state.

Every write stamps its key with the state's current time; a key whose stamp
is ``ttl.seconds`` or more behind the current time is expired: reads no longer
see it and it is deleted during normal work (a few keys per write, oldest
first) or by ``expire()``. The stamps are checkpointed with the values, so a
restored state expires exactly what the original would have.

Time is either processing time (``time.time()``, wall clock so it survives a
restart) or event time, advanced by the operator with ``advance_time`` (for
example to the watermark). Either way the state's clock never goes back, so
keys expire in write order and cleanup is O(1) per key.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Literal

__all__ = ["Clock", "Ttl"]

#: Keys expired per write during normal work (bounded, so writes stay O(1)).
CLEANUP_PER_WRITE = 2


@dataclass(frozen=True)
class Ttl:
    """Expire a key ``seconds`` after its last write, by processing or event time."""

    seconds: float
    time: Literal["processing", "event"] = "processing"

    def __post_init__(self) -> None:
        if not self.seconds > 0:
            raise ValueError(f"ttl seconds must be > 0, got {self.seconds!r}")
        if self.time not in ("processing", "event"):
            raise ValueError(f"ttl time must be 'processing' or 'event', got {self.time!r}")

    def to_json(self) -> dict[str, object]:
        return {"seconds": self.seconds, "time": self.time}

    @classmethod
    def from_json(cls, data: object) -> Ttl | None:
        if data is None:
            return None
        if not isinstance(data, dict):
            raise ValueError("ttl must be an object")
        return cls(float(data["seconds"]), data["time"])


class Clock:
    """The state's notion of now: monotonic, processing or event time."""

    def __init__(self, ttl: Ttl | None) -> None:
        self.event = ttl is not None and ttl.time == "event"
        self._now = 0.0 if self.event else time.time()

    def now(self) -> float:
        if not self.event:
            self._now = max(self._now, time.time())
        return self._now

    def advance(self, t: float) -> None:
        """Move event time forward to t (earlier values are ignored)."""
        if t > self._now:
            self._now = t


class Expiry:
    """Write stamps of keys, oldest first, for O(1) expiry."""

    def __init__(self, ttl: Ttl) -> None:
        self.ttl = ttl
        self.clock = Clock(ttl)
        self.stamps: OrderedDict[Hashable, float] = OrderedDict()

    def touch(self, key: Hashable) -> float:
        stamp = self.clock.now()
        self.stamps[key] = stamp
        self.stamps.move_to_end(key)
        return stamp

    def forget(self, key: Hashable) -> None:
        self.stamps.pop(key, None)

    def is_expired(self, key: Hashable) -> bool:
        stamp = self.stamps.get(key)
        return stamp is not None and self.clock.now() - stamp >= self.ttl.seconds

    def due(self, limit: int | None) -> list[Hashable]:
        """Up to ``limit`` expired keys, oldest first (they stay stamped)."""
        horizon = self.clock.now() - self.ttl.seconds
        out: list[Hashable] = []
        for key, stamp in self.stamps.items():
            if stamp > horizon or (limit is not None and len(out) >= limit):
                break
            out.append(key)
        return out
