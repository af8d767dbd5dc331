"""Exactly-once sinks and the two-phase contract they keep."""

from eoscore.sinks.errors import (
    RelayFencedError,
    SinkConfigError,
    SinkError,
    SinkFencedError,
    SinkRecoveryError,
    SinkStateError,
    SinkWriteError,
)
from eoscore.sinks.files import FileSink
from eoscore.sinks.outbox import OutboxRelay, OutboxWriter
from eoscore.sinks.sql import SqlSink, StandaloneSqlSink
from eoscore.sinks.two_phase import (
    DecidingSink,
    Decision,
    PreparedHandle,
    RecoveryPlan,
    TwoPhaseSink,
)

__all__ = [
    "DecidingSink",
    "Decision",
    "FileSink",
    "OutboxRelay",
    "OutboxWriter",
    "PreparedHandle",
    "RecoveryPlan",
    "RelayFencedError",
    "SinkConfigError",
    "SinkError",
    "SinkFencedError",
    "SinkRecoveryError",
    "SinkStateError",
    "SinkWriteError",
    "SqlSink",
    "StandaloneSqlSink",
    "TwoPhaseSink",
]
