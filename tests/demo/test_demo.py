"""``eoscore demo`` as a user runs it: the verification it prints holds."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from eoscore.demo.orders import DemoSettings, expected_totals, generate_orders

ROOT = Path(__file__).resolve().parents[2]


def demo_command() -> list[str]:
    """``eoscore demo`` through the same entry point the console script uses."""
    return [sys.executable, "-m", "eoscore", "demo"]


@pytest.mark.slow
def test_demo_verification_holds(tmp_path: Path) -> None:
    proc = subprocess.run(
        [*demo_command(), "--json", "--workdir", str(tmp_path)],
        cwd=tmp_path,  # no source checkout needed: what a fresh machine has
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    data = json.loads(proc.stdout)
    demo = data["demo"]
    assert data["verified"] is True
    assert data["kills"] >= 3, data  # it was really killed mid-run, several times
    assert not data["finished_early"]
    assert data["duplicates_found"] == data["missing"] == data["extra"] == data["wrong"] == 0
    assert demo["duplicate_deliveries"] > 0  # there were duplicates to get wrong
    assert demo["expected_orders"] == demo["actual_orders"] == demo["orders"]
    assert demo["expected_total_cents"] == demo["actual_total_cents"] > 0
    assert data["records_out"] == data["keys_expected"]
    assert data["recovery_seconds"]["count"] >= 1
    # The committed table itself, read independently of the demo's own check.
    import sqlite3

    conn = sqlite3.connect(tmp_path / "chaos" / "totals.db")
    total, rows, distinct = conn.execute(
        "SELECT SUM(total_cents), COUNT(*), COUNT(DISTINCT customer || '@' || window_start) "
        "FROM customer_totals"
    ).fetchone()
    conn.close()
    assert total == demo["expected_total_cents"]
    assert rows == distinct == data["keys_expected"]


def test_demo_human_output(tmp_path: Path) -> None:
    proc = subprocess.run(
        [*demo_command(), "--orders", "40000", "--kills", "2", "--quiet"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    out = proc.stdout
    assert "EXACTLY-ONCE VERIFIED" in out
    assert "duplicates   0   missing 0   extra 0   wrong 0" in out
    assert "equal" in out


def test_generator_has_duplicates_and_disorder() -> None:
    settings = DemoSettings(orders=5000, seed=1)
    parts, duplicates = generate_orders(settings)
    orders = [json.loads(line) for part in parts for line in part]
    assert len(orders) == 5000 + duplicates and duplicates > 50
    assert len({o["order_id"] for o in orders}) == 5000
    times = [[json.loads(line)["ts"] for line in part] for part in parts]
    disorder = sum(1 for ts in times for a, b in itertools.pairwise(ts) if b < a)
    assert disorder > 500  # event times really go backwards within a partition
    totals = expected_totals(orders)
    assert sum(v[0] for v in totals.values()) == 5000  # duplicates counted once


def _demo_json(tmp_path: Path, *args: str) -> dict[str, Any]:
    proc = subprocess.run(
        [*demo_command(), "--json", "--orders", "150000", "--kills", "3", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    data: dict[str, Any] = json.loads(proc.stdout)
    return data


@pytest.mark.postgres
@pytest.mark.slow
def test_demo_on_postgres(tmp_path: Path, pg_dsn: str) -> None:
    data = _demo_json(tmp_path, "--postgres", pg_dsn)
    assert data["verified"] is True and data["kills"] >= 1
    assert data["demo"]["sink"] == "postgresql"
    assert data["demo"]["expected_total_cents"] == data["demo"]["actual_total_cents"]
    # Run twice against the same database: a fresh demo must not trip over the last one.
    (tmp_path / "again").mkdir()
    again = _demo_json(tmp_path / "again", "--postgres", pg_dsn, "--seed", "7")
    assert again["verified"] is True


@pytest.mark.kafka
@pytest.mark.slow
def test_demo_on_kafka(tmp_path: Path, kafka_bootstrap: str) -> None:
    data = _demo_json(tmp_path, "--kafka", kafka_bootstrap)
    assert data["verified"] is True and data["kills"] >= 1
    assert data["demo"]["source"].startswith("kafka")
    assert data["duplicates_found"] == data["missing"] == data["wrong"] == 0


def test_demo_producer_keeps_partition_order() -> None:
    """The Kafka demo's input must land in file order: a produce retry that lands
    after later orders makes the early ones older than the watermark (dropped as
    late: short and missing early windows). The idempotent producer keeps the order."""
    confluent_kafka = pytest.importorskip("confluent_kafka")
    from eoscore.demo.orders import producer_config

    config = producer_config("127.0.0.1:1")
    assert config["enable.idempotence"] is True
    assert config["acks"] in ("all", -1)
    # No other setting may undo the ordering guarantee of idempotence.
    assert int(config.get("max.in.flight.requests.per.connection", 5)) <= 5
    assert "retries" not in config or int(config["retries"]) > 0
    confluent_kafka.Producer(config).flush(0)  # librdkafka accepts the combination
