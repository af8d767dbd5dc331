"""The optional dedup step of the loop, made safe against aborted transactions.

A dedup index remembers every key it has been shown. When the transaction that
first showed a key aborts, the key stays remembered although its output was
rolled back; the rewound record would then be dropped as a duplicate of itself
(a loss). So the keys that were new in the open transaction are kept, and on
abort they move to a replay allowance: the next occurrence of such a key (the
replayed record) passes once, later ones are duplicates again.

Keys reach the index as they are (bytes or str), so an
``eoscore.dedup.Deduplicator`` stores them as its seeded 128-bit fingerprints,
the same as the pipeline's dedup (dedup key format 2). Format 1 passed unseeded
64-bit xxh3 hashes (ints): about a 2.7% chance of one collision, so one lost
record, at 10**9 keys, and collisions could be crafted. An index filled in
format 1 holds int keys and is refused (``DedupKeyFormatError``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from eoscore.errors import EosError

__all__ = ["DEDUP_KEY_FORMAT", "DedupIndex", "DedupKeyFormatError", "DedupStep", "KeyFunc"]

KeyFunc = Callable[[Any], "bytes | str"]
_TP = tuple[str, int]
#: How keys reach the index: 2 = the keys themselves (1 was their xxh3-64 hash).
DEDUP_KEY_FORMAT = 2


class DedupKeyFormatError(EosError, ValueError):
    """The dedup index was filled in another dedup key format (see the module doc)."""


class DedupIndex(Protocol):
    """What the loop needs of a deduplicator (``eoscore.dedup.Deduplicator``).

    ``check_and_add`` takes a batch's keys (a list of bytes or str; the
    index fingerprints them) and returns a ``bool`` array, ``True`` where the key is new
    (first occurrence: keep the record), ``False`` for a repeat; every key is
    remembered afterwards.
    """

    def check_and_add(self, keys: list[bytes | str]) -> npt.NDArray[np.bool_]: ...


def _check_format(index: DedupIndex) -> None:
    kinds = getattr(index, "_key_kinds", None)
    if kinds is None or getattr(index, "mode", "exact") != "exact":
        return
    ints, _ = kinds()
    if ints:
        raise DedupKeyFormatError(
            f"dedup: the index holds {ints} int keys, so it was filled in dedup key format 1 "
            "(unseeded 64-bit xxh3 hashes of the keys, eoscore before format "
            f"{DEDUP_KEY_FORMAT}); this version passes the keys themselves (format "
            f"{DEDUP_KEY_FORMAT}: seeded 128-bit fingerprints), which can never match them. "
            "Start from an empty Deduplicator (repeats of keys seen before the upgrade "
            "then pass once)."
        )


#: ``(keys, messages) -> bool per key``: True where the key is new to its index.
CheckFunc = Callable[[list["bytes | str"], Sequence[Any]], Any]


class DedupStep:
    """Filters a batch through ``check`` and keeps the abort bookkeeping.

    ``index`` is one shared index, or ``check`` a function that routes keys to
    per-partition indexes (``eoscore.kafka.dedup_changelog``). With
    ``keep_accepted`` the ``(key, message)`` pairs let through by the last
    :meth:`filter` are in ``accepted`` (for a changelog).
    """

    def __init__(
        self,
        index: DedupIndex | None,
        key: KeyFunc,
        *,
        check: CheckFunc | None = None,
        keep_accepted: bool = False,
    ) -> None:
        if check is None:
            if index is None:
                raise ValueError("DedupStep needs an index or a check function")
            _check_format(index)
            shared = index
            check = lambda keys, _messages: shared.check_and_add(keys)  # noqa: E731
        self._check = check
        self._key = key
        self._keep = keep_accepted
        self.accepted: list[tuple[bytes | str, Any]] = []
        self._new_in_txn: list[tuple[bytes | str, _TP]] = []
        self._sealed: list[tuple[bytes | str, _TP]] = []  # keys of the committing transaction
        self._replay: dict[bytes | str, _TP] = {}

    def filter(self, messages: Sequence[Any]) -> list[Any]:
        """The messages whose key is new (or a replay after an abort)."""
        if not messages:
            self.accepted = []
            return []
        keys = [self._key(m) for m in messages]
        fresh = np.asarray(self._check(keys, messages), dtype=bool).tolist()
        replay = self._replay
        if not replay and all(fresh) and len(set(keys)) == len(keys):
            self._new_in_txn.extend(
                (k, (m.topic(), m.partition())) for k, m in zip(keys, messages, strict=True)
            )
            if self._keep:
                self.accepted = list(zip(keys, messages, strict=True))
            return list(messages)
        kept: list[Any] = []
        accepted: list[tuple[bytes | str, Any]] = []
        in_batch: set[bytes | str] = set()
        for k, new, m in zip(keys, fresh, messages, strict=True):
            # Repeats inside the batch count as duplicates whatever the index says.
            if not new or k in in_batch:
                if k not in replay:
                    in_batch.add(k)
                    continue
                del replay[k]
            in_batch.add(k)
            self._new_in_txn.append((k, (m.topic(), m.partition())))
            kept.append(m)
            if self._keep:
                accepted.append((k, m))
        self.accepted = accepted
        return kept

    def seal(self) -> None:
        """The open transaction starts committing; later keys belong to the next one."""
        self._sealed.extend(self._new_in_txn)
        self._new_in_txn.clear()

    def committed(self) -> None:
        """The sealed transaction committed."""
        self._sealed.clear()

    def aborted(self) -> None:
        """Every transaction not committed (sealed or open) is gone: replay its keys once."""
        for k, tp in self._sealed:
            self._replay[k] = tp
        for k, tp in self._new_in_txn:
            self._replay[k] = tp
        self._sealed.clear()
        self._new_in_txn.clear()

    def revoked(self, partitions: set[_TP]) -> None:
        """Replays of revoked partitions happen elsewhere: forget them here."""
        self._replay = {k: tp for k, tp in self._replay.items() if tp not in partitions}
