"""One transactional producer's life, shared by every exactly-once writer to Kafka.

The processor, the pipeline's ``KafkaSink`` (and the repartition sink built on
it) and the outbox relay all write through :class:`TransactionalProducer`, so
there is one answer to each question a transaction raises:

* **Errors** go through :func:`eoscore.kafka.errors.classify` once: retriable
  calls are repeated until ``operation_timeout_s``; an abortable error raises
  :class:`TransactionAbortRequired` (the caller aborts and redoes the inputs);
  fencing raises :class:`ProducerFencedError`, or
  :class:`TransactionTimeoutError` when the transaction outlived
  ``transaction.timeout.ms``; a fatal error raises :class:`FatalKafkaError`.
* **Deadlines**: no call waits longer than ``operation_timeout_s``, a full
  local queue included.
* **Aborts** run in short attempts. librdkafka purges only the records queued
  when abort is called; records in flight then return to the retry queue and
  wait there for the abort itself, so one long attempt can time out with every
  record still "outstanding" while a second attempt finishes at once.
* **Failpoints**: ``<prefix>.before_commit`` (outputs produced, offsets added,
  commit not called) and ``<prefix>.after_commit``, the same two moments for
  every user.
* **Metrics**: :class:`TransactionMetrics` (commits, aborts, retries, commit
  latency percentiles).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple, NoReturn, TypeVar

from confluent_kafka import KafkaError, KafkaException, Producer

from eoscore import failpoints
from eoscore.kafka.errors import (
    ErrorAction,
    FatalKafkaError,
    KafkaProcessorError,
    ProducerFencedError,
    TransactionAbortRequired,
    TransactionTimeoutError,
    classify,
)

__all__ = ["OutputRecord", "TransactionMetrics", "TransactionalProducer"]

_log = logging.getLogger("eoscore.kafka")
_T = TypeVar("_T")

#: Longest single abort attempt (see the module doc).
ABORT_ATTEMPT_S = 1.0


class OutputRecord(NamedTuple):
    """One record for the producer. ``partition=None`` lets the partitioner pick.

    A named tuple: cheap to build once per output record.
    """

    topic: str
    value: bytes | str | None
    key: bytes | str | None = None
    headers: list[tuple[str, bytes | str | None]] | None = None
    partition: int | None = None


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, round(q * (len(sorted_values) - 1)))]


class TransactionMetrics:
    """Counters of one transactional producer; the commit latency covers offsets + commit."""

    def __init__(self, window: int = 1024) -> None:
        self.commits = 0
        self.aborts = 0
        self.retries = 0
        self.latencies: deque[float] = deque(maxlen=window)

    def commit_done(self, latency_s: float) -> None:
        self.commits += 1
        self.latencies.append(latency_s)

    def commit_latency_ms(self, q: float) -> float:
        """The ``q`` quantile (0..1) of the last ``window`` commits, in ms."""
        return _percentile(sorted(self.latencies), q) * 1000.0


class TransactionalProducer:
    """A ``confluent_kafka.Producer`` with ``transactional.id``, and its one transaction.

    ``config`` is the producer's librdkafka configuration and must hold
    ``transactional.id``. ``failpoint_prefix`` names this user's failpoints.
    """

    def __init__(
        self,
        config: Mapping[str, Any],
        *,
        operation_timeout_s: float = 30.0,
        failpoint_prefix: str = "kafka",
        logger: logging.Logger | None = None,
        metrics: TransactionMetrics | None = None,
    ) -> None:
        if "transactional.id" not in config:
            raise KafkaProcessorError("a transactional producer needs a transactional.id")
        self.transactional_id = str(config["transactional.id"])
        self.config = {"enable.idempotence": True, **dict(config)}
        self.operation_timeout_s = operation_timeout_s
        self.txn_timeout_s = float(self.config.get("transaction.timeout.ms", 60_000)) / 1000.0
        self.metrics = metrics if metrics is not None else TransactionMetrics()
        self._fp_before = f"{failpoint_prefix}.before_commit"
        self._fp_after = f"{failpoint_prefix}.after_commit"
        self._log = logger or _log
        self._producer = Producer(self.config)
        self.in_transaction = False
        self.started = 0.0  # monotonic time the open transaction began
        self.dead = False  # fenced or fatal: never use the producer again

    # --- the transaction ------------------------------------------------------------

    def init(self) -> None:
        """Claim the transactional id: older producers with it are fenced, their
        open transaction aborted."""
        self._retrying(
            "init_transactions",
            lambda: self._producer.init_transactions(self.operation_timeout_s),
        )

    def begin(self) -> None:
        if self.in_transaction:
            return
        self._call("begin_transaction", self._producer.begin_transaction)
        self.in_transaction = True
        self.started = time.monotonic()

    def produce(
        self,
        topic: str,
        value: bytes | str | None,
        key: bytes | str | None = None,
        headers: Any = None,
        partition: int | None = None,
    ) -> None:
        """One record into the open transaction; waits (bounded) while the queue is full."""
        try:
            if headers is None and partition is None:
                self._producer.produce(topic, value, key)
            else:
                self._producer.produce(
                    topic, value, key, -1 if partition is None else partition, headers=headers
                )
        except BufferError:
            self._produce_slow(OutputRecord(topic, value, key, headers, partition))
        except KafkaException as exc:
            self._handle(exc.args[0], "produce")
            self._produce_slow(OutputRecord(topic, value, key, headers, partition))

    def produce_all(self, records: Iterable[OutputRecord]) -> int:
        """Every record into the open transaction; the count produced."""
        produce = self._producer.produce
        n = 0
        for rec in records:
            topic, value, key, headers, partition = rec
            try:
                if headers is None and partition is None:
                    produce(topic, value, key)  # the common case: no keyword parsing
                elif partition is None:
                    produce(topic, value, key, headers=headers)
                else:
                    produce(topic, value, key, partition, headers=headers)
            except BufferError:
                self._produce_slow(OutputRecord(*rec))
            except KafkaException as exc:
                self._handle(exc.args[0], "produce")
                self._produce_slow(OutputRecord(*rec))
            n += 1
        self._producer.poll(0)
        return n

    def _produce_slow(self, rec: OutputRecord) -> None:
        deadline = time.monotonic() + self.operation_timeout_s
        while True:
            self._producer.poll(0.05)  # let deliveries drain
            try:
                self._producer.produce(
                    rec.topic,
                    rec.value,
                    rec.key,
                    -1 if rec.partition is None else rec.partition,
                    headers=rec.headers,
                )
                return
            except BufferError:
                if time.monotonic() > deadline:
                    raise TransactionAbortRequired(
                        f"{self.transactional_id}: the local queue stayed full for "
                        f"{self.operation_timeout_s:.0f}s (is the broker reachable?)"
                    ) from None
            except KafkaException as exc:
                self._handle(exc.args[0], "produce")
                if time.monotonic() > deadline:
                    raise TransactionAbortRequired(f"produce kept failing: {exc}") from exc

    def poll(self, timeout: float = 0.0) -> None:
        self._producer.poll(timeout)

    def flush(self) -> None:
        """Wait (bounded) until every record of the transaction is acknowledged."""
        remaining = self._producer.flush(self.operation_timeout_s)
        if remaining:
            raise TransactionAbortRequired(
                f"{self.transactional_id}: {remaining} records not acknowledged within "
                f"{self.operation_timeout_s:.0f}s"
            )

    def commit(self, offsets: Sequence[Any] = (), group_metadata: Any = None) -> None:
        """Add ``offsets`` (of the consumer group ``group_metadata``) and commit.

        Raises :class:`TransactionAbortRequired` when the transaction cannot
        commit but an abort and a redo can fix it.
        """
        started = time.monotonic()
        if offsets:
            self._retrying(
                "send_offsets_to_transaction",
                lambda: self._producer.send_offsets_to_transaction(
                    list(offsets), group_metadata, self.operation_timeout_s
                ),
                abortable=True,
            )
        failpoints.hit(self._fp_before)
        self._retrying(
            "commit_transaction",
            lambda: self._producer.commit_transaction(self.operation_timeout_s),
            abortable=True,
        )
        self.in_transaction = False
        self.metrics.commit_done(time.monotonic() - started)
        failpoints.hit(self._fp_after)

    def abort(self) -> None:
        """Abort the open transaction (if any), in short attempts."""
        if not self.in_transaction:
            return
        self._retrying(
            "abort_transaction",
            lambda: self._producer.abort_transaction(
                min(self.operation_timeout_s, ABORT_ATTEMPT_S)
            ),
        )
        self.in_transaction = False
        self.metrics.aborts += 1

    def close(self) -> None:
        """Abort what is open if the producer is usable, then release it. Never raises
        a Kafka error: the next ``init`` with this id aborts anything left."""
        if not self.dead and self.in_transaction:
            try:
                self.abort()
            except KafkaProcessorError as exc:
                self._log.warning("%s: abort on close: %s", self.transactional_id, exc)
        self.in_transaction = False
        self.dead = True
        try:
            self._producer.flush(0)
        except KafkaException as exc:  # pragma: no cover - flush(0) reports no errors today
            self._log.warning("%s: flush on close: %s", self.transactional_id, exc)

    # --- errors ----------------------------------------------------------------------

    def _call(self, op: str, fn: Callable[[], _T]) -> _T:
        try:
            return fn()
        except KafkaException as exc:
            self._handle(exc.args[0], op)
            raise TransactionAbortRequired(f"{op}: {exc.args[0]}") from exc

    def _retrying(self, op: str, fn: Callable[[], _T], *, abortable: bool = False) -> _T:
        """Call ``fn``, repeating it on retriable errors for ``operation_timeout_s``."""
        deadline = time.monotonic() + self.operation_timeout_s
        delay = 0.05
        while True:
            try:
                return fn()
            except KafkaException as exc:
                err = exc.args[0]
                self._handle(err, op)
                if time.monotonic() > deadline:
                    if abortable:
                        raise TransactionAbortRequired(f"{op} kept failing: {err}") from exc
                    raise KafkaProcessorError(
                        f"{self.transactional_id}: {op} still failing after "
                        f"{self.operation_timeout_s:.0f}s: {err.str()}",
                        err,
                    ) from exc
                self.metrics.retries += 1
                self._log.info("%s: %s: retriable, retrying: %s", self.transactional_id, op, err)
                self._producer.poll(0)  # serve delivery reports between attempts
                time.sleep(delay)
                delay = min(delay * 2, 1.0)

    def _handle(self, err: Any, op: str) -> None:
        """Return for a retriable error; raise for every other."""
        action = classify(err)
        if action is ErrorAction.RETRY:
            return
        if action is ErrorAction.ERROR and err.code() == KafkaError._STATE and self.in_transaction:
            # produce() refuses with _STATE once an earlier delivery failure put the
            # transaction in its abortable-error state. Abort; if the state is
            # really fatal, abort_transaction raises that fatal error.
            raise TransactionAbortRequired(f"{op}: {err.str()} (transaction in error state)")
        if action is ErrorAction.ABORT:
            raise TransactionAbortRequired(f"{op}: {err.str()}")
        if action in (ErrorAction.FENCED, ErrorAction.FATAL):
            self.raise_fatal(err, op)
        raise KafkaProcessorError(f"{self.transactional_id}: {op} failed: {err.str()}", err)

    def raise_fatal(self, err: Any, op: str) -> NoReturn:
        """Mark the producer dead and raise the fencing, timeout or fatal error for ``err``."""
        self.dead = True
        if classify(err) is ErrorAction.FENCED:
            age = time.monotonic() - self.started
            if self.in_transaction and age >= self.txn_timeout_s:
                raise TransactionTimeoutError(
                    f"transactional.id {self.transactional_id!r}: the transaction was open "
                    f"{age:.1f}s, longer than transaction.timeout.ms "
                    f"({self.txn_timeout_s * 1000:.0f}); the coordinator aborted it ({op}: "
                    f"{err.str()}). Restart to resume from committed offsets; raise "
                    "transaction_timeout_ms if batches are that slow",
                    err,
                )
            raise ProducerFencedError(
                f"transactional.id {self.transactional_id!r}: another instance with this id "
                f"took over ({op}: {err.str()}); this one stopped and none of its "
                "uncommitted writes will be visible",
                err,
            )
        raise FatalKafkaError(
            f"transactional.id {self.transactional_id!r}: fatal Kafka error in {op}: "
            f"{err.str()}; restart the process",
            err,
        )
