"""One pipeline process of ``eoscore verify``: build, recover, run (it may be killed).

Usage: python -m eoscore.verify.child MODULE:FUNCTION WORKDIR EVENTS_FILE

Appends JSON lines to EVENTS_FILE: ``opened`` (wall time when recovery was
done and the sources were reopened), ``late`` (a window's batch of late
records: how many) and ``finished`` (the run's counters).
"""

from __future__ import annotations

import faulthandler
import json
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from eoscore.pipeline.operators import Node, Times
from eoscore.pipeline.sessions import SessionNode
from eoscore.pipeline.sources import ChannelReader, Source
from eoscore.pipeline.windows import WindowNode
from eoscore.verify.target import load_target

__all__ = ["main"]


def _event(path: Path, **data: Any) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(data) + "\n")
        f.flush()


class _Observed(Source):
    """Delegates to a source; notes when the runtime opens it (recovery is over)."""

    def __init__(self, inner: Source, events: Path, started: float) -> None:
        self.inner = inner
        self.name = inner.name
        self.events = events
        self.started = started
        self._noted = False

    def open(self, positions: Mapping[str, Any]) -> list[ChannelReader]:
        if not self._noted:
            self._noted = True
            _event(self.events, event="opened", at=time.time(), resumed=bool(positions))
        return self.inner.open(positions)

    def encode(self, records: Sequence[Any]) -> Any:
        return self.inner.encode(records)

    def decode(self, data: Any) -> list[Any]:
        return self.inner.decode(data)


class _LateCounter(Node):
    """On a window's late side output: notes each batch of late records it sees."""

    kind = "verify-late"

    def __init__(self, window: str, events: Path) -> None:
        super().__init__(f"{window}.late.verify")
        self.window = window
        self.events = events

    def push(self, values: list[Any], times: Times, port: int = 0) -> None:
        if values:
            _event(self.events, event="late", window=self.window, count=len(values))


def main(argv: Sequence[str] | None = None) -> int:
    spec, workdir, events = (argv if argv is not None else sys.argv[1:])[:3]
    # A run that hangs can be asked where: kill -USR1 <pid> prints every thread's stack.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    started = time.time()
    target = load_target(spec, Path(workdir))
    pipeline = target.build()
    events_path = Path(events)
    pipeline.sources[:1] = [
        (_Observed(source, events_path, started), node) for source, node in pipeline.sources[:1]
    ]
    windows = [n for n in pipeline.nodes if isinstance(n, (WindowNode, SessionNode))]
    for window in windows:  # appended last: the nodes' names and state stay the same
        counter = _LateCounter(window.name, events_path)
        pipeline.nodes.append(counter)
        window.late.connect_to(counter)
    result = pipeline.run(target.state_dir, target.checkpoints)
    _event(
        events_path,
        event="finished",
        at=time.time(),
        records_in=result.records_in,
        late_records=result.late_records,
        recovered_from=result.recovered_from,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
