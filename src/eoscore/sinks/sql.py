"""Exactly-once sinks into SQLite (the embedded default) and PostgreSQL.

Two roles, two classes (docs/sinks.md has the protocol with numbered steps):

* :class:`StandaloneSqlSink` is a :class:`DecidingSink`: a pipeline whose only
  sink is this database commits the checkpoint's rows *and* the source positions
  plus checkpoint id in ONE database transaction (table ``eoscore_sink_state``).
  ``read_decision()`` reads them back: the database is the positions' source of
  truth, so "crash between the database write and the offset commit" cannot
  happen (there is no second commit).
* :class:`SqlSink` is a participant in a multi-sink checkpoint. PostgreSQL
  pre-commits with ``PREPARE TRANSACTION 'eoscore:<pipeline>:<sink>@<worker>:<n>'`` and
  commits with ``COMMIT PREPARED`` from any connection; SQLite (no 2PC) stages
  the rows in a side table under checkpoint id n and moves them at commit. Both
  record n in ``eoscore_sink_ledger`` inside the committing transaction, which
  makes ``commit`` redoable and tells "already committed" from "lost".

Modes: ``append`` (PostgreSQL appends use ``COPY``) and ``upsert``
(``INSERT ... ON CONFLICT (key) DO UPDATE``: the database resolves races; never
check-then-insert). Records are mappings (by column name) or sequences (in
column order).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from operator import itemgetter
from typing import Any

from eoscore import failpoints
from eoscore.sinks._sqldb import (
    GID_PREFIX,
    Database,
    PreparedTransaction,
    connect,
    data_errors,
    list_prepared,
    quote,
    resolve_prepared,
    sqlite_has_constraints,
)
from eoscore.sinks.errors import (
    SinkConfigError,
    SinkFencedError,
    SinkRecoveryError,
    SinkStateError,
    SinkWriteError,
)
from eoscore.sinks.two_phase import (
    DecidingSink,
    Decision,
    PreparedHandle,
    RecoveryPlan,
    TwoPhaseSink,
)

__all__ = [
    "GID_PREFIX",
    "PreparedTransaction",
    "SqlSink",
    "StandaloneSqlSink",
    "list_prepared",
    "resolve_prepared",
]

LEDGER_KEEP = 64  # ledger rows kept per sink (older ones are pruned at pre-commit)


class _SqlBase(TwoPhaseSink):
    """Connection handling, batching and row-level error reporting."""

    def __init__(
        self,
        database: str,
        table: str,
        columns: Sequence[str],
        *,
        mode: str = "append",
        key: Sequence[str] = (),
        update: Sequence[str] | None = None,
        merge: Mapping[str, str] | None = None,
        name: str | None = None,
        batch_size: int = 2000,
        meta_prefix: str = "eoscore_sink",
    ) -> None:
        if mode not in ("append", "upsert"):
            raise SinkConfigError(f"SqlSink mode must be 'append' or 'upsert', not {mode!r}")
        if not columns:
            raise SinkConfigError("SqlSink needs at least one column")
        if mode == "upsert" and not key:
            raise SinkConfigError("upsert mode needs key=(...): the conflict target columns")
        if batch_size < 1:
            raise SinkConfigError(f"batch_size must be >= 1, not {batch_size}")
        self.database = database
        self.table = table
        self.columns = tuple(columns)
        self.mode = mode
        self.key = tuple(key)
        self.update = tuple(c for c in self.columns if c not in self.key) if update is None \
            else tuple(update)
        self.merge = dict(merge or {})
        unknown = set(self.merge) - set(self.update)
        if unknown:
            raise SinkConfigError(f"merge names columns that are not updated: {sorted(unknown)}")
        self._key_index = [self.columns.index(c) for c in self.key if c in self.columns]
        self.name = name or f"sql:{table}"
        self.batch_size = batch_size
        self.meta_prefix = meta_prefix
        self.pipeline = ""
        self._owner = self.name  # the sink's rows in the meta tables: name@worker
        self._db: Database | None = None
        self._getter = itemgetter(*self.columns)
        self._open_id: int | None = None  # checkpoint collecting writes
        self._txn_id: int | None = None  # checkpoint whose transaction is open
        self._awaiting: int | None = None  # pre-committed, not yet committed
        self._buffer: list[Any] = []
        self._buffer_start = 0  # index (within the checkpoint) of _buffer[0]
        self._written = 0
        self._failed: int | None = None

    # --- connecting ---------------------------------------------------------------

    def open(self, pipeline: str, worker: str) -> None:
        """Connect and create the meta tables. Rows, positions and prepared transactions
        are per (pipeline, sink, worker): workers never resolve each other's."""
        self.pipeline = pipeline
        self._owner = f"{self.name}@{worker}" if worker else self.name
        self._db = connect(self.database)
        db = self._db
        schema, _, _ = self.table.rpartition(".")
        prefix = f"{schema}." if schema else ""
        self._state = quote(f"{prefix}{self.meta_prefix}_state")
        self._ledger = quote(f"{prefix}{self.meta_prefix}_ledger")
        self._target = quote(self.table)
        with db.transaction(lock="eoscore_sink_meta"):
            db.execute(
                f"CREATE TABLE IF NOT EXISTS {self._state} (pipeline TEXT NOT NULL, "
                "sink TEXT NOT NULL, checkpoint_id BIGINT, positions TEXT, "
                "PRIMARY KEY (pipeline, sink))"
            )
            db.execute(
                f"CREATE TABLE IF NOT EXISTS {self._ledger} (pipeline TEXT NOT NULL, "
                "sink TEXT NOT NULL, checkpoint_id BIGINT NOT NULL, "
                "PRIMARY KEY (pipeline, sink, checkpoint_id))"
            )
            db.execute(
                f"INSERT INTO {self._state} (pipeline, sink) VALUES ({db.p}, {db.p}) "
                "ON CONFLICT DO NOTHING",
                (pipeline, self._owner),
            )
            self._setup(db)
        cols = ", ".join(quote(c) for c in self.columns)
        marks = ", ".join([db.p] * len(self.columns))
        self._insert_sql = f"INSERT INTO {self._target} AS cur ({cols}) VALUES ({marks})"
        self._insert_sql += self._conflict_clause()
        self._copy_sql = f"COPY {self._target} ({cols}) FROM STDIN"

    def _setup(self, db: Database) -> None:
        """Extra schema a subclass needs (inside the meta transaction)."""

    def _conflict_clause(self) -> str:
        if self.mode != "upsert":
            return ""
        target = ", ".join(quote(c) for c in self.key)
        if not self.update:
            return f" ON CONFLICT ({target}) DO NOTHING"
        sets = ", ".join(
            f"{quote(c)} = {self.merge.get(c) or 'excluded.' + quote(c)}" for c in self.update
        )
        return f" ON CONFLICT ({target}) DO UPDATE SET {sets}"

    @property
    def db(self) -> Database:
        if self._db is None:
            raise SinkStateError(f"sink {self.name!r}: call open() first")
        return self._db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    # --- collecting -----------------------------------------------------------------

    def begin(self, checkpoint_id: int) -> None:
        if self._open_id is not None:
            raise SinkStateError(
                f"sink {self.name!r}: begin({checkpoint_id}) while checkpoint "
                f"{self._open_id} is still open (pre_commit it first)"
            )
        self._open_id = checkpoint_id
        self._buffer = []
        self._buffer_start = 0
        self._written = 0
        self._failed = None

    def write(self, records: Sequence[Any]) -> None:
        n = self._require_open("write")
        self._buffer.extend(records)
        if len(self._buffer) >= self.batch_size and self._can_flush():
            self._flush(n)

    def _require_open(self, what: str) -> int:
        if self._open_id is None:
            raise SinkStateError(f"sink {self.name!r}: {what}() outside begin/pre_commit")
        if self._failed == self._open_id:
            raise SinkStateError(
                f"sink {self.name!r}: checkpoint {self._failed} already failed; abort it"
            )
        return self._open_id

    def _can_flush(self) -> bool:
        return self._awaiting is None

    def _rows(self, records: Sequence[Any], start: int, n: int) -> list[Any]:
        if records and not isinstance(records[0], Mapping):
            return list(records)
        getter, one = self._getter, len(self.columns) == 1
        rows = []
        for i, record in enumerate(records):
            try:
                value = getter(record)
            except (KeyError, TypeError) as exc:
                self._fail(n)
                raise SinkWriteError(
                    self.name, n, start + i, record, f"missing column {exc}"
                ) from exc
            rows.append((value,) if one else value)
        return rows

    def _flush(self, n: int) -> None:
        """Write the buffer into the open transaction of checkpoint n (starting it)."""
        if not self._buffer:
            return
        db = self.db
        if self._txn_id is None:
            db.begin()
        self._txn_id = n  # (a standalone sink may carry an undecided checkpoint's rows)
        records, start = self._buffer, self._buffer_start
        self._buffer = []
        self._buffer_start = start + len(records)
        rows = self._rows(records, start, n)
        if self.mode == "upsert":
            # Concurrent writers then lock keys in one order (fewer deadlocks); the
            # sort is stable, so updates of one key keep their order.
            idx = self._key_index
            try:
                order = sorted(range(len(rows)), key=lambda i: [rows[i][j] for j in idx])
            except TypeError:  # keys of mixed types: keep the order
                order = list(range(len(rows)))
            rows = [rows[i] for i in order]
        else:
            order = list(range(len(rows)))
        db.execute("SAVEPOINT eos_batch")
        try:
            self._insert(rows)
        except data_errors(db) as exc:
            db.execute("ROLLBACK TO SAVEPOINT eos_batch")
            index, reason = self._find_bad_row(rows, exc)
            self._fail(n)
            original = order[index]
            raise SinkWriteError(self.name, n, start + original, records[original], reason) from exc
        db.execute("RELEASE SAVEPOINT eos_batch")
        failpoints.hit("sql.after_flush")

    def _insert(self, rows: list[Any]) -> None:
        db = self.db
        if db.kind == "postgresql" and self.mode == "append":
            db.copy(self._copy_sql, rows)
        else:
            db.executemany(self._insert_sql, rows)

    def _find_bad_row(self, rows: list[Any], exc: Exception) -> tuple[int, str]:
        db = self.db
        for i, row in enumerate(rows):
            db.execute("SAVEPOINT eos_row")
            try:
                db.executemany(self._insert_sql, [row])
            except data_errors(db) as row_exc:
                db.execute("ROLLBACK TO SAVEPOINT eos_row")
                return i, str(row_exc)
            db.execute("RELEASE SAVEPOINT eos_row")
        return 0, str(exc)

    def _fail(self, n: int) -> None:
        """Roll the checkpoint's transaction back: nothing partial stays around."""
        self._failed = n
        self._buffer = []
        if self._txn_id == n:
            self.db.rollback()
            self._txn_id = None

    # --- shared pieces of abort ------------------------------------------------------

    def _drop_open(self, checkpoint_id: int) -> None:
        if self._txn_id == checkpoint_id:
            self.db.rollback()
            self._txn_id = None
        if self._open_id == checkpoint_id:
            self._open_id = None
            self._buffer = []
        if self._awaiting == checkpoint_id:
            self._awaiting = None
        self._failed = None

    def _after_commit(self) -> None:
        """Flush what the next checkpoint buffered while this one was being decided."""
        self._awaiting = None
        if self._open_id is not None and len(self._buffer) >= self.batch_size:
            self._flush(self._open_id)


class StandaloneSqlSink(_SqlBase, DecidingSink):
    """The pipeline's only sink: rows, positions and checkpoint id in one transaction.

    The transaction of checkpoint n stays open from its first flush until
    ``commit_decision(n, positions, ...)`` commits it; rows of n+1 are buffered in
    memory meanwhile. A second instance of the same pipeline and sink is fenced:
    the state row only moves forward, so its stale commit is rolled back.
    """

    def recover(self, plan: RecoveryPlan) -> None:
        if self._txn_id is not None:
            self.db.rollback()
            self._txn_id = None
        recorded = self.read_decision()
        done = recorded.checkpoint_id if recorded else None
        for n, _ in plan.commit:
            if done is None or n > done:
                raise SinkRecoveryError(
                    f"sink {self.name!r}: asked to redo the commit of checkpoint {n}, but "
                    f"this deciding sink recorded {done}; its output of {n} is gone "
                    "(was it used as a participant?)"
                )
        self._open_id = self._awaiting = self._failed = None

    def pre_commit(self, checkpoint_id: int) -> PreparedHandle:
        n = self._require_open("pre_commit")
        if n != checkpoint_id:
            raise SinkStateError(f"sink {self.name!r}: pre_commit({checkpoint_id}) but {n} open")
        # If checkpoint n-1 is still undecided (it failed after its pre-commit), its
        # rows stay in the open transaction and are carried forward: the decision
        # of n commits both, with n's positions.
        self._flush(n)
        self._open_id = None
        self._awaiting = n
        failpoints.hit("sql.after_pre_commit")
        return {"sink": self.name, "checkpoint_id": n, "standalone": True}

    def commit_decision(
        self, checkpoint_id: int, positions: Mapping[str, Any], handle: PreparedHandle
    ) -> None:
        db, n = self.db, checkpoint_id
        if self._awaiting != n:
            recorded = self.read_decision()
            if recorded is not None and recorded.checkpoint_id >= n:
                return  # already decided: redo is a no-op
            raise SinkStateError(f"sink {self.name!r}: commit_decision({n}) without pre_commit")
        if self._txn_id is None:
            db.begin()
            self._txn_id = n
        # Step 3: the decision is this one UPDATE in the same transaction as the rows.
        moved = db.execute(
            f"UPDATE {self._state} SET checkpoint_id = {db.p}, positions = {db.p} "
            f"WHERE pipeline = {db.p} AND sink = {db.p} "
            f"AND (checkpoint_id IS NULL OR checkpoint_id < {db.p})",
            (n, json.dumps(dict(positions), sort_keys=True), self.pipeline, self._owner, n),
        )
        if moved != 1:
            db.rollback()
            self._txn_id = self._awaiting = None
            raise SinkFencedError(
                f"sink {self.name!r}: checkpoint {n} of pipeline {self.pipeline!r} was "
                "already decided by another instance; this one is stale and must stop"
            )
        failpoints.hit("sql.before_decision_commit")
        db.commit()
        self._txn_id = None
        failpoints.hit("sql.after_decision_commit")
        self._after_commit()

    def commit(self, checkpoint_id: int, handle: PreparedHandle) -> None:
        recorded = self.read_decision()
        if recorded is not None and recorded.checkpoint_id >= checkpoint_id:
            return
        raise SinkStateError(
            f"sink {self.name!r} decides its checkpoints: call commit_decision({checkpoint_id})"
        )

    def abort(self, checkpoint_id: int, handle: PreparedHandle | None) -> None:
        self._drop_open(checkpoint_id)

    def read_decision(self) -> Decision | None:
        db = self.db
        row = db.query_one(
            f"SELECT checkpoint_id, positions FROM {self._state} "
            f"WHERE pipeline = {db.p} AND sink = {db.p}",
            (self.pipeline, self._owner),
            fresh=self._txn_id is not None,
        )
        if row is None or row[0] is None:
            return None
        return Decision(int(row[0]), json.loads(row[1]) if row[1] else {})


class SqlSink(_SqlBase):
    """A participant in a multi-sink checkpoint (prepared transactions / staged rows).

    PostgreSQL needs ``max_prepared_transactions`` > 0. A prepared transaction
    holds its locks until resolved, so recovery resolves every leftover of this
    pipeline and sink; ``eoscore sql prepared`` lists and resolves them by hand.
    """

    def _setup(self, db: Database) -> None:
        if db.kind == "sqlite":
            cols = ", ".join(quote(c) for c in self.columns)
            self._staging = quote(f"{self.table}__eoscore_staging")
            db.execute(
                f"CREATE TABLE IF NOT EXISTS {self._staging} (eos_pipeline TEXT, "
                f"eos_sink TEXT, eos_checkpoint INTEGER, {cols})"
            )

    def open(self, pipeline: str, worker: str) -> None:
        super().open(pipeline, worker)
        if self.db.kind == "sqlite":
            cols = ", ".join(quote(c) for c in self.columns)
            marks = ", ".join(["?"] * (len(self.columns) + 3))
            self._stage_sql = (
                f"INSERT INTO {self._staging} (eos_pipeline, eos_sink, eos_checkpoint, {cols}) "
                f"VALUES ({marks})"
            )
            self._move_sql = (
                f"INSERT INTO {self._target} AS cur ({cols}) SELECT {cols} FROM {self._staging} "
                "WHERE eos_pipeline = ? AND eos_sink = ? AND eos_checkpoint = ? ORDER BY rowid"
                + self._conflict_clause()
            )
            self._checked = sqlite_has_constraints(self.db, self.table)

    def gid(self, checkpoint_id: int) -> str:
        return f"{GID_PREFIX}{self.pipeline}:{self._owner}:{checkpoint_id}"

    def _can_flush(self) -> bool:
        # PostgreSQL commits prepared transactions from a second connection; SQLite
        # commits its open staging transaction before a commit or abort.
        return True

    def _end_staging(self, checkpoint_id: int) -> None:
        """SQLite: make staged rows of a later checkpoint durable (harmless: they are
        staged, not visible), so commit/abort of ``checkpoint_id`` get the connection."""
        if self.db.kind == "sqlite" and self._txn_id is not None and (
            self._txn_id != checkpoint_id
        ):
            self.db.commit()
            self._txn_id = None

    def _insert(self, rows: list[Any]) -> None:
        if self.db.kind == "sqlite":
            n = self._txn_id
            tag = (self.pipeline, self._owner, n)
            self.db.executemany(self._stage_sql, [tag + tuple(r) for r in rows])
        else:
            super()._insert(rows)

    # --- phase one ---------------------------------------------------------------------

    def pre_commit(self, checkpoint_id: int) -> PreparedHandle:
        n = self._require_open("pre_commit")
        if n != checkpoint_id:
            raise SinkStateError(f"sink {self.name!r}: pre_commit({checkpoint_id}) but {n} open")
        self._flush(n)
        db = self.db
        if self._txn_id is None:
            db.begin()
            self._txn_id = n
        if db.kind == "sqlite":
            if self._checked:
                self._trial_move(n)
            handle: dict[str, Any] = {"sink": self.name, "checkpoint_id": n, "staged": True}
            db.commit()
        else:
            p = db.p
            db.execute(
                f"INSERT INTO {self._ledger} (pipeline, sink, checkpoint_id) "
                f"VALUES ({p}, {p}, {p})",
                (self.pipeline, self._owner, n),
            )
            db.execute(
                f"DELETE FROM {self._ledger} WHERE pipeline = {p} AND sink = {p} "
                f"AND checkpoint_id < {p}",
                (self.pipeline, self._owner, n - LEDGER_KEEP),
            )
            failpoints.hit("sql.before_prepare")
            gid = self.gid(n)
            db.prepare(gid)
            handle = {"sink": self.name, "checkpoint_id": n, "gid": gid}
        self._txn_id = None
        self._open_id = None
        self._awaiting = n
        failpoints.hit("sql.after_prepare")
        return handle

    def _trial_move(self, n: int) -> None:
        """SQLite: check the staged rows against the target's constraints now, not at
        commit (a commit after the decision must not fail). Costs a second insert."""
        db = self.db
        db.execute("SAVEPOINT eos_trial")
        try:
            db.execute(self._move_sql, (self.pipeline, self._owner, n))
        except sqlite3.Error:
            db.execute("ROLLBACK TO SAVEPOINT eos_trial")
            staged = db.query_all(
                f"SELECT {', '.join(quote(c) for c in self.columns)} FROM {self._staging} "
                "WHERE eos_pipeline = ? AND eos_sink = ? AND eos_checkpoint = ? ORDER BY rowid",
                (self.pipeline, self._owner, n),
            )
            index, reason = self._find_bad_row([tuple(r) for r in staged], RuntimeError("?"))
            self._fail(n)
            raise SinkWriteError(self.name, n, index, tuple(staged[index]), reason) from None
        db.execute("ROLLBACK TO SAVEPOINT eos_trial")
        db.execute("RELEASE SAVEPOINT eos_trial")

    # --- phase two -----------------------------------------------------------------------

    def commit(self, checkpoint_id: int, handle: PreparedHandle) -> None:
        n, db = checkpoint_id, self.db
        self._end_staging(n)
        if db.kind == "postgresql":
            gid = str(handle.get("gid") or self.gid(n))
            if not db.finish_prepared(gid, commit=True) and not self._in_ledger(n):
                raise SinkRecoveryError(
                    f"sink {self.name!r}: prepared transaction {gid!r} is gone and checkpoint "
                    f"{n} is not in {self._ledger}: it was rolled back by someone else"
                )
        else:
            with db.transaction():
                if not self._in_ledger(n):
                    failpoints.hit("sql.before_move")
                    db.execute(self._move_sql, (self.pipeline, self._owner, n))
                    db.execute(
                        f"DELETE FROM {self._staging} WHERE eos_pipeline = ? AND eos_sink = ? "
                        "AND eos_checkpoint = ?",
                        (self.pipeline, self._owner, n),
                    )
                    db.execute(
                        f"INSERT INTO {self._ledger} (pipeline, sink, checkpoint_id) "
                        "VALUES (?, ?, ?)",
                        (self.pipeline, self._owner, n),
                    )
                    db.execute(
                        f"DELETE FROM {self._ledger} WHERE pipeline = ? AND sink = ? "
                        "AND checkpoint_id < ?",
                        (self.pipeline, self._owner, n - LEDGER_KEEP),
                    )
        failpoints.hit("sql.after_commit")
        if self._awaiting == n:
            self._after_commit()

    def abort(self, checkpoint_id: int, handle: PreparedHandle | None) -> None:
        n, db = checkpoint_id, self.db
        self._end_staging(n)
        self._drop_open(n)
        if db.kind == "postgresql":
            gid = str((handle or {}).get("gid") or self.gid(n))
            if not db.finish_prepared(gid, commit=False) and self._in_ledger(n):
                raise SinkRecoveryError(
                    f"sink {self.name!r}: abort({n}) but checkpoint {n} was already committed"
                )
        else:
            with db.transaction():
                db.execute(
                    f"DELETE FROM {self._staging} WHERE eos_pipeline = ? AND eos_sink = ? "
                    "AND eos_checkpoint = ?",
                    (self.pipeline, self._owner, n),
                )

    def _in_ledger(self, n: int) -> bool:
        db = self.db
        row = db.query_one(
            f"SELECT 1 FROM {self._ledger} WHERE pipeline = {db.p} AND sink = {db.p} "
            f"AND checkpoint_id = {db.p}",
            (self.pipeline, self._owner, n),
            fresh=True,
        )
        return row is not None

    def leftovers(self) -> list[int]:
        """Checkpoint ids prepared (or staged) by this pipeline and sink, unresolved."""
        db = self.db
        if db.kind == "postgresql":
            prefix = f"{GID_PREFIX}{self.pipeline}:{self._owner}:"
            rows = db.query_all(
                "SELECT gid FROM pg_prepared_xacts WHERE database = current_database() "
                "AND left(gid, %s) = %s",
                (len(prefix), prefix),
                fresh=True,
            )
            return sorted(int(r[0][len(prefix):]) for r in rows)
        rows = db.query_all(
            f"SELECT DISTINCT eos_checkpoint FROM {self._staging} "
            "WHERE eos_pipeline = ? AND eos_sink = ?",
            (self.pipeline, self._owner),
        )
        return sorted(int(r[0]) for r in rows)

    def recover(self, plan: RecoveryPlan) -> None:
        """Step R: redo the decided commit, abort the undecided, then sweep leftovers."""
        self._drop_open(self._txn_id) if self._txn_id is not None else None
        self._open_id = self._awaiting = self._failed = None
        for n, handle in plan.commit:
            self.commit(n, handle)
        for n, handle in plan.abort:
            self.abort(n, handle)
        decided = plan.decided.checkpoint_id if plan.decided else None
        unsure = []
        for n in self.leftovers():
            if decided is None or n > decided:
                self.abort(n, None)  # never decided: decisions only move forward
            else:
                unsure.append(n)
        if unsure:
            raise SinkRecoveryError(
                f"sink {self.name!r}: checkpoints {unsure} of pipeline {self.pipeline!r} are "
                f"still prepared but not in the recovery plan (decided: {decided}); resolve "
                "them with `eoscore sql prepared` (commit if decided, else rollback)"
            )

