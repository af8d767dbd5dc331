"""The native key index against a dict model."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eoscore._native._aggregate import scatter_sum
from eoscore._native._keyindex import KeyIndex

ops = st.lists(
    st.tuples(st.sampled_from(["ins", "del", "get", "batch"]), st.integers(-40, 400)),
    max_size=300,
)


@settings(max_examples=150)
@given(ops)
def test_agrees_with_a_dict(steps: list[tuple[str, int]]) -> None:
    index = KeyIndex()
    model: dict[int, int] = {}
    for op, key in steps:
        if op == "ins":
            slot = index.get_or_insert(key)
            assert model.setdefault(key, slot) == slot
        elif op == "del":
            assert index.remove(key) == model.pop(key, -1)
        elif op == "get":
            assert index.get(key) == model.get(key, -1)
        else:
            keys = np.arange(key, key + 20, dtype=np.int64)
            slots = index.insert(keys)
            for k, s in zip(keys.tolist(), slots.tolist(), strict=True):
                assert model.setdefault(k, s) == s
        assert len(index) == len(model)
        # Slots are unique and dense: never above the high-water mark.
        assert len(set(model.values())) == len(model)
        assert all(0 <= s < index.slot_limit for s in model.values())
    keys = np.array([*sorted(model), 10000], dtype=np.int64)
    assert index.lookup(keys).tolist() == [model[k] for k in sorted(model)] + [-1]
    assert index.remove_many(keys).tolist() == [model[k] for k in sorted(model)] + [-1]
    assert len(index) == 0


def test_freed_slots_are_reused() -> None:
    index = KeyIndex()
    index.insert(np.arange(100, dtype=np.int64))
    freed = index.remove_many(np.array([5, 7], dtype=np.int64))
    again = index.insert(np.array([1000, 1001], dtype=np.int64))
    assert sorted(again.tolist()) == sorted(freed.tolist())
    assert index.slot_limit == 100


def test_growth_keeps_every_key() -> None:
    index = KeyIndex()
    keys = np.random.default_rng(3).integers(-(2**63), 2**63 - 1, 200_000, dtype=np.int64)
    keys = np.unique(keys)
    slots = index.insert(keys)
    assert len(index) == keys.shape[0]
    np.testing.assert_array_equal(index.lookup(keys), slots)


# Small tables (16 buckets for up to 11 keys) wrap around the end and make the
# in-place bulk build move its unread input aside; wide ranges spread keys out.
key_sets = st.one_of(
    st.lists(st.integers(-(2**63), 2**63 - 1), max_size=120, unique=True),
    st.lists(st.integers(-20, 60), max_size=60, unique=True),
)


@settings(max_examples=300)
@given(key_sets, st.integers(0, 300))
def test_build_agrees_with_a_dict(keys: list[int], capacity: int) -> None:
    index = KeyIndex(capacity)
    arr = np.array(keys, dtype=np.int64)
    assert index.build(arr) == 0
    assert len(index) == index.slot_limit == len(keys)
    np.testing.assert_array_equal(index.lookup(arr), np.arange(len(keys)))
    # The table is an ordinary one afterwards: removals, reuse, lookups of absent keys.
    gone = arr[::3].copy()
    np.testing.assert_array_equal(index.remove_many(gone), np.arange(len(keys))[::3])
    np.testing.assert_array_equal(index.lookup(gone), np.full(gone.shape[0], -1))
    kept = arr[[i for i in range(len(keys)) if i % 3]]
    np.testing.assert_array_equal(index.lookup(kept), [i for i in range(len(keys)) if i % 3])
    fresh = np.array([k for k in range(10**6, 10**6 + 20) if k not in keys], dtype=np.int64)
    slots = index.insert(fresh)
    freed = set(range(len(keys))[::3])
    assert len(set(slots.tolist())) == fresh.shape[0]
    assert set(slots.tolist()) <= freed | set(range(len(keys), len(keys) + 20))
    np.testing.assert_array_equal(index.lookup(fresh), slots)
    assert len(index) == kept.shape[0] + fresh.shape[0]


@settings(max_examples=200)
@given(key_sets.filter(bool), st.data())
def test_build_rejects_a_repeated_key_and_stays_empty(keys: list[int], data: st.DataObject) -> None:
    repeat = keys[data.draw(st.integers(0, len(keys) - 1))]
    where = data.draw(st.integers(0, len(keys)))
    arr = np.array([*keys[:where], repeat, *keys[where:]], dtype=np.int64)
    index = KeyIndex(data.draw(st.integers(0, 300)))
    with pytest.raises(ValueError, match=f"key {repeat} repeats"):
        index.build(arr)
    assert len(index) == 0 and index.slot_limit == 0
    np.testing.assert_array_equal(index.lookup(arr), np.full(arr.shape[0], -1))
    index.build(np.array(keys, dtype=np.int64))  # still usable
    assert len(index) == len(keys)


def test_build_at_scale_matches_lookup() -> None:
    keys = np.unique(np.random.default_rng(7).integers(-(2**63), 2**63 - 1, 300_000))
    keys = np.random.default_rng(8).permutation(keys)
    index = KeyIndex()
    index.build(keys)  # grows the table first: many regions
    np.testing.assert_array_equal(index.lookup(keys), np.arange(keys.shape[0]))


def test_build_appends_after_existing_slots() -> None:
    index = KeyIndex()
    index.insert(np.arange(10, dtype=np.int64))
    assert index.build(np.arange(100, 200, dtype=np.int64)) == 10  # into a non-empty index
    np.testing.assert_array_equal(index.lookup(np.arange(100, 200)), np.arange(10, 110))
    with pytest.raises(ValueError, match="key 5 repeats or is already indexed"):
        index.build(np.array([1000, 5], dtype=np.int64))
    # Emptied by removals: freed slots stay on the stack, build appends after them.
    empty = KeyIndex()
    empty.insert(np.arange(50, dtype=np.int64))
    empty.remove_many(np.arange(50, dtype=np.int64))
    assert empty.build(np.arange(7, 12, dtype=np.int64)) == 50
    np.testing.assert_array_equal(empty.lookup(np.arange(7, 12)), np.arange(50, 55))
    assert empty.get_or_insert(999) < 50  # a freed slot


def test_scatter_add_sums_duplicates_and_checks_bounds() -> None:
    target = np.zeros(4, np.int64)
    scatter_sum(target, np.array([1, 1, 3], np.int64), np.array([2, 5, 1], np.int64))
    assert target.tolist() == [0, 7, 0, 1]
    f = np.zeros(2)
    scatter_sum(f, np.array([0, 0], np.int64), np.array([0.5, 0.25]))
    assert f.tolist() == [0.75, 0.0]
    with pytest.raises(IndexError):
        scatter_sum(target, np.array([4], np.int64), np.array([1], np.int64))
    with pytest.raises(ValueError):
        scatter_sum(target, np.array([1], np.int64), np.array([1, 2], np.int64))


def test_none_for_typed_arguments() -> None:
    index = KeyIndex()
    for fn in (index.lookup, index.insert, index.remove_many, index.build):
        with pytest.raises(TypeError):
            fn(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        index.get(None)  # type: ignore[arg-type]
