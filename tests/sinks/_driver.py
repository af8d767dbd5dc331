"""A stand-in for the checkpoint coordinator, run as a child process and SIGKILLed.

It is test code, not a runtime: it reads an NDJSON source (position = line
number), writes each checkpoint's records through one sink, and follows the
commit protocol's steps (docs/sinks.md) with failpoints between them:

1. ``pre_commit(n)``; 2. the pending record (handle + positions) is written;
3. the decision: ``commit_decision`` for a deciding sink, else the atomic rename
   of ``manifest.json``; 4. ``commit(n, handle)``.

On start it recovers the way the coordinator will: the decision comes from the
deciding sink's ``read_decision()`` or from the manifest, the pending record
gives the handle to abort, and processing resumes at the decided positions.

    python -m tests.sinks._driver CONFIG.json
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from eoscore import failpoints
from eoscore.sinks import DecidingSink, Decision, RecoveryPlan, TwoPhaseSink


def build_sink(cfg: dict[str, Any]) -> TwoPhaseSink:
    kind = cfg["kind"]
    if kind in ("sql_standalone", "sql_participant"):
        from eoscore.sinks.sql import SqlSink, StandaloneSqlSink

        cls = StandaloneSqlSink if kind == "sql_standalone" else SqlSink
        return cls(
            cfg["database"],
            cfg["table"],
            cfg["columns"],
            mode=cfg.get("mode", "append"),
            key=cfg.get("key", ()),
            batch_size=cfg.get("sink_batch", 64),
        )
    if kind == "files":
        from eoscore.sinks.files import FileSink

        return FileSink(
            cfg["directory"],
            format=cfg.get("format", "ndjson"),
            columns=cfg.get("columns"),
            max_bytes=cfg.get("max_bytes", 4096),
        )
    raise SystemExit(f"unknown sink kind {kind!r}")


def write_atomically(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return dict(json.loads(path.read_text()))
    except FileNotFoundError:
        return None


def recover(sink: TwoPhaseSink, state: Path) -> tuple[int, int]:
    """Recovery; returns (next checkpoint id, source position)."""
    pending = read_json(state / "pending.json")
    decided: Decision | None
    commit: list[tuple[int, Any]] = []
    if isinstance(sink, DecidingSink):
        decided = sink.read_decision()
    else:
        manifest = read_json(state / "manifest.json")
        decided = Decision(manifest["n"], manifest["positions"]) if manifest else None
        if manifest:
            commit.append((manifest["n"], manifest["handle"]))
    abort = []
    last = decided.checkpoint_id if decided else 0
    if pending and pending["n"] > last:
        abort.append((pending["n"], pending["handle"]))
    sink.recover(RecoveryPlan(decided, commit=commit, abort=abort))
    top = max(last, pending["n"] if pending else 0)
    return top + 1, int(decided.positions["src"]) if decided else 0


def main() -> int:
    cfg = json.loads(Path(sys.argv[1]).read_text())
    state = Path(cfg["state_dir"])
    lines = Path(cfg["source"]).read_text().splitlines()
    sink = build_sink(cfg)
    sink.open(cfg.get("pipeline", "p"), "w0")
    n, pos = recover(sink, state)
    per_ckpt, batch, pause = cfg["per_checkpoint"], cfg["batch"], cfg.get("pause", 0.0)
    while pos < len(lines):
        sink.begin(n)
        end = min(pos + per_ckpt, len(lines))
        for i in range(pos, end, batch):
            sink.write([json.loads(line) for line in lines[i : min(i + batch, end)]])
            failpoints.hit("driver.mid_write")
            if pause:
                time.sleep(pause)
        handle = sink.pre_commit(n)  # Step 1
        positions = {"src": end}
        write_atomically(state / "pending.json", {"n": n, "handle": handle})  # Step 2
        failpoints.hit("driver.after_pending")
        if isinstance(sink, DecidingSink):
            sink.commit_decision(n, positions, handle)  # Step 3 (and 4)
        else:
            manifest = {"n": n, "positions": positions, "handle": handle}
            write_atomically(state / "manifest.json", manifest)  # Step 3
            failpoints.hit("driver.after_decision")
            sink.commit(n, handle)  # Step 4
        failpoints.hit("driver.after_commit")
        pos, n = end, n + 1
    sink.close()
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
