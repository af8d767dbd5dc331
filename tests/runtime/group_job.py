"""A scale-out worker: one task per assigned partition (``eoscore.runtime.group``).

Usage: python -m tests.runtime.group_job BOOTSTRAP IN_TOPIC OUT_TOPIC STATE_ROOT [REP_TOPIC]

With REP_TOPIC the input is not partitioned by key: the pipeline runs as two
stages joined by that topic (``tests.pipeline.repartition_job``), a task per
partition of either topic.
SIGTERM stops it cleanly (each task ends with a final checkpoint).
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

from eoscore.pipeline import Pipeline, Tumbling
from eoscore.pipeline.kafka import KafkaSource
from eoscore.runtime import CheckpointConfig
from eoscore.runtime.group import GroupWorker
from eoscore.sinks.kafka import KafkaSink
from tests.pipeline import repartition_job

WINDOW = Tumbling(100)


def add(acc: list[int], event: dict[str, Any]) -> list[int]:
    return [acc[0] + 1, acc[1] + event["v"]]


def main() -> None:
    bootstrap, in_topic, out_topic, state_root = sys.argv[1:5]
    rep_topic = sys.argv[5] if len(sys.argv) > 5 else None

    def build(partition: int) -> Pipeline:
        source = KafkaSource(bootstrap, in_topic, f"offsets-{in_topic}", partitions=[partition])
        sink = KafkaSink(
            bootstrap,
            out_topic,
            f"txn-{out_topic}-{partition}",
            source,
            value=lambda w: json.dumps([w.key, w.start, w.end, w.value]),
        )
        p = Pipeline(f"group-{partition}")
        (
            p.source(source)
            .map(lambda r: json.loads(r.value))
            .assign_timestamps(lambda e: e["t"], out_of_orderness=60)
            .filter(lambda e: "flush" not in e)  # end-of-input marker: only moves time
            .dedup(lambda e: e["id"])
            .key_by(lambda e: e["k"])
            .window(WINDOW)
            .aggregate(lambda: [0, 0], add)
            .sink(sink)
        )
        return p

    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stages: dict[str, Callable[[int], Pipeline]] = {in_topic: build}
    if rep_topic is not None:
        rep = repartition_job.repartition(bootstrap, in_topic, rep_topic)
        stages = {
            in_topic: lambda p: repartition_job.stage1(rep, [p], False, str(p)),
            rep_topic: lambda q: repartition_job.stage2(rep, out_topic, [q], False, str(q)),
        }
    worker = GroupWorker(
        stages,
        bootstrap,
        f"members-{in_topic}",
        state_root,
        CheckpointConfig(interval=0.3),
        session_timeout_ms=3000,
    )
    worker.run(stop)


if __name__ == "__main__":
    main()
