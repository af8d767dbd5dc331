"""Deduplicator: first occurrences, TTL generations, bounded memory, approximate mode."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eoscore.dedup import Deduplicator

MODES = ["exact", "approximate"]


class ModelDedup:
    """Reference semantics, one record at a time (exact mode).

    The clock is the largest time seen; generation g spans
    [origin + g * span, origin + (g + 1) * span) with span = ttl / (generations - 1);
    a key lives in the generation that first accepted it and is forgotten when the
    current generation is `generations` past it.
    """

    def __init__(self, ttl: float, generations: int) -> None:
        self.span = ttl / (generations - 1)
        self.generations = generations
        self.origin: float | None = None
        self.clock = -math.inf
        self.gen = 0
        self.born: dict[Any, int] = {}

    def advance(self, t: float) -> None:
        if self.origin is None:
            self.origin = self.clock = t
        if t <= self.clock:
            return
        self.clock = t
        if t >= self.origin + (self.gen + 1) * self.span:
            self.gen = max(self.gen + 1, math.floor((t - self.origin) / self.span))
            self.born = {k: g for k, g in self.born.items() if self.gen - g < self.generations}

    def check(self, key: Any, t: float) -> bool:
        self.advance(t)
        if key in self.born:
            return False
        self.born[key] = self.gen
        return True


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.lists(
            st.tuples(
                st.one_of(st.integers(0, 40), st.sampled_from(["a", "b", b"a", -1])),
                st.integers(0, 60),
            ),
            max_size=30,
        ),
        max_size=12,
    ),
    st.integers(2, 6),
)
def test_exact_ttl_matches_the_one_record_model(
    batches: list[list[tuple[Any, int]]], generations: int
) -> None:
    ttl = 3 * (generations - 1)  # span 3: exact float arithmetic
    dedup = Deduplicator(100, ttl=ttl, generations=generations)
    model = ModelDedup(ttl, generations)
    for batch in batches:
        keys = [k for k, _ in batch]
        times = [t for _, t in batch]
        out = dedup.check_and_add(keys, event_times=times).tolist()
        assert out == [model.check(k, t) for k, t in batch]
    assert len(dedup) == len(model.born)


@pytest.mark.parametrize("mode", MODES)
def test_first_occurrences_without_ttl(mode: str) -> None:
    dedup = Deduplicator(10_000, mode=mode)
    assert dedup.check_and_add([1, 2, 1, "x", b"x", "x"]).tolist() == [
        True, True, False, True, True, False,
    ]  # fmt: skip
    assert dedup.check_and_add(np.array([2, 3], dtype=np.uint64)).tolist() == [False, True]
    stats = dedup.stats()
    assert stats["checked"] == 8 and stats["duplicates"] == 3
    assert stats["duplicate_rate"] == pytest.approx(3 / 8)
    assert stats["mode"] == mode


@pytest.mark.parametrize("mode", MODES)
def test_keys_are_remembered_for_ttl_and_forgotten_after(mode: str) -> None:
    ttl, generations = 60.0, 4  # generations of 20
    dedup = Deduplicator(1000, ttl=ttl, generations=generations, mode=mode)
    assert dedup.check_and_add(["k"], event_times=[100.0]).tolist() == [True]
    # Still a duplicate ttl later ...
    assert dedup.check_and_add(["k", "other"], event_times=[100.0 + ttl, 100.0 + ttl]).tolist() == [
        False, True,
    ]  # fmt: skip
    # ... and new again once ttl * generations / (generations - 1) has passed.
    late = 100.0 + ttl * generations / (generations - 1)
    assert dedup.check_and_add(["k"], event_times=[late]).tolist() == [True]


@pytest.mark.parametrize("mode", MODES)
def test_epoch_ttl_through_expire(mode: str) -> None:
    dedup = Deduplicator(1000, ttl=2, generations=3, mode=mode)  # generations of 1 epoch
    dedup.expire(0)
    assert dedup.check_and_add([1, 2]).all()
    assert dedup.expire(1) == 0
    assert not dedup.check_and_add([1]).any()
    assert dedup.expire(2) == 0
    assert dedup.expire(3) == 2  # epoch-0 keys are gone
    assert dedup.check_and_add([1, 2]).all()
    assert dedup.expire(2) == 0  # the clock never goes back


@pytest.mark.parametrize("mode", MODES)
def test_unique_stream_runs_in_bounded_memory(mode: str) -> None:
    dedup = Deduplicator(200_000, ttl=10.0, generations=4, mode=mode)
    batch = 20_000
    sizes = []
    for i in range(120):  # 2.4M unique keys, 20k per time unit, ttl window ~200k keys
        keys = np.arange(i * batch, (i + 1) * batch, dtype=np.uint64)
        out = dedup.check_and_add(keys, event_times=np.full(batch, float(i)))
        if mode == "exact":
            assert out.all()
        else:
            assert out.mean() > 0.99
        sizes.append(dedup.nbytes)
        assert len(dedup) <= 300_000
    assert max(sizes[60:]) <= max(sizes[:60])
    assert dedup.stats()["expired"] > 2_000_000


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 1000), min_size=1, max_size=300), st.integers(2, 5))
def test_batch_equals_one_at_a_time(times: list[int], generations: int) -> None:
    times.sort()
    keys = [t % 37 for t in times]
    ttl = 10 * (generations - 1)
    whole = Deduplicator(100, ttl=ttl, generations=generations)
    single = Deduplicator(100, ttl=ttl, generations=generations)
    got = whole.check_and_add(keys, event_times=times).tolist()
    pairs = zip(keys, times, strict=True)
    one = [bool(single.check_and_add([k], event_times=[t])[0]) for k, t in pairs]
    assert got == one


def test_approximate_false_duplicate_rate_at_capacity() -> None:
    capacity, rate = 200_000, 0.01
    dedup = Deduplicator(capacity, fp_rate=rate, mode="approximate")
    dedup.check_and_add(np.arange(capacity, dtype=np.uint64))
    # New keys right at capacity (a small batch: each one it accepts fills it further).
    fresh = np.arange(capacity, capacity + 10_000, dtype=np.uint64)
    dropped = 1.0 - dedup.check_and_add(fresh).mean()
    assert dropped <= 1.5 * rate


def test_approximate_with_ttl_stays_within_rate() -> None:
    capacity, rate, generations = 90_000, 0.01, 4
    dedup = Deduplicator(capacity, fp_rate=rate, ttl=3.0, generations=generations,
                         mode="approximate")  # fmt: skip
    per_gen = capacity // (generations - 1)
    dropped = 0.0
    for i in range(8):
        keys = np.arange(i * per_gen, (i + 1) * per_gen, dtype=np.uint64)
        dropped = 1.0 - dedup.check_and_add(keys, event_times=np.full(per_gen, float(i))).mean()
    assert dropped <= 1.5 * rate


def test_stats_shape() -> None:
    dedup = Deduplicator(1000, ttl=30, generations=4)
    dedup.check_and_add([1, 2, 3], event_times=[0, 10, 35])
    stats = dedup.stats()
    assert stats["keys"] == 3 and stats["clock"] == 35 and stats["ttl"] == 30
    gens = stats["generations"]
    assert [g["index"] for g in gens] == [3, 2, 1, 0]
    assert [g["keys"] for g in gens] == [1, 0, 1, 1]
    assert gens[0]["start"] == 30 and gens[0]["age"] == 5
    assert stats["nbytes"] == dedup.nbytes > 0


def test_bad_key_in_a_batch_adds_nothing() -> None:
    for mode in MODES:
        dedup = Deduplicator(1000, ttl=10, mode=mode)
        with pytest.raises(TypeError, match=r"keys\[2\]"):
            dedup.check_and_add([1, 2, None])
        with pytest.raises(TypeError, match=r"keys\[3\]"):
            dedup.check_and_add([5, 6, 7, 1.5], event_times=[0, 5, 20, 40])
        assert dedup.stats()["clock"] is None
        assert dedup.check_and_add([1, 2, 5, 6, 7]).all()


def test_event_times_are_checked() -> None:
    dedup = Deduplicator(1000, ttl=10)
    with pytest.raises(ValueError, match="event_times"):
        dedup.check_and_add([1, 2], event_times=[1.0])
    with pytest.raises(ValueError, match="event_times"):
        dedup.check_and_add([1, 2], event_times=[1.0, float("nan")])
    with pytest.raises(TypeError, match="event_times"):
        dedup.check_and_add([1], event_times=["soon"])
    with pytest.raises(TypeError, match="now"):
        dedup.expire(None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="now"):
        dedup.expire(float("inf"))
    dedup.expire(0)
    with pytest.raises(ValueError, match="too far"):
        dedup.expire(1e300)
    with pytest.raises(ValueError, match="too far"):
        dedup.check_and_add([1, 2], event_times=[1, 1e300])
    assert dedup.stats()["clock"] == 0 and len(dedup) == 0
