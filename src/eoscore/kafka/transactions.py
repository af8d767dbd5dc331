"""Find lingering transactions and abort the open transaction of a transactional id.

A producer that crashed inside a transaction leaves it open until the
coordinator's ``transaction.timeout.ms`` runs out (default 60 s, up to 15 min).
Meanwhile the partition's last stable offset (LSO) stays put and every
``read_committed`` reader stops there. The symptom is visible from outside:
``list_offsets(latest)`` under ``read_committed`` returns the LSO, under
``read_uncommitted`` the high watermark (HWM); a gap that does not move is a
lingering transaction. The record at the LSO is the first of the open
transaction, so its timestamp says since when it is open.

confluent-kafka has no ListTransactions / DescribeTransactions / DescribeProducers
admin call, so the transactional id behind a stuck partition cannot be looked up
here: it comes from the operator (for :class:`ExactlyOnceProcessor` it is
``{group_id}.{instance_id}``), and :func:`abort_transaction` ends it by fencing.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, IsolationLevel, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._listoffsets import OffsetSpec

from eoscore.kafka.errors import KafkaProcessorError

__all__ = [
    "LingeringPartition",
    "abort_transaction",
    "find_lingering_transactions",
    "stable_offsets",
]

_TP = tuple[str, int]


@dataclass(frozen=True)
class LingeringPartition:
    """A partition whose LSO lags its HWM.

    ``open_since`` is the timestamp (epoch seconds) of the record at the LSO, the
    first record of the oldest open transaction, and ``open_for_s`` the time
    since; both ``None`` when that record cannot be read. ``stuck`` is true when
    the LSO did not move over the sampling window (always true without one).
    """

    topic: str
    partition: int
    last_stable_offset: int
    high_watermark: int
    open_since: float | None
    open_for_s: float | None
    stuck: bool

    @property
    def gap(self) -> int:
        return self.high_watermark - self.last_stable_offset


def _admin(target: str | AdminClient) -> AdminClient:
    return AdminClient({"bootstrap.servers": target}) if isinstance(target, str) else target


def _partitions(admin: AdminClient, topics: Iterable[str] | None, timeout_s: float) -> list[_TP]:
    metadata = admin.list_topics(timeout=timeout_s)
    names = (
        list(topics)
        if topics is not None
        else [name for name in metadata.topics if not name.startswith("__")]
    )
    out: list[_TP] = []
    for name in names:
        topic = metadata.topics.get(name)
        if topic is None or topic.error is not None:
            raise KafkaProcessorError(f"topic {name!r}: not found ({getattr(topic, 'error', '')})")
        out.extend((name, p) for p in sorted(topic.partitions))
    return out


def _latest(
    admin: AdminClient, tps: list[_TP], isolation: IsolationLevel, timeout_s: float
) -> dict[_TP, int]:
    if not tps:
        return {}
    latest = OffsetSpec.latest()  # type: ignore[no-untyped-call]
    request = {TopicPartition(t, p): latest for t, p in tps}
    futures = admin.list_offsets(request, isolation_level=isolation, request_timeout=timeout_s)
    return {
        (tp.topic, tp.partition): int(future.result(timeout=timeout_s).offset)
        for tp, future in futures.items()
    }


def stable_offsets(
    target: str | AdminClient, topics: Iterable[str] | None = None, *, timeout_s: float = 30.0
) -> dict[_TP, tuple[int, int]]:
    """``{(topic, partition): (last_stable_offset, high_watermark)}`` for every
    partition of ``topics`` (default: all topics not starting with ``__``)."""
    admin = _admin(target)
    tps = _partitions(admin, topics, timeout_s)
    lso = _latest(admin, tps, IsolationLevel.READ_COMMITTED, timeout_s)
    hwm = _latest(admin, tps, IsolationLevel.READ_UNCOMMITTED, timeout_s)
    return {tp: (lso[tp], hwm[tp]) for tp in tps}


def find_lingering_transactions(
    bootstrap: str,
    topics: Iterable[str] | None = None,
    *,
    window_s: float = 0.0,
    min_open_s: float = 0.0,
    timeout_s: float = 30.0,
) -> list[LingeringPartition]:
    """Partitions whose last stable offset lags the high watermark.

    With ``window_s > 0`` the LSO is sampled again after that long, and only
    partitions where it did not move are reported (a busy transactional topic
    always has short-lived gaps). ``min_open_s`` drops partitions whose open
    transaction is younger than that.
    """
    admin = AdminClient({"bootstrap.servers": bootstrap})
    offsets = stable_offsets(admin, topics, timeout_s=timeout_s)
    gaps = {tp: lh for tp, lh in offsets.items() if lh[0] < lh[1]}
    moved: set[_TP] = set()
    if window_s > 0 and gaps:
        time.sleep(window_s)
        again = _latest(admin, list(gaps), IsolationLevel.READ_COMMITTED, timeout_s)
        moved = {tp for tp, lso in again.items() if lso != gaps[tp][0]}
        gaps = {tp: lh for tp, lh in gaps.items() if tp not in moved}
    since = _first_record_times(bootstrap, {tp: lh[0] for tp, lh in gaps.items()}, timeout_s)
    now = time.time()
    found = []
    for (topic, partition), (lso, hwm) in sorted(gaps.items()):
        ts = since.get((topic, partition))
        age = None if ts is None else max(0.0, now - ts)
        if age is not None and age < min_open_s:
            continue
        found.append(LingeringPartition(topic, partition, lso, hwm, ts, age, True))
    return found


def _first_record_times(
    bootstrap: str, positions: dict[_TP, int], timeout_s: float
) -> dict[_TP, float]:
    """Timestamp (s) of the record at each given offset, read uncommitted."""
    if not positions:
        return {}
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"eoscore-txn-probe-{uuid.uuid4().hex[:8]}",
            "isolation.level": "read_uncommitted",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 50,
        }
    )
    out: dict[_TP, float] = {}
    try:
        consumer.assign([TopicPartition(t, p, o) for (t, p), o in positions.items()])
        deadline = time.monotonic() + min(timeout_s, 10.0)
        while len(out) < len(positions) and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None or msg.error() is not None:
                continue
            topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
            if topic is None or partition is None or offset is None:
                continue
            tp = (topic, partition)
            if tp not in out and offset >= positions[tp]:
                kind, ts = msg.timestamp()
                if kind != 0 and ts >= 0:  # 0 is TIMESTAMP_NOT_AVAILABLE
                    out[tp] = ts / 1000.0
                consumer.pause([TopicPartition(topic, partition)])
    finally:
        consumer.close()
    return out


def abort_transaction(
    bootstrap: str,
    transactional_id: str,
    *,
    timeout_s: float = 60.0,
    producer_config: dict[str, Any] | None = None,
) -> None:
    """Abort the open transaction of ``transactional_id`` (if any) now.

    A new producer with that id calls ``init_transactions``: the coordinator bumps
    the epoch (fencing the current owner, which gets a fenced error on its next
    write) and aborts the open transaction, which moves the LSO past it.
    """
    producer = Producer(
        {
            **(producer_config or {}),
            "bootstrap.servers": bootstrap,
            "transactional.id": transactional_id,
        }
    )
    try:
        producer.init_transactions(timeout_s)
    except KafkaException as exc:
        raise KafkaProcessorError(
            f"transactional.id {transactional_id!r}: init_transactions failed: {exc.args[0]}",
            exc.args[0],
        ) from exc
    finally:
        producer.flush(0)
