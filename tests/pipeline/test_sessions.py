"""Session windows (``SessionNode``) against plain-Python models of the documented rules.

The rules (``eoscore.pipeline.sessions``, docs/runtime.md "Session windows"):
a record at ``t`` opens ``[t, t + gap)``; windows of a key that overlap
(share an instant) merge, so two records are in one session when a chain of
the key's time-sorted records joins them with every step *less than* ``gap``
apart. A session fires when ``end <= watermark``; with allowed lateness
``L`` it is kept until ``end + L <= watermark``. Per batch, a key's records
are merged with each other and with its kept sessions; a merged session
that holds no kept session and has ``end + L <= watermark`` is late (its
records go to the late output); any other changed session with ``end <=
watermark`` is emitted at once.

The models below follow those sentences, with no code from the operator:
``batch_sessions`` splits sorted times where the step is ``>= gap``;
``StreamingModel`` keeps each session as its list of records and merges
groups pairwise until nothing overlaps. Expected values are never computed
by the code under test.
"""

from __future__ import annotations

import json
import logging
import random
import signal
import tempfile
from collections import Counter, defaultdict
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eoscore.checkpoint import Checkpointer, FileCheckpointStorage, restore_into
from eoscore.pipeline.aggregations import (
    count,
    first_of,
    last_of,
    max_of,
    mean_of,
    min_of,
    sum_of,
)
from eoscore.pipeline.assigners import Session
from eoscore.pipeline.errors import PipelineDefinitionError, PipelineError
from eoscore.pipeline.eventtime import BEFORE_TIME, END_OF_TIME
from eoscore.pipeline.operators import Node
from eoscore.pipeline.sessions import SessionNode
from eoscore.pipeline.windows import WindowResult
from tests.pipeline.session_chaos_job import GAP
from tests.pipeline.test_exactly_once import KILLED, read_committed, run_module

US = 1_000_000
Record = tuple[Any, int, int]  # (key, time in us, value)
#: What one step emitted: results as (key, start_us, end_us, value), late records.
Out = tuple[Counter[tuple[Any, int, int, Any]], list[Record]]


# ---- the operator under test, driven directly -----------------------------------------


class Recorder(Node):
    """A downstream node that keeps what it is given, per call."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.batches: list[tuple[list[Any], list[int]]] = []

    def push(self, values: list[Any], times: Any, port: int = 0) -> None:
        assert isinstance(times, np.ndarray) and times.dtype == np.int64
        assert len(times) == len(values)
        self.batches.append((list(values), times.tolist()))

    def take(self) -> list[tuple[Any, int]]:
        got = [(v, t) for values, times in self.batches for v, t in zip(values, times, strict=True)]
        self.batches.clear()
        return got


def to_us(s: int | float) -> int:
    """Seconds from a WindowResult back to microseconds (exact below 2**53 us)."""
    return s * US if isinstance(s, int) else round(s * US)


def expected_seconds(us: int) -> int | float:
    """The documented output form: an int when whole, else the float us / 10**6."""
    return us // US if us % US == 0 else us / US


def user_node(gap_us: int, lateness_us: int, name: str = "s") -> SessionNode:
    """Accumulator (count, sum of values): commutative, so fold order does not matter."""
    return SessionNode(
        name,
        lambda r: r[0],
        Session(gap_us / US),
        lateness_us,
        init=lambda: (0, 0),
        add=lambda acc, r: (acc[0] + 1, acc[1] + r[2]),
        merge=lambda a, b: (a[0] + b[0], a[1] + b[1]),
    )


def builtin_node(gap_us: int, lateness_us: int, name: str = "s") -> SessionNode:
    return SessionNode(
        name,
        lambda r: r[0],
        Session(gap_us / US),
        lateness_us,
        aggs={"n": count(), "total": sum_of(2, "int64")},
    )


def as_pair(value: Any) -> tuple[int, int]:
    """(count, sum) from either node kind's result."""
    if isinstance(value, dict):
        return (value["n"], value["total"])
    return (value[0], value[1])


class Harness:
    """A SessionNode with recorders on its result and late outputs."""

    def __init__(self, node: SessionNode, connect_late: bool = True) -> None:
        self.node = node
        self.results = Recorder("results")
        node.connect_to(self.results)
        self.late = Recorder("late")
        if connect_late:
            node.late.connect_to(self.late)

    def push(self, records: list[Record]) -> Out:
        self.node.push(records, np.array([r[1] for r in records], np.int64))
        return self._out()

    def mark(self, w: int) -> Out:
        self.node.on_watermark(w)
        return self._out()

    def _out(self) -> Out:
        got: Counter[tuple[Any, int, int, Any]] = Counter()
        for r, t in self.results.take():
            assert isinstance(r, WindowResult)
            start, end = to_us(r.start), to_us(r.end)
            assert r.start == expected_seconds(start) and type(r.start) is type(
                expected_seconds(start)
            )
            assert r.end == expected_seconds(end)
            assert t == end - 1  # event time of a result: just before its end
            got[(r.key, start, end, as_pair(r.value))] += 1
        late = [v for v, _ in self.late.take()]
        return got, late


# ---- the models -------------------------------------------------------------------------


def batch_sessions(records: list[Record], gap: int) -> Counter[tuple[Any, int, int, Any]]:
    """Every session of all records at once: split each key's sorted times at steps >= gap."""
    by_key: dict[Any, list[tuple[int, int]]] = defaultdict(list)
    for k, t, v in records:
        by_key[k].append((t, v))
    out: Counter[tuple[Any, int, int, Any]] = Counter()
    for k, items in by_key.items():
        items.sort()
        group = [items[0]]
        for item in items[1:]:
            if item[0] - group[-1][0] < gap:
                group.append(item)
            else:
                out[
                    (k, group[0][0], group[-1][0] + gap, (len(group), sum(v for _, v in group)))
                ] += 1
                group = [item]
        out[(k, group[0][0], group[-1][0] + gap, (len(group), sum(v for _, v in group)))] += 1
    return out


class StreamingModel:
    """The documented streaming rules, naively: a session is the list of its records."""

    def __init__(self, gap: int, lateness: int) -> None:
        self.gap, self.lateness = gap, lateness
        self.watermark = BEFORE_TIME
        self.sessions: dict[Any, list[list[Record]]] = {}

    def bounds(self, records: list[Record]) -> tuple[int, int]:
        return min(r[1] for r in records), max(r[1] for r in records) + self.gap

    def result(self, key: Any, records: list[Record]) -> tuple[Any, int, int, Any]:
        start, end = self.bounds(records)
        return (key, start, end, (len(records), sum(r[2] for r in records)))

    def push(self, records: list[Record]) -> Out:
        out: Counter[tuple[Any, int, int, Any]] = Counter()
        late: list[Record] = []
        late_ids: set[int] = set()
        for key in {r[0] for r in records}:
            # [records, holds a kept session, touched by this batch]
            groups: list[list[Any]] = [[list(s), True, False] for s in self.sessions.get(key, [])]
            groups += [[[r], False, True] for r in records if r[0] == key]
            merged = True
            while merged:  # merge any two groups whose windows overlap, until none do
                merged = False
                for a in range(len(groups)):
                    for b in range(a + 1, len(groups)):
                        (s1, e1), (s2, e2) = self.bounds(groups[a][0]), self.bounds(groups[b][0])
                        if s1 < e2 and s2 < e1:
                            ga, gb = groups[a], groups.pop(b)
                            groups[a] = [ga[0] + gb[0], ga[1] or gb[1], ga[2] or gb[2]]
                            merged = True
                            break
                    if merged:
                        break
            kept = []
            for recs, has_kept, touched in groups:
                _, end = self.bounds(recs)
                if touched and not has_kept and end + self.lateness <= self.watermark:
                    late_ids.update(id(r) for r in recs)
                    continue
                kept.append(recs)
                if touched and end <= self.watermark:
                    out[self.result(key, recs)] += 1
            self.sessions[key] = kept
        late = [r for r in records if id(r) in late_ids]  # in batch order
        return out, late

    def mark(self, w: int) -> Out:
        out: Counter[tuple[Any, int, int, Any]] = Counter()
        if w <= self.watermark:
            return out, []
        for key, sessions in self.sessions.items():
            for recs in sessions:
                _, end = self.bounds(recs)
                if self.watermark < end <= w:
                    out[self.result(key, recs)] += 1
            self.sessions[key] = [s for s in sessions if self.bounds(s)[1] + self.lateness > w]
        self.watermark = w
        return out, []


# ---- strategies -------------------------------------------------------------------------

KEYS = st.sampled_from(["a", "b", 7, ("t", 1)])
GRID = st.sampled_from([1, 5, 10])


@st.composite
def records(draw: st.DrawFn, grid: int = 1, max_size: int = 60) -> list[Record]:
    """Up to ``max_size`` records at times 0..400, multiples of ``grid``."""
    n = draw(st.integers(1, max_size))
    times = [grid * t for t in draw(st.lists(st.integers(0, 400 // grid), min_size=n, max_size=n))]
    keys = draw(st.lists(KEYS, min_size=n, max_size=n))
    # Distinct values: records are told apart by them.
    return [(k, t, i + 1) for i, (k, t) in enumerate(zip(keys, times, strict=True))]


def split(draw: st.DrawFn, items: list[Record]) -> list[list[Record]]:
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(items) - 1)), max_size=8)))
    bounds = [0, *[c for c in cuts if c < len(items)], len(items)]
    return [items[a:b] for a, b in pairwise(bounds) if b > a]


Op = tuple[str, Any]  # ("push", records) | ("mark", watermark)


@st.composite
def on_time_ops(draw: st.DrawFn) -> tuple[int, int, list[Record], list[Op]]:
    """Batches and watermarks where no watermark passes a record still to come."""
    grid = draw(GRID)  # a coarse grid puts times, ends and watermarks on one another
    gap = grid * draw(st.integers(1, 60 // grid))
    lateness = draw(st.sampled_from([0, 1, 25, 1000]))
    recs = draw(records(grid))
    ops: list[Op] = []
    batches = split(draw, recs)
    w = BEFORE_TIME
    for i, batch in enumerate(batches):
        ops.append(("push", batch))
        rest = [r[1] for b in batches[i + 1 :] for r in b]
        if rest and draw(st.booleans()):
            w = draw(st.integers(max(w, -5), min(rest)))
            ops.append(("mark", w))
    ops.append(("mark", END_OF_TIME))
    return gap, lateness, recs, ops


@st.composite
def any_ops(draw: st.DrawFn) -> tuple[int, int, list[Op]]:
    """Batches and rising watermarks anywhere: records may be late, sessions updated."""
    grid = draw(GRID)
    gap = grid * draw(st.integers(1, 60 // grid))
    lateness = grid * draw(st.sampled_from([0, 1, 6, 40]))
    ops: list[Op] = []
    w = -5
    for batch in split(draw, draw(records(grid, max_size=50))):
        ops.append(("push", batch))
        if draw(st.booleans()):
            w = max(w, 0) + grid * draw(st.integers(0, 120 // grid))
            ops.append(("mark", w))
    if draw(st.booleans()):
        ops.append(("mark", END_OF_TIME))
    return gap, lateness, ops


def run_ops(h: Any, ops: list[Op]) -> list[Out]:
    return [h.push(arg) if op == "push" else h.mark(arg) for op, arg in ops]


NODES: list[Callable[[int, int], SessionNode]] = [user_node, builtin_node]


# ---- properties -------------------------------------------------------------------------


@pytest.mark.parametrize("make", NODES, ids=["python", "builtin"])
@settings(max_examples=150, deadline=None)
@given(case=on_time_ops())
def test_on_time_records_give_the_batch_sessions_each_once(
    make: Callable[[int, int], SessionNode], case: tuple[int, int, list[Record], list[Op]]
) -> None:
    gap, lateness, recs, ops = case
    h = Harness(make(gap, lateness))
    total: Counter[tuple[Any, int, int, Any]] = Counter()
    for got, late in run_ops(h, ops):
        assert not late
        total += got
    assert total == batch_sessions(recs, gap)  # every session once, none partial
    assert h.node.late_records == 0
    assert len(h.node.sessions) == 0  # END_OF_TIME: everything fired and cleaned up


@pytest.mark.parametrize("make", NODES, ids=["python", "builtin"])
@settings(max_examples=150, deadline=None)
@given(case=any_ops())
def test_every_step_matches_the_streaming_model(
    make: Callable[[int, int], SessionNode], case: tuple[int, int, list[Op]]
) -> None:
    gap, lateness, ops = case
    h = Harness(make(gap, lateness))
    model = StreamingModel(gap, lateness)
    late_total = 0
    for step, (got, want) in enumerate(zip(run_ops(h, ops), run_ops(model, ops), strict=True)):
        assert got[0] == want[0], f"step {step} {ops[step][0]}: results"
        assert got[1] == want[1], f"step {step}: late records"
        late_total += len(want[1])
    assert h.node.late_records == late_total


# ---- examples -----------------------------------------------------------------------------


def test_records_exactly_gap_apart_start_a_new_session() -> None:
    h = Harness(user_node(10, 0))
    h.push([("a", 0, 1), ("a", 10, 2), ("a", 19, 4)])
    got, _ = h.mark(END_OF_TIME)
    assert got == Counter({("a", 0, 10, (1, 1)): 1, ("a", 10, 29, (2, 6)): 1})


def test_an_out_of_order_record_bridges_two_sessions() -> None:
    h = Harness(user_node(10, 0))
    h.push([("a", 0, 1), ("a", 15, 2), ("b", 7, 100)])
    assert h.mark(5) == (Counter(), [])
    got, _ = h.push([("a", 7, 4)])  # [7, 17) overlaps [0, 10) and [15, 25)
    assert not got
    got, _ = h.mark(25)
    assert got == Counter({("a", 0, 25, (3, 7)): 1, ("b", 7, 17, (1, 100)): 1})
    assert len(h.node.sessions) == 0


def test_one_batch_bridges_runs_and_kept_sessions() -> None:
    h = Harness(user_node(10, 0))
    h.push([("a", 0, 1), ("a", 30, 2)])
    # 8 joins [0, 10); 16 and 24 chain it on to [30, 40); 60 stays apart.
    h.push([("a", 24, 4), ("a", 60, 8), ("a", 8, 16), ("a", 16, 32)])
    got, _ = h.mark(END_OF_TIME)
    assert got == Counter({("a", 0, 40, (5, 55)): 1, ("a", 60, 70, (1, 8)): 1})


def test_allowed_lateness_updates_a_fired_session() -> None:
    h = Harness(user_node(10, 20))
    h.push([("a", 0, 1)])
    assert h.mark(10)[0] == Counter({("a", 0, 10, (1, 1)): 1})
    # Joins the fired session; its new end 15 is still ahead: fires at 15.
    assert h.push([("a", 5, 2)]) == (Counter(), [])
    assert h.mark(15)[0] == Counter({("a", 0, 15, (2, 3)): 1})
    # Within the fired session: an updated result at once.
    assert h.push([("a", 3, 4)])[0] == Counter({("a", 0, 15, (3, 7)): 1})
    # Opens a session that is already over but within the lateness: emitted at once.
    assert h.push([("b", 2, 8)])[0] == Counter({("b", 2, 12, (1, 8)): 1})
    # end + lateness = 35: state dropped; then [4, 14) is late, [30, 40) is not.
    assert h.mark(35) == (Counter(), [])
    assert len(h.node.sessions) == 0
    got, late = h.push([("a", 4, 16), ("a", 30, 32)])
    assert got == Counter() and late == [("a", 4, 16)]
    assert h.mark(40)[0] == Counter({("a", 30, 40, (1, 32)): 1})
    assert h.node.late_records == 1


def test_without_lateness_a_record_behind_a_fired_session_opens_a_new_one() -> None:
    h = Harness(user_node(10, 0))
    h.push([("a", 0, 1)])
    assert h.mark(12)[0] == Counter({("a", 0, 10, (1, 1)): 1})
    assert len(h.node.sessions) == 0  # no lateness: dropped when it fired
    # [1, 11) is over at 12 and joins nothing: late. [5, 15) is not: a session of its own.
    assert h.push([("a", 1, 4)]) == (Counter(), [("a", 1, 4)])
    assert h.push([("a", 5, 2)]) == (Counter(), [])
    # Lateness is decided per batch: a batch-mate less than a gap later carries 1 along.
    assert h.push([("c", 1, 8), ("c", 5, 16)]) == (Counter(), [])
    assert h.mark(END_OF_TIME)[0] == Counter({("a", 5, 15, (1, 2)): 1, ("c", 1, 15, (2, 24)): 1})


def test_lateness_boundaries_are_exact() -> None:
    h = Harness(user_node(10, 5))
    h.mark(20)
    # [5, 15) + 5 = 20 <= 20: late. [6, 16) + 5 = 21 > 20: kept, and over: emitted.
    assert h.push([("a", 5, 1)]) == (Counter(), [("a", 5, 1)])
    assert h.push([("b", 6, 2)]) == (Counter({("b", 6, 16, (1, 2)): 1}), [])
    assert h.mark(21) == (Counter(), [])  # 16 + 5 <= 21: dropped without a second result
    assert len(h.node.sessions) == 0
    # A session ending exactly at the watermark fires at it, and only then.
    h.push([("c", 30, 4)])
    assert h.mark(39) == (Counter(), [])
    assert h.mark(40)[0] == Counter({("c", 30, 40, (1, 4)): 1})


def test_late_records_go_to_the_side_output_exactly() -> None:
    h = Harness(builtin_node(10, 5))
    h.push([("a", 100, 1)])
    h.mark(200)
    batch = [("a", 150, 1), ("b", 184, 2), ("a", 186, 4), ("c", 10, 8), ("a", 195, 16)]
    got, late = h.push(batch)
    # 150: [150, 160) + 5 <= 200; 184: 194 + 5 <= 200; 186: 201 > 200; 10: late; 195 on time.
    assert late == [("a", 150, 1), ("b", 184, 2), ("c", 10, 8)]
    assert h.node.late_records == 3
    assert got == Counter()  # [186, 205) (186 and 195 are 9 apart) ends after 200
    assert h.mark(205)[0] == Counter({("a", 186, 205, (2, 20)): 1})


def test_dropped_late_records_are_counted_and_warned_about(
    caplog: pytest.LogCaptureFixture,
) -> None:
    h = Harness(user_node(10, 0), connect_late=False)
    h.mark(1000)
    with caplog.at_level(logging.WARNING, logger="eoscore.pipeline.windows"):
        for _ in range(20):
            h.push([("a", 1, 1), ("b", 2, 2)])
    assert h.node.late_records == 40
    warnings = [r.getMessage() for r in caplog.records if "late" in r.getMessage()]
    assert len(warnings) == 1  # rate limited
    assert "dropped 2 late records" in warnings[0] and "connect .late()" in warnings[0]
    assert len(h.node.sessions) == 0


def builtin_results(aggs: dict[str, Any]) -> list[Any]:
    """Two batches of key "a" through a SessionNode(gap 10 s) with ``aggs``, to the end."""
    node = SessionNode("s", lambda r: r["k"], Session(10), 0, aggs=aggs)
    out = Recorder("out")
    node.connect_to(out)
    rows = [(5, 3), (1, 7), (12, 2), (1, 9), (25, 4), (40, 100)]  # (t seconds, v)
    recs: list[dict[str, Any]] = [{"k": "a", "t": t, "v": v} for t, v in rows]
    for part in (recs[:3], recs[3:]):  # the second batch's 1 merges into [1, 22)
        node.push(part, np.array([r["t"] * US for r in part], np.int64))
    node.on_watermark(END_OF_TIME)
    got = [v for v, _ in out.take()]
    # 1, 1, 5, 12 chain (< 10 apart); 25 is 13 after 12; 40 is 15 after 25.
    assert [(r.start, r.end) for r in got] == [(1, 22), (25, 35), (40, 50)]
    return [r.value for r in got]


def test_builtin_aggregations_follow_their_definitions() -> None:
    aggs = {
        "n": count(),
        "total": sum_of("v", "int64"),
        "mean": mean_of("v"),
        "first": first_of("v", "int64"),
        "last": last_of("v", "int64"),
    }
    # first: t=1 twice, 7 was seen first; last: the latest time, 12.
    assert builtin_results(aggs) == [
        {"n": 4, "total": 21, "mean": 5.25, "first": 7, "last": 2},
        {"n": 1, "total": 4, "mean": 4.0, "first": 4, "last": 4},
        {"n": 1, "total": 100, "mean": 100.0, "first": 100, "last": 100},
    ]


def test_builtin_min_and_max_merge() -> None:
    aggs = {"lo": min_of("v"), "hi": max_of("v", "int64")}
    assert builtin_results(aggs) == [
        {"lo": 2.0, "hi": 9},
        {"lo": 4.0, "hi": 4},
        {"lo": 100.0, "hi": 100},
    ]


def test_fold_order_is_time_order_within_a_batch_then_start_order() -> None:
    node = SessionNode(
        "s",
        lambda r: r[0],
        Session(10 / US),
        0,
        init=lambda: (),
        add=lambda acc, r: (*acc, r[2]),
        merge=lambda a, b: a + b,
    )
    h = Harness(node)
    node.push([("a", 20, "x")], np.array([20], np.int64))
    node.push(
        [("a", 5, "p"), ("a", 12, "q"), ("a", 3, "r"), ("a", 12, "s")],
        np.array([5, 12, 3, 12], np.int64),
    )
    node.on_watermark(END_OF_TIME)
    # The batch's run [3, 22) (r, p, q, s: by time, ties in batch order) starts
    # before the kept [20, 30) (x): merged in start order.
    ((result, _),) = h.results.take()
    assert result == WindowResult("a", 3 / US, 30 / US, ("r", "p", "q", "s", "x"))


def test_fractional_bounds_are_exact_seconds() -> None:
    node = user_node(700_000, 0)  # Session(0.7)
    out = Recorder("out")
    node.connect_to(out)
    node.push([("a", 2_100_000, 1)], np.array([2_100_000], np.int64))
    node.on_watermark(2_800_000)
    assert out.take() == [(WindowResult("a", 2.1, 2.8, (1, 1)), 2_799_999)]


def test_definition_errors() -> None:
    key = lambda r: r  # noqa: E731
    with pytest.raises(PipelineDefinitionError, match="merge"):
        SessionNode("s", key, Session(1), 0, init=lambda: 0, add=lambda a, r: a)
    with pytest.raises(PipelineDefinitionError, match="not both"):
        SessionNode("s", key, Session(1), 0, add=lambda a, r: a, aggs={"n": count()})
    with pytest.raises(PipelineDefinitionError, match="init and add"):
        SessionNode("s", key, Session(1), 0)
    with pytest.raises(PipelineDefinitionError, match="at least one"):
        SessionNode("s", key, Session(1), 0, aggs={})
    with pytest.raises(PipelineDefinitionError, match="lateness"):
        SessionNode("s", key, Session(1), -1, aggs={"n": count()})
    with pytest.raises(PipelineDefinitionError, match="positive"):
        Session(0)
    node = SessionNode("s", key, Session(1), 0, aggs={"n": count()})
    with pytest.raises(PipelineError, match="assign_timestamps"):
        node.push([1], None)


# ---- checkpoint and restore ----------------------------------------------------------------


def checkpointed_run(
    make: Callable[[], SessionNode], ops: list[Op], barriers: list[int], crash: int, storage: Path
) -> list[Out]:
    """Run ops with checkpoints after the ops in ``barriers``, crash after op ``crash``,
    restore from the newest checkpoint into a fresh node and replay from there.

    Returns what a two-phase sink would have committed: each step's output up to
    the last barrier, then the restored node's output for every op after it.
    """
    with FileCheckpointStorage(storage) as store:
        h = Harness(make())
        cp = Checkpointer(store, h.node.states(), max_chain=3)
        outputs: list[Out] = []
        last = -1
        for i, op in enumerate(ops[: crash + 1]):
            outputs.append(run_ops(h, [op])[0])
            if i in barriers:
                h.node.before_snapshot()
                cp.checkpoint({"op": i})
                last = i
        cp.wait()
        del outputs[last + 1 :]  # not committed: lost with the crash
        h = Harness(make())
        manifest = Checkpointer(store, h.node.states()).restore()
        assert (manifest is None) == (last < 0)
        if manifest is not None:
            assert manifest.sources == {"op": last}
        h.node.after_restore()
        if last >= 0:  # the executor re-announces the restored watermark: fires nothing
            mark = h.node.watermark
            if mark != BEFORE_TIME:
                assert h.mark(mark) == (Counter(), [])
        outputs += run_ops(h, ops[last + 1 :])
        return outputs


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=any_ops(), data=st.data())
def test_a_restore_neither_repeats_nor_loses_a_session(
    case: tuple[int, int, list[Op]], data: st.DataObject
) -> None:
    gap, lateness, ops = case
    barriers = sorted(data.draw(st.sets(st.integers(0, len(ops) - 1), max_size=4)))
    crash = data.draw(st.integers(barriers[-1] if barriers else 0, len(ops) - 1))
    make = NODES[data.draw(st.integers(0, 1))]
    reference = run_ops(Harness(make(gap, lateness)), ops)
    with tempfile.TemporaryDirectory() as tmp:
        got = checkpointed_run(lambda: make(gap, lateness), ops, barriers, crash, Path(tmp))
    assert got == reference


@pytest.mark.parametrize("lateness", [0, 1, 100])
def test_a_session_ending_at_the_restored_watermark_is_not_fired_again(
    tmp_path: Path, lateness: int
) -> None:
    with FileCheckpointStorage(tmp_path) as store:
        h = Harness(user_node(10, lateness))
        cp = Checkpointer(store, h.node.states())
        h.push([("a", 0, 1), ("b", 11, 2)])
        assert h.mark(10)[0] == Counter({("a", 0, 10, (1, 1)): 1})
        h.node.before_snapshot()
        cp.checkpoint({})
        again = Harness(user_node(10, lateness))
        restore_into(store, 1, again.node.states())
        again.node.after_restore()
        assert again.mark(10) == (Counter(), [])
        assert again.mark(END_OF_TIME)[0] == Counter({("b", 11, 21, (1, 2)): 1})


def test_restore_keeps_fired_and_pending_sessions_apart(tmp_path: Path) -> None:
    with FileCheckpointStorage(tmp_path) as store:
        h = Harness(user_node(10, 50))
        cp = Checkpointer(store, h.node.states())
        h.push([("a", 0, 1), ("b", 30, 2), (("t", 1), 5, 4)])
        assert h.mark(20)[0] == Counter({("a", 0, 10, (1, 1)): 1, (("t", 1), 5, 15, (1, 4)): 1})
        h.node.before_snapshot()
        cp.checkpoint({})
        again = Harness(user_node(10, 50))
        restore_into(store, 1, again.node.states())
        again.node.after_restore()
        assert again.node.watermark == 20
        assert again.mark(20) == (Counter(), [])
        # A fired session kept for lateness still takes updates after the restore.
        assert again.push([("a", 2, 8)])[0] == Counter({("a", 0, 12, (2, 9)): 1})
        assert again.mark(END_OF_TIME)[0] == Counter({("b", 30, 40, (1, 2)): 1})


# ---- exactly once under SIGKILL ------------------------------------------------------------

CHAOS_KEYS = 40
CHAOS_CHUNK = 5_000
#: (failpoint, hit at which it kills): mid-window, each step of the commit, recovery.
CHAOS_FAILPOINTS = [
    ("runtime.after_batch", 5),
    ("runtime.mid_snapshot", 1),
    ("runtime.after_pending_write", 1),
    ("runtime.after_decision", 1),
    ("files.mid_commit", 1),
    ("runtime.between_sink_commits", 1),
    ("runtime.after_sink_commits", 1),
    ("runtime.mid_restore", 1),
]


class SessionInput:
    """Events appended to 4 files in chunks (file 0 is read slowly).

    A key has an event every 20 s on average, against a 10 s gap: sessions of
    one event and long chains both occur. Times are out of order by up to 40 s
    (the job's bound is 60), so records bridge sessions but none is late.
    """

    def __init__(self, directory: Path, seed: int) -> None:
        self.directory = directory
        self.rng = random.Random(seed)
        self.events: list[dict[str, int]] = []
        directory.mkdir()
        for f in range(4):
            (directory / f"events-{f}.jsonl").touch()

    def append(self, n: int) -> None:
        lines: list[list[str]] = [[] for _ in range(4)]
        for i in range(len(self.events), len(self.events) + n):
            e = {
                "k": self.rng.randrange(CHAOS_KEYS),
                "t": i // 2 + self.rng.randint(0, 40),
                "v": i % 89,
            }
            self.events.append(e)
            lines[0 if i % 10 == 0 else 1 + i % 3].append(json.dumps(e) + "\n")
        for f in range(4):
            with open(self.directory / f"events-{f}.jsonl", "a") as out:
                out.write("".join(lines[f]))


def check_sessions(out_dir: Path, events: list[dict[str, int]]) -> None:
    model = batch_sessions([(e["k"], e["t"] * US, e["v"]) for e in events], GAP * US)
    want = Counter({(k, s // US, e // US, v): n for (k, s, e, v), n in model.items()})
    for name in ("python", "builtin"):
        rows = read_committed(out_dir / name)
        got = Counter((r[0], r[1], r[2], as_pair(r[3])) for r in rows)
        twice = [s for s, n in got.items() if n > 1]
        assert not twice, f"{name}: sessions emitted twice: {twice[:5]}"
        missing, extra = want - got, got - want
        assert not missing and not extra, (
            f"{name}: {len(missing)} sessions missing (first {sorted(missing)[:3]}), "
            f"{len(extra)} that should not exist (first {sorted(extra)[:3]})"
        )


@pytest.mark.slow
def test_session_windows_exactly_once_under_sigkill(tmp_path: Path) -> None:
    def run(args: list[str], failpoint: str | None = None, kill_after: float = 60) -> int:
        return run_module("tests.pipeline.session_chaos_job", args, failpoint, kill_after)

    source = SessionInput(tmp_path / "in", seed=5)
    args = [str(tmp_path / "in"), str(tmp_path / "state"), str(tmp_path / "out"), "0.1"]
    rng = random.Random(3)
    fired: set[str] = set()
    kills = 0
    # Every run but the last follows the files (a channel that ended has an
    # infinite watermark, and later lines would be late), fed a chunk first.
    for name, at in CHAOS_FAILPOINTS:
        source.append(CHAOS_CHUNK)
        if run([*args, "--follow"], f"{name}=kill@{at}") == -signal.SIGKILL:
            fired.add(name)
            kills += 1
        source.append(CHAOS_CHUNK)  # and a kill at a random moment
        kills += run([*args, "--follow"], kill_after=rng.uniform(0.3, 1.5)) == KILLED
    source.append(CHAOS_CHUNK)
    assert run(args, kill_after=120) == 0
    assert fired == {n for n, _ in CHAOS_FAILPOINTS}, (
        f"never fired: {set(dict(CHAOS_FAILPOINTS)) - fired}"
    )
    assert kills >= 12, kills
    check_sessions(tmp_path / "out", source.events)
