"""Keyed event-time windows (tumbling and sliding) on native state.

A window ``[start, end)`` fires when the watermark reaches ``end`` (no record
with an earlier time can still come). With ``allowed_lateness`` L its state
is kept until the watermark reaches ``end + L``; a record arriving in between
updates it and fires it again (an updated result). A record whose every
window is past ``end + L`` is *late*: it goes to the late side output. With
nothing connected there it is dropped, counted in ``late_records`` (summed
into ``RunResult.late_records``) and logged as a warning at most once per
``LATE_WARNING_INTERVAL`` seconds, so it never vanishes without a trace.

State (all incremental at checkpoints): one row per (key, window) in a
``ColumnarState`` addressed by ``key id << 32 | window index mod 2**32``,
with the window index and, for built-in aggregations, their accumulator
columns; generic Python accumulators in a ``ValueState`` by the same
composite; the key ids (``KeyIds``); and the operator's watermark. A window
whose end is at or below that watermark has fired, so nothing else records
it. The work per batch is vectorised: times are assigned to windows, keys
interned and rows found with one native call each, built-in aggregations
folded by native scatter kernels; a generic ``add`` is the one Python call
per record.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections.abc import Callable, Hashable
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from eoscore.pipeline.aggregations import Aggregation
from eoscore.pipeline.assigners import WindowAssigner
from eoscore.pipeline.errors import PipelineDefinitionError, PipelineError
from eoscore.pipeline.eventtime import BEFORE_TIME, seconds
from eoscore.pipeline.keyids import KeyIds
from eoscore.pipeline.operators import Node, PassNode, Times
from eoscore.state import ColumnarState, Snapshottable, ValueState

__all__ = ["LATE_WARNING_INTERVAL", "LateRecords", "WindowNode", "WindowResult"]

log = logging.getLogger(__name__)

#: Seconds between two warnings about late records dropped with no side output.
LATE_WARNING_INTERVAL = 10.0

I64 = npt.NDArray[np.int64]
_LOW32 = (1 << 32) - 1
_SPAN = 1 << 32  # live window indices must lie within this span (composite keys)
_MAX_COLUMNS = 7  # ColumnarState's limit: "window" + aggregation columns
_MISSING: Any = object()


class WindowResult(NamedTuple):
    """One window's result for one key; ``start``/``end`` in seconds."""

    key: Any
    start: int | float
    end: int | float
    value: Any


class LateRecords:
    """A window operator's late records: the side output, or a counted, logged drop."""

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self.node = PassNode(f"{owner}.late")
        self.count = 0
        self._warned_at = -float("inf")  # monotonic time of the last dropped-late warning
        self._warned_count = 0

    def send(self, values: list[Any], times: I64, watermark: int, lateness: int) -> None:
        self.count += len(values)
        if self.node.downstream:
            self.node.emit(values, times)
            return
        now = time.monotonic()
        if now - self._warned_at < LATE_WARNING_INTERVAL:
            return
        log.warning(
            "window %r dropped %d late records (%d in total; watermark %s us, allowed "
            "lateness %s us): nothing is connected to its late side output, "
            "connect .late() to keep them",
            self.owner,
            self.count - self._warned_count,
            self.count,
            watermark,
            lateness,
        )
        self._warned_at, self._warned_count = now, self.count


class WindowNode(Node):
    """Keyed tumbling/sliding windows with built-in or generic aggregation."""

    kind = "window"

    def __init__(
        self,
        name: str,
        key: Callable[[Any], Hashable],
        assigner: WindowAssigner,
        lateness_us: int,
        *,
        init: Callable[[], Any] | None = None,
        add: Callable[[Any, Any], Any] | None = None,
        result: Callable[[Any], Any] | None = None,
        aggs: dict[str, Aggregation] | None = None,
    ) -> None:
        super().__init__(name)
        if (aggs is None) == (add is None):
            raise PipelineDefinitionError("a window takes built-in aggregations or init/add")
        self.key = key
        self.assigner = assigner
        self.lateness = lateness_us
        self.init, self.add, self.result = init, add, result
        self.aggs = aggs or {}
        columns: dict[str, str] = {"window": "int64"}
        for out, agg in self.aggs.items():
            for part, dtype in agg.columns().items():
                columns[out + part] = dtype
        if len(columns) > _MAX_COLUMNS:
            raise PipelineDefinitionError(
                f"window {name!r}: its aggregations need {len(columns) - 1} state columns, "
                f"at most {_MAX_COLUMNS - 1} fit one window operator (mean_of, first_of and "
                "last_of take two): split them over two windows"
            )
        self.table = ColumnarState(f"{name}.windows", columns)
        self.accs = ValueState(f"{name}.acc") if add is not None else None
        self.keyids = KeyIds(name)
        self.meta = ValueState(f"{name}.meta")
        self.late_out = LateRecords(name)
        self.late = self.late_out.node
        self.watermark = BEFORE_TIME
        self._saved_mark = BEFORE_TIME
        self._members: dict[int, list[I64]] = {}  # window index -> composites, as added
        self._to_fire: list[int] = []  # heap of window indices not fired yet
        self._to_clean: list[int] = []  # heap of window indices with state
        self._lo = 0  # smallest live window index (when _members is not empty)

    @property
    def late_records(self) -> int:
        return self.late_out.count

    # ---- records -----------------------------------------------------------------

    def push(self, values: list[Any], times: Times, port: int = 0) -> None:
        if times is None:
            raise PipelineError(
                f"window {self.name!r}: records have no event time; "
                "call assign_timestamps(...) before window(...)"
            )
        if not values:
            return
        a = self.assigner
        kids = self.keyids.ids(list(map(self.key, values)))
        rows, index = a.assign(times)
        ends = index * a.slide_us + (a.offset_us + a.size_us)
        open_ = ends + self.lateness > self.watermark
        if not open_.all():
            placed = np.zeros(len(values), np.bool_)
            placed[rows[open_]] = True
            rows, index, ends = rows[open_], index[open_], ends[open_]
            if not placed.all():
                late = np.flatnonzero(~placed)
                self.late_out.send(
                    [values[i] for i in late.tolist()], times[late], self.watermark, self.lateness
                )
        if rows.shape[0]:
            self._place(values, times, kids, rows, index, ends)

    def _place(
        self, values: list[Any], times: I64, kids: I64, rows: I64, index: I64, ends: I64
    ) -> None:
        """Fold records ``rows`` into their windows ``index`` (all still open)."""
        self._check_span(index)
        comp = (kids[rows] << 32) | (index & _LOW32)
        slots, new = self.table.upsert(comp)
        if new.any():
            self._added(comp[new], index[new], slots[new])
        if self.accs is None:
            self._fold_native(values, times, rows, slots)
        else:
            self._fold_python(values, rows, comp)
        fired = ends <= self.watermark
        if fired.any():  # updates of fired windows (allowed lateness): fire them again
            self._emit(*_unique_pairs(comp[fired], index[fired]))

    def _check_span(self, index: I64) -> None:
        lo, hi = int(index.min()), int(index.max())
        if self._members:
            lo = min(lo, self._lo)
        if hi - lo >= _SPAN:
            raise PipelineError(
                f"window {self.name!r}: records {hi - lo} windows apart are open at once "
                f"(at most {_SPAN - 1}); an event time is far off (a unit mix-up, s vs ms?)"
            )

    def _added(self, comp: I64, index: I64, slots: I64) -> None:
        """New (key, window) rows: register them with their window, hold their keys."""
        comp, first = np.unique(comp, return_index=True)
        index, slots = index[first], slots[first]
        self.table.column("window")[slots] = index
        for agg_name, agg in self.aggs.items():
            agg.start(self._cols(agg_name, agg), slots)
        self.keyids.hold(comp >> 32)
        for w in np.unique(index).tolist():
            members = self._members.get(w)
            if members is None:
                if not self._members or w < self._lo:
                    self._lo = w
                members = self._members[w] = []
                heapq.heappush(self._to_clean, w)
                if self.assigner.end(w) > self.watermark:
                    heapq.heappush(self._to_fire, w)
            members.append(comp[index == w] if len(first) > 1 else comp)

    def _cols(self, out: str, agg: Aggregation) -> dict[str, npt.NDArray[Any]]:
        return {part: self.table.column(out + part) for part in agg.parts}

    def _fold_native(self, values: list[Any], times: I64, rows: I64, slots: I64) -> None:
        # One window per record and none late: rows is 0..n-1, no gather needed.
        identity = self.assigner.per_record == 1 and rows.shape[0] == len(values)
        extracted: dict[tuple[Any, str], npt.NDArray[Any] | None] = {}
        t = times if identity else times[rows]
        for out, agg in self.aggs.items():
            field = agg.field if isinstance(agg.field, (str, int)) else id(agg.field)
            vals = extracted.get((field, agg.dtype), _MISSING)
            if vals is _MISSING:
                vals = extracted[field, agg.dtype] = agg.extract(values)
            if vals is not None and not identity:
                vals = vals[rows]
            agg.fold(self._cols(out, agg), slots, vals, t)

    def _fold_python(self, values: list[Any], rows: I64, comp: I64) -> None:
        accs = self.accs
        assert accs is not None and self.add is not None and self.init is not None
        add, init, live = self.add, self.init, accs.view().get
        touched: dict[int, Any] = {}
        seen = touched.get
        if rows.shape[0] == len(values) and self.assigner.per_record == 1:
            records: Any = values  # rows is 0..n-1: no gather
        else:
            records = [values[r] for r in rows.tolist()]
        for v, c in zip(records, comp.tolist(), strict=True):
            acc = seen(c, _MISSING)
            if acc is _MISSING:
                acc = live(c, _MISSING)
                if acc is _MISSING:
                    acc = init()
            touched[c] = add(acc, v)
        accs.put_many(touched)

    # ---- firing ------------------------------------------------------------------

    def _emit(self, comp: I64, index: I64) -> None:
        """Emit the results of (composite, window index) pairs, in that order."""
        if not comp.shape[0]:
            return
        a = self.assigner
        keys = self.keyids.keys_of(comp >> 32)
        starts = index * a.slide_us + a.offset_us
        if self.accs is None:
            rows = self.table.rows_of(comp)
            names = list(self.aggs)
            columns = [
                agg.result(self._cols(n, agg), rows).tolist() for n, agg in self.aggs.items()
            ]
            if len(names) == 1:
                (only,) = names
                values: list[Any] = [{only: v} for v in columns[0]]
            else:
                values = [dict(zip(names, row, strict=True)) for row in zip(*columns, strict=True)]
        else:
            live = self.accs.view()
            values = [live[c] for c in comp.tolist()]
            if self.result is not None:
                values = list(map(self.result, values))
        make = tuple.__new__  # WindowResult's own __new__ is Python: skip it per row
        first, last = int(starts[0]), int(starts[-1])
        out: list[WindowResult]
        if first == last and (starts == first).all():  # one window (firing): one bound pair
            b0, b1 = seconds(first), seconds(first + a.size_us)
            out = [make(WindowResult, (k, b0, b1, v)) for k, v in zip(keys, values, strict=True)]
        else:
            bounds: dict[int, tuple[int | float, int | float]] = {}
            out = []
            for key, s, v in zip(keys, starts.tolist(), values, strict=True):
                b = bounds.get(s)
                if b is None:
                    b = bounds[s] = (seconds(s), seconds(s + a.size_us))
                out.append(make(WindowResult, (key, b[0], b[1], v)))
        self.emit(out, starts + (a.size_us - 1))  # event time: just before the end

    def on_watermark(self, mark: int) -> None:
        if mark <= self.watermark:
            return
        self.watermark = mark
        a = self.assigner
        fire_below = a.first_closed(mark)  # windows below this index have end <= mark
        while self._to_fire and self._to_fire[0] < fire_below:
            w = heapq.heappop(self._to_fire)
            members = self._members.get(w)
            if members:
                comp = members[0] if len(members) == 1 else np.concatenate(members)
                members[:] = [comp]
                self._emit(comp, np.full(comp.shape[0], w, np.int64))
        clean_below = a.first_closed(mark - self.lateness)  # end + lateness <= mark
        while self._to_clean and self._to_clean[0] < clean_below:
            self._drop(heapq.heappop(self._to_clean))

    def _drop(self, w: int) -> None:
        members = self._members.pop(w, None)
        if not members:
            return
        comp = np.concatenate(members)
        self.table.delete(comp)
        if self.accs is not None:
            delete = self.accs.delete
            for c in comp.tolist():
                delete(c)
        self.keyids.release(comp >> 32, len(self.table))
        if self._members and w == self._lo:
            self._lo = min(self._members)

    # ---- checkpoints -------------------------------------------------------------

    def states(self) -> dict[str, Snapshottable]:
        states: list[Snapshottable] = [self.table, self.keyids.state, self.meta]
        if self.accs is not None:
            states.append(self.accs)
        return {s.name: s for s in states}  # type: ignore[attr-defined]

    def before_snapshot(self) -> None:
        if self.watermark != self._saved_mark:
            self.meta.put("watermark", self.watermark)
            self._saved_mark = self.watermark

    def after_restore(self) -> None:
        mark = self.meta.get("watermark", BEFORE_TIME)
        if not isinstance(mark, int):
            raise PipelineError(f"window {self.name!r}: restored watermark {mark!r} is not an int")
        self.watermark = self._saved_mark = mark
        comp, cols = self.table.items()
        index = cols["window"]
        self.keyids.restore(comp >> 32)
        self._members, self._to_fire, self._to_clean = {}, [], []
        if comp.shape[0]:
            order = np.argsort(index, kind="stable")
            comp, index = comp[order], index[order]
            bounds = np.flatnonzero(np.diff(index)) + 1
            for part in np.split(np.arange(comp.shape[0]), bounds):
                w = int(index[part[0]])
                self._members[w] = [comp[part]]
                self._to_clean.append(w)
                if self.assigner.end(w) > mark:
                    self._to_fire.append(w)
            heapq.heapify(self._to_clean)
            heapq.heapify(self._to_fire)
            self._lo = min(self._members)


def _unique_pairs(comp: I64, index: I64) -> tuple[I64, I64]:
    """Distinct composites (in first-seen order) with their window indices."""
    uniq, first = np.unique(comp, return_index=True)
    order = np.argsort(first)
    return uniq[order], index[first[order]]
