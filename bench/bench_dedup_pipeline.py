"""Dedup in a pipeline over N distinct string ids, 1 s checkpoints (pyperf).

    python bench/bench_dedup_pipeline.py --fast        # N = 1M, 3 values
    python bench/bench_dedup_pipeline.py               # N = 5M, 1 value
    python bench/bench_dedup_pipeline.py --n 20000000  # any N, 1 value
    python bench/bench_dedup_pipeline.py --full        # N = 50M (~3 GB of RAM, ~1 GB input)

``FileSource -> .dedup(lambda x: x) -> FileSink`` over ids ``payment-%012d``
(all distinct: the worst case, every key is new), checkpoints every 1 s,
against the same pipeline without the dedup in the same run (the baseline:
ratio = baseline time / dedup time). Reported per run besides the time:

- barrier stall: ``CheckpointStats.max_stall`` and the last stall (barrier to
  resumed processing: sink pre-commit, state freeze, background write started),
  and the freeze alone (``CompletedCheckpoint.stall_seconds``), max and median;
- bytes written per checkpoint (median, max) against the total the newest
  checkpoint references, and how many were full: an incremental checkpoint
  must follow the keys added since the previous one, not the state's size.

The per-checkpoint figures are collected by wrapping ``Checkpointer.trigger``
(the handles' results are read after the run); workers hand them to the
parent in a JSON file.
"""

from __future__ import annotations

import argparse
import atexit
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import pyperf

from eoscore.checkpoint import Checkpointer, PendingCheckpoint
from eoscore.pipeline import FileSource, Pipeline
from eoscore.runtime import CheckpointConfig
from eoscore.sinks import FileSink

FAST_N = 1_000_000
DEFAULT_N = 5_000_000
FULL_N = 50_000_000
LINES_PER_WRITE = 1_000_000


def write_input(directory: Path, n: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "ids.txt", "w") as f:
        for lo in range(0, n, LINES_PER_WRITE):
            hi = min(n, lo + LINES_PER_WRITE)
            f.write("".join(f"payment-{i:012d}\n" for i in range(lo, hi)))


class _Recorder:
    """Collects every checkpoint's handle (wraps Checkpointer.trigger)."""

    def __init__(self) -> None:
        self.pending: list[PendingCheckpoint] = []
        self._orig = Checkpointer.trigger

    def __enter__(self) -> _Recorder:
        orig, pending = self._orig, self.pending

        def trigger(cp: Checkpointer, *args: Any, **kwargs: Any) -> PendingCheckpoint:
            handle = orig(cp, *args, **kwargs)
            pending.append(handle)
            return handle

        Checkpointer.trigger = trigger  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        Checkpointer.trigger = self._orig  # type: ignore[method-assign]


def run_once(work: Path, n: int, dedup: bool) -> tuple[float, dict[str, Any]]:
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=work))
    try:
        p = Pipeline("bench-dedup")
        stream = p.source(FileSource(work / "in"))
        if dedup:
            stream = stream.dedup(lambda x: x, capacity=n)
        stream.sink(FileSink(run_dir / "out", name="out"))
        with _Recorder() as rec:
            started = time.perf_counter()
            result = p.run(run_dir / "state", CheckpointConfig(interval=1.0))
            elapsed = time.perf_counter() - started
        assert result.records_in == n, result.records_in
        done = []
        for h in rec.pending:
            try:
                done.append(h.result(timeout=0))
            except Exception:  # a discarded or failed checkpoint: counted, not measured
                continue
        stats = result.checkpoints
        written = [c.written_bytes for c in done]
        freeze = [c.stall_seconds for c in done]
        return elapsed, {
            "seconds": elapsed,
            "checkpoints": len(done),
            "failed": stats.failed,
            "full": sum(c.full for c in done),
            "max_stall": stats.max_stall,
            "last_stall": stats.last_stall,
            "freeze_max": max(freeze, default=0.0),
            "freeze_median": statistics.median(freeze) if freeze else 0.0,
            "written_median": statistics.median(written) if written else 0,
            "written_max": max(written, default=0),
            "written_incremental_median": statistics.median(
                [c.written_bytes for c in done if not c.full] or [0]
            ),
            "total_last": done[-1].total_bytes if done else 0,
        }
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def bench(loops: int, work: str, n: int, dedup: bool) -> float:
    total = 0.0
    for _ in range(loops):
        elapsed, info = run_once(Path(work), n, dedup)
        total += elapsed
        with open(Path(work) / "stats.jsonl", "a") as f:
            f.write(json.dumps({"dedup": dedup, **info}) + "\n")
    return total


def _worker_args(cmd: list[str], args: Any) -> None:
    cmd.extend(["--work", args.work, "--n", str(args.n)])


def main() -> None:
    fast = "--fast" in __import__("sys").argv
    runner = pyperf.Runner(
        values=3 if fast else 1, processes=1, warmups=0, loops=1, add_cmdline_args=_worker_args
    )
    runner.argparser.add_argument("--full", action="store_true", help=f"N = {FULL_N:,}")
    runner.argparser.add_argument("--n", type=int, default=0, help="distinct ids")
    runner.argparser.add_argument("--work", help=argparse.SUPPRESS)
    args = runner.parse_args()
    if not args.n:
        args.n = FULL_N if args.full else FAST_N if fast else DEFAULT_N
    runner.metadata["description"] = f"dedup in a pipeline, {args.n:,} distinct ids"
    if not args.worker:
        args.work = tempfile.mkdtemp(prefix="eoscore-bench-dedup-", dir="/tmp")
        atexit.register(shutil.rmtree, args.work, True)
        write_input(Path(args.work) / "in", args.n)
    names = {False: "pipeline, no dedup", True: "pipeline, dedup"}
    mean: dict[bool, float] = {}
    for dedup, name in names.items():
        r = runner.bench_time_func(name, bench, args.work, args.n, dedup)
        if r is not None and not args.worker:
            mean[dedup] = r.mean()
    if args.worker or len(mean) != 2:
        return
    report(Path(args.work) / "stats.jsonl", mean, args.n)


def report(path: Path, mean: dict[bool, float], n: int) -> None:
    runs = [json.loads(line) for line in path.read_text().splitlines()]
    on = [r for r in runs if r["dedup"]]
    off = [r for r in runs if not r["dedup"]]
    print()
    print(f"ids: {n:,} distinct, checkpoints every 1 s")
    print(f"records/s, no dedup:                 {n / mean[False]:,.0f}")
    print(f"records/s, dedup:                    {n / mean[True]:,.0f}")
    print(f"throughput ratio (dedup / no dedup): {mean[False] / mean[True]:.2f}x")
    for label, rs in (("dedup", on), ("no dedup", off)):
        worst = max(rs, key=lambda r: r["max_stall"])
        print(
            f"{label:>9}: checkpoints {worst['checkpoints']} ({worst['full']} full, "
            f"{worst['failed']} failed); stall max {worst['max_stall'] * 1e3:.1f} ms, "
            f"last {worst['last_stall'] * 1e3:.1f} ms; freeze max "
            f"{worst['freeze_max'] * 1e3:.2f} ms, median {worst['freeze_median'] * 1e3:.2f} ms"
        )
        print(
            f"{'':>9}  bytes/checkpoint: median {worst['written_median'] / 1e6:.1f} MB, "
            f"incremental median {worst['written_incremental_median'] / 1e6:.1f} MB, "
            f"max {worst['written_max'] / 1e6:.1f} MB; newest references "
            f"{worst['total_last'] / 1e6:.1f} MB"
        )


if __name__ == "__main__":
    main()
