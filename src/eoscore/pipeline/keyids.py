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

    def release(self, kids: I64) -> None:
        """One state entry fewer holds each of ``kids``; forget keys held by none."""
        refs = self._refs
        scatter_sum(refs, kids, np.full(kids.shape[0], -1, np.int64))
        gone = np.unique(kids[refs[kids] <= 0])
        if gone.shape[0]:
            ids, keys, delete = self._ids, self._keys, self.state.delete
            for kid in gone.tolist():
                del ids[keys[kid]]
                keys[kid] = None
                delete(kid)
            self._free.extend(gone.tolist())

    def forget_unheld(self, kids: I64 | None = None) -> None:
        """Forget keys among ``kids`` (default: all) that no entry holds
        (interned for records that were all late)."""
        limit = len(self._keys)
        if kids is None:
            candidates = np.flatnonzero(self._refs[:limit] == 0)
        else:
            candidates = np.unique(kids)
            candidates = candidates[self._refs[candidates] == 0]
        for kid in candidates.tolist():
            key = self._keys[kid]
            if key is not None and self._ids.get(key) == kid:
                del self._ids[key]
                self._keys[kid] = None
                self.state.delete(kid)
                self._free.append(kid)

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
