"""Checkpointer + FileCheckpointStorage: exact restore, incremental chains,
retention, corruption reporting, cleanup and failure handling."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from eoscore.checkpoint import (
    Checkpointer,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    FileCheckpointStorage,
    SegmentWriter,
    restore_into,
)
from eoscore.checkpoint.manifest import ChunkRef
from eoscore.errors import EosError
from eoscore.state import ColumnarState, MapState, Ttl, ValueState
from tests.checkpoint.test_crash import assert_same

States = dict[str, Any]


def make_states() -> States:
    return {
        "v": ValueState("v"),
        "m": MapState("m"),
        "c": ColumnarState("c", {"n": "int64", "x": "float64"}),
    }


def mutate(states: States, rng: random.Random, size: int) -> None:
    v, m, c = states["v"], states["m"], states["c"]
    for _ in range(size):
        k = rng.randrange(500)
        r = rng.random()
        if r < 0.7:
            v.put(k, {"k": k, "r": r, "l": [k, str(k)]})
        else:
            v.delete(k)
        if r < 0.3:
            m.put(k % 37, k, r)
        elif r < 0.4:
            m.remove(k % 37, k)
    keys = np.array([rng.randrange(20_000) for _ in range(size)], np.int64)
    c.add(keys, 1, "n")
    c.add(keys, 0.25, "x")
    if rng.random() < 0.5:
        c.delete(keys[: size // 10])


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[FileCheckpointStorage]:
    with FileCheckpointStorage(tmp_path) as s:
        yield s


def restored(storage: FileCheckpointStorage, checkpoint_id: int) -> States:
    fresh = make_states()
    restore_into(storage, checkpoint_id, fresh)
    return fresh


def test_every_checkpoint_of_a_chain_restores_exactly(storage: FileCheckpointStorage) -> None:
    rng = random.Random(7)
    states = make_states()
    cp = Checkpointer(storage, states, retain=100, max_chain=4, chunk_size=64 << 10)
    snapshots: dict[int, States] = {}
    kinds = []
    for i in range(14):
        mutate(states, rng, 400 if i % 5 else 3000)
        done = cp.checkpoint({"offset": i}, full=(i == 9))
        kinds.append(done.full)
        snapshots[done.checkpoint_id] = restored(storage, done.checkpoint_id)
        assert_same(snapshots[done.checkpoint_id], states)
    assert kinds[0] and kinds[9] and not all(kinds)
    for cid, snap in snapshots.items():  # older checkpoints still restore to themselves
        assert_same(restored(storage, cid), snap)
        assert storage.read_manifest(cid).sources == {"offset": cid - 1}


def test_incremental_writes_only_changes_and_reuses_earlier_chunks(
    storage: FileCheckpointStorage,
) -> None:
    c = ColumnarState("c")
    c.add(np.arange(200_000), 1)
    cp = Checkpointer(storage, {"c": c})
    full = cp.checkpoint()
    c.add(np.arange(0, 200_000, 100), 5)  # 1% of the keys
    inc = cp.checkpoint()
    assert full.full and not inc.full
    assert inc.entries_written == 2000
    assert inc.written_bytes < 0.05 * full.written_bytes
    assert inc.total_bytes == full.written_bytes + inc.written_bytes
    segments = storage.read_manifest(inc.checkpoint_id).states["c"].segments
    assert [s.checkpoint for s in segments] == [full.checkpoint_id, inc.checkpoint_id]
    assert [s.role for s in segments] == ["base", "delta"]
    again = cp.checkpoint()  # nothing changed: nothing written, same chain
    assert again.written_bytes == 0
    forced = cp.checkpoint(full=True)
    assert forced.full and forced.written_bytes > 0.5 * full.written_bytes
    fresh = ColumnarState("c")
    restore_into(storage, forced.checkpoint_id, {"c": fresh})
    assert fresh.get(np.arange(0, 200_000, 100)).tolist() == [6] * 2000


def test_long_chain_or_large_delta_becomes_full(storage: FileCheckpointStorage) -> None:
    v = ValueState("v")
    cp = Checkpointer(storage, {"v": v}, max_chain=2, retain=10)
    for i in range(100):
        v.put(i, i)
    results = []
    for i in range(5):
        v.put(i, -i)
        results.append(cp.checkpoint().full)
    assert results == [True, False, False, True, False]
    for i in range(100):  # everything changed: a delta would be as large as a base
        v.put(i, "x")
    assert cp.checkpoint().full


def test_retention_deletes_unreferenced_files_only(
    storage: FileCheckpointStorage, tmp_path: Path
) -> None:
    v = ValueState("v")
    cp = Checkpointer(storage, {"v": v}, retain=2, max_chain=10)
    for i in range(1000):
        v.put(i, i)
    first = cp.checkpoint()
    for step in range(4):
        v.put(step, "changed")
        cp.checkpoint()
    assert storage.checkpoints() == [4, 5]
    # Checkpoint 5 is a delta chain back to 1: checkpoint 1's base must survive.
    assert (tmp_path / storage.read_manifest(5).states["v"].segments[0].file).exists()
    assert storage.read_manifest(5).states["v"].segments[0].checkpoint == first.checkpoint_id
    forced = cp.checkpoint(full=True)
    v.put("one", "more")
    cp.checkpoint()
    assert storage.checkpoints() == [forced.checkpoint_id, forced.checkpoint_id + 1]
    on_disk = sorted(p.parent.name for p in (tmp_path / "data").rglob("*.chunks"))
    assert on_disk == [f"{forced.checkpoint_id:010d}", f"{forced.checkpoint_id + 1:010d}"]


def test_damaged_chunk_names_checkpoint_file_and_chunk_and_changes_nothing(
    storage: FileCheckpointStorage, tmp_path: Path
) -> None:
    v = ValueState("v")
    for i in range(50_000):
        v.put(i, ["value", i])
    cp = Checkpointer(storage, {"v": v}, chunk_size=64 << 10)
    done = cp.checkpoint()
    segment = storage.read_manifest(done.checkpoint_id).states["v"].segments[0]
    assert len(segment.chunks) > 3
    path = tmp_path / segment.file
    original = path.read_bytes()
    data = bytearray(original)
    data[segment.chunks[2].offset + 40] ^= 0x10
    path.write_bytes(bytes(data))
    target = ValueState("v")
    target.put("keep", "me")
    with pytest.raises(CorruptCheckpointError) as info:
        restore_into(storage, done.checkpoint_id, {"v": target})
    msg = str(info.value)
    assert msg.startswith(f"checkpoint {done.checkpoint_id} file {segment.file} chunk 2: ")
    assert "checksum mismatch" in msg
    assert (info.value.checkpoint, info.value.chunk) == (done.checkpoint_id, 2)
    assert dict(target.items()) == {"keep": "me"}  # all or nothing
    path.write_bytes(original[: segment.chunks[4].offset + 10])
    with pytest.raises(CorruptCheckpointError, match=r"chunk 4: .*file truncated"):
        restore_into(storage, done.checkpoint_id, {"v": target})
    path.unlink()
    with pytest.raises(CorruptCheckpointError, match="missing"):
        restore_into(storage, done.checkpoint_id, {"v": target})


def test_damaged_manifest_is_detected(storage: FileCheckpointStorage, tmp_path: Path) -> None:
    cp = Checkpointer(storage, {"v": ValueState("v")})
    cp.checkpoint({"pos": 1})
    path = tmp_path / "manifests" / "0000000001.json"
    path.write_bytes(path.read_bytes().replace(b'"pos": 1', b'"pos": 2'))
    with pytest.raises(CorruptCheckpointError, match="checkpoint 1 file manifests/"):
        storage.read_manifest(1)
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(CorruptCheckpointError, match="not valid JSON"):
        storage.read_manifest(1)
    with pytest.raises(CheckpointNotFoundError):
        storage.read_manifest(99)


def test_leftovers_are_cleaned_and_the_writer_is_exclusive(tmp_path: Path) -> None:
    with FileCheckpointStorage(tmp_path) as storage:
        Checkpointer(storage, {"v": ValueState("v")}).checkpoint()
        with pytest.raises(EosError, match="another process"):
            FileCheckpointStorage(tmp_path)
        FileCheckpointStorage(tmp_path, readonly=True).checkpoints()  # readers are fine
    (tmp_path / "data" / "0000000002").mkdir()
    (tmp_path / "data" / "0000000002" / "000-v.chunks").write_bytes(b"half")
    (tmp_path / "manifests" / "0000000002.json.tmp").write_bytes(b"{")
    with FileCheckpointStorage(tmp_path) as storage:
        assert storage.checkpoints() == [1]
    assert not (tmp_path / "data" / "0000000002").exists()
    assert not (tmp_path / "manifests" / "0000000002.json.tmp").exists()
    assert (tmp_path / "data" / "0000000001").exists()


class _FailingStorage(FileCheckpointStorage):
    fail = False

    def segment_writer(self, checkpoint_id: int, index: int, name: str) -> SegmentWriter:
        inner = super().segment_writer(checkpoint_id, index, name)
        if not self.fail:
            return inner

        class Broken(SegmentWriter):
            file = inner.file

            def write(self, chunk: bytes) -> ChunkRef:
                raise OSError("disk full")

            def close(self) -> None:
                inner.close()

        return Broken()


def test_failed_checkpoint_leaves_no_trace_and_next_one_is_full(tmp_path: Path) -> None:
    with _FailingStorage(tmp_path) as storage:
        v = ValueState("v")
        cp = Checkpointer(storage, {"v": v})
        v.put(1, "a")
        cp.checkpoint()
        v.put(2, "b")
        storage.fail = True
        with pytest.raises(OSError, match="disk full"):
            cp.checkpoint()
        assert storage.checkpoints() == [1]
        assert not (tmp_path / "data" / "0000000002").exists()
        storage.fail = False
        v.put(3, "c")
        done = cp.checkpoint()
        assert done.full  # the failed one's changes are not lost
        fresh = ValueState("v")
        restore_into(storage, done.checkpoint_id, {"v": fresh})
        assert dict(fresh.items()) == {1: "a", 2: "b", 3: "c"}


@pytest.mark.parametrize("full", [True, False])
def test_processing_continues_while_the_snapshot_is_written(
    storage: FileCheckpointStorage, full: bool
) -> None:
    states, want = make_states(), make_states()
    for target in (states, want):  # want: the same changes, never touched after the barrier
        mutate(target, random.Random(1), 2000)
    cp = Checkpointer(storage, states)
    cp.checkpoint()
    for target in (states, want):
        mutate(target, random.Random(3), 60)
        target["m"].put(5, "inner", "before")
    pending = cp.trigger({"at": "barrier"}, full=full)
    # Keep processing while the checkpoint is written: none of this may leak in.
    mutate(states, random.Random(2), 2000)
    states["m"].put(5, "inner", "after")
    states["m"].remove(5, "inner")
    done = pending.result()
    assert done.full == full
    got = make_states()
    restore_into(storage, done.checkpoint_id, got)
    assert_same(got, want)
    assert got["m"].get(5, "inner") == "before"


def test_ttl_stamps_survive_a_restore(storage: FileCheckpointStorage) -> None:
    v = ValueState("v", ttl=Ttl(10, "event"))
    c = ColumnarState("c", ttl=Ttl(10, "event"))
    v.advance_time(100)
    c.advance_time(100)
    v.put("old", 1)
    c.add([1], 1)
    v.advance_time(105)
    c.advance_time(105)
    v.put("new", 2)
    c.add([2], 1)
    cp = Checkpointer(storage, {"v": v, "c": c})
    cp.checkpoint()
    v2 = ValueState("v", ttl=Ttl(10, "event"))
    c2 = ColumnarState("c", ttl=Ttl(10, "event"))
    Checkpointer(storage, {"v": v2, "c": c2}).restore()
    v2.advance_time(110)
    c2.advance_time(110)
    assert v2.get("old") is None and v2.get("new") == 2
    assert c2.get([1, 2]).tolist() == [0, 1]


def test_restore_checks_state_shape(storage: FileCheckpointStorage) -> None:
    cp = Checkpointer(storage, {"c": ColumnarState("c", {"a": "int64"}), "v": ValueState("v")})
    assert cp.restore() is None  # nothing yet
    cp.checkpoint()
    with pytest.raises(ValueError, match="columns"):
        restore_into(storage, 1, {"c": ColumnarState("c", {"a": "float64"})})
    with pytest.raises(ValueError, match="value state"):
        restore_into(storage, 1, {"v": MapState("v")})
    extra = ValueState("new")
    extra.put(1, 1)
    restore_into(storage, 1, {"new": extra})  # not in the checkpoint: starts empty
    assert len(extra) == 0


def test_sources_must_be_json(storage: FileCheckpointStorage) -> None:
    cp = Checkpointer(storage, {})
    with pytest.raises(TypeError):
        cp.trigger({"pos": object()})
    assert storage.checkpoints() == []


def test_columnar_writes_racing_the_checkpoint_thread(storage: FileCheckpointStorage) -> None:
    c = ColumnarState("c", {"n": "int64", "x": "float64"})
    keys = np.arange(400_000, dtype=np.int64)  # seven copy-on-write regions
    c.add(keys, keys, "n")
    c.delete(keys[::11])
    want_keys, want = c.items()
    cp = Checkpointer(storage, {"c": c}, chunk_size=64 << 10)
    pending = cp.trigger(full=True)
    rng = np.random.default_rng(5)
    while not pending.done():  # keep writing everywhere while it encodes
        batch = rng.integers(0, 450_000, 5000)
        c.add(batch, 1, "n")
        c.add(batch, 0.5, "x")
        c.delete(rng.integers(0, 400_000, 50))
    got = ColumnarState("c", {"n": "int64", "x": "float64"})
    restore_into(storage, pending.result().checkpoint_id, {"c": got})
    got_keys, cols = got.items()
    order = np.argsort(got_keys)
    np.testing.assert_array_equal(got_keys[order], want_keys)
    np.testing.assert_array_equal(cols["n"][order], want["n"])
    np.testing.assert_array_equal(cols["x"][order], want["x"])
