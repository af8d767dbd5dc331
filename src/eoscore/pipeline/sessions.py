"""Keyed event-time session windows: gap-based, merging, with allowed lateness.

A record at ``t`` opens the half-open window ``[t, t + gap)``. Windows of a
key that *overlap* (share at least one microsecond: ``a.start < b.end`` and
``b.start < a.end``) merge into one session ``[min start, max end)`` with
the accumulators merged. So two records of a key are in one session exactly
when a chain of the key's records, sorted by time, joins them with each
step less than ``gap`` apart; a record exactly ``gap`` after the previous
one starts a new session (the gap has elapsed). Windows that only touch
(``a.end == b.start``) do not merge: this is what makes firing exact, since
a record at ``t >= watermark >= end`` can never join a session that fired.

A session fires (one ``WindowResult``, event time ``end - 1``) when the
watermark reaches its end (``end <= watermark``). With allowed lateness
``L`` its state is kept until ``end + L <= watermark``. Per batch, each
key's records are merged with one another and with the key's kept sessions;
a resulting session that holds no kept session and has ``end + L <=
watermark`` is *late*: its records go to the late side output (or are
dropped, counted and logged: ``LateRecords``). Any other session the batch
changed whose ``end <= watermark`` is emitted again at once (an updated
result); the rest fire when the watermark passes their new end.

Order of folding (it matters for non-commutative accumulators and float
sums): within a batch a key's records are added in event-time order (ties:
batch order); sessions are merged in order of their start, kept ones before
the batch's on equal starts.

State: ``{name}.sessions`` (``ValueState``), key -> ``[[start_us, end_us,
acc], ...]`` sorted by start, written once per touched key per batch; and
``{name}.meta`` with the operator's watermark, written at the barrier. A
session has fired exactly when its end is at or below that watermark, so
nothing else records it; the firing and cleanup heaps are rebuilt from the
sessions after a restore.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Hashable, Mapping, Sequence
from itertools import count
from typing import Any

import numpy as np
import numpy.typing as npt

from eoscore.pipeline.aggregations import Aggregation
from eoscore.pipeline.assigners import Session
from eoscore.pipeline.errors import PipelineDefinitionError, PipelineError
from eoscore.pipeline.eventtime import BEFORE_TIME, LIMIT, seconds
from eoscore.pipeline.operators import Node, Times
from eoscore.pipeline.windows import LateRecords, WindowResult
from eoscore.state import Snapshottable, ValueState

__all__ = ["SessionNode"]

I64 = npt.NDArray[np.int64]
#: Gaps and lateness beyond this would overflow int64 bounds (about 146,000 years).
_MAX_SPAN = 2**62 - LIMIT
#: A stored session: [start_us, end_us, accumulator].
Stored = list[Any]
_MISSING: Any = object()


class _Accumulator:
    """How a session's accumulator is built, merged and read out."""

    def prepare(self, values: list[Any]) -> Any:
        """Per-batch inputs of ``fold`` (read once per batch)."""
        return values

    def fold(self, batch: Any, times: list[int], rows: list[int]) -> Any:
        """The accumulator of records ``rows`` of the batch, added in that order."""
        raise NotImplementedError

    def merge(self, a: Any, b: Any) -> Any:
        raise NotImplementedError

    def result(self, acc: Any) -> Any:
        raise NotImplementedError


class _UserAccumulator(_Accumulator):
    """A Python accumulator: ``init() -> acc``, ``add(acc, record)``, ``merge(a, b)``."""

    def __init__(
        self,
        init: Callable[[], Any],
        add: Callable[[Any, Any], Any],
        merge: Callable[[Any, Any], Any],
        result: Callable[[Any], Any] | None,
    ) -> None:
        self.init, self.add, self.merge_fn, self.result_fn = init, add, merge, result

    def fold(self, batch: Any, times: list[int], rows: list[int]) -> Any:
        add, values = self.add, batch
        acc = self.init()
        for r in rows:
            acc = add(acc, values[r])
        return acc

    def merge(self, a: Any, b: Any) -> Any:
        return self.merge_fn(a, b)

    def result(self, acc: Any) -> Any:
        return acc if self.result_fn is None else self.result_fn(acc)


class _BuiltinAccumulator(_Accumulator):
    """Built-in aggregations in their record form (``Aggregation.py_*``); acc: a list."""

    def __init__(self, aggs: Mapping[str, Aggregation]) -> None:
        self.names = list(aggs)
        self.aggs = list(aggs.values())

    def prepare(self, values: list[Any]) -> Any:
        columns: list[list[Any] | None] = []
        for agg in self.aggs:
            extracted = agg.extract(values)  # one batch read per aggregation
            columns.append(None if extracted is None else extracted.tolist())
        return columns

    def fold(self, batch: Any, times: list[int], rows: list[int]) -> Any:
        accs: list[Any] = []
        for agg, column in zip(self.aggs, batch, strict=True):
            first = rows[0]
            acc = agg.py_init(None if column is None else column[first], times[first])
            add = agg.py_add
            for r in rows[1:]:
                acc = add(acc, None if column is None else column[r], times[r])
            accs.append(acc)
        return accs

    def merge(self, a: Any, b: Any) -> Any:
        return [agg.py_merge(x, y) for agg, x, y in zip(self.aggs, a, b, strict=True)]

    def result(self, acc: Any) -> Any:
        return {
            name: agg.py_result(x) for name, agg, x in zip(self.names, self.aggs, acc, strict=True)
        }


class SessionNode(Node):
    """Keyed session windows with a Python accumulator or built-in aggregations.

    Either ``init``/``add``/``merge`` (and optionally ``result``), where
    ``add(acc, record)`` and ``merge(a, b)`` return a new accumulator (never
    change one in place: it may be in a checkpoint being written), or
    ``aggs`` (name -> ``Aggregation``; the value is a dict name -> result).
    """

    kind = "session"

    def __init__(
        self,
        name: str,
        key: Callable[[Any], Hashable],
        session: Session,
        lateness_us: int,
        *,
        init: Callable[[], Any] | None = None,
        add: Callable[[Any, Any], Any] | None = None,
        merge: Callable[[Any, Any], Any] | None = None,
        result: Callable[[Any], Any] | None = None,
        aggs: Mapping[str, Aggregation] | None = None,
    ) -> None:
        super().__init__(name)
        if not isinstance(session, Session):
            raise PipelineDefinitionError(f"session {name!r}: {session!r} is not a Session(gap)")
        if isinstance(lateness_us, bool) or not isinstance(lateness_us, int) or lateness_us < 0:
            raise PipelineDefinitionError(
                f"session {name!r}: allowed lateness must be a non-negative int of "
                f"microseconds, not {lateness_us!r}"
            )
        if session.gap_us > _MAX_SPAN or lateness_us > _MAX_SPAN:
            raise PipelineDefinitionError(
                f"session {name!r}: gap and allowed lateness must be below {_MAX_SPAN} us"
            )
        self.accumulator: _Accumulator
        if aggs is not None:
            if init is not None or add is not None or merge is not None or result is not None:
                raise PipelineDefinitionError(
                    f"session {name!r} takes built-in aggregations or init/add/merge, not both"
                )
            if not aggs or not all(isinstance(a, Aggregation) for a in aggs.values()):
                raise PipelineDefinitionError(
                    f"session {name!r}: aggs must name at least one aggregation "
                    "(count(), sum_of(...), ...)"
                )
            self.accumulator = _BuiltinAccumulator(aggs)
        else:
            if init is None or add is None:
                raise PipelineDefinitionError(
                    f"session {name!r} needs init and add (or built-in aggregations)"
                )
            if merge is None:
                raise PipelineDefinitionError(
                    f"session {name!r}: session windows merge, so aggregate(...) needs "
                    "merge=(acc, acc) -> acc"
                )
            self.accumulator = _UserAccumulator(init, add, merge, result)
        self.key = key
        self.gap = session.gap_us
        self.lateness = lateness_us
        self.sessions = ValueState(f"{name}.sessions")
        self.meta = ValueState(f"{name}.meta")
        self.late_out = LateRecords(name)
        self.late = self.late_out.node
        self.watermark = BEFORE_TIME
        self._saved_mark = BEFORE_TIME
        self._seq = count()  # tie-breaker: heap entries never compare keys
        self._to_fire: list[tuple[int, int, Hashable]] = []  # (end, seq, key), end > watermark
        self._to_clean: list[tuple[int, int, Hashable]] = []  # (end + lateness, seq, key)

    @property
    def late_records(self) -> int:
        return self.late_out.count

    # ---- records -----------------------------------------------------------------

    def push(self, values: list[Any], times: Times, port: int = 0) -> None:
        if times is None:
            raise PipelineError(
                f"session window {self.name!r}: records have no event time; "
                "call assign_timestamps(...) before window(...)"
            )
        n = len(values)
        if not n:
            return
        t = np.asarray(times, dtype=np.int64)
        keys = list(map(self.key, values))
        code_of: dict[Hashable, int] = {}
        codes = np.fromiter((code_of.setdefault(k, len(code_of)) for k in keys), np.int64, n)
        distinct = list(code_of)
        # Step 1: sort by (key, time), stably; cut into runs of one key whose
        # consecutive times are less than the gap apart (one batch-local session each).
        order = np.lexsort((t, codes))
        st, sc = t[order], codes[order]
        cut = np.empty(n, np.bool_)
        cut[0] = True
        np.not_equal(sc[1:], sc[:-1], out=cut[1:])
        cut[1:] |= (st[1:] - st[:-1]) >= self.gap
        first = np.flatnonzero(cut)
        last = np.append(first[1:], n) - 1
        lo, hi = st[first], st[last] + self.gap
        run_code = sc[first]
        # Runs of one key are adjacent: split them by key.
        key_cut = np.flatnonzero(np.diff(run_code)) + 1
        bounds = [0, *key_cut.tolist(), len(first)]
        # Step 2: per key, merge the runs with the kept sessions (Python from here).
        batch = self.accumulator.prepare(values)
        rows_l, times_l = order.tolist(), t.tolist()
        first_l, last_l, lo_l, hi_l = first.tolist(), last.tolist(), lo.tolist(), hi.tolist()
        codes_l = run_code.tolist()
        live = self.sessions.view()
        writes: dict[Hashable, list[Stored]] = {}
        emitted: list[tuple[Hashable, Stored]] = []
        late_rows: list[int] = []
        mark, closed = self.watermark, self.watermark - self.lateness  # late: end <= closed
        fold, fire, seq = self.accumulator.fold, self._to_fire, self._seq
        for g in range(len(bounds) - 1):
            key = distinct[codes_l[bounds[g]]]
            kept: list[Stored] | None = live.get(key)
            if kept:
                runs = [
                    (lo_l[r], hi_l[r], first_l[r], last_l[r])
                    for r in range(bounds[g], bounds[g + 1])
                ]
                writes[key] = self._merge(
                    key, kept, runs, batch, rows_l, times_l, late_rows, emitted
                )
                continue
            # A key with no session: its runs are disjoint sessions already (each
            # ends at most where the next starts).
            made: list[Stored] = []
            for r in range(bounds[g], bounds[g + 1]):
                end = hi_l[r]
                if end <= closed:
                    late_rows.extend(rows_l[first_l[r] : last_l[r] + 1])
                    continue
                stored = [lo_l[r], end, fold(batch, times_l, rows_l[first_l[r] : last_l[r] + 1])]
                made.append(stored)
                if end <= mark:  # over already, within the allowed lateness
                    emitted.append((key, stored))
                    self._clean_later(end, key)
                else:
                    heapq.heappush(fire, (end, next(seq), key))
            if made:
                writes[key] = made
        if writes:
            self.sessions.put_many(writes)
        if emitted:
            self._emit(emitted)
        if late_rows:
            late_rows.sort()
            index = np.array(late_rows, np.int64)
            self.late_out.send(
                [values[i] for i in late_rows], t[index], self.watermark, self.lateness
            )

    def _merge(
        self,
        key: Hashable,
        kept: list[Stored],
        runs: list[tuple[int, int, int, int]],
        batch: Any,
        rows: list[int],
        times: list[int],
        late_rows: list[int],
        emitted: list[tuple[Hashable, Stored]],
    ) -> list[Stored]:
        """The key's sessions after this batch's runs.

        Kept sessions and runs (start, end, first, last) are each sorted by
        start and disjoint: one sweep over both in start order (kept first on
        equal starts) groups what overlaps.
        """
        mark, lateness, acc = self.watermark, self.lateness, self.accumulator
        # Stable: a kept session (3 fields) stays ahead of a run (4) on equal starts.
        items: list[Any] = sorted([*kept, *runs], key=_start)
        out: list[Stored] = []
        group: list[Any] = [items[0]]
        end = items[0][1]
        for item in items[1:]:
            if item[0] < end:  # overlaps the group so far
                group.append(item)
                if item[1] > end:
                    end = item[1]
                continue
            self._close(
                key, group, end, mark, lateness, acc, batch, rows, times, out, late_rows, emitted
            )
            group, end = [item], item[1]
        self._close(
            key, group, end, mark, lateness, acc, batch, rows, times, out, late_rows, emitted
        )
        return out

    def _close(
        self,
        key: Hashable,
        group: list[Any],
        end: int,
        mark: int,
        lateness: int,
        acc: _Accumulator,
        batch: Any,
        rows: list[int],
        times: list[int],
        out: list[Stored],
        late_rows: list[int],
        emitted: list[tuple[Hashable, Stored]],
    ) -> None:
        """One group of overlapping kept sessions and runs: becomes one session, or late."""
        if len(group) == 1 and len(group[0]) == 3:  # a kept session the batch did not touch
            out.append(group[0])
            return
        has_kept = any(len(part) == 3 for part in group)
        if not has_kept and end + lateness <= mark:  # records that are only late
            for part in group:
                late_rows.extend(rows[part[2] : part[3] + 1])
            return
        value: Any = _MISSING
        for part in group:
            other = (
                part[2] if len(part) == 3 else acc.fold(batch, times, rows[part[2] : part[3] + 1])
            )
            value = other if value is _MISSING else acc.merge(value, other)
        stored: Stored = [group[0][0], end, value]
        out.append(stored)
        if end <= mark:  # an update of a fired session (or one that opened late)
            emitted.append((key, stored))
            self._clean_later(end, key)
        elif not any(len(part) == 3 and part[1] == end for part in group):
            # no firing entry for this end yet (a kept session with it has one)
            heapq.heappush(self._to_fire, (end, next(self._seq), key))

    def _clean_later(self, end: int, key: Hashable) -> None:
        if self.lateness:
            heapq.heappush(self._to_clean, (end + self.lateness, next(self._seq), key))

    # ---- firing ------------------------------------------------------------------

    def _emit(self, sessions: list[tuple[Hashable, Stored]]) -> None:
        result = self.accumulator.result
        out = [WindowResult(k, seconds(s[0]), seconds(s[1]), result(s[2])) for k, s in sessions]
        ends = np.fromiter((s[1] for _, s in sessions), np.int64, len(sessions))
        self.emit(out, ends - 1)  # event time: just before the end

    def on_watermark(self, mark: int) -> None:
        if mark <= self.watermark:
            return
        self.watermark = mark
        live = self.sessions.view()
        # Step 1: fire every session whose end the watermark reached, in end order.
        due: dict[Hashable, set[int]] = {}
        heap = self._to_fire
        while heap and heap[0][0] <= mark:
            end, _, key = heapq.heappop(heap)
            due.setdefault(key, set()).add(end)
        fired: list[tuple[Hashable, Stored]] = []
        writes: dict[Hashable, list[Stored]] = {}
        deletes: list[Hashable] = []
        for key, ends in due.items():
            kept: list[Stored] | None = live.get(key)
            if not kept:
                continue
            now = [s for s in kept if s[1] in ends]  # stale entries find nothing
            if not now:
                continue
            fired.extend((key, s) for s in now)
            if self.lateness:
                for s in now:
                    self._clean_later(s[1], key)
            else:  # no lateness: a fired session is gone at once
                rest = [s for s in kept if s[1] > mark]
                if rest:
                    writes[key] = rest
                else:
                    deletes.append(key)
        # Step 2: drop sessions past their allowed lateness.
        heap = self._to_clean
        cleanup: set[Hashable] = set()
        while heap and heap[0][0] <= mark:
            cleanup.add(heapq.heappop(heap)[2])
        for key in cleanup:
            kept = writes.get(key) or live.get(key)
            if not kept:
                continue
            rest = [s for s in kept if s[1] + self.lateness > mark]
            if len(rest) == len(kept):
                continue
            if rest:
                writes[key] = rest
            else:
                writes.pop(key, None)
                deletes.append(key)
        if writes:
            self.sessions.put_many(writes)
        for key in deletes:
            self.sessions.delete(key)
        if fired:
            fired.sort(key=_end)  # stable: keys in the order their entries popped
            self._emit(fired)

    # ---- checkpoints -------------------------------------------------------------

    def states(self) -> dict[str, Snapshottable]:
        return {self.sessions.name: self.sessions, self.meta.name: self.meta}

    def before_snapshot(self) -> None:
        if self.watermark != self._saved_mark:
            self.meta.put("watermark", self.watermark)
            self._saved_mark = self.watermark

    def after_restore(self) -> None:
        mark = self.meta.get("watermark", BEFORE_TIME)
        if isinstance(mark, bool) or not isinstance(mark, int):
            raise PipelineError(
                f"session window {self.name!r}: restored watermark {mark!r} is not an int"
            )
        self.watermark = self._saved_mark = mark
        self._seq = count()
        self._to_fire, self._to_clean = [], []
        for key, kept in self.sessions.items():
            for s in kept:
                if s[1] > mark:
                    self._to_fire.append((s[1], next(self._seq), key))
                elif self.lateness:
                    self._to_clean.append((s[1] + self.lateness, next(self._seq), key))
        heapq.heapify(self._to_fire)
        heapq.heapify(self._to_clean)


def _start(item: Sequence[Any]) -> int:
    return int(item[0])


def _end(item: tuple[Hashable, Stored]) -> int:
    return int(item[1][1])
