"""SequenceTracker: Kafka's idempotence rules, batch equivalence, expiry, snapshots."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eoscore import snapshot_format
from eoscore.errors import CorruptSnapshotError
from eoscore.sequence import (
    ACCEPT,
    DUPLICATE,
    FENCED,
    OUT_OF_ORDER,
    CheckResult,
    SequenceTracker,
)
from tests.sequence.models import SEQ_MOD, SequenceModel

SEQ_MAX = SEQ_MOD - 1


def test_in_order_batches_are_accepted_and_retries_are_duplicates() -> None:
    t = SequenceTracker(expire_after=None)
    assert t.check(7, 0, 0, 9, now=0) is ACCEPT
    assert t.check(7, 0, 10, 19, now=0) is ACCEPT
    assert t.check(7, 0, 0, 9, now=0) is DUPLICATE
    assert t.check(7, 0, 10, 19, now=0) is DUPLICATE
    assert t.check(7, 0, 20, 20, now=0) is ACCEPT
    assert isinstance(t.check(7, 0, 21, 21, now=0), CheckResult)
    # numpy scalars are ints too
    assert t.check(np.int64(7), np.int32(0), np.uint32(22), np.int64(22), now=np.int64(1)) is ACCEPT


def test_gaps_and_partial_overlaps_are_out_of_order() -> None:
    t = SequenceTracker(expire_after=None)
    t.check(1, 0, 0, 9, now=0)
    assert t.check(1, 0, 11, 12, now=0) is OUT_OF_ORDER  # gap
    assert t.check(1, 0, 5, 12, now=0) is OUT_OF_ORDER  # overlap, not an exact batch
    assert t.check(1, 0, 0, 8, now=0) is OUT_OF_ORDER  # same start, other end
    assert t.check(1, 0, 10, 10, now=0) is ACCEPT  # nothing above was recorded


def test_only_the_last_five_batches_are_remembered() -> None:
    t = SequenceTracker(expire_after=None)
    for i in range(6):
        assert t.check(1, 0, i, i, now=0) is ACCEPT
    assert t.check(1, 0, 0, 0, now=0) is OUT_OF_ORDER  # evicted: a retry too old to tell
    for i in range(1, 6):
        assert t.check(1, 0, i, i, now=0) is DUPLICATE
    state = t.producer(1)
    assert state == (0, [(1, 1), (2, 2), (3, 3), (4, 4), (5, 5)], 0.0)


def test_sequences_wrap_after_2_31_minus_1() -> None:
    t = SequenceTracker(expire_after=None)
    assert t.check(1, 0, SEQ_MAX - 4, SEQ_MAX, now=0) is ACCEPT
    assert t.check(1, 0, 0, 4, now=0) is ACCEPT
    assert t.check(1, 0, SEQ_MAX - 4, SEQ_MAX, now=0) is DUPLICATE
    # A batch that itself wraps: [2**31 - 2, 1].
    assert t.check(2, 0, SEQ_MAX - 9, SEQ_MAX - 2, now=0) is ACCEPT
    assert t.check(2, 0, SEQ_MAX - 1, 1, now=0) is ACCEPT
    assert t.check(2, 0, 2, 2, now=0) is ACCEPT
    assert t.check(2, 0, 0, 2, now=0) is OUT_OF_ORDER


def test_older_epochs_are_fenced_and_newer_epochs_start_at_zero() -> None:
    t = SequenceTracker(expire_after=None)
    t.check(1, 3, 0, 9, now=0)
    assert t.check(1, 2, 10, 19, now=0) is FENCED
    assert t.check(1, 2, 0, 9, now=0) is FENCED
    assert t.check(1, 4, 10, 19, now=0) is OUT_OF_ORDER  # new epoch must restart at 0
    assert t.producer(1) == (3, [(0, 9)], 0.0)  # rejected batches record nothing
    assert t.check(1, 4, 0, 4, now=0) is ACCEPT
    assert t.check(1, 3, 10, 19, now=0) is FENCED
    assert t.check(1, 4, 0, 4, now=0) is DUPLICATE
    assert t.producer(1) == (4, [(0, 4)], 0.0)


def test_unknown_producers_are_accepted_at_any_sequence() -> None:
    t = SequenceTracker(expire_after=None)
    assert t.check(99, 5, 1234, 1300, now=0) is ACCEPT
    assert t.check(99, 5, 1301, 1301, now=0) is ACCEPT


def test_idle_producers_expire_with_the_explicit_clock() -> None:
    t = SequenceTracker(expire_after=10.0)
    t.check(1, 0, 0, 9, now=100.0)
    t.check(2, 0, 0, 9, now=105.0)
    assert t.check(1, 0, 0, 9, now=109.9) is DUPLICATE  # not expired: DUPLICATE keeps no time
    assert t.check(1, 0, 0, 9, now=110.0) is ACCEPT  # expired: unknown again
    assert t.expire(now=114.9) == 0
    assert t.expire(now=115.0) == 1  # producer 2 (last accepted at 105)
    assert len(t) == 1 and t.producer(2) is None
    assert t.check(2, 0, 50, 60, now=116.0) is ACCEPT


def test_accept_refreshes_last_seen_but_rejections_do_not() -> None:
    t = SequenceTracker(expire_after=10.0)
    t.check(1, 0, 0, 0, now=0.0)
    t.check(1, 0, 1, 1, now=8.0)
    for result in (t.check(1, 0, 5, 5, now=9.0), t.check(1, 0, 1, 1, now=9.5)):
        assert result in (OUT_OF_ORDER, DUPLICATE)
    assert t.expire(now=17.9) == 0
    assert t.expire(now=18.0) == 1


def test_expiry_shrinks_the_table() -> None:
    t = SequenceTracker(expire_after=1.0)
    n = 50_000
    t.check_many(np.arange(n), np.zeros(n, np.int64), np.zeros(n, np.int64),
                 np.zeros(n, np.int64), now=0.0)
    assert len(t) == n
    assert t.expire(now=1.0) == n and len(t) == 0
    assert t.check(3, 0, 7, 7, now=2.0) is ACCEPT


def test_check_many_sees_earlier_batches_of_the_same_call() -> None:
    t = SequenceTracker(expire_after=None)
    pids = np.array([1, 1, 1, 2, 1, 1], np.int64)
    epochs = np.array([0, 0, 0, 0, 1, 0], np.int64)
    firsts = np.array([0, 5, 0, 9, 0, 10], np.int64)
    lasts = np.array([4, 9, 4, 9, 3, 10], np.int64)
    got = t.check_many(pids, epochs, firsts, lasts, now=1.0)
    assert got.dtype == np.uint8
    assert got.tolist() == [ACCEPT, ACCEPT, DUPLICATE, ACCEPT, ACCEPT, FENCED]


def test_check_many_accepts_any_integer_dtype_and_lists() -> None:
    t = SequenceTracker(expire_after=None)
    got = t.check_many(np.array([1, 2], np.int32), [0, 0], np.array([0, 0], np.uint16),
                       np.array([3, 3], np.int8), now=0)
    assert got.tolist() == [ACCEPT, ACCEPT]
    empty = t.check_many([], [], [], [], now=0)
    assert empty.shape == (0,) and empty.dtype == np.uint8


# --- model tests -------------------------------------------------------------------

PIDS = st.one_of(st.integers(0, 4), st.integers(0, 2**63 - 1))  # many pids: table growth


@st.composite
def batch_ops(draw: st.DrawFn) -> list[tuple[int, int, int, int, float]]:
    """Batches that hit every rule: next-in-line, retries, gaps, epoch bumps, wrap."""
    ops = []
    next_seq: dict[int, int] = {}
    now = 0.0
    for _ in range(draw(st.integers(1, 50))):
        pid = draw(PIDS)
        epoch = draw(st.integers(0, 2))
        kind = draw(st.sampled_from(["next", "next", "next", "retry", "random", "wrap", "zero"]))
        expected = next_seq.get(pid, 0)
        if kind == "next":
            first = expected
        elif kind == "retry":
            first = max(0, expected - draw(st.integers(1, 12)))
        elif kind == "wrap":
            first = SEQ_MAX - draw(st.integers(0, 3))
        elif kind == "zero":
            first = 0
        else:
            first = draw(st.integers(0, SEQ_MAX))
        last = (first + draw(st.integers(0, 4))) % SEQ_MOD
        next_seq[pid] = (last + 1) % SEQ_MOD
        now += draw(st.sampled_from([0.0, 0.0, 0.5, 3.0]))
        ops.append((pid, epoch, first, last, now))
    return ops


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=batch_ops(), expire_after=st.sampled_from([None, 4.0, 10.0]))
def test_check_agrees_with_the_model(ops: list[tuple[int, int, int, int, float]],
                                     expire_after: float | None) -> None:
    t = SequenceTracker(expire_after=expire_after)
    model = SequenceModel(expire_after)
    for pid, epoch, first, last, now in ops:
        assert t.check(pid, epoch, first, last, now=now) == model.check(pid, epoch, first, last,
                                                                        now)
    for pid in [*range(5), *model.producers]:
        assert t.producer(pid) == model.state(pid)
    assert len(t) == len(model.producers)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=batch_ops(), expire_after=st.sampled_from([None, 4.0]), data=st.data())
def test_check_many_equals_check_in_order(ops: list[tuple[int, int, int, int, float]],
                                          expire_after: float | None,
                                          data: st.DataObject) -> None:
    t = SequenceTracker(expire_after=expire_after)
    model = SequenceModel(expire_after)
    i = 0
    while i < len(ops):
        size = data.draw(st.integers(1, 20))
        chunk = ops[i : i + size]
        now = chunk[-1][4]  # one clock reading per call
        cols = [np.array([op[k] for op in chunk], np.int64) for k in range(4)]
        expected = [model.check(*op[:4], now) for op in chunk]
        assert t.check_many(*cols, now=now).tolist() == expected
        if data.draw(st.booleans()):
            assert t.expire(now=now) == model.expire(now)
        i += size
    for pid in [*range(5), *model.producers]:
        assert t.producer(pid) == model.state(pid)
    assert len(t) == len(model.producers)


@settings(max_examples=30, deadline=None)
@given(ops=batch_ops())
def test_snapshot_round_trip_preserves_behaviour(
        ops: list[tuple[int, int, int, int, float]]) -> None:
    t = SequenceTracker(expire_after=7.5)
    half = len(ops) // 2
    for op in ops[:half]:
        t.check(*op[:4], now=op[4])
    data = t.snapshot()
    restored = SequenceTracker(expire_after=None)
    restored.restore(data)
    assert restored.expire_after == 7.5
    assert restored.snapshot() == data
    for op in ops[half:]:
        assert restored.check(*op[:4], now=op[4]) == t.check(*op[:4], now=op[4])


# --- snapshots ---------------------------------------------------------------------

def _tracker_with_state() -> SequenceTracker:
    t = SequenceTracker(expire_after=60.0)
    rng = np.random.default_rng(1)
    n = 3000
    pids = rng.integers(0, 500, n)
    t.check_many(pids, np.zeros(n, np.int64), np.zeros(n, np.int64), np.full(n, 2), now=1.0)
    for i in range(1, 8):
        t.check_many(np.arange(500), np.zeros(500, np.int64), np.full(500, 3 * i),
                     np.full(500, 3 * i + 2), now=float(i))
    return t


def test_snapshot_is_framed_and_restores_exactly() -> None:
    t = _tracker_with_state()
    data = t.snapshot()
    assert snapshot_format.peek_kind(data) == b"SEQT"
    other = SequenceTracker()
    other.restore(data)
    assert len(other) == len(t) == 500
    for pid in range(0, 500, 37):
        assert other.producer(pid) == t.producer(pid)
    empty = SequenceTracker(expire_after=None)
    other.restore(empty.snapshot())
    assert len(other) == 0 and other.expire_after is None


def test_truncated_snapshots_are_rejected() -> None:
    data = _tracker_with_state().snapshot()
    for cut in [0, 1, 10, 39, 40, 41, len(data) // 2, len(data) - 1]:
        with pytest.raises(CorruptSnapshotError):
            SequenceTracker().restore(data[:cut])
    with pytest.raises(CorruptSnapshotError):
        SequenceTracker().restore(data + b"\0")


def test_bit_flips_are_rejected_and_leave_the_tracker_unchanged() -> None:
    data = _tracker_with_state().snapshot()
    target = SequenceTracker(expire_after=None)
    target.check(1, 0, 0, 0, now=0)
    before = target.snapshot()
    rng = np.random.default_rng(2)
    positions = [*range(40), *rng.integers(40, len(data), 60).tolist()]
    for pos in positions:
        flipped = bytearray(data)
        flipped[pos] ^= 1 << int(rng.integers(0, 8))
        with pytest.raises(CorruptSnapshotError):
            target.restore(bytes(flipped))
        assert target.snapshot() == before


def test_checksummed_but_invalid_payloads_are_rejected() -> None:
    good = _tracker_with_state().snapshot()
    _, payload = snapshot_format.unpack(good, b"SEQT", (1,))
    record = 64
    header = 16

    def reframe(body: bytes) -> bytes:
        return snapshot_format.pack(b"SEQT", 1, body)

    bad_count = bytearray(payload)
    bad_count[header + 20] = 6  # six retained batches
    dup = bytes(payload[:header]) + bytes(payload[header : header + record]) * 2
    dup = (dup[:8] + (2).to_bytes(8, "little") + dup[16:])
    negative = bytearray(payload)
    negative[header : header + 8] = (-5).to_bytes(8, "little", signed=True)
    for body in (bytes(bad_count), dup, bytes(negative), bytes(payload[:-1]), b"\0" * 8):
        with pytest.raises(CorruptSnapshotError):
            SequenceTracker().restore(reframe(body))
    with pytest.raises(CorruptSnapshotError):
        SequenceTracker().restore(snapshot_format.pack(b"SEQT", 2, payload))
    with pytest.raises(CorruptSnapshotError):
        SequenceTracker().restore(snapshot_format.pack(b"BLOM", 1, payload))


# --- bad input ---------------------------------------------------------------------

def test_bad_scalar_arguments_name_the_argument() -> None:
    t = SequenceTracker()
    for args, exc, name in [
        ((None, 0, 0, 0), TypeError, "pid"),
        ((1, None, 0, 0), TypeError, "epoch"),
        ((1, 0, None, 0), TypeError, "first_seq"),
        ((1, 0, 0, None), TypeError, "last_seq"),
        ((1.0, 0, 0, 0), TypeError, "pid"),
        ((True, 0, 0, 0), TypeError, "pid"),
        ((-1, 0, 0, 0), ValueError, "pid"),
        ((1, -1, 0, 0), ValueError, "epoch"),
        ((1, 0, SEQ_MOD, 0), ValueError, "first_seq"),
        ((1, 0, 0, -1), ValueError, "last_seq"),
    ]:
        with pytest.raises(exc, match=name):
            t.check(*args, now=0.0)
    with pytest.raises(TypeError, match="now"):
        t.check(1, 0, 0, 0, now="soon")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="now"):
        t.check(1, 0, 0, 0, now=float("nan"))
    with pytest.raises(TypeError, match="now"):
        t.expire(now=[1])  # type: ignore[arg-type]
    assert len(t) == 0


def test_bad_arrays_name_the_argument_and_change_nothing() -> None:
    t = SequenceTracker()
    ok = np.zeros(3, np.int64)
    names = ["pids", "epochs", "first_seqs", "last_seqs"]
    for i, name in enumerate(names):
        for bad, exc in [
            (None, TypeError),
            (np.zeros(3, np.float64), TypeError),
            (np.zeros(3, np.uint64), TypeError),
            (np.zeros(3, bool), TypeError),
            (np.array(["a", "b", "c"]), TypeError),
            (np.zeros((3, 1), np.int64), ValueError),
            (np.zeros(2, np.int64), ValueError),
            (np.array([0, 0, -1]), ValueError),
        ]:
            args = [ok, ok, ok, ok]
            args[i] = bad
            if name == "pids" and bad is not None and getattr(bad, "shape", None) == (2,):
                name_re = "pids|epochs"  # the length mismatch is reported on another array
            else:
                name_re = name
            with pytest.raises(exc, match=name_re):
                t.check_many(*args, now=0.0)
    with pytest.raises(ValueError, match=r"first_seqs\[1\]"):
        t.check_many([1, 2], [0, 0], [0, SEQ_MOD], [0, 0], now=0.0)
    assert len(t) == 0  # validation happens before any batch is applied


def test_bad_constructor_and_restore_arguments() -> None:
    with pytest.raises(TypeError, match="expire_after"):
        SequenceTracker(expire_after="1h")  # type: ignore[arg-type]
    for bad in (0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="expire_after"):
            SequenceTracker(expire_after=bad)
    with pytest.raises(TypeError):
        SequenceTracker().restore(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        SequenceTracker().restore("not bytes")  # type: ignore[arg-type]


def test_concurrent_use_raises_instead_of_corrupting() -> None:
    t = SequenceTracker(expire_after=None)
    n = 200_000
    pids = np.arange(n, dtype=np.int64)
    zeros = np.zeros(n, np.int64)
    errors: list[BaseException] = []

    def hammer() -> None:
        for i in range(5):
            try:
                t.check_many(pids, zeros, zeros + i, zeros + i, now=0.0)
                t.check(n + 1, 0, i, i, now=0.0)
            except RuntimeError as exc:  # the other thread's batch was running
                assert "another thread" in str(exc)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

    threads = [threading.Thread(target=hammer) for _ in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    assert len(t) == n + 1
