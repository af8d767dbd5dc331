"""ValueState and MapState against dict models; dirty tracking; TTL."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eoscore.state import MapState, Ttl, ValueState
from eoscore.state import ttl as ttl_module

keys = st.integers(0, 30) | st.sampled_from(["a", "b", ("t", 1), b"x", None, 2.5])
vals = st.none() | st.integers() | st.text(max_size=5) | st.lists(st.integers(), max_size=3)


@settings(max_examples=100)
@given(st.lists(st.tuples(st.booleans(), keys, vals), max_size=80))
def test_value_state_agrees_with_dict(steps: list[tuple[bool, Any, Any]]) -> None:
    state = ValueState("s")
    model: dict[Any, Any] = {}
    changed: set[Any] = set()
    for put, key, value in steps:
        if put:
            state.put(key, value)
            model[key] = value
            changed.add(key)
        else:
            assert state.delete(key) == (key in model)
            if key in model:
                changed.add(key)
            model.pop(key, None)
        assert len(state) == len(model)
    assert dict(state.items()) == model
    assert all(state.get(k) == v for k, v in model.items())
    assert state.dirty_count() == len(changed)
    frozen = state.freeze(incremental=True)
    assert frozen.entries == len(changed)
    assert state.dirty_count() == 0
    frozen.release()


def test_value_state_refuses_unsupported_values_at_put() -> None:
    state = ValueState("s")
    with pytest.raises(TypeError, match="state cannot hold"):
        state.put("k", object())
    with pytest.raises(TypeError):
        state.put(frozenset(), 1)
    assert len(state) == 0


@settings(max_examples=100)
@given(st.lists(st.tuples(st.sampled_from(["put", "rm", "del"]), keys, keys, vals), max_size=80))
def test_map_state_agrees_with_nested_dicts(steps: list[tuple[str, Any, Any, Any]]) -> None:
    state = MapState("m")
    model: dict[Any, dict[Any, Any]] = {}
    for op, key, ukey, value in steps:
        if op == "put":
            state.put(key, ukey, value)
            model.setdefault(key, {})[ukey] = value
        elif op == "rm":
            present = ukey in model.get(key, {})
            assert state.remove(key, ukey) == present
            if present:
                del model[key][ukey]
                if not model[key]:
                    del model[key]
        else:
            assert state.delete(key) == (key in model)
            model.pop(key, None)
    assert {k: state.entries(k) for k in state.keys()} == model
    for key, inner in model.items():
        for ukey, value in inner.items():
            assert state.get(key, ukey) == value and state.contains(key, ukey)


def test_map_state_snapshot_is_isolated_from_later_writes() -> None:
    state = MapState("m")
    state.put("k", 1, "one")
    frozen = state.freeze(incremental=False)
    state.put("k", 2, "two")  # after the barrier: must not leak into the snapshot
    state.remove("k", 1)
    from eoscore._native._statecodec import ChunkDecoder, ChunkEncoder

    chunks = list(frozen.chunks(ChunkEncoder()))
    assert ChunkDecoder().records(chunks[0]) == [("k", {1: "one"})]
    frozen.release()
    assert state.entries("k") == {2: "two"}


def test_event_time_ttl_expires_in_write_order() -> None:
    state = ValueState("s", ttl=Ttl(10, "event"))
    state.advance_time(100)
    state.put("a", 1)
    state.advance_time(105)
    state.put("b", 2)
    state.advance_time(109.9)
    assert state.get("a") == 1
    state.advance_time(110)
    assert state.get("a") is None and "a" not in state
    assert state.get("b") == 2
    state.advance_time(50)  # the clock never goes back
    assert state.get("b") == 2
    state.advance_time(1000)
    assert state.expire() == 1
    assert len(state) == 0


def test_ttl_cleanup_happens_during_normal_writes() -> None:
    state = ValueState("s", ttl=Ttl(1, "event"))
    for i in range(100):
        state.put(i, i)
    state.advance_time(5)
    for i in range(100, 130):
        state.put(i, i)  # each write removes up to two expired keys
    assert len(state) == 30 + (100 - 2 * 30)


def test_processing_time_ttl(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(ttl_module.time, "time", lambda: now[0])
    state = MapState("m", ttl=Ttl(30))
    state.put("u", "s1", 1)
    now[0] += 29
    assert state.get("u", "s1") == 1
    now[0] += 1
    assert state.get("u", "s1") is None
    assert state.dirty_count() == 1  # the expiry is a change the next checkpoint writes


def test_ttl_validation() -> None:
    with pytest.raises(ValueError):
        Ttl(0)
    with pytest.raises(ValueError):
        Ttl(1, "wall")  # type: ignore[arg-type]
