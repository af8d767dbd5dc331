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


def _restored(
    state: ColumnarState, segments: list[list[tuple[str, list[int]]]], expected: int
) -> ColumnarState:
    """Feed segments (the first is the base) of ("cols", keys) / ("del", keys) chunks."""
    r = state.restorer(state.describe(), expected)
    for i, chunks in enumerate(segments):
        r.begin_segment(i == 0)
        for kind, keys in chunks:
            k = np.array(keys, np.int64)
            if kind == "cols":
                r.columns(k, [k * 10, k / 2])
            else:
                r.deleted_column_keys(k)
    assert r.count() == expected
    r.install()
    return state


@pytest.mark.parametrize("expected_hint", [0, 10, 5000])
def test_restore_base_in_chunks_then_deltas(expected_hint: int) -> None:
    # The base arrives in chunks copied straight into the columns and is indexed
    # once at the end; a hint below the base's size grows the arrays meanwhile.
    base = [("cols", list(range(i, i + 700))) for i in range(0, 2100, 700)]
    delta = [("cols", [5, 2100, 2101]), ("del", [7, 8, 9999])]
    state = ColumnarState("c", {"n": "int64", "f": "float64"}, capacity=expected_hint)
    r = state.restorer(state.describe(), expected_hint)
    r.begin_segment(True)
    for _, keys in base:
        k = np.array(keys, np.int64)
        r.columns(k, [k * 10, k / 2])
    r.begin_segment(False)
    for kind, keys in delta:
        k = np.array(keys, np.int64)
        if kind == "cols":
            r.columns(k, [k * 10 + 1, k / 2])
        else:
            r.deleted_column_keys(k)
    assert r.count() == 2100
    r.install()
    got = state.get(np.array([0, 5, 7, 2099, 2100, 2101]), "n", default=-1).tolist()
    assert got == [0, 51, -1, 20990, 21001, 21011]
    assert len(state) == 2100
    state.add([1], 1, "n")  # a normal state afterwards
    assert state.get([1], "n").tolist() == [11]


@pytest.mark.parametrize(
    "chunks",
    [
        [[1, 2, 3, 2]],  # within a chunk
        [[1, 2, 3], [4, 5], [6, 1]],  # across chunks
        [list(range(100_000)), [99_999]],
    ],
)
def test_restore_rejects_a_base_with_a_repeated_key(chunks: list[list[int]]) -> None:
    from eoscore.checkpoint import CorruptCheckpointError

    state = ColumnarState("c", {"n": "int64", "f": "float64"})
    state.add([42], 1, "n")
    with pytest.raises(CorruptCheckpointError, match=r"base segment is invalid: key .* repeats"):
        _restored(state, [[("cols", c) for c in chunks]], sum(map(len, chunks)) - 1)
    assert state.get([42], "n").tolist() == [1] and len(state) == 1  # nothing installed
