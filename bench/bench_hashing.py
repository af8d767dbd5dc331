"""eoscore.hashing.xxh3_64_many vs a Python loop over xxhash.xxh3_64_intdigest.

Run: ``python bench/bench_hashing.py`` (about 45 s), or with any pyperf option, e.g.
``--fast`` (about 20 s) or ``-o result.json``. Each batch is 1M keys of 16 bytes, as a
list of bytes, as an ``S16`` array, and as a ``uint64`` array (hashed as 8 little-endian
bytes, the same keys the baseline builds with ``int.to_bytes``). The baseline is the
fastest plain-Python loop a user would write for the same result. The ratios
(baseline time / ours) are printed at the end.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pyperf
import xxhash

from eoscore.hashing import xxh3_64_many

N_KEYS = 1_000_000
KEY_LEN = 16

_raw = random.Random(20240601).randbytes(N_KEYS * KEY_LEN)
KEYS_LIST = [_raw[i : i + KEY_LEN] for i in range(0, len(_raw), KEY_LEN)]
KEYS_S16 = np.frombuffer(_raw, dtype=f"S{KEY_LEN}")
KEYS_U64 = np.frombuffer(_raw[: N_KEYS * 8], dtype=np.uint64)


def loop_list(keys: list[bytes]) -> list[int]:
    digest = xxhash.xxh3_64_intdigest
    return [digest(k) for k in keys]


def loop_s16(keys: np.ndarray[Any, Any]) -> list[int]:
    digest = xxhash.xxh3_64_intdigest
    return [digest(k) for k in keys.tolist()]  # tolist() beats iterating numpy scalars


def loop_u64(keys: np.ndarray[Any, Any]) -> list[int]:
    digest = xxhash.xxh3_64_intdigest
    return [digest(k.to_bytes(8, "little")) for k in keys.tolist()]


CASES = [
    ("list[bytes16]", KEYS_LIST, loop_list),
    ("S16 array", KEYS_S16, loop_s16),
    ("uint64 array", KEYS_U64, loop_u64),
]


def main() -> None:
    # 5 processes rather than pyperf's 20 keep the default run under a minute.
    runner = pyperf.Runner(processes=5)
    runner.metadata["description"] = __doc__.splitlines()[0]
    results: dict[str, tuple[Any, Any]] = {}
    for label, keys, loop in CASES:
        ours = runner.bench_func(f"{label}: eoscore xxh3_64_many", xxh3_64_many, keys)
        base = runner.bench_func(f"{label}: python loop xxhash", loop, keys)
        results[label] = (ours, base)

    if runner.args.worker or any(b is None for pair in results.values() for b in pair):
        return
    print("\nspeed-up (python loop time / eoscore time), 1M keys:")
    for label, (ours, base) in results.items():
        print(f"  {label:15} {base.mean() / ours.mean():6.1f}x")


if __name__ == "__main__":
    main()
