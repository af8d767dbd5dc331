"""Throughput of ExactlyOnceProcessor against the loops a user would otherwise write.

Same broker, same input topic, same stateless transform (parse JSON, add a field,
re-serialize) for every contender, in one run:

* ``alo``: a plain at-least-once confluent-kafka loop (consume, transform,
  produce, auto-commit): the limit.
* ``eos-100ms`` / ``eos-1s``: :class:`eoscore.kafka.ExactlyOnceProcessor` with
  ``commit_interval_ms`` 100 and 1000; ``eos-100ms-serial`` the same with
  ``overlap_commits=False`` (the loop waits for each commit).
* ``pipeline-1s``: the pipeline's ``KafkaSource -> map -> KafkaSink`` with
  checkpoints every 1 s (each checkpoint's Kafka commit is its decision).
* ``quix-eos-100ms`` / ``quix-eos-1s``: Quix Streams with
  ``processing_guarantee="exactly-once"`` and the same commit intervals, run in
  its own virtualenv (``--quix-python``, default ``/tmp/quixvenv/bin/python``;
  skipped when it does not import).

Each contender reads the whole input with a fresh consumer group into a fresh
output topic; the clock runs from the first consumed record to the return of
the loop (last commit included); CPU time (all threads of the process) over
the same span is reported too, since wall-clock ratios on a shared machine
swing with other people's load. One warm-up run each, then ``--repeat`` rounds
in rotating order so drift on a shared machine hits everyone alike. Reports the
median with min-max spread, and ratios of medians. ``--json`` also writes a
pyperf suite (seconds per record) for ``python -m pyperf compare_to``.

Usage: ``python bench/bench_processor.py [--records 200000] [--repeat 3]``.
The broker is ``EOSCORE_KAFKA_BOOTSTRAP``, else one started with ``scripts/kafka``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from eoscore.kafka import ExactlyOnceProcessor, OutputRecord

REPO = Path(__file__).resolve().parents[1]
PARTITIONS = 6


def transform_value(raw: bytes) -> bytes:
    doc = json.loads(raw)
    doc["score"] = doc["value"] * 2 + len(doc["name"])
    return json.dumps(doc).encode()


# --- broker and data ---------------------------------------------------------------


def start_broker() -> tuple[str, Callable[[], None]]:
    env = os.environ.get("EOSCORE_KAFKA_BOOTSTRAP")
    if env:
        return env, lambda: None
    run_dir = tempfile.mkdtemp(prefix="eoscore-bench-kafka-")
    environ = {**os.environ, "EOSCORE_RUN": run_dir, "EOSCORE_KAFKA_WATCH_PID": str(os.getpid())}
    script = str(REPO / "scripts" / "kafka")
    out = subprocess.run([script, "start"], env=environ, capture_output=True, text=True, check=True)

    def stop() -> None:
        subprocess.run([script, "stop"], env=environ, capture_output=True, check=False)

    return out.stdout.strip().splitlines()[-1], stop


def create_topic(admin: AdminClient, partitions: int = PARTITIONS) -> str:
    name = f"bench-{uuid.uuid4().hex[:10]}"
    admin.create_topics([NewTopic(name, partitions, 1)])[name].result(30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        md = admin.list_topics(topic=name, timeout=10).topics.get(name)
        if md and md.error is None and all(p.leader >= 0 for p in md.partitions.values()):
            return name
        time.sleep(0.05)
    raise TimeoutError(name)


def fill(bootstrap: str, topic: str, n: int) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
    for i in range(n):
        doc = {"id": i, "name": f"user-{i % 997}", "value": i * 0.5, "tags": ["a", "b"]}
        while True:
            try:
                producer.produce(topic, json.dumps(doc).encode(), b"%d" % i)
                break
            except BufferError:
                producer.poll(0.05)
    producer.flush(60)


# --- contenders ----------------------------------------------------------------------


def run_alo(bootstrap: str, src: str, dst: str, n: int) -> tuple[float, float]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-alo-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
        }
    )
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    consumer.subscribe([src])
    seen, first, cpu0 = 0, 0.0, 0.0
    try:
        while seen < n:
            msgs = consumer.consume(1000, 0.1)
            if not msgs:
                continue
            if not first:
                first, cpu0 = time.perf_counter(), time.process_time()
            for m in msgs:
                if m.error() is not None:
                    continue
                seen += 1
                while True:
                    try:
                        producer.produce(dst, transform_value(m.value()), m.key())
                        break
                    except BufferError:
                        producer.poll(0.05)
            producer.poll(0)
        producer.flush(60)
    finally:
        consumer.close()
    return time.perf_counter() - first, time.process_time() - cpu0


def run_eos(
    bootstrap: str, src: str, dst: str, n: int, interval_ms: int, overlap: bool = True
) -> tuple[float, float]:
    first = [0.0, 0.0]

    def transform(batch: list) -> list[OutputRecord]:  # type: ignore[type-arg]
        if not first[0]:
            first[:] = [time.perf_counter(), time.process_time()]
        return [OutputRecord(dst, transform_value(m.value()), m.key()) for m in batch]

    proc = ExactlyOnceProcessor(
        bootstrap_servers=bootstrap,
        group_id=f"bench-eos-{uuid.uuid4().hex[:8]}",
        topics=[src],
        transform=transform,
        instance_id="bench",
        commit_interval_ms=interval_ms,
        overlap_commits=overlap,
    )
    proc.run(until=lambda: proc.metrics.records_in >= n)
    return time.perf_counter() - first[0], time.process_time() - first[1]


def run_pipeline(bootstrap: str, src: str, dst: str, n: int) -> tuple[float, float]:
    """KafkaSource -> map -> KafkaSink, checkpoints every 1 s (stops at the input's end)."""
    from eoscore.pipeline import Pipeline
    from eoscore.pipeline.kafka import KafkaSource
    from eoscore.runtime import CheckpointConfig
    from eoscore.sinks.kafka import KafkaSink

    first = [0.0, 0.0]

    def transform(rec: Any) -> bytes:
        if not first[0]:
            first[:] = [time.perf_counter(), time.process_time()]
        return transform_value(rec.value)

    tag = uuid.uuid4().hex[:8]
    source = KafkaSource(bootstrap, src, f"bench-pipe-{tag}", stop_at_end=True)
    sink = KafkaSink(bootstrap, dst, f"bench-pipe-{tag}", source)
    p = Pipeline(f"bench-pipe-{tag}")
    p.source(source).map(transform).sink(sink)
    with tempfile.TemporaryDirectory() as state:
        p.run(state, CheckpointConfig(interval=1.0))
    return time.perf_counter() - first[0], time.process_time() - first[1]


QUIX_CHILD = textwrap.dedent(
    """
    import json, logging, sys, time, uuid
    from quixstreams import Application
    bootstrap, src, dst, n, interval = sys.argv[1:6]
    first = [0.0, 0.0]
    def transform(doc):
        if not first[0]:
            first[:] = [time.perf_counter(), time.process_time()]
        doc["score"] = doc["value"] * 2 + len(doc["name"])
        return doc
    app = Application(
        broker_address=bootstrap, consumer_group="bench-quix-" + uuid.uuid4().hex[:8],
        auto_offset_reset="earliest", processing_guarantee="exactly-once",
        commit_interval=float(interval), loglevel="WARNING", use_changelog_topics=False,
        consumer_poll_timeout=0.1,
    )
    sdf = app.dataframe(app.topic(src, value_deserializer="json"))
    sdf = sdf.apply(transform)
    sdf.to_topic(app.topic(dst, value_serializer="json"))
    app.run(count=int(n), collect=False, timeout=600)
    print(json.dumps({"elapsed": time.perf_counter() - first[0],
                      "cpu": time.process_time() - first[1]}))
    """
)


def run_quix(
    python: str, bootstrap: str, src: str, dst: str, n: int, interval_s: float
) -> tuple[float, float]:
    out = subprocess.run(
        [python, "-c", QUIX_CHILD, bootstrap, src, dst, str(n), str(interval_s)],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"quix run failed: {out.stderr[-2000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return float(result["elapsed"]), float(result["cpu"])


def quix_works(python: str) -> str | None:
    """``None`` when Quix Streams imports in ``python``, else why not."""
    if not Path(python).exists():
        return f"{python} not found (pip install quixstreams into a separate venv)"
    out = subprocess.run(
        [python, "-c", "import quixstreams; print(quixstreams.__version__)"],
        capture_output=True,
        text=True,
        check=False,
    )
    return None if out.returncode == 0 else out.stderr.strip().splitlines()[-1]


# --- driver ----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quix-python", default="/tmp/quixvenv/bin/python")
    parser.add_argument("--no-quix", action="store_true")
    parser.add_argument("--json", help="write a pyperf suite (seconds per record) here")
    args = parser.parse_args(argv)

    bootstrap, stop = start_broker()
    try:
        admin = AdminClient({"bootstrap.servers": bootstrap})
        src = create_topic(admin)
        fill(bootstrap, src, args.records)
        n = args.records
        contenders: dict[str, Callable[[str, str], tuple[float, float]]] = {
            "alo": lambda s, d: run_alo(bootstrap, s, d, n),
            "eos-100ms": lambda s, d: run_eos(bootstrap, s, d, n, 100),
            "eos-1s": lambda s, d: run_eos(bootstrap, s, d, n, 1000),
            "eos-100ms-serial": lambda s, d: run_eos(bootstrap, s, d, n, 100, overlap=False),
            "pipeline-1s": lambda s, d: run_pipeline(bootstrap, s, d, n),
        }
        why_not = "--no-quix" if args.no_quix else quix_works(args.quix_python)
        if why_not is None:
            py = args.quix_python
            contenders["quix-eos-100ms"] = lambda s, d: run_quix(py, bootstrap, s, d, n, 0.1)
            contenders["quix-eos-1s"] = lambda s, d: run_quix(py, bootstrap, s, d, n, 1.0)
        else:
            print(f"quix: skipped ({why_not})", file=sys.stderr)

        times: dict[str, list[float]] = {name: [] for name in contenders}
        cpus: dict[str, list[float]] = {name: [] for name in contenders}
        names = list(contenders)
        for round_no in range(args.repeat + 1):  # round 0 is the warm-up
            order = names[round_no % len(names) :] + names[: round_no % len(names)]
            for name in order:
                dst = create_topic(admin)
                elapsed, cpu = contenders[name](src, dst)
                admin.delete_topics([dst])
                if round_no:
                    times[name].append(elapsed)
                    cpus[name].append(cpu)
                tag = "warm-up" if not round_no else f"round {round_no}"
                print(f"{tag:8} {name:15} {n / elapsed:>10,.0f} rec/s", file=sys.stderr)
        admin.delete_topics([src])
    finally:
        stop()

    report(times, cpus, n)
    if args.json:
        write_pyperf(times, n, args.json)
    return 0


def report(times: dict[str, list[float]], cpus: dict[str, list[float]], n: int) -> None:
    """Medians with spread, and ratios as the median of per-round ratios.

    Per-round (paired) ratios: contenders of one round ran back to back, so load
    from other processes on a shared machine hits both sides of a ratio alike.
    """
    rate = {name: n / statistics.median(values) for name, values in times.items()}

    def paired(ours: str, theirs: str) -> str:
        ratios = sorted(b / a for a, b in zip(times[ours], times[theirs], strict=True))
        return f"{statistics.median(ratios):.2f}x ({ratios[0]:.2f}-{ratios[-1]:.2f})"

    print(f"\n{n} records, {PARTITIONS} partitions, {len(times['alo'])} rounds\n")
    print(
        "| loop | records/s (median) | min-max | vs at-least-once (paired: median, range) "
        "| CPU us/record (median) |"
    )
    print("|---|---:|---:|---:|---:|")
    for name, values in times.items():
        lo, hi = n / max(values), n / min(values)
        cpu_us = statistics.median(cpus[name]) / n * 1e6
        print(
            f"| {name} | {rate[name]:,.0f} | {lo:,.0f}-{hi:,.0f} | {paired(name, 'alo')} "
            f"| {cpu_us:.1f} |"
        )
    for ours, theirs in (("eos-100ms", "quix-eos-100ms"), ("eos-1s", "quix-eos-1s")):
        if theirs in times:
            print(f"\n{ours} vs {theirs}: {paired(ours, theirs)}", end="")
    print()


def write_pyperf(times: dict[str, list[float]], n: int, path: str) -> None:
    import pyperf

    suite = pyperf.BenchmarkSuite(
        [
            pyperf.Benchmark(
                [pyperf.Run([t / n], metadata={"name": name, "unit": "second"}) for t in values]
            )
            for name, values in times.items()
        ]
    )
    suite.dump(path, replace=True)


if __name__ == "__main__":
    sys.exit(main())
