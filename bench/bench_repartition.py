"""What re-keying through a Kafka topic costs, against input already partitioned by key.

Same broker, same events, same windowed count-and-sum per key, exactly once
end to end, in one run:

* ``keyed``: the input is partitioned by key; one pipeline
  ``KafkaSource -> assign_timestamps -> window -> KafkaSink``.
* ``repartitioned``: the input is spread at random; stage 1
  (``KafkaSource -> assign_timestamps -> Repartition.sink``) and stage 2
  (``Repartition.source -> window -> KafkaSink``) run in this process on their
  own threads, as one worker of ``GroupWorker`` would run both.

Each contender reads its whole input (``stop_at_end``) with checkpoints every
``--interval`` s; the clock runs from start to the return of the last stage
(final checkpoint included). Rounds rotate the order; medians and the ratio of
medians are reported (throughput of repartitioned / keyed).

Usage: ``python bench/bench_repartition.py [--events 200000] [--repeat 3]``.
The broker is ``EOSCORE_KAFKA_BOOTSTRAP``, else one started with ``scripts/kafka``.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from eoscore.pipeline import Pipeline, Tumbling
from eoscore.pipeline.kafka import KafkaSource
from eoscore.pipeline.repartition import Repartition
from eoscore.runtime import CheckpointConfig
from eoscore.sinks.kafka import KafkaSink

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_processor import create_topic, start_broker

PARTITIONS = 4
KEYS = 1000
WINDOW = Tumbling(1000)


def add(acc: list[float], e: dict[str, Any]) -> list[float]:
    return [acc[0] + 1, acc[1] + e["v"]]


def fill(bootstrap: str, topic: str, n: int, keyed: bool) -> None:
    rng, spread = random.Random(1), random.Random(2)  # the same events either way
    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 20, "enable.idempotence": True}
    )
    for i in range(n):
        e = {"id": i, "k": rng.randrange(KEYS), "t": i // 10 + rng.randint(0, 50), "v": i % 97}
        part = e["k"] % PARTITIONS if keyed else spread.randrange(PARTITIONS)
        while True:
            try:
                producer.produce(topic, json.dumps(e).encode(), partition=part)
                break
            except BufferError:
                producer.poll(0.05)
    assert producer.flush(60) == 0


def _window_sink(bootstrap: str, out: str, txn: str, source: KafkaSource) -> KafkaSink:
    return KafkaSink(
        bootstrap, out, txn, source, value=lambda w: json.dumps([w.key, w.start, w.value])
    )


def run_keyed(bootstrap: str, src: str, out: str, interval: float) -> float:
    source = KafkaSource(bootstrap, src, f"g-{out}", stop_at_end=True)
    p = Pipeline("keyed")
    (
        p.source(source)
        .map(lambda r: json.loads(r.value))
        .assign_timestamps(lambda e: e["t"], out_of_orderness=60)
        .key_by(lambda e: e["k"])
        .window(WINDOW)
        .aggregate(lambda: [0, 0], add)
        .sink(_window_sink(bootstrap, out, f"t-{out}", source))
    )
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as state:
        p.run(state, CheckpointConfig(interval=interval))
    return time.perf_counter() - started


def run_repartitioned(bootstrap: str, src: str, out: str, rep_topic: str, interval: float) -> float:
    rep = Repartition(
        bootstrap, rep_topic, partitions=PARTITIONS, upstream_topic=src, key=lambda e: e["k"]
    )
    source = KafkaSource(bootstrap, src, f"g-{out}", stop_at_end=True)
    one = Pipeline("rekey")
    (
        one.source(source)
        .map(lambda r: json.loads(r.value))
        .assign_timestamps(lambda e: e["t"], out_of_orderness=60)
        .sink(rep.sink(source, f"t-{rep_topic}"))
    )
    routed = rep.source(f"g-{rep_topic}", stop_at_end=True)
    two = Pipeline("windows")
    (
        two.source(routed)
        .key_by(lambda e: e["k"])
        .window(WINDOW)
        .aggregate(lambda: [0, 0], add)
        .sink(_window_sink(bootstrap, out, f"t-{out}", routed))
    )
    errors: list[BaseException] = []
    stop = threading.Event()

    def run(p: Pipeline, state: str) -> None:
        try:
            p.run(state, CheckpointConfig(interval=interval), stop=stop)
        except BaseException as exc:
            errors.append(exc)
            stop.set()

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as s1, tempfile.TemporaryDirectory() as s2:
        threads = [threading.Thread(target=run, args=a) for a in ((one, s1), (two, s2))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - started


def windows(bootstrap: str, topic: str) -> dict[tuple[int, float], list[float]]:
    """The committed output (read_committed), to check both contenders agree."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"check-{topic}",
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
        }
    )
    consumer.assign([TopicPartition(topic, 0, 0)])
    got: dict[tuple[int, float], list[float]] = {}
    while True:
        msg = consumer.poll(10)
        if msg is None or msg.error() is not None:
            break
        k, start, value = json.loads(msg.value())
        got[(k, start)] = value
    consumer.close()
    return got


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--interval", type=float, default=1.0, help="checkpoint interval, s")
    args = parser.parse_args(argv)
    bootstrap, stop_broker = start_broker()
    try:
        admin = AdminClient({"bootstrap.servers": bootstrap})
        inputs = {}
        for keyed in (True, False):
            inputs[keyed] = create_topic(admin, PARTITIONS)
            fill(bootstrap, inputs[keyed], args.events, keyed)
        times: dict[str, list[float]] = {"keyed": [], "repartitioned": []}
        results: dict[str, dict[tuple[int, float], list[float]]] = {}
        for round_ in range(args.repeat + 1):  # round 0 warms up
            order = ["keyed", "repartitioned"]
            if round_ % 2:
                order.reverse()
            for name in order:
                out = create_topic(admin, 1)
                if name == "keyed":
                    took = run_keyed(bootstrap, inputs[True], out, args.interval)
                else:
                    rep = create_topic(admin, PARTITIONS)
                    took = run_repartitioned(bootstrap, inputs[False], out, rep, args.interval)
                if round_:
                    times[name].append(took)
                results.setdefault(name, windows(bootstrap, out))
                print(f"round {round_} {name:14s} {took:6.2f} s", flush=True)
        if results["keyed"] != results["repartitioned"] or not results["keyed"]:
            raise SystemExit("the two contenders' outputs differ: not a fair comparison")
        print(f"outputs agree: {len(results['keyed'])} windows")
        med = {k: statistics.median(v) for k, v in times.items()}
        for name, v in times.items():
            print(
                f"{name:14s} {args.events / med[name]:10,.0f} events/s "
                f"(median of {len(v)}: {med[name]:.2f} s, {min(v):.2f}-{max(v):.2f})"
            )
        print(f"repartitioned / keyed throughput: {med['keyed'] / med['repartitioned']:.2f}x")
    finally:
        stop_broker()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
