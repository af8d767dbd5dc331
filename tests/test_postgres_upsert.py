"""Concurrent INSERT ... ON CONFLICT DO UPDATE on a real PostgreSQL server.

Sinks rely on an upsert being atomic under concurrency: two writers racing on one
key must neither fail with a unique violation nor lose an update.
"""

from __future__ import annotations

import collections
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from psycopg import sql

pytestmark = pytest.mark.postgres

WAIT_S = 30.0  # upper bound on any single wait; never reached when things work


def _create_counters(conn: Any, schema: str) -> sql.Composable:
    table = sql.Identifier(schema, "counters")
    conn.execute(
        sql.SQL("CREATE TABLE {} (k integer PRIMARY KEY, v bigint NOT NULL)").format(table)
    )
    return table


def _upsert(table: sql.Composable) -> sql.Composed:
    return sql.SQL(
        "INSERT INTO {} AS t (k, v) VALUES (%s, %s)"
        " ON CONFLICT (k) DO UPDATE SET v = t.v + EXCLUDED.v RETURNING v"
    ).format(table)


def _wait_until(condition: Callable[[], bool], what: str, errors: list[BaseException]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if errors:
            raise AssertionError(f"a writer failed while waiting for {what}") from errors[0]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {WAIT_S}s waiting for {what}")
        time.sleep(0.01)


def test_two_overlapping_upserts_on_one_key_add_up(pg_connect: Any, pg_schema: str) -> None:
    admin = pg_connect()
    table = _create_counters(admin, pg_schema)
    upsert = _upsert(table)
    conns = [pg_connect(), pg_connect()]
    pids = [conn.info.backend_pid for conn in conns]
    both_in_tx = threading.Barrier(2, timeout=WAIT_S)
    upserted = [threading.Event(), threading.Event()]
    may_commit = [threading.Event(), threading.Event()]
    returned: list[int | None] = [None, None]
    errors: list[BaseException] = []

    def writer(i: int) -> None:
        conn = conns[i]
        try:
            with conn.transaction():
                conn.execute("SELECT txid_current()")  # the transaction really is open
                both_in_tx.wait()
                row = conn.execute(upsert, (7, 1)).fetchone()
                returned[i] = row[0] if row else None
                upserted[i].set()
                if not may_commit[i].wait(WAIT_S):
                    raise TimeoutError(f"writer {i} was never allowed to commit")
        except BaseException as exc:
            errors.append(exc)
            both_in_tx.abort()

    threads = [threading.Thread(target=writer, args=(i,), daemon=True) for i in (0, 1)]
    for thread in threads:
        thread.start()
    try:
        _wait_until(lambda: any(e.is_set() for e in upserted), "the first upsert", errors)
        first = 0 if upserted[0].is_set() else 1
        second = 1 - first

        # Overlap, shown by the server: the second upsert waits on the first's
        # uncommitted row, and only on that.
        def second_is_blocked_by_first() -> bool:
            row = admin.execute("SELECT pg_blocking_pids(%s)", (pids[second],)).fetchone()
            return row is not None and row[0] == [pids[first]]

        _wait_until(second_is_blocked_by_first, "the second upsert to block", errors)
        assert not upserted[second].is_set()

        may_commit[first].set()
        _wait_until(upserted[second].is_set, "the second upsert after the commit", errors)
        may_commit[second].set()
    finally:
        for event in may_commit:
            event.set()
        for thread in threads:
            thread.join(WAIT_S)

    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    # The first inserted 1; the second saw that commit and added to it.
    assert returned[first] == 1
    assert returned[second] == 2
    rows = admin.execute(sql.SQL("SELECT k, v FROM {}").format(table)).fetchall()
    assert rows == [(7, 2)]


THREADS = 4
UPSERTS_PER_THREAD = 200
KEYS = 50


def test_many_concurrent_upserts_keep_one_row_per_key_and_exact_sums(
    pg_connect: Any, pg_schema: str
) -> None:
    admin = pg_connect()
    table = _create_counters(admin, pg_schema)
    upsert = _upsert(table)

    # Every thread hits every key UPSERTS_PER_THREAD / KEYS times, in its own order.
    plans: list[list[tuple[int, int]]] = []
    for i in range(THREADS):
        rng = random.Random(1000 + i)
        keys = list(range(KEYS)) * (UPSERTS_PER_THREAD // KEYS)
        rng.shuffle(keys)
        plans.append([(k, rng.randint(1, 1000)) for k in keys])
    expected: collections.Counter[int] = collections.Counter()
    for plan in plans:
        for key, value in plan:
            expected[key] += value

    conns = [pg_connect() for _ in range(THREADS)]  # autocommit: one upsert per transaction
    start = threading.Barrier(THREADS, timeout=WAIT_S)
    seen: list[list[tuple[int, int, int]]] = [[] for _ in range(THREADS)]
    spans: list[tuple[float, float]] = [(0.0, 0.0)] * THREADS
    errors: list[BaseException] = []

    def writer(i: int) -> None:
        conn = conns[i]
        try:
            start.wait()
            began = time.monotonic()
            for key, value in plans[i]:
                row = conn.execute(upsert, (key, value)).fetchone()
                assert row is not None
                seen[i].append((key, value, row[0]))
            spans[i] = (began, time.monotonic())
        except BaseException as exc:
            errors.append(exc)
            start.abort()

    threads = [threading.Thread(target=writer, args=(i,), daemon=True) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT_S * 4)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    # All writers were running at the same time.
    assert max(began for began, _ in spans) < min(ended for _, ended in spans)

    rows = admin.execute(sql.SQL("SELECT k, v FROM {} ORDER BY k").format(table)).fetchall()
    assert [k for k, _ in rows] == list(range(KEYS))
    assert dict(rows) == dict(expected)

    # No lost or doubled update: per key, the values the upserts returned, in
    # increasing order, are running totals whose steps are exactly the increments.
    by_key: dict[int, list[tuple[int, int]]] = collections.defaultdict(list)
    for writes in seen:
        for key, value, total in writes:
            by_key[key].append((total, value))
    for key, results in by_key.items():
        totals = sorted(total for total, _ in results)
        steps = [b - a for a, b in zip([0, *totals[:-1]], totals, strict=True)]
        assert sorted(steps) == sorted(value for _, value in results), f"key {key}"
        assert totals[-1] == expected[key]
