"""Checkpoint errors, defined with the rest in :mod:`eoscore.errors`."""

from eoscore.errors import CheckpointNotFoundError, CorruptCheckpointError

__all__ = ["CheckpointNotFoundError", "CorruptCheckpointError"]
