"""The pipeline's dedup operator: drops records whose key was seen before."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from eoscore.pipeline.operators import Node, Times
from eoscore.state import Snapshottable
from eoscore.state.dedup import DedupState

__all__ = ["DedupNode"]

_US = 1_000_000  # event time inside the pipeline: int64 microseconds


class DedupNode(Node):
    """Drops records whose key was seen before (an exact ``Deduplicator``, with TTL).

    ``ttl`` is in seconds (the public API); the state keeps it, and the event
    times it is given, in microseconds. The keys live in a ``DedupState``
    ("<name>.seen"), checkpointed incrementally in chunks (docs/dedup.md).
    """

    kind = "dedup"

    def __init__(
        self,
        name: str,
        key: Callable[[Any], int | str | bytes],
        capacity: int,
        ttl: float | None,
    ) -> None:
        super().__init__(name)
        self.key = key
        self.capacity = capacity
        self.ttl = ttl
        self.state = DedupState(
            f"{name}.seen",
            capacity,
            ttl=None if ttl is None else ttl * _US,
            time_scale=_US,
        )

    def push(self, values: list[Any], times: Times, port: int = 0) -> None:
        keys = [self.key(v) for v in values]
        fresh = self.state.check_and_add(
            keys, times if self.ttl is not None and times is not None else None
        )
        if fresh.all():
            self.emit(values, times)
            return
        keep = np.flatnonzero(fresh)
        self.emit([values[i] for i in keep.tolist()], None if times is None else times[keep])

    def states(self) -> dict[str, Snapshottable]:
        return {self.state.name: self.state}
