"""Rows/s through the exactly-once sinks against the plain loop a user would write.

Pairs, each timed in the same run, ratio = exactly-once / plain (target >= 0.8x
for the SQL sinks):

* SQLite and PostgreSQL: ``StandaloneSqlSink`` (rows + positions in one
  transaction per checkpoint) and ``SqlSink`` (PostgreSQL PREPARE/COMMIT
  PREPARED; SQLite staging) against ``executemany`` of the same rows in
  batches of ``BATCH``, committed every ``CHECKPOINT`` rows (the same
  transaction size and the same durability settings).
* PostgreSQL appends also against a hand-written ``COPY`` loop (what the sink
  uses), to show the sink's own overhead.
* Outbox: ``OutboxRelay`` (transactional, position in the same Kafka
  transaction, rows marked after) against the at-least-once relay the article
  describes (select, produce with an idempotent producer, flush, mark) and
  against a bare producer loop sending the same records then flushing.

PostgreSQL and Kafka parts run when ``EOSCORE_PG_DSN`` / ``EOSCORE_KAFKA_BOOTSTRAP``
name servers (``scripts/postgres start``, ``scripts/kafka start``).

    .venv/bin/python bench/bench_sinks.py            # short default
"""

from __future__ import annotations

import itertools
import os
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyperf

from eoscore.sinks.sql import SqlSink, StandaloneSqlSink

N = 20_000  # rows per timed call
CHECKPOINT = 5_000  # rows per checkpoint / per plain transaction
BATCH = 1_000  # rows per executemany / sink batch
RELAY_N = 5_000
ENV = ("EOSCORE_PG_DSN", "EOSCORE_KAFKA_BOOTSTRAP")
PG = os.environ.get("EOSCORE_PG_DSN")
KAFKA = os.environ.get("EOSCORE_KAFKA_BOOTSTRAP")
ROWS = [(i, f"key-{i % 997}", i * 3) for i in range(N)]
DDL = "CREATE TABLE {t} (id bigint, k text, v bigint)"
_ids = itertools.count(1)
_tmp = Path(tempfile.mkdtemp(prefix="eoscore-bench-"))


# --- SQLite ------------------------------------------------------------------------------


def _sqlite_db(name: str) -> str:
    path = _tmp / f"{name}.db"
    if not path.exists():
        with sqlite3.connect(path) as conn:
            conn.execute(DDL.format(t="t"))
    return str(path)


def _clear_sqlite(path: str) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("DELETE FROM t")


_conns: dict[str, Any] = {}


def plain_sqlite(loops: int) -> float:
    path = _sqlite_db("plain")
    if "sqlite" not in _conns:
        conn = _conns["sqlite"] = sqlite3.connect(path, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
    conn = _conns["sqlite"]
    total = 0.0
    for _ in range(loops):
        _clear_sqlite(path)
        t0 = time.perf_counter()
        for start in range(0, N, CHECKPOINT):
            conn.execute("BEGIN IMMEDIATE")
            for b in range(start, start + CHECKPOINT, BATCH):
                conn.executemany("INSERT INTO t (id, k, v) VALUES (?, ?, ?)", ROWS[b : b + BATCH])
            conn.execute("COMMIT")
        total += time.perf_counter() - t0
    return total


def _through(sink: Any) -> float:
    t0 = time.perf_counter()
    for start in range(0, N, CHECKPOINT):
        n = next(_ids)
        sink.begin(n)
        for b in range(start, start + CHECKPOINT, BATCH):
            sink.write(ROWS[b : b + BATCH])
        handle = sink.pre_commit(n)
        if isinstance(sink, StandaloneSqlSink):
            sink.commit_decision(n, {"src": start + CHECKPOINT}, handle)
        else:
            sink.commit(n, handle)
    return time.perf_counter() - t0


def _sink_timer(make: Callable[[], Any], clear: Callable[[], None]) -> Callable[[int], float]:
    opened: list[Any] = []

    def timed(loops: int) -> float:
        if not opened:  # one warm sink per worker process, like a running pipeline
            opened.append(make())
            opened[0].open(f"bench-{os.getpid()}", "w")
        total = 0.0
        for _ in range(loops):
            clear()
            total += _through(opened[0])
        return total

    return timed


# --- PostgreSQL ---------------------------------------------------------------------------


def _pg_table(name: str) -> str:
    import psycopg

    assert PG is not None
    with psycopg.connect(PG, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS eoscore_bench")
        conn.execute(f"DROP TABLE IF EXISTS eoscore_bench.{name}")
        conn.execute(DDL.format(t=f"eoscore_bench.{name}"))
    return f"eoscore_bench.{name}"


def _clear_pg(table: str) -> Callable[[], None]:
    def clear() -> None:
        import psycopg

        assert PG is not None
        with psycopg.connect(PG, autocommit=True) as conn:
            conn.execute(f"TRUNCATE {table}")

    return clear


def plain_pg(loops: int) -> float:
    import psycopg

    assert PG is not None
    table = "eoscore_bench.plain"
    if "pg" not in _conns:
        _pg_table("plain")
        _conns["pg"] = psycopg.connect(PG)  # autocommit off: a transaction per CHECKPOINT rows
    conn = _conns["pg"]
    total = 0.0
    for _ in range(loops):
        _clear_pg(table)()
        t0 = time.perf_counter()
        for start in range(0, N, CHECKPOINT):
            with conn.cursor() as cur:
                for b in range(start, start + CHECKPOINT, BATCH):
                    cur.executemany(
                        f"INSERT INTO {table} (id, k, v) VALUES (%s, %s, %s)", ROWS[b : b + BATCH]
                    )
            conn.commit()
        total += time.perf_counter() - t0
    return total


def plain_pg_copy(loops: int) -> float:
    """The fastest plain loop: COPY the same rows, a transaction per CHECKPOINT rows."""
    import psycopg

    assert PG is not None
    table = "eoscore_bench.plain_copy"
    if "pg_copy" not in _conns:
        _pg_table("plain_copy")
        _conns["pg_copy"] = psycopg.connect(PG)
    conn = _conns["pg_copy"]
    total = 0.0
    for _ in range(loops):
        _clear_pg(table)()
        t0 = time.perf_counter()
        for start in range(0, N, CHECKPOINT):
            with conn.cursor() as cur, cur.copy(f"COPY {table} (id, k, v) FROM STDIN") as copy:
                for row in ROWS[start : start + CHECKPOINT]:
                    copy.write_row(row)
            conn.commit()
        total += time.perf_counter() - t0
    return total


# --- outbox --------------------------------------------------------------------------------


_outbox: tuple[str, str, str] | None = None


def _outbox_setup() -> tuple[str, str, str]:
    """Once per process: an outbox table with RELAY_N rows, an output and a state topic."""
    global _outbox
    if _outbox is None:
        _outbox = _make_outbox()
    return _outbox


def _make_outbox() -> tuple[str, str, str]:
    import psycopg
    from confluent_kafka.admin import AdminClient, NewTopic

    from eoscore.sinks.outbox import OutboxWriter

    assert PG is not None and KAFKA is not None
    suffix = f"{os.getpid()}"
    table = f"eoscore_bench.outbox_{suffix}"
    topic, state = f"bench-outbox-{suffix}", f"bench-outbox-state-{suffix}"
    admin = AdminClient({"bootstrap.servers": KAFKA})
    futures = admin.create_topics([
        NewTopic(topic, 1, 1), NewTopic(state, 1, 1, config={"cleanup.policy": "compact"})
    ])
    for future in futures.values():
        future.result(30)
    time.sleep(1.0)  # leaders elected
    with psycopg.connect(PG, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS eoscore_bench")
        writer = OutboxWriter(table)
        writer.create_table(conn)
        with conn.transaction():
            writer.add_many(conn, [(topic, f"k{i % 97}", f"value-{i}" * 4, None)
                                   for i in range(RELAY_N)])
    return table, topic, state


def relay_loop(loops: int) -> float:
    import psycopg

    from eoscore.sinks.outbox import OutboxRelay

    assert PG is not None and KAFKA is not None
    table, _, state = _outbox_setup()
    if "relay" not in _conns:
        _conns["relay"] = OutboxRelay(PG, KAFKA, name=f"bench-{os.getpid()}", table=table,
                                      state_topic=state, batch_size=500)
        _conns["relay"].start()
    relay = _conns["relay"]
    total = 0.0
    with psycopg.connect(PG, autocommit=True) as conn:
        for _ in range(loops):
            conn.execute(f"UPDATE {table} SET published_at = NULL")
            t0 = time.perf_counter()
            published = relay.run(until_idle=True)
            total += time.perf_counter() - t0
            assert published == RELAY_N, published
    return total


def producer_loop(loops: int) -> float:
    from confluent_kafka import Producer

    assert KAFKA is not None
    _, topic, _ = _outbox_setup()
    records = [(f"k{i % 97}".encode(), (f"value-{i}" * 4).encode()) for i in range(RELAY_N)]
    if "producer" not in _conns:  # warm: metadata fetched before timing, as for the relay
        _conns["producer"] = Producer({"bootstrap.servers": KAFKA, "enable.idempotence": True,
                                       "acks": "all", "linger.ms": 5})
        _conns["producer"].produce(topic, value=b"warm-up")
        _conns["producer"].flush(60)
    producer = _conns["producer"]
    total = 0.0
    for _ in range(loops):
        t0 = time.perf_counter()
        for key, value in records:
            while True:
                try:
                    producer.produce(topic, value=value, key=key)
                    break
                except BufferError:
                    producer.poll(0.05)
        producer.flush(60)
        total += time.perf_counter() - t0
    return total


# --- main ----------------------------------------------------------------------------------


def naive_relay_loop(loops: int) -> float:
    """The at-least-once relay the article describes: select, produce, flush, mark."""
    import psycopg
    from confluent_kafka import Producer

    assert PG is not None and KAFKA is not None
    table, topic, _ = _outbox_setup()
    if "naive" not in _conns:
        _conns["naive"] = Producer({"bootstrap.servers": KAFKA, "enable.idempotence": True,
                                    "acks": "all", "linger.ms": 5})
        _conns["naive"].produce(topic, value=b"warm-up")
        _conns["naive"].flush(60)
    producer = _conns["naive"]
    total = 0.0
    with psycopg.connect(PG, autocommit=True) as conn:
        for _ in range(loops):
            conn.execute(f"UPDATE {table} SET published_at = NULL")
            t0 = time.perf_counter()
            while True:
                rows = conn.execute(
                    f"SELECT id, topic, key, value FROM {table} WHERE published_at IS NULL "
                    "ORDER BY id LIMIT 500"
                ).fetchall()
                if not rows:
                    break
                for _, t, key, value in rows:
                    producer.produce(t, value=bytes(value), key=bytes(key))
                producer.flush(60)
                conn.execute(f"UPDATE {table} SET published_at = now() WHERE id = ANY(%s)",
                             ([r[0] for r in rows],))
            total += time.perf_counter() - t0
    return total


Timer = Callable[[int], float]


def benchmarks() -> tuple[dict[str, Timer], list[tuple[str, str, str, int]]]:
    """Timed functions by label, and the (row, exactly-once, baseline, rows) comparisons."""
    funcs: dict[str, Timer] = {"sqlite plain": plain_sqlite}
    rows: list[tuple[str, str, str, int]] = []
    for label, cls in (("standalone", StandaloneSqlSink), ("participant", SqlSink)):
        path = _sqlite_db(label)

        def make(c: type = cls, p: str = path) -> Any:
            return c(p, "t", ["id", "k", "v"], batch_size=BATCH)

        funcs[f"sqlite {label}"] = _sink_timer(make, lambda p=path: _clear_sqlite(p))
        rows.append((f"sqlite {label}", f"sqlite {label}", "sqlite plain", N))
    if PG:
        funcs["postgres plain"] = plain_pg
        for label, cls in (("standalone", StandaloneSqlSink), ("participant", SqlSink)):
            def make_pg(c: type = cls, lab: str = label) -> Any:
                return c(PG, _pg_table(lab), ["id", "k", "v"], batch_size=BATCH,
                         name=f"bench-{lab}")

            funcs[f"postgres {label}"] = _sink_timer(make_pg, _clear_pg(f"eoscore_bench.{label}"))
            rows.append((f"postgres {label}", f"postgres {label}", "postgres plain", N))
        funcs["postgres plain COPY"] = plain_pg_copy

        def make_big() -> Any:  # one COPY per checkpoint, like the hand-written loop
            return StandaloneSqlSink(PG, _pg_table("big"), ["id", "k", "v"],
                                     batch_size=CHECKPOINT, name="bench-big")

        funcs["postgres standalone batch=5000"] = _sink_timer(make_big,
                                                             _clear_pg("eoscore_bench.big"))
        rows.append(("pg standalone/COPY", "postgres standalone", "postgres plain COPY", N))
        rows.append(("pg standalone b5000/COPY", "postgres standalone batch=5000",
                     "postgres plain COPY", N))
    if PG and KAFKA:
        funcs["outbox relay"] = relay_loop
        funcs["at-least-once relay"] = naive_relay_loop
        funcs["producer loop"] = producer_loop
        rows.append(("relay vs at-least-once", "outbox relay", "at-least-once relay", RELAY_N))
        rows.append(("relay vs producer loop", "outbox relay", "producer loop", RELAY_N))
    return funcs, rows


def main() -> None:
    runner = pyperf.Runner(processes=2, values=4, warmups=1, min_time=0.05)
    argv = sys.argv[1:]
    if not any(a.startswith("--inherit-environ") for a in argv) and "--worker" not in argv:
        argv += ["--inherit-environ", ",".join(ENV)]
    runner.parse_args(argv)
    medians: dict[str, float] = {}
    funcs, table = benchmarks()
    for label, func in funcs.items():
        bench = runner.bench_time_func(label, func, inner_loops=1)
        if bench is not None and not runner.args.worker:
            medians[label] = bench.median()  # robust to the shared machine
    if runner.args.worker or len(medians) != len(funcs):
        return
    print()
    print(f"{'comparison':26} {'exactly-once rows/s':>20} {'baseline rows/s':>16} {'ratio':>7}")
    for name, eos_label, base_label, count in table:
        eos, base = count / medians[eos_label], count / medians[base_label]
        print(f"{name:26} {eos:20,.0f} {base:16,.0f} {eos / base:6.2f}x")
    if not PG:
        print("(PostgreSQL skipped: set EOSCORE_PG_DSN)")
    if not KAFKA:
        print("(outbox skipped: set EOSCORE_KAFKA_BOOTSTRAP)")


if __name__ == "__main__":
    main()
