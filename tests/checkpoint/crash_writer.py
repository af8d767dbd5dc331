"""Writer process for the SIGKILL test: restores, then checkpoints step after step.

Step n's changes are a pure function of n, so the parent can rebuild the
exact state of any checkpoint id with ``build_states`` + ``apply_step``.
Run as ``python crash_writer.py DIR``; prints ``ready <id>`` once restored.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from eoscore.checkpoint import Checkpointer, FileCheckpointStorage
from eoscore.state import ColumnarState, MapState, ValueState

KEYS = 3000


def build_states() -> dict[str, ValueState | MapState | ColumnarState]:
    return {
        "v": ValueState("v"),
        "m": MapState("m"),
        "c": ColumnarState("c", {"n": "int64", "x": "float64"}),
    }


def apply_step(states: dict[str, ValueState | MapState | ColumnarState], n: int) -> None:
    v, m, c = states["v"], states["m"], states["c"]
    assert isinstance(v, ValueState) and isinstance(m, MapState)
    assert isinstance(c, ColumnarState)
    for j in range(300):
        v.put((n * 131 + j * 7) % KEYS, [n, j, "x" * (j % 5), {"b": b"\x00" * (j % 3)}])
    if n % 3 == 0:
        for j in range(50):
            v.delete((n * 17 + j) % KEYS)
    m.put(n % 40, n, {"n": n, "f": n / 7})
    if n % 5 == 0:
        m.delete((n // 5) % 40)
    start = (n * 997) % 40000
    keys = np.arange(start, start + 20000, dtype=np.int64)
    c.add(keys, n, "n")
    c.add(keys[::7], n * 0.5, "x")
    if n % 4 == 0:
        c.delete(np.arange(start, start + 500, dtype=np.int64))


def install_crash_point(spec: str) -> None:
    """EOSCORE_CRASH="func:n:when": die (exit 9) at the n-th call of func.

    func is fsync, replace (the manifest rename) or unlink (retention and
    cleanup deletes); when is "before" or "after" the call takes effect.
    """
    import os
    import pathlib

    func, nth, when = spec.split(":")
    calls = 0
    target: Any = {"fsync": os, "replace": os, "unlink": pathlib.Path}[func]
    original = getattr(target, func)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == int(nth) and when == "before":
            os._exit(9)
        result = original(*args, **kwargs)
        if calls == int(nth):
            os._exit(9)
        return result

    setattr(target, func, wrapper)


def main(directory: str) -> int:
    import os

    if os.environ.get("EOSCORE_CRASH"):
        install_crash_point(os.environ["EOSCORE_CRASH"])
    states = build_states()
    storage = FileCheckpointStorage(directory)
    cp = Checkpointer(storage, states, retain=2, max_chain=3, chunk_size=64 << 10)
    manifest = cp.restore()
    n = manifest.checkpoint_id if manifest is not None else 0
    print("ready", n, flush=True)
    while True:
        n += 1
        apply_step(states, n)
        done = cp.checkpoint({"step": n})
        if done.checkpoint_id != n:
            print("id mismatch", done.checkpoint_id, n, flush=True)
            return 3


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
