"""BloomFilter: no false negatives, the configured false-positive rate, key domains."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eoscore.dedup import BloomFilter

from .conftest import int_keys, keys


@settings(max_examples=200, deadline=None)
@given(st.lists(keys, max_size=200), st.integers(min_value=1, max_value=300))
def test_never_a_false_negative(batch: list[Any], capacity: int) -> None:
    single = BloomFilter(capacity, 0.05)
    for key in batch:
        single.add(key)
    batched = BloomFilter(capacity, 0.05)
    batched.add_many(batch)
    for bf in (single, batched):
        assert all(key in bf for key in batch)
        assert bf.contains_many(batch).all()


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=2**64 - 1), max_size=600))
def test_array_and_list_batches_hash_alike(values: list[int]) -> None:
    bf = BloomFilter(1000, 0.01)
    bf.add_many(np.array(values, dtype=np.uint64))
    assert bf.contains_many(values).all()
    signed = [v for v in values if v < 2**63]
    assert bf.contains_many(np.array(signed, dtype=np.int64)).all()


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(min_size=0, max_size=12), max_size=300))
def test_fixed_width_rows_are_their_stripped_bytes(values: list[bytes]) -> None:
    arr = np.array(values, dtype="S12")
    bf = BloomFilter(500, 0.01)
    bf.add_many(arr)
    # numpy drops trailing NULs from arr[i]; the filter holds exactly those values.
    assert bf.contains_many([bytes(v) for v in arr]).all()
    assert all(v.rstrip(b"\0") in bf for v in values)


@settings(max_examples=50, deadline=None)
@given(st.lists(int_keys, max_size=50))
def test_negative_ints_and_numpy_scalars(values: list[int]) -> None:
    bf = BloomFilter(100, 0.01)
    bf.add_many(values)
    for v in values:
        if -(2**63) <= v < 2**63:
            assert np.int64(v) in bf
        if v >= 0:
            assert np.uint64(v) in bf


@pytest.mark.parametrize("rate", [1e-2, 1e-4])
def test_false_positive_rate_at_capacity(rate: float) -> None:
    n = 1_000_000
    bf = BloomFilter(n, rate)
    bf.add_many(np.arange(n, dtype=np.uint64))
    probes = 4_000_000 if rate < 1e-3 else 1_000_000
    hits = int(bf.contains_many(np.arange(n, n + probes, dtype=np.uint64)).sum())
    measured = hits / probes
    # Within 1.5x of the configured rate, and not wastefully far below it.
    assert 0.5 * rate <= measured <= 1.5 * rate, (rate, measured)


def test_false_positive_rate_for_bytes_keys() -> None:
    n = 200_000
    rng = np.random.default_rng(7)
    members = np.frombuffer(rng.bytes(16 * n), dtype="S16")
    others = np.frombuffer(rng.bytes(16 * n), dtype="S16")
    bf = BloomFilter(n, 0.01)
    bf.add_many(members)
    measured = bf.contains_many(others).mean()
    assert 0.005 <= measured <= 0.015


def test_size_follows_the_blocked_formula() -> None:
    # ~10.1 bits per key at 1%, ~23.6 at 0.01% (docs/dedup.md).
    assert BloomFilter(1_000_000, 0.01).nbytes * 8 / 1_000_000 == pytest.approx(10.1, abs=0.1)
    assert BloomFilter(1_000_000, 1e-4).nbytes * 8 / 1_000_000 == pytest.approx(23.6, abs=0.1)


def test_key_domains_are_distinct() -> None:
    # Few enough keys in a big filter that any hit below is a domain mix-up.
    bf = BloomFilter(1_000_000, 1e-6)
    bf.add_many([-1, b"a", 7])
    assert -1 in bf and b"a" in bf and 7 in bf
    assert 2**64 - 1 not in bf
    assert "a" not in bf
    assert b"7" not in bf and "7" not in bf


def test_properties_and_empty_batches() -> None:
    bf = BloomFilter(1000, 0.02)
    assert bf.capacity == 1000
    assert bf.fp_rate == 0.02
    assert bf.nbytes > 0
    bf.add_many([])
    out = bf.contains_many(np.array([], dtype=np.uint64))
    assert out.dtype == np.bool_ and out.shape == (0,)
    assert "BloomFilter(capacity=1000" in repr(bf)


def test_narrow_integer_dtypes_are_widened() -> None:
    bf = BloomFilter(100, 0.001)
    bf.add_many(np.array([-3, 5, 120], dtype=np.int8))
    bf.add_many(np.array([60000], dtype=np.uint16))
    assert all(k in bf for k in (-3, 5, 120, 60000))


def test_generators_and_unicode_arrays() -> None:
    bf = BloomFilter(100, 0.001)
    bf.add_many(str(i) for i in range(10))
    assert bf.contains_many(np.array([str(i) for i in range(10)])).all()


def test_a_bad_key_adds_nothing() -> None:
    bf = BloomFilter(1_000_000, 1e-6)
    with pytest.raises(TypeError, match=r"keys\[2\]"):
        bf.add_many([11, 12, None])
    assert not bf.contains_many([11, 12]).any()
