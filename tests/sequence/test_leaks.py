"""Big loops over every native path (errors included) keep memory flat."""

from __future__ import annotations

import gc
import os
from collections.abc import Callable

import numpy as np
import pytest

from eoscore.errors import CorruptSnapshotError
from eoscore.sequence import OffsetTracker, SequenceTracker

PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def _assert_flat(step: Callable[[], None], rounds: int) -> None:
    for _ in range(rounds // 4):  # warm-up: allocator pools, numpy caches
        step()
    gc.collect()
    before = _rss()
    for _ in range(rounds):
        step()
    gc.collect()
    grown = _rss() - before
    assert grown < 4 * 2**20, f"RSS grew by {grown / 2**20:.1f} MiB over {rounds} rounds"


N = 2000
PIDS = np.arange(N, dtype=np.int64) * 7919
ZEROS = np.zeros(N, np.int64)


def test_sequence_tracker_does_not_leak() -> None:
    bad = np.zeros(N, np.float64)

    def step() -> None:
        t = SequenceTracker(expire_after=5.0)
        for i in range(3):
            t.check_many(PIDS, ZEROS, ZEROS + 2 * i, ZEROS + 2 * i + 1, now=float(i))
        t.check(1, 0, 0, 0, now=3.0)
        data = t.snapshot()
        t.restore(data)
        with pytest.raises(CorruptSnapshotError):
            t.restore(data[:-1])
        with pytest.raises(TypeError):
            t.check_many(PIDS, bad, ZEROS, ZEROS, now=0.0)
        with pytest.raises(ValueError):
            t.check_many(PIDS - 1, ZEROS, ZEROS, ZEROS, now=0.0)
        t.producer(7919)
        t.expire(now=100.0)

    _assert_flat(step, 400)


def test_offset_tracker_does_not_leak() -> None:
    offsets = np.arange(0, 30 * N, 3, dtype=np.int64)

    def step() -> None:
        t = OffsetTracker()
        for p in range(4):
            tp = ("topic", p)
            t.track_many(tp, offsets)
            t.complete_many(tp, offsets[1::2])
            meta = t.encode(tp, max_bytes=512)
            text = t.encode_str(tp)
            t.decode(tp, t.committable(tp) or 0, meta)
            t.decode(tp, t.committable(tp) or 0, text)
            with pytest.raises(CorruptSnapshotError):
                t.decode(tp, 0, meta[:-1])
            with pytest.raises(ValueError):
                t.track_many(tp, offsets[::-1])
            with pytest.raises(TypeError):
                t.complete_many(tp, None)
            t.remove(tp)

    _assert_flat(step, 200)
