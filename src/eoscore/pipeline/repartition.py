"""Repartitioning through a Kafka topic, inside the exactly-once transaction.

When ``key_by`` changes the key, the records of one key come from every input
partition, so the keyed stage cannot run next to the input. As in Kafka
Streams, the pipeline is cut in two *stages* at an internal topic:

- stage 1 (one task per input partition) ends in ``Repartition.sink``: a
  ``KafkaSink`` that writes each record to partition
  ``xxh3_64(key) % partitions`` of the topic, in the same transaction as its
  input offsets, so a record is in the topic exactly once;
- stage 2 (one task per partition of the topic) starts from
  ``Repartition.source`` (``read_committed``) and keeps the keyed state; its
  own sink's transaction commits its offsets on the internal topic.

Event time crosses the topic too. Each record carries its event time in a
header, and at every checkpoint a stage-1 task writes a *watermark marker* to
every partition of the topic, in that checkpoint's transaction: "input
partitions P have reached watermark w". A stage-2 channel's watermark is the
minimum over all input partitions of the last marker seen, so a slow stage-1
task holds windows back instead of having its records dropped as late. A
task whose input ended writes an infinite watermark; with
``stop_at_end=True`` a stage-2 channel ends once every input partition has.
"""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, cast

import numpy as np
from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from eoscore.hashing import xxh3_64
from eoscore.pipeline.errors import PipelineDefinitionError, PipelineError
from eoscore.pipeline.eventtime import BEFORE_TIME, END_OF_TIME
from eoscore.pipeline.kafka import KafkaSource, open_partition
from eoscore.pipeline.operators import Node, Times, TimestampNode
from eoscore.pipeline.sources import END, ChannelReader, EndOfInput
from eoscore.sinks.kafka import KafkaSink
from eoscore.state import Snapshottable, ValueState

__all__ = ["Repartition", "RepartitionSink", "RepartitionSource", "Routed"]

#: Header with a record's event time (big-endian int64 microseconds).
TIME_HEADER = "eoscore-t"
#: Header of a watermark marker: int64 watermark (us), then the int32 input partitions.
MARK_HEADER = "eoscore-wm"


def key_bytes(key: Any) -> bytes:
    """A key's bytes for partitioning: stable across processes and Python versions."""
    if isinstance(key, bytes):
        return key
    if isinstance(key, str):
        return key.encode("utf-8")
    if isinstance(key, bool) or key is None:
        return json.dumps(key).encode()
    if isinstance(key, int):
        return str(key).encode()
    return json.dumps(key, sort_keys=True, separators=(",", ":")).encode()


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _json_value(data: bytes) -> Any:
    return json.loads(data.decode())  # json.loads(bytes) first sniffs the encoding: slower


class Routed(NamedTuple):
    """One record of the internal topic as a ``RepartitionSource`` channel reads it.

    A data record has ``value`` (still encoded) and ``time``; a watermark
    marker has ``mark`` and the input partitions it speaks for in ``inputs``.
    """

    partition: int
    value: bytes | None
    time: int | None
    mark: int | None = None
    inputs: tuple[int, ...] = ()


def _pack_mark(mark: int, inputs: Sequence[int]) -> bytes:
    return struct.pack(f">q{len(inputs)}i", mark, *inputs)


def _unpack_mark(data: str | bytes | None) -> tuple[int, tuple[int, ...]]:
    if not isinstance(data, bytes) or len(data) < 8 or (len(data) - 8) % 4:
        size = len(data) if data is not None else 0
        raise PipelineError(f"malformed watermark marker ({size} bytes)")
    n = (len(data) - 8) // 4
    mark, *inputs = struct.unpack(f">q{n}i", data)
    return mark, tuple(inputs)


def _unpack_time(data: str | bytes | None) -> int:
    if not isinstance(data, bytes) or len(data) != 8:
        raise PipelineError("malformed event time header on a repartitioned record")
    return int(struct.unpack(">q", data)[0])


class Repartition:
    """An internal topic between two stages, partitioned by ``key``.

    ``upstream_topic`` is the topic stage 1 reads (its partitions are the
    inputs whose watermarks stage 2 waits for). ``encode``/``decode`` turn
    records into bytes and back (default: JSON).
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        *,
        partitions: int,
        upstream_topic: str,
        key: Callable[[Any], Any],
        encode: Callable[[Any], bytes] = _json_bytes,
        decode: Callable[[bytes], Any] = _json_value,
        replication: int = 1,
    ) -> None:
        if partitions < 1:
            raise PipelineDefinitionError("a repartition topic needs at least one partition")
        self.bootstrap = bootstrap
        self.topic = topic
        self.partitions = partitions
        self.upstream_topic = upstream_topic
        self.key = key
        self.encode = encode
        self.decode = decode
        self.replication = replication
        self._upstreams: int | None = None

    def partition_of(self, key: Any) -> int:
        return xxh3_64(key_bytes(key)) % self.partitions

    def _count(self, topic: str) -> int | None:
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        meta = admin.list_topics(topic, timeout=30).topics.get(topic)
        if meta is None:
            return None
        if meta.error is not None:
            if meta.error.code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                raise KafkaException(meta.error)
            return None
        return len(meta.partitions)

    def ensure_topic(self) -> None:
        """Create the topic if it is missing; refuse one with another partition count
        (records of a key would move to another partition and meet another state)."""
        count = self._count(self.topic)
        if count is None:
            admin = AdminClient({"bootstrap.servers": self.bootstrap})
            topic = NewTopic(self.topic, self.partitions, self.replication)
            for future in admin.create_topics([topic]).values():
                try:
                    future.result(30)
                except KafkaException as exc:
                    if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                        raise
            count = self.partitions
        if count != self.partitions:
            raise PipelineDefinitionError(
                f"repartition topic {self.topic!r} has {count} partitions, "
                f"the pipeline expects {self.partitions}"
            )

    def upstreams(self) -> int:
        """How many input partitions stage 1 reads (each one's watermark is awaited)."""
        if self._upstreams is None:
            count = self._count(self.upstream_topic)
            if count is None:
                raise PipelineDefinitionError(f"no upstream topic {self.upstream_topic!r}")
            self._upstreams = count
        return self._upstreams

    def sink(
        self,
        source: KafkaSource,
        transactional_id: str,
        *,
        name: str = "repartition",
        config: Mapping[str, Any] | None = None,
    ) -> RepartitionSink:
        """Stage 1's deciding sink: ``source`` is the stage's input (its offsets commit here)."""
        if source.topic != self.upstream_topic:
            raise PipelineDefinitionError(
                f"stage 1 reads {source.topic!r}, the repartition expects {self.upstream_topic!r}"
            )
        return RepartitionSink(self, source, transactional_id, name=name, config=config)

    def source(
        self,
        group_id: str,
        *,
        partitions: Sequence[int] | None = None,
        stop_at_end: bool = False,
        name: str = "repartition",
        batch_size: int = 2000,
    ) -> RepartitionSource:
        """Stage 2's input: the internal topic's records, decoded, with their event times."""
        return RepartitionSource(
            self,
            group_id,
            partitions=partitions,
            stop_at_end=stop_at_end,
            name=name,
            batch_size=batch_size,
        )


class RepartitionSink(KafkaSink):
    """Writes each record to its key's partition, with its event time, transactionally.

    At each checkpoint it also writes a watermark marker to every partition
    (inside the transaction), so stage 2 knows how far this task's input got.
    """

    def __init__(
        self,
        repartition: Repartition,
        source: KafkaSource,
        transactional_id: str,
        *,
        name: str,
        config: Mapping[str, Any] | None,
    ) -> None:
        super().__init__(repartition.bootstrap, repartition.topic, transactional_id, source,
                         name=name, config=config)
        self.repartition = repartition
        self.watermark = BEFORE_TIME
        self._sent = BEFORE_TIME  # the watermark of the last marker written
        self._inputs: tuple[int, ...] = ()

    def open(self, pipeline: str, worker: str) -> None:
        self.repartition.ensure_topic()
        self._inputs = tuple(self.source.partitions())
        super().open(pipeline, worker)

    def on_watermark(self, mark: int) -> None:
        self.watermark = mark

    def write_timed(self, values: Sequence[Any], times: Times) -> None:
        self.write(list(zip(values, times.tolist() if times is not None else [None] * len(values),
                            strict=True)))

    def _produce(self, records: Sequence[Any]) -> None:
        txn = self._txn
        rep = self.repartition
        for value, t in records:
            key = key_bytes(rep.key(value))
            part = xxh3_64(key) % rep.partitions
            headers: list[tuple[str, str | bytes | None]] | None = (
                None if t is None else [(TIME_HEADER, struct.pack(">q", t))]
            )
            txn.produce(self.topic, rep.encode(value), key, headers, part)
        txn.poll(0)

    def _before_flush(self, checkpoint_id: int) -> None:
        # A failed transaction fails the run (recovery starts a new sink), so a
        # marker written once need not be repeated until the watermark moves.
        if self.watermark <= self._sent:
            return
        self._sent = self.watermark
        header: list[tuple[str, str | bytes | None]] = [
            (MARK_HEADER, _pack_mark(self.watermark, self._inputs))
        ]
        txn = self._txn
        for part in range(self.repartition.partitions):
            txn.produce(self.topic, None, None, header, part)


class _RoutedChannel(ChannelReader):
    """One partition of the internal topic. Position: ``[offset, ended inputs]``."""

    def __init__(
        self,
        config: dict[str, Any],
        topic: str,
        partition: int,
        position: Any,
        batch: int,
        until: int | None,
    ) -> None:
        self.name = str(partition)
        self._partition = partition
        self._batch = batch
        self._until = until  # end after every one of this many inputs ended (stop_at_end)
        offset, ended = position if position is not None else (OFFSET_BEGINNING, [])
        self._ended: set[int] = set(ended)
        self._reached_end = False
        self._consumer, self._next = open_partition(config, topic, partition, offset)

    def _all_ended(self) -> bool:
        return self._until is not None and len(self._ended) >= self._until

    def read(self) -> list[Any] | EndOfInput | None:
        if self._reached_end or self._all_ended():
            return END
        out: list[Routed] = []
        for msg in self._consumer.consume(self._batch, timeout=0.1):
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    continue
                raise KafkaException(err)
            headers = dict(msg.headers() or ())
            offset = cast(int, msg.offset())
            self._next = offset + 1
            if MARK_HEADER in headers:
                mark, inputs = _unpack_mark(headers[MARK_HEADER])
                out.append(Routed(self._partition, None, None, mark, inputs))
                if mark >= END_OF_TIME:
                    self._ended.update(inputs)
                    if self._all_ended():
                        self._reached_end = True  # END answers the next read
                        break
                continue
            raw = headers.get(TIME_HEADER)
            t = None if raw is None else _unpack_time(raw)
            out.append(Routed(self._partition, msg.value(), t))
        return out or None

    def position(self) -> list[Any]:
        return [self._next, sorted(self._ended)]

    def close(self) -> None:
        self._consumer.close()


class RepartitionSource(KafkaSource):
    """The internal topic, one channel per partition; records are ``Routed``.

    Its node (``RoutedNode``) decodes the values, restores event times and
    turns markers into the channel's watermark.
    """

    def __init__(
        self,
        repartition: Repartition,
        group_id: str,
        *,
        partitions: Sequence[int] | None,
        stop_at_end: bool,
        name: str,
        batch_size: int,
    ) -> None:
        super().__init__(
            repartition.bootstrap,
            repartition.topic,
            group_id,
            name=name,
            stop_at_end=stop_at_end,
            partitions=partitions,
            batch_size=batch_size,
        )
        self.repartition = repartition

    def offset_of(self, position: Any) -> int:
        return int(position[0])

    def partitions(self) -> list[int]:
        return list(self.only) if self.only is not None else list(
            range(self.repartition.partitions)
        )

    def open(self, positions: Mapping[str, Any]) -> list[ChannelReader]:
        self.repartition.ensure_topic()
        until = self.repartition.upstreams() if self.stop_at_end else None
        return [
            _RoutedChannel(
                self.config, self.topic, p, positions.get(str(p)), self.batch_size, until
            )
            for p in self.partitions()
        ]

    def node(self, name: str) -> Node:
        return RoutedNode(name, self.repartition)

    def encode(self, records: Sequence[Any]) -> Any:
        return [
            [r.partition, None if r.value is None else base64.b64encode(r.value).decode("ascii"),
             r.time, r.mark, list(r.inputs)]
            for r in records
        ]

    def decode(self, data: Any) -> list[Any]:
        return [
            Routed(p, None if v is None else base64.b64decode(v), t, m, tuple(i))
            for p, v, t, m, i in data
        ]


class RoutedNode(TimestampNode):
    """Stage 2's first node: decoded values with their event times; markers -> watermark.

    The last watermark of every input partition, per internal partition, is
    operator state (checkpointed): a channel's watermark is their minimum.
    """

    kind = "routed"

    def __init__(self, name: str, repartition: Repartition) -> None:
        super().__init__(name, lambda v: 0, 0)
        self.repartition = repartition
        self.state = ValueState(f"{name}.marks")
        self.marks: dict[int, list[int]] = {}

    def push(self, values: list[Any], times: Times, port: int = 0) -> None:
        decode = self.repartition.decode
        out: list[Any] = []
        out_times: list[int] = []
        timed = True
        moved: set[int] = set()
        for r in values:
            if r.mark is None:
                out.append(decode(r.value))
                if r.time is None:
                    timed = False
                else:
                    out_times.append(r.time)
                continue
            marks = self.marks.get(r.partition)
            if marks is None:
                marks = self.marks[r.partition] = [BEFORE_TIME] * self.repartition.upstreams()
            for i in r.inputs:
                if 0 <= i < len(marks) and r.mark > marks[i]:
                    marks[i] = r.mark
            moved.add(r.partition)
        self.emit(out, np.asarray(out_times, np.int64) if timed else None)
        for part in moved:
            self.state.put(part, tuple(self.marks[part]))  # state values are never mutated
            self.ctx.observe(self.ctx.channel, min(self.marks[part]))

    def states(self) -> dict[str, Snapshottable]:
        return {self.state.name: self.state}

    def after_restore(self) -> None:
        # Inputs added since the checkpoint have not spoken yet: BEFORE_TIME until they do.
        n = self.repartition.upstreams()
        self.marks = {
            cast(int, k): [*v, *[BEFORE_TIME] * (n - len(v))] for k, v in self.state.items()
        }
