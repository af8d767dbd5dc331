"""The demo's order stream and the order pipeline, as a ``VerifyTarget``.

Orders arrive as JSON lines, in four files (or four Kafka partitions) split by
customer. Like real order feeds they contain *duplicate deliveries* (a client
or producer retry re-sends an order a few lines later, byte for byte) and
*out-of-order event times* (an order's ``ts`` is up to ``JITTER`` seconds older
than the orders around it; ``DemoSettings.disorder`` changes that).

Pipeline: parse -> event times (bounded out-of-orderness, ``JITTER``) -> dedup
by order id -> per-customer totals in 1-minute tumbling windows -> SQL table
through ``StandaloneSqlSink`` (rows, source positions and checkpoint id commit
in one database transaction). The windows' late side output (orders behind
the watermark, left out of the totals) goes to ``late/late-*.ndjson`` through
a ``FileSink``, committed with the same checkpoints: the late count survives
crashes and restarts, and with the input's disorder within the bound it must
be 0.

Settings come from the environment so the verifier's pipeline processes see
the same ones: ``EOSCORE_DEMO_ORDERS``, ``EOSCORE_DEMO_SEED``,
``EOSCORE_DEMO_DISORDER`` (seconds), ``EOSCORE_DEMO_KAFKA`` (bootstrap
servers), ``EOSCORE_DEMO_POSTGRES`` (DSN).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sqlite3
import uuid
from collections.abc import Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from eoscore.pipeline import FileSource, Pipeline, Tumbling, WindowResult, count, sum_of
from eoscore.pipeline.sources import END, ChannelReader, EndOfInput, Source
from eoscore.runtime import CheckpointConfig
from eoscore.sinks.files import FileSink
from eoscore.sinks.sql import StandaloneSqlSink
from eoscore.sinks.two_phase import TwoPhaseSink
from eoscore.verify.target import DEFAULT_FAILPOINTS, SINK_FAILPOINTS, VerifyTarget

__all__ = [
    "DemoSettings",
    "build_pipeline",
    "expected_totals",
    "generate_orders",
    "producer_config",
    "verify_target",
]

WINDOW = Tumbling(60)
JITTER = 30.0  # event times out of order by up to this many seconds: the pipeline's bound
PARTITIONS = 4
CUSTOMERS = 500
TABLE = "customer_totals"
COLUMNS = ("customer", "window_start", "orders", "total_cents")
PIPELINE = "orders-demo"
LATE_DIR = "late"  # under the workdir: the late orders, NDJSON
LATE_PREFIX = "late"
#: The crash points armed: one deciding sink, so no decision file. The late-orders
#: file sink adds ``runtime.between_sink_commits`` and ``files.*`` (committed after
#: the decision); they are left to the timer kills here, so that ``--seed``'s kill
#: sequence stays as it was (tests/verify's ``late`` target arms them).
DEMO_FAILPOINTS = (
    *(f for f in DEFAULT_FAILPOINTS
      if f not in ("store.before_decision_rename", "runtime.between_sink_commits")),
    *SINK_FAILPOINTS["standalone_sql"],
)


@dataclass(frozen=True)
class DemoSettings:
    orders: int = 400_000
    seed: int = 42
    duplicate_rate: float = 0.03
    #: How far the input's event times go back (seconds); beyond ``JITTER`` some
    #: orders come behind the watermark: late.
    disorder: float = JITTER
    kafka: str | None = None
    postgres: str | None = None

    @classmethod
    def from_env(cls) -> DemoSettings:
        env = os.environ
        return cls(
            orders=int(env.get("EOSCORE_DEMO_ORDERS", cls.orders)),
            seed=int(env.get("EOSCORE_DEMO_SEED", cls.seed)),
            disorder=float(env.get("EOSCORE_DEMO_DISORDER") or cls.disorder),
            kafka=env.get("EOSCORE_DEMO_KAFKA") or None,
            postgres=env.get("EOSCORE_DEMO_POSTGRES") or None,
        )

    def to_env(self) -> dict[str, str]:
        env = {
            "EOSCORE_DEMO_ORDERS": str(self.orders),
            "EOSCORE_DEMO_SEED": str(self.seed),
            "EOSCORE_DEMO_DISORDER": repr(self.disorder),
        }
        env["EOSCORE_DEMO_KAFKA"] = self.kafka or ""
        env["EOSCORE_DEMO_POSTGRES"] = self.postgres or ""
        return env


def generate_orders(settings: DemoSettings) -> tuple[list[list[str]], int]:
    """JSON lines per partition (split by customer), and how many are duplicates."""
    rng = random.Random(settings.seed)
    parts: list[list[str]] = [[] for _ in range(PARTITIONS)]
    resend: list[list[tuple[int, str]]] = [[] for _ in range(PARTITIONS)]
    duplicates = 0
    for i in range(settings.orders):
        now = i * 0.05  # 20 orders per second of event time
        customer = f"c{rng.randrange(CUSTOMERS):04d}"
        order = {
            "order_id": f"o{i:08d}",
            "customer": customer,
            "amount_cents": rng.randint(199, 25_000),
            "ts": round(now - rng.uniform(0, settings.disorder), 3),
        }
        p = int(customer[1:]) % PARTITIONS
        line = json.dumps(order, separators=(",", ":"))
        parts[p].append(line)
        if rng.random() < settings.duplicate_rate:  # a retry: the same bytes, a bit later
            resend[p].append((len(parts[p]) + rng.randint(1, 15), line))
        while resend[p] and resend[p][0][0] <= len(parts[p]):
            parts[p].append(resend[p].pop(0)[1])
            duplicates += 1
    for p in range(PARTITIONS):
        parts[p].extend(line for _, line in resend[p])
        duplicates += len(resend[p])
    return parts, duplicates


def to_row(w: WindowResult) -> tuple[str, int, int, int]:
    return (w.key, int(w.start), w.value["orders"], w.value["total_cents"])


def build_pipeline(
    source: Source,
    sink: StandaloneSqlSink,
    parse: Any = json.loads,
    late_sink: TwoPhaseSink | None = None,
) -> Pipeline:
    """The order pipeline over any source of JSON orders; late orders to ``late_sink``."""
    p = Pipeline(PIPELINE)
    windows = (
        p.source(source)
        .map(parse)
        .assign_timestamps(lambda o: o["ts"], out_of_orderness=JITTER)
        .dedup(lambda o: o["order_id"])
        .key_by("customer")
        .window(WINDOW)
        .agg(orders=count(), total_cents=sum_of("amount_cents", "int64"))
    )
    windows.map(to_row).sink(sink)
    if late_sink is not None:
        windows.late().sink(late_sink)
    return p


def expected_totals(orders: Iterable[Mapping[str, Any]]) -> dict[Hashable, Any]:
    """The batch recomputation: unique orders summed per customer and window."""
    seen: set[str] = set()
    out: dict[Hashable, Any] = {}
    for o in orders:
        if o["order_id"] in seen:
            continue
        seen.add(o["order_id"])
        # Integer milliseconds (ts has three decimals), then whole minutes.
        ms = int(Decimal(repr(o["ts"])) * 1000)
        start = ms // 60_000 * 60
        acc = out.setdefault((o["customer"], start), [0, 0])
        acc[0] += 1
        acc[1] += int(o["amount_cents"])
    return out


def producer_config(bootstrap: str) -> dict[str, Any]:
    """How the demo writes its input: each partition in the order of its file.

    Event-time windows need the partition order: an order that lands after
    later ones is older than the watermark and dropped as late. Without
    idempotence a retried produce request (common right after the topic is
    created, before its leader is known everywhere) can land after the
    requests that followed it; the idempotent producer keeps the order
    (and writes every message once) whatever it retries.
    """
    return {
        "bootstrap.servers": bootstrap,
        "linger.ms": 20,
        "enable.idempotence": True,  # implies acks=all and ordered retries
        "acks": "all",
    }


def _kafka_record_value(record: Any) -> Any:
    return json.loads(record.value)


class _UpTo(ChannelReader):
    """Ends a partition at a fixed offset (the demo's input is produced before it starts)."""

    def __init__(self, inner: ChannelReader, end: int) -> None:
        self.inner = inner
        self.name = inner.name
        self.end = end

    def read(self) -> list[Any] | EndOfInput | None:
        if int(self.inner.position()) >= self.end:
            return END
        return self.inner.read()

    def position(self) -> Any:
        return self.inner.position()

    def close(self) -> None:
        self.inner.close()


def _bounded_kafka_source(bootstrap: str, topic: str) -> Source:
    from confluent_kafka import Consumer, TopicPartition

    from eoscore.pipeline.kafka import KafkaSource

    class BoundedKafkaSource(KafkaSource):
        """Reads each partition up to its end offset when the run starts."""

        def open(self, positions: Mapping[str, Any]) -> list[ChannelReader]:
            consumer = Consumer(self.config)
            try:
                ends = {
                    p: consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=30)[1]
                    for p in self.partitions()
                }
            finally:
                consumer.close()
            return [_UpTo(ch, ends[int(ch.name)]) for ch in super().open(positions)]

    return BoundedKafkaSource(bootstrap, topic, f"{topic}-group", stop_at_end=True)


class _Demo:
    """Where one demo run keeps its input, state and output."""

    def __init__(self, workdir: Path, settings: DemoSettings) -> None:
        self.workdir = workdir
        self.settings = settings
        self.input_dir = workdir / "orders"
        self.late_dir = workdir / LATE_DIR
        self.database = settings.postgres or str(workdir / "totals.db")
        self._topic_file = workdir / "kafka-topic"

    @property
    def topic(self) -> str:
        """A new topic per demo run, chosen by ``prepare`` and read back by every process."""
        if not self._topic_file.exists():
            self._topic_file.write_text(f"eoscore-demo-orders-{uuid.uuid4().hex[:12]}")
        return self._topic_file.read_text().strip()

    # --- input ---------------------------------------------------------------------

    def prepare(self) -> None:
        parts, duplicates = generate_orders(self.settings)
        shutil.rmtree(self.late_dir, ignore_errors=True)  # a fresh run counts from 0
        self.input_dir.mkdir(parents=True, exist_ok=True)
        for p, lines in enumerate(parts):
            (self.input_dir / f"orders-{p}.jsonl").write_text("\n".join(lines) + "\n")
        (self.workdir / "input.json").write_text(
            json.dumps({"orders": self.settings.orders, "duplicates": duplicates})
        )
        self._create_table()
        if self.settings.kafka:
            self._produce(parts)

    def read_input(self) -> Iterator[dict[str, Any]]:
        for path in sorted(self.input_dir.glob("orders-*.jsonl")):
            with open(path, encoding="utf-8") as f:
                for line in f:
                    if line.strip():
                        yield json.loads(line)

    def _produce(self, parts: list[list[str]]) -> None:
        from confluent_kafka import Producer
        from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

        assert self.settings.kafka is not None
        admin = AdminClient({"bootstrap.servers": self.settings.kafka})
        futures = admin.create_topics([NewTopic(self.topic, PARTITIONS, 1)])
        for future in futures.values():
            future.result(30)
        producer = Producer(producer_config(self.settings.kafka))
        for p, lines in enumerate(parts):
            for line in lines:
                while True:
                    try:
                        producer.produce(self.topic, line.encode(), partition=p)
                        break
                    except BufferError:  # the local queue is full: let it drain
                        producer.poll(0.1)
                producer.poll(0)
        if producer.flush(60):
            raise RuntimeError(f"demo: could not produce the orders to {self.topic}")

    # --- output --------------------------------------------------------------------

    def _create_table(self) -> None:
        # No primary key on purpose: a duplicated window would show as a second row.
        ddl = (
            f"CREATE TABLE {TABLE} (customer TEXT NOT NULL, window_start BIGINT NOT NULL, "
            "orders BIGINT NOT NULL, total_cents BIGINT NOT NULL)"
        )
        if self.settings.postgres:
            import psycopg

            with psycopg.connect(self.settings.postgres, autocommit=True) as conn:
                conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
                conn.execute(ddl)
                # A fresh run: forget positions of an earlier demo run.
                conn.execute(
                    "DO $$ BEGIN IF to_regclass('eoscore_sink_state') IS NOT NULL THEN "
                    f"DELETE FROM eoscore_sink_state WHERE pipeline = '{PIPELINE}'; "
                    "END IF; END $$"
                )
        else:
            lite = sqlite3.connect(self.database)
            try:
                with lite:
                    lite.execute(f"DROP TABLE IF EXISTS {TABLE}")
                    lite.execute(ddl)
            finally:
                lite.close()

    def read_late(self) -> list[dict[str, Any]]:
        """The late orders the pipeline committed (its windows left them out)."""
        late: list[dict[str, Any]] = []
        for path in sorted(self.late_dir.glob(f"{LATE_PREFIX}-*.ndjson")):
            with open(path, encoding="utf-8") as f:
                late.extend(json.loads(line) for line in f if line.strip())
        return late

    def read_output(self) -> list[tuple[Hashable, Any]]:
        query = f"SELECT customer, window_start, orders, total_cents FROM {TABLE}"
        if self.settings.postgres:
            import psycopg

            with psycopg.connect(self.settings.postgres) as conn:
                rows = conn.execute(query).fetchall()
        else:
            lite = sqlite3.connect(self.database)
            try:
                rows = lite.execute(query).fetchall()
            finally:
                lite.close()
        return [((c, int(w)), [int(n), int(t)]) for c, w, n, t in rows]

    # --- the pipeline --------------------------------------------------------------

    def build(self) -> Pipeline:
        sink = StandaloneSqlSink(self.database, TABLE, list(COLUMNS), batch_size=5000)
        late = FileSink(self.late_dir, prefix=LATE_PREFIX, name="late-orders")
        if self.settings.kafka:
            source = _bounded_kafka_source(self.settings.kafka, self.topic)
            return build_pipeline(source, sink, _kafka_record_value, late)
        files = FileSource(self.input_dir, pattern="orders-*.jsonl")
        return build_pipeline(files, sink, late_sink=late)


def verify_target(workdir: Path) -> VerifyTarget:
    """The demo as a verify target: ``eoscore verify eoscore.demo.orders:verify_target``."""
    demo = _Demo(workdir, DemoSettings.from_env())
    return VerifyTarget(
        build=demo.build,
        state_dir=workdir / "state",
        read_output=demo.read_output,
        prepare=demo.prepare,
        read_input=demo.read_input,
        reference=expected_totals,
        read_late=demo.read_late,
        input_dir=None if demo.settings.kafka else demo.input_dir,
        checkpoints=CheckpointConfig(interval=0.25),
        failpoints=DEMO_FAILPOINTS,
    )
