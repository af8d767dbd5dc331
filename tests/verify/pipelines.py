"""Targets for the ``eoscore verify`` tests: one exactly-once pipeline, one broken,
and variants whose input has records far behind the watermark (late).

Both: FileSource -> parse -> event times -> dedup -> per-key tumbling-window
sums -> a SQLite table (no primary key, so a window written twice is two rows).

``correct`` writes through ``StandaloneSqlSink``: rows, positions and
checkpoint id commit in one transaction. ``broken`` writes through
``WriteThroughSink``: rows are committed at ``write``, before any pre-commit,
and the source positions are committed separately (the runtime's decision
file): the article's dual write. A kill between the two replays rows that are
already visible.

``late`` puts ``LATE`` records far behind the watermark into ``correct``'s
input: its windows send them to a ``FileSink`` that ``read_late`` reads back.
``late_unread`` has the same input with nothing on the late side output.
"""

from __future__ import annotations

import json
import random
import sqlite3
from collections.abc import Hashable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from eoscore.pipeline import FileSource, Pipeline, Tumbling, WindowResult
from eoscore.runtime import CheckpointConfig
from eoscore.sinks.files import FileSink
from eoscore.sinks.sql import StandaloneSqlSink
from eoscore.sinks.two_phase import PreparedHandle, RecoveryPlan, TwoPhaseSink
from eoscore.verify import DEFAULT_FAILPOINTS, SINK_FAILPOINTS, VerifyTarget
from tests.pipeline.window_model import window_starts

EVENTS = 150_000  # enough for every kill to land mid-run; the suite runs six verifications
KEYS = 40
WINDOW = Tumbling(50)
TABLE = "totals"
LATE = 37  # records of the late targets' input whose time is far behind the watermark
LATE_TIME = -1000  # their time: any watermark of a channel that has read a line is past it


class WriteThroughSink(TwoPhaseSink):
    """Broken on purpose: visible at ``write``; nothing to prepare, nothing to commit."""

    def __init__(self, database: str) -> None:
        self.name = "write-through"
        self.database = database
        self.conn: sqlite3.Connection | None = None

    def open(self, pipeline: str, worker: str) -> None:
        self.conn = sqlite3.connect(self.database, isolation_level=None)

    def recover(self, plan: RecoveryPlan) -> None:
        pass

    def begin(self, checkpoint_id: int) -> None:
        pass

    def write(self, records: Sequence[Any]) -> None:
        assert self.conn is not None
        with self.conn:  # committed now, one transaction per batch
            self.conn.execute("BEGIN")
            self.conn.executemany(f"INSERT INTO {TABLE} VALUES (?, ?, ?, ?)", records)

    def pre_commit(self, checkpoint_id: int) -> PreparedHandle:
        return {}

    def commit(self, checkpoint_id: int, handle: PreparedHandle) -> None:
        pass

    def abort(self, checkpoint_id: int, handle: PreparedHandle | None) -> None:
        pass

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


def add(acc: list[int], e: Mapping[str, Any]) -> list[int]:
    return [acc[0] + 1, acc[1] + int(e["v"])]


def row(w: WindowResult) -> tuple[int, int, int, int]:
    return (w.key, int(w.start), w.value[0], w.value[1])


def reference(events: Iterable[Mapping[str, Any]]) -> dict[Hashable, Any]:
    seen: set[int] = set()
    out: dict[Hashable, Any] = {}
    for e in events:
        if e["id"] in seen:
            continue
        seen.add(e["id"])
        (start,) = window_starts(e["t"], WINDOW.size)
        acc = out.setdefault((e["k"], int(start)), [0, 0])
        acc[0] += 1
        acc[1] += int(e["v"])
    return out


class _Job:
    def __init__(self, workdir: Path, broken: bool, late: int = 0, keep_late: bool = False) -> None:
        self.workdir = workdir
        self.broken = broken
        self.late = late
        self.keep_late = keep_late
        self.input_dir = workdir / "in"
        self.late_dir = workdir / "late"
        self.database = str(workdir / "out.db")

    def prepare(self) -> None:
        rng = random.Random(5)
        self.input_dir.mkdir(parents=True, exist_ok=True)
        files: list[list[str]] = [[], []]
        # Late ones in the second half, long after every channel set its watermark.
        late_at = {EVENTS // 2 + j * (EVENTS // (2 * LATE)) for j in range(self.late)}  # 2nd half
        for i in range(EVENTS):
            e = {"id": i, "k": rng.randrange(KEYS), "t": i // 20 - rng.randint(0, 10), "v": i % 89}
            if i in late_at:
                e["t"] = LATE_TIME
            files[i % 2].append(json.dumps(e))
        for n, lines in enumerate(files):
            (self.input_dir / f"events-{n}.jsonl").write_text("\n".join(lines) + "\n")
        conn = sqlite3.connect(self.database)
        conn.execute(f"CREATE TABLE {TABLE} (k INTEGER, start INTEGER, n INTEGER, total INTEGER)")
        conn.commit()
        conn.close()

    def read_input(self) -> Iterator[dict[str, Any]]:
        for path in sorted(self.input_dir.iterdir()):
            for line in path.read_text().splitlines():
                if line:
                    yield json.loads(line)

    def read_late(self) -> list[dict[str, Any]]:
        late: list[dict[str, Any]] = []
        for path in sorted(self.late_dir.glob("late-*.ndjson")):
            late.extend(json.loads(line) for line in path.read_text().splitlines() if line)
        return late

    def read_output(self) -> list[tuple[Hashable, Any]]:
        conn = sqlite3.connect(self.database)
        try:
            rows = conn.execute(f"SELECT k, start, n, total FROM {TABLE}").fetchall()
        finally:
            conn.close()
        return [((k, s), [n, t]) for k, s, n, t in rows]

    def build(self) -> Pipeline:
        sink: TwoPhaseSink
        if self.broken:
            sink = WriteThroughSink(self.database)
        else:
            sink = StandaloneSqlSink(self.database, TABLE, ["k", "start", "n", "total"])
        p = Pipeline("verify-test")
        windows = (
            p.source(FileSource(self.input_dir))
            .map(json.loads)
            .assign_timestamps(lambda e: e["t"], out_of_orderness=20)
            .dedup(lambda e: e["id"])
            .key_by(lambda e: e["k"])
            .window(WINDOW)
            .aggregate(lambda: [0, 0], add)
        )
        windows.map(row).sink(sink)
        if self.keep_late:
            windows.late().sink(FileSink(self.late_dir, prefix="late", name="late"))
        return p

    def target(self) -> VerifyTarget:
        return VerifyTarget(
            build=self.build,
            state_dir=self.workdir / "state",
            read_output=self.read_output,
            prepare=self.prepare,
            read_input=self.read_input,
            reference=reference,
            input_dir=self.input_dir,
            checkpoints=CheckpointConfig(interval=0.2),
            failpoints=(
                *DEFAULT_FAILPOINTS,
                *SINK_FAILPOINTS["standalone_sql"],
                *(SINK_FAILPOINTS["files"] if self.keep_late else ()),
            ),
            read_late=self.read_late if self.keep_late else None,
        )


def correct(workdir: Path) -> VerifyTarget:
    return _Job(workdir, broken=False).target()


def broken(workdir: Path) -> VerifyTarget:
    return _Job(workdir, broken=True).target()


def no_reference(workdir: Path) -> VerifyTarget:
    """``correct`` without a reference function: compared with an uninterrupted run."""
    target = _Job(workdir, broken=False).target()
    target.reference = None
    return target


def late(workdir: Path) -> VerifyTarget:
    """``correct`` with ``LATE`` records far behind the watermark, kept by a FileSink."""
    return _Job(workdir, broken=False, late=LATE, keep_late=True).target()


def late_unread(workdir: Path) -> VerifyTarget:
    """The same input; the late side output is not connected (the records vanish)."""
    return _Job(workdir, broken=False, late=LATE).target()


def not_a_target(workdir: Path) -> str:
    return "nope"


def misspelled_failpoint(workdir: Path) -> VerifyTarget:
    """``correct`` arming a failpoint nothing defines (a typo of runtime.after_decision)."""
    target = _Job(workdir, broken=False).target()
    target.failpoints = (*target.failpoints, "runtime.after_decison")
    return target
