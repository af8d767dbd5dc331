"""The pipeline's dedup operator: drops records whose key was seen before."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from eoscore.dedup import Deduplicator
from eoscore.pipeline.operators import Node, Times
from eoscore.state import Snapshottable, ValueState

__all__ = ["DedupNode"]


class DedupNode(Node):
    """Drops records whose key was seen before (``eoscore.dedup.Deduplicator``, with TTL)."""

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
        self.dedup = Deduplicator(capacity, ttl=ttl)
        self.state = ValueState(f"{name}.seen")

    def push(self, values: list[Any], times: Times, port: int = 0) -> None:
        keys = [self.key(v) for v in values]
        if self.ttl is not None and times is not None:
            fresh = self.dedup.check_and_add(keys, times)
        else:
            fresh = self.dedup.check_and_add(keys)
        if fresh.all():
            self.emit(values, times)
            return
        keep = fresh.nonzero()[0]
        values = [values[i] for i in keep.tolist()]
        self.emit(values, None if times is None else times[keep])

    def states(self) -> dict[str, Snapshottable]:
        return {self.state.name: self.state}

    def before_snapshot(self) -> None:
        self.state.put("snapshot", self.dedup.snapshot())

    def after_restore(self) -> None:
        data = self.state.get("snapshot")
        self.dedup = (
            Deduplicator.restore(data)
            if data is not None
            else Deduplicator(self.capacity, ttl=self.ttl)
        )
