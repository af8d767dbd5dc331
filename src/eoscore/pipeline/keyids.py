"""Dense int64 ids for the keys of a keyed operator, so native state can hold them.

Keys are interned with one dict probe each (``intern_keys``, native): exact,
since equality is Python's, not a fingerprint's. Each id counts the state
entries that hold it; when the count drops to zero the key is forgotten and
its id reused, so a stream of ever-new keys does not grow the table. The
id -> key map is a checkpointed ``ValueState`` (incremental: only new and
forgotten keys are written).
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from eoscore._native._aggregate import intern_keys, scatter_count, scatter_sum
from eoscore.checkpoint.errors import CorruptCheckpointError
from eoscore.pipeline.errors import PipelineError
from eoscore.state import ValueState

__all__ = ["MAX_KEYS", "KeyIds"]

I64 = npt.NDArray[np.int64]

#: Live keys one operator can hold (ids must fit in 31 bits of a composite key).
MAX_KEYS = 2**31 - 1
#: Keys held by no entry that may stay interned (more are forgotten in bulk).
IDLE_SLACK = 4096


class KeyIds:
    """Key <-> id for one operator, with reference counts per id."""

    def __init__(self, name: str) -> None:
        self.state = ValueState(f"{name}.keys")
        self._ids: dict[Hashable, int] = {}
        self._keys: list[Hashable | None] = []
        self._free: list[int] = []
        self._refs = np.zeros(1024, np.int64)

    def __len__(self) -> int:
        return len(self._ids)

    def ids(self, keys: list[Any]) -> I64:
        """The id of each key, interning new keys (held by nothing until ``hold``)."""
        fresh: list[int] = []
        out = intern_keys(keys, self._ids, self._keys, self._free, fresh)
        if fresh:
            if len(self._keys) > MAX_KEYS:
                raise PipelineError(f"more than {MAX_KEYS} live keys in one operator")
            self.state.put_many({kid: self._keys[kid] for kid in fresh})
            if len(self._keys) > self._refs.shape[0]:
                grown = np.zeros(max(len(self._keys), 2 * self._refs.shape[0]), np.int64)
                grown[: self._refs.shape[0]] = self._refs
                self._refs = grown
        return out

    def key(self, kid: int) -> Any:
        return self._keys[kid]

    def keys_of(self, kids: I64) -> list[Any]:
        keys = self._keys
        return [keys[k] for k in kids.tolist()]

    def hold(self, kids: I64) -> None:
        """One more state entry holds each of ``kids``."""
        scatter_count(self._refs, kids)

    def release(self, kids: I64, entries: int) -> None:
        """One state entry fewer holds each of ``kids``; ``entries`` remain in all.

        A key held by nothing stays interned for a while (keys recur from one
        window to the next: forgetting and re-interning them would write the
        key state twice per window). Each held key has an entry, so once the
        interned keys outnumber ``entries`` twice over (plus ``IDLE_SLACK``),
        most are unheld and they are forgotten in one pass: amortised O(1)
        per released key, and at most about twice the keys in use are kept.
        """
        scatter_sum(self._refs, kids, np.full(kids.shape[0], -1, np.int64))
        if len(self._ids) > 2 * entries + IDLE_SLACK:
            self.forget_unheld()

    def forget_unheld(self) -> int:
        """Forget every key no entry holds; how many."""
        limit = len(self._keys)
        keys, ids, delete, forgotten = self._keys, self._ids, self.state.delete, []
        for kid in np.flatnonzero(self._refs[:limit] <= 0).tolist():
            key = keys[kid]
            if key is not None:
                del ids[key]
                keys[kid] = None
                delete(kid)
                forgotten.append(kid)
        self._free.extend(forgotten)
        return len(forgotten)

    def restore(self, held: I64) -> None:
        """Rebuild from the restored state; ``held``: the key id of every live entry."""
        self._ids, self._keys, self._free = {}, [], []
        items = self.state.items()
        limit = 1 + max((cast(int, kid) for kid, _ in items), default=-1)
        self._keys = [None] * limit
        for kid, key in items:
            if not isinstance(kid, int) or kid < 0:
                raise CorruptCheckpointError(f"state {self.state.name!r}: bad key id {kid!r}")
            self._keys[kid] = key
            self._ids[key] = kid
        self._free = [k for k in range(limit - 1, -1, -1) if self._keys[k] is None]
        self._refs = np.zeros(max(1024, limit), np.int64)
        present = np.zeros(limit, np.bool_)
        present[[k for k in range(limit) if self._keys[k] is not None]] = True
        if held.shape[0] and (
            int(held.min()) < 0 or int(held.max()) >= limit or not present[held].all()
        ):
            raise CorruptCheckpointError(
                f"state {self.state.name!r}: entries name key ids it does not hold"
            )
        scatter_count(self._refs, held)
        self.forget_unheld()
