"""The processor's dedup step: seeded 128-bit fingerprints, format-1 indexes refused."""

from __future__ import annotations

import pytest

from eoscore.dedup import Deduplicator
from eoscore.errors import EosError
from eoscore.hashing import xxh3_64_many
from eoscore.kafka._dedup_step import DEDUP_KEY_FORMAT, DedupKeyFormatError, DedupStep


class Msg:
    def __init__(self, key: bytes, partition: int = 0) -> None:
        self._key = key
        self._partition = partition

    def key(self) -> bytes:
        return self._key

    def topic(self) -> str:
        return "t"

    def partition(self) -> int:
        return self._partition


def _keys(msgs: list[Msg]) -> list[bytes]:
    return [m.key() for m in msgs]


def test_keys_reach_the_deduplicator_as_fingerprints() -> None:
    index = Deduplicator(100)
    step = DedupStep(index, lambda m: m.key())
    assert _keys(step.filter([Msg(b"a"), Msg(b"b"), Msg(b"a")])) == [b"a", b"b"]
    assert index._key_kinds() == (0, 2)  # no int (64-bit hash) keys: 128-bit fingerprints
    step.seal()
    step.committed()
    assert _keys(step.filter([Msg(b"c"), Msg(b"b")])) == [b"c"]
    step.aborted()  # c's transaction aborted: its replay passes once
    assert _keys(step.filter([Msg(b"c"), Msg(b"c"), Msg(b"a")])) == [b"c"]
    assert not index.check_and_add([b"a", b"b", b"c"]).any()


def test_an_index_filled_in_format_1_is_refused() -> None:
    old = Deduplicator(100)
    old.check_and_add(xxh3_64_many([b"a", b"b"]))  # what format 1 stored
    restored = Deduplicator.restore(old.snapshot())
    with pytest.raises(DedupKeyFormatError, match="format 1") as info:
        DedupStep(restored, lambda m: m.key())
    assert isinstance(info.value, EosError) and isinstance(info.value, ValueError)
    assert f"format {DEDUP_KEY_FORMAT}" in str(info.value)
