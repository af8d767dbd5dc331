"""The transactional outbox, relayed to Kafka exactly once.

:class:`OutboxWriter` puts outbox rows into the application's own database
transaction, next to its business rows: both commit or neither does.

:class:`OutboxRelay` publishes them, in id order, with the numbered steps below
(docs/sinks.md explains each):

1. Start: take the relay's PostgreSQL advisory lock (standbys wait here), then
   ``init_transactions()`` with ``transactional.id = eoscore-outbox.<name>``. That
   fences every older instance: its open transaction is aborted and its later
   commits fail.
2. Recover: read the last relay-state record (key ``<name>``, compacted topic)
   under ``read_committed``. It lists the ids of the last committed batch: mark
   those rows published. They are the only rows that can be published but not
   marked, because a batch is marked before the next one starts.
3. Read up to ``batch_size`` unpublished rows, ordered by id.
4. In ONE Kafka transaction: produce the rows, and produce the new relay-state
   record (batch number and the ids).
5. Commit the Kafka transaction: this is the decision.
6. Mark the rows published in the database; go to 3.

A crash between 5 and 6 leaves rows published but unmarked; step 2 of the next
instance marks them without producing them again.

Why the article's "the idempotent producer handles duplicates" is not enough:
the broker drops a retried batch only when it carries the *same* producer id,
epoch and sequence number as one it already has. Those live in the producer's
memory. A relay that restarts gets a new producer id (or, with a transactional
id, a bumped epoch and sequence numbers from zero), so the rows it republishes
after a crash between "publish" and "mark" are new records to the broker:
duplicates. Only a position committed atomically *with* the records (step 4)
lets the next instance know what was already published.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from eoscore import failpoints
from eoscore.kafka.errors import ProducerFencedError, TransactionAbortRequired
from eoscore.kafka.txn import TransactionalProducer
from eoscore.sinks._sqldb import Database, connect, quote
from eoscore.sinks.errors import RelayFencedError, SinkConfigError, SinkError

__all__ = ["OutboxRelay", "OutboxWriter", "compact_ranges"]

DEFAULT_TABLE = "eoscore_outbox"
DEFAULT_STATE_TOPIC = "eoscore-outbox-relay-state"

def _bytes(value: bytes | str | None) -> bytes | None:
    return value.encode() if isinstance(value, str) else value


def compact_ranges(ids: Sequence[int]) -> list[list[int]]:
    """Sorted ids as ``[[first, last], ...]`` runs (the relay-state encoding)."""
    runs: list[list[int]] = []
    for i in sorted(ids):
        if runs and runs[-1][1] + 1 == i:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return runs


class OutboxWriter:
    """Adds outbox rows on the caller's connection, inside the caller's transaction.

    ``conn`` is a ``sqlite3.Connection`` or a psycopg 3 connection; this class
    never begins or commits: atomicity with the business rows is the point.
    """

    def __init__(self, table: str = DEFAULT_TABLE) -> None:
        self.table = table

    def create_table(self, conn: Any) -> None:
        """Create the outbox table (and its index of unpublished rows) if missing."""
        t, sqlite = quote(self.table), isinstance(conn, sqlite3.Connection)
        ident = "INTEGER PRIMARY KEY AUTOINCREMENT" if sqlite else "BIGSERIAL PRIMARY KEY"
        blob, stamp = ("BLOB", "REAL") if sqlite else ("BYTEA", "TIMESTAMPTZ")
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {t} (id {ident}, topic TEXT NOT NULL, key {blob}, "
            f"value {blob}, headers TEXT, published_at {stamp})"
        )
        index = quote(self.table.rpartition(".")[2] + "_unpublished")
        conn.execute(
            f"CREATE INDEX IF NOT EXISTS {index} ON {t} (id) WHERE published_at IS NULL"
        )

    def add(
        self,
        conn: Any,
        topic: str,
        value: bytes | str | None,
        key: bytes | str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """One outbox row; published to ``topic`` once the caller commits."""
        self.add_many(conn, [(topic, key, value, headers)])

    def add_many(
        self,
        conn: Any,
        rows: Sequence[tuple[str, bytes | str | None, bytes | str | None, Any]],
    ) -> None:
        """Rows of ``(topic, key, value, headers)``; ids follow the given order."""
        p = "?" if isinstance(conn, sqlite3.Connection) else "%s"
        sql = (
            f"INSERT INTO {quote(self.table)} (topic, key, value, headers) "
            f"VALUES ({p}, {p}, {p}, {p})"
        )
        params = [
            (topic, _bytes(key), _bytes(value), json.dumps(dict(headers)) if headers else None)
            for topic, key, value, headers in rows
        ]
        if isinstance(conn, sqlite3.Connection):
            conn.executemany(sql, params)
        else:
            with conn.cursor() as cur:
                cur.executemany(sql, params)


class OutboxRelay:
    """Publishes outbox rows to Kafka exactly once for ``read_committed`` readers.

    Several instances may run with the same ``name``: on PostgreSQL they queue
    on an advisory lock (one active relay, the others standby), and Kafka's
    transactional-id fencing stops an older instance that still runs.
    """

    def __init__(
        self,
        database: str,
        bootstrap: str,
        *,
        name: str = "relay",
        table: str = DEFAULT_TABLE,
        state_topic: str = DEFAULT_STATE_TOPIC,
        batch_size: int = 500,
        producer_config: Mapping[str, Any] | None = None,
        timeout_s: float = 30.0,
    ) -> None:
        if batch_size < 1:
            raise SinkConfigError(f"batch_size must be >= 1, not {batch_size}")
        self.database = database
        self.bootstrap = bootstrap
        self.name = name
        self.table = table
        self.state_topic = state_topic
        self.batch_size = batch_size
        self.timeout_s = timeout_s
        self.producer_config = dict(producer_config or {})
        self.batch = 0  # number of the last committed batch
        self.published = 0
        self._db: Database | None = None
        self._producer: TransactionalProducer | None = None

    # --- Step 1 and 2 --------------------------------------------------------------

    def start(self) -> None:
        """Lock, fence older instances, and mark what the last batch published."""
        db = self._db = connect(self.database)
        if db.kind == "postgresql":  # Step 1: standbys wait here
            db.execute("SELECT pg_advisory_lock(hashtext(%s))", (f"eoscore-outbox:{self.name}",))
        config = {
            "bootstrap.servers": self.bootstrap,
            "transactional.id": f"eoscore-outbox.{self.name}",
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            **self.producer_config,
        }
        self._producer = TransactionalProducer(
            config, operation_timeout_s=self.timeout_s, failpoint_prefix="outbox"
        )
        try:
            self._producer.init()
        except ProducerFencedError as exc:
            raise RelayFencedError(f"outbox relay {self.name!r}: {exc}") from exc
        failpoints.hit("outbox.after_init")
        state = self._read_state()  # Step 2
        if state is not None:
            self.batch = int(state["batch"])
            ids = [i for lo, hi in state["ids"] for i in range(lo, hi + 1)]
            self._mark(ids)

    def _read_state(self) -> dict[str, Any] | None:
        """The newest committed relay-state value for our name, or None."""
        from eoscore.kafka.transactions import stable_offsets

        ends = stable_offsets(self.bootstrap, [self.state_topic], timeout_s=self.timeout_s)
        todo = {tp: lso for tp, (lso, _) in ends.items() if lso > 0}
        if not todo:
            return None
        consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": f"eoscore-outbox-reader-{uuid.uuid4().hex}",
                "isolation.level": "read_committed",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "fetch.wait.max.ms": 50,
            }
        )
        key, latest = self.name.encode(), None
        try:
            consumer.assign([TopicPartition(t, p, 0) for t, p in todo])
            deadline = time.monotonic() + self.timeout_s
            while todo:
                if time.monotonic() > deadline:
                    raise SinkError(f"outbox relay {self.name!r}: reading {self.state_topic} "
                                    f"timed out at {todo}")
                msg = consumer.poll(0.2)
                if msg is None:
                    self._prune_done(consumer, todo)
                    continue
                error = msg.error()
                if error is not None:
                    if error.code() != KafkaError._PARTITION_EOF:
                        raise KafkaException(error)
                    continue
                if msg.key() == key:
                    latest = msg.value()
                tp = (msg.topic(), msg.partition())
                if tp in todo and (msg.offset() or 0) + 1 >= todo[tp]:
                    del todo[tp]
                self._prune_done(consumer, todo)
        finally:
            consumer.close()
        return dict(json.loads(latest)) if latest else None

    @staticmethod
    def _prune_done(consumer: Consumer, todo: dict[tuple[str, int], int]) -> None:
        if not todo:
            return
        positions = consumer.position([TopicPartition(t, p) for t, p in todo])
        for tp in positions:
            if tp.offset >= 0 and tp.offset >= todo.get((tp.topic, tp.partition), 1 << 62):
                del todo[(tp.topic, tp.partition)]

    # --- Steps 3 to 6 --------------------------------------------------------------

    def run_once(self) -> int:
        """Relay one batch; return how many rows were published (0: nothing to do)."""
        db, producer = self._require()
        rows = db.query_all(  # Step 3
            f"SELECT id, topic, key, value, headers FROM {quote(self.table)} "
            f"WHERE published_at IS NULL ORDER BY id LIMIT {int(self.batch_size)}"
        )
        if not rows:
            return 0
        ids = [int(r[0]) for r in rows]
        state = {"relay": self.name, "batch": self.batch + 1, "ids": compact_ranges(ids)}
        try:
            producer.begin()  # Step 4
            half = len(rows) // 2
            for i, (_, topic, key, value, headers) in enumerate(rows):
                hdrs = list(json.loads(headers).items()) if headers else None
                producer.produce(topic, _as_bytes(value), _as_bytes(key), hdrs)
                if i == half:
                    failpoints.hit("outbox.mid_batch")
            producer.produce(self.state_topic, json.dumps(state).encode(), self.name.encode())
            producer.commit()  # Step 5: the decision (outbox.before_commit, .after_commit)
        except TransactionAbortRequired:
            producer.abort()  # the batch is read and relayed again
            return 0
        except ProducerFencedError as exc:
            raise RelayFencedError(
                f"outbox relay {self.name!r} was fenced by a newer instance ({exc}); stop this one"
            ) from exc
        self.batch += 1
        self._mark(ids)  # Step 6
        failpoints.hit("outbox.after_mark")
        self.published += len(ids)
        return len(ids)

    def run(
        self,
        stop: Callable[[], bool] = lambda: False,
        *,
        until_idle: bool = False,
        idle_sleep_s: float = 0.2,
    ) -> int:
        """Relay until ``stop()`` is true (or, with ``until_idle``, the outbox is empty)."""
        if self._producer is None:
            self.start()
        total = 0
        while not stop():
            count = self.run_once()
            total += count
            if count == 0:
                if until_idle:
                    break
                time.sleep(idle_sleep_s)
        return total

    def _mark(self, ids: Sequence[int]) -> None:
        if not ids:
            return
        db = self._db
        if db is None:
            raise SinkError(f"outbox relay {self.name!r}: call start() first")
        t = quote(self.table)
        if db.kind == "postgresql":
            db.execute(
                f"UPDATE {t} SET published_at = now() WHERE id = ANY(%s) AND published_at IS NULL",
                (list(ids),),
            )
        else:
            with db.transaction():
                db.executemany(
                    f"UPDATE {t} SET published_at = julianday('now') "
                    "WHERE id = ? AND published_at IS NULL",
                    [(i,) for i in ids],
                )

    def _require(self) -> tuple[Database, TransactionalProducer]:
        if self._db is None or self._producer is None:
            raise SinkError(f"outbox relay {self.name!r}: call start() first")
        return self._db, self._producer

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close()  # aborts an open transaction
            self._producer = None
        if self._db is not None:
            self._db.close()  # releases the advisory lock
            self._db = None


def _as_bytes(value: Any) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, memoryview | bytearray):
        return bytes(value)
    return str(value).encode()
