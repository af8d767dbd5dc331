"""Native memory is released: RSS and tracemalloc stay flat over large loops."""

from __future__ import annotations

import gc
import os
import threading
import tracemalloc
from collections.abc import Callable

import numpy as np
import pytest

from eoscore.dedup import BloomFilter, Deduplicator, ExactKeySet

PAGE = os.sysconf("SC_PAGE_SIZE")
MB = 1 << 20


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def _growth(step: Callable[[], None], rounds: int) -> tuple[int, int]:
    """RSS and traced-Python-memory growth over `rounds` steps, after a warm-up."""
    for _ in range(3):
        step()
    gc.collect()
    tracemalloc.start()
    traced0 = tracemalloc.get_traced_memory()[0]
    rss0 = _rss()
    for _ in range(rounds):
        step()
    gc.collect()
    rss = _rss() - rss0
    traced = tracemalloc.get_traced_memory()[0] - traced0
    tracemalloc.stop()
    return rss, traced


INTS = np.arange(200_000, dtype=np.uint64)
STRS = [f"user-{i}" for i in range(20_000)]


def _bloom_cycle() -> None:
    bf = BloomFilter(200_000, 0.01)
    bf.add_many(INTS)
    bf.add_many(STRS)
    bf.contains_many(INTS)
    BloomFilter.restore(bf.snapshot())


def _keyset_cycle() -> None:
    s = ExactKeySet()
    s.add_many(INTS)  # grows from empty through many doublings
    s.add_many(STRS)
    for key in STRS[:1000]:
        s.discard(key)
    ExactKeySet.restore(s.snapshot())


TIMES = [np.full(20_000, float(i)) for i in range(10)]


def _dedup_cycle() -> None:
    for mode in ("exact", "approximate"):
        d = Deduplicator(50_000, ttl=3, generations=3, mode=mode)
        for i in range(8):
            d.check_and_add(INTS[i * 20_000 : (i + 1) * 20_000], event_times=TIMES[i])
        d.check_and_add(STRS, event_times=TIMES[9])
        Deduplicator.restore(d.snapshot()).stats()


def _error_cycle() -> None:
    s = ExactKeySet()
    for bad in ([1, 2, None], [b"x"] * 50 + [1.5], np.zeros(5)):
        try:
            s.add_many(bad)
        except (TypeError, ValueError):
            pass
    try:
        ExactKeySet.restore(b"EOSF" + bytes(100))
    except ValueError:
        pass


@pytest.mark.slow
@pytest.mark.parametrize(
    ("step", "rounds"),
    [(_bloom_cycle, 60), (_keyset_cycle, 40), (_dedup_cycle, 15), (_error_cycle, 2000)],
    ids=["bloom", "keyset", "dedup", "errors"],
)
def test_create_use_destroy_does_not_grow(step: Callable[[], None], rounds: int) -> None:
    rss, traced = _growth(step, rounds)
    # Each round allocates several MB natively: a leak would show as rounds * MB.
    assert rss < 8 * MB, f"RSS grew by {rss / MB:.1f} MB"
    assert traced < 256 * 1024, f"Python allocations grew by {traced} bytes"


@pytest.mark.slow
def test_long_lived_set_in_a_large_add_loop() -> None:
    s = ExactKeySet(400_000)
    keys = np.arange(300_000, dtype=np.uint64)

    def step() -> None:
        s.add_many(keys)  # all repeats after the first round: nothing should grow
        s.contains_many(STRS)
        s.add_many(STRS)

    rss, traced = _growth(step, 200)
    assert rss < 4 * MB and traced < 64 * 1024


def test_threads_share_one_set_safely() -> None:
    s = ExactKeySet()
    chunks = [np.arange(i * 50_000, (i + 1) * 50_000, dtype=np.uint64) for i in range(8)]
    news: list[int] = []

    def work(part: list[np.ndarray]) -> None:
        total = 0
        for chunk in part:
            total += int(s.add_many(chunk).sum())
            total += int(s.add_many(chunk[::-1].copy()).sum())  # all repeats
            for k in chunk[:50].tolist():
                s.add(k)
        news.append(total)

    threads = [threading.Thread(target=work, args=(chunks[i::2],)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(news) == 400_000 == len(s)
