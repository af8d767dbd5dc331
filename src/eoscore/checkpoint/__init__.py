"""Checkpoints: consistent, crash-safe, incremental snapshots of operator state.

- ``Checkpointer``: takes (``trigger``/``checkpoint``) and restores checkpoints
  of named states (``eoscore.state``) together with source positions.
- ``CheckpointStorage``: where they live; ``FileCheckpointStorage`` is the
  embedded default (atomic manifest publication, crash cleanup).
- ``inspect``/``verify``: what the ``eoscore checkpoint`` commands print.

Format and crash-safety argument: docs/checkpoint-format.md.
"""

from eoscore.checkpoint.checkpointer import (
    Checkpointer,
    CompletedCheckpoint,
    PendingCheckpoint,
    restore_into,
)
from eoscore.checkpoint.errors import CheckpointNotFoundError, CorruptCheckpointError
from eoscore.checkpoint.manifest import ChunkRef, Manifest, SegmentRef, StateEntry
from eoscore.checkpoint.report import describe_checkpoint, list_checkpoints, verify_checkpoint
from eoscore.checkpoint.storage import CheckpointStorage, FileCheckpointStorage, SegmentWriter

__all__ = [
    "CheckpointNotFoundError",
    "CheckpointStorage",
    "Checkpointer",
    "ChunkRef",
    "CompletedCheckpoint",
    "CorruptCheckpointError",
    "FileCheckpointStorage",
    "Manifest",
    "PendingCheckpoint",
    "SegmentRef",
    "SegmentWriter",
    "StateEntry",
    "describe_checkpoint",
    "list_checkpoints",
    "restore_into",
    "verify_checkpoint",
]
