"""A disabled failpoint costs nothing measurable: ``failpoints.hit`` vs no call.

Run: ``python bench/bench_failpoints.py`` (``--fast`` for a quick pass; any pyperf
option works, e.g. ``-o result.json``).

Three pairs, each a loop with the call against the same loop without it, in the
same run, printed at the end as ns per hit and as a ratio (with / without):

* an empty loop: the absolute cost of one disabled ``hit`` (the worst case);
* the same with *another* failpoint armed (what a pipeline under ``eoscore
  verify`` pays at every point that is not the armed one);
* a loop doing one batch of real per-batch work (parsing 100 JSON records), the
  granularity at which the runtime places its failpoints: the ratio a pipeline sees.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pyperf

from eoscore import failpoints

N = 1_000_000  # iterations of the empty loops
BATCHES = 2_000  # iterations of the batch loops
BATCH = [json.dumps({"id": i, "k": i % 50, "t": i, "v": i % 97}) for i in range(100)]


def empty_plain(loops: int) -> float:
    total = 0.0
    for _ in range(loops):
        started = time.perf_counter()
        for _ in range(N):
            pass
        total += time.perf_counter() - started
    return total


def empty_hit(loops: int) -> float:
    hit = failpoints.hit
    total = 0.0
    for _ in range(loops):
        started = time.perf_counter()
        for _ in range(N):
            hit("runtime.after_batch")
        total += time.perf_counter() - started
    return total


def empty_hit_other_armed(loops: int) -> float:
    failpoints.enable("bench.never_reached", "kill", at=1)
    try:
        return empty_hit(loops)
    finally:
        failpoints.disable("bench.never_reached")


def batch_plain(loops: int) -> float:
    loads = json.loads
    total = 0.0
    for _ in range(loops):
        started = time.perf_counter()
        for _ in range(BATCHES):
            [loads(line) for line in BATCH]
        total += time.perf_counter() - started
    return total


def batch_hit(loops: int) -> float:
    loads, hit = json.loads, failpoints.hit
    total = 0.0
    for _ in range(loops):
        started = time.perf_counter()
        for _ in range(BATCHES):
            [loads(line) for line in BATCH]
            hit("runtime.after_batch")
        total += time.perf_counter() - started
    return total


#: (name, iterations per loop, function, baseline name)
CASES: list[tuple[str, int, Callable[[int], float], str | None]] = [
    ("empty loop", N, empty_plain, None),
    ("empty loop + disabled hit", N, empty_hit, "empty loop"),
    ("empty loop + hit, another failpoint armed", N, empty_hit_other_armed, "empty loop"),
    ("100-record batch", BATCHES, batch_plain, None),
    ("100-record batch + disabled hit", BATCHES, batch_hit, "100-record batch"),
]


def main() -> None:
    runner = pyperf.Runner(values=5, warmups=1)
    runner.metadata["description"] = __doc__.splitlines()[0]
    results: dict[str, Any] = {}
    for name, _, func, _ in CASES:
        results[name] = runner.bench_time_func(name, func)
    if runner.args.worker or any(r is None for r in results.values()):
        return
    print(f"\n{'benchmark':44} {'ns/iteration':>12} {'ratio':>8} {'ns per hit':>10}")
    per = {name: results[name].mean() / n * 1e9 for name, n, _, _ in CASES}
    for name, _, _, base in CASES:
        line = f"{name:44} {per[name]:12.2f}"
        if base is not None:
            line += f" {per[name] / per[base]:7.3f}x {per[name] - per[base]:10.2f}"
        print(line)
    # The direct batch comparison is within noise; the cost one hit adds to a batch:
    hit = per["empty loop + disabled hit"] - per["empty loop"]
    batch = per["100-record batch"]
    print(f"\none disabled hit per 100-record batch: {hit:.1f} ns / {batch / 1000:.1f} us "
          f"= {1 + hit / batch:.5f}x")


if __name__ == "__main__":
    main()
