"""Dedup state: a native ``Deduplicator`` that checkpoints incrementally, in chunks.

The deduplicator's table answers lookups; the checkpoint is written from a log
kept beside it: every key the table accepts is appended, as three int64
words (the stored key ``a``, ``b``: the int, or the 128-bit seeded
fingerprint of a bytes/str key; and ``generation << 2 | table``). Keys are
never changed once accepted and leave only with their whole generation, and
generations never decrease along the log, so the live keys are always one
contiguous run of it: expiry drops a prefix. Log blocks never move once
written, so a frozen view is a copy of the block list (O(blocks) at the
barrier, never O(keys)) and the checkpoint thread reads the rows as they
were. A delta is the rows appended since the previous barrier plus the
lowest live generation (which drops the expired prefix on restore). Format
and reasoning: docs/dedup.md.
"""

from __future__ import annotations

import bisect
import math
import struct
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from eoscore._native._dedup import Deduplicator
from eoscore._native._statecodec import ChunkEncoder
from eoscore.checkpoint.errors import CorruptCheckpointError

__all__ = ["FORMAT_VERSION", "DedupState"]

I64 = npt.NDArray[np.int64]
Block = tuple[I64, I64, I64]  # a, b, info
Control = tuple[int, bool, float, float, int, int, int, int]

#: Version of the dedup state format. 1 was a ValueState "<node>.seen" holding
#: one ``Deduplicator.snapshot()`` value (still restored, see docs/dedup.md).
FORMAT_VERSION = 2
_MAGIC = 0x50554444534F45  # "EOSDDUP" little-endian: first word of a control chunk
_CONTROL_WORDS = 12
_BLOCK = 1 << 16  # rows per log block appended at run time
_F64 = struct.Struct("<d")
_I64 = struct.Struct("<q")


def _f2i(x: float) -> int:
    return int(_I64.unpack(_F64.pack(x))[0])


def _i2f(x: int) -> float:
    return float(_F64.unpack(_I64.pack(x))[0])


def _u2i(x: int) -> int:
    return x - (1 << 64) if x >= 1 << 63 else x


class _Log:
    """Append-only rows (a, b, info) in blocks that never move once written."""

    def __init__(self) -> None:
        self.blocks: list[Block] = []
        self.starts: list[int] = []  # global row of each block's first row
        self.head = 0  # global row of the first live row
        self.end = 0  # global rows appended so far
        self._room = 0  # free rows at the end of the tail block

    def __len__(self) -> int:
        return self.end - self.head

    def append(self, rows: I64) -> None:
        n = int(rows.shape[0])
        i = 0
        while i < n:
            if not self._room:
                size = max(_BLOCK, min(n - i, 1 << 22))
                self.blocks.append(
                    (np.empty(size, np.int64), np.empty(size, np.int64), np.empty(size, np.int64))
                )
                self.starts.append(self.end)
                self._room = size
            a, b, info = self.blocks[-1]
            at = self.end - self.starts[-1]
            k = min(self._room, n - i)
            a[at : at + k] = rows[i : i + k, 0]
            b[at : at + k] = rows[i : i + k, 1]
            info[at : at + k] = rows[i : i + k, 2]
            self.end += k
            self._room -= k
            i += k

    def adopt(self, a: I64, b: I64, info: I64) -> None:
        """Add full arrays as a block of their own (restore: decoded chunks, no copy)."""
        if not a.shape[0]:
            return
        self.blocks.append((a, b, info))
        self.starts.append(self.end)
        self.end += int(a.shape[0])
        self._room = 0

    def _used(self, j: int) -> int:
        stop = self.starts[j + 1] if j + 1 < len(self.starts) else self.end
        return stop - self.starts[j]

    def trim(self, low: int) -> int:
        """Drop the rows of generations below ``low`` (a prefix); returns how many."""
        before = len(self)
        while self.blocks and self.head < self.end:
            start = self.starts[0]
            used = self._used(0)
            info = self.blocks[0][2]
            first = self.head - start
            if int(info[used - 1]) >> 2 < low:
                self.head = start + used
                if len(self.blocks) > 1 or not self._room:
                    self.blocks.pop(0)
                    self.starts.pop(0)
                    if not self.blocks:
                        self._room = 0
                continue
            self.head = start + first + int(np.searchsorted(info[first:used] >> 2, low))
            break
        return before - len(self)

    def view(self, lo: int, hi: int) -> _LogView:
        """Rows [lo, hi) as they are now (O(blocks): the block list is copied)."""
        j = max(0, bisect.bisect_right(self.starts, lo) - 1)
        return _LogView(self.blocks[j:], self.starts[j:], lo, hi)


class _LogView:
    def __init__(self, blocks: list[Block], starts: list[int], lo: int, hi: int) -> None:
        self.blocks = blocks
        self.starts = starts
        self.lo = lo
        self.hi = hi

    def ranges(self) -> Iterator[Block]:
        for (a, b, info), start in zip(self.blocks, self.starts, strict=True):
            lo = max(self.lo, start) - start
            hi = min(self.hi, start + a.shape[0]) - start
            if hi > lo:
                yield a[lo:hi], b[lo:hi], info[lo:hi]


class _FrozenDedup:
    """What a barrier saw: the control record and a view of the log rows to write."""

    def __init__(self, control: I64, rows: _LogView, incremental: bool, entries: int) -> None:
        self._control = control
        self._rows: _LogView | None = rows
        self.incremental = incremental
        self.entries = entries

    def chunks(self, encoder: ChunkEncoder) -> Iterator[bytes]:
        # Step 1: the control record (clock, generation, counters, live keys).
        yield from encoder.columns(self._control)
        # Step 2: the log rows, straight from the blocks (they never change).
        if self._rows is not None:
            for a, b, info in self._rows.ranges():
                yield from encoder.columns(a, [b, info])

    def release(self) -> None:
        self._rows = None


def _control_array(control: Control, low: int, live: int) -> I64:
    seed, has_clock, origin, clock, gen, checked, dups, expired = control
    words = [
        _MAGIC,
        FORMAT_VERSION,
        low,
        _u2i(seed),
        int(has_clock),
        _f2i(origin),
        _f2i(clock),
        gen,
        _u2i(checked),
        _u2i(dups),
        _u2i(expired),
        live,
    ]
    return np.array(words, np.int64)


def _parse_control(words: I64) -> tuple[Control, int, int]:
    if words.shape[0] != _CONTROL_WORDS or int(words[0]) != _MAGIC:
        raise CorruptCheckpointError("dedup state: chunk is not a control record")
    w = [int(x) for x in words.tolist()]
    if w[1] != FORMAT_VERSION:
        raise CorruptCheckpointError(
            f"dedup state format {w[1]} is not supported (this reads format {FORMAT_VERSION})"
        )
    if w[4] not in (0, 1) or w[11] < 0 or w[2] > w[7] + 1:
        raise CorruptCheckpointError("dedup state: invalid control record")
    control: Control = (
        w[3] & ((1 << 64) - 1),
        bool(w[4]),
        _i2f(w[5]),
        _i2f(w[6]),
        w[7],
        w[8] & ((1 << 64) - 1),
        w[9] & ((1 << 64) - 1),
        w[10] & ((1 << 64) - 1),
    )
    return control, w[2], w[11]


class _DedupRestorer:
    """Builds a fresh deduplicator and log off to the side; ``install`` swaps them in."""

    def __init__(self, owner: DedupState, expected: int) -> None:
        self._owner = owner
        self._expected = expected
        self._log = _Log()
        self._control: Control | None = None
        self._want: int | None = None  # live rows the last control record promises
        self._need_control = False
        self._built: Deduplicator | None = None

    def _check_count(self) -> None:
        if self._want is not None and len(self._log) != self._want:
            raise CorruptCheckpointError(
                f"dedup state: segment leaves {len(self._log)} keys, its control record "
                f"says {self._want}"
            )

    def begin_segment(self, base: bool) -> None:
        self._check_count()
        if base:
            self._log = _Log()
        self._need_control = True

    def records_dict(self) -> dict[Any, Any] | None:
        return None

    def records(self, items: list[tuple[Any, Any]]) -> None:
        raise CorruptCheckpointError("keyed chunk in a dedup state's checkpoint")

    def deleted_keys(self, keys: list[Any]) -> None:
        raise CorruptCheckpointError("keyed chunk in a dedup state's checkpoint")

    def deleted_column_keys(self, keys: I64) -> None:
        if not self._need_control:
            raise CorruptCheckpointError("dedup state: a second control record in one segment")
        control, low, live = _parse_control(keys)
        if self._control is not None and control[4] < self._control[4]:
            raise CorruptCheckpointError("dedup state: generation goes back between segments")
        self._control, self._want, self._need_control = control, live, False
        self._log.trim(low)

    def columns(self, keys: I64, columns: list[npt.NDArray[Any]]) -> None:
        if self._need_control or self._control is None:
            raise CorruptCheckpointError("dedup state: log rows before the control record")
        if len(columns) != 2 or any(c.dtype != np.int64 for c in columns):
            raise CorruptCheckpointError("dedup state: log chunk must have 2 int64 columns")
        self._log.adopt(keys, columns[0], columns[1])

    def _build(self) -> Deduplicator:
        if self._built is not None:
            return self._built
        self._check_count()
        owner = self._owner
        if self._control is None:
            if self._log.end:
                raise CorruptCheckpointError("dedup state: no control record")
            self._built = owner._fresh()
            return self._built
        try:
            d = Deduplicator._from_control(
                owner.capacity, owner.ttl, owner.generations, self._control, len(self._log)
            )
        except ValueError as exc:
            raise CorruptCheckpointError(f"dedup state: {exc}") from None
        last = None
        for a, b, info in self._log.view(self._log.head, self._log.end).ranges():
            gens = info >> 2
            if (last is not None and int(gens[0]) < last) or bool(np.any(gens[1:] < gens[:-1])):
                raise CorruptCheckpointError("dedup state: generations decrease along the log")
            last = int(gens[-1])
            try:
                d._load_log(a, b, info)
            except ValueError as exc:
                raise CorruptCheckpointError(f"dedup state: {exc}") from None
        if len(d) != len(self._log):
            raise CorruptCheckpointError("dedup state: key count differs from the log's")
        self._built = d
        return d

    def count(self) -> int:
        return len(self._build())

    def install(self) -> None:
        self._owner._take(self._build(), self._log)


class _LegacyRestorer(_DedupRestorer):
    """Format 1: a ValueState holding one ``Deduplicator.snapshot()`` under "snapshot".

    Its clock and TTL were in seconds (the runtime's old event time); they are
    converted to the state's unit (``owner.time_scale`` per second).
    """

    def __init__(self, owner: DedupState, expected: int) -> None:
        super().__init__(owner, expected)
        self._legacy: Deduplicator | None = None

    def begin_segment(self, base: bool) -> None:
        self._need_control = False

    def records(self, items: list[tuple[Any, Any]]) -> None:
        for key, value in items:
            if key != "snapshot" or not isinstance(value, bytes):
                raise CorruptCheckpointError(
                    "dedup state format 1: expected one 'snapshot' bytes value"
                )
            try:
                self._legacy = Deduplicator.restore(value)
            except ValueError as exc:
                raise CorruptCheckpointError(f"dedup state format 1: {exc}") from None

    def deleted_keys(self, keys: list[Any]) -> None:
        if keys != ["snapshot"]:
            raise CorruptCheckpointError("dedup state format 1: unexpected deletion")
        self._legacy = None

    def deleted_column_keys(self, keys: I64) -> None:
        raise CorruptCheckpointError("dedup state format 1: unexpected column chunk")

    def columns(self, keys: I64, columns: list[npt.NDArray[Any]]) -> None:
        raise CorruptCheckpointError("dedup state format 1: unexpected column chunk")

    def _build(self) -> Deduplicator:
        if self._built is not None:
            return self._built
        owner = self._owner
        old = self._legacy
        if old is None:
            self._built = owner._fresh()
            return self._built
        scale = owner.time_scale
        old_ttl = None if old.ttl is None else old.ttl * scale
        if (
            old.mode != "exact"
            or (old_ttl is None) != (owner.ttl is None)
            or (
                old_ttl is not None
                and owner.ttl is not None
                and not math.isclose(old_ttl, owner.ttl, rel_tol=1e-9)
            )
        ):
            raise ValueError(
                f"state {owner.name!r}: the checkpoint holds dedup state format 1 with "
                f"mode={old.mode!r}, ttl={old.ttl} s, which this node "
                f"(ttl={owner.ttl} per {scale} units/s) cannot take over"
            )
        if old.ttl is not None and old.generations != owner.generations:
            raise ValueError(f"state {owner.name!r}: generations differ from the checkpoint's")
        seed, has_clock, origin, clock, gen, checked, dups, expired = old._control()
        control: Control = (
            seed,
            has_clock,
            origin * scale,
            clock * scale,
            gen,
            checked,
            dups,
            expired,
        )
        rows = old._export_log()
        d = Deduplicator._from_control(
            owner.capacity, owner.ttl, owner.generations, control, int(rows.shape[0])
        )
        a, b, info = (np.ascontiguousarray(rows[:, i]) for i in range(3))
        d._load_log(a, b, info)
        self._log = _Log()
        self._log.adopt(a, b, info)
        self._built = d
        return d

    def count(self) -> int:
        self._build()
        return 0 if self._legacy is None else 1


class DedupState:
    """First-occurrence filter state: exact, with optional TTL, checkpointed incrementally.

    ``DedupState(name, capacity, ttl=None, generations=4, time_scale=1_000_000)``:
    ``ttl`` and the event times given to :meth:`check_and_add` are in the same
    unit (the pipeline's: microseconds; ``time_scale`` is units per second, used
    only to read format-1 checkpoints, whose times were seconds).

    Barrier cost: O(log blocks), never O(keys). A checkpoint writes the keys
    accepted since the previous one (incremental) or all live keys (full), as
    column chunks of at most the encoder's chunk size: no single record grows
    with the state.
    """

    state_type = "dedup"
    #: Deltas only append rows and drop a prefix: a long chain costs a restore
    #: no more than a base would (the Checkpointer allows it a longer chain).
    append_only = True
    #: Format 1 (the old node's ValueState) is restored too.
    restores_from: Sequence[str] = ("value",)

    def __init__(
        self,
        name: str,
        capacity: int,
        *,
        ttl: float | None = None,
        generations: int = 4,
        time_scale: int = 1_000_000,
    ) -> None:
        self.name = name
        self.capacity = capacity
        self.ttl = None if ttl is None else float(ttl)
        self.generations = generations if ttl is not None else 1
        self.time_scale = time_scale
        self._take(self._fresh(), _Log())

    def _fresh(self) -> Deduplicator:
        return Deduplicator(self.capacity, ttl=self.ttl, generations=max(self.generations, 2))

    def _take(self, dedup: Deduplicator, log: _Log) -> None:
        dedup._log_on()
        self._dedup = dedup
        self._log = log
        self._gen = dedup._generation
        self._mark = log.end  # log rows up to here are in the last checkpoint
        self._dropped = 0  # rows expired since the last barrier
        self._written: Control | None = None  # control record of the last checkpoint

    @property
    def deduplicator(self) -> Deduplicator:
        """The native deduplicator (read it; change it only through this state)."""
        return self._dedup

    def check_and_add(self, keys: Any, event_times: Any = None) -> npt.NDArray[np.bool_]:
        """``Deduplicator.check_and_add``, logging the accepted keys for the checkpoint."""
        fresh = self._dedup.check_and_add(keys, event_times)
        rows = self._dedup._take_log()
        if rows.shape[0]:
            self._log.append(rows)
        gen = self._dedup._generation
        if gen != self._gen:
            self._gen = gen
            self._dropped += self._log.trim(self._low())
        return fresh

    def _low(self) -> int:
        return self._gen - self.generations + 1 if self.ttl is not None else 0

    # ---- checkpoint protocol -----------------------------------------------------

    def __len__(self) -> int:
        return len(self._dedup)

    def describe(self) -> dict[str, Any]:
        return {"format": FORMAT_VERSION, "ttl": self.ttl, "generations": self.generations}

    def dirty_bound(self) -> int:
        return self._log.end - max(self._mark, self._log.head) + self._dropped + 1

    def dirty_count(self) -> int:
        changed = self._written != self._dedup._control()
        return self.dirty_bound() - 1 + int(changed)

    def freeze(self, incremental: bool) -> _FrozenDedup:
        control = self._dedup._control()
        head, end = self._log.head, self._log.end
        lo = max(self._mark, head) if incremental else head
        entries = end - lo
        if incremental:
            entries += self._dropped + int(control != self._written)
        else:
            entries += 1
        view = _FrozenDedup(
            _control_array(control, self._low(), end - head),
            self._log.view(lo, end),
            incremental,
            entries,
        )
        self._mark = end
        self._dropped = 0
        self._written = control
        return view

    def restorer(self, meta: Mapping[str, Any], expected: int = 0) -> _DedupRestorer:
        if "format" not in meta:
            return _LegacyRestorer(self, expected)
        if meta.get("format") != FORMAT_VERSION:
            raise ValueError(
                f"state {self.name!r}: the checkpoint holds dedup state format "
                f"{meta.get('format')}; this version reads formats 1 and {FORMAT_VERSION}"
            )
        if meta.get("ttl") != self.ttl or meta.get("generations") != self.generations:
            raise ValueError(
                f"state {self.name!r} was checkpointed with ttl={meta.get('ttl')}, "
                f"generations={meta.get('generations')}, but is declared with ttl={self.ttl}, "
                f"generations={self.generations}"
            )
        return _DedupRestorer(self, expected)
