"""ColumnarState against a dict model; dirty tracking; TTL."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eoscore.state import ColumnarState, Ttl

batches = st.lists(
    st.tuples(
        st.sampled_from(["add", "set", "del"]),
        st.lists(st.integers(-50, 3000), min_size=1, max_size=60),
        st.integers(-5, 5),
    ),
    max_size=40,
)


@settings(max_examples=80)
@given(batches)
def test_agrees_with_dict(steps: list[tuple[str, list[int], int]]) -> None:
    state = ColumnarState("c", {"n": "int64", "f": "float64"})
    n: dict[int, int] = {}
    f: dict[int, float] = {}
    for op, keys, value in steps:
        k = np.array(keys, np.int64)
        if op == "add":
            state.add(k, value, "n")
            state.add(k, value / 2, "f")
            for key in keys:
                n[key] = n.get(key, 0) + value
                f[key] = f.get(key, 0.0) + value / 2
        elif op == "set":
            state.set(k, np.full(len(keys), value), "n")
            for key in keys:
                n[key] = value
                f.setdefault(key, 0.0)
        else:
            assert state.delete(k) == len(set(keys) & set(n))
            for key in keys:
                n.pop(key, None)
                f.pop(key, None)
        assert len(state) == len(n)
    got_keys, cols = state.items()
    assert dict(zip(got_keys.tolist(), cols["n"].tolist(), strict=True)) == n
    assert dict(zip(got_keys.tolist(), cols["f"].tolist(), strict=True)) == pytest.approx(f)
    probe = np.array([*sorted(n), 99999], np.int64)
    assert state.get(probe, "n", default=-1).tolist() == [n[x] for x in sorted(n)] + [-1]


def test_dirty_tracking_counts_rows_and_deletes() -> None:
    state = ColumnarState("c")
    state.add(np.arange(1000), 1)
    state.freeze(incremental=False).release()
    assert state.dirty_count() == 0
    state.add([3, 4, 4], 1)
    state.delete([10, 11, 5000])
    assert state.dirty_count() == 4
    assert state.dirty_bound() >= 4
    frozen = state.freeze(incremental=True)
    assert frozen.entries == 4 and frozen.incremental
    assert state.dirty_count() == 0


def test_deleted_then_readded_key_is_an_upsert_not_a_delete() -> None:
    state = ColumnarState("c")
    state.add([1, 2], 5)
    state.freeze(incremental=False).release()
    state.delete([1])
    state.add([1], 7)
    frozen = state.freeze(incremental=True)
    assert frozen.entries == 1
    assert state.get([1]).tolist() == [7]


def test_columns_are_validated() -> None:
    with pytest.raises(ValueError):
        ColumnarState("c", {"x": "int32"})
    with pytest.raises(ValueError):
        ColumnarState("c", {f"c{i}": "int64" for i in range(7)}, ttl=Ttl(1))
    state = ColumnarState("c", {"a": "int64", "b": "int64"})
    with pytest.raises(ValueError, match="several columns"):
        state.add([1], 1)
    with pytest.raises(KeyError):
        state.add([1], 1, "zz")
    assert len(state) == 0  # a bad column inserts nothing


def test_event_time_ttl() -> None:
    state = ColumnarState("c", ttl=Ttl(10, "event"))
    state.advance_time(0)
    state.add([1, 2], 1)
    state.advance_time(5)
    state.add([2], 1)
    state.advance_time(10)
    assert state.get([1, 2]).tolist() == [0, 2]  # 1 expired (invisible)
    assert 1 not in state and 2 in state
    assert state.expire() == 1
    assert len(state) == 1
    assert state.dirty_count() >= 1


def test_ttl_cleanup_during_writes_bounds_growth() -> None:
    state = ColumnarState("c", ttl=Ttl(1, "event"))
    for t in range(200):
        state.advance_time(float(t))
        state.add(np.arange(t * 100, t * 100 + 100), 1)
    assert len(state) < 1000  # not 20,000: old keys were cleaned while writing


def _decode_all(chunks: list[bytes]) -> dict[int, tuple[int, float]]:
    from eoscore._native._statecodec import ChunkDecoder

    out: dict[int, tuple[int, float]] = {}
    for chunk in chunks:
        keys, (n, f) = ChunkDecoder().columns(chunk)
        out.update(zip(keys.tolist(), zip(n.tolist(), f.tolist(), strict=True), strict=True))
    return out


def test_full_snapshot_is_copy_on_write_across_regions() -> None:
    from eoscore._native._statecodec import ChunkEncoder

    state = ColumnarState("c", {"n": "int64", "f": "float64"})
    keys = np.arange(300_000, dtype=np.int64)  # five 64 Ki-row regions
    state.add(keys, keys, "n")
    state.add(keys, 0.5, "f")
    state.delete(np.arange(1000, 2000))
    k, cols = state.items()
    want = dict(
        zip(k.tolist(), zip(cols["n"].tolist(), cols["f"].tolist(), strict=True), strict=True)
    )

    frozen = state.freeze(incremental=False)
    assert frozen.entries == len(want)
    gen = frozen.chunks(ChunkEncoder())
    first = [next(gen)]  # the checkpoint thread has started on region 0
    # Processing goes on: updates in every region, deletes, slot reuse, growth.
    state.add(np.arange(0, 300_000, 7), 1_000_000, "n")
    state.delete(np.arange(200_000, 200_500))
    state.add(np.arange(10**9, 10**9 + 3000), 5, "n")  # reuses freed rows, then grows
    state.set(np.arange(150_000, 150_010), np.zeros(10), "f")
    got = _decode_all(first + list(gen))
    frozen.release()
    assert got == want
    assert state.get([7], "n").tolist() == [1_000_007]
    state.freeze(incremental=False).release()  # a new snapshot may start after release
