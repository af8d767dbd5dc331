"""The contract every exactly-once sink keeps with the checkpoint coordinator.

A checkpoint is complete when exactly one durable *decision* for it exists;
everything else is derived from that decision (docs/commit-protocol.md has the
numbered steps). Sinks take part in two phases:

1. ``pre_commit(n)`` at barrier n: output flushed and prepared, not visible.
2. ``commit(n, handle)`` once n is decided, or ``abort(n, handle)`` if it never
   will be. Both must be redoable: after a crash the coordinator may call them
   again, from a new process, with the handle that ``pre_commit`` returned.

A :class:`DecidingSink` can also *be* the decision: committing its own
transaction atomically records checkpoint id n and the source positions (a
Kafka transaction with ``send_offsets_to_transaction``; a database transaction
that also writes the positions table). A pipeline has at most one deciding
sink; without one, the atomic rename of the checkpoint manifest decides.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["DecidingSink", "Decision", "PreparedHandle", "RecoveryPlan", "TwoPhaseSink"]

#: What ``pre_commit`` returns: enough to commit or abort from a new process.
#: JSON-serialisable (it is stored in the checkpoint manifest; never pickled).
PreparedHandle = Mapping[str, Any]


@dataclass(frozen=True)
class Decision:
    """The durable outcome of one checkpoint, read back on recovery."""

    checkpoint_id: int
    #: source name -> that source's positions, exactly as the checkpoint stored them.
    positions: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RecoveryPlan:
    """What a sink must do before processing resumes after a restart.

    ``commit`` holds the prepared handles of the decided checkpoint (redo step 4);
    ``abort`` the handles of checkpoints that were prepared but never decided.
    """

    decided: Decision | None
    commit: Sequence[tuple[int, PreparedHandle]] = ()
    abort: Sequence[tuple[int, PreparedHandle]] = ()


class TwoPhaseSink(abc.ABC):
    """A sink whose writes become visible only through ``commit``.

    Calls arrive from one thread, in this order per checkpoint n:
    ``begin(n)``, ``write(...)`` any number of times, ``pre_commit(n)``, then
    ``commit(n, handle)`` or ``abort(n, handle)``. ``begin(n+1)`` may come
    before ``commit(n, ...)`` (processing continues while n is being decided),
    and ``pre_commit(n+1)`` may come while n is neither committed nor aborted
    (an undecided checkpoint's output is carried forward into the next one).
    """

    #: Unique within a pipeline; names the sink in checkpoints and errors.
    name: str

    def open(self, pipeline: str, worker: str) -> None:  # noqa: B027 - optional hook
        """Connect. Called once before ``recover``; the default does nothing."""

    @abc.abstractmethod
    def recover(self, plan: RecoveryPlan) -> None:
        """Commit and abort what the plan says, then be ready for ``begin``."""

    @abc.abstractmethod
    def begin(self, checkpoint_id: int) -> None:
        """Start collecting the output that checkpoint ``checkpoint_id`` will cover."""

    @abc.abstractmethod
    def write(self, records: Sequence[Any]) -> None:
        """Add a batch of records to the open checkpoint; nothing becomes visible."""

    @abc.abstractmethod
    def pre_commit(self, checkpoint_id: int) -> PreparedHandle:
        """Flush and prepare; return what a new process needs to commit or abort."""

    @abc.abstractmethod
    def commit(self, checkpoint_id: int, handle: PreparedHandle) -> None:
        """Make the prepared output visible. Idempotent: a second call is a no-op."""

    @abc.abstractmethod
    def abort(self, checkpoint_id: int, handle: PreparedHandle | None) -> None:
        """Discard the output of ``checkpoint_id``. Idempotent."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections; never called twice, never followed by other calls."""


class DecidingSink(TwoPhaseSink):
    """A sink whose own commit is the checkpoint's decision."""

    @abc.abstractmethod
    def commit_decision(
        self, checkpoint_id: int, positions: Mapping[str, Any], handle: PreparedHandle
    ) -> None:
        """Atomically make the output visible and record (checkpoint id, positions)."""

    @abc.abstractmethod
    def read_decision(self) -> Decision | None:
        """The last decision this sink recorded, or None before the first one."""
