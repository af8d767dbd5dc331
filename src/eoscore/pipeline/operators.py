"""The operators a pipeline is made of: nodes that take and emit *batches*.

A batch is a list of values and, once timestamps are assigned, a parallel
int64 array of event times in microseconds (``None`` before; see
``eoscore.pipeline.eventtime``). Each node processes a whole batch
and hands its output to its downstream nodes; user functions are called per
record, the runtime's own work is per batch. Stateful nodes keep their state
in ``eoscore.state`` objects, which the checkpoint coordinator snapshots.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from typing import Any

import numpy as np
import numpy.typing as npt

from eoscore.pipeline.errors import PipelineError
from eoscore.pipeline.eventtime import Unit, to_ticks
from eoscore.state import Snapshottable, ValueState

__all__ = [
    "AggregateNode",
    "CoProcessNode",
    "FilterNode",
    "FlatMapNode",
    "KeyedAccess",
    "MapNode",
    "Node",
    "PassNode",
    "RuntimeContext",
    "SinkNode",
    "TimestampNode",
]

Times = npt.NDArray[np.int64] | None


class RuntimeContext:
    """What nodes may ask the executor: the channel a batch came from, watermarks."""

    def __init__(self) -> None:
        self.channel = -1  # index of the channel whose batch is being processed
        self.observe: Callable[[int, int], None] = lambda channel, mark: None


class Node:
    """One operator instance. ``push`` is called with a batch from input ``port``."""

    kind = "node"

    def __init__(self, name: str) -> None:
        self.name = name
        self.downstream: list[tuple[Node, int]] = []
        self.ctx = RuntimeContext()

    def connect_to(self, node: Node, port: int = 0) -> None:
        self.downstream.append((node, port))

    def emit(self, values: list[Any], times: Times) -> None:
        if values:
            for node, port in self.downstream:
                node.push(values, times, port)

    def push(self, values: list[Any], times: Times, port: int = 0) -> None:
        self.emit(values, times)

    def on_watermark(self, mark: int) -> None:
        """Event time reached ``mark`` (us): no record with an earlier time will come."""

    def states(self) -> dict[str, Snapshottable]:
        """State to checkpoint, by a name stable across restarts (any ``Snapshottable``)."""
        return {}

    def before_snapshot(self) -> None:
        """Move anything held outside ``states()`` into them (called at the barrier)."""

    def after_restore(self) -> None:
        """Rebuild derived structures from ``states()`` after a restore."""


class PassNode(Node):
    kind = "pass"


class MapNode(Node):
    kind = "map"

    def __init__(self, name: str, fn: Callable[[Any], Any]) -> None:
        super().__init__(name)
        self.fn = fn

    def push(self, values: list[Any], times: Times, port: int = 0) -> None:
        self.emit(list(map(self.fn, values)), times)


class FilterNode(Node):
    kind = "filter"

    def __init__(self, name: str, fn: Callable[[Any], bool]) -> None:
        super().__init__(name)
        self.fn = fn

    def push(self, values: list[Any], times: Times, port: int = 0) -> None:
        fn = self.fn
        if times is None:
            self.emit([v for v in values if fn(v)], None)
            return
        keep = [i for i, v in enumerate(values) if fn(v)]
        self.emit([values[i] for i in keep], times[np.asarray(keep, np.int64)])


class FlatMapNode(Node):
    kind = "flat_map"

    def __init__(self, name: str, fn: Callable[[Any], Iterable[Any]]) -> None:
        super().__init__(name)
        self.fn = fn

    def push(self, values: list[Any], times: Times, port: int = 0) -> None:
        out: list[Any] = []
        if times is None:
            for v in values:
                out.extend(self.fn(v))
            self.emit(out, None)
            return
        counts = np.empty(len(values), np.int64)
        for i, v in enumerate(values):
            before = len(out)
            out.extend(self.fn(v))
            counts[i] = len(out) - before
        self.emit(out, np.repeat(times, counts))


class TimestampNode(Node):
    """Assigns event times and reports the channel's bounded-out-of-orderness watermark.

    ``fn`` returns a record's time in ``unit`` (seconds by default) or as a
    ``datetime``; the batch is converted to int64 microseconds at once.
    ``out_of_orderness_us`` is the watermark's bound. ``idle_timeout``
    (seconds of processing time, or None) is read by the executor: the
    channels feeding this node are left out of the watermark once they
    delivered nothing for that long (``Stream.assign_timestamps``).
    """

    kind = "timestamps"

    def __init__(
        self,
        name: str,
        fn: Callable[[Any], Any],
        out_of_orderness_us: int,
        idle_timeout: float | None = None,
        unit: Unit = "s",
    ) -> None:
        super().__init__(name)
        self.fn = fn
        self.bound = out_of_orderness_us
        self.idle_timeout = idle_timeout
        self.unit = unit

    def push(self, values: list[Any], times: Times, port: int = 0) -> None:
        if not values:
            return
        try:
            stamped = to_ticks(list(map(self.fn, values)), self.unit)
        except PipelineError as exc:
            raise PipelineError(f"assign_timestamps {self.name!r}: {exc}") from None
        self.ctx.observe(self.ctx.channel, int(stamped.max()) - self.bound)
        self.emit(values, stamped)


class AggregateNode(Node):
    """Keyed running aggregate: emits ``(key, value)`` after every record."""

    kind = "aggregate"

    def __init__(
        self,
        name: str,
        key: Callable[[Any], Hashable],
        init: Callable[[], Any],
        add: Callable[[Any, Any], Any],
    ) -> None:
        super().__init__(name)
        self.key = key
        self.init = init
        self.add = add
        self.state = ValueState(f"{name}.acc")

    def push(self, values: list[Any], times: Times, port: int = 0) -> None:
        add, init, live = self.add, self.init, self.state.view().get
        touched: dict[Any, Any] = {}
        seen = touched.get
        out = []
        for k, v in zip(map(self.key, values), values, strict=True):
            acc = seen(k, _MISSING)
            if acc is _MISSING:
                acc = live(k, _MISSING)
            acc = add(init() if acc is _MISSING else acc, v)
            touched[k] = acc
            out.append((k, acc))
        self.state.put_many(touched)  # each key touched written once per batch
        self.emit(out, times)

    def states(self) -> dict[str, Snapshottable]:
        return {self.state.name: self.state}


_MISSING: Any = object()


class KeyedAccess:
    """The state of the current key, for user functions of a two-input operator."""

    def __init__(self, state: ValueState) -> None:
        self._state = state
        self.key: Hashable = None

    def get(self, default: Any = None) -> Any:
        return self._state.get(self.key, default)

    def put(self, value: Any) -> None:
        self._state.put(self.key, value)

    def clear(self) -> None:
        self._state.delete(self.key)


CoFunction = Callable[[KeyedAccess, Any], Iterable[Any]]


class CoProcessNode(Node):
    """Keyed two-input operator (joins): one function per input, shared keyed state."""

    kind = "co_process"

    def __init__(
        self,
        name: str,
        keys: tuple[Callable[[Any], Hashable], Callable[[Any], Hashable]],
        fns: tuple[CoFunction, CoFunction],
    ) -> None:
        super().__init__(name)
        self.keys = keys
        self.fns = fns
        self.state = ValueState(f"{name}.state")
        self.access = KeyedAccess(self.state)

    def push(self, values: list[Any], times: Times, port: int = 0) -> None:
        key, fn, access = self.keys[port], self.fns[port], self.access
        out: list[Any] = []
        counts = np.empty(len(values), np.int64)
        for i, v in enumerate(values):
            access.key = key(v)
            before = len(out)
            out.extend(fn(access, v))
            counts[i] = len(out) - before
        self.emit(out, None if times is None else np.repeat(times, counts))

    def states(self) -> dict[str, Snapshottable]:
        return {self.state.name: self.state}


class SinkNode(Node):
    """Hands batches to a two-phase sink (visible only once a checkpoint commits)."""

    kind = "sink"

    def __init__(self, name: str, sink: Any) -> None:
        super().__init__(name)
        self.sink = sink
        # A sink that needs event times or watermarks (a repartition topic) says so
        # by having ``write_timed(values, times)`` / ``on_watermark(mark)``.
        self._timed = getattr(sink, "write_timed", None)
        self._watch = getattr(sink, "on_watermark", None)

    def push(self, values: list[Any], times: Times, port: int = 0) -> None:
        if values:
            if self._timed is not None:
                self._timed(values, times)
            else:
                self.sink.write(values)

    def on_watermark(self, mark: int) -> None:
        if self._watch is not None:
            self._watch(mark)
