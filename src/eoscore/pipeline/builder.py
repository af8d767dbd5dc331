"""The pipeline builder: a small typed API that wires operator nodes.

    p = Pipeline("orders")
    orders = p.source(FileSource("in/")).map(json.loads)
    totals = (orders.assign_timestamps(lambda o: o["ts"], out_of_orderness=5)
                    .dedup(lambda o: o["id"])
                    .key_by(lambda o: o["customer"])
                    .window(Tumbling(60))
                    .aggregate(lambda: 0, lambda acc, o: acc + o["amount"]))
    totals.sink(my_two_phase_sink)
    p.run(state_dir="state/", checkpoints=CheckpointConfig(interval=1.0))

Building only records the graph; ``run`` executes it (``eoscore.runtime``).
"""

from __future__ import annotations

import operator
import os
from collections.abc import Callable, Hashable, Iterable
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from eoscore.pipeline.aggregations import Aggregation
from eoscore.pipeline.assigners import Assigner, Session, WindowAssigner
from eoscore.pipeline.dedup import DedupNode
from eoscore.pipeline.errors import PipelineDefinitionError
from eoscore.pipeline.eventtime import Unit, duration
from eoscore.pipeline.operators import (
    AggregateNode,
    CoFunction,
    CoProcessNode,
    FilterNode,
    FlatMapNode,
    MapNode,
    Node,
    PassNode,
    SinkNode,
    TimestampNode,
)
from eoscore.pipeline.sources import Source
from eoscore.pipeline.windows import WindowNode, WindowResult
from eoscore.sinks.two_phase import TwoPhaseSink

if TYPE_CHECKING:
    from eoscore.pipeline.sessions import SessionNode
    from eoscore.runtime.config import CheckpointConfig
    from eoscore.runtime.executor import RunResult

__all__ = ["ConnectedStreams", "KeyedStream", "Pipeline", "Stream", "WindowedStream"]

T = TypeVar("T")
U = TypeVar("U")
A = TypeVar("A")
K = TypeVar("K", bound=Hashable)


class Pipeline:
    """A dataflow graph: sources, operators, sinks. Build it the same way on every start."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.nodes: list[Node] = []
        self.sources: list[tuple[Source, Node]] = []
        self.sinks: list[TwoPhaseSink] = []

    def _add(self, node: Node) -> Node:
        self.nodes.append(node)
        return node

    def _name(self, kind: str, name: str | None) -> str:
        return name or f"{len(self.nodes):03d}-{kind}"

    def source(self, source: Source) -> Stream[Any]:
        """A stream of the source's records (``str`` lines for a ``FileSource``)."""
        if any(s.name == source.name for s, _ in self.sources):
            raise PipelineDefinitionError(f"two sources named {source.name!r}; name them apart")
        node = source.node(f"source-{source.name}")
        self._add(node)
        self.sources.append((source, node))
        return Stream(self, node)

    def run(
        self,
        state_dir: str | os.PathLike[str],
        checkpoints: CheckpointConfig | None = None,
        **options: Any,
    ) -> RunResult:
        """Recover from ``state_dir`` and process until every source ends (or ``stop``)."""
        from eoscore.runtime.executor import Executor

        return Executor(self, state_dir, checkpoints, **options).run()


class Stream(Generic[T]):
    """Records of type ``T`` flowing in batches."""

    def __init__(self, pipeline: Pipeline, node: Node) -> None:
        self.pipeline = pipeline
        self.node = node

    def _then(self, node: Node, port: int = 0) -> Node:
        self.pipeline._add(node)
        self.node.connect_to(node, port)
        return node

    def map(self, fn: Callable[[T], U], *, name: str | None = None) -> Stream[U]:
        return Stream(self.pipeline, self._then(MapNode(self.pipeline._name("map", name), fn)))

    def filter(self, fn: Callable[[T], bool], *, name: str | None = None) -> Stream[T]:
        node = FilterNode(self.pipeline._name("filter", name), fn)
        return Stream(self.pipeline, self._then(node))

    def flat_map(self, fn: Callable[[T], Iterable[U]], *, name: str | None = None) -> Stream[U]:
        node = FlatMapNode(self.pipeline._name("flat_map", name), fn)
        return Stream(self.pipeline, self._then(node))

    def assign_timestamps(
        self,
        fn: Callable[[T], Any] | str | int,
        *,
        out_of_orderness: float = 0,
        idle_timeout: float | None = None,
        unit: Unit = "s",
        name: str | None = None,
    ) -> Stream[T]:
        """Event times from ``fn``; watermark per channel = max time seen - ``out_of_orderness``.

        ``fn`` returns a number in ``unit`` (``"s"``, the default, ``"ms"`` or
        ``"us"``) or a ``datetime`` (a field name or index ``f`` means
        ``record[f]``); each batch is converted once to the
        runtime's int64 microseconds (``eoscore.pipeline.eventtime``).
        ``out_of_orderness`` is in seconds.

        The pipeline's watermark is the minimum over channels, so a channel
        that receives nothing holds every window back. With ``idle_timeout``
        (seconds of *processing* time, like Flink's ``withIdleness``) a
        channel that delivered no records for that long is idle: left out of
        the minimum until its next record. If every channel is idle the
        watermark stays where it is. The watermark never goes back, so records
        of a resumed channel that are behind it are late. Idleness depends on
        wall-clock timing, so a replay after recovery may put different
        records late; it is not checkpointed (all channels restart active).
        A channel feeding several ``assign_timestamps`` uses the smallest
        timeout given.
        """
        if idle_timeout is not None and not idle_timeout > 0:
            raise PipelineDefinitionError(
                f"idle_timeout must be a positive number of seconds (or None), not {idle_timeout}"
            )
        bound = duration(out_of_orderness, "out_of_orderness")
        if bound < 0:
            raise PipelineDefinitionError("out_of_orderness must not be negative")
        getter = operator.itemgetter(fn) if isinstance(fn, (str, int)) else fn
        node = TimestampNode(
            self.pipeline._name("timestamps", name), getter, bound, idle_timeout, unit
        )
        return Stream(self.pipeline, self._then(node))

    def dedup(
        self,
        key: Callable[[T], int | str | bytes],
        *,
        capacity: int = 1_000_000,
        ttl: float | None = None,
        name: str | None = None,
    ) -> Stream[T]:
        """Drop records whose key was seen (within ``ttl`` of event time, if given)."""
        node = DedupNode(self.pipeline._name("dedup", name), key, capacity, ttl)
        return Stream(self.pipeline, self._then(node))

    def union(self, *others: Stream[T], name: str | None = None) -> Stream[T]:
        node = PassNode(self.pipeline._name("union", name))
        self._then(node)
        for other in others:
            if other.pipeline is not self.pipeline:
                raise PipelineDefinitionError("union of streams of different pipelines")
            other.node.connect_to(node)
        return Stream(self.pipeline, node)

    def key_by(self, key: Callable[[T], K] | str | int) -> KeyedStream[T, K]:
        """Key each record by ``key(record)``, or by ``record[key]`` for a field name/index."""
        getter = operator.itemgetter(key) if isinstance(key, (str, int)) else key
        fn = cast("Callable[[T], K]", getter)
        return KeyedStream(self.pipeline, self.node, fn)

    def sink(self, sink: TwoPhaseSink) -> None:
        """Write to a two-phase sink; output becomes visible at each checkpoint's commit."""
        if any(s.name == sink.name for s in self.pipeline.sinks):
            raise PipelineDefinitionError(f"two sinks named {sink.name!r}; name them apart")
        self.pipeline.sinks.append(sink)
        self._then(SinkNode(f"sink-{sink.name}", sink))


class KeyedStream(Stream[T], Generic[T, K]):
    """A stream with a key per record; keyed operators keep state per key."""

    def __init__(self, pipeline: Pipeline, node: Node, key: Callable[[T], K]) -> None:
        super().__init__(pipeline, node)
        self.key = key

    def aggregate(
        self,
        init: Callable[[], A],
        add: Callable[[A, T], A],
        *,
        name: str | None = None,
    ) -> Stream[tuple[K, A]]:
        """Running aggregate per key: emits ``(key, accumulator)`` after each record."""
        node = AggregateNode(self.pipeline._name("aggregate", name), self.key, init, add)
        return Stream(self.pipeline, self._then(node))

    def reduce(self, fn: Callable[[T, T], T], *, name: str | None = None) -> Stream[tuple[K, T]]:
        """Running reduce per key: emits ``(key, reduced)`` after each record."""
        first: Any = object()

        def add(acc: Any, value: T) -> T:
            return value if acc is first else fn(acc, value)

        return self.aggregate(lambda: first, add, name=name)

    def window(self, assigner: Assigner, *, allowed_lateness: float = 0) -> WindowedStream[T, K]:
        return WindowedStream(self, assigner, allowed_lateness)

    def connect(self, other: KeyedStream[U, K]) -> ConnectedStreams[T, U, K]:
        """Two keyed inputs into one operator sharing keyed state (joins)."""
        return ConnectedStreams(self, other)


class WindowedStream(Generic[T, K]):
    def __init__(self, keyed: KeyedStream[T, K], assigner: Assigner, lateness: float) -> None:
        if not isinstance(assigner, (WindowAssigner, Session)):
            raise PipelineDefinitionError(
                f"window() takes Tumbling, Sliding or Session, not {assigner!r}"
            )
        self.keyed = keyed
        self.assigner = assigner
        self.lateness = duration(lateness, "allowed_lateness")
        if self.lateness < 0:
            raise PipelineDefinitionError("allowed_lateness must not be negative")

    def _node(self, name: str | None, **how: Any) -> WindowOutput:
        pipeline = self.keyed.pipeline
        node: WindowNode | SessionNode
        if isinstance(self.assigner, Session):
            from eoscore.pipeline.sessions import SessionNode
            node = SessionNode(
                pipeline._name("session", name),
                self.keyed.key,
                self.assigner,
                self.lateness,
                **how,
            )
        else:
            node = WindowNode(
                pipeline._name("window", name), self.keyed.key, self.assigner, self.lateness, **how
            )
        self.keyed._then(node)
        pipeline._add(node.late)
        return WindowOutput(pipeline, node)

    def agg(self, *, name: str | None = None, **aggregations: Aggregation) -> WindowOutput:
        """Built-in aggregations, folded natively per batch:
        ``.agg(total=sum_of("amount"), n=count())`` emits
        ``WindowResult(key, start, end, {"total": ..., "n": ...})``."""
        if not aggregations:
            raise PipelineDefinitionError("agg() needs at least one aggregation, e.g. n=count()")
        for out, spec in aggregations.items():
            if not isinstance(spec, Aggregation):
                raise PipelineDefinitionError(
                    f"agg({out}=...) takes a built-in aggregation (count(), sum_of(...)), "
                    f"not {spec!r}"
                )
        return self._node(name, aggs=dict(aggregations))

    def aggregate(
        self,
        init: Callable[[], A],
        add: Callable[[A, T], A],
        result: Callable[[A], Any] | None = None,
        *,
        merge: Callable[[A, A], A] | None = None,
        name: str | None = None,
    ) -> WindowOutput:
        """One ``WindowResult(key, start, end, value)`` per key and window when it fires.

        ``merge(a, b)`` combines two accumulators; session windows need it.
        """
        how: dict[str, Any] = {"init": init, "add": add, "result": result}
        if isinstance(self.assigner, Session):
            how["merge"] = merge
        return self._node(name, **how)

    def reduce(self, fn: Callable[[T, T], T], *, name: str | None = None) -> WindowOutput:
        def add(acc: list[Any], value: T) -> list[Any]:
            return [fn(acc[0], value)] if acc else [value]

        def merge(a: list[Any], b: list[Any]) -> list[Any]:
            return [fn(a[0], b[0])] if a and b else a or b

        return self.aggregate(list, add, lambda acc: acc[0], merge=merge, name=name)


class WindowOutput(Stream[WindowResult]):
    """Window results; ``late()`` is the side output of records that came too late."""

    def __init__(self, pipeline: Pipeline, node: WindowNode | SessionNode) -> None:
        super().__init__(pipeline, node)
        self._window = node

    def late(self) -> Stream[Any]:
        return Stream(self.pipeline, self._window.late)


class ConnectedStreams(Generic[T, U, K]):
    def __init__(self, left: KeyedStream[T, K], right: KeyedStream[U, K]) -> None:
        if left.pipeline is not right.pipeline:
            raise PipelineDefinitionError("connect of streams of different pipelines")
        self.left = left
        self.right = right

    def process(
        self, left: CoFunction, right: CoFunction, *, name: str | None = None
    ) -> Stream[Any]:
        """``left(state, record)`` / ``right(state, record)`` return records to emit;
        ``state`` is the record's key's state (``get``/``put``/``clear``)."""
        pipeline = self.left.pipeline
        node = CoProcessNode(
            pipeline._name("connect", name), (self.left.key, self.right.key), (left, right)
        )
        self.left._then(node, 0)
        self.right.node.connect_to(node, 1)
        return Stream(pipeline, node)
