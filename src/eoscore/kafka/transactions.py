"""Find lingering transactions, say whose they are, and abort one by transactional id.

A producer that crashed inside a transaction leaves it open until the
coordinator's ``transaction.timeout.ms`` runs out (default 60 s, up to 15 min).
Meanwhile the partition's last stable offset (LSO) stays put and every
``read_committed`` reader stops there. The symptom is visible from outside:
``list_offsets(latest)`` under ``read_committed`` returns the LSO, under
``read_uncommitted`` the high watermark (HWM); a gap that does not move is a
lingering transaction.

Whose it is and since when it is open come from the transaction coordinators,
the way Kafka's ``kafka-transactions.sh`` finds them: ListTransactions on every
broker, DescribeTransactions on the coordinator of each open one (its
partitions and the coordinator's transaction start time). confluent-kafka 2.16
has neither call, so :mod:`eoscore.kafka._txn_protocol` sends them itself, on
PLAINTEXT listeners only. Where that is impossible (TLS/SASL, Kafka < 3.0) the
age falls back to the timestamp of the record at the LSO, and the result says
so (``age_source``).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any

from confluent_kafka import Consumer, IsolationLevel, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._listoffsets import OffsetSpec

from eoscore.kafka._txn_protocol import (
    Connection,
    ProtocolError,
    TransactionalIdNotFound,
    TransactionDescription,
    TransactionListing,
    retrying,
)
from eoscore.kafka.errors import KafkaProcessorError

__all__ = [
    "AGE_FROM_COORDINATOR",
    "AGE_FROM_RECORD",
    "LingeringPartition",
    "NoOpenTransactionError",
    "ProtocolError",
    "TransactionDescription",
    "TransactionListing",
    "abort_transaction",
    "describe_transaction",
    "find_lingering_transactions",
    "list_transactions",
    "stable_offsets",
]

# Where ``LingeringPartition.open_since`` comes from.
AGE_FROM_COORDINATOR = "coordinator"  # DescribeTransactions: the transaction's start time
AGE_FROM_RECORD = "record-timestamp"  # the record at the LSO (producer-set unless LogAppendTime)

_TP = tuple[str, int]


class NoOpenTransactionError(KafkaProcessorError, LookupError):
    """The transactional id has no open transaction: nothing was aborted or created.

    ``state`` is the coordinator's state of the id (``None`` when the
    coordinator does not know the id at all, e.g. a typo).
    """

    def __init__(self, message: str, state: str | None = None) -> None:
        super().__init__(message)
        self.state = state


@dataclass(frozen=True)
class LingeringPartition:
    """A partition whose LSO lags its HWM, and the open transaction that holds it.

    ``transactional_id`` and ``producer_id`` name the oldest open transaction on
    the partition as its coordinator lists it (``None`` when no coordinator
    lists one: a *hanging* transaction, or the coordinators could not be asked,
    see ``note``). ``open_since`` (epoch seconds) and ``open_for_s`` say since
    when it is open; ``age_source`` where that comes from:
    :data:`AGE_FROM_COORDINATOR` (the coordinator's transaction start time, as
    ``kafka-transactions.sh describe`` shows it) or :data:`AGE_FROM_RECORD` (the
    timestamp of the record at the LSO: set by the producer, or kept from
    upstream, unless the topic uses ``LogAppendTime``, so it may be far off);
    both ``None`` when neither is known. ``stuck`` is true when the LSO did not
    move over the sampling window (always true without one).
    """

    topic: str
    partition: int
    last_stable_offset: int
    high_watermark: int
    open_since: float | None
    open_for_s: float | None
    stuck: bool
    transactional_id: str | None = None
    producer_id: int | None = None
    age_source: str | None = None
    note: str | None = None

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
    """Partitions whose last stable offset lags the high watermark, with their owner.

    With ``window_s > 0`` the LSO is sampled again after that long, and only
    partitions where it did not move are reported (a busy transactional topic
    always has short-lived gaps). ``min_open_s`` drops partitions whose open
    transaction is younger than that.
    """
    admin = AdminClient({"bootstrap.servers": bootstrap})
    offsets = stable_offsets(admin, topics, timeout_s=timeout_s)
    gaps = {tp: lh for tp, lh in offsets.items() if lh[0] < lh[1]}
    if window_s > 0 and gaps:
        time.sleep(window_s)
        again = _latest(admin, list(gaps), IsolationLevel.READ_COMMITTED, timeout_s)
        gaps = {tp: lh for tp, lh in gaps.items() if again[tp] == lh[0]}
    if not gaps:
        return []
    note: str | None = None
    try:
        owners: dict[_TP, TransactionDescription] | None = _owners(admin, timeout_s)
    except ProtocolError as exc:
        owners, note = None, f"coordinators not asked: {exc}"
    if owners is not None:
        # A gap nobody owns may just have closed since it was sampled.
        orphans = [tp for tp in gaps if tp not in owners]
        if orphans:
            again = _latest(admin, orphans, IsolationLevel.READ_COMMITTED, timeout_s)
            gaps = {tp: lh for tp, lh in gaps.items() if again.get(tp, lh[0]) == lh[0]}
    unowned = {tp: lh[0] for tp, lh in gaps.items() if owners is None or tp not in owners}
    since = _first_record_times(bootstrap, unowned, timeout_s)
    now = time.time()
    found = []
    for tp, (lso, hwm) in sorted(gaps.items()):
        owner = owners.get(tp) if owners is not None else None
        tid: str | None = None
        pid: int | None = None
        ts: float | None
        source: str | None
        if owner is not None:
            tid, pid = owner.transactional_id, owner.producer_id
            ts, source = owner.open_since, AGE_FROM_COORDINATOR
            why = note
        else:
            ts = since.get(tp)
            source = AGE_FROM_RECORD if ts is not None else None
            why = note or (
                "no coordinator lists an open transaction on this partition: a hanging "
                "transaction (see kafka-transactions.sh find-hanging)"
            )
        age = None if ts is None else max(0.0, now - ts)
        if age is not None and age < min_open_s:
            continue
        found.append(
            LingeringPartition(tp[0], tp[1], lso, hwm, ts, age, True, tid, pid, source, why)
        )
    return found


# --- the coordinators (ListTransactions / DescribeTransactions) -------------------------


def _brokers(admin: AdminClient, timeout_s: float) -> dict[int, tuple[str, int]]:
    metadata = admin.list_topics(timeout=timeout_s)
    return {b.id: (str(b.host), int(b.port)) for b in metadata.brokers.values()}


def list_transactions(
    target: str | AdminClient, states: Iterable[str] = (), *, timeout_s: float = 30.0
) -> list[TransactionListing]:
    """Every transactional id the cluster's coordinators know (optionally only those in
    ``states``, e.g. ``["Ongoing"]``), like ``kafka-transactions.sh list``.

    Raises :class:`ProtocolError` when a broker cannot be asked.
    """
    admin = _admin(target)
    wanted = list(states)
    out: list[TransactionListing] = []
    for node, (host, port) in sorted(_brokers(admin, timeout_s).items()):
        out.extend(retrying(partial(_list_on, host, port, node, wanted, timeout_s), timeout_s))
    return out


def _list_on(
    host: str, port: int, node: int, states: list[str], timeout_s: float
) -> list[TransactionListing]:
    with Connection(host, port, timeout_s) as conn:
        return conn.list_transactions(node, states)


def _describe(
    admin: AdminClient, ids: list[str], timeout_s: float
) -> dict[str, TransactionDescription | None]:
    """DescribeTransactions for ``ids`` on their coordinators; ``None``: unknown id."""
    brokers = _brokers(admin, timeout_s)
    if not brokers or not ids:
        return {}
    host, port = next(iter(brokers.values()))

    def once() -> dict[str, TransactionDescription | None]:
        with Connection(host, port, timeout_s) as conn:
            coordinators = conn.find_transaction_coordinators(ids)
        by_node: dict[tuple[int, str, int], list[str]] = {}
        for tid, where in coordinators.items():
            by_node.setdefault(where, []).append(tid)
        out: dict[str, TransactionDescription | None] = {}
        for (node, chost, cport), group in by_node.items():
            with Connection(chost, cport, timeout_s) as conn:
                for tid, result in conn.describe_transactions(node, group).items():
                    if isinstance(result, TransactionalIdNotFound):
                        out[tid] = None
                    elif isinstance(result, ProtocolError):
                        raise result  # retried by `retrying` when retriable
                    else:
                        out[tid] = result
        return out

    return retrying(once, timeout_s)


def describe_transaction(
    target: str | AdminClient, transactional_id: str, *, timeout_s: float = 30.0
) -> TransactionDescription | None:
    """The coordinator's state of ``transactional_id`` (``None``: the id is unknown),
    like ``kafka-transactions.sh describe --transactional-id``. Creates nothing."""
    return _describe(_admin(target), [transactional_id], timeout_s).get(transactional_id)


def _owners(admin: AdminClient, timeout_s: float) -> dict[_TP, TransactionDescription]:
    """Partition -> the oldest open transaction that includes it."""
    ongoing = list_transactions(admin, ["Ongoing"], timeout_s=timeout_s)
    described = _describe(admin, sorted({t.transactional_id for t in ongoing}), timeout_s)
    owners: dict[_TP, TransactionDescription] = {}
    for txn in described.values():
        if txn is None or not txn.is_open:
            continue  # ended between the two requests
        for tp in txn.partitions:
            held = owners.get(tp)
            if held is None or txn.start_time_ms < held.start_time_ms:
                owners[tp] = txn
    return owners


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
    check: bool = True,
) -> TransactionDescription | None:
    """Abort the open transaction of ``transactional_id`` now; returns what was aborted.

    Step 1 (``check=True``): ask the id's coordinator (DescribeTransactions). An
    id it does not know, or one without an open transaction, raises
    :class:`NoOpenTransactionError` and nothing is created or changed.
    Step 2: a new producer with that id calls ``init_transactions``: the
    coordinator bumps the epoch (fencing the current owner, whose next write
    fails) and aborts the open transaction, which moves the LSO past it.

    A transaction its owner commits between the two steps stays committed
    (step 2 then only fences the owner).

    ``check=False`` skips step 1 (for clusters this module cannot query: TLS or
    SASL listeners); then an unknown id is registered on the broker, and
    ``None`` is returned.
    """
    before: TransactionDescription | None = None
    if check:
        # Step 1: is there anything to abort?
        try:
            before = describe_transaction(bootstrap, transactional_id, timeout_s=timeout_s)
        except ProtocolError as exc:
            raise KafkaProcessorError(
                f"transactional.id {transactional_id!r}: cannot check for an open "
                f"transaction ({exc}); nothing done. Without the check "
                "(check=False, `eoscore txn abort --force`) an unknown id gets registered."
            ) from exc
        if before is None:
            raise NoOpenTransactionError(
                f"transactional.id {transactional_id!r}: unknown to the transaction "
                "coordinator (mistyped?); nothing aborted, nothing created. "
                "`eoscore txn lingering` names the ids of open transactions."
            )
        if not before.is_open:
            raise NoOpenTransactionError(
                f"transactional.id {transactional_id!r}: no open transaction (coordinator "
                f"state {before.state}); nothing aborted",
                before.state,
            )
    # Step 2: fence the owner; the coordinator aborts its transaction.
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
    return before
