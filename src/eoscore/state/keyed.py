"""Keyed value and map state: Python dicts with dirty tracking and TTL.

Keys and values are ints, floats, bools, None, strs, bytes, and lists, tuples
and dicts of those (keys must also be hashable). They are checked on write,
so a value that could not be checkpointed fails at ``put``, not at the next
checkpoint. Stored values are treated as immutable: ``put`` a new value rather
than mutating one in place (an in-place change is invisible to the dirty
tracking). ``MapState`` copies a user map before its first change after a
barrier, so an in-flight snapshot never sees later writes.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable, Iterable, Iterator, Mapping
from collections.abc import Set as AbstractSet
from itertools import chain, compress, count, islice, repeat
from operator import is_, is_not, itemgetter, not_
from typing import Any

import numpy as np
import numpy.typing as npt

from eoscore._native._statecodec import ChunkEncoder, check_value
from eoscore.checkpoint.errors import CorruptCheckpointError
from eoscore.errors import RecordTooLargeError
from eoscore.state.ttl import CLEANUP_PER_WRITE, Expiry, Ttl

__all__ = ["MapState", "ValueState"]

_MISSING: Any = object()
_READ_BATCH = 4096  # keys a snapshot reads per step on the checkpoint thread


#: The largest entry a checkpoint chunk holds (the codec's limit): a bytes or str
#: value beyond it is refused at ``put``, where its operator is known; anything
#: else that encodes too large fails the checkpoint with the same error.
_MAX_ENTRY = 64 << 20


class _FrozenRecords:
    """The state as it was at the barrier, read on the checkpoint thread.

    An incremental view copies nothing at the barrier (copy-on-write): it
    takes over the dirty set and reads the live dicts; before the processing
    thread changes one of those keys, the state saves the key's value and
    stamp as they were (``_KeyedState._preserve``) and the view reads that
    pre-image instead. A full view is a shallow copy (every key would need a
    pre-image while it is written: measured slower than the copy).
    """

    def __init__(self, owner: _KeyedState, incremental: bool) -> None:
        self._owner: _KeyedState | None = owner
        stamps = owner._expiry.stamps if owner._expiry is not None else None
        self.incremental = incremental
        self._data: dict[Hashable, Any]
        self._stamps: Mapping[Hashable, float] | None
        if incremental:
            self._data, self._stamps = owner._data, stamps
            #: Keys read through the live dicts (preserved before they change).
            self.keys: AbstractSet[Hashable] = owner._dirty
        else:
            self._data = dict(owner._data)
            self._stamps = dict(stamps) if stamps is not None else None
            self.keys = frozenset()
        #: key -> value (or _MISSING) at the barrier, saved before the key's first change.
        self.pre: dict[Hashable, Any] = {}
        #: key -> stamp at the barrier (TTL only), saved before ``pre``. Two flat
        #: dicts rather than tuples: nothing new for the cyclic GC to traverse.
        self.pre_stamps: dict[Hashable, float | None] = {}
        self.entries = len(self.keys) if incremental else len(self._data)
        self._garbage: object = None

    def chunks(self, encoder: ChunkEncoder) -> Iterator[bytes]:
        deletes: list[Hashable] = []
        yield from encoder.records(self._records(deletes))
        yield from encoder.keys(deletes)

    def _records(self, deletes: list[Hashable]) -> Iterator[tuple[Hashable, Any]]:
        """(key, value or (stamp, value)) at the barrier; fills ``deletes`` on the way."""
        data, stamps = self._data, self._stamps
        if not self.incremental:
            if stamps is None:
                return iter(data.items())
            times = map(stamps.__getitem__, data)
            return zip(data, zip(times, data.values(), strict=True), strict=True)
        return chain.from_iterable(self._read(deletes))  # no Python frame per record

    def _read(self, deletes: list[Hashable]) -> Iterator[Iterable[tuple[Hashable, Any]]]:
        data, stamps, pre, pre_stamps = self._data, self._stamps, self.pre, self.pre_stamps
        keys = iter(self.keys)
        while batch := list(islice(keys, _READ_BATCH)):
            # The live value first, then the pre-image: one is saved before the
            # key changes, so a key without one had not changed when read.
            values = list(map(data.get, batch, repeat(_MISSING)))
            times = list(map(stamps.get, batch)) if stamps is not None else None
            for i in compress(count(), map(pre.__contains__, batch)):
                values[i] = pre[batch[i]]
                if times is not None:
                    times[i] = pre_stamps[batch[i]]
            if any(map(is_, values, repeat(_MISSING))):  # gone at the barrier: a delete
                keep = list(map(is_not, values, repeat(_MISSING)))
                deletes.extend(compress(batch, map(not_, keep)))
                batch = list(compress(batch, keep))
                values = list(compress(values, keep))
                times = list(compress(times, keep)) if times is not None else None
            pairs = values if times is None else zip(times, values, strict=True)
            yield zip(batch, pairs, strict=True)

    def release(self) -> None:
        owner, self._owner = self._owner, None
        if owner is not None:
            owner._close_view(self)
        self.pre = {}
        self.pre_stamps = {}
        self.keys = frozenset()  # the dirty set is freed here, on the checkpoint thread
        self._data = {}
        self._stamps = None
        self._garbage = None


class _RecordsRestorer:
    def __init__(self, owner: _KeyedState, timed: bool) -> None:
        self._owner = owner
        self._timed = timed
        self._data: dict[Hashable, Any] = {}
        self._stamps: dict[Hashable, float] = {}

    def begin_segment(self, base: bool) -> None:
        pass

    def records_dict(self) -> dict[Any, Any] | None:
        return None if self._timed else self._data

    def records(self, items: list[tuple[Any, Any]]) -> None:
        data = self._data
        if self._timed:
            stamps = self._stamps
            for key, (stamp, value) in items:
                data[key] = value
                stamps[key] = stamp
        else:
            data.update(items)

    def deleted_keys(self, keys: list[Any]) -> None:
        for key in keys:
            self._data.pop(key, None)
            self._stamps.pop(key, None)

    def columns(self, keys: npt.NDArray[np.int64], columns: list[npt.NDArray[Any]]) -> None:
        raise CorruptCheckpointError("columnar chunk in a keyed state's checkpoint")

    def deleted_column_keys(self, keys: npt.NDArray[np.int64]) -> None:
        raise CorruptCheckpointError("columnar chunk in a keyed state's checkpoint")

    def count(self) -> int:
        return len(self._data)

    def install(self) -> None:
        self._owner._install(self._data, self._stamps)


class _KeyedState:
    state_type = "keyed"

    def __init__(self, name: str, *, ttl: Ttl | None = None) -> None:
        self.name = name
        self.ttl = ttl
        self._data: dict[Hashable, Any] = {}
        self._dirty: set[Hashable] = set()
        self._expiry = Expiry(ttl) if ttl is not None else None
        # Incremental snapshots still being read: their keys are preserved before a change.
        self._cow: tuple[_FrozenRecords, ...] = ()
        self._frozen_views = 0  # snapshots of any kind still being read
        self._cow_lock = threading.Lock()  # guards _cow and _frozen_views (freeze, release)

    # ---- reading -------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return self._live(key)

    def _live(self, key: Any) -> bool:
        if key not in self._data:
            return False
        if self._expiry is not None and self._expiry.is_expired(key):
            self.delete(key)
            return False
        return True

    def keys(self) -> list[Hashable]:
        """Live keys (expired ones are dropped first)."""
        self.expire()
        return list(self._data)

    # ---- writing -------------------------------------------------------------

    def _written(self, key: Hashable) -> None:
        self._dirty.add(key)
        expiry = self._expiry
        if expiry is not None:
            expiry.touch(key)
            for old in expiry.due(CLEANUP_PER_WRITE):
                self.delete(old)

    def _preserve(self, key: Hashable) -> None:
        """Save key's value and stamp for open snapshots; call before changing either."""
        stamps = self._expiry.stamps if self._expiry is not None else None
        for view in self._cow:
            pre = view.pre
            if key not in pre and key in view.keys:
                if stamps is not None:  # first: a reader that finds pre[key] reads it
                    view.pre_stamps[key] = stamps.get(key)
                pre[key] = self._data.get(key, _MISSING)

    def delete(self, key: Hashable) -> bool:
        """Remove key; True if it was present."""
        if self._cow:
            self._preserve(key)
        if self._data.pop(key, _MISSING) is _MISSING:
            return False
        self._dirty.add(key)
        if self._expiry is not None:
            self._expiry.forget(key)
        return True

    def advance_time(self, t: float) -> None:
        """Move event time to t (for TTL by event time); expired keys become invisible."""
        if self._expiry is not None:
            self._expiry.clock.advance(t)

    def expire(self, limit: int | None = None) -> int:
        """Delete expired keys now (at most ``limit``); return how many."""
        if self._expiry is None:
            return 0
        due = self._expiry.due(limit)
        for key in due:
            self.delete(key)
        return len(due)

    def clear(self) -> None:
        for key in list(self._data):
            self.delete(key)

    # ---- checkpoint protocol -------------------------------------------------

    def describe(self) -> dict[str, Any]:
        return {"ttl": self.ttl.to_json() if self.ttl is not None else None}

    def dirty_count(self) -> int:
        return len(self._dirty)

    def dirty_bound(self) -> int:
        return len(self._dirty)

    def freeze(self, incremental: bool) -> _FrozenRecords:
        """Incremental: O(1), copy-on-write. Full: a shallow copy of the dicts."""
        frozen = _FrozenRecords(self, incremental)
        if not incremental:
            frozen._garbage = self._dirty  # freed on the checkpoint thread, not at the barrier
        self._dirty = set()
        with self._cow_lock:
            self._frozen_views += 1
            if incremental:
                self._cow = (*self._cow, frozen)
        self._barrier()
        return frozen

    def _close_view(self, view: _FrozenRecords) -> None:
        with self._cow_lock:  # a new tuple: _preserve may be iterating the old one
            self._frozen_views -= 1
            self._cow = tuple(v for v in self._cow if v is not view)

    def _barrier(self) -> None:
        """Hook: a snapshot was just taken."""

    def restorer(self, meta: Mapping[str, Any], expected: int = 0) -> _RecordsRestorer:
        saved = Ttl.from_json(meta.get("ttl"))
        return _RecordsRestorer(self, timed=saved is not None)

    def _install(self, data: dict[Hashable, Any], stamps: dict[Hashable, float]) -> None:
        with self._cow_lock:  # open views keep the old dicts, which no longer change
            self._cow = ()
        self._data = data
        self._dirty = set()
        if self._expiry is not None:
            now = self._expiry.clock.now()
            self._expiry.stamps = OrderedDict(
                sorted(((k, stamps.get(k, now)) for k in data), key=itemgetter(1))
            )
            if stamps and self._expiry.clock.event:
                self._expiry.clock.advance(max(stamps.values()))
        self._barrier()


class ValueState(_KeyedState):
    """One value per key, e.g. the last event seen for each user."""

    state_type = "value"

    def get(self, key: Hashable, default: Any = None) -> Any:
        value = self._data.get(key, _MISSING)
        if value is _MISSING or (self._expiry is not None and not self._live(key)):
            return default
        return value

    def put(self, key: Hashable, value: Any) -> None:
        check_value(key)
        check_value(value)
        if isinstance(value, (bytes, str)) and len(value) > _MAX_ENTRY:
            raise RecordTooLargeError(len(value), _MAX_ENTRY, key=key, state=self.name)
        if self._cow:
            self._preserve(key)
        self._data[key] = value
        self._written(key)

    def put_many(self, items: Mapping[Any, Any]) -> None:
        """``put`` of every pair: one call per batch for operators that fold records."""
        if self._expiry is not None:
            for key, value in items.items():
                self.put(key, value)
            return
        for key, value in items.items():
            check_value(key)
            check_value(value)
            if isinstance(value, (bytes, str)) and len(value) > _MAX_ENTRY:
                raise RecordTooLargeError(len(value), _MAX_ENTRY, key=key, state=self.name)
        if self._cow:
            for key in items:
                self._preserve(key)
        self._data.update(items)
        self._dirty.update(items)

    def view(self) -> Mapping[Hashable, Any]:
        """The live values, read-only (no TTL check: for states without TTL)."""
        return self._data

    def items(self) -> list[tuple[Hashable, Any]]:
        """Live (key, value) pairs."""
        self.expire()
        return list(self._data.items())


class MapState(_KeyedState):
    """A map per key (user key -> value), e.g. open sessions per user."""

    state_type = "map"

    def __init__(self, name: str, *, ttl: Ttl | None = None) -> None:
        super().__init__(name, ttl=ttl)
        self._owned: set[Hashable] = set()  # keys whose map was copied since the barrier

    def _barrier(self) -> None:
        self._owned = set()

    def _for_write(self, key: Hashable) -> dict[Any, Any]:
        if self._cow:
            self._preserve(key)
        inner: dict[Any, Any] | None = self._data.get(key)
        if inner is None:
            inner = self._data[key] = {}
            self._owned.add(key)
        elif self._frozen_views and key not in self._owned:
            inner = self._data[key] = dict(inner)
            self._owned.add(key)
        return inner

    def get(self, key: Hashable, user_key: Hashable, default: Any = None) -> Any:
        if not self._live(key):
            return default
        return self._data[key].get(user_key, default)

    def contains(self, key: Hashable, user_key: Hashable) -> bool:
        return self._live(key) and user_key in self._data[key]

    def put(self, key: Hashable, user_key: Hashable, value: Any) -> None:
        check_value(key)
        check_value(user_key)
        check_value(value)
        self._live(key)  # an expired map starts over
        self._for_write(key)[user_key] = value
        self._written(key)

    def remove(self, key: Hashable, user_key: Hashable) -> bool:
        """Remove one user key; an emptied map removes the key. True if it was present."""
        if not self._live(key) or user_key not in self._data[key]:
            return False
        inner = self._for_write(key)
        del inner[user_key]
        if inner:
            self._written(key)
        else:
            self.delete(key)
        return True

    def entries(self, key: Hashable) -> dict[Any, Any]:
        """A copy of the key's map (empty if absent)."""
        if not self._live(key):
            return {}
        return dict(self._data[key])
