"""The native chunk codec: round trips, validation and a decoder fuzz."""

from __future__ import annotations

import math
import pickle
from typing import Any

import numpy as np
import pytest
import xxhash
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from eoscore._native import _statecodec as codec
from eoscore.checkpoint import CorruptCheckpointError
from eoscore.errors import EosError

scalars = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text() | st.binary()
)
hashables = st.recursive(scalars, lambda inner: st.tuples(inner, inner), max_leaves=4)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.lists(inner, max_size=4).map(tuple)
        | st.dictionaries(hashables, inner, max_size=4)
    ),
    max_leaves=20,
)


def same(a: Any, b: Any) -> bool:
    """Equal and of the same types all the way down (1 == 1.0 == True is not enough)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return (
            list(a) == list(b)
            and all(same(a[k], b[k]) for k in a)
            and all(same(x, y) for x, y in zip(a, b, strict=True))
        )
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return bool(a == b)


@given(values)
def test_value_round_trip_keeps_types(value: Any) -> None:
    assert same(codec.decode_value(codec.encode_value(value)), value)


@pytest.mark.parametrize(
    "value",
    [
        0,
        -1,
        2**63 - 1,
        -(2**63),
        2**63,
        -(2**63) - 1,
        2**200,
        -(2**200),
        float("nan"),
        float("-inf"),
        -0.0,
        "",
        "\u00e9\U0001f600",
        b"",
        True,
        False,
        None,
    ],
)
def test_edge_values(value: Any) -> None:
    assert same(codec.decode_value(codec.encode_value(value)), value)


@pytest.mark.parametrize("value", [object(), {1, 2}, bytearray(b"x"), [1, {2: object()}], 1j])
def test_unsupported_types_are_refused_at_write(value: Any) -> None:
    with pytest.raises(TypeError, match="state cannot hold"):
        codec.check_value(value)
    with pytest.raises(TypeError):
        codec.encode_value(value)


def test_no_pickle_in_the_encoding() -> None:
    # Subclasses of allowed types would need pickle to round-trip: refused.
    class MyInt(int):
        pass

    with pytest.raises(TypeError):
        codec.encode_value(MyInt(3))
    assert b"pickle" not in codec.encode_value({"a": 1})
    assert codec.encode_value(1) != pickle.dumps(1)


def test_too_deep_nesting_is_refused() -> None:
    deep: Any = 1
    for _ in range(100):
        deep = [deep]
    with pytest.raises(ValueError, match="nested deeper"):
        codec.check_value(deep)


def records(n: int) -> list[tuple[Any, Any]]:
    return [(f"user-{i}", {"n": i, "tags": ["a", "b"][: i % 3], "w": i / 3}) for i in range(n)]


def test_records_chunk_sizes_and_round_trip() -> None:
    enc = codec.ChunkEncoder(64 << 10)
    items = records(20000)
    chunks = list(enc.records(items))
    assert len(chunks) > 3
    dec = codec.ChunkDecoder()
    out: list[tuple[Any, Any]] = []
    for chunk in chunks:
        kind, _codec, raw, stored, count, _sum = codec.read_header(chunk)
        assert kind == codec.KIND_RECORDS
        assert len(chunk) == codec.HEADER_SIZE + stored
        assert raw < (64 << 10) + 200  # closes right after crossing chunk_size
        out += dec.records(chunk)
        assert count == len(dec.records(chunk))
    assert out == items


def test_checksum_is_xxh3_of_header_and_payload() -> None:
    chunk = next(codec.ChunkEncoder().records(records(10)))
    seed = xxhash.xxh3_64_intdigest(chunk[:24])
    want = xxhash.xxh3_64_intdigest(chunk[codec.HEADER_SIZE :], seed)
    assert codec.read_header(chunk)[5] == want
    assert codec.checksum(b"abc", 7) == xxhash.xxh3_64_intdigest(b"abc", 7)


def test_columns_round_trip_and_split() -> None:
    n = 100_000
    keys = np.arange(n, dtype=np.int64) * 3 - 7
    a = np.arange(n, dtype=np.int64) ** 2
    b = np.linspace(0, 1, n)
    chunks = list(codec.ChunkEncoder(64 << 10).columns(keys, [a, b]))
    assert len(chunks) == -(-n // ((64 << 10) - 8) * 24) or len(chunks) > 1
    dec = codec.ChunkDecoder()
    parts = [dec.columns(c) for c in chunks]
    np.testing.assert_array_equal(np.concatenate([p[0] for p in parts]), keys)
    np.testing.assert_array_equal(np.concatenate([p[1][0] for p in parts]), a)
    np.testing.assert_array_equal(np.concatenate([p[1][1] for p in parts]), b)
    tomb = list(codec.ChunkEncoder().columns(keys[:10]))
    assert codec.read_header(tomb[0])[0] == codec.KIND_COLUMN_KEYS
    k, cols = dec.columns(tomb[0])
    assert cols == [] and list(k) == list(keys[:10])


def test_column_arguments_are_checked() -> None:
    enc = codec.ChunkEncoder()
    keys = np.arange(4, dtype=np.int64)
    with pytest.raises(TypeError, match="dtype"):
        list(enc.columns(keys, [np.zeros(4, np.int32)]))
    with pytest.raises(ValueError, match="rows"):
        list(enc.columns(keys, [np.zeros(5, np.int64)]))
    with pytest.raises(ValueError, match="at most"):
        list(enc.columns(keys, [np.zeros(4, np.int64)] * 8))


def test_incompressible_payload_is_stored_raw() -> None:
    rng = np.random.default_rng(1)
    blob = rng.bytes(100_000)
    chunk = next(codec.ChunkEncoder().records([(1, blob)]))
    assert codec.read_header(chunk)[1] == codec.CODEC_RAW
    assert codec.ChunkDecoder().records(chunk) == [(1, blob)]


@pytest.mark.parametrize("size", [1000, 2 << 20])
def test_chunk_size_bounds(size: int) -> None:
    with pytest.raises(ValueError, match="chunk_size"):
        codec.ChunkEncoder(size)


def test_none_for_typed_arguments() -> None:
    dec = codec.ChunkDecoder()
    for fn in (dec.records, dec.keys, dec.columns, dec.header, codec.read_header):
        with pytest.raises((TypeError, ValueError)):
            fn(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        codec.ChunkEncoder(None)  # type: ignore[arg-type]


def test_error_is_eos_and_value_error() -> None:
    with pytest.raises(CorruptCheckpointError) as info:
        codec.ChunkDecoder().records(b"EOSK" + b"\0" * 40)
    assert isinstance(info.value, EosError) and isinstance(info.value, ValueError)


def test_wrong_kind_and_wrong_checksum_are_refused() -> None:
    chunk = next(codec.ChunkEncoder().records(records(5)))
    dec = codec.ChunkDecoder()
    with pytest.raises(CorruptCheckpointError, match="expected a columns chunk"):
        dec.columns(chunk)
    with pytest.raises(CorruptCheckpointError, match="manifest"):
        dec.records(chunk, expect_checksum=codec.read_header(chunk)[5] ^ 1)


# ---- fuzz: damaged real chunks never decode to anything ----------------------

_REAL = [
    next(codec.ChunkEncoder().records(records(300))),
    next(codec.ChunkEncoder(compress=False).records(records(50))),
    next(codec.ChunkEncoder().keys([f"k{i}" for i in range(200)] + [1, (2, 3)])),
    next(
        codec.ChunkEncoder().columns(
            np.arange(2000, dtype=np.int64), [np.arange(2000, dtype=np.float64)]
        )
    ),
]


def _decode(chunk: bytes) -> object:
    dec = codec.ChunkDecoder()
    kind = codec.read_header(chunk)[0]
    if kind == codec.KIND_RECORDS:
        return dec.records(chunk)
    if kind == codec.KIND_KEYS:
        return dec.keys(chunk)
    return dec.columns(chunk)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(range(len(_REAL))),
    st.lists(st.tuples(st.integers(0, 10**9), st.integers(1, 255)), min_size=1, max_size=4),
)
def test_fuzz_bit_flips_are_detected(which: int, flips: list[tuple[int, int]]) -> None:
    chunk = bytearray(_REAL[which])
    for pos, mask in flips:
        chunk[pos % len(chunk)] ^= mask
    assume(chunk != _REAL[which])  # two flips may cancel out
    with pytest.raises(CorruptCheckpointError):
        _decode(bytes(chunk))


@settings(max_examples=200)
@given(st.sampled_from(range(len(_REAL))), st.integers(0, 10**9), st.binary(max_size=8))
def test_fuzz_truncation_and_extension_are_detected(which: int, cut: int, extra: bytes) -> None:
    real = _REAL[which]
    with pytest.raises(CorruptCheckpointError):
        _decode(real[: cut % len(real)])
    if extra:
        with pytest.raises(CorruptCheckpointError, match="after its payload"):
            _decode(real + extra)


def _reseal(chunk: bytearray) -> bytes:
    """Recompute a chunk's checksum: damage the checksum cannot see."""
    seed = xxhash.xxh3_64_intdigest(bytes(chunk[:24]))
    chunk[24:32] = xxhash.xxh3_64_intdigest(bytes(chunk[32:]), seed).to_bytes(8, "little")
    return bytes(chunk)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 10**9), st.integers(1, 255))
def test_fuzz_resealed_garbage_never_crashes(pos: int, mask: int) -> None:
    # With a valid checksum over damaged bytes, the structural checks must
    # still either refuse the chunk or decode it without crashing.
    chunk = bytearray(_REAL[1])  # uncompressed: the parser sees the damage
    chunk[32 + pos % (len(chunk) - 32)] ^= mask
    try:
        _decode(_reseal(chunk))
    except CorruptCheckpointError:
        pass


@settings(max_examples=500)
@given(st.binary(max_size=64))
def test_fuzz_decode_value_on_arbitrary_bytes(data: bytes) -> None:
    try:
        value = codec.decode_value(data)
    except CorruptCheckpointError:
        return
    codec.check_value(value)  # anything decoded is a legal value


@settings(max_examples=50)
@given(st.lists(st.tuples(st.text(max_size=40), st.text(max_size=40)), max_size=300))
def test_short_string_cache_never_mixes_strings(pairs: list[tuple[str, str]]) -> None:
    # Repeats and slot collisions alike: the decoder's string cache must only
    # ever return an equal string.
    items = pairs + pairs[::-1] + [(f"k{i}", f"v{i % 7}") for i in range(2000)]
    dec = codec.ChunkDecoder()
    got: list[tuple[Any, Any]] = []
    direct: dict[Any, Any] = {}
    for chunk in codec.ChunkEncoder(64 << 10).records(items):
        got += dec.records(chunk)
        dec.records_into(chunk, direct)
    assert got == items
    assert direct == dict(items)


def test_records_into_validates_first() -> None:
    chunk = bytearray(next(codec.ChunkEncoder().records(records(100))))
    chunk[-1] ^= 1
    target: dict[Any, Any] = {}
    with pytest.raises(CorruptCheckpointError, match="checksum"):
        codec.ChunkDecoder().records_into(bytes(chunk), target)
    assert target == {}


def test_python_lz4_fallback_reads_and_writes_the_same_chunks() -> None:
    items = records(3000)
    native = list(codec.ChunkEncoder(64 << 10).records(items))
    previous = codec._use_native_lz4(False)
    try:
        fallback = list(codec.ChunkEncoder(64 << 10).records(items))
        dec = codec.ChunkDecoder()
        assert [x for c in native for x in dec.records(c)] == items
        bad = bytearray(native[0])
        bad[40] ^= 1
        with pytest.raises(CorruptCheckpointError):
            dec.records(bytes(bad))
    finally:
        codec._use_native_lz4(previous)
    dec = codec.ChunkDecoder()
    assert [x for c in fallback for x in dec.records(c)] == items  # read natively


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def test_encode_decode_loops_do_not_leak() -> None:
    items = records(3000)
    keys = np.arange(50_000, dtype=np.int64)
    enc, dec = codec.ChunkEncoder(64 << 10), codec.ChunkDecoder()

    def once() -> None:
        for chunk in enc.records(items):
            dec.records(chunk)
            dec.records_into(chunk, {})
        for chunk in enc.columns(keys, [keys]):
            dec.columns(chunk)
        bad = b"EOSK" + bytes(40)
        with pytest.raises(CorruptCheckpointError):
            dec.records(bad)

    for _ in range(10):
        once()
    before = _rss()
    for _ in range(60):  # a leak of one object per record would show as > 20 MB
        once()
    assert _rss() - before < 8 << 20
