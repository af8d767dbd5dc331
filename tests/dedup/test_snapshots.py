"""Snapshots: round trips, and every damaged or foreign input raises CorruptSnapshotError."""

from __future__ import annotations

import pickle
import struct
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eoscore import snapshot_format
from eoscore.dedup import BloomFilter, Deduplicator, ExactKeySet
from eoscore.errors import CorruptSnapshotError, EosError

KEYS: list[Any] = [0, 1, -1, 2**64 - 1, -(2**63), b"", "", b"a", "a", "\u00e9t\u00e9"]


def _bloom() -> BloomFilter:
    bf = BloomFilter(500, 0.01)
    bf.add_many(KEYS + list(range(100)))
    return bf


def _keyset() -> ExactKeySet:
    s = ExactKeySet()
    s.add_many(KEYS + list(range(100)))
    return s


def _dedup_exact() -> Deduplicator:
    d = Deduplicator(500, ttl=30, generations=4)
    d.check_and_add(KEYS, event_times=list(range(0, 50, 5)))
    return d


def _dedup_approx() -> Deduplicator:
    d = Deduplicator(500, fp_rate=0.01, ttl=30, generations=3, mode="approximate")
    d.check_and_add(KEYS, event_times=list(range(0, 50, 5)))
    return d


FACTORIES: dict[str, Callable[[], Any]] = {
    "bloom": _bloom,
    "keyset": _keyset,
    "dedup_exact": _dedup_exact,
    "dedup_approx": _dedup_approx,
}
SNAPSHOTS = {name: make().snapshot() for name, make in FACTORIES.items()}


def _restore(name: str, data: bytes) -> Any:
    cls = type(FACTORIES[name]())
    return cls.restore(data)


def _same(name: str, a: Any, b: Any) -> None:
    probe = [*KEYS, *range(200), "zz", b"zz", 2**63 + 5]
    if name.startswith("dedup"):
        assert a.stats() == b.stats()
        assert a.check_and_add(probe).tolist() == b.check_and_add(probe).tolist()
    else:
        assert a.contains_many(probe).tolist() == b.contains_many(probe).tolist()
        assert a.nbytes == b.nbytes


@pytest.mark.parametrize("name", FACTORIES)
def test_round_trip(name: str) -> None:
    original = FACTORIES[name]()
    restored = _restore(name, original.snapshot())
    assert type(restored) is type(original)
    _same(name, original, restored)
    # Pickle goes through the same bytes.
    _same(name, original, pickle.loads(pickle.dumps(original)))


def test_large_tables_are_compressed_and_round_trip() -> None:
    s = ExactKeySet()
    s.add_many(np.arange(200_000, dtype=np.uint64))  # dense keys: lz4 shrinks them
    data = s.snapshot()
    assert len(data) < 200_000 * 8
    assert struct.unpack_from("<H", data, 6)[0] & 1  # the lz4 flag
    restored = ExactKeySet.restore(data)
    assert len(restored) == 200_000
    assert restored.contains_many(np.arange(200_000, dtype=np.uint64)).all()
    empty_bloom = BloomFilter(1_000_000, 0.01)
    assert len(empty_bloom.snapshot()) < empty_bloom.nbytes // 10


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)  # fmt: skip
@given(st.sampled_from(sorted(FACTORIES)), st.data())
def test_bit_flips_are_detected(name: str, data: st.DataObject) -> None:
    snap = bytearray(SNAPSHOTS[name])
    flips = data.draw(st.lists(st.integers(0, len(snap) * 8 - 1), min_size=1, max_size=4))
    for bit in flips:
        snap[bit // 8] ^= 1 << (bit % 8)
    if bytes(snap) == SNAPSHOTS[name]:
        return  # the flips cancelled out
    with pytest.raises(CorruptSnapshotError):
        _restore(name, bytes(snap))


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(FACTORIES)), st.data())
def test_truncation_and_padding_are_detected(name: str, data: st.DataObject) -> None:
    snap = SNAPSHOTS[name]
    cut = data.draw(st.integers(0, len(snap) - 1))
    with pytest.raises(CorruptSnapshotError):
        _restore(name, snap[:cut])
    extra = data.draw(st.binary(min_size=1, max_size=16))
    with pytest.raises(CorruptSnapshotError):
        _restore(name, snap + extra)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(FACTORIES)), st.binary(max_size=300))
def test_foreign_bytes_are_rejected(name: str, junk: bytes) -> None:
    with pytest.raises(CorruptSnapshotError):
        _restore(name, junk)
    with pytest.raises(CorruptSnapshotError):
        _restore(name, snapshot_format.MAGIC + junk)


@pytest.mark.parametrize("name", FACTORIES)
@pytest.mark.parametrize("other", FACTORIES)
def test_another_objects_snapshot_is_rejected(name: str, other: str) -> None:
    if name.split("_")[0] == other.split("_")[0]:
        return  # the two deduplicator modes share a kind, and both restore
    with pytest.raises(CorruptSnapshotError, match="snapshot"):
        _restore(name, SNAPSHOTS[other])


def _payload(snap: bytes) -> tuple[bytes, int]:
    header = snap[: snapshot_format.HEADER_SIZE]
    kind, version = header[8:12], struct.unpack_from("<H", header, 12)[0]
    _, payload = snapshot_format.unpack(snap, kind, (version,))
    return kind, version, bytes(payload)  # type: ignore[return-value]


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)  # fmt: skip
@given(st.sampled_from(sorted(FACTORIES)), st.data())
def test_damaged_payloads_in_valid_frames_never_crash(name: str, data: st.DataObject) -> None:
    """Payload damage behind a valid checksum (a buggy or hostile writer): the restore
    must raise CorruptSnapshotError or yield a working object, never crash."""
    kind, version, payload = _payload(SNAPSHOTS[name])
    damaged = bytearray(payload)
    action = data.draw(st.sampled_from(["flip", "truncate", "extend", "field"]))
    if action == "flip":
        for _ in range(data.draw(st.integers(1, 8))):
            i = data.draw(st.integers(0, len(damaged) - 1))
            damaged[i] ^= 1 << data.draw(st.integers(0, 7))
    elif action == "truncate":
        del damaged[data.draw(st.integers(0, len(damaged) - 1)) :]
    elif action == "extend":
        damaged += data.draw(st.binary(min_size=1, max_size=64))
    else:  # overwrite an early (header) field with an extreme value
        i = data.draw(st.integers(0, min(len(damaged), 80) - 8))
        extremes = [b"\xff" * 8, bytes(8), struct.pack("<q", -1), struct.pack("<d", 1e300)]
        damaged[i : i + 8] = data.draw(st.sampled_from(extremes))
    frame = snapshot_format.pack(kind, version, bytes(damaged))
    try:
        obj = _restore(name, frame)
    except CorruptSnapshotError:
        return
    # Accepted: it must be a usable object.
    probe = [1, b"a", "a", -1]
    if name.startswith("dedup"):
        obj.check_and_add(probe)
        obj.stats()
    else:
        obj.contains_many(probe)
        obj.add_many(probe)
        assert obj.contains_many(probe).all()


def test_errors_name_the_problem() -> None:
    snap = SNAPSHOTS["keyset"]
    with pytest.raises(CorruptSnapshotError, match="checksum"):
        ExactKeySet.restore(snap[:-1] + bytes([snap[-1] ^ 1]))
    with pytest.raises(CorruptSnapshotError, match="truncated"):
        ExactKeySet.restore(snap[:-3])
    with pytest.raises(CorruptSnapshotError, match="magic"):
        ExactKeySet.restore(b"X" * 64)
    with pytest.raises(CorruptSnapshotError, match="BLOM"):
        ExactKeySet.restore(SNAPSHOTS["bloom"])
    err = CorruptSnapshotError("x")
    assert isinstance(err, EosError) and isinstance(err, ValueError)
    with pytest.raises(TypeError, match="bytes-like"):
        ExactKeySet.restore(None)  # type: ignore[arg-type]


class TestFrameFormat:
    def test_round_trip_and_versions(self) -> None:
        frame = snapshot_format.pack(b"TEST", 3, b"hello")
        assert snapshot_format.peek_kind(frame) == b"TEST"
        assert snapshot_format.unpack(frame, b"TEST", (2, 3)) == (3, b"hello")
        with pytest.raises(CorruptSnapshotError, match="version 3"):
            snapshot_format.unpack(frame, b"TEST", (1, 2))
        assert snapshot_format.peek_kind(b"nope") is None

    def test_compression_choice(self) -> None:
        dense = bytes(100_000)
        framed = snapshot_format.pack(b"TEST", 1, dense)
        assert len(framed) < 2_000
        assert bytes(snapshot_format.unpack(framed, b"TEST", (1,))[1]) == dense
        noise = np.random.default_rng(0).bytes(100_000)
        framed = snapshot_format.pack(b"TEST", 1, noise)
        assert len(framed) == snapshot_format.HEADER_SIZE + len(noise)  # lz4 did not pay
        forced = snapshot_format.pack(b"TEST", 1, b"abc", compress=True)
        assert bytes(snapshot_format.unpack(forced, b"TEST", (1,))[1]) == b"abc"

    def test_bad_arguments(self) -> None:
        with pytest.raises(ValueError, match="kind"):
            snapshot_format.pack(b"TOOLONG", 1, b"")
        with pytest.raises(ValueError, match="version"):
            snapshot_format.pack(b"TEST", 70_000, b"")

    def test_reader(self) -> None:
        reader = snapshot_format.PayloadReader(b"\x01\x00\x00\x00xy", "Thing")
        assert reader.unpack(struct.Struct("<I")) == (1,)
        with pytest.raises(CorruptSnapshotError, match="Thing snapshot: payload too short"):
            reader.take(3)
        with pytest.raises(CorruptSnapshotError, match="trailing"):
            reader.done()
        assert bytes(reader.rest()) == b"xy"
        reader.done()
