"""Barrier alignment: a keyed two-input operator fed by a fast and a slow channel
gives the same result aligned, unaligned, and after an alignment timeout, and
an unaligned checkpoint's channel state is restored in order after a crash."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from eoscore.checkpoint import FileCheckpointStorage
from eoscore.pipeline import FileSource, KeyedAccess, Pipeline, Tumbling
from eoscore.runtime import CheckpointConfig, CheckpointCoordinator, RunResult
from eoscore.sinks import FileSink
from tests.pipeline.chaos_job import SlowFileSource
from tests.pipeline.test_exactly_once import read_committed


class Trickle(SlowFileSource):
    delay = 0.08


def make_input(directory: Path) -> None:
    rng = random.Random(3)
    directory.mkdir()
    for side, n in (("left", 100_000), ("right", 2_000)):
        with open(directory / f"{side}.jsonl", "w") as f:
            for i in range(n):
                t = i * (50 if side == "right" else 1) + rng.randint(0, 9)
                f.write(json.dumps({"k": rng.randrange(40), "t": t, "x": i % 11}) + "\n")


def first_three(slot: int) -> Any:
    def fn(state: KeyedAccess, record: dict[str, Any]) -> list[tuple[Any, float, int]]:
        seen = state.get([0, 0])
        seen = [seen[0] + (slot == 0), seen[1] + (slot == 1)]
        state.put(seen)
        # The first three records per key and side count double: output depends on state.
        weight = 2 if seen[slot] <= 3 else 1
        return [(record["k"], record["t"], record["x"] * weight + 1000 * slot)]

    return fn


def run(input_dir: Path, work: Path, config: CheckpointConfig) -> RunResult:
    p = Pipeline("align")
    # Big batches on the fast channel (its barrier waits behind them), small
    # ones trickling in on the slow channel (they pile up while it is blocked).
    fast = FileSource(input_dir, pattern="left.jsonl", name="left", read_bytes=1 << 18)
    left = p.source(fast).map(json.loads)
    slow = Trickle(input_dir, pattern="right.jsonl", name="right", read_bytes=4096)
    right = p.source(slow).map(json.loads)
    joined = left.key_by(lambda r: r["k"]).connect(right.key_by(lambda r: r["k"]))
    (
        joined.process(first_three(0), first_three(1))
        .assign_timestamps(lambda r: r[1], out_of_orderness=10)
        .key_by(lambda r: r[0])
        .window(Tumbling(500))
        .aggregate(lambda: 0, lambda acc, r: acc + r[2])
        .sink(FileSink(work / "out"))
    )
    return p.run(work / "state", config)


def output(work: Path) -> dict[tuple[int, int], int]:
    rows = read_committed(work / "out")
    result = {(r[0], r[1]): r[3] for r in rows}
    assert len(result) == len(rows), "a window was emitted twice"
    return result


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("align") / "in"
    make_input(d)
    return d


@pytest.fixture(scope="module")
def reference(inputs: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[Any, int]:
    work = tmp_path_factory.mktemp("reference")
    run(inputs, work, CheckpointConfig(interval=None))
    return output(work)


def test_aligned_checkpoints(inputs: Path, reference: dict[Any, int], tmp_path: Path) -> None:
    result = run(inputs, tmp_path, CheckpointConfig(interval=0.05))
    assert result.checkpoints.aligned >= 2
    assert result.checkpoints.unaligned == 0
    assert output(tmp_path) == reference


def test_unaligned_checkpoints_keep_in_flight_records_as_channel_state(
    inputs: Path, reference: dict[Any, int], tmp_path: Path
) -> None:
    result = run(inputs, tmp_path, CheckpointConfig(interval=0.05, unaligned=True))
    assert result.checkpoints.unaligned >= 1
    assert result.checkpoints.channel_state_records > 0
    assert output(tmp_path) == reference


def test_alignment_timeout_switches_to_unaligned(
    inputs: Path, reference: dict[Any, int], tmp_path: Path
) -> None:
    result = run(inputs, tmp_path, CheckpointConfig(interval=0.05, aligned_timeout=0.0))
    assert result.checkpoints.unaligned >= 1
    assert output(tmp_path) == reference


class Crash(Exception):
    pass


def test_channel_state_is_restored_in_order_after_a_crash(
    inputs: Path, reference: dict[Any, int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = CheckpointConfig(interval=0.05, unaligned=True)
    decide = CheckpointCoordinator._decide

    def crash_after_channel_state(self: Any, n: int, meta: Any) -> None:
        decide(self, n, meta)
        if meta["channel_state"]:
            raise Crash(n)  # right after a checkpoint with records in flight completed

    monkeypatch.setattr(CheckpointCoordinator, "_decide", crash_after_channel_state)
    with pytest.raises(Crash):
        run(inputs, tmp_path, config)
    monkeypatch.undo()
    storage = FileCheckpointStorage(tmp_path / "state" / "state", readonly=True)
    latest = storage.latest()
    assert latest is not None
    in_flight = storage.read_manifest(latest).sources["channel_state"]
    assert sum(len(v) for v in in_flight.values()) > 0, "the crash came after no channel state"
    result = run(inputs, tmp_path, config)
    assert result.recovered_from is not None
    assert output(tmp_path) == reference
