"""Window membership is exact: every expected value here comes from the independent
``window_model`` (Fractions over the decimal text of the numbers), never from
the assigner under test."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from fractions import Fraction
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eoscore.pipeline import (
    PipelineDefinitionError,
    PipelineError,
    Sliding,
    Tumbling,
    count,
    first_of,
    last_of,
    max_of,
    mean_of,
    min_of,
    sum_of,
)
from eoscore.pipeline.eventtime import END_OF_TIME, duration, to_ticks
from eoscore.pipeline.keyids import IDLE_SLACK
from eoscore.pipeline.operators import Node
from eoscore.pipeline.windows import WindowNode
from tests.pipeline.window_model import exact, window_starts


class Collect(Node):
    def __init__(self) -> None:
        super().__init__("collect")
        self.got: list[Any] = []
        self.times: list[int] = []

    def push(self, values: list[Any], times: Any, port: int = 0) -> None:
        self.got.extend(values)
        self.times.extend(times.tolist())


def run_node(node: WindowNode, batches: list[list[tuple[Any, Any, Any]]]) -> Collect:
    """Push batches of (key, time in seconds, value), then end the input."""
    out = Collect()
    node.connect_to(out)
    for batch in batches:
        node.push(batch, to_ticks([t for _, t, _ in batch]))
    node.on_watermark(END_OF_TIME)
    return out


def generic(assigner: Any, lateness: int = 0) -> WindowNode:
    return WindowNode(
        "w",
        lambda r: r[0],
        assigner,
        lateness,
        init=lambda: [0, 0],
        add=lambda acc, r: [acc[0] + 1, acc[1] + r[2]],
    )


def native(assigner: Any) -> WindowNode:
    return WindowNode(
        "w", lambda r: r[0], assigner, 0, aggs={"n": count(), "s": sum_of(2, "int64")}
    )


def model(
    records: list[tuple[Any, Any, int]], size: Any, slide: Any, offset: Any = 0
) -> dict[tuple[Any, Fraction], list[int]]:
    want: dict[tuple[Any, Fraction], list[int]] = {}
    for k, t, v in records:
        for start in window_starts(t, size, slide, offset):
            acc = want.setdefault((k, start), [0, 0])
            acc[0] += 1
            acc[1] += v
    return want


def test_the_reported_sliding_case_emits_each_window_once() -> None:
    out = run_node(generic(Sliding(0.3, 0.1)), [[("a", 0.15, 1), ("a", 0.35, 1)]])
    starts = Counter(r.start for r in out.got)
    assert all(n == 1 for n in starts.values()), starts
    by_start = {r.start: r.value for r in out.got}
    assert by_start[0.1] == [2, 2]  # [0.1, 0.4) holds both
    assert sorted(by_start) == [-0.1, 0, 0.1, 0.2, 0.3]
    assert {r.end for r in out.got if r.start == 0.1} == {0.4}


def test_boundaries_are_exact() -> None:
    out = run_node(generic(Sliding(0.3, 0.1)), [[("a", 5.0, 1)]])
    assert sorted((r.start, r.end) for r in out.got) == [(4.8, 5.1), (4.9, 5.2), (5, 5.3)]
    out = run_node(generic(Tumbling(0.7)), [[("a", 2.1, 1), ("a", 2.099999, 1), ("a", 2.8, 1)]])
    assert sorted((r.start, r.end, r.value[0]) for r in out.got) == [
        (1.4, 2.1, 1),
        (2.1, 2.8, 1),
        (2.8, 3.5, 1),
    ]
    assert all(
        t == int(Fraction(repr(r.end)) * 10**6) - 1 for r, t in zip(out.got, out.times, strict=True)
    )


def test_time_units_and_datetimes_convert_once() -> None:
    assert to_ticks([0.15, 2.1, -0.1]).tolist() == [150_000, 2_100_000, -100_000]
    assert to_ticks([1500, 7], "ms").tolist() == [1_500_000, 7_000]
    aware = dt.datetime(2026, 1, 2, 3, 4, 5, 600007, tzinfo=dt.timezone.utc)
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
    want = (aware - epoch) // dt.timedelta(microseconds=1)
    assert to_ticks([aware, aware.replace(tzinfo=None)]).tolist() == [want, want]
    assert to_ticks(np.array([want], "datetime64[us]")).tolist() == [want]
    assert duration(0.7) == 700_000 and duration(dt.timedelta(minutes=1)) == 60_000_000
    with pytest.raises(PipelineDefinitionError, match="whole number of microseconds"):
        duration(1e-7)
    with pytest.raises(PipelineError, match="out of range"):
        to_ticks([1e300])
    with pytest.raises(PipelineError, match="out of range"):
        to_ticks([float("nan")])
    with pytest.raises(PipelineError):
        to_ticks(["12"])


decimal_seconds = st.integers(1, 5000).map(lambda n: Fraction(n, 1000))


@st.composite
def window_cases(
    draw: st.DrawFn,
) -> tuple[Fraction, Fraction, Fraction, list[tuple[int, Any, int]]]:
    slide = draw(decimal_seconds)
    size = slide * draw(st.integers(1, 6)) + draw(st.sampled_from([0, 0, Fraction(1, 1000)]))
    offset = draw(st.integers(-3000, 3000).map(lambda n: Fraction(n, 1000)))
    n = draw(st.integers(1, 40))
    times = []
    for _ in range(n):
        how = draw(st.sampled_from(["any", "start", "end"]))
        k = draw(st.integers(-20, 20))
        if how == "start":
            t = offset + k * slide  # exactly on a window start
        elif how == "end":
            t = offset + k * slide + size  # exactly on a window end (not inside)
        else:
            t = Fraction(draw(st.integers(-100_000, 100_000)), 1000)
        times.append(t)
    records = [(draw(st.integers(0, 3)), t, draw(st.integers(-5, 5))) for t in times]
    return size, slide, offset, records


@settings(max_examples=300, deadline=None)
@given(window_cases(), st.booleans(), st.integers(1, 7))
def test_assignment_matches_the_model(case: Any, use_native: bool, nbatches: int) -> None:
    size, slide, offset, records = case
    assigner = Sliding(float(size), float(slide), float(offset))
    node = (
        WindowNode("w", lambda r: r[0], assigner, 0, aggs={"n": count(), "s": sum_of(2, "int64")})
        if use_native
        else generic(assigner)
    )
    # Sorted by time so nothing is late; split into batches at random points.
    records = sorted(records, key=lambda r: r[1])
    step = max(1, len(records) // nbatches)
    batches = [
        [(k, float(t), v) for k, t, v in records[i : i + step]]
        for i in range(0, len(records), step)
    ]
    out = Collect()
    node.connect_to(out)
    for batch in batches:
        node.push(batch, np.array([round(exact(t) * 10**6) for _, t, _ in batch], np.int64))
    node.on_watermark(END_OF_TIME)
    got: dict[tuple[Any, Fraction], list[int]] = {}
    for r in out.got:
        key = (r.key, Fraction(repr(r.start)) if isinstance(r.start, float) else Fraction(r.start))
        assert key not in got, f"window {key} emitted twice"
        got[key] = [r.value["n"], r.value["s"]] if use_native else r.value
        assert Fraction(repr(r.end)) if isinstance(r.end, float) else r.end == key[1] + size
    want = model([(k, t, v) for k, t, v in records], size, slide, offset)
    assert got == want


def test_built_in_aggregations_match_python(tmp_path: Any) -> None:
    rng = np.random.default_rng(7)
    records = [
        (
            int(rng.integers(0, 5)),
            float(rng.integers(0, 100_000)) / 1000,
            int(rng.integers(-50, 50)),
        )
        for _ in range(3000)
    ]
    records.sort(key=lambda r: r[1])
    node = WindowNode(
        "w",
        lambda r: r[0],
        Sliding(20, 5),
        0,
        aggs={
            "n": count(),
            "s": sum_of(2, "int64"),
            "lo": min_of(2, "int64"),
            "hi": max_of(2),
            "avg": mean_of(2),
        },
    )
    node2 = WindowNode(
        "w2", lambda r: r[0], Sliding(20, 5), 0, aggs={"first": first_of(2), "last": last_of(2)}
    )
    batches = [records[i : i + 97] for i in range(0, len(records), 97)]
    out, out2 = run_node(node, batches), run_node(node2, batches)
    groups: dict[tuple[int, Fraction], list[tuple[Fraction, int]]] = {}
    for k, t, v in records:
        for start in window_starts(t, 20, 5):
            groups.setdefault((k, start), []).append((exact(t), v))
    assert len(out.got) == len(groups) == len(out2.got)
    for r in out.got:
        vs = [v for _, v in groups[(r.key, exact(r.start))]]
        assert r.value == {
            "n": len(vs),
            "s": sum(vs),
            "lo": min(vs),
            "hi": max(vs),
            "avg": pytest.approx(sum(vs) / len(vs)),
        }
    for r in out2.got:
        group = groups[(r.key, exact(r.start))]
        earliest = min(t for t, _ in group)
        latest = max(t for t, _ in group)
        # Ties on time: first takes the earlier-seen, last the later-seen record.
        assert r.value["first"] == next(v for t, v in group if t == earliest)
        assert r.value["last"] == [v for t, v in group if t == latest][-1]


def test_a_key_late_and_on_time_in_one_batch_keeps_its_identity() -> None:
    node = generic(Tumbling(10))
    out = Collect()
    node.connect_to(out)
    node.push([("a", 1, 1)], to_ticks([1]))
    node.on_watermark(20_000_000)  # [0, 10) fired and dropped
    node.push([("b", 3, 1), ("b", 25, 2)], to_ticks([3, 25]))  # b: one late, one on time
    node.on_watermark(END_OF_TIME)
    assert [(r.key, r.start, r.value) for r in out.got] == [("a", 0, [1, 1]), ("b", 20, [1, 2])]
    assert node.late_records == 1
    assert node.keyids.forget_unheld() == 2  # a and b: nothing holds them any more
    assert len(node.keyids) == 0 and len(node.keyids.state) == 0


def test_far_apart_windows_are_refused_not_aliased() -> None:
    node = generic(Tumbling(0.001))
    node.push([("a", 0, 1)], to_ticks([0]))
    with pytest.raises(PipelineError, match="far off"):
        node.push([("a", 0, 1)], np.array([2**32 * 1000 + 5], np.int64))


def test_too_many_aggregation_columns_fail_at_build() -> None:
    with pytest.raises(PipelineDefinitionError, match="state columns"):
        WindowNode(
            "w",
            lambda r: r,
            Tumbling(1),
            0,
            aggs={"a": mean_of(0), "b": first_of(0), "c": last_of(0), "d": count()},
        )


def test_key_state_is_bounded_by_live_windows() -> None:
    node = native(Tumbling(1))
    out = Collect()
    node.connect_to(out)
    for second in range(200):  # 1,000 new keys every second, each seen in one window
        keys = [f"k{second}-{i}" for i in range(1000)]
        node.push([(k, second + 0.5, 1) for k in keys], to_ticks([second + 0.5] * 1000))
        node.on_watermark((second + 1) * 1_000_000)
        # Keys no window holds are forgotten in bulk: at most ~2x those in use.
        assert len(node.keyids) <= 2 * 2000 + IDLE_SLACK
    assert len(out.got) == 200_000
    assert len(node.table) == 0
    interned = len(node.keyids)
    assert len(node.keyids.state) == interned
    assert node.keyids.forget_unheld() == interned  # none is held any more
    assert len(node.keyids.state) == 0
