"""Kafka's own Java tools (org.apache.kafka:kafka-tools) as referees in the tests.

The jars come from ``scripts/kafka tools`` (fetched once with Maven, cached next
to the broker's; its last stdout line is the classpath). Every tool runs in a
fresh JVM with small-footprint flags; a run costs 2-6 s on the shared 2-core
box, so tests start the ones they need together (:func:`start`) and collect
them afterwards (:meth:`Tool.result`).

* :func:`verifiable_produce`: ``org.apache.kafka.tools.VerifiableProducer``
  writes ``0 .. n-1`` (as decimal strings) and reports each acknowledged send.
* :func:`console_consume`: ``org.apache.kafka.tools.consumer.ConsoleConsumer``
  at a given ``isolation.level`` until no record came for ``idle_ms``.
* :func:`transactions`: ``org.apache.kafka.tools.TransactionsCommand`` (what
  ``kafka-transactions.sh`` runs); its tab-separated tables parsed to dicts.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "kafka"
LOG4J = REPO / "scripts" / "kafka.d" / "tools-log4j2.properties"
JVM_FLAGS = ["-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC", "-Xmx256m", "-Xss1m"]

PRODUCER = "org.apache.kafka.tools.VerifiableProducer"
CONSOLE_CONSUMER = "org.apache.kafka.tools.consumer.ConsoleConsumer"
TRANSACTIONS = "org.apache.kafka.tools.TransactionsCommand"


@functools.cache
def classpath() -> str:
    """The tools' classpath; fails the test (not errors) when they cannot be fetched."""
    proc = subprocess.run([str(SCRIPT), "tools"], capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        pytest.fail(f"scripts/kafka tools failed:\n{proc.stderr}", pytrace=False)
    return proc.stdout.strip().splitlines()[-1]


def _java() -> str:
    home = os.environ.get("JAVA_HOME")
    return str(Path(home) / "bin" / "java") if home else "java"


@dataclass
class Tool:
    """One running Java tool."""

    argv: list[str]
    proc: subprocess.Popen[str]
    timeout: float

    def result(self) -> subprocess.CompletedProcess[str]:
        try:
            out, err = self.proc.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
            raise AssertionError(
                f"{self.argv[-1]}: still running after {self.timeout:.0f}s\n{err[-2000:]}"
            ) from None
        return subprocess.CompletedProcess(self.argv, self.proc.returncode, out, err)


def start(main_class: str, *args: str, timeout: float = 120.0) -> Tool:
    argv = [
        _java(),
        *JVM_FLAGS,
        f"-Dlog4j2.configurationFile={LOG4J}",
        "-cp",
        classpath(),
        main_class,
        *args,
    ]
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL
    )
    return Tool(argv, proc, timeout)


def run(main_class: str, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    return start(main_class, *args, timeout=timeout).result()


# --- VerifiableProducer ----------------------------------------------------------------


def verifiable_produce(bootstrap: str, topic: str, count: int, *, keys: int = 0) -> list[str]:
    """``count`` values written by Kafka's VerifiableProducer (acks=all); the values it
    reports as acknowledged, in its own words (``producer_send_success`` events).

    ``keys > 0`` gives the records the keys ``0 .. keys-1`` in turn (without keys
    the sticky partitioner may leave partitions empty)."""
    extra = ["--repeating-keys", str(keys)] if keys else []
    done = run(
        PRODUCER,
        "--bootstrap-server",
        bootstrap,
        "--topic",
        topic,
        "--max-messages",
        str(count),
        "--acks",
        "-1",
        "--throughput",
        "-1",
        *extra,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    acked: list[str] = []
    summary: dict[str, object] = {}
    for line in done.stdout.splitlines():
        event = json.loads(line)
        if event["name"] == "producer_send_success":
            assert event["topic"] == topic
            acked.append(event["value"])
        elif event["name"] == "producer_send_error":
            raise AssertionError(f"VerifiableProducer: {event}")
        elif event["name"] == "tool_data":
            summary = event
    assert summary.get("acked") == count == len(acked), summary
    return acked


# --- ConsoleConsumer --------------------------------------------------------------------


@dataclass(frozen=True)
class Consumed:
    topic_pattern: str
    partition: int
    offset: int
    value: str


def start_console_consume(
    bootstrap: str, include: str, isolation: str, *, idle_ms: int = 5000
) -> Tool:
    """ConsoleConsumer over every topic matching the regex ``include``, from the
    beginning, as a fresh group, until no record arrives for ``idle_ms``."""
    assert isolation in ("read_committed", "read_uncommitted")
    return start(
        CONSOLE_CONSUMER,
        "--bootstrap-server",
        bootstrap,
        "--include",
        include,
        "--from-beginning",
        "--isolation-level",
        isolation,
        "--timeout-ms",
        str(idle_ms),
        "--group",
        f"eoscore-java-verify-{uuid.uuid4().hex[:8]}",
        "--formatter-property",
        "print.partition=true",
        "--formatter-property",
        "print.offset=true",
    )


def consumed(tool: Tool, include: str) -> list[Consumed]:
    """Parse ``Partition:P<TAB>Offset:O<TAB>value`` lines; checks the tool ended by
    its idle timeout (its normal end), not by another error."""
    done = tool.result()
    # ConsoleConsumer exits 1 after --timeout-ms with a TimeoutException logged.
    assert "Processed a total of" in done.stderr, done.stderr[-2000:]
    out = []
    for line in done.stdout.splitlines():
        part, offset, value = line.split("\t", 2)
        assert part.startswith("Partition:") and offset.startswith("Offset:"), line
        out.append(Consumed(include, int(part[10:]), int(offset[7:]), value))
    total = int(done.stderr.rsplit("Processed a total of", 1)[1].split()[0])
    assert total == len(out), (total, len(out))
    return out


def console_consume(
    bootstrap: str, include: str, isolation: str, *, idle_ms: int = 5000
) -> list[Consumed]:
    tool = start_console_consume(bootstrap, include, isolation, idle_ms=idle_ms)
    return consumed(tool, include)


# --- TransactionsCommand ----------------------------------------------------------------


def start_transactions(bootstrap: str, *args: str) -> Tool:
    return start(TRANSACTIONS, "--bootstrap-server", bootstrap, *args)


def table(done: subprocess.CompletedProcess[str]) -> list[dict[str, str]]:
    """TransactionsCommand's output table (a header row, then rows; tab-separated,
    cells padded with spaces) as one dict per row."""
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    if not lines:
        return []
    header = [cell.strip() for cell in lines[0].rstrip("\t").split("\t")]
    rows = []
    for line in lines[1:]:
        cells = [cell.strip() for cell in line.rstrip("\t").split("\t")]
        assert len(cells) == len(header), (header, cells)
        rows.append(dict(zip(header, cells, strict=True)))
    return rows


def transactions(bootstrap: str, *args: str) -> tuple[int, list[dict[str, str]], str]:
    """Run ``kafka-transactions.sh ARGS``: (exit code, parsed table, stderr)."""
    done = start_transactions(bootstrap, *args).result()
    return done.returncode, table(done) if done.returncode == 0 else [], done.stderr
