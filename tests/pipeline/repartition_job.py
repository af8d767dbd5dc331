"""A pipeline that re-keys its input through a Kafka topic (two stages).

Stage 1 reads the input (records of a key spread over every partition),
assigns event times and writes to the repartition topic by key; stage 2
reads it, drops duplicates and counts per key and window into the output.

Usage: python -m tests.pipeline.repartition_job BOOTSTRAP IN OUT REP STATE_DIR
runs both stages in this process (all partitions each) until the input ends.
"""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path
from typing import Any

from eoscore.pipeline import Pipeline, Tumbling
from eoscore.pipeline.kafka import KafkaSource
from eoscore.pipeline.repartition import Repartition
from eoscore.runtime import CheckpointConfig
from eoscore.sinks.kafka import KafkaSink

WINDOW = Tumbling(100)
REP_PARTITIONS = 3


def add(acc: list[int], event: dict[str, Any]) -> list[int]:
    return [acc[0] + 1, acc[1] + event["v"]]


def repartition(bootstrap: str, in_topic: str, rep_topic: str) -> Repartition:
    return Repartition(
        bootstrap,
        rep_topic,
        partitions=REP_PARTITIONS,
        upstream_topic=in_topic,
        key=lambda e: e["k"],
    )


def stage1(
    rep: Repartition, partitions: list[int] | None, stop_at_end: bool, name: str
) -> Pipeline:
    source = KafkaSource(
        rep.bootstrap,
        rep.upstream_topic,
        f"offsets-{rep.upstream_topic}",
        partitions=partitions,
        stop_at_end=stop_at_end,
    )
    p = Pipeline("rekey")
    (
        p.source(source)
        .map(lambda r: json.loads(r.value))
        .assign_timestamps(lambda e: e["t"], out_of_orderness=60)
        .filter(lambda e: "flush" not in e)  # end-of-input marker: only moves time
        .sink(rep.sink(source, f"txn-{rep.topic}-{name}"))
    )
    return p


def stage2(
    rep: Repartition, out_topic: str, partitions: list[int] | None, stop_at_end: bool, name: str
) -> Pipeline:
    source = rep.source(f"offsets-{rep.topic}", partitions=partitions, stop_at_end=stop_at_end)
    sink = KafkaSink(
        rep.bootstrap,
        out_topic,
        f"txn-{out_topic}-{name}",
        source,
        value=lambda w: json.dumps([w.key, w.start, w.end, w.value]),
    )
    p = Pipeline("windows")
    (
        p.source(source)
        .dedup(lambda e: e["id"])  # a key's duplicates all reach the same task
        .key_by(lambda e: e["k"])
        .window(WINDOW)
        .aggregate(lambda: [0, 0], add)
        .sink(sink)
    )
    return p


def main() -> None:
    bootstrap, in_topic, out_topic, rep_topic, state_dir = sys.argv[1:6]
    rep = repartition(bootstrap, in_topic, rep_topic)
    config = CheckpointConfig(interval=0.2)
    errors: list[BaseException] = []
    stop = threading.Event()  # one stage failing stops the other

    def run(pipeline: Pipeline, where: Path) -> None:
        try:
            pipeline.run(where, config, stop=stop)
        except BaseException as exc:
            errors.append(exc)
            stop.set()

    threads = [
        threading.Thread(target=run, args=(stage1(rep, None, True, "all"), Path(state_dir, "1"))),
        threading.Thread(
            target=run, args=(stage2(rep, out_topic, None, True, "all"), Path(state_dir, "2"))
        ),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise SystemExit(f"a stage failed: {errors[0]!r}")


if __name__ == "__main__":
    main()
