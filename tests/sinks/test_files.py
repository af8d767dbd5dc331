"""FileSink: SIGKILL loop, rolling, CSV, and no partial file ever visible."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from eoscore.sinks import Decision, RecoveryPlan
from eoscore.sinks.errors import SinkRecoveryError, SinkWriteError
from eoscore.sinks.files import FileSink
from tests.sinks._chaos import Source, kill_loop

POINTS = [
    "files.after_write",
    "files.after_pre_commit",
    "driver.after_pending",
    "driver.after_decision",
    "files.mid_commit",  # some parts renamed, others not
    "driver.after_commit",
]


def _visible(directory: Path, fmt: str) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    for path in sorted(directory.iterdir()):
        if path.name.startswith("."):
            continue
        assert path.suffix == f".{fmt}", path
        text = path.read_text()
        assert text.endswith("\n"), f"partial file {path}"
        if fmt == "ndjson":
            records.extend(json.loads(line) for line in text.splitlines())
        else:
            rows = list(csv.DictReader(text.splitlines()))
            records.extend({k: int(v) if k != "k" else v for k, v in r.items()} for r in rows)
    return records


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["ndjson", "csv"])
def test_files_survive_kills(tmp_path: Path, fmt: str) -> None:
    out = tmp_path / "out"
    state = tmp_path / "state"
    state.mkdir()
    source = Source(tmp_path / "src.ndjson")
    source.extend(1500)
    cfg = {
        "kind": "files",
        "directory": str(out),
        "format": fmt,
        "columns": ["id", "k", "v"],
        "max_bytes": 1500,  # several parts per checkpoint
        "source": str(source.path),
        "state_dir": str(state),
        "per_checkpoint": 150,
        "batch": 40,
        "pause": 0.01,
    }
    outcome = kill_loop(cfg, tmp_path, source, POINTS, seed=11 if fmt == "csv" else 5)
    assert outcome.kills >= 20
    records = _visible(out, fmt)
    counts = Counter(r["id"] for r in records)
    assert [i for i, c in counts.items() if c > 1] == []
    assert sorted(counts) == [r["id"] for r in source.records]
    assert records == source.records  # in order, too (names sort by checkpoint, part)
    assert not any((out / ".eoscore-staging").rglob("*.inprogress"))


def test_rolling_by_size_and_time(tmp_path: Path) -> None:
    sink = FileSink(tmp_path, max_bytes=200)
    sink.open("p", "w")
    sink.recover(RecoveryPlan(None))
    sink.begin(1)
    for i in range(20):
        sink.write([{"id": i, "pad": "x" * 30}])
    handle = sink.pre_commit(1)
    assert len(handle["files"]) >= 4
    assert [p for p in tmp_path.iterdir() if not p.name.startswith(".")] == []  # not yet
    sink.commit(1, handle)
    sink.commit(1, handle)  # redo: no-op
    assert len(_visible(tmp_path, "ndjson")) == 20

    timed = FileSink(tmp_path / "t", max_seconds=0.0)
    timed.open("p", "w")
    timed.begin(1)
    timed.write([{"a": 1}])
    timed.write([{"a": 2}])
    assert len(timed.pre_commit(1)["files"]) == 2


def test_abort_and_recovery_sweep(tmp_path: Path) -> None:
    sink = FileSink(tmp_path)
    sink.open("p", "w")
    sink.begin(1)
    sink.write([{"a": 1}])
    h1 = sink.pre_commit(1)
    sink.abort(1, h1)
    sink.begin(2)
    sink.write([{"a": 2}])
    h2 = sink.pre_commit(2)
    sink.begin(3)
    sink.write([{"a": 3}])  # in progress at the "crash"
    sink.close()

    again = FileSink(tmp_path)
    again.open("p", "w")
    with pytest.raises(SinkRecoveryError):
        again.recover(RecoveryPlan(Decision(2)))  # 2 is decided, but its handle is missing
    again.recover(RecoveryPlan(Decision(2), commit=[(2, h2)]))
    assert _visible(tmp_path, "ndjson") == [{"a": 2}]
    assert not list(again.staging.iterdir())


def test_bad_record_names_it(tmp_path: Path) -> None:
    sink = FileSink(tmp_path, format="csv", columns=["a", "b"])
    sink.open("p", "w")
    sink.begin(1)
    sink.write([{"a": 1, "b": 2}])
    with pytest.raises(SinkWriteError, match="record #1"):
        sink.write([{"a": 1}])


def test_ndjson_batches_encode_like_json_dumps(tmp_path: Path) -> None:
    """One msgspec call per batch; what it cannot encode falls back to json, and a
    record neither can encode is named."""
    records: list[Any] = [
        {"a": 1, "é": "ünïcode", "n": None, "f": 0.1, "big": 10**15, "l": [1, 2.5, "x"]},
        [True, False, -0.0, 1e300],
        ("tuple", 3),
        "plain",
        {"huge": 2**70},  # beyond msgspec's 64-bit ints: the json fallback writes it
    ]
    sink = FileSink(tmp_path)
    sink.open("p", "w")
    sink.begin(1)
    sink.write(records[:4])
    sink.write(records[4:])
    handle = sink.pre_commit(1)
    sink.commit(1, handle)
    text = "".join(p.read_text() for p in sorted(tmp_path.glob("*.ndjson")))
    lines = text.splitlines()
    assert [json.loads(line) for line in lines] == json.loads(json.dumps(records))
    want = [json.dumps(r, separators=(",", ":"), ensure_ascii=False) for r in records]
    # Byte-identical but for the exponent's form (msgspec writes 1e300, json 1e+300).
    assert lines[1] == want[1].replace("e+", "e")
    assert lines[:1] + lines[2:] == want[:1] + want[2:]
    sink.begin(2)
    with pytest.raises(SinkWriteError, match="record #1"):
        sink.write([1, object()])
