"""Columnar numeric state: int64 keys, numpy columns, a native key index.

This is what aggregations use (counters, sums): updates and reads take whole
arrays of keys, cross into native code once per batch, and never build a
Python object per key. Each key owns a row ("slot") in every column; freed
rows are reused. Dirty tracking is one flag per row plus the keys deleted
since the last barrier, so an incremental checkpoint writes exactly the rows
that changed.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from eoscore._native._aggregate import scatter_sum
from eoscore._native._keyindex import KeyIndex
from eoscore._native._statecodec import ChunkEncoder
from eoscore.checkpoint.errors import CorruptCheckpointError
from eoscore.state.ttl import Clock, Ttl

__all__ = ["ColumnarState"]

I64 = npt.NDArray[np.int64]
Array = npt.NDArray[Any]

_DTYPES = {"int64": np.dtype(np.int64), "float64": np.dtype(np.float64)}
_MAX_COLUMNS = 7  # chunk format limit (docs/checkpoint-format.md)
_REGION_SHIFT = 16  # copy-on-write regions of 65,536 rows
_REGION = 1 << _REGION_SHIFT
_CLEANUP_FACTOR = 2  # TTL: rows scanned per written row during normal work


def _keys(keys: Any) -> I64:
    arr = np.ascontiguousarray(keys, dtype=np.int64)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise ValueError("keys must be a 1-D array of int64")
    return arr


class _FrozenColumns:
    """An incremental snapshot: copies of the changed rows and the deleted keys."""

    def __init__(self, keys: I64, columns: list[Array], deletes: I64) -> None:
        self._keys = keys
        self._columns = columns
        self._deletes = deletes
        self.incremental = True
        self.entries = int(keys.shape[0] + deletes.shape[0])

    def chunks(self, encoder: ChunkEncoder) -> Iterator[bytes]:
        if self._keys.shape[0]:
            yield from encoder.columns(self._keys, self._columns)
        if self._deletes.shape[0]:
            yield from encoder.columns(self._deletes)

    def release(self) -> None:
        self._keys = self._deletes = np.empty(0, np.int64)
        self._columns = []


def _encode_rows(
    encoder: ChunkEncoder, keys: I64, alive: npt.NDArray[np.bool_], cols: list[Array]
) -> list[bytes]:
    """Chunks of the live rows among ``keys``/``cols`` (one region: at most ~1 MiB)."""
    rows = np.flatnonzero(alive)
    if rows.shape[0] == keys.shape[0]:
        return list(encoder.columns(keys, cols))
    if rows.shape[0]:
        return list(encoder.columns(keys[rows], [c[rows] for c in cols]))
    return []


class _CowSnapshot:
    """A full snapshot by copy-on-write regions: O(1) at the barrier.

    Rows [0, limit) as they were at the barrier are split into regions of
    65,536 rows. The checkpoint thread encodes one region at a time straight
    from the live arrays; the processing thread, before its first write into
    a region the checkpoint thread has not reached yet, saves a copy of it for
    the checkpoint thread (and waits only if it writes into the very region
    being encoded). So the barrier costs nothing, untouched regions are never
    copied, and memory grows only by the regions written meanwhile.
    """

    def __init__(self, owner: ColumnarState, limit: int, entries: int) -> None:
        self._owner: ColumnarState | None = owner
        self.limit = limit
        self.incremental = False
        self.entries = entries
        nregions = (limit + _REGION - 1) >> _REGION_SHIFT
        self._taken = np.zeros(nregions, np.bool_)  # the checkpoint thread has its copy
        self._saved = np.zeros(nregions, np.bool_)  # processing saved a copy before writing
        self._copies: dict[int, tuple[I64, npt.NDArray[np.bool_], list[Array]]] = {}
        self._cond = threading.Condition()  # guards the three fields above and _current
        self._current = -1  # region the checkpoint thread is encoding from the live rows

    def _copy(self, region: int) -> tuple[I64, npt.NDArray[np.bool_], list[Array]]:
        s = self._owner
        assert s is not None
        a = region << _REGION_SHIFT
        b = min(self.limit, a + _REGION)
        return s._keys[a:b].copy(), s._alive[a:b].copy(), [c[a:b].copy() for c in s._all_columns()]

    def before_write(self, rows: I64 | slice) -> None:
        """Called by the state before it changes ``rows`` (processing thread)."""
        if isinstance(rows, slice):
            start, stop = rows.start, min(rows.stop, self.limit)
            if start >= stop:
                return
            regions = np.arange(start >> _REGION_SHIFT, ((stop - 1) >> _REGION_SHIFT) + 1)
        else:
            regions = rows[rows < self.limit] >> _REGION_SHIFT
        pending = regions[~(self._taken[regions] | self._saved[regions])]
        if not pending.shape[0]:
            return
        with self._cond:
            for region in np.unique(pending).tolist():
                while region == self._current:  # being encoded from the live rows
                    self._cond.wait()
                if not self._taken[region] and not self._saved[region]:
                    self._copies[region] = self._copy(region)
                    self._saved[region] = True

    def chunks(self, encoder: ChunkEncoder) -> Iterator[bytes]:
        for region in range(self._taken.shape[0]):
            with self._cond:
                saved = self._copies.pop(region, None)
                if saved is None:
                    self._current = region
                else:
                    self._taken[region] = True
            if saved is not None:
                out = _encode_rows(encoder, *saved)
            else:
                # Untouched since the barrier: encode straight from the live rows,
                # no copy. Processing waits only to write into this very region.
                try:
                    owner = self._owner
                    assert owner is not None
                    a = region << _REGION_SHIFT
                    b = min(self.limit, a + _REGION)
                    out = _encode_rows(
                        encoder,
                        owner._keys[a:b],
                        owner._alive[a:b],
                        [c[a:b] for c in owner._all_columns()],
                    )
                finally:
                    with self._cond:
                        self._taken[region] = True
                        self._current = -1
                        self._cond.notify_all()
            yield from out

    def release(self) -> None:
        owner, self._owner = self._owner, None
        if owner is not None and owner._cow is self:
            owner._cow = None
        self._copies.clear()


class _ColumnsRestorer:
    """Builds a fresh ColumnarState; a base segment is loaded in one bulk step."""

    def __init__(self, owner: ColumnarState, expected: int) -> None:
        self._owner = owner
        self._fresh = owner._empty_like(expected)
        self._fresh._restoring = True
        self._in_base = False
        self._base_rows = 0  # rows of the base copied in but not yet indexed

    def begin_segment(self, base: bool) -> None:
        self._flush()
        self._in_base = base

    def _flush(self) -> None:
        if self._base_rows:
            rows, self._base_rows = self._base_rows, 0
            self._fresh._index_base(rows)

    def records_dict(self) -> dict[Any, Any] | None:
        return None

    def records(self, items: list[tuple[Any, Any]]) -> None:
        raise CorruptCheckpointError("keyed chunk in a columnar state's checkpoint")

    def deleted_keys(self, keys: list[Any]) -> None:
        raise CorruptCheckpointError("keyed chunk in a columnar state's checkpoint")

    def columns(self, keys: I64, columns: list[Array]) -> None:
        fresh = self._fresh
        if len(columns) != len(fresh._all_columns()) or any(
            c.dtype != t.dtype for c, t in zip(columns, fresh._all_columns(), strict=False)
        ):
            raise CorruptCheckpointError("chunk columns differ from the manifest's")
        if self._in_base:
            fresh._append_base(self._base_rows, keys, columns)
            self._base_rows += int(keys.shape[0])
            return
        rows = fresh._rows_for(keys)
        for target, values in zip(fresh._all_columns(), columns, strict=True):
            target[rows] = values

    def deleted_column_keys(self, keys: I64) -> None:
        self._flush()
        self._fresh._remove(keys)

    def count(self) -> int:
        self._flush()
        return len(self._fresh)

    def install(self) -> None:
        self._flush()
        self._owner._take(self._fresh)


class ColumnarState:
    """Numeric columns addressed by int64 key, updated a batch at a time.

    ``columns`` maps names to "int64" or "float64" (up to 7, or 6 with TTL).
    Missing keys read as ``default``; ``add`` and ``set`` insert them.
    """

    state_type = "columnar"

    def __init__(
        self,
        name: str,
        columns: Mapping[str, str] | None = None,
        *,
        ttl: Ttl | None = None,
        capacity: int = 0,
    ) -> None:
        spec = dict(columns) if columns is not None else {"value": "int64"}
        if not spec:
            raise ValueError("a columnar state needs at least one column")
        for col, dtype in spec.items():
            if dtype not in _DTYPES:
                raise ValueError(f"column {col!r}: dtype must be 'int64' or 'float64'")
        if len(spec) + (ttl is not None) > _MAX_COLUMNS:
            raise ValueError(f"at most {_MAX_COLUMNS} columns (TTL takes one)")
        self.name = name
        self.ttl = ttl
        self._spec = spec
        self._names = list(spec)
        self._clock = Clock(ttl)
        self._cleanup_at = 0  # TTL cleanup cursor (row)
        self._restoring = False  # no TTL cleanup while a restore builds this state
        self._cow: _CowSnapshot | None = None  # full snapshot being written, if any
        self._writes = 0  # rows written or deleted since the barrier (>= dirty rows)
        self._init_storage(max(capacity, 1024))
        self._index.reserve(capacity)

    def _init_storage(self, capacity: int) -> None:
        self._index = KeyIndex()
        self._keys = np.zeros(capacity, np.int64)  # key of each row
        self._alive = np.zeros(capacity, np.bool_)  # row holds a key
        self._dirty = np.zeros(capacity, np.bool_)  # row changed since the barrier
        self._cols: list[Array] = [np.zeros(capacity, _DTYPES[d]) for d in self._spec.values()]
        self._stamp: npt.NDArray[np.float64] | None = (
            np.zeros(capacity, np.float64) if self.ttl is not None else None
        )
        self._deleted: list[I64] = []  # keys deleted since the barrier

    def _empty_like(self, expected: int) -> ColumnarState:
        return ColumnarState(self.name, self._spec, ttl=self.ttl, capacity=expected)

    def _all_columns(self) -> list[Array]:
        return self._cols + ([self._stamp] if self._stamp is not None else [])

    # ---- storage management ---------------------------------------------------

    def _ensure(self, rows: int) -> None:
        cap = self._keys.shape[0]
        if rows <= cap:
            return
        new = max(rows, cap * 2)

        def grow(a: Any) -> Any:
            out = np.zeros(new, a.dtype)
            out[:cap] = a
            return out

        self._keys = grow(self._keys)
        self._alive = grow(self._alive)
        self._dirty = grow(self._dirty)
        self._cols = [grow(c) for c in self._cols]
        if self._stamp is not None:
            self._stamp = grow(self._stamp)

    def _rows_for(self, keys: I64) -> I64 | slice:
        """Rows of keys, inserting new keys; marks them dirty (and stamps them)."""
        before_limit = self._index.slot_limit
        before_len = len(self._index)
        rows = self._index.insert(keys)
        n = rows.shape[0]
        self._ensure(self._index.slot_limit)
        where: I64 | slice = rows
        if n and len(self._index) == before_len + n and self._index.slot_limit == before_limit + n:
            where = slice(before_limit, before_limit + n)  # all new, in order
        if self._cow is not None:
            self._cow.before_write(where)
        self._writes += n
        self._keys[where] = keys
        self._alive[where] = True
        self._dirty[where] = True
        if self._stamp is not None:
            self._stamp[where] = self._clock.now()
            if not self._restoring:
                self._cleanup(n)
        return where

    def _remove(self, keys: I64) -> int:
        rows = self._index.remove_many(keys)
        hit = rows >= 0
        rows = rows[hit]
        if rows.shape[0]:
            if self._cow is not None:
                self._cow.before_write(rows)
            self._writes += int(rows.shape[0])
            self._alive[rows] = False
            self._dirty[rows] = False
            for c in self._all_columns():
                c[rows] = 0
            self._deleted.append(keys[hit])
        return int(rows.shape[0])

    def _append_base(self, offset: int, keys: I64, columns: list[Array]) -> None:
        """Copy a base chunk's rows to rows slot_limit + offset, ... (not indexed yet)."""
        start = self._index.slot_limit + offset
        rows = slice(start, start + keys.shape[0])
        self._ensure(rows.stop)
        self._keys[rows] = keys
        for target, values in zip(self._all_columns(), columns, strict=True):
            target[rows] = values

    def _index_base(self, n: int) -> None:
        """Index the n rows _append_base copied in (a base segment: distinct keys, none present)."""
        start = self._index.slot_limit
        rows = slice(start, start + n)
        try:
            self._index.build(self._keys[rows])
        except ValueError as exc:
            raise CorruptCheckpointError(f"base segment is invalid: {exc}") from None
        self._alive[rows] = True

    def _take(self, other: ColumnarState) -> None:
        if self._cow is not None:  # a snapshot is still reading the old rows: save them all
            self._cow.before_write(slice(0, self._cow.limit))
        self._index = other._index
        self._keys, self._alive, self._dirty = other._keys, other._alive, other._dirty
        self._cols, self._stamp = other._cols, other._stamp
        self._dirty[:] = False
        self._deleted = []
        self._writes = 0
        if self._stamp is not None and self._clock.event and len(self._index):
            self._clock.advance(float(self._stamp[self._alive].max()))

    def _column(self, column: str | None) -> Array:
        if column is None:
            if len(self._cols) != 1:
                raise ValueError(f"state {self.name!r} has several columns: name one")
            return self._cols[0]
        try:
            return self._cols[self._names.index(column)]
        except ValueError:
            raise KeyError(f"state {self.name!r} has no column {column!r}") from None

    # ---- TTL ---------------------------------------------------------------------

    def advance_time(self, t: float) -> None:
        """Move event time to t (TTL by event time)."""
        self._clock.advance(t)

    def _expired_rows(self, start: int, stop: int) -> I64:
        assert self._stamp is not None and self.ttl is not None
        horizon = self._clock.now() - self.ttl.seconds
        live = self._alive[start:stop] & (self._stamp[start:stop] <= horizon)
        return np.flatnonzero(live) + start

    def _cleanup(self, written: int) -> None:
        limit = self._index.slot_limit
        if not limit:
            return
        span = min(limit, max(64, _CLEANUP_FACTOR * written))
        start = self._cleanup_at if self._cleanup_at < limit else 0
        stop = min(limit, start + span)
        rows = self._expired_rows(start, stop)
        self._cleanup_at = 0 if stop == limit else stop  # wrap: rescan from the oldest rows
        if rows.shape[0]:
            self._remove(self._keys[rows].copy())

    def expire(self) -> int:
        """Delete every expired key now; return how many."""
        if self.ttl is None:
            return 0
        rows = self._expired_rows(0, self._index.slot_limit)
        return self._remove(self._keys[rows].copy()) if rows.shape[0] else 0

    def _visible(self, rows: I64) -> npt.NDArray[np.bool_]:
        found = rows >= 0
        if self._stamp is not None and self.ttl is not None:
            horizon = self._clock.now() - self.ttl.seconds
            found &= self._stamp[np.where(found, rows, 0)] > horizon
        return found

    # ---- public API --------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, (int, np.integer)):
            return False
        return bool(self._visible(self._index.lookup(_keys(key)))[0])

    @property
    def columns(self) -> list[str]:
        return list(self._names)

    def add(self, keys: Any, values: Any, column: str | None = None) -> None:
        """col[key] += value for each pair (repeated keys add up)."""
        k = _keys(keys)
        self._column(column)  # unknown column: fail before inserting keys
        rows = self._rows_for(k)
        target = self._column(column)  # after _rows_for: it may have grown the arrays
        if isinstance(rows, slice):
            target[rows] += np.asarray(values, target.dtype)
            return
        vals = np.ascontiguousarray(np.broadcast_to(values, k.shape), target.dtype)
        scatter_sum(target, rows, vals)

    def upsert(self, keys: Any) -> tuple[I64, npt.NDArray[np.bool_]]:
        """Rows of keys, inserting the missing ones, and which keys were new.

        The rows are dirty (in the next incremental checkpoint) and safe to
        write through ``column()`` until the next call that inserts or deletes.
        New rows read zero in every column.
        """
        k = _keys(keys)
        new = self._index.lookup(k) < 0
        rows = self._rows_for(k)
        if isinstance(rows, slice):
            rows = np.arange(rows.start, rows.stop, dtype=np.int64)
        return rows, new

    def rows_of(self, keys: Any) -> I64:
        """Rows of keys for reading through ``column()`` (-1 where absent)."""
        return self._index.lookup(_keys(keys))

    def column(self, name: str) -> Array:
        """The live array of a column, indexed by row (see ``upsert``)."""
        return self._column(name)

    def set(self, keys: Any, values: Any, column: str | None = None) -> None:
        """col[key] = value for each pair (the last of repeated keys wins)."""
        k = _keys(keys)
        self._column(column)
        rows = self._rows_for(k)
        self._column(column)[rows] = values

    def get(self, keys: Any, column: str | None = None, default: float = 0) -> Array:
        """Values of keys in a new array; ``default`` where a key is absent or expired."""
        k = _keys(keys)
        source = self._column(column)
        rows = self._index.lookup(k)
        found = self._visible(rows)
        out = np.full(k.shape[0], default, dtype=source.dtype)
        out[found] = source[rows[found]]
        return out

    def delete(self, keys: Any) -> int:
        """Remove keys; return how many were present."""
        return self._remove(_keys(keys))

    def items(self) -> tuple[I64, dict[str, Array]]:
        """(keys, {column: values}) of every live key, as new arrays."""
        self.expire()
        rows = np.flatnonzero(self._alive[: self._index.slot_limit])
        return self._keys[rows], {n: c[rows] for n, c in zip(self._names, self._cols, strict=True)}

    # ---- checkpoint protocol -----------------------------------------------------

    def describe(self) -> dict[str, Any]:
        return {
            "columns": [[n, d] for n, d in self._spec.items()],
            "ttl": self.ttl.to_json() if self.ttl is not None else None,
        }

    def dirty_bound(self) -> int:
        return self._writes

    def dirty_count(self) -> int:
        limit = self._index.slot_limit
        return int(np.count_nonzero(self._dirty[:limit])) + sum(
            int(d.shape[0]) for d in self._deleted
        )

    def freeze(self, incremental: bool) -> _FrozenColumns | _CowSnapshot:
        if self._cow is not None:
            raise RuntimeError(f"state {self.name!r}: the previous snapshot is still open")
        limit = self._index.slot_limit
        if incremental:
            rows = np.flatnonzero(self._dirty[:limit])
            deleted = np.concatenate(self._deleted) if self._deleted else np.empty(0, np.int64)
            if deleted.shape[0]:
                deleted = np.unique(deleted)
                deleted = deleted[self._index.lookup(deleted) < 0]  # not re-added since
            self._dirty[rows] = False
            self._deleted = []
            self._writes = 0
            return _FrozenColumns(self._keys[rows], [c[rows] for c in self._all_columns()], deleted)
        self._dirty[:limit] = False
        self._deleted = []
        self._writes = 0
        self._cow = _CowSnapshot(self, limit, len(self._index))
        return self._cow

    def restorer(self, meta: Mapping[str, Any], expected: int = 0) -> _ColumnsRestorer:
        if [list(c) for c in meta.get("columns", [])] != self.describe()["columns"]:
            raise ValueError(
                f"state {self.name!r} was checkpointed with columns {meta.get('columns')}, "
                f"but is declared with {self.describe()['columns']}"
            )
        if (meta.get("ttl") is None) != (self.ttl is None):
            raise ValueError(f"state {self.name!r}: TTL setting differs from the checkpoint's")
        return _ColumnsRestorer(self, expected)
