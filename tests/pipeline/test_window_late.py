"""Late records never vanish silently: counted, and warned about with no side output."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from eoscore.pipeline import CollectingSink, FileSource, Pipeline, Tumbling
from eoscore.pipeline.windows import LATE_WARNING_INTERVAL, WindowNode
from eoscore.runtime import CheckpointConfig

EVENTS = [
    {"k": "a", "t": 1, "v": 1},
    {"k": "a", "t": 12, "v": 10},
    {"k": "b", "t": 5, "v": 100},  # out of order by 7, bound is 0: late
    {"k": "a", "t": 25, "v": 1000},
    {"k": "b", "t": 2, "v": 100},  # late
]


def run(tmp_path: Path, connect_late: bool) -> tuple[list[Any], list[Any], int]:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "e.jsonl").write_text("".join(json.dumps(e) + "\n" for e in EVENTS))
    p = Pipeline("late")
    results, late = CollectingSink("results"), CollectingSink("late")
    out = (
        p.source(FileSource(tmp_path / "in", read_bytes=8))  # a batch per record
        .map(json.loads)
        .assign_timestamps(lambda e: e["t"])
        .key_by(lambda e: e["k"])
        .window(Tumbling(10))
        .aggregate(lambda: 0, lambda acc, e: acc + e["v"])
    )
    out.sink(results)
    if connect_late:
        out.late().sink(late)
    result = p.run(tmp_path / "state", CheckpointConfig(interval=None))
    return sorted(results.committed), late.committed, result.late_records


def test_dropped_late_records_are_counted_and_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="eoscore.pipeline.windows"):
        results, _, late_records = run(tmp_path, connect_late=False)
    assert late_records == 2
    assert results == [("a", 0, 10, 1), ("a", 10, 20, 10), ("a", 20, 30, 1000)]
    warnings = [r.getMessage() for r in caplog.records if "late" in r.getMessage()]
    assert len(warnings) == 1  # rate limited: the second one comes within the interval
    assert "dropped 1 late records (1 in total" in warnings[0]
    assert "connect .late()" in warnings[0]


def test_late_side_output_gets_them_without_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="eoscore.pipeline.windows"):
        results, late, late_records = run(tmp_path, connect_late=True)
    assert late_records == 2
    assert [e["t"] for e in late] == [5, 2]
    assert results == [("a", 0, 10, 1), ("a", 10, 20, 10), ("a", 20, 30, 1000)]
    assert not [r for r in caplog.records if r.name == "eoscore.pipeline.windows"]


def test_the_warning_is_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    node = WindowNode("w", lambda v: v, Tumbling(10), 0, init=lambda: 0, add=lambda a, v: a + v)
    node.on_watermark(100_000_000)
    with caplog.at_level(logging.WARNING, logger="eoscore.pipeline.windows"):
        for _ in range(50):
            node.push([1, 2], np.array([1_000_000, 2_000_000]))
        node.late_out._warned_at -= LATE_WARNING_INTERVAL  # as if the interval had passed
        node.push([3], np.array([3_000_000]))
    messages = [r.getMessage() for r in caplog.records]
    assert node.late_records == 101
    assert len(messages) == 2
    assert "dropped 2 late records (2 in total" in messages[0]
    assert "dropped 99 late records (101 in total" in messages[1]
