"""eoscore.hashing against the reference ``xxhash`` package, for every input kind."""

from __future__ import annotations

import random
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from eoscore import hashing
from eoscore.hashing import xxh3_64, xxh3_64_many, xxh3_128

U64_MAX = 2**64 - 1
RNG = random.Random(0xE05C0DE)
# 0, small, top bit set, all ones, and random ones (some with the top bit forced on).
SEEDS = [0, 1, 2**63, U64_MAX, 0x0123456789ABCDEF, RNG.getrandbits(64), RNG.getrandbits(64) | 2**63]

ScalarHash = Callable[..., int]
PAIRS: list[tuple[ScalarHash, ScalarHash]] = [
    (xxh3_64, xxhash.xxh3_64_intdigest),
    (xxh3_128, xxhash.xxh3_128_intdigest),
]
PAIR_IDS = ["64", "128"]


def _data(n: int) -> bytes:
    return RNG.randbytes(n)


def _key_bytes(value: int, signed: bool) -> bytes:
    return value.to_bytes(8, "little", signed=signed)


# ---- scalar API vs xxhash -------------------------------------------------


@pytest.mark.parametrize(("ours", "ref"), PAIRS, ids=PAIR_IDS)
def test_every_length_0_to_1024(ours: ScalarHash, ref: ScalarHash) -> None:
    # Covers the 0, 1-3, 4-8, 9-16, 17-128, 129-240 paths and the first long block.
    for n in range(1025):
        data = _data(n)
        for seed in (0, RNG.getrandbits(64), RNG.getrandbits(64) | 2**63):
            assert ours(data, seed) == ref(data, seed=seed), (n, seed)


@pytest.mark.parametrize(("ours", "ref"), PAIRS, ids=PAIR_IDS)
def test_long_inputs_across_blocks(ours: ScalarHash, ref: ScalarHash) -> None:
    # A block is 1024 bytes: step through several, and hit each boundary +-1.
    edges = [b * 1024 + d for b in range(1, 5) for d in (-1, 0, 1)]
    lengths = sorted({*range(1025, 5001, 37), *edges, 16383, 16384, 100_000, 102_400, 102_401})
    for n in lengths:
        data = _data(n)
        for seed in SEEDS:
            assert ours(data, seed) == ref(data, seed=seed), (n, seed)


@pytest.mark.parametrize(("ours", "ref"), PAIRS, ids=PAIR_IDS)
def test_unaligned_input(ours: ScalarHash, ref: ScalarHash) -> None:
    buf = _data(3000)
    for offset in range(1, 8):
        for n in (3, 7, 15, 100, 200, 1000, 2000):
            view = memoryview(buf)[offset : offset + n]
            assert ours(view, 5) == ref(bytes(view), seed=5), (offset, n)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=1500), st.integers(0, U64_MAX))
def test_hypothesis_matches_xxhash(data: bytes, seed: int) -> None:
    assert xxh3_64(data, seed) == xxhash.xxh3_64_intdigest(data, seed=seed)
    assert xxh3_128(data, seed) == xxhash.xxh3_128_intdigest(data, seed=seed)


@pytest.mark.parametrize(("ours", "ref"), PAIRS, ids=PAIR_IDS)
def test_buffer_kinds_hash_their_bytes(ours: ScalarHash, ref: ScalarHash) -> None:
    for n in (0, 5, 64, 300, 20_000):  # 20_000 takes the GIL-released path
        raw = _data(n)
        expected = ref(raw, seed=9)
        assert ours(raw, 9) == expected
        assert ours(bytearray(raw), 9) == expected
        assert ours(memoryview(raw), 9) == expected
        assert ours(np.frombuffer(raw, dtype=np.uint8), 9) == expected
    ints = np.arange(100, dtype=np.int32)  # any C-contiguous buffer: its raw bytes
    assert ours(ints) == ref(ints.tobytes())
    assert ours(memoryview(ints.tobytes()).cast("i")) == ref(ints.tobytes())


@pytest.mark.parametrize(("ours", "ref"), PAIRS, ids=PAIR_IDS)
def test_str_is_its_utf8(ours: ScalarHash, ref: ScalarHash) -> None:
    for text in ("", "a", "hello", "ключ", "鍵🔑" * 50, "x" * 20_000):
        assert ours(text, 3) == ours(text.encode(), 3) == ref(text.encode(), seed=3)


def test_keyword_seed_and_default() -> None:
    assert xxh3_64(b"abc", seed=7) == xxhash.xxh3_64_intdigest(b"abc", seed=7)
    assert xxh3_64(b"abc") == xxh3_64(b"abc", 0) != xxh3_64(b"abc", 1)
    assert xxh3_128(b"abc", seed=7) == xxhash.xxh3_128_intdigest(b"abc", seed=7)


def test_buffer_is_released() -> None:
    # A leaked buffer export would make resizing raise BufferError.
    for n in (10, 20_000):
        data = bytearray(n)
        xxh3_64(data)
        xxh3_128(data)
        data.append(1)
        assert len(data) == n + 1


# ---- batch API ------------------------------------------------------------


def _ref_list(keys: list[bytes], seed: int) -> list[int]:
    return [xxhash.xxh3_64_intdigest(k, seed=seed) for k in keys]


@pytest.mark.parametrize("seed", [0, 2**63 + 5])
def test_many_list_tuple_iterable(seed: int) -> None:
    keys = [_data(RNG.randrange(0, 300)) for _ in range(500)]
    expected = _ref_list(keys, seed)
    for batch in (keys, tuple(keys), iter(keys), (k for k in keys)):
        out = xxh3_64_many(batch, seed)
        assert out.dtype == np.uint64
        assert out.shape == (500,)
        assert out.tolist() == expected
    assert [xxh3_64(k, seed) for k in keys] == expected


def test_many_mixed_bytes_str_bytearray() -> None:
    keys: list[bytes | bytearray | str] = [b"a", "b", bytearray(b"c"), "ключ", b""]
    out = xxh3_64_many(keys, 11)
    assert out.tolist() == [xxh3_64(k, 11) for k in keys]
    assert out[3] == xxhash.xxh3_64_intdigest("ключ".encode(), seed=11)


def test_many_empty() -> None:
    batches: list[Any] = [[], (), np.array([], dtype="S8"), np.array([], dtype=np.int64)]
    for batch in batches:
        out = xxh3_64_many(batch)
        assert out.dtype == np.uint64
        assert out.shape == (0,)


@pytest.mark.parametrize("seed", [0, U64_MAX])
def test_many_fixed_width_bytes_strips_nul_padding(seed: int) -> None:
    keys = [_data(RNG.randrange(0, 17)).rstrip(b"\0") for _ in range(300)]
    keys += [b"", b"ab", b"a\0b", b"\0\0x", b"x" * 16]
    arr = np.array(keys, dtype="S16")
    out = xxh3_64_many(arr, seed)
    assert out.tolist() == _ref_list(keys, seed)
    assert out.tolist() == xxh3_64_many(list(arr), seed).tolist()  # numpy's own elements
    assert xxh3_64_many(np.array([b"ab"], "S16"))[0] == xxh3_64(b"ab")
    # A padded tail and an all-NUL element hash like their stripped values.
    assert xxh3_64_many(np.array([b"ab\0\0", b"\0\0"], "S4")).tolist() == [
        xxh3_64(b"ab"),
        xxh3_64(b""),
    ]


def test_many_fixed_width_readonly_and_wide() -> None:
    raw = _data(40 * 1000)
    arr = np.frombuffer(raw, dtype="S40")  # read-only, straight from bytes
    assert not arr.flags.writeable
    expected = [
        xxhash.xxh3_64_intdigest(raw[i : i + 40].rstrip(b"\0")) for i in range(0, 40_000, 40)
    ]
    assert xxh3_64_many(arr).tolist() == expected


def test_many_str_and_object_arrays() -> None:
    words = ["", "a", "ключ", "鍵🔑", "tail"]
    assert xxh3_64_many(np.array(words), 2).tolist() == [xxh3_64(w, 2) for w in words]
    objs = np.array([b"x", "y", b""], dtype=object)
    assert xxh3_64_many(objs).tolist() == [xxh3_64(b"x"), xxh3_64("y"), xxh3_64(b"")]


INT_DTYPES = ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"]


@pytest.mark.parametrize("dtype", INT_DTYPES)
def test_many_int_arrays(dtype: str) -> None:
    info = np.iinfo(dtype)
    signed = info.min < 0
    values = [info.min, info.max, 0, 1, info.max // 3]
    values += [RNG.randint(int(info.min), int(info.max)) for _ in range(200)]
    if signed:
        values.append(-1)
    seed = RNG.getrandbits(64)
    out = xxh3_64_many(np.array(values, dtype=dtype), seed)
    # Signed keys are their sign-extended int64 bytes, unsigned their zero-extended uint64.
    expected = [xxhash.xxh3_64_intdigest(_key_bytes(v, signed), seed=seed) for v in values]
    assert out.tolist() == expected


def test_many_int_rule_examples() -> None:
    assert xxh3_64_many(np.array([-1], np.int8))[0] == xxh3_64(b"\xff" * 8)
    assert xxh3_64_many(np.array([255], np.uint8))[0] == xxh3_64(b"\xff" + b"\0" * 7)
    big = np.array([2**64 - 1], np.uint64)
    assert xxh3_64_many(big)[0] == xxh3_64_many(np.array([-1], np.int64))[0]


def test_many_int_non_native_byte_order() -> None:
    values = [1, -2, 2**40, -(2**62)]
    native = xxh3_64_many(np.array(values, dtype="<i8"))
    assert xxh3_64_many(np.array(values, dtype=">i8")).tolist() == native.tolist()
    assert xxh3_64_many(np.array(values[:2], dtype=">i4")).tolist() == native[:2].tolist()


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.binary(max_size=40), max_size=50),
    st.lists(st.integers(-(2**63), 2**63 - 1), max_size=50),
    st.integers(0, U64_MAX),
)
def test_hypothesis_batch_agrees_with_scalar(keys: list[bytes], ints: list[int], seed: int) -> None:
    scalar = [xxh3_64(k, seed) for k in keys]
    assert xxh3_64_many(keys, seed).tolist() == scalar
    stripped = [k.rstrip(b"\0") for k in keys]
    fixed = np.array(keys, dtype="S40") if keys else np.array([], dtype="S40")
    assert xxh3_64_many(fixed, seed).tolist() == [xxh3_64(k, seed) for k in stripped]
    as_int64 = xxh3_64_many(np.array(ints, dtype=np.int64), seed).tolist()
    assert as_int64 == [xxh3_64(_key_bytes(v, True), seed) for v in ints]


# ---- bad input --------------------------------------------------------------

BAD_DATA: list[tuple[Any, str]] = [(None, "NoneType"), (5, "int"), (1.5, "float"), ([b"a"], "list")]


@pytest.mark.parametrize("func", [xxh3_64, xxh3_128])
@pytest.mark.parametrize(("data", "type_name"), BAD_DATA)
def test_bad_data_type(func: ScalarHash, data: Any, type_name: str) -> None:
    with pytest.raises(TypeError, match=rf"data must be .*not {type_name}"):
        func(data)


@pytest.mark.parametrize("func", [xxh3_64, xxh3_128])
def test_non_contiguous_buffer(func: ScalarHash) -> None:
    with pytest.raises(ValueError, match="data must be a C-contiguous buffer"):
        func(memoryview(b"abcdefgh")[::2])
    with pytest.raises(ValueError, match="data must be a C-contiguous buffer"):
        func(np.arange(10, dtype=np.uint8)[::2])


BAD_SEEDS: list[tuple[Any, type[Exception], str]] = [
    (-1, ValueError, "got -1"),
    (2**64, ValueError, "got 18446744073709551616"),
    (-(2**70), ValueError, "got -"),
    (1.0, TypeError, "not float"),
    (None, TypeError, "not NoneType"),
    ("0", TypeError, "not str"),
]


@pytest.mark.parametrize("func", [xxh3_64, xxh3_128, xxh3_64_many])
@pytest.mark.parametrize(("seed", "exc", "detail"), BAD_SEEDS)
def test_bad_seed(func: Callable[..., Any], seed: Any, exc: type[Exception], detail: str) -> None:
    arg = [b"k"] if func is xxh3_64_many else b"k"
    with pytest.raises(exc, match=rf"seed must be an int in \[0, 2\*\*64\).*{detail}"):
        func(arg, seed)


def test_seed_edges_accepted() -> None:
    assert xxh3_64(b"k", U64_MAX) == xxhash.xxh3_64_intdigest(b"k", seed=U64_MAX)
    assert xxh3_64(b"k", True) == xxh3_64(b"k", 1)  # bool is an int


@pytest.mark.parametrize(
    ("keys", "exc", "message"),
    [
        (None, TypeError, "keys must be a list/tuple .* not NoneType"),
        (b"abc", TypeError, "not bytes \\(use xxh3_64 for a single key\\)"),
        ("abc", TypeError, "not str \\(use xxh3_64"),
        (7, TypeError, "keys must be an iterable of bytes or str"),
        ([b"a", "b", 3], TypeError, r"keys\[2\] must be bytes, bytearray or str, not int"),
        ([None], TypeError, r"keys\[0\] must be bytes, bytearray or str, not NoneType"),
        (np.array([1.0, 2.0]), TypeError, "dtype float64 is not supported"),
        (np.array([True]), TypeError, "dtype bool is not supported"),
        (np.zeros((2, 2), np.int64), ValueError, "keys must be a 1-D array, got 2-D"),
        (np.zeros(0), TypeError, "dtype float64"),
        (np.arange(10)[::2], ValueError, "keys must be a C-contiguous array"),
        (np.array([b"ab", b"cd"], "S2")[::-1], ValueError, "C-contiguous"),
        (np.array([object()], dtype=object), TypeError, r"keys\[0\] .* not object"),
    ],
)
def test_many_bad_input(keys: Any, exc: type[Exception], message: str) -> None:
    with pytest.raises(exc, match=message):
        xxh3_64_many(keys)


def test_many_leaves_refcounts_alone() -> None:
    keys: list[bytes | bytearray | str] = [b"alpha", "beta", bytearray(b"gamma")]
    before = [sys.getrefcount(k) for k in keys]
    for _ in range(1000):
        xxh3_64_many(keys)
    with pytest.raises(TypeError):
        xxh3_64_many([*keys, 1])  # type: ignore[list-item]
    assert [sys.getrefcount(k) for k in keys] == before


def test_public_module_exports() -> None:
    assert sorted(hashing.__all__) == ["xxh3_128", "xxh3_64", "xxh3_64_many"]
    for name in hashing.__all__:
        assert callable(getattr(hashing, name))
        assert getattr(hashing, name).__doc__
