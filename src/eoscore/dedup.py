"""Deduplication at stream speed: Bloom filter, exact key set, and a TTL deduplicator.

* :class:`BloomFilter`: cache-line-blocked Bloom filter (no false negatives).
* :class:`ExactKeySet`: native open-addressing set of int, bytes and str keys.
* :class:`Deduplicator`: marks first occurrences, with TTL generations so memory stays
  bounded; exact by default, or approximate (Bloom only: drops about ``fp_rate`` of
  new keys as false duplicates).

All three take batches (numpy integer or ``S`` arrays, lists of keys) that cross into
native code once and run without the GIL, and all three snapshot to checksummed bytes
(``snapshot()`` / ``restore()``; bad bytes raise
:class:`~eoscore.errors.CorruptSnapshotError`). Design and numbers: ``docs/dedup.md``.
"""

from __future__ import annotations

from eoscore._native._bloom import BloomFilter
from eoscore._native._dedup import Deduplicator
from eoscore._native._keyset import ExactKeySet

__all__ = ["BloomFilter", "Deduplicator", "ExactKeySet"]
