"""Exactly-once sinks and the two-phase contract they keep."""

from eoscore.sinks.two_phase import (
    DecidingSink,
    Decision,
    PreparedHandle,
    RecoveryPlan,
    TwoPhaseSink,
)

__all__ = ["DecidingSink", "Decision", "PreparedHandle", "RecoveryPlan", "TwoPhaseSink"]
