"""The Kafka chaos job: KafkaSource -> dedup -> tumbling window -> KafkaSink.

Usage: python -m tests.pipeline.kafka_job BOOTSTRAP IN_TOPIC OUT_TOPIC STATE_DIR
       [--tag NAME] [--steal-lock]

``--tag NAME`` appends NAME to every output record (which instance wrote it).
``--steal-lock`` opens the state directory without taking its writer LOCK: it
stands in for a lock that was lost while its holder still runs (an NFS lock
lease that expired during a pause, a second host on shared storage), the one
way two instances can share a state directory (tests/pipeline/test_kafka_zombie.py).
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from typing import Any

from eoscore.pipeline import Pipeline, Tumbling
from eoscore.pipeline.kafka import KafkaSource
from eoscore.runtime import CheckpointConfig
from eoscore.sinks.kafka import KafkaSink

WINDOW = Tumbling(100)


def add(acc: list[int], event: dict[str, Any]) -> list[int]:
    return [acc[0] + 1, acc[1] + event["v"]]


def build(
    bootstrap: str,
    in_topic: str,
    out_topic: str,
    tag: str | None = None,
    *,
    batch_size: int = 2000,
    pause_per_1000: float = 0.0,
) -> Pipeline:
    """The job's pipeline; output records are JSON ``[key, start, end, [count, sum](, tag)]``.

    ``pause_per_1000`` sleeps that long every 1000 input records; with small
    batches (barriers wait behind less) a run then spans more checkpoints.
    """
    seen = itertools.count(1)

    def parse(r: Any) -> Any:
        if pause_per_1000 and next(seen) % 1000 == 0:
            time.sleep(pause_per_1000)
        return json.loads(r.value)

    source = KafkaSource(
        bootstrap, in_topic, f"group-{in_topic}", stop_at_end=True, batch_size=batch_size
    )
    extra = [] if tag is None else [tag]
    sink = KafkaSink(
        bootstrap,
        out_topic,
        f"txn-{out_topic}",
        source,
        value=lambda w: json.dumps([w.key, w.start, w.end, w.value, *extra]),
    )
    p = Pipeline("kafka-chaos")
    (
        p.source(source)
        .map(parse)
        .assign_timestamps(lambda e: e["t"], out_of_orderness=60)
        .dedup(lambda e: e["id"])
        .key_by(lambda e: e["k"])
        .window(WINDOW)
        .aggregate(lambda: [0, 0], add)
        .sink(sink)
    )
    return p


def main() -> None:
    parser = argparse.ArgumentParser(prog="kafka_job")
    for name in ("bootstrap", "in_topic", "out_topic", "state_dir"):
        parser.add_argument(name)
    parser.add_argument("--tag")
    parser.add_argument("--steal-lock", action="store_true")
    args = parser.parse_args()
    if args.steal_lock:
        from eoscore.checkpoint.storage import FileCheckpointStorage

        FileCheckpointStorage._lock = lambda self: None  # type: ignore[method-assign]
    p = build(args.bootstrap, args.in_topic, args.out_topic, args.tag)
    p.run(args.state_dir, CheckpointConfig(interval=0.2))


if __name__ == "__main__":
    main()
