"""Reconciliation finds planted gaps and duplicates; the CLI exits non-zero on them."""

from __future__ import annotations

import argparse
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from eoscore.reconcile import ReconcileError, keys_from_ndjson, reconcile
from eoscore.sinks.cli import add_commands


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="eoscore")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    result: int = args.run(args)
    return result


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "src.ndjson"
    path.write_text("".join(json.dumps({"id": i, "v": i * 2}) + "\n" for i in range(100)))
    return path


def _sqlite_sink(tmp_path: Path, ids: list[int]) -> Path:
    db = tmp_path / "sink.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE t (id INTEGER, v INTEGER)")
        conn.executemany("INSERT INTO t VALUES (?, ?)", [(i, i * 2) for i in ids])
    return db


def test_reconcile_model() -> None:
    report = reconcile([1, 2, 3, 3, 4], [1, 1, 3, 4, 9])
    assert report.gaps == [2]
    assert report.duplicates == {1: 2}
    assert report.unexpected == [9]
    assert not report.ok
    assert "1 gaps" in report.summary() and "MISMATCH" in report.summary()
    assert reconcile([1, 2], [2, 1]).ok


def test_cli_finds_planted_gaps_and_duplicates(
    tmp_path: Path, source: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = [i for i in range(100) if i not in (13, 57)] + [42, 42, 99]
    db = _sqlite_sink(tmp_path, ids)
    code = _cli(["reconcile", "--source", str(source), "--key", "id", "--sql", str(db),
                 "--table", "t", "--json"])
    assert code == 1
    report = json.loads(capsys.readouterr().out)
    assert report["gaps"] == ["13", "57"]
    assert report["duplicates"] == [["42", 3], ["99", 2]]


def test_cli_clean_sink_and_ranges(
    tmp_path: Path, source: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = _sqlite_sink(tmp_path, list(range(20, 40)))
    base = ["reconcile", "--source", str(source), "--key", "id", "--sql", str(db), "--table", "t"]
    assert _cli([*base, "--start", "20", "--end", "40"]) == 0
    assert "OK" in capsys.readouterr().out
    assert _cli([*base, "--start", "10", "--end", "40"]) == 1  # 10..19 are gaps
    assert "gaps: 10, 11" in capsys.readouterr().out
    assert _cli([*base, "--where", "id < 30", "--start", "20", "--end", "30"]) == 0


def test_cli_files_sink(tmp_path: Path, source: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "part-1.ndjson").write_text("".join(json.dumps({"id": i}) + "\n" for i in range(60)))
    (out / "part-2.csv").write_text("id,v\n" + "".join(f"{i},0\n" for i in range(59, 100)))
    (out / ".eoscore-staging").mkdir()
    assert _cli(["reconcile", "--source", str(source), "--key", "id", "--files", str(out)]) == 1
    text = capsys.readouterr().out
    assert "duplicates: 59 x2" in text and "0 gaps" in text


def test_unreadable_source_exits_2(tmp_path: Path, source: Path) -> None:
    db = _sqlite_sink(tmp_path, [1])
    argv = ["reconcile", "--source", str(source), "--key", "nope", "--sql", str(db), "--table", "t"]
    assert _cli(argv) == 2
    with pytest.raises(ReconcileError, match="no key field"):
        list(keys_from_ndjson([source], ["nope"]))


def test_cli_lists_and_resolves_prepared(
    pg_dsn: str, pg_conn: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    import psycopg

    prefix = f"eoscore:cli{id(capsys)}:"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        for n in (1, 2):
            conn.execute("BEGIN")
            conn.execute("SELECT 1")
            conn.execute(f"PREPARE TRANSACTION '{prefix}s:{n}'")
    assert _cli(["sql", "prepared", pg_dsn, "--prefix", prefix]) == 1
    assert f"{prefix}s:1" in capsys.readouterr().out
    assert _cli(["sql", "prepared", pg_dsn, "--prefix", prefix, "--commit", f"{prefix}s:1",
                 "--rollback-older-than", "0"]) == 0
    assert "no prepared transactions left" in capsys.readouterr().out


def test_cli_kafka_sink_read_committed(
    source: Path, kafka_bootstrap: str, kafka_topic: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from confluent_kafka import Producer

    topic = kafka_topic(2)
    producer = Producer({"bootstrap.servers": kafka_bootstrap,
                         "transactional.id": f"rec-{topic}"})
    producer.init_transactions(30)
    producer.begin_transaction()
    for i in [*range(0, 50), 7]:  # 7 twice; 50..99 missing
        producer.produce(topic, key=str(i).encode(), value=json.dumps({"id": i}).encode())
    producer.commit_transaction(30)
    producer.begin_transaction()
    producer.produce(topic, key=b"60", value=b'{"id": 60}')
    producer.flush(30)
    producer.abort_transaction(30)  # invisible to read_committed: 60 stays a gap
    base = ["reconcile", "--source", str(source), "--key", "id", "--kafka", kafka_bootstrap,
            "--topic", topic, "--json"]
    assert _cli(base) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["duplicates"] == [["7", 2]]
    assert report["gaps"] == [str(i) for i in range(50, 100)]
    assert _cli([*base, "--sink-key", "id", "--end", "50"]) == 1  # only the duplicate
    report = json.loads(capsys.readouterr().out)
    assert report["gaps"] == [] and report["duplicates"] == [["7", 2]]
