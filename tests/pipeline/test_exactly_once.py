"""Exactly-once windowed aggregates under SIGKILL (the runtime's key test).

A few hundred thousand events with out-of-order event times and duplicates,
appended in chunks before each run, go through FileSource -> dedup ->
tumbling and sliding windows -> two staged file sinks. The job runs in a
subprocess that is SIGKILLed over and over, at named failpoints between every
pair of commit-protocol steps, during alignment, mid-snapshot, mid-restore,
mid-window, and at random moments, and restarted each time. Each named
failpoint must fire. At the end, the committed output must equal a batch
computation over the input: every window once, none missing, none extra.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.pipeline.chaos_job import SLIDING, TUMBLING
from tests.pipeline.window_model import window_starts

ROOT = Path(__file__).resolve().parents[2]
CHUNK = 10_000  # events appended before each run
#: Larger chunks where the failpoint needs more input: 30 batches (64 KiB fast,
#: 8 KiB slow); fast channels with HOLD_BATCHES still to read behind barrier 1
#: (up to ~10 of their 20 batches are read before it).
CHUNKS = {"runtime.during_alignment": 100_000, "runtime.after_batch": 40_000}
FILES = 4
KEYS = 50
KILLED = -1000  # run_module's return code for a job it had to kill (timed out)

#: (failpoint, hit at which it kills). Between every pair of commit steps, and more.
FAILPOINTS = [
    ("runtime.during_alignment", 1),  # with --hold-slow-barrier (see chaos_job.BarrierGate)
    ("runtime.after_batch", 30),  # mid-window
    ("files.mid_commit", 1),  # inside step 4: a sink's commit cut short (needs output)
    ("source.before_barrier", 1),
    ("runtime.before_pre_commit", 1),
    ("files.after_pre_commit", 1),  # inside step 1: one sink prepared, not the other
    ("runtime.after_pre_commit", 1),  # step 1 -> 2
    ("runtime.mid_snapshot", 1),  # step 2 in progress
    ("runtime.after_pending_write", 1),  # step 2 -> 3
    ("store.before_decision_rename", 1),  # step 3 in progress
    ("runtime.after_decision", 1),  # step 3 -> 4
    ("runtime.between_sink_commits", 1),  # inside step 4
    ("runtime.after_sink_commits", 1),  # step 4 -> 5
    ("runtime.after_complete", 1),  # after step 5
    ("runtime.mid_restore", 1),  # recovery
]


class Input:
    """Events appended to FILES files in chunks; ids and event times go on across chunks.

    Times are out of order by up to 40 (< OUT_OF_ORDERNESS, so none is late, also
    across chunks), duplicates follow up to 50 lines later in the same file.
    """

    def __init__(self, directory: Path, seed: int) -> None:
        self.directory = directory
        self.rng = random.Random(seed)
        self.events: list[dict[str, int]] = []
        directory.mkdir()
        for f in range(FILES):
            (directory / f"events-{f}.jsonl").touch()

    def append(self, count: int) -> None:
        rng = self.rng
        lines: list[list[str]] = [[] for _ in range(FILES)]
        delayed: list[list[tuple[int, str]]] = [[] for _ in range(FILES)]
        for i in range(len(self.events), len(self.events) + count):
            e = {"id": i, "k": rng.randrange(KEYS), "t": i // 8 + rng.randint(0, 40), "v": i % 97}
            self.events.append(e)
            f = 0 if i % 10 == 0 else 1 + i % (FILES - 1)  # file 0 (the slow one) gets 10%
            text = json.dumps(e)
            lines[f].append(text)
            if rng.random() < 0.05:  # a duplicate, a little later in the same file
                delayed[f].append((len(lines[f]) + rng.randint(1, 50), text))
            while delayed[f] and delayed[f][0][0] <= len(lines[f]):
                lines[f].append(delayed[f].pop(0)[1])
        for f in range(FILES):
            rest = [t for _, t in delayed[f]]
            with open(self.directory / f"events-{f}.jsonl", "a") as out:
                out.write("".join(line + "\n" for line in lines[f] + rest))


def expected(events: list[dict[str, int]], assigner: Any) -> dict[tuple[int, int], list[int]]:
    """Counts and sums per (key, window start), from the independent window model."""
    out: dict[tuple[int, int], list[int]] = {}
    for e in events:
        for start in window_starts(e["t"], assigner.size, assigner.slide, assigner.offset):
            acc = out.setdefault((e["k"], int(start)), [0, 0])
            acc[0] += 1
            acc[1] += e["v"]
    return out


def run_job(args: list[str], failpoint: str | None = None, kill_after: float | None = None) -> int:
    return run_module("tests.pipeline.chaos_job", args, failpoint, kill_after)


def run_module(
    module: str, args: list[str], failpoint: str | None = None, kill_after: float | None = None
) -> int:
    """Run ``python -m module args``; SIGKILL it after ``kill_after`` s.

    Its return code: 0, -SIGKILL when it killed itself (a failpoint), or ``KILLED``
    when it was still running after ``kill_after`` s and this function killed it.
    """
    env = dict(os.environ)
    env.pop("EOSCORE_FAILPOINTS", None)
    if failpoint:
        env["EOSCORE_FAILPOINTS"] = failpoint
    proc = subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    timed_out = False
    try:
        if kill_after is not None:
            try:
                proc.wait(timeout=kill_after)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                timed_out = True
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if proc.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(f"job failed with {proc.returncode}:\n{err.decode()[-3000:]}")
    return KILLED if timed_out else proc.returncode


def read_committed(directory: Path) -> list[Any]:
    """Every record ``FileSink`` made visible in ``directory`` (final parts only)."""
    rows: list[Any] = []
    for part in sorted(directory.glob("*.ndjson")):
        rows.extend(json.loads(line) for line in part.read_text().splitlines())
    return rows


def check(out_dir: Path, events: list[dict[str, int]]) -> None:
    for name, assigner in (
        ("tumbling", TUMBLING),
        ("sliding", SLIDING),
        ("tumbling-native", TUMBLING),
    ):
        rows = read_committed(out_dir / name)
        keys = Counter((r[0], r[1]) for r in rows)
        duplicates = [k for k, c in keys.items() if c > 1]
        assert not duplicates, f"{name}: windows emitted twice: {duplicates[:5]}"
        got = {(r[0], r[1]): r[3] for r in rows}
        want = expected(events, assigner)
        missing = sorted(set(want) - set(got))
        extra = sorted(set(got) - set(want))
        assert not missing, f"{name}: {len(missing)} windows missing, first {missing[:5]}"
        assert not extra, f"{name}: {len(extra)} windows that should not exist: {extra[:5]}"
        wrong = [k for k in want if got[k] != want[k]]
        assert not wrong, f"{name}: wrong values for {wrong[:5]}: {[got[k] for k in wrong[:5]]}"


@pytest.mark.slow
def test_windowed_aggregates_exactly_once_under_sigkill(tmp_path: Path) -> None:
    source = Input(tmp_path / "in", seed=7)
    args = [str(tmp_path / "in"), str(tmp_path / "state"), str(tmp_path / "out"), "0.1"]
    rng = random.Random(11)
    kills = 0
    fired: set[str] = set()
    # Every run but the last follows the files (they never end: an ended channel's
    # watermark is +inf, and what is appended later would be late), and is fed a
    # fresh chunk first, so each named failpoint has work to reach it: a run
    # recovers at the checkpointed offsets and reads on.
    for i, (name, at) in enumerate(FAILPOINTS):
        source.append(CHUNKS.get(name, CHUNK))
        extra = ["--hold-slow-barrier"] if name == "runtime.during_alignment" else []
        rc = run_job([*args, "--follow", *extra], failpoint=f"{name}=kill@{at}", kill_after=60)
        if rc == -signal.SIGKILL:  # killed itself: the failpoint fired
            kills += 1
            fired.add(name)
        # and a kill at a random moment after every second named one (suite time)
        if i % 2 == 0:
            source.append(CHUNK)
            kills += run_job([*args, "--follow"], kill_after=rng.uniform(0.2, 1.8)) == KILLED
    # Then let it finish.
    source.append(CHUNK)
    assert run_job(args, kill_after=120) == 0
    assert fired == {name for name, _ in FAILPOINTS}, (
        f"never fired: {set(dict(FAILPOINTS)) - fired}"
    )
    assert kills >= len(FAILPOINTS) + 4, kills
    check(tmp_path / "out", source.events)
