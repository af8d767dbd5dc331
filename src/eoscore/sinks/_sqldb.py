"""One small facade over ``sqlite3`` and psycopg 3, for the SQL and outbox sinks.

Connections run in autocommit mode and transactions are opened explicitly
(``BEGIN``), so the sinks decide every boundary themselves. PostgreSQL gets a
second, lazily opened control connection for ``COMMIT PREPARED`` (which cannot
run inside a transaction) and for reads that must not join the open one.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

__all__ = [
    "GID_PREFIX",
    "Database",
    "PreparedTransaction",
    "connect",
    "data_errors",
    "is_postgres",
    "list_prepared",
    "quote",
    "resolve_prepared",
    "sqlite_has_constraints",
]

GID_PREFIX = "eoscore:"  # gids: eoscore:<pipeline>:<sink>@<worker>:<checkpoint id>


def is_postgres(database: str) -> bool:
    return database.startswith(("postgresql://", "postgres://"))


def quote(name: str) -> str:
    """Quote a possibly schema-qualified identifier (``a.b`` -> ``"a"."b"``)."""
    return ".".join('"' + part.replace('"', '""') + '"' for part in name.split("."))


def sqlite_path(database: str) -> str:
    for prefix in ("sqlite:///", "sqlite://", "sqlite:"):
        if database.startswith(prefix):
            rest = database[len(prefix):]
            return "/" + rest if prefix == "sqlite:///" and not rest.startswith("/") else rest
    return database


class Database:
    """A connection plus the dialect details the sinks need."""

    def __init__(self, conn: Any, kind: str, dsn: str) -> None:
        self.conn = conn
        self.kind = kind
        self.dsn = dsn
        self.p = "%s" if kind == "postgresql" else "?"  # parameter placeholder
        self._ctl: Any = None

    # --- statements -------------------------------------------------------------

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; return its row count."""
        cur = self.conn.execute(sql, params)
        count: int = cur.rowcount
        return count

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if self.kind == "postgresql":
            with self.conn.cursor() as cur:
                cur.executemany(sql, rows)
        else:
            self.conn.executemany(sql, rows)

    def copy(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """PostgreSQL ``COPY ... FROM STDIN`` of ``rows``."""
        with self.conn.cursor() as cur, cur.copy(sql) as copy:
            write = copy.write_row
            for row in rows:
                write(row)

    def query_all(
        self, sql: str, params: Sequence[Any] = (), *, fresh: bool = False
    ) -> list[tuple[Any, ...]]:
        """Rows of a query; ``fresh`` runs it outside the open transaction (PostgreSQL)."""
        conn = self.control() if fresh and self.kind == "postgresql" else self.conn
        return [tuple(r) for r in conn.execute(sql, params).fetchall()]

    def query_one(
        self, sql: str, params: Sequence[Any] = (), *, fresh: bool = False
    ) -> tuple[Any, ...] | None:
        rows = self.query_all(sql, params, fresh=fresh)
        return rows[0] if rows else None

    # --- transactions ---------------------------------------------------------------

    def begin(self) -> None:
        # SQLite: take the write lock now, not at the first write (no upgrade deadlocks).
        self.conn.execute("BEGIN" if self.kind == "postgresql" else "BEGIN IMMEDIATE")

    def commit(self) -> None:
        self.conn.execute("COMMIT")

    def rollback(self) -> None:
        self.conn.execute("ROLLBACK")

    @contextmanager
    def transaction(self, lock: str | None = None) -> Iterator[None]:
        """BEGIN ... COMMIT (ROLLBACK on error); ``lock`` serialises DDL across processes."""
        self.begin()
        try:
            if lock and self.kind == "postgresql":
                self.conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (lock,))
            yield
        except BaseException:
            self.rollback()
            raise
        self.commit()

    def prepare(self, gid: str) -> None:
        """``PREPARE TRANSACTION``: the open transaction survives this session."""
        self.conn.execute(f"PREPARE TRANSACTION {_literal(gid)}")

    def finish_prepared(self, gid: str, *, commit: bool) -> bool:
        """COMMIT/ROLLBACK PREPARED from the control connection; False if ``gid`` is gone."""
        import psycopg

        verb = "COMMIT" if commit else "ROLLBACK"
        try:
            self.control().execute(f"{verb} PREPARED {_literal(gid)}")
        except psycopg.errors.UndefinedObject:
            return False
        return True

    def control(self) -> Any:
        if self.kind != "postgresql":
            return self.conn
        if self._ctl is None:
            import psycopg

            self._ctl = psycopg.connect(self.dsn, autocommit=True)
        return self._ctl

    def close(self) -> None:
        for conn in (self._ctl, self.conn):
            if conn is not None:
                try:
                    conn.close()
                except Exception:  # closing a broken connection
                    pass
        self._ctl = None


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def connect(database: str) -> Database:
    """``postgresql://...`` (psycopg 3) or a SQLite path / ``sqlite:///path`` URL."""
    if is_postgres(database):
        import psycopg

        return Database(psycopg.connect(database, autocommit=True), "postgresql", database)
    path = sqlite_path(database)
    conn = sqlite3.connect(path, isolation_level=None, timeout=60.0, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")  # a COMMIT is on disk when it returns
    return Database(conn, "sqlite", path)


def data_errors(db: Database) -> tuple[type[Exception], ...]:
    """Exceptions that mean "this data is wrong" (not "the server is gone")."""
    if db.kind == "postgresql":
        import psycopg

        return (psycopg.IntegrityError, psycopg.DataError, psycopg.ProgrammingError)
    return (
        sqlite3.IntegrityError,
        sqlite3.DataError,
        sqlite3.InterfaceError,
        sqlite3.ProgrammingError,
    )


# --- prepared transactions, for the CLI and operators -----------------------------------


@dataclass(frozen=True)
class PreparedTransaction:
    """One row of ``pg_prepared_xacts``."""

    gid: str
    prepared: str  # when, as PostgreSQL prints it
    age_s: float  # seconds since
    owner: str
    database: str


def list_prepared(dsn: str, prefix: str = GID_PREFIX) -> list[PreparedTransaction]:
    """PostgreSQL prepared transactions whose gid starts with ``prefix``, oldest first."""
    db = connect(dsn)
    try:
        rows = db.query_all(
            "SELECT gid, prepared::text, extract(epoch FROM now() - prepared)::float8, owner, "
            "database FROM pg_prepared_xacts WHERE left(gid, %s) = %s ORDER BY prepared",
            (len(prefix), prefix),
        )
        return [PreparedTransaction(str(g), str(p), float(a), str(o), str(d))
                for g, p, a, o, d in rows]
    finally:
        db.close()


def resolve_prepared(dsn: str, gid: str, *, commit: bool) -> bool:
    """COMMIT or ROLLBACK PREPARED ``gid``; False when no such transaction exists."""
    db = connect(dsn)
    try:
        return db.finish_prepared(gid, commit=commit)
    finally:
        db.close()


_CONSTRAINT_WORDS = ("NOT NULL", "CHECK", "UNIQUE", "PRIMARY KEY", "REFERENCES", "STRICT")


def sqlite_has_constraints(db: Database, table: str) -> bool:
    """Whether a SQLite table can reject a row (conservative: a keyword scan of its
    DDL plus unique indexes). Without constraints the pre-commit trial is skipped."""
    row = db.query_one("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?",
                       (table,))
    ddl = str(row[0]).upper() if row and row[0] else "CHECK"  # unknown: assume yes
    if any(word in ddl for word in _CONSTRAINT_WORDS):
        return True
    indexes = db.query_all(f"PRAGMA index_list({quote(table)})")
    return any(int(ix[2]) for ix in indexes)  # (seq, name, unique, origin, partial)
