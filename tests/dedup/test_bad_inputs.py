"""Bad arguments raise TypeError/ValueError naming the argument, never crash."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from eoscore.dedup import BloomFilter, Deduplicator, ExactKeySet


def _batch_calls() -> list[tuple[str, Callable[[Any], Any]]]:
    bf, ks, dd = BloomFilter(100), ExactKeySet(), Deduplicator(100, ttl=5)
    dda = Deduplicator(100, mode="approximate")
    return [
        ("BloomFilter.add_many", bf.add_many),
        ("BloomFilter.contains_many", bf.contains_many),
        ("ExactKeySet.add_many", ks.add_many),
        ("ExactKeySet.contains_many", ks.contains_many),
        ("Deduplicator.check_and_add", dd.check_and_add),
        ("Deduplicator(approximate).check_and_add", dda.check_and_add),
    ]


def _key_calls() -> list[tuple[str, Callable[[Any], Any]]]:
    bf, ks = BloomFilter(100), ExactKeySet()
    return [
        ("BloomFilter.add", bf.add),
        ("BloomFilter.__contains__", bf.__contains__),
        ("ExactKeySet.add", ks.add),
        ("ExactKeySet.__contains__", ks.__contains__),
        ("ExactKeySet.discard", ks.discard),
    ]


BAD_BATCHES: list[tuple[Any, type[Exception], str]] = [
    (None, TypeError, r"keys: expected"),
    (b"abc", TypeError, r"keys: expected.*single key"),
    ("abc", TypeError, r"keys: expected.*single key"),
    (7, TypeError, r"keys: expected"),
    (3.5, TypeError, r"keys: expected"),
    ([1, None], TypeError, r"keys\[1\]: None"),
    ([1.0], TypeError, r"keys\[0\]: float"),
    ([b"a", bytearray(b"b")], TypeError, r"keys\[1\]: bytearray"),
    ([2**64], ValueError, r"keys\[0\]: int .* out of range"),
    ([-(2**63) - 1], ValueError, r"keys\[0\]: int .* out of range"),
    (np.zeros(3), TypeError, r"keys: unsupported array dtype float64"),
    (np.zeros(3, dtype=bool), TypeError, r"keys: unsupported array dtype bool"),
    (np.arange(6, dtype=np.uint64).reshape(2, 3), ValueError, r"keys: expected a 1-D"),
    (np.arange(10, dtype=np.uint64)[::2], ValueError, r"keys: array is not C-contiguous"),
    (np.arange(4, dtype=">u8"), ValueError, r"keys: .*byte order"),
    (np.array([b"ab", b"cd"], dtype="S2")[::-1], ValueError, r"not C-contiguous"),
    (object(), TypeError, r"keys: expected"),
]


@pytest.mark.parametrize(("bad", "exc", "message"), BAD_BATCHES)
def test_bad_batches(bad: Any, exc: type[Exception], message: str) -> None:
    for _name, call in _batch_calls():
        with pytest.raises(exc, match=message):
            call(bad)
        # Still usable afterwards.
        call([1, b"x", "y"])


BAD_KEYS: list[tuple[Any, type[Exception], str]] = [
    (None, TypeError, r"key: None"),
    (1.5, TypeError, r"key: float"),
    (np.float64(2.0), TypeError, r"key: float64"),
    (np.True_, TypeError, r"key: bool"),
    ([1], TypeError, r"key: list"),
    (bytearray(b"x"), TypeError, r"key: bytearray"),
    (2**64, ValueError, r"key: int 18446744073709551616 is out of range"),
    (-(2**63) - 1, ValueError, r"key: int .* out of range"),
]


@pytest.mark.parametrize(("bad", "exc", "message"), BAD_KEYS)
def test_bad_single_keys(bad: Any, exc: type[Exception], message: str) -> None:
    for _name, call in _key_calls():
        with pytest.raises(exc, match=message):
            call(bad)


@pytest.mark.parametrize(
    ("kwargs", "exc", "message"),
    [
        ({"capacity": 0}, ValueError, "capacity must be > 0"),
        ({"capacity": -5}, ValueError, "capacity must be > 0"),
        ({"capacity": 10.0}, TypeError, "capacity must be an int"),
        ({"capacity": None}, TypeError, "capacity must be an int"),
        ({"capacity": True}, TypeError, "capacity must be an int"),
        ({"capacity": 10, "fp_rate": 0}, ValueError, r"fp_rate must be in \(0, 1\)"),
        ({"capacity": 10, "fp_rate": 1.0}, ValueError, r"fp_rate must be in \(0, 1\)"),
        ({"capacity": 10, "fp_rate": -0.1}, ValueError, r"fp_rate must be in \(0, 1\)"),
        ({"capacity": 10, "fp_rate": float("nan")}, ValueError, r"fp_rate must be in"),
        ({"capacity": 10, "fp_rate": "1%"}, TypeError, "fp_rate must be a float"),
        ({"capacity": 10, "fp_rate": None}, TypeError, "fp_rate must be a float"),
    ],
)
def test_bad_bloom_and_dedup_arguments(
    kwargs: dict[str, Any], exc: type[Exception], message: str
) -> None:
    with pytest.raises(exc, match=message):
        BloomFilter(**kwargs)
    with pytest.raises(exc, match=message):
        Deduplicator(**kwargs)


def test_huge_bloom_is_refused() -> None:
    with pytest.raises(ValueError, match="capacity"):
        BloomFilter(10**15, 1e-9)


@pytest.mark.parametrize(
    ("kwargs", "exc", "message"),
    [
        ({"ttl": 0}, ValueError, "ttl must be a finite number > 0"),
        ({"ttl": -1.0}, ValueError, "ttl must be"),
        ({"ttl": float("inf")}, ValueError, "ttl must be"),
        ({"ttl": "1h"}, TypeError, "ttl must be None or a number"),
        ({"generations": 1}, ValueError, "generations must be in"),
        ({"generations": 100}, ValueError, "generations must be in"),
        ({"generations": 4.0}, TypeError, "generations must be an int"),
        ({"mode": "fast"}, ValueError, "mode must be 'exact' or 'approximate'"),
        ({"mode": None}, TypeError, "mode must be"),
    ],
)
def test_bad_dedup_arguments(kwargs: dict[str, Any], exc: type[Exception], message: str) -> None:
    with pytest.raises(exc, match=message):
        Deduplicator(100, **kwargs)


@pytest.mark.parametrize("hint", [-1, 2**41, 1.5, None, True])
def test_bad_capacity_hint(hint: Any) -> None:
    with pytest.raises((TypeError, ValueError), match="capacity_hint"):
        ExactKeySet(hint)


@pytest.mark.parametrize("cls", [BloomFilter, ExactKeySet, Deduplicator])
def test_uninitialised_objects_raise(cls: Any) -> None:
    obj = cls.__new__(cls)
    with pytest.raises(ValueError, match="not initialised"):
        obj.snapshot()
    method = getattr(obj, "check_and_add", None) or obj.add_many
    with pytest.raises(ValueError, match="not initialised"):
        method([1])


def test_a_list_that_changes_size_is_caught() -> None:
    class Shrinker:
        def __init__(self, victim: list[Any]) -> None:
            self.victim = victim

        def __index__(self) -> int:
            self.victim.clear()
            return 1

    keys: list[Any] = [1, 2]
    keys.insert(0, Shrinker(keys))
    with pytest.raises(RuntimeError, match="changed size"):
        ExactKeySet().add_many(keys)
