"""OffsetTracker: watermark over gaps, the model, bounded commit metadata, bad input."""

from __future__ import annotations

import base64

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eoscore.errors import CorruptSnapshotError
from eoscore.sequence import MAX_SPAN, MIN_ENCODE_BYTES, OffsetTracker
from tests.sequence.models import PartitionModel

TP = ("orders", 3)


def _done_after_decode(meta: bytes | str, committed: int, upto: int) -> set[int]:
    """The offsets a restarted consumer would skip, read back through track_many."""
    t = OffsetTracker()
    assert t.decode(TP, committed, meta) == committed
    offsets = np.arange(committed, upto)
    process = t.track_many(TP, offsets)
    return set(offsets[~process].tolist())


def _varint(v: int) -> bytes:
    out = bytearray()
    while v >= 0x80:
        out.append(v & 0x7F | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def _reference_sizes(committed: int, done: set[int], end: int) -> tuple[int, int]:
    """Sizes of the two encodings of the whole done set (spec of the format)."""
    if not done:
        return 1 + len(_varint(committed)) + 1 + 4, 1 + len(_varint(committed)) + 1 + 4
    span = max(done) + 1 - committed
    head = 1 + len(_varint(committed)) + len(_varint(span)) + 4
    bits = head + (span + 7) // 8
    runs = head
    pos = committed
    while pos < committed + span:
        p = pos
        while p not in done:
            p += 1
        d = p
        while d in done:
            d += 1
        runs += len(_varint(p - pos)) + len(_varint(d - p))
        pos = d
    return bits, runs


# --- the watermark -----------------------------------------------------------------

def test_transaction_marker_does_not_stall_the_watermark() -> None:
    t = OffsetTracker()
    assert t.track_many(TP, [10, 11, 13]).tolist() == [True, True, True]  # 12: a marker
    assert t.committable(TP) == 10
    t.complete_many(TP, [13, 11])
    assert t.committable(TP) == 10
    assert t.complete(TP, 10) is True
    assert t.committable(TP) == 14
    assert t.pending(TP) == 0


def test_committable_is_one_past_the_contiguous_completed_prefix() -> None:
    t = OffsetTracker()
    t.track_many(TP, np.arange(100, 110))
    t.complete_many(TP, [100, 101, 103, 104])
    assert t.committable(TP) == 102
    assert t.complete(TP, 102)
    assert t.committable(TP) == 105
    assert not t.complete(TP, 102)  # completing twice is a no-op
    assert t.complete_many(TP, [103, 105, 105]) == 1
    assert t.committable(TP) == 106


def test_partitions_are_independent() -> None:
    t = OffsetTracker()
    a, b = ("t", 0), ("t", 1)
    t.track_many(a, [0, 1])
    t.track_many(b, [500])
    t.complete(b, 500)
    assert (t.committable(a), t.committable(b)) == (0, 501)
    assert t.committable(("t", 2)) is None and ("t", 2) not in t
    assert t.partitions() == [a, b] and len(t) == 2
    t.remove(a)
    assert t.partitions() == [b]
    t.remove(a)  # unknown: fine


def test_huge_offsets_and_gaps_with_nothing_pending() -> None:
    t = OffsetTracker()
    t.track(TP, 5)
    t.complete(TP, 5)
    t.track(TP, 2**61)  # a compaction gap of ~2**61 offsets costs nothing when all done
    assert t.committable(TP) == 2**61
    t.complete(TP, 2**61)
    assert t.committable(TP) == 2**61 + 1


def test_restart_skips_done_records_and_treats_vanished_ones_as_gone() -> None:
    t = OffsetTracker()
    t.track_many(TP, [10, 11, 13, 14, 15, 16])  # 12 is a marker
    t.complete_many(TP, [11, 13, 15])
    meta = t.encode_str(TP)
    committed = t.committable(TP)
    assert committed == 10
    # A restarted consumer seeks to 10 and sees 10, 11, 13, 14, ... again.
    r = OffsetTracker()
    assert r.decode(TP, committed, meta) == 10
    assert r.track_many(TP, [10, 11, 13]).tolist() == [True, False, False]
    # 14 was deleted by compaction meanwhile: the consumer goes on with 15, 16.
    assert r.track_many(TP, [15, 16]).tolist() == [False, True]
    r.complete_many(TP, [10, 16])
    assert r.committable(TP) == 17


# --- the model ---------------------------------------------------------------------

@st.composite
def offset_ops(draw: st.DrawFn) -> list[tuple[str, object]]:
    ops: list[tuple[str, object]] = []
    for _ in range(draw(st.integers(1, 40))):
        kind = draw(st.sampled_from(["track", "track", "complete", "complete", "restart"]))
        if kind == "track":
            gaps = draw(st.lists(st.sampled_from([1, 1, 1, 2, 3, 70, 200]), max_size=30))
            ops.append(("track", gaps))
        elif kind == "complete":
            ops.append(("complete", draw(st.lists(st.integers(0, 10**6), max_size=30))))
        else:
            max_bytes = draw(st.sampled_from([MIN_ENCODE_BYTES, 31, 64, 4096]))
            ops.append(("restart", (max_bytes, draw(st.sampled_from([0, 0, 2, 3])))))
    return ops


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(start=st.integers(0, 2**40), ops=offset_ops())
def test_tracker_agrees_with_the_model(start: int, ops: list[tuple[str, object]]) -> None:
    t = OffsetTracker()
    model: PartitionModel | None = None
    handed: list[int] = []
    last = start - 1
    for kind, arg in ops:
        if kind == "track":
            assert isinstance(arg, list)
            offsets = []
            for gap in arg:
                last += gap
                offsets.append(last)
            if model is None and offsets:
                model = PartitionModel(offsets[0])
            got = t.track_many(TP, np.array(offsets, np.int64))
            assert model is not None or not offsets
            assert got.tolist() == [model.track(o) for o in offsets]  # type: ignore[union-attr]
            handed += offsets
        elif kind == "complete" and handed:
            assert isinstance(arg, list) and model is not None
            picks = [handed[i % len(handed)] for i in arg]
            expected = sum(model.complete(o) for o in picks)
            assert t.complete_many(TP, np.array(picks, np.int64)) == expected
        elif kind == "restart" and model is not None:
            # Commit with metadata, then continue in a fresh tracker from it.
            assert isinstance(arg, tuple)
            max_bytes, drop_every = arg
            committed = model.committable()
            meta = t.encode(TP, max_bytes=max_bytes)
            assert len(meta) <= max_bytes
            t = OffsetTracker()
            assert t.decode(TP, committed, meta) == committed
            kept = _decoded_set(meta, committed)
            assert kept <= model.done_above_committable()
            span = (max(kept) + 1 - committed) if kept else 0
            model = PartitionModel(committed, kept, span)
            # Re-deliver from the committed offset, as a consumer after a seek would;
            # some records may have vanished meanwhile (compaction, retention).
            handed = [o for i, o in enumerate(handed)
                      if o >= committed and not (drop_every and i % drop_every == 0)]
            got = t.track_many(TP, np.array(handed, np.int64))
            assert got.tolist() == [model.track(o) for o in handed]
        if model is not None:
            assert t.committable(TP) == model.committable()
            assert t.pending(TP) == len(model.pending)


def _decoded_set(meta: bytes, committed: int) -> set[int]:
    """Parse the metadata format independently (bitset or runs) into its done set."""
    tag, body = meta[0], meta[1:-4]
    pos = 0
    values = []
    while pos < len(body):
        v = shift = 0
        while True:
            b = body[pos]
            pos += 1
            v |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                break
        values.append(v)
        if tag == 0xB1 and len(values) == 2:
            break
    base, span = values[0], values[1]
    assert base == committed
    done: set[int] = set()
    if tag == 0xB1:
        bits = body[pos:]
        done = {base + i for i in range(span) if bits[i // 8] >> (i % 8) & 1}
    else:
        at = base
        for p, d in zip(values[2::2], values[3::2], strict=True):
            done |= set(range(at + p, at + p + d))
            at += p + d
    return done


# --- bounded metadata --------------------------------------------------------------

@pytest.mark.parametrize("max_bytes", [MIN_ENCODE_BYTES, 25, 100, 1000, 4096, 4097])
def test_every_other_offset_done_over_a_huge_range(max_bytes: int) -> None:
    t = OffsetTracker()
    n = 2_000_000
    t.track_many(TP, np.arange(n))
    t.complete_many(TP, np.arange(1, n, 2))
    meta = t.encode(TP, max_bytes=max_bytes)
    assert len(meta) <= max_bytes
    assert meta[0] == 0xB1  # alternating offsets: the bitset is the smaller form
    kept = _done_after_decode(meta, 0, 8 * max_bytes + 64)
    assert kept and all(o % 2 == 1 for o in kept)
    assert kept == set(range(1, max(kept) + 1, 2))  # a prefix, no holes
    assert t.committable(TP) == 0
    text = t.encode_str(TP, max_bytes=max(max_bytes, 32))
    assert len(text) <= max(max_bytes, 32) and text.isascii()
    assert _done_after_decode(text, 0, 8 * max_bytes + 64) <= kept | set(range(1, n, 2))


@settings(max_examples=60, deadline=None)
@given(
    runs=st.lists(st.tuples(st.integers(1, 3000), st.integers(1, 3000)), min_size=1,
                  max_size=60),
    max_bytes=st.integers(MIN_ENCODE_BYTES, 300),
    tracked_every=st.sampled_from([1, 1, 2, 3]),
)
def test_encode_fits_and_decodes_to_a_subset(runs: list[tuple[int, int]], max_bytes: int,
                                             tracked_every: int) -> None:
    base = 1_000_003
    t = OffsetTracker()
    pos = base
    completed = []
    for pending, done in runs:
        pos += pending
        completed.extend(range(pos, pos + done))
        pos += done
    offsets = np.arange(base, pos + 1, tracked_every)
    t.track_many(TP, offsets)
    t.complete_many(TP, np.intersect1d(offsets, np.array(completed, np.int64)))
    committable = t.committable(TP)
    assert committable is not None
    truth = set(range(committable, pos + 1)) - set(offsets.tolist()) | set(completed)
    truth = {o for o in truth if committable <= o <= offsets[-1]}
    meta = t.encode(TP, max_bytes=max_bytes)
    assert len(meta) <= max_bytes
    kept = _decoded_set(meta, committable)
    assert kept <= truth
    assert _done_after_decode(meta, committable, pos + 2) == kept
    # When the whole set fits, the smaller of the two forms is chosen.
    bits, run_size = _reference_sizes(committable, truth, pos + 1)
    if min(bits, run_size) <= max_bytes:
        assert kept == truth
        assert len(meta) == min(bits, run_size)


def test_empty_metadata_round_trip() -> None:
    t = OffsetTracker()
    t.track_many(TP, [7, 8])
    t.complete_many(TP, [7, 8])
    meta = t.encode(TP, max_bytes=MIN_ENCODE_BYTES)
    assert _done_after_decode(meta, 9, 20) == set()
    r = OffsetTracker()
    assert r.decode(TP, 9, b"") == 9 and r.committable(TP) == 9


def test_corrupt_metadata_is_rejected_and_leaves_state() -> None:
    t = OffsetTracker()
    t.track_many(TP, np.arange(1000))
    t.complete_many(TP, np.arange(1, 1000, 3))
    meta = t.encode(TP, max_bytes=200)
    r = OffsetTracker()
    r.decode(TP, 0, meta)
    r.track(TP, 0)
    before = (r.committable(TP), r.pending(TP), r.encode(TP))
    for cut in range(len(meta)):
        with pytest.raises(CorruptSnapshotError):
            r.decode(TP, 0, meta[:cut] if cut else b"\x01")
    rng = np.random.default_rng(3)
    for pos in range(len(meta)):
        flipped = bytearray(meta)
        flipped[pos] ^= 1 << int(rng.integers(0, 8))
        with pytest.raises(CorruptSnapshotError):
            r.decode(TP, 0, bytes(flipped))
    with pytest.raises(CorruptSnapshotError, match="offset 0"):
        r.decode(TP, 5, meta)  # metadata of another committed offset
    with pytest.raises(CorruptSnapshotError, match="base64"):
        r.decode(TP, 0, "not*base64")
    with pytest.raises(CorruptSnapshotError):
        r.decode(TP, 0, base64.b64encode(b"some other tool's metadata").decode())
    assert (r.committable(TP), r.pending(TP), r.encode(TP)) == before  # untouched


# --- bad input ---------------------------------------------------------------------

def test_bad_partitions_name_tp() -> None:
    t = OffsetTracker()
    for bad, exc in [
        (None, TypeError),
        ("orders", TypeError),
        (("orders",), TypeError),
        (("orders", "3"), TypeError),
        ((b"orders", 3), TypeError),
        (("orders", True), TypeError),
        (["orders", 3], TypeError),
        (("orders", -1), ValueError),
        (("", 0), ValueError),
    ]:
        for method, args in [("track", (1,)), ("track_many", ([1],)), ("committable", ()),
                             ("encode", ()), ("decode", (0,)), ("complete_many", ([1],))]:
            with pytest.raises(exc, match="tp"):
                getattr(t, method)(bad, *args)
    assert len(t) == 0


def test_bad_offsets_name_the_argument_and_change_nothing() -> None:
    t = OffsetTracker()
    t.track_many(TP, [5, 6, 9])
    for bad, exc in [
        (None, TypeError),
        (np.array([10.0]), TypeError),
        (np.array([10], np.uint64), TypeError),
        (np.array([True]), TypeError),
        (np.array([[10]]), ValueError),
        (np.array([10, 10]), ValueError),  # not strictly increasing
        (np.array([12, 11]), ValueError),
        (np.array([9]), ValueError),  # handed out already
        (np.array([-1]), ValueError),
        (np.array([2**63 - 1]), ValueError),
    ]:
        with pytest.raises(exc, match="offsets"):
            t.track_many(TP, bad)
    for bad, exc in [
        (None, TypeError),
        (np.array([6.0]), TypeError),
        (np.array([6, 10]), ValueError),  # 10 was never handed out
        (np.array([-3]), ValueError),
    ]:
        with pytest.raises(exc, match="offsets"):
            t.complete_many(TP, bad)
    for call, exc in [
        (lambda: t.track(TP, None), TypeError),
        (lambda: t.track(TP, 9), ValueError),
        (lambda: t.track(TP, -1), ValueError),
        (lambda: t.complete(TP, 10), ValueError),
        (lambda: t.complete(TP, 1.5), TypeError),
        (lambda: t.decode(TP, -1), ValueError),
    ]:
        with pytest.raises(exc, match="offset"):
            call()
    with pytest.raises(ValueError, match="tp"):
        t.complete_many(("never", 0), [1])  # nothing handed out there
    with pytest.raises(ValueError, match="offsets"):
        t.track_many(("new", 0), [3, 2])
    assert t.partitions() == [TP]  # a rejected call leaves no trace
    assert t.committable(TP) == 5 and t.pending(TP) == 3


def test_bad_max_bytes_and_metadata_types() -> None:
    t = OffsetTracker()
    t.track(TP, 1)
    for bad, exc in [(MIN_ENCODE_BYTES - 1, ValueError), (0, ValueError), (None, TypeError),
                     (100.0, TypeError)]:
        with pytest.raises(exc, match="max_bytes"):
            t.encode(TP, max_bytes=bad)
    with pytest.raises(ValueError, match="max_bytes"):
        t.encode_str(TP, max_bytes=MIN_ENCODE_BYTES)  # base64 needs 4/3 as many
    with pytest.raises(ValueError, match="tp"):
        t.encode(("other", 0))
    with pytest.raises(TypeError, match="metadata"):
        t.decode(TP, 1, None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="metadata"):
        t.decode(TP, 1, 12)  # type: ignore[arg-type]


def test_metadata_span_is_capped() -> None:
    t = OffsetTracker()
    far = MAX_SPAN + 100
    t.track_many(TP, [0, 1, far])  # a stuck offset 0, then a gap of ~2**28 offsets
    t.complete_many(TP, [1, far])
    meta = t.encode(TP, max_bytes=MIN_ENCODE_BYTES)
    assert len(meta) <= MIN_ENCODE_BYTES
    r = OffsetTracker()
    r.decode(TP, 0, meta)
    assert r.track_many(TP, [0, far]).tolist() == [True, True]  # far: beyond the span
    r.complete_many(TP, [0, far])
    assert r.committable(TP) == far + 1
