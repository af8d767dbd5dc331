"""Exactly-once sinks and the two-phase contract they keep."""

from eoscore.sinks.two_phase import (
    Decision,
    DecidingSink,
    PreparedHandle,
    RecoveryPlan,
    TwoPhaseSink,
)

__all__ = ["Decision", "DecidingSink", "PreparedHandle", "RecoveryPlan", "TwoPhaseSink"]
