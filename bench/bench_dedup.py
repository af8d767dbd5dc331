"""eoscore.dedup (ExactKeySet, Deduplicator, BloomFilter) vs Python set and rbloom.

Run: ``python bench/bench_dedup.py`` (short mode: 1M-key streams, a 10M-key Bloom
filter; a few minutes), or ``--full`` for the issue's sizes (10M-key streams, a
100M-key Bloom filter; ~10 minutes, ~6 GB of RAM). Any pyperf option works too,
e.g. ``-o result.json``; ``--cpu-time`` times with this process's CPU time, steadier
than wall time on a shared machine.

Every figure is compared with a baseline measured in the same run, and printed at the
end as keys/s and as a ratio (baseline time per key / ours):

* streams of N keys of which one third repeat an earlier key, checked-and-added:
  uint64 keys (array for us, list of int for ``set``), 16-byte bytes keys (list, and an
  ``S16`` array for us); the baseline is the plain ``set`` loop a user would write;
* Bloom insert and query at M keys, 1%: ``add_many``/``contains_many`` on a uint64
  array vs rbloom's bulk ``update`` (timed on a 10M slice of the int list in
  ``--full`` mode, into a filter sized for M) and its ``in`` (per key: rbloom has no
  bulk query);
* per-key calls (``add``, ``in``) vs ``set`` and rbloom, on a set of 100k keys;
* a Bloom pre-check in front of the exact set (the design question of docs/dedup.md);
* memory: bytes per key of ExactKeySet vs ``set`` (the set plus its int objects).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pyperf

from eoscore.dedup import BloomFilter, Deduplicator, ExactKeySet

try:
    import rbloom
except ImportError:  # the baseline is optional: pip install rbloom
    rbloom = None

FULL = "--full" in sys.argv
# On a shared machine, CPU time of this process is a steadier measure than wall time.
CPU_TIME = "--cpu-time" in sys.argv
CLOCK = time.process_time if CPU_TIME else time.perf_counter
N = 10_000_000 if FULL else 1_000_000  # keys per stream (a third are repeats)
M = 100_000_000 if FULL else 10_000_000  # keys in the Bloom filter
RBLOOM_SLICE = 10_000_000 if FULL else M  # keys per rbloom.update timing
PER_KEY = 1_000_000  # calls per per-key timing
PER_KEY_SET = 100_000  # distinct keys behind the per-key calls

_cache: dict[str, Any] = {}


def _cached(name: str, make: Callable[[], Any]) -> Any:
    if name not in _cache:
        _cache[name] = make()
    return _cache[name]


def _stream(rng: np.random.Generator, unique: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    repeats = unique[rng.integers(0, len(unique), size=N - len(unique))]
    out = np.concatenate([unique, repeats])
    rng.shuffle(out)
    return out


def u64_stream() -> np.ndarray[Any, Any]:
    def make() -> np.ndarray[Any, Any]:
        rng = np.random.default_rng(1)
        return _stream(rng, rng.integers(0, 2**64, N * 2 // 3, np.uint64))

    return _cached("u64", make)


def s16_stream() -> np.ndarray[Any, Any]:
    def make() -> np.ndarray[Any, Any]:
        rng = np.random.default_rng(2)
        raw = np.frombuffer(rng.bytes(16 * (N * 2 // 3)), dtype=np.uint8).reshape(-1, 16).copy()
        raw[:, 15] |= 1  # numpy drops a row's trailing NULs: keep every key 16 bytes long
        return _stream(rng, raw.view("S16").ravel())

    return _cached("s16", make)


def bloom_keys() -> np.ndarray[Any, Any]:
    return _cached("bloom", lambda: np.random.default_rng(3).integers(0, 2**64, M, np.uint64))


def n_unique(keys: np.ndarray[Any, Any]) -> int:
    return _cached(f"unique{id(keys)}", lambda: len(np.unique(keys)))


def as_list(name: str, keys: np.ndarray[Any, Any]) -> list[Any]:
    return _cached(f"list:{name}", keys.tolist)


# -- timed bodies: each returns seconds for `loops` runs, setup excluded ---------------


def timed(setup: Callable[[], Any], body: Callable[[Any], Any]) -> Callable[[int], float]:
    def run(loops: int) -> float:
        total = 0.0
        for _ in range(loops):
            state = setup()
            t0 = CLOCK()
            body(state)
            total += CLOCK() - t0
        return total

    return run


def python_set_check_and_add(keys: list[Any]) -> list[bool]:
    seen: set[Any] = set()
    add = seen.add
    out = []
    append = out.append
    for k in keys:
        if k in seen:
            append(False)
        else:
            add(k)
            append(True)
    return out


def per_key_keys() -> list[int]:
    rng = np.random.default_rng(4)
    distinct = rng.integers(0, 2**62, PER_KEY_SET, np.uint64).tolist()
    return _cached("perkey", lambda: (distinct * (PER_KEY // PER_KEY_SET + 1))[:PER_KEY])


def call_each(fn: Callable[[Any], Any]) -> Callable[[list[Any]], None]:
    def body(keys: list[Any]) -> None:
        for k in keys:
            fn(k)

    return body


def contains_each(container: Any) -> Callable[[list[Any]], None]:
    def body(keys: list[Any]) -> None:
        for k in keys:
            k in container  # noqa: B015

    return body


# (name, keys per call, timed function, baseline name or None)
Case = tuple[str, int, Callable[[int], float], "str | None"]


def cases() -> list[Case]:
    base_int = f"set check-and-add, list of {N:,} int"
    base_bytes = f"set check-and-add, list of {N:,} bytes16"
    out: list[Case] = [
        (base_int, N, timed(lambda: as_list("u64", u64_stream()), python_set_check_and_add), None),
        (
            f"ExactKeySet.add_many, uint64 array of {N:,}",
            N,
            timed(lambda: (ExactKeySet(), u64_stream()), lambda s: s[0].add_many(s[1])),
            base_int,
        ),
        (
            f"ExactKeySet(capacity_hint).add_many, uint64 array of {N:,}",
            N,
            timed(
                lambda: (ExactKeySet(n_unique(u64_stream())), u64_stream()),
                lambda s: s[0].add_many(s[1]),
            ),
            base_int,
        ),
        (
            f"Deduplicator.check_and_add, uint64 array of {N:,}",
            N,
            timed(
                lambda: (Deduplicator(n_unique(u64_stream())), u64_stream()),
                lambda s: s[0].check_and_add(s[1]),
            ),
            base_int,
        ),
        (
            f"Bloom pre-check + ExactKeySet.add_many, uint64 array of {N:,}",
            N,
            timed(
                lambda: (BloomFilter(N), ExactKeySet(), u64_stream()),
                lambda s: (s[0].contains_many(s[2]), s[0].add_many(s[2]), s[1].add_many(s[2])),
            ),
            base_int,
        ),
        (
            base_bytes,
            N,
            timed(lambda: as_list("s16", s16_stream()), python_set_check_and_add),
            None,
        ),
        (
            f"ExactKeySet.add_many, list of {N:,} bytes16",
            N,
            timed(
                lambda: (ExactKeySet(), as_list("s16", s16_stream())), lambda s: s[0].add_many(s[1])
            ),
            base_bytes,
        ),
        (
            f"Deduplicator.check_and_add, list of {N:,} bytes16",
            N,
            timed(
                lambda: (Deduplicator(n_unique(s16_stream())), as_list("s16", s16_stream())),
                lambda s: s[0].check_and_add(s[1]),
            ),
            base_bytes,
        ),
        (
            f"ExactKeySet.add_many, S16 array of {N:,}",
            N,
            timed(lambda: (ExactKeySet(), s16_stream()), lambda s: s[0].add_many(s[1])),
            base_bytes,
        ),
        (
            f"ExactKeySet(capacity_hint).add_many, S16 array of {N:,}",
            N,
            timed(
                lambda: (ExactKeySet(n_unique(s16_stream())), s16_stream()),
                lambda s: s[0].add_many(s[1]),
            ),
            base_bytes,
        ),
        (
            f"Bloom pre-check + ExactKeySet(capacity_hint).add_many, S16 array of {N:,}",
            N,
            timed(
                lambda: (BloomFilter(N), ExactKeySet(n_unique(s16_stream())), s16_stream()),
                lambda s: (s[0].contains_many(s[2]), s[0].add_many(s[2]), s[1].add_many(s[2])),
            ),
            base_bytes,
        ),
        (
            f"Deduplicator.check_and_add, S16 array of {N:,}",
            N,
            timed(
                lambda: (Deduplicator(n_unique(s16_stream())), s16_stream()),
                lambda s: s[0].check_and_add(s[1]),
            ),
            base_bytes,
        ),
    ]
    # Bloom filter at M keys, 1%.
    rb_add = rb_in = None
    if rbloom is not None:
        rb_add = f"rbloom.update, {RBLOOM_SLICE:,} of {M:,} keys, 1%"
        rb_in = f"key in rbloom (per key), {PER_KEY:,} of {M:,} keys, 1%"
        out += [
            (rb_add, RBLOOM_SLICE,
             timed(lambda: (rbloom.Bloom(M, 0.01), as_list("bloom", bloom_keys()[:RBLOOM_SLICE])),
                   lambda s: s[0].update(s[1])), None),
            (rb_in, PER_KEY,
             timed(lambda: _cached("rb_full", lambda: _full_rbloom()),
                   lambda s: contains_each(s[0])(s[1])), None),
        ]  # fmt: skip
    out += [
        (f"BloomFilter.add_many, uint64 array of {M:,}, 1%", M,
         timed(lambda: (BloomFilter(M, 0.01), bloom_keys()), lambda s: s[0].add_many(s[1])),
         rb_add),
        (f"BloomFilter.contains_many, uint64 array of {M:,}, 1%", M,
         timed(lambda: _cached("bf_full", _full_bloom), lambda s: s.contains_many(bloom_keys())),
         rb_in),
    ]  # fmt: skip
    # Per-key calls on 100k distinct keys.
    pk = per_key_keys
    base_add, base_in = "set.add (per key)", "key in set (per key)"
    out += [
        (base_add, PER_KEY, timed(lambda: (set(), pk()), lambda s: call_each(s[0].add)(s[1])),
         None),
        (base_in, PER_KEY, timed(lambda: (set(pk()), pk()),
                                 lambda s: contains_each(s[0])(s[1])), None),
        ("ExactKeySet.add (per key)", PER_KEY,
         timed(lambda: (ExactKeySet(), pk()), lambda s: call_each(s[0].add)(s[1])), base_add),
        ("key in ExactKeySet (per key)", PER_KEY,
         timed(lambda: (_filled(ExactKeySet()), pk()), lambda s: contains_each(s[0])(s[1])),
         base_in),
        ("BloomFilter.add (per key)", PER_KEY,
         timed(lambda: (BloomFilter(PER_KEY_SET), pk()), lambda s: call_each(s[0].add)(s[1])),
         "rbloom.add (per key)" if rbloom else None),
        ("key in BloomFilter (per key)", PER_KEY,
         timed(lambda: (_filled(BloomFilter(PER_KEY_SET)), pk()),
               lambda s: contains_each(s[0])(s[1])),
         "key in rbloom (per key)" if rbloom else None),
    ]  # fmt: skip
    if rbloom is not None:
        out += [
            ("rbloom.add (per key)", PER_KEY,
             timed(lambda: (rbloom.Bloom(PER_KEY_SET, 0.01), pk()),
                   lambda s: call_each(s[0].add)(s[1])), None),
            ("key in rbloom (per key)", PER_KEY,
             timed(lambda: (_filled_rbloom(), pk()), lambda s: contains_each(s[0])(s[1])), None),
        ]  # fmt: skip
    return out


def _filled(container: Any) -> Any:
    container.add_many(per_key_keys()[:PER_KEY_SET])
    return container


def _filled_rbloom() -> Any:
    bf = rbloom.Bloom(PER_KEY_SET, 0.01)
    bf.update(per_key_keys()[:PER_KEY_SET])
    return bf


def _full_bloom() -> BloomFilter:
    bf = BloomFilter(M, 0.01)
    bf.add_many(bloom_keys())
    return bf


def _full_rbloom() -> tuple[Any, list[int]]:
    # Query cost depends on the filter's size, not its fill: a slice is enough to fill.
    bf = rbloom.Bloom(M, 0.01)
    bf.update(as_list("bloom", bloom_keys()[:RBLOOM_SLICE]))
    return bf, as_list("bloom", bloom_keys()[:RBLOOM_SLICE])[:PER_KEY]


def memory_table() -> list[str]:
    """Bytes per distinct key, measured once in the main process."""
    keys = u64_stream()
    uniq = n_unique(keys)
    ks = ExactKeySet()
    ks.add_many(keys)
    ours = ks.nbytes / uniq
    values = set(as_list("u64", keys))
    theirs = (sys.getsizeof(values) + sum(map(sys.getsizeof, values))) / uniq
    bf = BloomFilter(M, 0.01)
    return [
        f"  ExactKeySet, {uniq:,} uint64 keys: {ours:5.1f} B/key (target <= 16); "
        f"set of int: {theirs:5.1f} B/key; ratio {theirs / ours:4.1f}x smaller",
        f"  BloomFilter, {M:,} keys at 1%: {bf.nbytes * 8 / M:5.2f} bits/key",
    ]


def main() -> None:
    def add_cmdline_args(cmd: list[str], args: Any) -> None:
        cmd.extend(flag for flag, on in (("--full", FULL), ("--cpu-time", CPU_TIME)) if on)

    runner = pyperf.Runner(
        processes=1 if FULL else 2, values=3, warmups=1, loops=1,
        add_cmdline_args=add_cmdline_args,
    )  # fmt: skip
    runner.argparser.add_argument("--full", action="store_true", help="the issue's sizes")
    runner.argparser.add_argument(
        "--cpu-time", action="store_true", help="time with process CPU time (shared machines)"
    )
    runner.metadata["description"] = __doc__.splitlines()[0]
    table = cases()
    results: dict[str, Any] = {}
    for name, _, func, _ in table:
        results[name] = runner.bench_time_func(name, func)
    if runner.args.worker or any(r is None for r in results.values()):
        return
    print(f"\n{'benchmark':84} {'M keys/s':>9} {'vs baseline':>12}")
    for name, keys, _, base in table:
        rate = keys / results[name].mean()
        line = f"{name:84} {rate / 1e6:9.2f}"
        if base is not None and base in results:
            base_rate = next(k for n, k, _, _ in table if n == base) / results[base].mean()
            line += f" {rate / base_rate:10.1f}x  ({base})"
        print(line)
    print("\nmemory:")
    print("\n".join(memory_table()))


if __name__ == "__main__":
    main()
