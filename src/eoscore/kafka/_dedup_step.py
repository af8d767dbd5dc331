"""The optional dedup step of the loop, made safe against aborted transactions.

A dedup index remembers every key it has been shown. When the transaction that
first showed a key aborts, the key stays remembered although its output was
rolled back; the rewound record would then be dropped as a duplicate of itself
(a loss). So the keys that were new in the open transaction are kept, and on
abort they move to a replay allowance: the next occurrence of such a key (the
replayed record) passes once, later ones are duplicates again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from eoscore.hashing import xxh3_64_many

__all__ = ["DedupIndex", "DedupStep", "KeyFunc"]

KeyFunc = Callable[[Any], "bytes | str"]
_TP = tuple[str, int]


class DedupIndex(Protocol):
    """What the loop needs of a deduplicator (``eoscore.dedup.Deduplicator``).

    ``check_and_add`` takes the xxh3-64 hashes of a batch's keys as a
    ``uint64`` array and returns a ``bool`` array, ``True`` where the key is new
    (first occurrence: keep the record), ``False`` for a repeat; every key is
    remembered afterwards.
    """

    def check_and_add(self, keys: npt.NDArray[np.uint64]) -> npt.NDArray[np.bool_]: ...


class DedupStep:
    def __init__(self, index: DedupIndex, key: KeyFunc) -> None:
        self._index = index
        self._key = key
        self._new_in_txn: list[tuple[int, _TP]] = []
        self._replay: dict[int, _TP] = {}

    def filter(self, messages: Sequence[Any]) -> list[Any]:
        """The messages whose key is new (or a replay after an abort)."""
        if not messages:
            return []
        hashes = xxh3_64_many([self._key(m) for m in messages])
        seen = ~np.asarray(self._index.check_and_add(hashes), dtype=bool)
        # Repeats inside the batch count as duplicates whatever the index says.
        first = np.zeros(len(hashes), dtype=bool)
        first[np.unique(hashes, return_index=True)[1]] = True
        seen |= ~first
        if not self._replay and not seen.any():
            self._new_in_txn.extend(
                (int(h), (m.topic(), m.partition()))
                for h, m in zip(hashes.tolist(), messages, strict=True)
            )
            return list(messages)
        kept: list[Any] = []
        replay = self._replay
        for h, dup, m in zip(hashes.tolist(), seen.tolist(), messages, strict=True):
            if dup:
                if h not in replay:
                    continue
                del replay[h]
            self._new_in_txn.append((h, (m.topic(), m.partition())))
            kept.append(m)
        return kept

    def committed(self) -> None:
        self._new_in_txn.clear()

    def aborted(self) -> None:
        for h, tp in self._new_in_txn:
            self._replay[h] = tp
        self._new_in_txn.clear()

    def revoked(self, partitions: set[_TP]) -> None:
        """Replays of revoked partitions happen elsewhere: forget them here."""
        self._replay = {h: tp for h, tp in self._replay.items() if tp not in partitions}
