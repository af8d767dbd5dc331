"""``eoscore profile``: what checkpoints cost, at several intervals and state sizes.

For every (checkpoint interval, state size) pair a synthetic keyed
aggregation (FileSource -> parse -> key_by -> running sum per key) runs in
this process over the same input, then its last checkpoint is restored by a
fresh executor. Measured per point:

- throughput: input records per second over the whole run;
- checkpoint duration: the stall (barrier to resumed processing, the
  synchronous part: freeze + pre-commit) and trigger-to-complete, whose
  remainder is the asynchronous part (encode + write + decide);
- checkpoint size: stored bytes of the last completed checkpoint;
- recovery: restore of that checkpoint by a new executor (state + sinks),
  without replay.
"""

from __future__ import annotations

import importlib
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["ProfilePoint", "format_table", "plot", "run_profile"]


@dataclass
class ProfilePoint:
    interval: float
    keys: int
    records: int
    seconds: float
    throughput: float  # records/s
    checkpoints: int
    stall_max_ms: float
    stall_last_ms: float
    duration_median_ms: float
    duration_max_ms: float
    async_median_ms: float  # duration - stall: encode, write, decide
    checkpoint_bytes: int
    recovery_ms: float


def _parse(line: str) -> tuple[int, int]:
    k, _, v = line.partition(",")
    return int(k), int(v)


def _add(acc: int, record: tuple[int, int]) -> int:
    return acc + record[1]


def _pipeline(input_dir: Path) -> Any:
    from eoscore.pipeline import FileSource, Pipeline

    p = Pipeline("profile")
    (
        p.source(FileSource(input_dir))
        .map(_parse)
        .key_by(lambda r: r[0])
        .aggregate(lambda: 0, _add)
        .filter(lambda _: False)
    )
    return p


def _write_input(directory: Path, records: int, keys: int, seed: int = 1) -> None:
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    # Every key at least once (the state holds `keys` entries), then random keys.
    lines = [f"{i % keys},{rng.randrange(1000)}" if i < keys else
             f"{rng.randrange(keys)},{rng.randrange(1000)}" for i in range(records)]
    half = len(lines) // 2
    (directory / "part-0.csv").write_text("\n".join(lines[:half]) + "\n")
    (directory / "part-1.csv").write_text("\n".join(lines[half:]) + "\n")


def _point(root: Path, input_dir: Path, interval: float, keys: int) -> ProfilePoint:
    from eoscore.checkpoint import FileCheckpointStorage, list_checkpoints
    from eoscore.runtime import CheckpointConfig
    from eoscore.runtime.executor import Executor

    state_dir = root / f"state-{keys}-{interval:g}"
    config = CheckpointConfig(interval=interval)
    result = _pipeline(input_dir).run(state_dir, config)
    stats = result.checkpoints
    storage = FileCheckpointStorage(state_dir / "state", readonly=True)
    try:
        listed = [c for c in list_checkpoints(storage) if "stored_bytes" in c]
    finally:
        storage.close()
    size = int(listed[-1]["stored_bytes"]) if listed else 0
    executor = Executor(_pipeline(input_dir), state_dir, config)
    started = time.perf_counter()
    try:
        executor.coordinator.recover()
        recovery = time.perf_counter() - started
    finally:
        executor.coordinator.close()
    durations = [d * 1000 for d in stats.durations] or [0.0]
    median = statistics.median(durations)
    return ProfilePoint(
        interval=interval,
        keys=keys,
        records=result.records_in,
        seconds=result.seconds,
        throughput=result.records_in / max(result.seconds, 1e-9),
        checkpoints=stats.completed,
        stall_max_ms=stats.max_stall * 1000,
        stall_last_ms=stats.last_stall * 1000,
        duration_median_ms=median,
        duration_max_ms=max(durations),
        async_median_ms=max(0.0, median - stats.last_stall * 1000),
        checkpoint_bytes=size,
        recovery_ms=recovery * 1000,
    )


def run_profile(
    intervals: Sequence[float],
    key_counts: Sequence[int],
    records: int,
    *,
    progress: Callable[[str], None] | None = None,
) -> list[ProfilePoint]:
    """Every (interval, keys) pair; each state size has its own input of ``records``."""
    note = progress or (lambda message: None)
    root = Path(tempfile.mkdtemp(prefix="eoscore-profile-"))
    points: list[ProfilePoint] = []
    try:
        for keys in key_counts:
            input_dir = root / f"input-{keys}"
            _write_input(input_dir, max(records, keys), keys)
            for interval in intervals:
                note(f"interval {interval:g}s, {keys:,} keys")
                points.append(_point(root, input_dir, interval, keys))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return points


def to_dicts(points: Sequence[ProfilePoint]) -> list[dict[str, Any]]:
    return [asdict(p) for p in points]


def format_table(points: Sequence[ProfilePoint]) -> str:
    head = (
        f"{'interval':>8} {'keys':>9} {'records/s':>10} {'ckpts':>5} {'stall max':>10} "
        f"{'ckpt p50':>9} {'async p50':>9} {'size':>10} {'recovery':>9}"
    )
    lines = [head, "-" * len(head)]
    for p in points:
        lines.append(
            f"{p.interval:>7g}s {p.keys:>9,} {p.throughput:>10,.0f} {p.checkpoints:>5} "
            f"{p.stall_max_ms:>8.1f}ms {p.duration_median_ms:>7.1f}ms "
            f"{p.async_median_ms:>7.1f}ms {p.checkpoint_bytes / 1024:>7,.0f}KiB "
            f"{p.recovery_ms:>7.1f}ms"
        )
    return "\n".join(lines)


def plot(points: Sequence[ProfilePoint], path: Path) -> Path:
    """A 2x2 PNG: throughput, checkpoint time, size and recovery, one line per state size.

    Needs matplotlib (``pip install 'eoscore[plot]'``).
    """
    try:  # optional: imported by name so that type checks pass without it
        matplotlib: Any = importlib.import_module("matplotlib")
        matplotlib.use("Agg")
        plt: Any = importlib.import_module("matplotlib.pyplot")
    except ImportError as exc:
        raise RuntimeError(
            "the profile plot needs matplotlib: pip install 'eoscore[plot]'"
        ) from exc
    keys = sorted({p.keys for p in points})
    fig, axes = plt.subplots(2, 2, figsize=(11, 8), constrained_layout=True)
    fig.suptitle("eoscore checkpoint overhead (lower interval = more checkpoints)")
    panels = [
        (axes[0][0], "throughput (records/s)", lambda p: p.throughput),
        (axes[0][1], "checkpoint time (ms): solid = total p50, dashed = stall max", None),
        (axes[1][0], "checkpoint size (KiB, log)", lambda p: p.checkpoint_bytes / 1024),
        (axes[1][1], "recovery: restore of the last checkpoint (ms, log)", lambda p: p.recovery_ms),
    ]
    for ax, title, value in panels:
        for k in keys:
            row = sorted((p for p in points if p.keys == k), key=lambda p: p.interval)
            xs = [p.interval for p in row]
            if value is None:
                line = ax.plot(xs, [p.duration_median_ms for p in row], marker="o",
                               label=f"{k:,} keys")
                ax.plot(xs, [p.stall_max_ms for p in row], linestyle="--", marker="x",
                        color=line[0].get_color())
            else:
                ax.plot(xs, [value(p) for p in row], marker="o", label=f"{k:,} keys")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("checkpoint interval (s)")
        ax.set_xscale("log")
        if value is not None and ax is not axes[0][0]:
            ax.set_yscale("log")  # sizes and times span orders of magnitude
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
