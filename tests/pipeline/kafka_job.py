"""The Kafka chaos job: KafkaSource -> dedup -> tumbling window -> KafkaSink.

Usage: python -m tests.pipeline.kafka_job BOOTSTRAP IN_TOPIC OUT_TOPIC STATE_DIR
"""

from __future__ import annotations

import json
import sys
from typing import Any

from eoscore.pipeline import Pipeline, Tumbling
from eoscore.pipeline.kafka import KafkaSource
from eoscore.runtime import CheckpointConfig
from eoscore.sinks.kafka import KafkaSink

WINDOW = Tumbling(100)


def add(acc: list[int], event: dict[str, Any]) -> list[int]:
    return [acc[0] + 1, acc[1] + event["v"]]


def main() -> None:
    bootstrap, in_topic, out_topic, state_dir = sys.argv[1:5]
    source = KafkaSource(bootstrap, in_topic, f"group-{in_topic}", stop_at_end=True)
    sink = KafkaSink(
        bootstrap,
        out_topic,
        f"txn-{out_topic}",
        source,
        value=lambda w: json.dumps([w.key, w.start, w.end, w.value]),
    )
    p = Pipeline("kafka-chaos")
    (
        p.source(source)
        .map(lambda r: json.loads(r.value))
        .assign_timestamps(lambda e: e["t"], out_of_orderness=60)
        .dedup(lambda e: e["id"])
        .key_by(lambda e: e["k"])
        .window(WINDOW)
        .aggregate(lambda: [0, 0], add)
        .sink(sink)
    )
    p.run(state_dir, CheckpointConfig(interval=0.2))


if __name__ == "__main__":
    main()
