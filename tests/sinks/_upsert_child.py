"""One of several processes upserting overlapping keys into PostgreSQL at once.

    python -m tests.sinks._upsert_child DSN TABLE WRITER GO_FILE

Writes ``CHECKPOINTS`` checkpoints through a :class:`StandaloneSqlSink` (its own
pipeline name), each adding ``writer + 1`` to every key, keys in a shuffled
order; ``v = cur.v + excluded.v`` merges. Starts when GO_FILE appears.
"""

from __future__ import annotations

import os
import random
import sys
import time

from eoscore.sinks.sql import StandaloneSqlSink

KEYS = 40
CHECKPOINTS = 6


def main() -> int:
    dsn, table, writer, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    sink = StandaloneSqlSink(
        dsn, table, ["k", "v"], mode="upsert", key=["k"], merge={"v": "cur.v + excluded.v"},
        batch_size=1000,
    )
    sink.open(f"race-{writer}", "w")
    rng = random.Random(writer)
    while not os.path.exists(go):
        time.sleep(0.005)
    for n in range(1, CHECKPOINTS + 1):
        keys = list(range(KEYS))
        rng.shuffle(keys)
        sink.begin(n)
        sink.write([{"k": k, "v": writer + 1} for k in keys])
        handle = sink.pre_commit(n)
        sink.commit_decision(n, {"src": n}, handle)
    sink.close()
    print("ok", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
