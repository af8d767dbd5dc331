"""A pipeline that copies a topic: KafkaSource -> map -> KafkaSink (for test_kafka_tools).

Usage: ``python -m tests.kafka._copy_job BOOTSTRAP IN_TOPIC OUT_TOPIC STATE_DIR THROTTLE_S``

Each output value is ``b"copy:" + input value`` (key kept). ``THROTTLE_S`` is
slept per record, so a run lasts long enough to be killed mid-way. The source
stops at the end of the input: exit 0 once everything is copied and committed.
Failpoints come from ``EOSCORE_FAILPOINTS``.
"""

from __future__ import annotations

import sys
import time

from eoscore.pipeline import Pipeline
from eoscore.pipeline.kafka import KafkaRecord, KafkaSource
from eoscore.runtime import CheckpointConfig
from eoscore.sinks.kafka import KafkaSink


def main() -> None:
    bootstrap, in_topic, out_topic, state_dir, throttle = sys.argv[1:6]
    pause = float(throttle)
    source = KafkaSource(bootstrap, in_topic, f"copy-{in_topic}", stop_at_end=True, batch_size=100)
    sink = KafkaSink(
        bootstrap,
        out_topic,
        f"copy-{out_topic}",
        source,
        value=lambda r: r.value,
        key=lambda r: r.key,
        config={"transaction.timeout.ms": 30_000},
    )

    def copy(r: KafkaRecord) -> KafkaRecord:
        if pause:
            time.sleep(pause)
        return r._replace(value=b"copy:" + (r.value or b""))

    p = Pipeline("kafka-tools-copy")
    p.source(source).map(copy).sink(sink)
    p.run(state_dir, CheckpointConfig(interval=0.2))


if __name__ == "__main__":
    main()
