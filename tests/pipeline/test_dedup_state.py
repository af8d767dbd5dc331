"""The pipeline's dedup state: no size ceiling, exactly once across crashes.

Expected output is computed independently: the set of distinct ids of the
input (each must be committed exactly once), never by the code under test.
Run as a module, this file is the crash test's job:
``python -m tests.pipeline.test_dedup_state INPUT STATE OUT INTERVAL``.
"""

from __future__ import annotations

import json
import random
import signal
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from eoscore.checkpoint import FileCheckpointStorage
from eoscore.pipeline import FileSource, Pipeline
from eoscore.pipeline.dedup import DedupNode
from eoscore.pipeline.operators import Node, Times
from eoscore.runtime import CheckpointConfig
from eoscore.sinks import FileSink
from tests.pipeline.test_exactly_once import KILLED, read_committed, run_module

MiB = 1 << 20


def build(
    input_dir: Path | str, out_dir: Path | str, capacity: int = 1 << 16, follow: bool = False
) -> Pipeline:
    p = Pipeline("dedup-state")
    (
        p.source(FileSource(input_dir, pattern="ids-*.txt", follow=follow))
        .dedup(lambda x: x, capacity=capacity, name="seen")
        .sink(FileSink(out_dir, name="out"))
    )
    return p


def write_ids(path: Path, ids: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(i + "\n" for i in ids))


def dedup_chunk_bytes(state_dir: Path) -> tuple[int, int]:
    """(raw payload bytes, largest chunk) of the dedup state in the newest checkpoint."""
    with FileCheckpointStorage(state_dir / "state", readonly=True) as storage:
        latest = storage.latest()
        assert latest is not None
        entry = storage.read_manifest(latest).states["seen.seen"]
        refs = [ref for seg in entry.segments for ref in seg.chunks]
        return sum(r.raw_len for r in refs), max(r.length for r in refs)


class Collect(Node):
    def __init__(self) -> None:
        super().__init__("collect")
        self.values: list[object] = []
        self.times: list[int] = []

    def push(self, values: list[object], times: Times, port: int = 0) -> None:
        self.values += values
        if times is not None:
            assert times.dtype == np.int64
            self.times += times.tolist()


def test_node_ttl_is_seconds_and_times_are_microseconds() -> None:
    node = DedupNode("d", lambda r: r[0], capacity=16, ttl=30)
    out = Collect()
    node.connect_to(out)
    s = 1_000_000
    node.push([("a", 1), ("b", 2), ("a", 3)], np.array([0, 1 * s, 2 * s], np.int64))
    assert out.values == [("a", 1), ("b", 2)] and out.times == [0, 1 * s]
    # 4 generations of 10 s: "a" (generation 0) is forgotten from 40 s on, not before.
    node.push([("a", 4), ("c", 5)], np.array([39 * s, 39 * s], np.int64))
    assert out.values[2:] == [("c", 5)] and out.times[2:] == [39 * s]
    node.push([("a", 6), ("c", 7)], np.array([40 * s, 40 * s + 1], np.int64))
    assert out.values[3:] == [("a", 6)] and out.times[3:] == [40 * s]
    node.push([("a", 8), ("z", 9)], None)  # no times: nothing rotates, None passes on
    assert out.values[4:] == [("z", 9)]
    assert node.states() == {"d.seen": node.state}


@pytest.mark.slow
def test_dedup_state_over_64_mib_checkpoints_and_restores(tmp_path: Path) -> None:
    n = 3_300_000  # 24 bytes a key: ~79 MB of log, more than a chunk record may hold
    first = [f"payment-{i:012d}" for i in range(n)]
    write_ids(tmp_path / "in" / "ids-1.txt", first)
    result = build(tmp_path / "in", tmp_path / "out", capacity=n).run(
        tmp_path / "state", CheckpointConfig(interval=1.0)
    )
    assert result.checkpoints.failed == 0
    raw, largest = dedup_chunk_bytes(tmp_path / "state")
    assert raw > 64 * MiB, raw  # the state is larger than one chunk record may be
    assert largest <= 2 * MiB  # ... and is written in chunks of bounded size
    # A restarted pipeline restores all n keys: old ids are duplicates, new ones pass.
    rng = random.Random(5)
    new = [f"refund-{i:08d}" for i in range(50_000)]
    second = new + rng.sample(first, 50_000) + new[:1000]
    rng.shuffle(second)
    write_ids(tmp_path / "in" / "ids-2.txt", second)
    again = build(tmp_path / "in", tmp_path / "out", capacity=16).run(
        tmp_path / "state", CheckpointConfig(interval=1.0)
    )
    assert again.recovered_from is not None
    rows = read_committed(tmp_path / "out")
    assert len(rows) == n + len(new)
    assert Counter(rows) == Counter(first + new)


def test_dedup_output_is_exactly_once_under_sigkill(tmp_path: Path) -> None:
    rng = random.Random(11)
    input_dir, state, out = tmp_path / "in", tmp_path / "state", tmp_path / "out"
    universe = [f"id-{i:07d}" for i in range(120_000)]
    files = [input_dir / f"ids-{part}.txt" for part in range(3)]
    for path in files:
        write_ids(path, [])
    written: list[str] = []

    def append() -> None:
        """New work for the next run: ids (40% repeats) appended to every file."""
        for path in files:
            chunk = [
                rng.choice(universe) if rng.random() < 0.4 else universe[len(written) + j]
                for j in range(3000)
            ]
            with open(path, "a") as f:
                f.write("".join(i + "\n" for i in chunk))
            written.extend(chunk)

    args = [str(input_dir), str(state), str(out), "0.05"]
    plan = [
        ("runtime.mid_snapshot", 2),
        ("runtime.after_pending_write", 3),
        ("runtime.after_decision", 2),
        ("runtime.after_batch", 2),
        ("runtime.after_complete", 4),
        ("runtime.mid_restore", 1),
    ]
    fired: set[str] = set()
    killed = 0
    # Every run but the last follows the files (they never end), so each named
    # failpoint has work to reach and each random kill finds the job running.
    job = "tests.pipeline.test_dedup_state"
    for name, at in plan:
        append()
        if run_module(job, [*args, "follow"], f"{name}=kill@{at}", 60) == -signal.SIGKILL:
            fired.add(name)
        append()
        killed += run_module(job, [*args, "follow"], None, rng.uniform(0.5, 1.5)) == KILLED
    append()
    assert run_module(job, args, None, 120) == 0
    assert fired == {name for name, _ in plan}, f"never fired: {set(dict(plan)) - fired}"
    assert killed == len(plan)
    rows = read_committed(out)
    counts = Counter(rows)
    twice = [k for k, c in counts.items() if c > 1]
    assert not twice, f"{len(twice)} ids committed more than once: {twice[:5]}"
    assert set(rows) == set(written)  # every distinct id, its first occurrence


def main() -> None:
    input_dir, state_dir, out_dir, interval = sys.argv[1:5]
    follow = sys.argv[5:] == ["follow"]
    pipeline = build(input_dir, out_dir, follow=follow)
    result = pipeline.run(state_dir, CheckpointConfig(interval=float(interval)))
    print(json.dumps({"recovered_from": result.recovered_from, "records": result.records_in}))


if __name__ == "__main__":
    main()
