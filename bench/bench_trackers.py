"""Batch throughput of SequenceTracker and OffsetTracker against pure-Python equivalents.

Each native batch call is timed next to the dict/set-based loop a user would write
instead, on the same data in the same run; the summary prints records/s (from the median) and the
ratio.  A "record" is one array element: one batch header checked, one offset
handed out or completed.  Target: >= 20 M records/s for every batch call.

    .venv/bin/python bench/bench_trackers.py            # short default
    .venv/bin/python bench/bench_trackers.py --rigorous # pyperf's long mode
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import numpy as np
import pyperf

from eoscore.sequence import OffsetTracker, SequenceTracker

N = 200_000  # records per batch call
PRODUCERS = 1_000
SEQ_MOD = 2**31
TP = ("bench", 0)


# --- data ----------------------------------------------------------------------------

def producer_batches(n: int) -> tuple[np.ndarray, ...]:
    """n batch headers from PRODUCERS interleaved producers, 1% retries of the last batch."""
    rng = np.random.default_rng(7)
    pids = rng.integers(0, PRODUCERS, n, dtype=np.int64) * 1_000_003
    epochs = np.zeros(n, np.int64)
    firsts = np.empty(n, np.int64)
    lasts = np.empty(n, np.int64)
    nxt: dict[int, int] = {}
    prev: dict[int, tuple[int, int]] = {}
    retry = rng.random(n) < 0.01
    for i, pid in enumerate(pids.tolist()):
        if retry[i] and pid in prev:
            firsts[i], lasts[i] = prev[pid]
            continue
        first = nxt.get(pid, 0)
        last = (first + 4) % SEQ_MOD
        firsts[i], lasts[i] = first, last
        prev[pid] = (first, last)
        nxt[pid] = (last + 1) % SEQ_MOD
    return pids, epochs, firsts, lasts


def consumed_offsets(n: int) -> tuple[np.ndarray, np.ndarray]:
    """n offsets with a transaction marker every 500, completed shuffled in blocks of 256."""
    offsets = np.arange(n, dtype=np.int64)
    offsets += offsets // 499  # a one-offset gap (marker) after every 499 records
    rng = np.random.default_rng(11)
    order = np.arange(n).reshape(-1, 256) if n % 256 == 0 else np.arange(n)[None, :]
    order = rng.permuted(order, axis=1).ravel()
    return offsets, offsets[order]


# --- pure-Python equivalents ----------------------------------------------------------

def py_check_many(state: dict[int, list[Any]], pids: np.ndarray, epochs: np.ndarray,
                  firsts: np.ndarray, lasts: np.ndarray, now: float) -> list[int]:
    """Kafka's rules with a dict of [epoch, deque of 5 batches, last_seen]."""
    out = []
    append = out.append
    for pid, epoch, first, last in zip(pids.tolist(), epochs.tolist(), firsts.tolist(),
                                       lasts.tolist(), strict=True):
        p = state.get(pid)
        if p is None or (epoch > p[0] and first == 0):
            state[pid] = [epoch, deque([(first, last)], maxlen=5), now]
            append(0)
        elif epoch < p[0]:
            append(3)
        elif epoch > p[0]:
            append(2)
        elif (first, last) in p[1]:
            append(1)
        elif first != (p[1][-1][1] + 1) % SEQ_MOD:
            append(2)
        else:
            p[1].append((first, last))
            p[2] = now
            append(0)
    return out


class PyOffsets:
    """Handed-out offsets in a deque, completions in a set, watermark by popping."""

    def __init__(self) -> None:
        self.handed: deque[int] = deque()
        self.done: set[int] = set()
        self.low = -1

    def track_many(self, offsets: np.ndarray) -> None:
        self.handed.extend(offsets.tolist())

    def complete_many(self, offsets: np.ndarray) -> None:
        self.done.update(offsets.tolist())

    def committable(self) -> int:
        handed, done, low = self.handed, self.done, self.low
        popleft, discard = handed.popleft, done.discard
        while handed and handed[0] in done:
            low = popleft()
            discard(low)
        self.low = low
        return handed[0] if handed else low + 1


# --- timed functions ------------------------------------------------------------------

SEQ = producer_batches(N)
OFFSETS, COMPLETIONS = consumed_offsets(N)


def time_check_many(loops: int) -> float:
    total = 0.0
    for _ in range(loops):
        t = SequenceTracker(expire_after=None)
        t0 = time.perf_counter()
        t.check_many(*SEQ, now=0.0)
        total += time.perf_counter() - t0
    return total


def time_py_check_many(loops: int) -> float:
    total = 0.0
    for _ in range(loops):
        state: dict[int, list[Any]] = {}
        t0 = time.perf_counter()
        py_check_many(state, *SEQ, now=0.0)
        total += time.perf_counter() - t0
    return total


def time_track_many(loops: int) -> float:
    total = 0.0
    for _ in range(loops):
        t = OffsetTracker()
        t0 = time.perf_counter()
        t.track_many(TP, OFFSETS)
        total += time.perf_counter() - t0
    return total


def time_complete_many(loops: int) -> float:
    total = 0.0
    for _ in range(loops):
        t = OffsetTracker()
        t.track_many(TP, OFFSETS)
        t0 = time.perf_counter()
        t.complete_many(TP, COMPLETIONS)
        t.committable(TP)
        total += time.perf_counter() - t0
    return total


def time_py_track_many(loops: int) -> float:
    total = 0.0
    for _ in range(loops):
        t = PyOffsets()
        t0 = time.perf_counter()
        t.track_many(OFFSETS)
        total += time.perf_counter() - t0
    return total


def time_py_complete_many(loops: int) -> float:
    total = 0.0
    for _ in range(loops):
        t = PyOffsets()
        t.track_many(OFFSETS)
        t0 = time.perf_counter()
        t.complete_many(COMPLETIONS)
        t.committable()
        total += time.perf_counter() - t0
    return total


def check_equivalence() -> None:
    """The baselines must compute what the native calls compute, or the ratio is moot."""
    native = SequenceTracker(expire_after=None).check_many(*SEQ, now=0.0).tolist()
    assert native == py_check_many({}, *SEQ, now=0.0), "check_many baseline disagrees"
    t, p = OffsetTracker(), PyOffsets()
    t.track_many(TP, OFFSETS)
    p.track_many(OFFSETS)
    half = COMPLETIONS[: N // 2]
    t.complete_many(TP, half)
    p.complete_many(half)
    assert t.committable(TP) == p.committable(), "offset baseline disagrees (half)"
    t.complete_many(TP, COMPLETIONS)
    p.complete_many(COMPLETIONS)
    assert t.committable(TP) == p.committable() == OFFSETS[-1] + 1, "offset baseline (all)"


PAIRS = [
    ("SequenceTracker.check_many", time_check_many, time_py_check_many),
    ("OffsetTracker.track_many", time_track_many, time_py_track_many),
    ("OffsetTracker.complete_many+committable", time_complete_many, time_py_complete_many),
]


def main() -> None:
    runner = pyperf.Runner(processes=2, values=3, warmups=1, min_time=0.05)
    runner.metadata["records_per_call"] = str(N)
    runner.parse_args()
    if not runner.args.worker:
        check_equivalence()
    means: dict[str, float] = {}
    for name, native, python in PAIRS:
        for label, func in ((name, native), (f"{name} [pure Python]", python)):
            bench = runner.bench_time_func(label, func, inner_loops=1)
            if bench is not None and not runner.args.worker:
                means[label] = bench.median()  # robust to the shared machine
    if runner.args.worker or len(means) != 2 * len(PAIRS):
        return
    print()
    print(f"{'batch call':44} {'native rec/s':>14} {'Python rec/s':>14} {'ratio':>8}")
    for name, _, _ in PAIRS:
        fast, slow = N / means[name], N / means[f"{name} [pure Python]"]
        flag = "" if fast >= 20e6 else "  (< 20 M/s target)"
        print(f"{name:44} {fast / 1e6:11.1f} M {slow / 1e6:11.2f} M {fast / slow:7.1f}x{flag}")


if __name__ == "__main__":
    main()
