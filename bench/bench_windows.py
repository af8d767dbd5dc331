"""Keyed window operators against a bare Python loop doing the same work (pyperf).

    python bench/bench_windows.py            # 1M JSON events, 10,000 keys
    python bench/bench_windows.py --fast     # fewer values

Each case reads the same NDJSON files (events with a key of 10,000, an
event time over ~1,000 s and an integer amount), sums the amount per key in
1-minute tumbling windows and writes one NDJSON line per (key, window):

- ``bare loop``: ``json.loads`` per line and a dict of sums by ``(key, t // 60)``,
  then the lines written: what a user would write by hand, with no
  exactly-once guarantee at all.
- ``eoscore generic``: ``FileSource -> map(json.loads) -> assign_timestamps ->
  key_by -> window(Tumbling(60)).aggregate(init, add) -> FileSink``, with
  checkpoints every 1 s (exactly-once).
- ``eoscore built-in``: the same with ``.agg(total=sum_of("v", "int64"))``.
- ``eoscore built-in + batch JSON decode``: and ``FileSource(decode="json")``
  instead of ``map(json.loads)`` (msgspec decodes each read in one call).
- ``eoscore built-in sliding``: ``Sliding(60, 12)`` (size/slide = 5): each
  record is in 5 windows.
- ``bare loop sliding``: the bare loop over the same 5 windows per record.

Every eoscore case checks its output against the bare loop's before it is
timed (a wrong result is not a benchmark). Results are ratios within the run.
"""

from __future__ import annotations

import atexit
import json
import os
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import pyperf

from eoscore.pipeline import FileSource, Pipeline, Sliding, Tumbling, sum_of
from eoscore.runtime import CheckpointConfig
from eoscore.sinks import FileSink

EVENTS = 1_000_000
EVENTS_FAST = 200_000
KEYS = 10_000
SECONDS = 1_000  # event times span this many seconds
FILES = 4

_tmp = tempfile.mkdtemp(prefix="eoscore-bench-windows-")
atexit.register(shutil.rmtree, _tmp, True)


def _input(events: int) -> Path:
    d = Path(_tmp) / f"in-{events}"
    if not d.exists():
        d.mkdir()
        rng = random.Random(1)
        outs = [open(d / f"{f}.jsonl", "w") for f in range(FILES)]
        for i in range(events):
            t = i * SECONDS / events + rng.random() * 5  # a little disorder (< 5 s)
            e = {"k": f"customer-{rng.randrange(KEYS)}", "t": round(t, 3), "v": rng.randrange(1000)}
            outs[i % FILES].write(json.dumps(e) + "\n")
        for f in outs:
            f.close()
    return d


def bare_loop(data: Path, out: Path, size: int, slide: int) -> dict[tuple[str, int], int]:
    sums: dict[tuple[str, int], int] = {}
    per = size // slide
    for path in sorted(data.iterdir()):
        with open(path, "rb") as f:
            for line in f:
                e = json.loads(line)
                k, v = e["k"], e["v"]
                last = int(e["t"] // slide)
                for w in range(last - per + 1, last + 1):
                    key = (k, w * slide)
                    sums[key] = sums.get(key, 0) + v
    with open(out, "w") as f:
        for (k, start), total in sums.items():
            f.write(json.dumps([k, start, total]) + "\n")
    return sums


def eoscore_run(
    data: Path, out: Path, size: int, slide: int, builtin: bool, batch_decode: bool = False
) -> None:
    p = Pipeline("bench-windows")
    source = (
        p.source(FileSource(data, decode="json"))
        if batch_decode
        else p.source(FileSource(data)).map(json.loads)
    )
    windowed = (
        source.assign_timestamps("t", out_of_orderness=5)
        .key_by("k")
        .window(Tumbling(size) if size == slide else Sliding(size, slide))
    )
    if builtin:
        results = windowed.agg(total=sum_of("v", "int64")).map(
            lambda w: [w.key, w.start, w.value["total"]]
        )
    else:
        results = windowed.aggregate(lambda: 0, lambda acc, e: acc + e["v"]).map(
            lambda w: [w.key, w.start, w.value]
        )
    results.sink(FileSink(out))
    p.run(Path(tempfile.mkdtemp(dir=_tmp)), CheckpointConfig(interval=1.0))


def _read_output(out: Path) -> dict[tuple[str, int], int]:
    got: dict[tuple[str, int], int] = {}
    for path in out.glob("*.ndjson") if out.is_dir() else [out]:
        for line in path.read_text().splitlines():
            k, start, total = json.loads(line)
            assert (k, start) not in got, f"window {(k, start)} written twice"
            got[(k, start)] = total
    return got


def bench_case(loops: int, events: int, how: str, size: int, slide: int) -> float:
    data = _input(events)
    elapsed = 0.0
    for _ in range(loops):
        out = Path(tempfile.mkdtemp(dir=_tmp)) / "out"
        started = time.perf_counter()
        if how == "bare":
            bare_loop(data, out, size, slide)
        else:
            eoscore_run(data, out, size, slide, how != "generic", how == "builtin-batch")
        elapsed += time.perf_counter() - started
        shutil.rmtree(out.parent, ignore_errors=True)
    return elapsed


def check(events: int) -> None:
    """Every eoscore case gives the bare loop's sums."""
    data = _input(events)
    for size, slide in ((60, 60), (60, 12)):
        want = bare_loop(data, Path(_tmp) / "want.ndjson", size, slide)
        for builtin, batch in ((False, False), (True, False), (True, True)):
            out = Path(tempfile.mkdtemp(dir=_tmp)) / "out"
            eoscore_run(data, out, size, slide, builtin, batch)
            got = _read_output(out)
            assert got == want, f"size {size} slide {slide} builtin {builtin}: output differs"


def _worker_args(cmd: list[str], args: Any) -> None:
    if args.fast:
        cmd.append("--fast")


def main() -> None:
    runner = pyperf.Runner(values=3, processes=1, warmups=0, add_cmdline_args=_worker_args)
    args = runner.parse_args()
    events = EVENTS_FAST if args.fast else EVENTS
    runner.metadata["description"] = f"eoscore windows, {events:,} events, {KEYS:,} keys"
    if not args.worker:
        check(min(events, EVENTS_FAST))
    cases = [
        ("bare loop, tumbling", "bare", 60, 60),
        ("eoscore generic, tumbling", "generic", 60, 60),
        ("eoscore built-in, tumbling", "builtin", 60, 60),
        ("eoscore built-in + batch JSON decode, tumbling", "builtin-batch", 60, 60),
        ("bare loop, sliding 60/12", "bare", 60, 12),
        ("eoscore built-in, sliding 60/12", "builtin", 60, 12),
    ]
    mean: dict[str, float] = {}
    for name, how, size, slide in cases:
        r = runner.bench_time_func(name, bench_case, events, how, size, slide, inner_loops=events)
        if r is not None and not args.worker:
            mean[name] = r.mean()
    if args.worker or len(mean) != len(cases):
        return
    bare, generic, builtin = (
        mean["bare loop, tumbling"],
        mean["eoscore generic, tumbling"],
        mean["eoscore built-in, tumbling"],
    )
    bare_s, builtin_s = mean["bare loop, sliding 60/12"], mean["eoscore built-in, sliding 60/12"]
    print()
    print(f"events/s: bare {1 / bare:,.0f}, generic {1 / generic:,.0f}, "
          f"built-in {1 / builtin:,.0f}")
    print(f"generic accumulator vs bare loop:    {bare / generic:.2f}x   (target >= 0.8x)")
    batch = mean["eoscore built-in + batch JSON decode, tumbling"]
    print(f"built-in aggregations vs bare loop:  {bare / builtin:.2f}x   (same json.loads)")
    print(f"built-in + FileSource(decode='json'): {bare / batch:.2f}x   (target >= 3x)")
    print(f"sliding (5 windows/record) cost per record vs tumbling, built-in: "
          f"{builtin_s / builtin:.2f}x   (must stay well under 5x; bare loop: "
          f"{bare_s / bare:.2f}x)")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
