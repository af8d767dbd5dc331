"""``KafkaSink``: a transactional Kafka producer whose commit *is* the checkpoint's decision.

Step 1 (pre-commit) closes the checkpoint's output: its last records are
queued, not waited for. Step 3 sends the source
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

from confluent_kafka import Consumer, KafkaException, TopicPartition

from eoscore.kafka.errors import ErrorAction, KafkaProcessorError, classify
from eoscore.kafka.txn import TransactionalProducer
from eoscore.sinks.two_phase import DecidingSink, Decision, PreparedHandle, RecoveryPlan

__all__ = ["KafkaSink"]

_META = re.compile(r"^eoscore:(?P<pipeline>.*):(?P<id>\d+)$")


def _to_bytes(value: Any) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return str(value).encode("utf-8")


def _no_key(record: Any) -> None:
    """The default key: none (the partitioner spreads records)."""
    return None


class KafkaSink(DecidingSink):
    """Writes records to ``topic`` in transactions; commits the source's offsets with them.

    ``source`` is the pipeline's ``KafkaSource`` (its name, topic and group
    say which offsets the decision carries). ``value``/``key`` turn a record
    into bytes (default: ``str(record)`` as UTF-8, no key). ``timeout`` bounds
    every Kafka call (retriable errors are retried within it).
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
        key: Callable[[Any], Any] = _no_key,
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
        self._txn_producer: TransactionalProducer | None = None
        self._group: Consumer | None = None  # group metadata and committed offsets
        self._txn_ids: list[int] = []  # checkpoints whose output the open transaction holds
        self._open_id = -1
        self._held: list[Any] = []  # output of _open_id while an earlier txn awaits its decision
        self._holding = False

    # ---- lifecycle ------------------------------------------------------------------

    def open(self, pipeline: str, worker: str) -> None:
        self.pipeline = pipeline
        self._txn_producer = TransactionalProducer(
            self.config, operation_timeout_s=self.timeout, failpoint_prefix="sink.kafka"
        )
        # Fences an older producer with our id and aborts its open transaction.
        self._txn_producer.init()

    @property
    def _txn(self) -> TransactionalProducer:
        if self._txn_producer is None:
            raise KafkaProcessorError(f"sink {self.name!r} used before open()")
        return self._txn_producer

    def _group_consumer(self) -> Consumer:
        """One consumer for the sink's life: it never subscribes, so it joins no group.

        The source reads partitions by assignment (there is no group generation
        to fence with); zombies are fenced by the transactional id instead, see
        docs/sinks.md.
        """
        if self._group is None:
            self._group = Consumer(
                {
                    "bootstrap.servers": self.config["bootstrap.servers"],
                    "group.id": self.source.group_id,
                    "enable.auto.commit": False,
                }
            )
        return self._group

    def recover(self, plan: RecoveryPlan) -> None:
        # Our decided output is committed by definition (its commit was the decision);
        # undecided transactions were aborted by init_transactions in open().
        self._txn_ids = []

    def close(self) -> None:
        if self._txn_producer is not None:
            self._txn_producer.close()  # aborts an open transaction
            self._txn_producer = None
        if self._group is not None:
            self._group.close()
            self._group = None

    # ---- writing -----------------------------------------------------------------------

    def _produce(self, records: Sequence[Any]) -> None:
        txn = self._txn
        topic, value, key = self.topic, self.value, self.key
        if key is _no_key:
            produce = txn.produce
            for r in records:
                v = value(r)
                produce(topic, v if v is None or type(v) is bytes else _to_bytes(v))
        else:
            for r in records:
                txn.produce(topic, _to_bytes(value(r)), _to_bytes(key(r)))
        txn.poll(0)

    def begin(self, checkpoint_id: int) -> None:
        self._open_id = checkpoint_id
        self._holding = self._txn.in_transaction and bool(self._txn_ids)
        if not self._holding:
            self._txn.begin()

    def write(self, records: Sequence[Any]) -> None:
        if self._holding:
            self._held.extend(records)
        else:
            self._produce(records)

    def _release_held(self) -> None:
        self._txn.begin()
        held, self._held = self._held, []
        self._holding = False
        self._produce(held)

    def pre_commit(self, checkpoint_id: int) -> PreparedHandle:
        if self._holding:  # an earlier checkpoint failed undecided: share its transaction
            self._release_held()
        self._before_flush(checkpoint_id)
        # No flush here: commit_transaction (the decision) waits for every record
        # and fails if one was not delivered, and deliveries go on while the
        # checkpoint's state is written, off the processing thread's clock.
        self._txn.poll(0)
        self._txn_ids.append(checkpoint_id)
        return {"transactional_id": self.transactional_id, "checkpoint": checkpoint_id}

    def _before_flush(self, checkpoint_id: int) -> None:
        """Hook: the last records of checkpoint ``checkpoint_id``'s transaction."""

    # ---- the decision --------------------------------------------------------------------

    def commit_decision(
        self, checkpoint_id: int, positions: Mapping[str, Any], handle: PreparedHandle
    ) -> None:
        metadata = f"eoscore:{self.pipeline}:{checkpoint_id}"
        offsets = [
            TopicPartition(self.source.topic, int(p), offset, metadata=metadata)
            for p, o in positions.get(self.source.name, {}).items()
            if (offset := self.source.offset_of(o)) >= 0
        ]
        group = self._group_consumer().consumer_group_metadata() if offsets else None
        self._txn.commit(offsets, group)
        self._txn_ids = []
        if self._holding:
            self._release_held()

    def commit(self, checkpoint_id: int, handle: PreparedHandle) -> None:
        """Nothing to do: this sink's output commits with the decision."""

    def abort(self, checkpoint_id: int, handle: PreparedHandle | None) -> None:
        """Nothing to do here: ``init_transactions`` aborts undecided transactions."""

    def read_decision(self) -> Decision | None:
        consumer = self._group_consumer()
        parts = [TopicPartition(self.source.topic, p) for p in self.source.partitions()]
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                committed = consumer.committed(parts, timeout=self.timeout)
                break
            except KafkaException as exc:
                # e.g. COORDINATOR_LOAD_IN_PROGRESS on a broker that just started
                err = exc.args[0]
                if classify(err) is not ErrorAction.RETRY or time.monotonic() > deadline:
                    raise KafkaProcessorError(
                        f"sink {self.name!r}: reading the decided offsets failed: {err.str()}",
                        err,
                    ) from exc
                time.sleep(0.2)
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
