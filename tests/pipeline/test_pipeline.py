"""The builder's operators, windows and FileSource, run in-process."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from eoscore.pipeline import (
    CollectingSink,
    FileSource,
    Pipeline,
    PipelineDefinitionError,
    PipelineError,
    Sliding,
    Tumbling,
    WindowResult,
)
from eoscore.pipeline.sources import END
from eoscore.runtime import CheckpointConfig
from tests.pipeline.window_model import window_starts


def write(path: Path, records: list[Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_stateless_operators_and_union(tmp_path: Path) -> None:
    write(tmp_path / "a" / "1.jsonl", list(range(10)))
    write(tmp_path / "b" / "1.jsonl", list(range(100, 103)))
    p = Pipeline("ops")
    sink = CollectingSink()
    a = p.source(FileSource(tmp_path / "a", name="a")).map(int)
    b = p.source(FileSource(tmp_path / "b", name="b")).map(int)
    (
        a.filter(lambda x: x % 2 == 0)
        .union(b)
        .flat_map(lambda x: [x, -x] if x >= 100 else [x])
        .sink(sink)
    )
    result = p.run(tmp_path / "state", CheckpointConfig(interval=None))
    assert sorted(sink.committed) == sorted([0, 2, 4, 6, 8, 100, -100, 101, -101, 102, -102])
    assert result.records_in == 13
    assert result.checkpoints.completed == 1  # the final one


def test_keyed_reduce_emits_running_values(tmp_path: Path) -> None:
    write(tmp_path / "in" / "x.jsonl", [["a", 1], ["b", 2], ["a", 3], ["a", 4]])
    p = Pipeline("reduce")
    sink = CollectingSink()
    (
        p.source(FileSource(tmp_path / "in"))
        .map(json.loads)
        .key_by(lambda r: r[0])
        .reduce(lambda x, y: [x[0], x[1] + y[1]])
        .sink(sink)
    )
    p.run(tmp_path / "state", CheckpointConfig(interval=None))
    assert sink.committed == [("a", ["a", 1]), ("b", ["b", 2]), ("a", ["a", 4]), ("a", ["a", 8])]


def windowed(
    tmp_path: Path,
    events: list[dict[str, Any]],
    assigner: Any,
    lateness: float = 0,
    bound: float = 0,
) -> tuple[list[WindowResult], list[Any]]:
    write(tmp_path / "in" / "e.jsonl", events)
    p = Pipeline("windows")
    results, late = CollectingSink("results"), CollectingSink("late")
    # Watermarks advance after each batch; 8-byte reads make every record a batch.
    out = (
        p.source(FileSource(tmp_path / "in", read_bytes=8))
        .map(json.loads)
        .assign_timestamps(lambda e: e["t"], out_of_orderness=bound)
        .key_by(lambda e: e["k"])
        .window(assigner, allowed_lateness=lateness)
        .aggregate(lambda: 0, lambda acc, e: acc + e["v"])
    )
    out.sink(results)
    out.late().map(lambda e: e["t"]).sink(late)
    p.run(tmp_path / "state", CheckpointConfig(interval=None))
    return [WindowResult(*r) for r in results.committed], late.committed


def test_tumbling_windows_and_late_side_output(tmp_path: Path) -> None:
    events = [
        {"k": "a", "t": 1, "v": 1},
        {"k": "a", "t": 12, "v": 10},
        {"k": "b", "t": 5, "v": 100},  # out of order by 7, bound is 0: window [0,10) fired
        {"k": "a", "t": 25, "v": 1000},
    ]
    results, late = windowed(tmp_path, events, Tumbling(10))
    assert sorted(results) == [("a", 0, 10, 1), ("a", 10, 20, 10), ("a", 20, 30, 1000)]
    assert late == [5]


def test_bounded_out_of_orderness_keeps_records_on_time(tmp_path: Path) -> None:
    events = [
        {"k": "a", "t": 1, "v": 1},
        {"k": "a", "t": 12, "v": 10},
        {"k": "b", "t": 5, "v": 100},
        {"k": "a", "t": 25, "v": 1000},
    ]
    results, late = windowed(tmp_path, events, Tumbling(10), bound=8)
    assert sorted(results) == [
        ("a", 0, 10, 1),
        ("a", 10, 20, 10),
        ("a", 20, 30, 1000),
        ("b", 0, 10, 100),
    ]
    assert late == []


def test_allowed_lateness_fires_an_updated_result(tmp_path: Path) -> None:
    events = [
        {"k": "a", "t": 1, "v": 1},
        {"k": "a", "t": 12, "v": 10},  # watermark 12: [0,10) fires with 1
        {"k": "a", "t": 3, "v": 5},  # late but within 5: [0,10) fires again with 6
        {"k": "a", "t": 30, "v": 7},  # watermark 30: [0,10) state dropped
        {"k": "a", "t": 4, "v": 9},  # too late: side output
    ]
    results, late = windowed(tmp_path, events, Tumbling(10), lateness=5)
    assert [r for r in results if r.start == 0] == [("a", 0, 10, 1), ("a", 0, 10, 6)]
    assert late == [4]


def test_sliding_windows_match_a_model(tmp_path: Path) -> None:
    events = [{"k": i % 3, "t": i * 7 % 50 + i // 2, "v": i} for i in range(60)]
    results, late = windowed(tmp_path, events, Sliding(20, 5), bound=60)
    want: dict[tuple[int, int], int] = {}
    for e in events:
        for start in window_starts(e["t"], 20, 5):
            want[(e["k"], int(start))] = want.get((e["k"], int(start)), 0) + e["v"]
    assert {(r.key, r.start): r.value for r in results} == want
    assert all(r.end - r.start == 20 for r in results)
    assert late == []


def test_window_without_timestamps_is_refused(tmp_path: Path) -> None:
    write(tmp_path / "in" / "e.jsonl", [1])
    p = Pipeline("bad")
    p.source(FileSource(tmp_path / "in")).key_by(lambda e: 0).window(Tumbling(5)).aggregate(
        lambda: 0, lambda a, e: a
    ).sink(CollectingSink())
    with pytest.raises(Exception, match="assign_timestamps"):
        p.run(tmp_path / "state", CheckpointConfig(interval=None))


def test_duplicate_names_are_refused(tmp_path: Path) -> None:
    p = Pipeline("names")
    p.source(FileSource(tmp_path))
    with pytest.raises(PipelineDefinitionError):
        p.source(FileSource(tmp_path))
    s = p.source(FileSource(tmp_path, name="other"))
    s.sink(CollectingSink("x"))
    with pytest.raises(PipelineDefinitionError):
        s.sink(CollectingSink("x"))
    with pytest.raises(PipelineDefinitionError):
        Sliding(5, 10)


def test_file_source_positions_resume_after_the_last_record(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "f").write_text("one\ntwo\nthr")
    src = FileSource(tmp_path / "in", follow=True)
    (ch,) = src.open({})
    assert ch.read() == ["one", "two"]
    assert ch.position() == 8
    assert ch.read() is None  # "thr" has no newline yet: not a record while following
    with open(tmp_path / "in" / "f", "a") as f:
        f.write("ee\nfour\n")
    assert ch.read() == ["three", "four"]
    (again,) = src.open({"f": 8})
    assert again.read() == ["three", "four"]
    ch.close()
    again.close()
    (bounded,) = FileSource(tmp_path / "in").open({"f": 14})
    assert bounded.read() == ["four"]
    bounded.close()
    with pytest.raises(ValueError, match="past the end"):
        FileSource(tmp_path / "in").open({"f": 10_000})


def test_following_pipeline_stops_with_a_final_checkpoint(tmp_path: Path) -> None:
    write(tmp_path / "in" / "e.jsonl", [1, 2, 3])
    p = Pipeline("follow")
    sink = CollectingSink()
    p.source(FileSource(tmp_path / "in", follow=True)).map(int).sink(sink)
    stop = threading.Event()
    result: list[Any] = []
    t = threading.Thread(
        target=lambda: result.append(
            p.run(tmp_path / "state", CheckpointConfig(interval=0.05), stop=stop)
        )
    )
    t.start()
    deadline = time.monotonic() + 30
    while sorted(sink.committed) != [1, 2, 3] and time.monotonic() < deadline:
        time.sleep(0.01)
    with open(tmp_path / "in" / "e.jsonl", "a") as f:
        f.write("4\n")
    while 4 not in sink.committed and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    t.join(30)
    assert not t.is_alive()
    assert sorted(sink.committed) == [1, 2, 3, 4]
    # Restarted, it resumes after 4 and sees nothing new.
    p2 = Pipeline("follow")
    sink2 = CollectingSink()
    p2.source(FileSource(tmp_path / "in", follow=True)).map(int).sink(sink2)
    stop2 = threading.Event()
    stop2.set()
    r2 = p2.run(tmp_path / "state", CheckpointConfig(interval=0.05), stop=stop2)
    assert r2.recovered_from is not None and sink2.committed == []


def test_file_source_decodes_json_a_read_at_a_time(tmp_path: Path) -> None:
    rows = [{"k": f"k{i % 7}", "t": i / 10, "v": i} for i in range(5000)]
    write(tmp_path / "in" / "a.jsonl", rows[:2500])
    write(tmp_path / "in" / "b.jsonl", rows[2500:])
    (ch,) = [
        c
        for c in FileSource(tmp_path / "in", decode="json", read_bytes=4096).open({})
        if c.name == "a.jsonl"
    ]
    got: list[Any] = []
    while (batch := ch.read()) is not END:
        got.extend(batch)
    ch.close()
    assert got == rows[:2500]
    p = Pipeline("decoded")
    sink = CollectingSink()
    p.source(FileSource(tmp_path / "in", decode="json")).filter(lambda r: r["v"] % 2).sink(sink)
    p.run(tmp_path / "state", CheckpointConfig(interval=None))
    assert sorted(r["v"] for r in sink.committed) == list(range(1, 5000, 2))


def test_bad_json_names_the_file_and_offset(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "f.jsonl").write_text('{"a": 1}\n{"a": \n')
    (ch,) = FileSource(tmp_path / "in", decode="json").open({})
    with pytest.raises(PipelineError, match=r"f\.jsonl: bad JSON in the lines from byte 0"):
        ch.read()
    ch.close()
    with pytest.raises(PipelineDefinitionError):
        FileSource(tmp_path / "in", decode="yaml")
