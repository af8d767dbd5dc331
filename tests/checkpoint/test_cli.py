"""``eoscore checkpoint list|inspect|verify`` (called through its main)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from eoscore.checkpoint import Checkpointer, FileCheckpointStorage
from eoscore.checkpoint.cli import main
from eoscore.state import ColumnarState, ValueState


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    v = ValueState("users")
    c = ColumnarState("counts")
    for i in range(3000):
        v.put(f"u{i}", {"n": i})
    c.add(np.arange(50_000), 1)
    with FileCheckpointStorage(tmp_path) as storage:
        cp = Checkpointer(storage, {"users": v, "counts": c})
        cp.checkpoint({"offset": 10})
        c.add(np.arange(100), 1)
        cp.checkpoint({"offset": 20})
    return tmp_path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["checkpoint", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_list(directory: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "list", str(directory))
    assert code == 0
    assert "full" in out and "incremental" in out
    code, out, _ = run(capsys, "list", str(directory), "--json")
    rows = json.loads(out)
    assert [r["id"] for r in rows] == [1, 2]
    assert rows[0]["full"] and not rows[1]["full"]
    assert rows[1]["written_bytes"] < rows[1]["stored_bytes"]


def test_inspect(directory: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "inspect", str(directory), "--json")
    info = json.loads(out)
    assert code == 0 and info["id"] == 2 and info["sources"] == {"offset": 20}
    counts = info["state"]["counts"]
    assert counts["entries"] == 50_000 and counts["segments"] == 2
    assert counts["reused_from"] == [1] and counts["reused_bytes"] > 0
    assert counts["compression_ratio"] > 1
    assert info["state"]["users"]["reused_from"] == [1]  # unchanged: fully reused
    code, out, _ = run(capsys, "inspect", str(directory), "1")
    assert code == 0 and "checkpoint 1 (full)" in out and "users (value): 3000 entries" in out


def test_verify_ok_then_damaged(directory: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "verify", str(directory))
    assert code == 0 and "checkpoint 1: ok" in out and "checkpoint 2: ok" in out
    victim = next((directory / "data" / "0000000001").glob("*users.chunks"))
    data = bytearray(victim.read_bytes())
    data[-5] ^= 0xFF
    victim.write_bytes(bytes(data))
    code, out, _ = run(capsys, "verify", str(directory), "--json")
    results = json.loads(out)
    assert code == 1
    assert all(not r["ok"] for r in results)  # 2 reuses 1's damaged chunk
    assert "checksum mismatch" in results[1]["problems"][0]
    assert "file data/0000000001/" in results[1]["problems"][0]


def test_missing_things_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "list", str(tmp_path / "nope"))
    assert code == 2 and "no eoscore checkpoints" in err
    (tmp_path / "manifests").mkdir()
    code, _, err = run(capsys, "inspect", str(tmp_path), "7")
    assert code == 2 and "no completed checkpoint 7" in err
