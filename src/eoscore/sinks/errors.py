"""Errors of the database, file and outbox sinks, classified by what the caller does.

* :class:`SinkWriteError`: the *data* is wrong (a row violates a constraint). The
  checkpoint fails and must be aborted; retrying the same input fails again.
* :class:`SinkRecoveryError`: leftovers (prepared transactions, staged rows or
  files) that the recovery plan does not account for. An operator decides
  (``eoscore sql prepared``); the sink refuses to guess.
* :class:`SinkStateError`: calls out of the contract's order (a bug in the caller).
* :class:`RelayFencedError`: a newer outbox relay instance took over; stop this one.
* :class:`SinkConfigError`: bad arguments (table names, modes, columns).
"""

from __future__ import annotations

from typing import Any

from eoscore.errors import EosError

__all__ = [
    "RelayFencedError",
    "SinkConfigError",
    "SinkError",
    "SinkFencedError",
    "SinkRecoveryError",
    "SinkStateError",
    "SinkWriteError",
]


class SinkError(EosError):
    """Base class of the sink errors."""


class SinkConfigError(SinkError, ValueError):
    """A sink was built with arguments it cannot use."""


class SinkStateError(SinkError, RuntimeError):
    """A sink method was called out of the two-phase contract's order."""


class SinkWriteError(SinkError, ValueError):
    """A record could not be written; the checkpoint it belongs to must be aborted.

    ``index`` is the record's position among the records written for
    ``checkpoint_id`` (0-based), ``record`` the record itself and ``reason`` what
    the database or encoder said. Nothing of the checkpoint becomes visible.
    """

    def __init__(
        self, sink: str, checkpoint_id: int, index: int, record: Any, reason: str
    ) -> None:
        self.sink = sink
        self.checkpoint_id = checkpoint_id
        self.index = index
        self.record = record
        self.reason = reason
        shown = repr(record)
        if len(shown) > 300:
            shown = shown[:297] + "..."
        super().__init__(
            f"sink {sink!r} checkpoint {checkpoint_id}: record #{index} {shown} was "
            f"rejected: {reason.strip()} (the checkpoint is aborted; fix or filter the record)"
        )


class SinkRecoveryError(SinkError, RuntimeError):
    """Recovery found leftovers it cannot resolve safely on its own."""


class SinkFencedError(SinkError, RuntimeError):
    """A newer instance of the same pipeline and sink moved on; stop this one."""


class RelayFencedError(SinkFencedError):
    """Another relay instance with the same name initialised its producer after us."""
