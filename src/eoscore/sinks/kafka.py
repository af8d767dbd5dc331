"""``KafkaSink``: a transactional Kafka producer whose commit *is* the checkpoint's decision.

Step 1 (pre-commit) flushes the open transaction. Step 3 sends the source
offsets into the transaction (``send_offsets_to_transaction``, the
checkpoint id in each offset's metadata) and commits it: output, offsets and
checkpoint id become visible to ``read_committed`` readers atomically.
Recovery reads the committed offsets' metadata back (``read_decision``);
``init_transactions`` fences any earlier producer with our transactional id
and aborts its open transaction (librdkafka cannot resume another
producer's transaction, so an undecided checkpoint is always aborted).

A producer has one transaction at a time: output of checkpoint n+1 produced
while n awaits its decision is kept in memory and produced right after.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from eoscore import failpoints
from eoscore.sinks.two_phase import DecidingSink, Decision, PreparedHandle, RecoveryPlan

__all__ = ["KafkaSink"]

#: Errors that mean "the group coordinator is not ready yet": ask again.
_TRANSIENT = frozenset(
    {
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.NOT_COORDINATOR,
        KafkaError._TIMED_OUT,
        KafkaError._TRANSPORT,
    }
)

_META = re.compile(r"^eoscore:(?P<pipeline>.*):(?P<id>\d+)$")


def _to_bytes(value: Any) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return str(value).encode("utf-8")


class KafkaSink(DecidingSink):
    """Writes records to ``topic`` in transactions; commits the source's offsets with them.

    ``source`` is the pipeline's ``KafkaSource`` (its name, topic and group
    say which offsets the decision carries). ``value``/``key`` turn a record
    into bytes (default: ``str(record)`` as UTF-8, no key).
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        transactional_id: str,
        source: Any,
        *,
        name: str = "kafka",
        value: Callable[[Any], Any] = lambda r: r,
        key: Callable[[Any], Any] = lambda r: None,
        config: Mapping[str, Any] | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.name = name
        self.topic = topic
        self.source = source
        self.transactional_id = transactional_id
        self.value = value
        self.key = key
        self.timeout = timeout
        self.config = {
            "bootstrap.servers": bootstrap,
            "transactional.id": transactional_id,
            "enable.idempotence": True,
            "transaction.timeout.ms": 120_000,
            "linger.ms": 20,
            **(config or {}),
        }
        self.pipeline = ""
        self._producer: Producer | None = None
        self._in_txn = False  # a transaction is open
        self._txn_ids: list[int] = []  # checkpoints whose output the open transaction holds
        self._open_id = -1
        self._held: list[Any] = []  # output of _open_id while an earlier txn awaits its decision
        self._holding = False

    # ---- lifecycle ------------------------------------------------------------------

    def open(self, pipeline: str, worker: str) -> None:
        self.pipeline = pipeline
        self._producer = Producer(self.config)
        # Fences an older producer with our id and aborts its open transaction.
        self._producer.init_transactions(self.timeout)

    def _p(self) -> Producer:
        if self._producer is None:
            raise RuntimeError(f"sink {self.name!r} used before open()")
        return self._producer

    def recover(self, plan: RecoveryPlan) -> None:
        # Our decided output is committed by definition (its commit was the decision);
        # undecided transactions were aborted by init_transactions in open().
        self._in_txn = False
        self._txn_ids = []

    def close(self) -> None:
        if self._producer is not None:
            if self._in_txn:
                try:
                    self._producer.abort_transaction(self.timeout)
                except Exception:  # closing anyway; the next init_transactions aborts it
                    pass
            self._producer.flush(self.timeout)
            self._producer = None

    # ---- writing -----------------------------------------------------------------------

    def _start(self) -> None:
        if not self._in_txn:
            self._p().begin_transaction()
            self._in_txn = True

    def _produce(self, records: Sequence[Any]) -> None:
        producer = self._p()
        for r in records:
            while True:
                try:
                    producer.produce(self.topic, _to_bytes(self.value(r)), _to_bytes(self.key(r)))
                    break
                except BufferError:
                    producer.poll(0.05)
        producer.poll(0)

    def begin(self, checkpoint_id: int) -> None:
        self._open_id = checkpoint_id
        self._holding = self._in_txn and bool(self._txn_ids)
        if not self._holding:
            self._start()

    def write(self, records: Sequence[Any]) -> None:
        if self._holding:
            self._held.extend(records)
        else:
            self._produce(records)

    def _release_held(self) -> None:
        self._start()
        held, self._held = self._held, []
        self._holding = False
        self._produce(held)

    def pre_commit(self, checkpoint_id: int) -> PreparedHandle:
        if self._holding:  # an earlier checkpoint failed undecided: share its transaction
            self._release_held()
        self._before_flush(checkpoint_id)
        remaining = self._p().flush(self.timeout)
        if remaining:
            raise TimeoutError(f"sink {self.name!r}: {remaining} records not delivered in time")
        self._txn_ids.append(checkpoint_id)
        return {"transactional_id": self.transactional_id, "checkpoint": checkpoint_id}

    def _before_flush(self, checkpoint_id: int) -> None:
        """Hook: the last records of checkpoint ``checkpoint_id``'s transaction."""

    # ---- the decision --------------------------------------------------------------------

    def commit_decision(
        self, checkpoint_id: int, positions: Mapping[str, Any], handle: PreparedHandle
    ) -> None:
        producer = self._p()
        metadata = f"eoscore:{self.pipeline}:{checkpoint_id}"
        offsets = [
            TopicPartition(self.source.topic, int(p), offset, metadata=metadata)
            for p, o in positions.get(self.source.name, {}).items()
            if (offset := self.source.offset_of(o)) >= 0
        ]
        if offsets:
            group = Consumer(
                {
                    "bootstrap.servers": self.config["bootstrap.servers"],
                    "group.id": self.source.group_id,
                }
            )
            try:
                producer.send_offsets_to_transaction(
                    offsets, group.consumer_group_metadata(), self.timeout
                )
            finally:
                group.close()
        failpoints.hit("sink.kafka.before_commit")
        producer.commit_transaction(self.timeout)
        self._in_txn = False
        self._txn_ids = []
        if self._holding:
            self._release_held()

    def commit(self, checkpoint_id: int, handle: PreparedHandle) -> None:
        """Nothing to do: this sink's output commits with the decision."""

    def abort(self, checkpoint_id: int, handle: PreparedHandle | None) -> None:
        """Nothing to do here: ``init_transactions`` aborts undecided transactions."""

    def read_decision(self) -> Decision | None:
        consumer = Consumer(
            {
                "bootstrap.servers": self.config["bootstrap.servers"],
                "group.id": self.source.group_id,
            }
        )
        try:
            parts = [TopicPartition(self.source.topic, p) for p in self.source.partitions()]
            deadline = time.monotonic() + self.timeout
            while True:
                try:
                    committed = consumer.committed(parts, timeout=self.timeout)
                    break
                except KafkaException as exc:
                    # e.g. COORDINATOR_LOAD_IN_PROGRESS on a broker that just started
                    err = exc.args[0]
                    transient = err.retriable() or err.code() in _TRANSIENT
                    if not transient or time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
        finally:
            consumer.close()
        best: int | None = None
        positions: dict[str, int] = {}
        for tp in committed:
            m = _META.match(tp.metadata or "")
            if m is None or m.group("pipeline") != self.pipeline:
                continue
            positions[str(tp.partition)] = tp.offset
            best = max(best or 0, int(m.group("id")))
        if best is None:
            return None
        return Decision(best, {self.source.name: positions})
