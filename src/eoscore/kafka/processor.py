"""An exactly-once consume-transform-produce loop around confluent-kafka.

The protocol is ``docs/kafka-processor.md``; its numbered steps appear below as
``# Step N`` comments.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    KafkaError,
    KafkaException,
    TopicPartition,
)

from eoscore import failpoints
from eoscore.kafka._dedup_step import DedupIndex, DedupStep, KeyFunc
from eoscore.kafka.dedup_changelog import DurableDedup
from eoscore.kafka.errors import (
    ErrorAction,
    KafkaProcessorError,
    TransactionAbortRequired,
    classify,
)
from eoscore.kafka.metrics import ProcessorMetrics
from eoscore.kafka.txn import OutputRecord, TransactionalProducer

__all__ = ["ExactlyOnceProcessor", "OutputRecord", "Transform"]

_log = logging.getLogger("eoscore.kafka")
_TP = tuple[str, int]

# Keys the processor owns: a user value would silently break exactly-once.
_CONSUMER_FIXED = {
    "isolation.level": "read_committed",
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
}


#: Batch of ``confluent_kafka.Message`` (no error, in consume order) -> outputs.
Transform = Callable[[list[Any]], Iterable[OutputRecord]]


class ExactlyOnceProcessor:
    """Consume ``topics`` as a member of ``group_id``, transform, produce, exactly once.

    Every output record and the input offsets that produced it are committed in
    one Kafka transaction, so a ``read_committed`` reader of the outputs sees each
    input's outputs exactly once, whatever crashes, rebalances or restarts occur.

    ``instance_id`` must be stable across restarts of the same instance (a pod
    name, a host-and-slot): the transactional id is ``{group_id}.{instance_id}``,
    and a restarted instance fences its predecessor with it. Two live instances
    must never share it.

    ``transform`` gets a list of ``confluent_kafka.Message`` and returns the
    :class:`OutputRecord` s to produce; it may be called again with the same
    inputs after an abort, so it must not have side effects outside Kafka.

    A transaction is committed once ``commit_interval_ms`` have passed since it
    began or it holds ``commit_every`` input records, whichever comes first.

    ``dedup`` drops inputs whose ``dedup_key`` (default: the message key) was
    seen before. A :class:`~eoscore.kafka.dedup_changelog.DurableDedup` keeps
    one index per input partition, TTL by record timestamps, and writes new
    keys to a changelog topic inside the transaction: duplicates straddling a
    crash or a rebalance are dropped. A plain index (an object with
    ``check_and_add``, e.g. ``eoscore.dedup.Deduplicator``) is memory only:
    after a restart it starts empty.

    ``static_membership`` (default on) joins with ``group.instance.id =
    instance_id``: a restarted instance gets its partitions back at once
    (measured 0.6 s, against more than 25 s for the dead member's session to
    expire with dynamic membership). Its cost: an instance that dies and does
    not come back holds its partitions, unread, until ``session.timeout.ms``
    passes, and no two live instances may share an ``instance_id``.
    """

    def __init__(
        self,
        *,
        bootstrap_servers: str,
        group_id: str,
        topics: Sequence[str],
        transform: Transform,
        instance_id: str,
        commit_interval_ms: int = 100,
        commit_every: int | None = None,
        batch_size: int = 1000,
        poll_timeout_s: float = 0.1,
        transaction_timeout_ms: int = 60_000,
        static_membership: bool = True,
        dedup: DurableDedup | DedupIndex | None = None,
        dedup_key: KeyFunc | None = None,
        consumer_config: Mapping[str, Any] | None = None,
        producer_config: Mapping[str, Any] | None = None,
        metrics_interval_s: float = 10.0,
        operation_timeout_s: float = 30.0,
        max_aborts_in_a_row: int = 10,
        overlap_commits: bool = True,
        logger: logging.Logger | None = None,
    ) -> None:
        if not topics:
            raise ValueError("topics: give at least one input topic")
        if commit_interval_ms <= 0 or (commit_every is not None and commit_every <= 0):
            raise ValueError("commit_interval_ms and commit_every must be positive")
        if commit_interval_ms >= transaction_timeout_ms:
            raise ValueError(
                f"commit_interval_ms {commit_interval_ms} >= transaction_timeout_ms "
                f"{transaction_timeout_ms}: every transaction would time out"
            )
        for key, value in _CONSUMER_FIXED.items():
            if consumer_config and key in consumer_config and consumer_config[key] != value:
                raise ValueError(f"consumer_config[{key!r}] must be {value!r} for exactly-once")
        self.transactional_id = f"{group_id}.{instance_id}"
        self._log = logger or _log
        self._topics = list(topics)
        self._transform = transform
        self._interval_s = commit_interval_ms / 1000.0
        self._commit_every = commit_every
        self._batch_size = batch_size
        self._poll_timeout_s = poll_timeout_s
        self._op_timeout_s = operation_timeout_s
        self._max_aborts = max_aborts_in_a_row
        self._aborts_in_a_row = 0
        key_of = dedup_key or _message_key
        self._durable: DurableDedup | None = None
        self._dedup: DedupStep | None = None
        if isinstance(dedup, DurableDedup):
            self._durable = dedup
            dedup.bind(bootstrap_servers)
            self._dedup = DedupStep(None, key_of, check=dedup.check, keep_accepted=True)
        elif dedup is not None:
            self._dedup = DedupStep(dedup, key_of)
        self.metrics = ProcessorMetrics(interval_s=metrics_interval_s, logger=self._log)

        cconf: dict[str, Any] = {
            "bootstrap.servers": bootstrap_servers,
            "group.id": group_id,
            "auto.offset.reset": "earliest",
            **dict(consumer_config or {}),
            **_CONSUMER_FIXED,
        }
        if static_membership:
            cconf["group.instance.id"] = instance_id
        self._reset_to = OFFSET_END if cconf["auto.offset.reset"] == "latest" else OFFSET_BEGINNING
        pconf: dict[str, Any] = {
            "bootstrap.servers": bootstrap_servers,
            "linger.ms": 5,
            "delivery.report.only.error": True,
            **dict(producer_config or {}),
            "transactional.id": self.transactional_id,
            "transaction.timeout.ms": transaction_timeout_ms,
        }
        self._consumer = Consumer(cconf)
        self._txn = TransactionalProducer(
            pconf,
            operation_timeout_s=operation_timeout_s,
            failpoint_prefix="kafka",
            logger=self._log,
            metrics=self.metrics.txn,
        )

        self._assigned: set[_TP] = set()
        single = len(self._topics) == 1 and not self._topics[0].startswith("^")  # not a regex
        self._single_topic = self._topics[0] if single else None
        self._rebalanced = True  # the next batch takes the careful path
        self._pending: dict[_TP, int] = {}  # next offset to commit, per partition
        self._txn_inputs = 0
        # Overlapped commits: transaction n commits on a thread while batch n+1 is
        # consumed and transformed; its outputs wait in _held for transaction n+1.
        self._overlap = overlap_commits
        self._inflight: threading.Thread | None = None
        self._inflight_error: BaseException | None = None
        self._held: list[list[OutputRecord]] = []
        self._held_count = 0
        self._started = False
        self._stopping = False
        self._closed = False

    # --- public ------------------------------------------------------------------

    def run(self, until: Callable[[], bool] | None = None) -> None:
        """Process until :meth:`stop` (or ``until()`` is true), then commit and close.

        Raises :class:`ProducerFencedError`, :class:`TransactionTimeoutError` or
        :class:`FatalKafkaError` when this instance can no longer write, and
        re-raises an exception of ``transform`` after aborting its transaction.
        The processor is closed when ``run`` returns or raises.
        """
        try:
            self._start()
            while not self._stopping and not (until is not None and until()):
                try:
                    self._iterate()
                except TransactionAbortRequired as exc:
                    self._log.warning("%s: aborting transaction: %s", self.transactional_id, exc)
                    self._abort_and_rewind(self._assigned)
                    if self._aborts_in_a_row >= self._max_aborts:
                        raise KafkaProcessorError(
                            f"{self.transactional_id}: {self._aborts_in_a_row} transactions in "
                            f"a row aborted, last because of: {exc}; the same input keeps "
                            "failing (record too large for the output topic? missing ACL?)"
                        ) from exc
                self.metrics.tick()
            if self._unfinished():
                try:
                    self._commit()
                except TransactionAbortRequired:
                    self._abort_and_rewind(set())
        except BaseException:
            self._fail_close()
            raise
        self.close()

    def stop(self) -> None:
        """Ask :meth:`run` to commit and return (safe from signal handlers and threads)."""
        self._stopping = True

    def close(self) -> None:
        """Leave the group and release the clients. Idempotent.

        Commits nothing: :meth:`run` commits before it returns. A transaction left
        open (close without run finishing) is aborted by the coordinator.
        """
        if self._closed:
            return
        self._closed = True
        self._txn.dead = True  # a revoke during close must not touch the producer
        try:
            self._consumer.close()
        finally:
            self._txn.close()
            if self._durable is not None:
                self._durable.close()

    def __enter__(self) -> ExactlyOnceProcessor:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def assignment(self) -> frozenset[_TP]:
        """The ``(topic, partition)`` pairs this member owns right now."""
        return frozenset(self._assigned)

    # --- the loop ----------------------------------------------------------------

    def _start(self) -> None:
        if self._started:
            raise KafkaProcessorError("run() was already called; build a new processor")
        self._started = True
        # Step 1: claim the transactional id; any older producer with it is fenced
        # and its open transaction aborted by the coordinator.
        self._txn.init()
        # Step 2: join the group; positions come from committed offsets.
        self._consumer.subscribe(
            self._topics,
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )

    def _iterate(self) -> None:
        timeout = self._poll_timeout_s
        txn = self._txn
        if self._inflight is not None:
            self._settle(wait=self._held_count >= 4 * self._batch_size)
        if self._inflight is not None:
            timeout = 0.005  # pick up the commit's end soon
        elif txn.in_transaction:
            due_in = txn.started + self._interval_s - time.monotonic()
            timeout = max(0.0, min(timeout, due_in))
        # Step 3: consume a batch (rebalance callbacks run inside this call).
        messages = self._consumer.consume(self._batch_size, timeout)
        batch = self._accept(messages) if messages else []
        if batch:
            self._process(batch)
        if self._inflight is None and txn.in_transaction and (
            time.monotonic() - txn.started >= self._interval_s
            or (self._commit_every is not None and self._txn_inputs >= self._commit_every)
        ):
            if self._overlap:
                self._commit_in_background()
            else:
                self._commit()

    def _accept(self, messages: list[Any]) -> list[Any]:
        """Drop errors and records of partitions no longer ours; note next offsets."""
        if self._single_topic is not None and not self._rebalanced:
            # Fast path (one topic, no rebalance in this consume): two calls per
            # record, offsets read only from the last record of each partition.
            last: dict[int, Any] = {}
            for msg in messages:
                if msg.error() is not None:
                    break
                last[msg.partition()] = msg
            else:
                topic, pending = self._single_topic, self._pending
                for partition, msg in last.items():
                    pending[(topic, partition)] = msg.offset() + 1
                return messages
        self._rebalanced = False
        batch: list[Any] = []
        pending, assigned = self._pending, self._assigned
        for msg in messages:
            err = msg.error()
            if err is not None:
                if err.fatal():
                    self._txn.raise_fatal(err, "consume")
                if err.code() != KafkaError._PARTITION_EOF:
                    self._log.warning("%s: consumer error: %s", self.transactional_id, err)
                continue
            tp = (msg.topic(), msg.partition())
            if tp not in assigned:
                continue
            pending[tp] = msg.offset() + 1
            batch.append(msg)
        return batch

    def _process(self, batch: list[Any]) -> None:
        self.metrics.records_in += len(batch)
        self._txn_inputs += len(batch)
        holding = self._inflight is not None
        # Step 4: open a transaction with the first records after a commit.
        if not holding:
            self._txn.begin()
        # Step 5: drop duplicate inputs (optional).
        if self._dedup is not None:
            kept = self._dedup.filter(batch)
            self.metrics.duplicates_dropped += len(batch) - len(kept)
            batch = kept
            if self._durable is not None and self._dedup.accepted:
                # The new keys join the transaction that commits their offsets.
                changes = self._durable.records(self._dedup.accepted)
                if holding:
                    self._hold(changes)
                else:
                    self._txn.produce_all(changes)
            if not batch:
                return
        # Step 6: transform.
        outputs = self._transform(batch)
        outputs = outputs if isinstance(outputs, list) else list(outputs)
        # Step 7: produce into the open transaction (or the next one).
        if holding:
            self._hold(outputs)
        else:
            self._produce(outputs)

    def _unfinished(self) -> bool:
        """A transaction is open or committing, or outputs wait for the next one."""
        return self._txn.in_transaction or self._inflight is not None or bool(self._held)

    def _hold(self, records: list[OutputRecord]) -> None:
        self.metrics.batches_during_commit += 1
        self._held.append(records)
        self._held_count += len(records)

    def _produce(self, outputs: list[OutputRecord]) -> None:
        txn = self._txn
        if failpoints.armed():
            failpoints.hit("kafka.before_produce")
            half = len(outputs) // 2
            txn.produce_all(outputs[:half])
            failpoints.hit("kafka.mid_produce")
            txn.produce_all(outputs[half:])
            failpoints.hit("kafka.after_produce")
        else:
            txn.produce_all(outputs)
        self.metrics.records_out += len(outputs)

    def _commit(self) -> None:
        # Steps 8 and 9: the input offsets join the transaction (fenced by the group
        # generation) and commit atomically with the outputs.
        self._settle(wait=True)
        if not self._txn.in_transaction:
            return
        offsets = [TopicPartition(t, p, o) for (t, p), o in self._pending.items()]
        metadata = self._consumer.consumer_group_metadata() if offsets else None
        if self._dedup is not None:
            self._dedup.seal()
        self._txn.commit(offsets, metadata)
        self._txn_closed()
        self._aborts_in_a_row = 0
        if self._dedup is not None:
            self._dedup.committed()

    def _commit_in_background(self) -> None:
        """Steps 8 and 9 on a thread; the loop goes on consuming and transforming."""
        offsets = [TopicPartition(t, p, o) for (t, p), o in self._pending.items()]
        metadata = self._consumer.consumer_group_metadata() if offsets else None
        if self._dedup is not None:
            self._dedup.seal()
        self._txn_closed()  # offsets read from now on belong to the next transaction
        self._inflight_error = None

        def commit() -> None:
            try:
                self._txn.commit(offsets, metadata)
            except BaseException as exc:  # handed to the loop's thread by _settle
                self._inflight_error = exc

        self._inflight = threading.Thread(target=commit, name="eoscore-commit", daemon=True)
        self._inflight.start()

    def _settle(self, *, wait: bool) -> None:
        """Finish an overlapped commit: raise its error, or open the next transaction
        with the outputs held meanwhile."""
        thread = self._inflight
        if thread is None:
            return
        if not wait and thread.is_alive():
            return
        thread.join()
        self._inflight = None
        error, self._inflight_error = self._inflight_error, None
        if error is not None:
            self._held.clear()
            self._held_count = 0
            raise error
        self._aborts_in_a_row = 0
        if self._dedup is not None:
            self._dedup.committed()
        held, self._held, self._held_count = self._held, [], 0
        if held:
            self._txn.begin()
            for records in held:
                self._produce(records)

    def _abort_and_rewind(self, partitions: set[_TP]) -> None:
        """Step A: abort the open transaction, seek ``partitions`` to committed offsets."""
        if self._inflight is not None:
            try:
                self._settle(wait=True)
            except TransactionAbortRequired:
                pass  # aborted just below, with the rest
        self._held.clear()
        self._held_count = 0
        if self._txn.in_transaction:
            self._txn.abort()
            self._aborts_in_a_row += 1
        self._txn_closed()
        if self._dedup is not None:
            self._dedup.aborted()
        if not partitions:
            return
        tps = [TopicPartition(t, p) for t, p in sorted(partitions)]
        for tp in self._committed(tps):
            offset = tp.offset if tp.offset >= 0 else self._reset_to
            self._consumer.seek(TopicPartition(tp.topic, tp.partition, offset))

    def _committed(self, tps: list[Any]) -> list[Any]:
        """The group's committed offsets, asked again while the coordinator moves."""
        deadline = time.monotonic() + self._op_timeout_s
        while True:
            try:
                return list(self._consumer.committed(tps, self._op_timeout_s))
            except KafkaException as exc:
                err = exc.args[0]
                action = classify(err)
                if action in (ErrorAction.FENCED, ErrorAction.FATAL):
                    self._txn.raise_fatal(err, "committed")
                if action is not ErrorAction.RETRY or time.monotonic() > deadline:
                    raise KafkaProcessorError(
                        f"{self.transactional_id}: reading committed offsets failed: "
                        f"{err.str()}",
                        err,
                    ) from exc
                time.sleep(0.1)

    def _txn_closed(self) -> None:
        self._txn_inputs = 0
        self._pending.clear()

    # --- rebalances ----------------------------------------------------------------

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        # The default assign (done by confluent-kafka after this returns) starts
        # each partition at its committed offset, read with require_stable, so an
        # offset commit still pending in someone's transaction is waited for.
        new = [(tp.topic, tp.partition) for tp in partitions]
        if self._durable is not None and new:
            self._restore_dedup(new)
        self._assigned.update(new)
        self._rebalanced = True
        self.metrics.rebalances += 1

    def _restore_dedup(self, partitions: list[_TP]) -> None:
        """Rebuild the new partitions' dedup state once their offsets are stable."""
        assert self._durable is not None
        counts = {}
        for topic in {t for t, _ in partitions}:
            meta = self._consumer.list_topics(topic, timeout=self._op_timeout_s).topics[topic]
            counts[topic] = len(meta.partitions)
        self._durable.ensure_topics(counts.items())
        # A transaction that could still add keys for these partitions also holds
        # their offsets: once the committed offsets are stable, it has ended.
        self._committed([TopicPartition(t, p) for t, p in partitions])
        self._durable.restore(partitions)

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        # Step R: the partitions go after this returns; their progress must be
        # committed (or aborted and forgotten) first.
        revoked = {(tp.topic, tp.partition) for tp in partitions}
        if not self._txn.dead and self._unfinished():
            try:
                self._commit()
            except TransactionAbortRequired as exc:
                self._log.warning("%s: abort on revoke: %s", self.transactional_id, exc)
                self._abort_and_rewind(self._assigned - revoked)
        self._forget(revoked)

    def _on_lost(self, consumer: Any, partitions: list[Any]) -> None:
        # The group moved on without us: our offsets can no longer be committed.
        lost = {(tp.topic, tp.partition) for tp in partitions}
        if not self._txn.dead and self._unfinished():
            self._log.warning("%s: partitions lost, aborting", self.transactional_id)
            self._abort_and_rewind(self._assigned - lost)
        self._forget(lost)

    def _forget(self, partitions: set[_TP]) -> None:
        self._rebalanced = True
        self._assigned -= partitions
        for tp in partitions:
            self._pending.pop(tp, None)
        if self._dedup is not None:
            self._dedup.revoked(partitions)
        if self._durable is not None:
            self._durable.forget(partitions)

    def _fail_close(self) -> None:
        """Close after an exception: abort if the producer is usable, else leave it."""
        if self._inflight is not None:
            self._inflight.join()
            self._inflight = None
        self._txn_closed()
        try:
            self._txn.close()  # aborts what is open unless the producer is dead
            self.close()
        except KafkaException as exc:
            self._log.warning("%s: close while failing: %s", self.transactional_id, exc)


def _message_key(msg: Any) -> bytes:
    key = msg.key()
    if key is None:
        raise ValueError(
            f"dedup: message {msg.topic()}[{msg.partition()}]@{msg.offset()} has no key; "
            "pass dedup_key="
        )
    return bytes(key)
