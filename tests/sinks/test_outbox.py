"""Outbox relay SIGKILLed mid-batch, repeatedly: read_committed sees each row once, in order."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from eoscore.kafka.transactions import stable_offsets
from eoscore.sinks.errors import RelayFencedError
from eoscore.sinks.outbox import OutboxRelay, OutboxWriter, compact_ranges
from tests.sinks._chaos import ROOT

POINTS = ["outbox.mid_batch", "outbox.before_commit", "outbox.after_commit", "outbox.after_mark"]
KEYS = 12


class Rows:
    """Outbox rows written by the 'application': value = key:seq, seq per key."""

    def __init__(self, conn: Any, table: str, topic: str) -> None:
        self.conn, self.topic, self.writer = conn, topic, OutboxWriter(table)
        self.seq: dict[str, int] = defaultdict(int)
        self.count = 0
        self.rng = random.Random(1)

    def add(self, count: int) -> None:
        for _ in range(0, count, 10):  # ten rows per application transaction
            batch = []
            for _ in range(10):
                key = f"key{self.rng.randrange(KEYS)}"
                self.seq[key] += 1
                batch.append((self.topic, key, f"{key}:{self.seq[key]}", None))
            with self.conn.transaction():
                self.writer.add_many(self.conn, batch)
            self.count += len(batch)


def _read_committed(bootstrap: str, topic: str) -> list[tuple[str, str]]:
    ends = stable_offsets(bootstrap, [topic])
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"check-{os.getpid()}",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 50,
        }
    )
    out: list[tuple[str, str]] = []
    todo = {tp: lso for tp, (lso, _) in ends.items() if lso > 0}
    consumer.assign([TopicPartition(t, p, 0) for t, p in todo])
    deadline = time.monotonic() + 60
    while todo and time.monotonic() < deadline:
        msg = consumer.poll(0.2)
        if msg is not None and not msg.error():
            out.append((bytes(msg.key() or b"").decode(), bytes(msg.value() or b"").decode()))
        for tp in consumer.position([TopicPartition(t, p) for t, p in todo]):
            if tp.offset >= todo[(tp.topic, tp.partition)]:
                del todo[(tp.topic, tp.partition)]
    consumer.close()
    assert not todo, f"could not read to the end: {todo}"
    return out


def _run(config: Path, spec: str | None, timer: float | None) -> tuple[int, str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("EOSCORE_FAILPOINTS", None)
    if spec:
        env["EOSCORE_FAILPOINTS"] = spec
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.sinks._relay_child", str(config)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        out, err = proc.communicate(timeout=timer if timer is not None else 120)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        out, err = proc.communicate()
    assert proc.returncode in (0, -signal.SIGKILL), err
    return proc.returncode, out, err


@pytest.mark.slow
def test_relay_killed_mid_batch_publishes_each_row_once_in_order(
    tmp_path: Path, pg_dsn: str, pg_conn: Any, pg_schema: str, kafka_bootstrap: str,
    kafka_topic: Any,
) -> None:
    out_topic = kafka_topic(3)
    state_topic = kafka_topic(1, config={"cleanup.policy": "compact"})
    table = f"{pg_schema}.outbox"
    OutboxWriter(table).create_table(pg_conn)
    rows = Rows(pg_conn, table, out_topic)
    rows.add(400)
    config = tmp_path / "relay.json"
    config.write_text(json.dumps({
        "database": pg_dsn, "bootstrap": kafka_bootstrap, "name": f"r-{pg_schema}",
        "table": table, "state_topic": state_topic, "batch": 25,
    }))
    rng = random.Random(2)
    kills = timer_kills = runs = 0
    while kills < 20 or timer_kills < 5:
        spec = None if runs % 2 == 0 else POINTS[(runs // 2) % len(POINTS)]
        runs += 1
        armed = f"{spec}=kill@{rng.randint(1, 3)}" if spec else None
        code, _, _ = _run(config, armed, None if spec else rng.uniform(0.4, 2.0))
        if code == -signal.SIGKILL:
            kills += 1
            timer_kills += spec is None
        else:
            rows.add(200)  # the relay caught up: give it more
    code, _, err = _run(config, None, None)
    assert code == 0, err

    published = pg_conn.execute(
        f"SELECT count(*) FROM {table} WHERE published_at IS NULL"
    ).fetchone()[0]
    assert published == 0
    got = _read_committed(kafka_bootstrap, out_topic)
    values = [v for _, v in got]
    assert len(values) == len(set(values)), "duplicates under read_committed"
    assert len(values) == rows.count
    per_key: dict[str, list[int]] = defaultdict(list)
    for key, value in got:
        assert value.startswith(key + ":")
        per_key[key].append(int(value.split(":")[1]))
    for key, seqs in per_key.items():
        assert seqs == list(range(1, rows.seq[key] + 1)), key


def test_a_second_relay_fences_the_first(
    tmp_path: Path, kafka_bootstrap: str, kafka_topic: Any
) -> None:
    out_topic = kafka_topic(1)
    state_topic = kafka_topic(1, config={"cleanup.policy": "compact"})
    import sqlite3

    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    writer = OutboxWriter()
    writer.create_table(conn)
    writer.add_many(conn, [(out_topic, "k", f"v{i}", {"h": "1"}) for i in range(30)])
    name = f"fence-{os.getpid()}-{time.monotonic_ns()}"
    first = OutboxRelay(str(db), kafka_bootstrap, name=name, state_topic=state_topic,
                        batch_size=10)
    first.start()
    assert first.run_once() == 10
    second = OutboxRelay(str(db), kafka_bootstrap, name=name, state_topic=state_topic,
                         batch_size=10)
    second.start()  # SQLite: no advisory lock; Kafka fencing alone stops the first
    with pytest.raises(RelayFencedError):
        first.run_once()
    assert second.run(until_idle=True) == 20
    second.close()
    got = _read_committed(kafka_bootstrap, out_topic)
    assert [v for _, v in got] == [f"v{i}" for i in range(30)]
    unpublished = conn.execute("SELECT count(*) FROM eoscore_outbox WHERE published_at IS NULL")
    assert unpublished.fetchone()[0] == 0


def test_compact_ranges() -> None:
    assert compact_ranges([5, 1, 2, 3, 7, 8]) == [[1, 3], [5, 5], [7, 8]]
    assert compact_ranges([]) == []


def test_standby_relay_waits_for_the_active_one(
    pg_dsn: str, pg_conn: Any, pg_schema: str, kafka_bootstrap: str, kafka_topic: Any
) -> None:
    import threading

    out_topic = kafka_topic(1)
    state_topic = kafka_topic(1, config={"cleanup.policy": "compact"})
    table = f"{pg_schema}.outbox"
    writer = OutboxWriter(table)
    writer.create_table(pg_conn)
    with pg_conn.transaction():
        writer.add_many(pg_conn, [(out_topic, "k", f"v{i}", None) for i in range(20)])
    kwargs: dict[str, Any] = {"name": f"standby-{pg_schema}", "table": table,
                              "state_topic": state_topic, "batch_size": 10}
    active = OutboxRelay(pg_dsn, kafka_bootstrap, **kwargs)
    active.start()
    assert active.run_once() == 10
    standby = OutboxRelay(pg_dsn, kafka_bootstrap, **kwargs)
    started = threading.Event()
    errors: list[BaseException] = []

    def run_standby() -> None:
        try:
            standby.start()  # blocks on the advisory lock
            started.set()
            standby.run(until_idle=True)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run_standby, daemon=True)
    thread.start()
    # The server shows the standby waiting on the relay's advisory lock.
    deadline = time.monotonic() + 30
    while not pg_conn.execute(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
    ).fetchone()[0]:
        assert time.monotonic() < deadline and not errors, errors
        time.sleep(0.02)
    assert not started.is_set()
    active.close()  # releases the lock
    thread.join(60)
    assert not thread.is_alive() and errors == []
    standby.close()
    assert [v for _, v in _read_committed(kafka_bootstrap, out_topic)] == [
        f"v{i}" for i in range(20)
    ]
