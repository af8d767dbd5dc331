"""Pipeline runtime benchmarks (pyperf), reported as ratios within one run.

    python bench/bench_pipeline.py             # 200k events, 1M keys of state
    python bench/bench_pipeline.py --fast      # fewer values

- Throughput of FileSource -> parse -> timestamps -> dedup -> tumbling window
  -> two-phase sink with checkpoints every 1 s, versus checkpointing off (the
  final checkpoint only). Target >= 0.9x.
- Alignment buffer on the unblocked path: the executor's per-batch checks
  (``ended``, ``blocked``, ``has_room``) against an empty loop, divided by the
  records of a batch (1,000 here): ns per record. Target <= 50 ns.
- Barrier to resumed processing with 1M keys of keyed state: the synchronous
  part of a checkpoint (sink pre-commit, state freeze, background write
  started), full and after 1% of the keys changed.
"""

from __future__ import annotations

import atexit
import json
import os
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import pyperf

from eoscore.pipeline import CollectingSink, FileSource, Pipeline, Tumbling
from eoscore.runtime import (
    AlignmentBuffer,
    CheckpointConfig,
    CheckpointCoordinator,
    FileCheckpointStore,
)
from eoscore.state import ValueState

EVENTS = 200_000
KEYS = 1_000_000
BATCH = 1_000

_tmp = tempfile.mkdtemp(prefix="eoscore-bench-pipeline-")
atexit.register(shutil.rmtree, _tmp, True)


def _input() -> Path:
    d = Path(_tmp) / "in"
    if not d.exists():
        d.mkdir()
        rng = random.Random(1)
        for f in range(4):
            with open(d / f"{f}.jsonl", "w") as out:
                for i in range(f, EVENTS, 4):
                    e = {"id": i, "k": rng.randrange(500), "t": i // 8 + rng.randint(0, 30), "v": i}
                    out.write(json.dumps(e) + "\n")
    return d


def _run(interval: float | None) -> float:
    data = _input()
    state = tempfile.mkdtemp(dir=_tmp)
    p = Pipeline("bench")
    (
        p.source(FileSource(data))
        .map(json.loads)
        .assign_timestamps(lambda e: e["t"], out_of_orderness=40)
        .dedup(lambda e: e["id"])
        .key_by(lambda e: e["k"])
        .window(Tumbling(100))
        .aggregate(lambda: 0, lambda acc, e: acc + e["v"])
        .sink(CollectingSink())
    )
    started = time.perf_counter()
    result = p.run(state, CheckpointConfig(interval=interval))
    elapsed = time.perf_counter() - started
    assert result.records_in == EVENTS
    shutil.rmtree(state, ignore_errors=True)
    return elapsed


def bench_pipeline(loops: int, interval: float | None) -> float:
    return sum(_run(interval) for _ in range(loops))


def bench_align_checks(loops: int, checks: bool) -> float:
    buf = AlignmentBuffer(4, 20_000)
    batches = range(1000)
    started = time.perf_counter()
    for _ in range(loops):
        if checks:
            for b in batches:
                i = b & 3
                if buf.ended(i) or (buf.blocked(i) and not buf.has_room(i)):
                    pass
        else:
            for b in batches:
                i = b & 3
    return time.perf_counter() - started


class _NullSink:
    name = "null"

    def open(self, pipeline: str, worker: str) -> None: ...
    def recover(self, plan: Any) -> None: ...
    def begin(self, checkpoint_id: int) -> None: ...
    def pre_commit(self, checkpoint_id: int) -> dict[str, Any]:
        return {}

    def commit(self, checkpoint_id: int, handle: Any) -> None: ...
    def abort(self, checkpoint_id: int, handle: Any) -> None: ...
    def close(self) -> None: ...


def bench_barrier(loops: int, changed: float) -> float:
    total = 0.0
    for _ in range(loops):
        root = tempfile.mkdtemp(dir=_tmp)
        state = ValueState("counts")
        for k in range(KEYS):
            state.put(k, k)
        store = FileCheckpointStore(root, {"counts": state})
        coordinator = CheckpointCoordinator(
            "bench",
            store,
            [_NullSink()],
            CheckpointConfig(interval=None),  # type: ignore[list-item]
        )
        coordinator.recover()
        if changed:
            coordinator.snapshot(1, {}, {})
            coordinator.finish()
            for k in range(0, KEYS, int(1 / changed)):
                state.put(k, -k)
        started = time.perf_counter()
        coordinator.snapshot(coordinator.next_id, {}, {})  # barrier -> processing resumes
        total += time.perf_counter() - started
        coordinator.finish()
        coordinator.close()
        shutil.rmtree(root, ignore_errors=True)
    return total


def main() -> None:
    runner = pyperf.Runner(values=3, processes=2, warmups=1)
    runner.metadata["description"] = "eoscore pipeline runtime"
    results = {
        "pipeline, checkpoints off": runner.bench_time_func(
            "pipeline, checkpoints off", bench_pipeline, None, inner_loops=EVENTS
        ),
        "pipeline, checkpoints 1 s": runner.bench_time_func(
            "pipeline, checkpoints 1 s", bench_pipeline, 1.0, inner_loops=EVENTS
        ),
        "loop, no checks": runner.bench_time_func(
            "loop, no checks", bench_align_checks, False, inner_loops=1000
        ),
        "loop, alignment checks": runner.bench_time_func(
            "loop, alignment checks", bench_align_checks, True, inner_loops=1000
        ),
        "barrier->resume 1M keys, full": runner.bench_time_func(
            "barrier->resume 1M keys, full", bench_barrier, 0.0
        ),
        "barrier->resume 1M keys, 1% changed": runner.bench_time_func(
            "barrier->resume 1M keys, 1% changed", bench_barrier, 0.01
        ),
    }
    if any(r is None for r in results.values()):
        return  # a worker process
    mean = {name: r.mean() for name, r in results.items() if r is not None}
    off, on = mean["pipeline, checkpoints off"], mean["pipeline, checkpoints 1 s"]
    per_batch = mean["loop, alignment checks"] - mean["loop, no checks"]
    print()
    print(f"records/s, checkpoints off:          {1 / off:,.0f}")
    print(f"records/s, checkpoints every 1 s:    {1 / on:,.0f}")
    print(f"throughput ratio (1 s / off):        {off / on:.2f}x   (target >= 0.9x)")
    print(f"alignment checks per batch:          {per_batch * 1e9:.0f} ns")
    print(
        f"  per record (batch of {BATCH}):      {per_batch * 1e9 / BATCH:.2f} ns   (target <= 50)"
    )
    full = mean["barrier->resume 1M keys, full"]
    incr = mean["barrier->resume 1M keys, 1% changed"]
    print(f"barrier->resume, 1M keys, full:      {full * 1e3:.1f} ms")
    print(f"barrier->resume, 1M keys, 1% dirty:  {incr * 1e3:.1f} ms  ({incr / full:.2f}x of full)")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
