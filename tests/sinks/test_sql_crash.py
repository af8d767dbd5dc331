"""SQL sinks under SIGKILL: >= 20 kills per sink, at random moments and failpoints.

After the loop, the table must hold exactly the expected rows: every source
record once (append), or one row per key with its last value (upsert).
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.sinks._chaos import Source, kill_loop

pytestmark = pytest.mark.slow

SQL_POINTS = [
    "sql.after_flush",
    "sql.after_pre_commit",
    "sql.before_decision_commit",
    "driver.after_pending",
    "driver.mid_write",
    "driver.after_commit",
]
PARTICIPANT_POINTS = [
    "sql.after_flush",
    "sql.before_prepare",
    "sql.after_prepare",  # between prepare and commit
    "driver.after_pending",
    "driver.after_decision",  # decided, not committed
    "sql.before_move",
    "sql.after_commit",
]


def _cfg(
    kind: str, database: str, table: str, tmp: Path, source: Source, **extra: Any
) -> dict[str, Any]:
    state = tmp / "state"
    state.mkdir(exist_ok=True)
    return {
        "kind": kind,
        "database": database,
        "table": table,
        "columns": ["id", "k", "v"],
        "source": str(source.path),
        "state_dir": str(state),
        "per_checkpoint": 150,
        "batch": 40,
        "pause": 0.01,
        **extra,
    }


def _check_append(rows: list[tuple[Any, ...]], source: Source) -> None:
    counts = Counter(r[0] for r in rows)
    dupes = {i: c for i, c in counts.items() if c > 1}
    assert not dupes, f"duplicated ids: {sorted(dupes)[:20]}"
    missing = {r["id"] for r in source.records} - set(counts)
    assert not missing, f"missing ids: {sorted(missing)[:20]}"
    assert len(rows) == len(source.records)


def _check_upsert(rows: list[tuple[Any, ...]], source: Source) -> None:
    last: dict[str, int] = {}
    for r in source.records:
        last[r["k"]] = r["v"]
    keys = Counter(r[0] for r in rows)
    assert all(c == 1 for c in keys.values())
    assert dict(rows) == last


def _sqlite(path: Path, ddl: str) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute(ddl)


@pytest.mark.parametrize("kind", ["sql_standalone", "sql_participant"])
def test_sqlite_append_survives_kills(tmp_path: Path, kind: str) -> None:
    db = tmp_path / "out.db"
    _sqlite(db, "CREATE TABLE t (id INTEGER NOT NULL, k TEXT, v INTEGER)")
    source = Source(tmp_path / "src.ndjson")
    source.extend(1500)
    points = SQL_POINTS if kind == "sql_standalone" else PARTICIPANT_POINTS
    outcome = kill_loop(_cfg(kind, str(db), "t", tmp_path, source), tmp_path, source, points)
    assert outcome.kills >= 20 and outcome.timer_kills >= 5
    with sqlite3.connect(db) as conn:
        _check_append(conn.execute("SELECT id, k, v FROM t").fetchall(), source)
        if kind == "sql_participant":
            staged = conn.execute("SELECT count(*) FROM t__eoscore_staging").fetchone()
            assert staged == (0,)


def test_sqlite_upsert_participant_survives_kills(tmp_path: Path) -> None:
    db = tmp_path / "out.db"
    _sqlite(db, "CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER NOT NULL, id INTEGER)")
    source = Source(tmp_path / "src.ndjson", keys=97)
    source.extend(1500)
    cfg = _cfg("sql_participant", str(db), "t", tmp_path, source, mode="upsert", key=["k"])
    outcome = kill_loop(cfg, tmp_path, source, PARTICIPANT_POINTS, seed=3)
    assert outcome.kills >= 20
    with sqlite3.connect(db) as conn:
        _check_upsert(conn.execute("SELECT k, v FROM t").fetchall(), source)


@pytest.mark.parametrize(
    ("kind", "mode"), [("sql_standalone", "upsert"), ("sql_participant", "append")]
)
def test_postgres_survives_kills(
    tmp_path: Path, pg_dsn: str, pg_conn: Any, pg_schema: str, kind: str, mode: str
) -> None:
    table = f"{pg_schema}.t"
    if mode == "upsert":
        pg_conn.execute(f"CREATE TABLE {table} (k text PRIMARY KEY, v bigint NOT NULL, id bigint)")
        source = Source(tmp_path / "src.ndjson", keys=89)
        extra: dict[str, Any] = {"mode": "upsert", "key": ["k"]}
    else:
        pg_conn.execute(f"CREATE TABLE {table} (id bigint NOT NULL, k text, v bigint)")
        source = Source(tmp_path / "src.ndjson")
        extra = {}
    source.extend(1500)
    points = SQL_POINTS if kind == "sql_standalone" else PARTICIPANT_POINTS
    cfg = _cfg(kind, pg_dsn, table, tmp_path, source, **extra)
    outcome = kill_loop(cfg, tmp_path, source, points, seed=7)
    assert outcome.kills >= 20
    if mode == "upsert":
        _check_upsert(pg_conn.execute(f"SELECT k, v FROM {table}").fetchall(), source)
    else:
        _check_append(pg_conn.execute(f"SELECT id, k, v FROM {table}").fetchall(), source)
    left = pg_conn.execute(
        "SELECT gid FROM pg_prepared_xacts WHERE gid LIKE %s", (f"%{table}%",)
    ).fetchall()
    assert left == []
