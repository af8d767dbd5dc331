"""The job the session-window chaos test kills and restarts (run as a subprocess).

FileSource (3 files) --+
                       +- union -> parse -> timestamps -> key_by -+-> Session + acc -> sink A
slow FileSource (1) ---+                                          +-> Session + agg -> sink B

Sink A's session window has allowed lateness (its fired sessions stay in state
until the watermark passes ``end + LATENESS``), sink B's has none. Events stay
within ``OUT_OF_ORDERNESS``, so no record is late and both outputs must equal
the sessions of the whole input computed at once.

Usage: python -m tests.pipeline.session_chaos_job INPUT_DIR STATE_DIR OUT_DIR [INTERVAL]
       [--follow]
"""

from __future__ import annotations

import json
import sys
from typing import Any

from eoscore.pipeline import FileSource, Pipeline, Session
from eoscore.pipeline.aggregations import count, sum_of
from eoscore.runtime import CheckpointConfig
from eoscore.sinks import FileSink
from tests.pipeline.chaos_job import SlowFileSource

GAP = 10  # seconds
LATENESS = 25
OUT_OF_ORDERNESS = 60


def add(acc: list[int], event: dict[str, Any]) -> list[int]:
    return [acc[0] + 1, acc[1] + event["v"]]


def merge(a: list[int], b: list[int]) -> list[int]:
    return [a[0] + b[0], a[1] + b[1]]


def build(input_dir: str, out_dir: str, *, follow: bool = False) -> Pipeline:
    p = Pipeline("session-chaos")
    fast = p.source(FileSource(input_dir, pattern="events-[1-9].jsonl", follow=follow))
    slow = p.source(
        SlowFileSource(
            input_dir, pattern="events-0.jsonl", name="slow", read_bytes=8192, follow=follow
        )
    )
    events = (
        fast.union(slow)
        .map(json.loads)
        .assign_timestamps(lambda e: e["t"], out_of_orderness=OUT_OF_ORDERNESS)
        .key_by(lambda e: e["k"])
    )
    events.window(Session(GAP), allowed_lateness=LATENESS).aggregate(
        lambda: [0, 0], add, merge=merge
    ).sink(FileSink(f"{out_dir}/python", name="python"))
    events.window(Session(GAP)).agg(n=count(), total=sum_of("v", "int64")).sink(
        FileSink(f"{out_dir}/builtin", name="builtin")
    )
    return p


def main() -> None:
    flags = {a for a in sys.argv[1:] if a.startswith("--")}
    if flags - {"--follow"}:
        sys.exit(f"unknown options: {sorted(flags - {'--follow'})}")
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    input_dir, state_dir, out_dir = args[:3]
    interval = float(args[3]) if len(args) > 3 else 0.25
    pipeline = build(input_dir, out_dir, follow="--follow" in flags)
    result = pipeline.run(state_dir, CheckpointConfig(interval=interval))
    print(json.dumps({"recovered_from": result.recovered_from, "records": result.records_in}))


if __name__ == "__main__":
    main()
