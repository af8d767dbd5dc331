"""``eoscore demo`` as a user runs it: the verification it prints holds."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from eoscore.demo.cli import format_demo
from eoscore.demo.orders import JITTER, DemoSettings, expected_totals, generate_orders

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
    assert data["late_records"] == demo["late_orders"] == 0  # within the bound: none late
    assert data["late_exact"] is True
    assert not list((tmp_path / "chaos" / "late").glob("late-*.ndjson"))
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
    assert "late         0 orders behind the watermark" in out
    assert "equal" in out


def _late_files(workdir: Path) -> list[dict[str, Any]]:
    """The late orders the demo committed, read independently of the demo."""
    return [
        json.loads(line)
        for path in sorted((workdir / "chaos" / "late").glob("late-*.ndjson"))
        for line in path.read_text().splitlines()
        if line
    ]


def test_demo_fails_loudly_on_late_orders(tmp_path: Path) -> None:
    # Input out of order by up to 45s, the pipeline's bound is 30s: some orders come
    # behind the watermark and are left out of the totals. That must not pass.
    proc = subprocess.run(
        [*demo_command(), "--json", "--orders", "40000", "--kills", "2", "--disorder", "45",
         "--workdir", str(tmp_path)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-3000:] + proc.stdout[-3000:]
    data = json.loads(proc.stdout)
    demo = data["demo"]
    late = _late_files(tmp_path)
    assert data["verified"] is False and data["ok"] is False
    assert len(late) > 0
    assert data["late_records"] == demo["late_orders"] == len(late)
    assert len({o["order_id"] for o in late}) == len(late)  # each late order kept once
    # Exactly the late orders are missing from the committed totals.
    assert demo["expected_orders"] - demo["actual_orders"] == len(late)
    assert demo["expected_total_cents"] - demo["actual_total_cents"] == sum(
        o["amount_cents"] for o in late
    )
    # The human report says it, with the count.
    text = format_demo(data)
    assert f"LATE         {len(late):,} orders arrived behind the watermark" in text
    assert "exceeds the pipeline's 30s bound" in text
    assert f"VERIFICATION FAILED ({len(late):,} late orders)" in text


def test_demo_allow_late_leaves_exactly_the_late_orders_out(tmp_path: Path) -> None:
    proc = subprocess.run(
        [*demo_command(), "--json", "--orders", "40000", "--kills", "2", "--disorder", "45",
         "--allow-late", "--workdir", str(tmp_path)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    data = json.loads(proc.stdout)
    demo = data["demo"]
    late = _late_files(tmp_path)
    assert data["verified"] is True
    assert data["late_records"] == demo["late_orders"] == len(late) > 0
    # Left out of the recomputation: every delivery of a late order (duplicates too).
    ids = {o["order_id"] for o in late}
    deliveries = [
        json.loads(line)["order_id"]
        for path in (tmp_path / "chaos" / "orders").glob("orders-*.jsonl")
        for line in path.read_text().splitlines()
        if line
    ]
    assert data["late_excluded"] == sum(1 for i in deliveries if i in ids)
    assert demo["expected_orders"] == demo["actual_orders"] == demo["orders"] - len(late)
    assert data["duplicates_found"] == data["missing"] == data["extra"] == data["wrong"] == 0
    assert "left out of the batch recomputation (--allow-late)" in format_demo(data)


def test_late_orders_within_the_bound_are_called_a_bug() -> None:
    """The Kafka incident: input generated within the bound, yet 1,113 orders late."""
    data: dict[str, Any] = {
        "demo": {
            "sink": "sqlite", "orders": 400_000, "duplicate_deliveries": 0,
            "out_of_order_seconds": JITTER, "out_of_orderness_bound_seconds": JITTER,
            "source": "kafka x", "expected_total_cents": 1, "actual_total_cents": 1,
            "expected_orders": 1, "actual_orders": 1, "late_orders": 1113,
            "late_allowed": False, "late_orders_dir": None,
        },
        "recovery_seconds": None, "checkpoint_bytes": None, "kills": 1,
        "kills_at_failpoints": 1, "kills_at_random": 0, "restarts": 1,
        "failpoints_fired": [], "keys_expected": 1, "records_out": 1,
        "duplicates_found": 0, "missing": 0, "extra": 0, "wrong": 0, "offending": {},
        "late_records": 1113, "verified": False, "elapsed": 1.0,
    }  # fmt: skip
    text = format_demo(data)
    assert "LATE         1,113 orders arrived behind the watermark" in text
    assert "within the pipeline's 30s bound, so none may be late" in text
    assert "VERIFICATION FAILED (1,113 late orders)" in text


def test_generator_disorder_stays_within_its_setting() -> None:
    for disorder in (JITTER, 45.0):
        parts, _ = generate_orders(DemoSettings(orders=4000, seed=3, disorder=disorder))
        lags = [
            i * 0.05 - o["ts"]
            for o in (json.loads(line) for part in parts for line in part)
            for i in [int(o["order_id"][1:])]
        ]
        assert max(lags) <= disorder + 0.001
        assert max(lags) > disorder - 1


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
    assert data["late_records"] == data["demo"]["late_orders"] == 0  # in order: none late


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
