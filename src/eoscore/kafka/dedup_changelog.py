"""The processor's dedup state, kept exactly as consistent as its offsets.

An in-memory dedup index forgets every key when the process dies, so a
duplicate that straddles a crash passes. :class:`DurableDedup` keeps one
``Deduplicator`` per input partition and writes each newly accepted key to a
compacted changelog topic *inside the transaction* that commits the input
offsets (Kafka Streams keeps its state stores the same way). A key is in the
changelog exactly when the offset of its record is committed.

* **Changelog layout**: one topic per input topic, ``<prefix>-<input topic>``,
  with the input's partition count. Input partition ``p`` writes only to
  changelog partition ``p``, so a new owner of ``p`` reads one partition that
  no one else writes. Record key: a type tag (``b``/``s``) and the dedup key;
  value: the record's timestamp in ms as 8 bytes big-endian.
* **Restore**: on assignment, after the partition's committed offset is
  stable (no transaction that could still add keys is open), the changelog
  partition is read to its last stable offset and replayed into a fresh
  ``Deduplicator``.
* **TTL**: each partition's deduplicator has its own clock, the largest
  record timestamp it has seen. One clock shared by all partitions would age
  a slow partition's keys by the fast one's time.
* **Retention**: without ``ttl_s`` the changelog is compacted only (every key
  is kept, like the in-memory set). With ``ttl_s`` it is ``compact,delete``
  with ``retention.ms`` = ``retention_s`` (default: 4 x ttl, at least 7 days);
  restore ignores entries the TTL has expired anyway. Kafka's retention runs
  on the broker's wall clock: inputs whose timestamps lag wall time by more
  than ``retention_s`` - ``ttl_s`` would lose live keys, so raise it then.
"""

from __future__ import annotations

import struct
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import Any, cast

import numpy as np
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from eoscore._native._dedup import Deduplicator
from eoscore.kafka.errors import KafkaProcessorError
from eoscore.kafka.txn import OutputRecord

__all__ = ["DurableDedup"]

_TP = tuple[str, int]
_TS = struct.Struct(">q")
_DAY_S = 86_400.0


def _encode_key(key: bytes | str) -> bytes:
    if isinstance(key, bytes):
        return b"b" + key
    if isinstance(key, str):
        return b"s" + key.encode("utf-8")
    raise KafkaProcessorError(f"dedup: a key must be bytes or str, not {type(key).__name__}")


def _decode_key(data: bytes) -> bytes | str:
    tag, body = data[:1], data[1:]
    if tag == b"b":
        return body
    if tag == b"s":
        return body.decode("utf-8")
    raise KafkaProcessorError(f"dedup changelog: a record key starts with {tag!r}, not b or s")


class DurableDedup:
    """Per-partition dedup whose keys commit with the offsets (see the module doc).

    ``changelog_prefix`` names the changelog topics; keep it per application
    (two applications sharing it would share keys). ``capacity`` presizes each
    partition's index.
    """

    def __init__(
        self,
        changelog_prefix: str,
        *,
        ttl_s: float | None = None,
        capacity: int = 100_000,
        retention_s: float | None = None,
        replication_factor: int = 1,
        restore_timeout_s: float = 120.0,
    ) -> None:
        if ttl_s is not None and ttl_s <= 0:
            raise KafkaProcessorError(f"dedup ttl_s must be positive, not {ttl_s}")
        self.prefix = changelog_prefix
        self.ttl_s = ttl_s
        self.capacity = capacity
        self.retention_s = retention_s
        self.replication_factor = replication_factor
        self.restore_timeout_s = restore_timeout_s
        self._indexes: dict[_TP, Deduplicator] = {}
        self._bootstrap = ""
        self._reader: Consumer | None = None
        self._known_topics: set[str] = set()

    # --- wiring (called by the processor) ----------------------------------------

    def bind(self, bootstrap: str) -> None:
        self._bootstrap = bootstrap

    def changelog_topic(self, topic: str) -> str:
        return f"{self.prefix}-{topic}"

    def index(self, tp: _TP) -> Deduplicator:
        """The partition's index (restored on assignment, else empty)."""
        index = self._indexes.get(tp)
        if index is None:
            index = self._indexes[tp] = self._new_index()
        return index

    def _new_index(self) -> Deduplicator:
        return Deduplicator(self.capacity, ttl=self.ttl_s, mode="exact")

    def check(self, keys: list[bytes | str], messages: Sequence[Any]) -> list[bool]:
        """True where the key is new to its partition's index; times move each clock."""
        ttl = self.ttl_s is not None
        if len(messages) and all(m.partition() == messages[0].partition() for m in messages) and (
            all(m.topic() == messages[0].topic() for m in messages)
        ):
            groups = {(messages[0].topic(), messages[0].partition()): list(range(len(keys)))}
        else:
            groups = {}
            for i, m in enumerate(messages):
                groups.setdefault((m.topic(), m.partition()), []).append(i)
        fresh = [False] * len(keys)
        for tp, rows in groups.items():
            part_keys = [keys[i] for i in rows]
            times = (
                np.fromiter((_timestamp_ms(messages[i]) / 1000.0 for i in rows), np.float64)
                if ttl
                else None
            )
            result = self.index(tp).check_and_add(part_keys, times).tolist()
            for i, new in zip(rows, result, strict=True):
                fresh[i] = new
        return fresh

    def live_keys(self, tp: _TP) -> int:
        return len(self._indexes[tp]) if tp in self._indexes else 0

    # --- the changelog -----------------------------------------------------------

    def records(self, accepted: Iterable[tuple[bytes | str, Any]]) -> list[OutputRecord]:
        """Changelog records for keys accepted in this transaction."""
        out = []
        prefix = self.prefix
        for key, msg in accepted:
            out.append(
                OutputRecord(
                    f"{prefix}-{msg.topic()}",
                    _TS.pack(_timestamp_ms(msg)),
                    _encode_key(key),
                    None,
                    msg.partition(),
                )
            )
        return out

    def ensure_topics(self, topics: Iterable[tuple[str, int]]) -> None:
        """Create missing changelog topics, ``(input topic, partition count)`` each."""
        todo = [(t, n) for t, n in topics if t not in self._known_topics]
        if not todo:
            return
        admin = AdminClient({"bootstrap.servers": self._bootstrap})
        config = {"cleanup.policy": "compact"}
        if self.ttl_s is not None:
            keep = self.retention_s if self.retention_s is not None else max(
                4 * self.ttl_s, 7 * _DAY_S
            )
            config = {"cleanup.policy": "compact,delete", "retention.ms": str(int(keep * 1000))}
        new = [
            NewTopic(self.changelog_topic(t), n, self.replication_factor, config=config)
            for t, n in todo
        ]
        for topic, future in admin.create_topics(new, operation_timeout=30).items():
            try:
                future.result()
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise KafkaProcessorError(
                        f"dedup: cannot create changelog topic {topic!r}: {exc.args[0].str()}"
                    ) from exc
        self._known_topics.update(t for t, _ in todo)

    def restore(self, partitions: Sequence[_TP]) -> None:
        """Rebuild the indexes of newly assigned partitions from their changelog."""
        if not partitions:
            return
        from eoscore.kafka.transactions import stable_offsets

        reader = self._reader_consumer()
        wanted = {(self.changelog_topic(t), p) for t, p in partitions}
        try:
            stable = stable_offsets(
                self._bootstrap, sorted({t for t, _ in wanted}), timeout_s=30.0
            )
        except KafkaException as exc:
            raise KafkaProcessorError(f"dedup: cannot read changelog offsets: {exc}") from exc
        ends = {tp: lso for tp, (lso, _hw) in stable.items() if tp in wanted and lso > 0}
        found: dict[_TP, dict[bytes | str, int]] = {
            (self.changelog_topic(t), p): {} for t, p in partitions
        }
        if ends:
            self._read(reader, ends, found)
        by_changelog = {(self.changelog_topic(t), p): (t, p) for t, p in partitions}
        for ctp, entries in found.items():
            index = self._new_index()
            if entries:
                items = sorted(entries.items(), key=lambda kv: kv[1])
                keys = [k for k, _ in items]
                times = np.fromiter((t / 1000.0 for _, t in items), dtype=np.float64)
                index.check_and_add(keys, times if self.ttl_s is not None else None)
            self._indexes[by_changelog[ctp]] = index

    def _read(
        self, reader: Consumer, ends: dict[_TP, int], found: dict[_TP, dict[bytes | str, int]]
    ) -> None:
        reader.assign([TopicPartition(t, p, 0) for t, p in ends])
        todo = dict(ends)
        deadline = time.monotonic() + self.restore_timeout_s
        try:
            while todo:
                if time.monotonic() > deadline:
                    raise KafkaProcessorError(
                        f"dedup: restoring {sorted(todo)} did not finish in "
                        f"{self.restore_timeout_s:.0f}s"
                    )
                for msg in reader.consume(10_000, 0.2):
                    err = msg.error()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            continue
                        raise KafkaProcessorError(f"dedup: reading the changelog: {err}")
                    tp = (cast(str, msg.topic()), cast(int, msg.partition()))
                    offset = cast(int, msg.offset())
                    value = msg.value()
                    if value is None or len(value) != 8:
                        raise KafkaProcessorError(
                            f"dedup changelog {tp[0]}[{tp[1]}]@{offset}: a value of "
                            f"{0 if value is None else len(value)} bytes, not 8"
                        )
                    found[tp][_decode_key(msg.key() or b"")] = _TS.unpack(value)[0]
                    if tp in todo and offset + 1 >= todo[tp]:
                        del todo[tp]
                for pos in reader.position([TopicPartition(t, p) for t, p in todo]):
                    if pos.offset >= 0 and pos.offset >= todo[(pos.topic, pos.partition)]:
                        del todo[(pos.topic, pos.partition)]
        finally:
            reader.unassign()

    def _reader_consumer(self) -> Consumer:
        if self._reader is None:
            self._reader = Consumer(
                {
                    "bootstrap.servers": self._bootstrap,
                    "group.id": f"eoscore-dedup-restore-{uuid.uuid4().hex}",
                    "isolation.level": "read_committed",
                    "enable.auto.commit": False,
                    "enable.partition.eof": True,
                    "auto.offset.reset": "earliest",
                    "fetch.wait.max.ms": 50,
                }
            )
        return self._reader

    def forget(self, partitions: Iterable[_TP]) -> None:
        for tp in partitions:
            self._indexes.pop(tp, None)

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None


def _timestamp_ms(msg: Any) -> int:
    kind, ts = msg.timestamp()
    if kind == 0 or ts is None or ts < 0:  # TIMESTAMP_NOT_AVAILABLE
        return int(time.time() * 1000)
    return int(ts)
