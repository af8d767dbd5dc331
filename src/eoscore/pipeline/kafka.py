"""``KafkaSource``: one channel per partition, ``read_committed``, positions in checkpoints.

Offsets are never auto-committed: a channel's position (the next offset to
read) goes into every checkpoint, and recovery reassigns each partition at
the decided position. With a ``KafkaSink`` the same offsets are also
committed inside its transaction (the decision), for tools that read them.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, cast

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from eoscore.pipeline.sources import END, ChannelReader, EndOfInput, Source

__all__ = ["KafkaRecord", "KafkaSource"]


class KafkaRecord(NamedTuple):
    """One record as a ``KafkaSource`` emits it."""

    key: bytes | None
    value: bytes | None
    timestamp: int  # milliseconds, as the broker or producer stamped it
    partition: int
    offset: int


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode("ascii")


def _unb64(data: str | None) -> bytes | None:
    return None if data is None else base64.b64decode(data)


def open_partition(
    config: dict[str, Any], topic: str, partition: int, offset: int
) -> tuple[Consumer, int]:
    """A consumer reading one partition from ``offset`` (or its beginning), and the
    offset of its first record."""
    consumer = Consumer(config)
    consumer.assign([TopicPartition(topic, partition, offset)])
    if offset < 0:  # OFFSET_BEGINNING: the first record is at the low watermark
        offset, _ = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=30)
    return consumer, offset


class _PartitionChannel(ChannelReader):
    def __init__(
        self,
        config: dict[str, Any],
        topic: str,
        partition: int,
        offset: int,
        batch: int,
        stop_at_end: bool,
    ) -> None:
        self.name = str(partition)
        self._topic = topic
        self._partition = partition
        self._batch = batch
        self._stop_at_end = stop_at_end
        self._reached_end = False
        self._consumer, self._next = open_partition(config, topic, partition, offset)

    def read(self) -> list[Any] | EndOfInput | None:
        if self._reached_end:
            return END
        out: list[Any] = []
        for msg in self._consumer.consume(self._batch, timeout=0.1):
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    if self._stop_at_end:
                        # The end event is delivered once: when it shares a batch
                        # with records, END is the answer to the next read.
                        if not out:
                            return END
                        self._reached_end = True
                    continue
                raise KafkaException(err)
            offset = cast(int, msg.offset())
            out.append(
                KafkaRecord(msg.key(), msg.value(), msg.timestamp()[1], self._partition, offset)
            )
            self._next = offset + 1
        return out or None

    def position(self) -> int:
        return self._next

    def close(self) -> None:
        self._consumer.close()


class KafkaSource(Source):
    """Records of ``topic`` (``KafkaRecord``), one channel per partition.

    ``stop_at_end=True`` ends each channel at the end of its partition (for
    bounded jobs and tests). ``partitions`` restricts the source to some
    partitions (one task per partition in ``eoscore.runtime.group``).
    ``group_id`` names the consumer group whose offsets a ``KafkaSink``
    commits; this source itself never commits.
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        group_id: str,
        *,
        name: str = "kafka",
        stop_at_end: bool = False,
        partitions: Sequence[int] | None = None,
        batch_size: int = 2000,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.group_id = group_id
        self.name = name
        self.stop_at_end = stop_at_end
        self.only = None if partitions is None else sorted(partitions)
        self.batch_size = batch_size
        self.config = {
            "bootstrap.servers": bootstrap,
            "group.id": group_id,
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
            **(config or {}),
        }

    def partitions(self) -> list[int]:
        """The partitions this source reads (all of the topic's, or those given)."""
        if self.only is not None:
            return list(self.only)
        consumer = Consumer(self.config)
        try:
            meta = consumer.list_topics(self.topic, timeout=30).topics[self.topic]
            if meta.error is not None:
                raise KafkaException(meta.error)
            return sorted(meta.partitions)
        finally:
            consumer.close()

    def offset_of(self, position: Any) -> int:
        """The Kafka offset (next to read) a channel's checkpointed position stands for."""
        return int(position)

    def open(self, positions: Mapping[str, Any]) -> list[ChannelReader]:
        return [
            _PartitionChannel(
                self.config,
                self.topic,
                p,
                int(positions.get(str(p), OFFSET_BEGINNING)),
                self.batch_size,
                self.stop_at_end,
            )
            for p in self.partitions()
        ]

    def encode(self, records: Sequence[Any]) -> Any:
        return [[_b64(r.key), _b64(r.value), r.timestamp, r.partition, r.offset] for r in records]

    def decode(self, data: Any) -> list[Any]:
        return [KafkaRecord(_unb64(k), _unb64(v), t, p, o) for k, v, t, p, o in data]
