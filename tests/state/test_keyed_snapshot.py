"""Copy-on-write snapshots of keyed state: a frozen view shows the barrier, nothing later.

``freeze`` copies nothing; the view reads the live dicts and the pre-images the
state saves before changing a key. These tests change the state after the
freeze and before (or while) the view is read, and check that the view holds
exactly the state at its barrier, and that the next incremental view carries
the later changes (a restored chain equals the state at every barrier).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eoscore._native._statecodec import (
    KIND_KEYS,
    KIND_RECORDS,
    MIN_CHUNK_SIZE,
    ChunkDecoder,
    ChunkEncoder,
)
from eoscore.state import MapState, Ttl, ValueState
from eoscore.state import keyed as keyed_module

State = ValueState | MapState


@pytest.fixture(autouse=True)
def small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Read two keys per step, so changes land between the view's reads."""
    monkeypatch.setattr(keyed_module, "_READ_BATCH", 2)


def image(state: State) -> dict[Any, Any]:
    """What a snapshot taken now must hold: key -> value, or (stamp, value) with TTL."""
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in state._data.items()}
    if state._expiry is None:
        return data
    return {k: (state._expiry.stamps[k], v) for k, v in data.items()}


def decode(view: Any) -> tuple[dict[Any, Any], list[Any]]:
    """Records and deleted keys of a frozen view, through the chunk codec."""
    decoder = ChunkDecoder()
    records: dict[Any, Any] = {}
    deletes: list[Any] = []
    for chunk in view.chunks(ChunkEncoder(MIN_CHUNK_SIZE)):
        kind = decoder.header(chunk)[0]
        if kind == KIND_RECORDS:
            items = decoder.records(chunk)
            assert not records.keys() & dict(items).keys()  # each key once
            records.update(items)
        else:
            assert kind == KIND_KEYS
            deletes += decoder.keys(chunk)
    return records, deletes


def apply(chain: dict[Any, Any], view: Any, records: dict[Any, Any], deletes: list[Any]) -> None:
    assert view.entries == len(records) + len(deletes)
    assert not records.keys() & set(deletes)
    if not view.incremental:
        assert not deletes
        chain.clear()
    chain.update(records)
    for key in deletes:
        chain.pop(key, None)


def test_value_writes_after_freeze_stay_out_and_go_into_the_next_delta() -> None:
    state = ValueState("s")
    for k in "abcde":
        state.put(k, k)
    chain: dict[Any, Any] = {}
    base = state.freeze(incremental=False)
    state.put("a", "late")  # after the barrier, before the view is read
    state.delete("b")
    state.put("z", "new")
    assert decode(base) == ({k: k for k in "abcde"}, [])
    apply(chain, base, *decode(base))
    base.release()

    state.put("c", 1)
    state.delete("d")
    view = state.freeze(incremental=True)
    assert view.entries == 5  # a, b, z (written before) and c, d
    state.put("c", 2)
    state.delete("c")
    state.put("d", "back")
    state.put("e", "not dirty at the barrier")
    records, deletes = decode(view)
    assert records == {"a": "late", "z": "new", "c": 1}
    assert sorted(deletes) == ["b", "d"]
    apply(chain, view, records, deletes)
    view.release()

    view = state.freeze(incremental=True)
    records, deletes = decode(view)
    assert records == {"d": "back", "e": "not dirty at the barrier"}
    assert deletes == ["c"]
    apply(chain, view, records, deletes)
    view.release()
    assert chain == image(state)


def test_full_view_keeps_keys_deleted_before_it_is_read() -> None:
    state = ValueState("s")
    for k in range(10):
        state.put(k, k)
    view = state.freeze(incremental=False)
    for k in range(0, 10, 2):
        state.delete(k)  # gone before the view lists the keys
    state.put(3, "changed")
    state.put(100, "new")
    records = view._records([])
    first = next(records)  # the view has listed the keys
    state.delete(5)
    state.put(7, "later")
    state.put(101, "newer")
    state.put(0, "back")  # deleted and re-added after the listing
    rest = dict([first, *records])
    assert rest == {k: k for k in range(10)}
    view.release()
    assert not state._cow and state._frozen_views == 0


def test_ttl_expiry_after_freeze_is_not_in_the_snapshot() -> None:
    state = ValueState("s", ttl=Ttl(10, "event"))
    state.advance_time(100)
    state.put("a", 1)
    state.advance_time(105)
    state.put("b", 2)
    view = state.freeze(incremental=True)
    state.advance_time(112)
    assert state.get("a") is None  # expired and deleted after the barrier
    state.put("b", 3)  # new value, new stamp
    assert decode(view) == ({"a": (100.0, 1), "b": (105.0, 2)}, [])
    view.release()
    view = state.freeze(incremental=True)
    assert decode(view) == ({"b": (112.0, 3)}, ["a"])
    view.release()


def test_ttl_cleanup_during_writes_after_a_full_freeze() -> None:
    state = ValueState("s", ttl=Ttl(1, "event"))
    for i in range(20):
        state.put(i, i)
    before = image(state)
    view = state.freeze(incremental=False)
    state.advance_time(5)
    for i in range(100, 110):
        state.put(i, i)  # each write deletes up to two expired keys
    assert len(state) == 10
    assert decode(view) == (before, [])
    view.release()


def test_map_edits_after_an_incremental_freeze() -> None:
    state = MapState("m")
    state.put("k", 1, "one")
    state.put("k", 2, "two")
    state.put("j", 1, "x")
    state.freeze(incremental=False).release()
    state.put("k", 3, "three")
    state.put("j", 2, "y")
    view = state.freeze(incremental=True)
    state.remove("k", 1)
    state.put("k", 4, "four")
    state.remove("j", 1)
    state.remove("j", 2)  # empties the map: the key is deleted
    records, deletes = decode(view)
    assert records == {"k": {1: "one", 2: "two", 3: "three"}, "j": {1: "x", 2: "y"}}
    assert deletes == []
    view.release()
    view = state.freeze(incremental=True)
    assert decode(view) == ({"k": {2: "two", 3: "three", 4: "four"}}, ["j"])
    view.release()


def test_views_released_out_of_order_and_install_detaches() -> None:
    state = ValueState("s")
    state.put("a", 1)
    first = state.freeze(incremental=False)
    state.put("a", 2)
    second = state.freeze(incremental=True)
    state.put("a", 3)
    assert len(state._cow) == 1 and state._frozen_views == 2  # only the delta copies on write
    assert decode(second) == ({"a": 2}, [])
    second.release()
    second.release()  # idempotent
    assert decode(first) == ({"a": 1}, [])
    first.release()
    assert not state._cow and state._frozen_views == 0
    view = state.freeze(incremental=True)
    state._install({"x": 1}, {})  # a restore: the open view keeps the old dicts
    assert not state._cow and state._frozen_views == 1
    state.put("a", 4)
    assert decode(view) == ({"a": 3}, [])
    view.release()
    assert state._frozen_views == 0


keys = st.integers(0, 12) | st.sampled_from(["a", ("t", 1)])
vals = st.integers(-3, 3) | st.text(max_size=2)
ops = st.one_of(
    st.tuples(st.just("put"), keys, vals),
    st.tuples(st.just("put"), keys, vals),
    st.tuples(st.just("del"), keys, st.none()),
    st.tuples(st.just("get"), keys, st.none()),
    st.tuples(st.just("time"), st.integers(0, 3), st.none()),
    st.tuples(st.just("expire"), st.none(), st.none()),
    st.tuples(st.just("freeze"), st.booleans(), st.none()),
    st.tuples(st.just("pull"), st.integers(1, 4), st.none()),
    st.tuples(st.just("finish"), st.none(), st.none()),
)


class _Open:
    """A frozen view being read lazily, with what it must hold."""

    def __init__(self, state: State, incremental: bool) -> None:
        self.expected = image(state)
        self.dirty = set(state._dirty)
        self.view = state.freeze(incremental)
        self.deletes: list[Any] = []
        self.records: Iterator[tuple[Any, Any]] = self.view._records(self.deletes)
        self.read: list[tuple[Any, Any]] = []


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["value", "value-ttl", "map", "map-ttl"]),
    st.lists(ops, max_size=120),
)
def test_random_interleavings_agree_with_barrier_images(kind: str, steps: list[Any]) -> None:
    ttl = Ttl(4, "event") if kind.endswith("ttl") else None
    state: State = ValueState("s", ttl=ttl) if kind.startswith("value") else MapState("m", ttl=ttl)
    chain: dict[Any, Any] = {}  # a restore of every view finished so far
    open_: list[_Open] = []

    def finish() -> None:
        o = open_.pop(0)
        o.read += o.records
        records = dict(o.read)
        assert len(records) == len(o.read)
        if o.view.incremental:
            assert records == {k: o.expected[k] for k in o.dirty if k in o.expected}
            assert set(o.deletes) == {k for k in o.dirty if k not in o.expected}
        else:
            assert records == o.expected
        apply(chain, o.view, records, o.deletes)
        assert chain == o.expected
        o.view.release()

    for op, a, b in steps:
        if op == "put":
            if isinstance(state, ValueState):
                state.put(a, b)
            else:
                state.put(a, b, a)
        elif op == "del":
            if isinstance(state, MapState) and b is None and isinstance(a, int) and a % 2:
                state.remove(a, a)  # in a MapState, odd keys lose a user key instead
            else:
                state.delete(a)
        elif op == "get":
            state.get(a) if isinstance(state, ValueState) else state.get(a, a)
        elif op == "time":
            state.advance_time(state._expiry.clock.now() + a if state._expiry else 0)
        elif op == "expire":
            state.expire()
        elif op == "freeze":
            if len(open_) < 3:  # the state starts empty: the chain may start with a delta
                open_.append(_Open(state, a))
        elif op == "pull" and open_:
            o = open_[0]
            for _ in range(a):
                item = next(o.records, None)
                if item is not None:
                    o.read.append(item)
        elif op == "finish" and open_:
            finish()
    while open_:
        finish()
    open_.append(_Open(state, True))
    finish()
    assert chain == image(state)
    assert not state._cow and state._frozen_views == 0


def read_into(view: Any, out: list[tuple[dict[Any, Any], list[Any]]]) -> None:
    out.append(decode(view))


@pytest.mark.parametrize("incremental", [False, True])
def test_view_read_on_another_thread_while_writing(incremental: bool) -> None:
    """The real schedule: the checkpoint thread encodes while processing writes."""
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        state = ValueState("s", ttl=Ttl(15, "event"))
        for k in range(20_000):
            state.put(k, k)
        state.freeze(incremental=False).release()
        for round_ in range(1, 4):
            for k in range(0, 20_000, 3):
                state.put(k, (round_, k))
            for k in range(1, 20_000, 7):
                state.delete(k)
            expected, dirty = image(state), set(state._dirty)
            view = state.freeze(incremental)
            out: list[tuple[dict[Any, Any], list[Any]]] = []
            reader = threading.Thread(target=read_into, args=(view, out))
            reader.start()
            k = 0
            while reader.is_alive():
                state.advance_time(round_ * 10 + k / 1e5)
                state.put(k % 25_000, -k)
                state.delete((k * 7) % 25_000)
                k += 1
            reader.join()
            view.release()
            records, deletes = out[0]
            if incremental:
                assert records == {k: expected[k] for k in dirty if k in expected}
                assert set(deletes) == {k for k in dirty if k not in expected}
            else:
                assert records == expected and deletes == []
    finally:
        sys.setswitchinterval(switch)
