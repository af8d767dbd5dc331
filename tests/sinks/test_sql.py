"""SqlSink / StandaloneSqlSink: bad input, upsert races, fencing, leftovers."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from eoscore.errors import EosError
from eoscore.sinks import Decision, RecoveryPlan
from eoscore.sinks.errors import SinkFencedError, SinkRecoveryError, SinkWriteError
from eoscore.sinks.sql import SqlSink, StandaloneSqlSink, list_prepared, resolve_prepared
from tests.sinks._chaos import ROOT

DDL = "CREATE TABLE {t} (id integer PRIMARY KEY, name text NOT NULL, qty integer CHECK (qty >= 0))"


def _rows(n0: int, count: int) -> list[dict[str, Any]]:
    return [{"id": i, "name": f"n{i}", "qty": i} for i in range(n0, n0 + count)]


def _commit(sink: Any, n: int, records: list[dict[str, Any]]) -> None:
    sink.begin(n)
    sink.write(records)
    handle = sink.pre_commit(n)
    if isinstance(sink, StandaloneSqlSink):
        sink.commit_decision(n, {"src": n * 100}, handle)
    else:
        sink.commit(n, handle)


@pytest.fixture(params=["sqlite", "postgres"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str, Any]:
    """(database, table, query) for a fresh table on each backend."""
    if request.param == "sqlite":
        db = tmp_path / "t.db"
        with sqlite3.connect(db) as conn:
            conn.execute(DDL.format(t="t"))

        def query(sql: str) -> list[tuple[Any, ...]]:
            with sqlite3.connect(db) as conn:
                return conn.execute(sql.format(t="t")).fetchall()

        return str(db), "t", query
    dsn = request.getfixturevalue("pg_dsn")
    conn = request.getfixturevalue("pg_conn")
    table = f"{request.getfixturevalue('pg_schema')}.t"
    conn.execute(DDL.format(t=table))

    def pg_query(sql: str) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in conn.execute(sql.format(t=table)).fetchall()]

    return dsn, table, pg_query


@pytest.mark.parametrize("cls", [StandaloneSqlSink, SqlSink])
@pytest.mark.parametrize("bad", [{"name": None}, {"qty": -5}, {"id": 3}])
def test_bad_row_fails_checkpoint_and_keeps_previous(
    target: tuple[str, str, Any], cls: type, bad: dict[str, Any]
) -> None:
    database, table, query = target
    sink = cls(database, table, ["id", "name", "qty"], batch_size=50)
    sink.open("bad", "w")
    sink.recover(RecoveryPlan(None))
    _commit(sink, 1, _rows(0, 10))
    records = _rows(10, 130)
    records[77] = {**records[77], **bad}  # in the second flushed batch
    sink.begin(2)
    with pytest.raises(SinkWriteError) as info:
        sink.write(records)
        sink.pre_commit(2)
    err = info.value
    assert isinstance(err, EosError)
    assert err.checkpoint_id == 2 and err.index == 77
    # SQLite staging finds the row at pre-commit, from the staged values.
    assert err.record in (records[77], tuple(records[77].values()))
    assert "record #77" in str(err) and "checkpoint 2" in str(err)
    sink.abort(2, None)
    assert sorted(r[0] for r in query("SELECT id FROM {t}")) == list(range(10))
    if isinstance(sink, StandaloneSqlSink):
        assert sink.read_decision() == Decision(1, {"src": 100})
    # The sink goes on with the next checkpoint.
    _commit(sink, 3, _rows(200, 5))
    assert len(query("SELECT id FROM {t}")) == 15
    sink.close()


def test_standalone_fences_a_stale_instance(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    with sqlite3.connect(db) as conn:
        conn.execute(DDL.format(t="t"))
    old = StandaloneSqlSink(str(db), "t", ["id", "name", "qty"])
    new = StandaloneSqlSink(str(db), "t", ["id", "name", "qty"])
    for sink in (old, new):
        sink.open("p", "w")
        sink.recover(RecoveryPlan(None))
    _commit(new, 5, _rows(0, 3))
    old.begin(5)
    old.write(_rows(100, 3))
    handle = old.pre_commit(5)
    with pytest.raises(SinkFencedError):
        old.commit_decision(5, {"src": 1}, handle)
    with sqlite3.connect(db) as conn:
        assert sorted(r[0] for r in conn.execute("SELECT id FROM t")) == [0, 1, 2]
    assert new.read_decision() == Decision(5, {"src": 500})
    # Redoing a recorded decision is a no-op.
    new.commit_decision(5, {"src": 500}, handle)
    new.commit(5, handle)


def test_postgres_leftover_prepared_transactions(pg_dsn: str, pg_conn: Any, pg_schema: str) -> None:
    table = f"{pg_schema}.t"
    pg_conn.execute(DDL.format(t=table))
    sink = SqlSink(pg_dsn, table, ["id", "name", "qty"], name="left")
    sink.open(pg_schema, "w")
    sink.recover(RecoveryPlan(None))
    handles = {}
    for n in (1, 2, 3):
        sink.begin(n)
        sink.write(_rows(n * 10, 2))
        handles[n] = sink.pre_commit(n)
        if n < 3:
            sink.commit(n, handles[n])
            sink.commit(n, handles[n])  # redo: no-op
    sink.close()  # checkpoint 3 stays prepared, as after a crash
    gids = [p.gid for p in list_prepared(pg_dsn, f"eoscore:{pg_schema}:")]
    assert gids == [handles[3]["gid"]]

    # Recovery that does not know of 3 (decided 2): 3 > 2 was never decided, rolled back.
    again = SqlSink(pg_dsn, table, ["id", "name", "qty"], name="left")
    again.open(pg_schema, "w")
    again.recover(RecoveryPlan(Decision(2)))
    assert list_prepared(pg_dsn, f"eoscore:{pg_schema}:") == []
    ids = sorted(r[0] for r in pg_conn.execute(f"SELECT id FROM {table}").fetchall())
    assert ids == [10, 11, 20, 21]

    # A leftover at or below the decision is ambiguous: recovery refuses to guess.
    again.begin(4)
    again.write(_rows(40, 1))
    h4 = again.pre_commit(4)
    again.close()
    third = SqlSink(pg_dsn, table, ["id", "name", "qty"], name="left")
    third.open(pg_schema, "w")
    with pytest.raises(SinkRecoveryError, match="eoscore sql prepared"):
        third.recover(RecoveryPlan(Decision(4)))
    assert resolve_prepared(pg_dsn, str(h4["gid"]), commit=True)
    assert not resolve_prepared(pg_dsn, str(h4["gid"]), commit=True)
    third.recover(RecoveryPlan(Decision(4), commit=[(4, h4)]))  # redo after manual commit
    assert pg_conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == 5
    third.close()


WRITERS = 4


def test_concurrent_upserts_from_processes(
    tmp_path: Path, pg_dsn: str, pg_conn: Any, pg_schema: str
) -> None:
    from tests.sinks._upsert_child import CHECKPOINTS, KEYS

    table = f"{pg_schema}.counters"
    pg_conn.execute(f"CREATE TABLE {table} (k integer PRIMARY KEY, v bigint NOT NULL)")
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.sinks._upsert_child", pg_dsn, table, str(w), str(go)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in range(WRITERS)
    ]
    go.touch()
    results = [p.communicate(timeout=120) for p in procs]
    for proc, (out, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0 and out.strip() == "ok", err
    rows = pg_conn.execute(f"SELECT k, v FROM {table} ORDER BY k").fetchall()
    want = CHECKPOINTS * sum(w + 1 for w in range(WRITERS))
    assert [tuple(r) for r in rows] == [(k, want) for k in range(KEYS)]


@pytest.mark.parametrize("cls", [StandaloneSqlSink, SqlSink])
def test_undecided_checkpoint_is_carried_forward(target: tuple[str, str, Any], cls: type) -> None:
    """The runtime keeps the handles of a checkpoint that failed after its pre-commit
    and commits them with the next decided one; begin(n+1) also precedes commit(n)."""
    database, table, query = target
    sink = cls(database, table, ["id", "name", "qty"], batch_size=10)
    sink.open("carry", "w")
    sink.recover(RecoveryPlan(None))
    sink.begin(1)
    sink.write(_rows(0, 25))
    h1 = sink.pre_commit(1)  # ... and checkpoint 1 is never decided
    sink.begin(2)
    sink.write(_rows(100, 25))
    h2 = sink.pre_commit(2)
    sink.begin(3)
    sink.write(_rows(200, 25))  # flushed (participants) or buffered (standalone)
    assert query("SELECT id FROM {t}") == []
    if isinstance(sink, StandaloneSqlSink):
        sink.commit_decision(2, {"src": 2}, h2)
        assert sink.read_decision() == Decision(2, {"src": 2})
    else:
        sink.commit(1, h1)
        sink.commit(2, h2)
    assert len(query("SELECT id FROM {t}")) == 50
    h3 = sink.pre_commit(3)
    if isinstance(sink, StandaloneSqlSink):
        sink.commit_decision(3, {"src": 3}, h3)
    else:
        sink.commit(3, h3)
    assert sorted(r[0] for r in query("SELECT id FROM {t}")) == sorted(
        [*range(25), *range(100, 125), *range(200, 225)]
    )
    sink.close()
