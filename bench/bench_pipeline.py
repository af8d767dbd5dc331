"""Pipeline runtime benchmarks (pyperf), reported as ratios within one run.

    python bench/bench_pipeline.py             # 200k events, 1M keys, a ~50 MB checkpoint
    python bench/bench_pipeline.py --fast      # fewer values
    python bench/bench_pipeline.py --full      # adds 10M keys; recovery from a ~1 GB checkpoint

- Throughput of FileSource -> parse -> timestamps -> dedup -> tumbling window
  -> two-phase sink with checkpoints every 1 s, versus checkpointing off (the
  final checkpoint only). Target >= 0.9x.
- Alignment buffer on the unblocked path: the executor's per-batch checks
  (``ended``, ``blocked``, ``has_room``) against an empty loop, divided by the
  records of a batch (1,000 here): ns per record. Target <= 50 ns.
- Barrier to resumed processing with 1M keys of keyed state: the synchronous
  part of a checkpoint (sink pre-commit, state freeze, background write
  started), full and after 1% of the keys changed; with ``--full`` also with
  10M keys.
- Recovery: a new ``FileCheckpointStore`` + ``CheckpointCoordinator.recover()``
  (read the decision, restore the state) from a checkpoint of a ColumnarState
  (count, sum, last per key: ~25 bytes/entry on disk; 2M keys, ~50 MB, or 40M
  keys, ~1 GB, with ``--full``), written once by the parent through the same
  runtime. Baselines on the same data, same run: reading the checkpoint's
  files raw (``readinto``, no decoding) and ``pickle.loads(lz4.frame)`` of
  the same arrays from one file. Warm (page cache) and cold (the files'
  pages dropped with ``posix_fadvise(DONTNEED)`` before every restore).
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import pickle
import random
import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lz4.frame
import numpy as np
import pyperf

from eoscore.pipeline import CollectingSink, FileSource, Pipeline, Tumbling
from eoscore.runtime import (
    AlignmentBuffer,
    CheckpointConfig,
    CheckpointCoordinator,
    FileCheckpointStore,
)
from eoscore.state import ColumnarState, ValueState

EVENTS = 200_000
KEYS = 1_000_000
KEYS_FULL = 10_000_000  # --full
RECOVERY_KEYS = 2_000_000  # ~50 MB checkpoint; --full: RECOVERY_KEYS_FULL
RECOVERY_KEYS_FULL = 40_000_000  # ~1 GB checkpoint
RECOVERY_COLUMNS = {"count": "int64", "sum": "float64", "last": "int64"}
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


def _coordinator(root: str, states: Mapping[str, Any]) -> CheckpointCoordinator:
    """The runtime's checkpointing, without a pipeline: a store and a null sink."""
    return CheckpointCoordinator(
        "bench",
        FileCheckpointStore(root, states),
        [_NullSink()],  # type: ignore[list-item]
        CheckpointConfig(interval=None),
    )


_states: dict[int, ValueState] = {}


def _value_state(keys: int) -> ValueState:
    """Built once per worker process: each loop checkpoints it into a new store."""
    if keys not in _states:
        state = ValueState("counts")
        for k in range(keys):
            state.put(k, k)
        _states[keys] = state
    return _states[keys]


def bench_barrier(loops: int, changed: float, keys: int = KEYS) -> float:
    state = _value_state(keys)
    total = 0.0
    for _ in range(loops):
        root = tempfile.mkdtemp(dir=_tmp)
        coordinator = _coordinator(root, {"counts": state})
        coordinator.recover()  # an empty store: the first checkpoint is full
        if changed:
            coordinator.snapshot(1, {}, {})
            coordinator.finish()
            for k in range(0, keys, int(1 / changed)):
                state.put(k, -k)
        started = time.perf_counter()
        coordinator.snapshot(coordinator.next_id, {}, {})  # barrier -> processing resumes
        total += time.perf_counter() - started
        coordinator.finish()
        coordinator.close()
        shutil.rmtree(root, ignore_errors=True)
    return total


# ---- recovery ---------------------------------------------------------------------


def _recovery_state(keys: int) -> ColumnarState:
    """Per-key aggregates: scattered int64 keys, a small count, a float sum, a timestamp."""
    state = ColumnarState("agg", RECOVERY_COLUMNS, capacity=keys)
    rng = np.random.default_rng(1)
    step = 1_000_000
    for i in range(0, keys, step):
        k = np.arange(i, min(i + step, keys), dtype=np.int64) * np.int64(-7046029254386353131)
        state.set(k, rng.integers(1, 1000, len(k)), "count")
        state.set(k, rng.random(len(k)) * 1e4, "sum")
        state.set(k, 1_764_000_000_000 + rng.integers(0, 86_400_000, len(k)), "last")
    return state


def build_recovery(root: Path, keys: int) -> dict[str, int]:
    """In the parent, once: a decided checkpoint in ``root/store``, a pickle in ``root``."""
    state = _recovery_state(keys)
    coordinator = _coordinator(str(root / "store"), {"agg": state})
    coordinator.recover()
    coordinator.snapshot(coordinator.next_id, {}, {})
    coordinator.finish()
    coordinator.close()
    keys_arr, cols = state.items()
    blob = lz4.frame.compress(pickle.dumps((keys_arr, cols), protocol=5))
    with open(root / "state.pickle.lz4", "wb") as f:
        f.write(blob)
        f.flush()
        os.fsync(f.fileno())
    return {
        "checkpoint_bytes": sum(len(b) for b in _read_files(_checkpoint_files(root))),
        "pickle_bytes": len(blob),
        "raw_bytes": int(keys_arr.nbytes + sum(c.nbytes for c in cols.values())),
        "entries": len(state),
    }


def _checkpoint_files(root: Path) -> list[Path]:
    return sorted(p for p in (root / "store").rglob("*") if p.is_file())


def _read_files(paths: list[Path]) -> list[bytearray]:
    out = []
    for p in paths:
        buf = bytearray(p.stat().st_size)
        with open(p, "rb", buffering=0) as f:
            f.readinto(buf)
        out.append(buf)
    return out


def _evict(paths: list[Path]) -> None:
    """Drop these files' (clean) pages from the page cache: the next read goes to disk."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def bench_recover(loops: int, root: str, how: str, cold: bool) -> float:
    """``how``: "restore" (the runtime), "raw" (read the same files) or "pickle"."""
    base = Path(root)
    files = [base / "state.pickle.lz4"] if how == "pickle" else _checkpoint_files(base)
    total = 0.0
    for _ in range(loops):
        if cold:
            _evict(files)
        target = ColumnarState("agg", RECOVERY_COLUMNS)
        started = time.perf_counter()
        if how == "restore":
            coordinator = _coordinator(str(base / "store"), {"agg": target})
            coordinator.recover()
        elif how == "raw":
            _read_files(files)
        else:
            with open(files[0], "rb") as f:
                pickle.loads(lz4.frame.decompress(f.read()))
        total += time.perf_counter() - started
        if how == "restore":
            assert len(target) > 0
            coordinator.close()
        del target
    return total


def _worker_args(cmd: list[str], args: Any) -> None:
    if args.full:
        cmd.append("--full")
    cmd.extend(["--recovery-dir", args.recovery_dir])


def main() -> None:
    runner = pyperf.Runner(values=3, processes=2, warmups=1, add_cmdline_args=_worker_args)
    runner.argparser.add_argument(
        "--full", action="store_true", help="add 10M keys of state and a ~1 GB checkpoint"
    )
    runner.argparser.add_argument("--recovery-dir", help=argparse.SUPPRESS)
    args = runner.parse_args()
    runner.metadata["description"] = "eoscore pipeline runtime"
    recovery_keys = RECOVERY_KEYS_FULL if args.full else RECOVERY_KEYS
    sizes: dict[str, int] = {}
    if not args.worker:  # the parent writes the checkpoint once; workers only restore it
        args.recovery_dir = tempfile.mkdtemp(prefix="eoscore-bench-recovery-", dir="/tmp")
        atexit.register(shutil.rmtree, args.recovery_dir, True)
        sizes = build_recovery(Path(args.recovery_dir), recovery_keys)
    benches: list[tuple[str, Any, tuple[Any, ...], int | None]] = [
        ("pipeline, checkpoints off", bench_pipeline, (None,), EVENTS),
        ("pipeline, checkpoints 1 s", bench_pipeline, (1.0,), EVENTS),
        ("loop, no checks", bench_align_checks, (False,), 1000),
        ("loop, alignment checks", bench_align_checks, (True,), 1000),
        ("barrier->resume 1M keys, full", bench_barrier, (0.0,), None),
        ("barrier->resume 1M keys, 1% changed", bench_barrier, (0.01,), None),
    ]
    if args.full:
        benches += [
            ("barrier->resume 10M keys, full", bench_barrier, (0.0, KEYS_FULL), None),
            ("barrier->resume 10M keys, 1% changed", bench_barrier, (0.01, KEYS_FULL), None),
        ]
    for how in ("restore", "raw", "pickle"):
        for cold in (False, True):
            name = f"recover {how}, {'cold' if cold else 'warm'}"
            benches.append((name, bench_recover, (args.recovery_dir, how, cold), None))
    mean: dict[str, float] = {}
    for name, func, fargs, inner in benches:
        r = runner.bench_time_func(name, func, *fargs, inner_loops=inner)
        if r is not None and not args.worker:
            mean[name] = r.mean()
    if args.worker or len(mean) != len(benches):
        return
    report(mean, sizes, args.full)


def report(mean: dict[str, float], sizes: dict[str, int], full: bool) -> None:
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
    full1 = mean["barrier->resume 1M keys, full"]
    for size in ("1M", "10M") if full else ("1M",):
        full_ = mean[f"barrier->resume {size} keys, full"]
        incr = mean[f"barrier->resume {size} keys, 1% changed"]
        print(f"barrier->resume, {size:>3} keys, full:     {full_ * 1e3:7.1f} ms", end="")
        print(f"  ({full_ / full1:.2f}x of 1M)" if size != "1M" else "")
        print(
            f"barrier->resume, {size:>3} keys, 1% dirty: {incr * 1e3:7.1f} ms"
            f"  ({incr / full_:.2f}x of full)"
        )
    ckpt = sizes["checkpoint_bytes"]
    print(
        f"recovery: {sizes['entries']:,} keys, checkpoint {ckpt / 1e9:.3f} GB on disk "
        f"(state {sizes['raw_bytes'] / 1e9:.3f} GB in memory, "
        f"pickle+lz4 {sizes['pickle_bytes'] / 1e9:.3f} GB)"
    )
    for cache in ("warm", "cold"):
        restore = mean[f"recover restore, {cache}"]
        raw = mean[f"recover raw, {cache}"]
        pick = mean[f"recover pickle, {cache}"]
        print(
            f"  {cache}: restore {restore:.3f} s = {ckpt / restore / 1e9:.2f} GB/s "
            f"({sizes['raw_bytes'] / restore / 1e9:.2f} GB/s of state); "
            f"raw read {raw:.3f} s = {ckpt / raw / 1e9:.2f} GB/s; "
            f"pickle+lz4 load {pick:.3f} s"
        )
        print(
            f"  {cache}: restore / raw read time {restore / raw:.2f}x, "
            f"speedup over pickle+lz4 load {pick / restore:.2f}x"
        )


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
