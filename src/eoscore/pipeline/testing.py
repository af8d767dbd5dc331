"""``CollectingSink``: a two-phase sink that keeps output in memory (tests, examples).

It survives no crash (use ``eoscore.sinks.FileSink`` for that); within one
process it keeps the contract: output appears in ``committed`` only at commit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from eoscore.sinks.two_phase import PreparedHandle, RecoveryPlan, TwoPhaseSink

__all__ = ["CollectingSink"]


class CollectingSink(TwoPhaseSink):
    """Collects committed records in ``committed`` (in the order checkpoints committed)."""

    def __init__(self, name: str = "collect") -> None:
        self.name = name
        self.committed: list[Any] = []
        self.commits: list[int] = []
        self._open: list[Any] = []
        self._open_id = -1
        self._prepared: dict[int, list[Any]] = {}

    def recover(self, plan: RecoveryPlan) -> None:
        self._prepared.clear()

    def begin(self, checkpoint_id: int) -> None:
        self._open_id = checkpoint_id
        self._open = []

    def write(self, records: Sequence[Any]) -> None:
        self._open.extend(records)

    def pre_commit(self, checkpoint_id: int) -> PreparedHandle:
        self._prepared[checkpoint_id] = self._open
        self._open = []
        return {"records": len(self._prepared[checkpoint_id])}

    def commit(self, checkpoint_id: int, handle: PreparedHandle) -> None:
        records = self._prepared.pop(checkpoint_id, None)
        if records is not None:
            self.committed.extend(records)
            self.commits.append(checkpoint_id)

    def abort(self, checkpoint_id: int, handle: PreparedHandle | None) -> None:
        self._prepared.pop(checkpoint_id, None)
