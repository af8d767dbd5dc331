"""Reconciliation: does a sink hold each record of a source range exactly once?

The article's last line of defence ("build a reconciliation process to detect
and fill gaps") for any pipeline, ours or not: read the record ids (or keys)
of the source range the pipeline consumed, read the same ids from the sink,
and report

* **gaps**: in the source range, missing from the sink (lost output);
* **duplicates**: in the sink more than once (double output);
* **unexpected**: in the sink but not in the source range (often benign: output
  of records outside the range; reported, not an error).

Ids are compared as strings (a CSV ``"7"`` equals a JSON ``7``); composite keys
as tuples of strings. ``eoscore reconcile`` wraps this and exits 1 on gaps or
duplicates.
"""

from __future__ import annotations

import csv
import json
import time
import uuid
from collections import Counter
from collections.abc import Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eoscore.errors import EosError

__all__ = [
    "ReconcileError",
    "ReconcileReport",
    "keys_from_csv",
    "keys_from_files",
    "keys_from_kafka",
    "keys_from_ndjson",
    "keys_from_sql",
    "reconcile",
]


class ReconcileError(EosError, ValueError):
    """A source or sink could not be read as asked (missing key field, bad file)."""


@dataclass(frozen=True)
class ReconcileReport:
    """The comparison of one source range against one sink."""

    expected: int  # distinct ids in the source range
    found: int  # rows in the sink (counting duplicates)
    gaps: list[Hashable] = field(default_factory=list)
    duplicates: dict[Hashable, int] = field(default_factory=dict)
    unexpected: list[Hashable] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No gap and no duplicate."""
        return not self.gaps and not self.duplicates

    def summary(self, limit: int = 20) -> str:
        def few(items: Sequence[Any]) -> str:
            shown = ", ".join(map(str, items[:limit]))
            return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")

        lines = [
            f"expected {self.expected} ids, found {self.found} rows: "
            f"{len(self.gaps)} gaps, {len(self.duplicates)} duplicated ids, "
            f"{len(self.unexpected)} unexpected ids -> {'OK' if self.ok else 'MISMATCH'}"
        ]
        if self.gaps:
            lines.append(f"gaps: {few(self.gaps)}")
        if self.duplicates:
            lines.append(f"duplicates: {few([f'{k} x{c}' for k, c in self.duplicates.items()])}")
        if self.unexpected:
            lines.append(f"unexpected: {few(self.unexpected)}")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "expected": self.expected,
            "found": self.found,
            "gaps": [_jsonable(k) for k in self.gaps],
            "duplicates": [[_jsonable(k), c] for k, c in self.duplicates.items()],
            "unexpected": [_jsonable(k) for k in self.unexpected],
        }


def _jsonable(key: Hashable) -> Any:
    return list(key) if isinstance(key, tuple) else key


def _sort_key(key: Hashable) -> tuple[int, Any]:
    text = str(key)
    return (0, int(text)) if text.lstrip("-").isdigit() else (1, text)


def reconcile(expected: Iterable[Hashable], found: Iterable[Hashable]) -> ReconcileReport:
    """Compare ids of a source range (``expected``) with ids read from a sink."""
    want = set(expected)
    counts = Counter(found)
    gaps = sorted(want.difference(counts), key=_sort_key)
    dupes = {k: c for k, c in sorted(counts.items(), key=lambda kc: _sort_key(kc[0])) if c > 1}
    unexpected = sorted(set(counts).difference(want), key=_sort_key)
    return ReconcileReport(len(want), sum(counts.values()), gaps, dupes, unexpected)


# --- readers -------------------------------------------------------------------------


def _key_of(record: Any, key: Sequence[str], where: str) -> Hashable:
    try:
        if isinstance(record, dict):
            parts = [record[k] for k in key]
        else:
            raise TypeError(f"not an object: {record!r:.80}")
    except (KeyError, TypeError) as exc:
        raise ReconcileError(f"{where}: no key field {exc} (key: {', '.join(key)})") from exc
    return str(parts[0]) if len(parts) == 1 else tuple(str(p) for p in parts)


def keys_from_ndjson(
    paths: Iterable[str | Path], key: Sequence[str], *, start: int = 0, end: int | None = None
) -> Iterator[Hashable]:
    """Ids of the records on lines ``[start, end)`` of the files, counted across files."""
    line_no = 0
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if end is not None and line_no >= end:
                    return
                if line_no >= start and line.strip():
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise ReconcileError(f"{path}:{line_no + 1}: not JSON ({exc})") from exc
                    yield _key_of(record, key, f"{path}:{line_no + 1}")
                line_no += 1


def keys_from_csv(paths: Iterable[str | Path], key: Sequence[str]) -> Iterator[Hashable]:
    """Ids from CSV files with a header row."""
    for path in paths:
        with open(path, newline="", encoding="utf-8") as f:
            for i, row in enumerate(csv.DictReader(f), start=2):
                yield _key_of(row, key, f"{path}:{i}")


def keys_from_files(directory: str | Path, key: Sequence[str]) -> Iterator[Hashable]:
    """Ids in the committed files of a FileSink directory (hidden staging skipped)."""
    for path in sorted(Path(directory).iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        if path.suffix == ".csv":
            yield from keys_from_csv([path], key)
        else:
            yield from keys_from_ndjson([path], key)


def keys_from_sql(
    database: str, table: str, key: Sequence[str], *, where: str | None = None
) -> Iterator[Hashable]:
    """Ids in a SQLite or PostgreSQL table (``where`` is trusted SQL)."""
    from eoscore.sinks._sqldb import connect, quote

    db = connect(database)
    try:
        cols = ", ".join(quote(k) for k in key)
        sql = f"SELECT {cols} FROM {quote(table)}" + (f" WHERE {where}" if where else "")
        for row in db.query_all(sql):
            yield str(row[0]) if len(row) == 1 else tuple(str(v) for v in row)
    finally:
        db.close()


def keys_from_kafka(
    bootstrap: str, topic: str, key: Sequence[str] | None = None, *, timeout_s: float = 60.0
) -> Iterator[Hashable]:
    """Ids in a topic as a ``read_committed`` consumer sees them, up to the stable end.

    Without ``key`` the message key is the id; otherwise fields of the JSON value.
    """
    from confluent_kafka import Consumer, TopicPartition

    from eoscore.kafka.transactions import stable_offsets

    todo = {tp: lso for tp, (lso, _) in stable_offsets(bootstrap, [topic]).items() if lso > 0}
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": f"eoscore-reconcile-{uuid.uuid4().hex}",
        "isolation.level": "read_committed",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
    })
    try:
        consumer.assign([TopicPartition(t, p, 0) for t, p in todo])
        deadline = time.monotonic() + timeout_s
        while todo:
            if time.monotonic() > deadline:
                raise ReconcileError(f"kafka {topic}: not at the stable end after {timeout_s}s")
            msg = consumer.poll(0.2)
            if msg is not None and msg.error() is None:
                where = f"{topic}[{msg.partition()}]@{msg.offset()}"
                if key:
                    raw = msg.value()
                    yield _key_of(json.loads(raw) if raw else None, key, where)
                else:
                    raw_key = msg.key()
                    yield raw_key.decode() if isinstance(raw_key, bytes) else str(raw_key)
            for tp in consumer.position([TopicPartition(t, p) for t, p in todo]):
                if tp.offset >= todo[(tp.topic, tp.partition)]:
                    del todo[(tp.topic, tp.partition)]
    finally:
        consumer.close()
