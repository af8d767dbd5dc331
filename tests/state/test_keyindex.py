"""The native key index against a dict model."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eoscore._native._keyindex import KeyIndex, scatter_add_f64, scatter_add_i64

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


def test_scatter_add_sums_duplicates_and_checks_bounds() -> None:
    target = np.zeros(4, np.int64)
    scatter_add_i64(target, np.array([1, 1, 3], np.int64), np.array([2, 5, 1], np.int64))
    assert target.tolist() == [0, 7, 0, 1]
    f = np.zeros(2)
    scatter_add_f64(f, np.array([0, 0], np.int64), np.array([0.5, 0.25]))
    assert f.tolist() == [0.75, 0.0]
    with pytest.raises(IndexError):
        scatter_add_i64(target, np.array([4], np.int64), np.array([1], np.int64))
    with pytest.raises(ValueError):
        scatter_add_i64(target, np.array([1], np.int64), np.array([1, 2], np.int64))


def test_none_for_typed_arguments() -> None:
    index = KeyIndex()
    for fn in (index.lookup, index.insert, index.remove_many):
        with pytest.raises(TypeError):
            fn(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        index.get(None)  # type: ignore[arg-type]
