"""Checkpoint benchmarks (pyperf), reported as ratios against baselines of the same run.

    python bench/bench_checkpoint.py            # short: 1M counters, 100k records
    python bench/bench_checkpoint.py --full     # the issue's sizes: 10M counters, 1M records

Baselines measured here, on the same bytes or the same state:
- raw ``lz4.block.compress`` / ``decompress`` of exactly the payloads our chunks hold;
- ``pickle`` + ``lz4.frame`` of the same state (numpy arrays for the counters,
  the dict for the string-keyed records);
- a full checkpoint, for the incremental one (1% of the keys changed).

Every pyperf worker builds only the data its benchmark needs; the table at the
end (bytes and ratios) is printed by the parent process.
"""

from __future__ import annotations

import atexit
import os
import pickle
import shutil
import tempfile
import time
from collections.abc import Callable
from typing import Any

import lz4.block
import lz4.frame
import numpy as np
import pyperf

from eoscore._native._statecodec import ChunkDecoder, ChunkEncoder, read_header
from eoscore.checkpoint import Checkpointer, FileCheckpointStorage, restore_into
from eoscore.state import ColumnarState, ValueState

# Sizes: set by main() from --full (short by default).
N_NUMERIC = 1_000_000
N_RECORDS = 100_000
CHANGED = 0.01

_cache: dict[str, Any] = {}


def cached(name: str, build: Callable[[], Any]) -> Any:
    if name not in _cache:
        _cache[name] = build()
    return _cache[name]


# ---- data -----------------------------------------------------------------------


def counters() -> ColumnarState:
    def build() -> ColumnarState:
        state = ColumnarState("counts", capacity=N_NUMERIC)
        rng = np.random.default_rng(1)
        state.add(np.arange(N_NUMERIC, dtype=np.int64), rng.integers(0, 10_000, N_NUMERIC))
        return state

    result: ColumnarState = cached("counters", build)
    return result


def records() -> ValueState:
    def build() -> ValueState:
        state = ValueState("sessions")
        for i in range(N_RECORDS):
            state.put(f"user-{i:09d}", {"clicks": i % 97, "last": "2026-11-26", "score": i / 7})
        return state

    result: ValueState = cached("records", build)
    return result


def numeric_arrays() -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    keys, cols = counters().items()
    return keys, cols["value"]


def numeric_chunks() -> list[bytes]:
    keys, values = numeric_arrays()
    return cached("nchunks", lambda: list(ChunkEncoder().columns(keys, [values])))


def numeric_payloads() -> list[bytes]:
    """The decoded payloads of our chunks: what raw lz4 gets to compress."""

    def build() -> list[bytes]:
        keys, values = numeric_arrays()
        rows = (ChunkEncoder().chunk_size - 8) // 16
        return [
            bytes(8) + keys[i : i + rows].tobytes() + values[i : i + rows].tobytes()
            for i in range(0, keys.shape[0], rows)
        ]

    result: list[bytes] = cached("npayloads", build)
    return result


class Store:
    """A fresh checkpoint directory holding one full checkpoint of ``state``."""

    def __init__(self, name: str, state: Any) -> None:
        self.dir = tempfile.mkdtemp(prefix=f"eoscore-bench-{name}-")
        self.storage = FileCheckpointStorage(self.dir)
        self.state = state
        self.cp = Checkpointer(self.storage, {name: state}, retain=1, max_chain=1000)
        self.last = self.cp.checkpoint(full=True)
        atexit.register(self.close)

    def close(self) -> None:
        self.storage.close()
        shutil.rmtree(self.dir, ignore_errors=True)


# ---- timed functions ------------------------------------------------------------


def t_encode_numeric(loops: int) -> float:
    keys, values = numeric_arrays()
    enc = ChunkEncoder()
    start = time.perf_counter()
    for _ in range(loops):
        for _chunk in enc.columns(keys, [values]):
            pass
    return time.perf_counter() - start


def t_lz4_numeric(loops: int) -> float:
    payloads = numeric_payloads()
    start = time.perf_counter()
    for _ in range(loops):
        for p in payloads:
            lz4.block.compress(p, store_size=False)
    return time.perf_counter() - start


def t_decode_numeric(loops: int) -> float:
    chunks = numeric_chunks()
    dec = ChunkDecoder()
    start = time.perf_counter()
    for _ in range(loops):
        for c in chunks:
            dec.columns(c)
    return time.perf_counter() - start


def t_lz4_decompress_numeric(loops: int) -> float:
    payloads = numeric_payloads()
    packed = [(lz4.block.compress(p, store_size=False), len(p)) for p in payloads]
    start = time.perf_counter()
    for _ in range(loops):
        for p, n in packed:
            lz4.block.decompress(p, uncompressed_size=n)
    return time.perf_counter() - start


def _checkpoint_loop(name: str, state_fn: Callable[[], Any], full: bool) -> Callable[[int], float]:
    def timed(loops: int) -> float:
        store = cached(f"store-{name}", lambda: Store(name, state_fn()))
        total = 0.0
        for _ in range(loops):
            start = time.perf_counter()
            store.cp.checkpoint(full=full)
            total += time.perf_counter() - start
        return total

    return timed


def _snapshot(state_fn: Callable[[], Any], change: bool) -> Callable[[int], float]:
    """Freeze + encode every chunk, no I/O: the CPU cost of a snapshot."""

    def timed(loops: int) -> float:
        state = state_fn()
        enc = ChunkEncoder()
        state.freeze(False).release()  # start clean: the next freeze sees only our changes
        total = 0.0
        for i in range(loops):
            if change:
                _change_one_percent(state, i)
            start = time.perf_counter()
            view = state.freeze(change)
            for _chunk in view.chunks(enc):
                pass
            view.release()
            total += time.perf_counter() - start
        return total

    return timed


def _change_one_percent(state: ColumnarState, seed: int) -> None:
    rng = np.random.default_rng(seed)
    state.add(rng.choice(N_NUMERIC, int(N_NUMERIC * CHANGED), replace=False), 1)


def t_incremental_numeric(loops: int) -> float:
    store = cached("store-counts", lambda: Store("counts", counters()))
    total = 0.0
    for i in range(loops):
        _change_one_percent(store.state, i)
        start = time.perf_counter()
        store.cp.checkpoint()
        total += time.perf_counter() - start
    return total


def _stall(
    full: bool, name: str = "counts", state_fn: Callable[[], Any] = counters
) -> Callable[[int], float]:
    def timed(loops: int) -> float:
        store = cached(f"store-{name}", lambda: Store(name, state_fn()))
        total = 0.0
        for i in range(loops):
            if not full:
                _change_one_percent(store.state, i)
            start = time.perf_counter()
            pending = store.cp.trigger(full=full)
            total += time.perf_counter() - start
            pending.result()
        return total

    return timed


def _restore(
    name: str, state_fn: Callable[[], Any], fresh: Callable[[], Any]
) -> Callable[[int], float]:
    def timed(loops: int) -> float:
        store = cached(f"store-{name}", lambda: Store(name, state_fn()))
        cid = store.last.checkpoint_id
        total = 0.0
        for _ in range(loops):
            target = fresh()
            start = time.perf_counter()
            restore_into(store.storage, cid, {name: target})
            total += time.perf_counter() - start
        return total

    return timed


def _pickle_dump(obj_fn: Callable[[], Any]) -> Callable[[int], float]:
    def timed(loops: int) -> float:
        obj = obj_fn()
        start = time.perf_counter()
        for _ in range(loops):
            lz4.frame.compress(pickle.dumps(obj, protocol=5))
        return time.perf_counter() - start

    return timed


def _pickle_load(obj_fn: Callable[[], Any]) -> Callable[[int], float]:
    def timed(loops: int) -> float:
        blob = lz4.frame.compress(pickle.dumps(obj_fn(), protocol=5))
        start = time.perf_counter()
        for _ in range(loops):
            pickle.loads(lz4.frame.decompress(blob))
        return time.perf_counter() - start

    return timed


def records_dict() -> dict[Any, Any]:
    return dict(records().items())


BENCHES: list[tuple[str, Callable[[int], float]]] = [
    ("numeric encode (chunk codec)", t_encode_numeric),
    ("numeric raw lz4.block.compress", t_lz4_numeric),
    ("numeric decode (chunk codec)", t_decode_numeric),
    ("numeric raw lz4.block.decompress", t_lz4_decompress_numeric),
    ("numeric snapshot, no I/O", _snapshot(counters, False)),
    ("numeric incremental snapshot (1%), no I/O", _snapshot(counters, True)),
    ("numeric full checkpoint", _checkpoint_loop("counts", counters, True)),
    ("numeric incremental checkpoint (1%)", t_incremental_numeric),
    ("numeric restore", _restore("counts", counters, lambda: ColumnarState("counts"))),
    ("numeric barrier stall (full)", _stall(True)),
    ("numeric barrier stall (incremental 1%)", _stall(False)),
    ("numeric pickle+lz4.frame dump", _pickle_dump(numeric_arrays)),
    ("numeric pickle+lz4.frame load", _pickle_load(numeric_arrays)),
    ("records snapshot, no I/O", _snapshot(records, False)),
    ("records full checkpoint", _checkpoint_loop("sessions", records, True)),
    ("records barrier stall (full)", _stall(True, "sessions", records)),
    ("records restore", _restore("sessions", records, lambda: ValueState("sessions"))),
    ("records pickle+lz4.frame dump", _pickle_dump(records_dict)),
    ("records pickle+lz4.frame load", _pickle_load(records_dict)),
]


# ---- report ---------------------------------------------------------------------


def sizes() -> dict[str, float]:
    """Bytes per entry and incremental/full bytes, measured once in the parent."""
    out: dict[str, float] = {}
    store = Store("counts", counters())
    out["numeric_full_bytes"] = store.last.written_bytes
    _change_one_percent(store.state, 99)
    out["numeric_incr_bytes"] = store.cp.checkpoint().written_bytes
    store.close()
    keys, values = numeric_arrays()
    out["numeric_pickle_bytes"] = len(lz4.frame.compress(pickle.dumps((keys, values), protocol=5)))
    rstore = Store("sessions", records())
    out["records_full_bytes"] = rstore.last.written_bytes
    rstore.close()
    out["records_pickle_bytes"] = len(lz4.frame.compress(pickle.dumps(records_dict(), protocol=5)))
    out["numeric_raw_bytes"] = sum(read_header(c)[2] for c in numeric_chunks())
    return out


def report(means: dict[str, float]) -> None:
    m = means
    s = sizes()
    gb = N_NUMERIC * 16 / 1e9  # the counters' state: an int64 key and an int64 value each

    def ratio(base: str, ours: str) -> float:
        return m[base] / m[ours]

    rows: list[tuple[str, float, str]] = [
        (
            "numeric encode / raw lz4.block.compress, throughput",
            ratio("numeric raw lz4.block.compress", "numeric encode (chunk codec)"),
            ">= 0.8",
        ),
        (
            "numeric decode / raw lz4.block.decompress, throughput",
            ratio("numeric raw lz4.block.decompress", "numeric decode (chunk codec)"),
            "",
        ),
        ("numeric snapshot (freeze+encode, no I/O), GB/s", gb / m["numeric snapshot, no I/O"], ""),
        ("numeric full checkpoint (durable, fsync), GB/s", gb / m["numeric full checkpoint"], ""),
        ("numeric decode only, GB/s", gb / m["numeric decode (chunk codec)"], ""),
        ("numeric restore incl. key index rebuild, GB/s", gb / m["numeric restore"], ">= 1"),
        (
            "numeric snapshot vs pickle+lz4.frame dump, speedup",
            ratio("numeric pickle+lz4.frame dump", "numeric snapshot, no I/O"),
            "",
        ),
        (
            "numeric restore vs pickle+lz4.frame load, speedup",
            ratio("numeric pickle+lz4.frame load", "numeric restore"),
            "",
        ),
        (
            "numeric bytes/entry (baseline: pickle+lz4)",
            s["numeric_full_bytes"] / N_NUMERIC,
            f"{s['numeric_pickle_bytes'] / N_NUMERIC:.2f}",
        ),
        (
            "incremental 1% / full: bytes",
            s["numeric_incr_bytes"] / s["numeric_full_bytes"],
            "<= 0.03",
        ),
        (
            "incremental 1% / full: snapshot time (no I/O)",
            ratio("numeric incremental snapshot (1%), no I/O", "numeric snapshot, no I/O"),
            "<= 0.03",
        ),
        (
            "incremental 1% / full: durable checkpoint time",
            ratio("numeric incremental checkpoint (1%)", "numeric full checkpoint"),
            "<= 0.03",
        ),
        ("barrier stall, full snapshot, ms", m["numeric barrier stall (full)"] * 1e3, "<= 50"),
        (
            "barrier stall, incremental 1%, ms",
            m["numeric barrier stall (incremental 1%)"] * 1e3,
            "<= 50",
        ),
        ("barrier stall, records full snapshot, ms", m["records barrier stall (full)"] * 1e3, ""),
        (
            "records snapshot vs pickle+lz4.frame dump, speedup",
            ratio("records pickle+lz4.frame dump", "records snapshot, no I/O"),
            ">= 5",
        ),
        (
            "records durable checkpoint vs pickle+lz4.frame dump, speedup",
            ratio("records pickle+lz4.frame dump", "records full checkpoint"),
            "",
        ),
        (
            "records restore vs pickle+lz4.frame load, speedup",
            ratio("records pickle+lz4.frame load", "records restore"),
            "",
        ),
        (
            "records bytes/entry (baseline: pickle+lz4)",
            s["records_full_bytes"] / N_RECORDS,
            f"{s['records_pickle_bytes'] / N_RECORDS:.2f}",
        ),
    ]
    print()
    print(
        f"eoscore checkpoint benchmark: {N_NUMERIC:,} int64 counters, "
        f"{N_RECORDS:,} string-keyed records, {os.cpu_count()} CPUs"
    )
    print(f"| {'measure':62} | {'value':>9} | target / baseline |")
    print(f"|{'-' * 64}|{'-' * 11}|{'-' * 19}|")
    for name, value, target in rows:
        print(f"| {name:62} | {value:>9.3f} | {target:17} |")


def _pass_full(cmd: list[str], args: Any) -> None:
    if args.full:
        cmd.append("--full")


def main() -> None:
    global N_NUMERIC, N_RECORDS
    runner = pyperf.Runner(processes=2, values=3, warmups=1, add_cmdline_args=_pass_full)
    runner.argparser.add_argument(
        "--full", action="store_true", help="the issue's sizes: 10M counters, 1M records"
    )
    args = runner.parse_args()
    if args.full:
        N_NUMERIC, N_RECORDS = 10_000_000, 1_000_000
    runner.metadata["eoscore_numeric_keys"] = str(N_NUMERIC)
    runner.metadata["eoscore_records"] = str(N_RECORDS)
    means: dict[str, float] = {}
    for name, fn in BENCHES:
        bench = runner.bench_time_func(name, fn)
        if bench is not None and not args.worker and bench.get_values():
            means[name] = bench.mean()
    if runner.args.worker or len(means) != len(BENCHES):
        return
    report(means)


if __name__ == "__main__":
    main()
