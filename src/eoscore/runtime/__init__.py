"""The checkpoint runtime: coordinator, commit protocol, recovery, executor.

- ``CheckpointConfig``: interval, min_pause, timeout, max_concurrent,
  tolerable_failures, retained, aligned_timeout, unaligned.
- ``CheckpointCoordinator``: the commit protocol (docs/commit-protocol.md).
- ``CheckpointStore`` / ``FileCheckpointStore``: the storage seam.
- ``Executor``: runs a pipeline (``Pipeline.run`` uses it).
- ``AlignmentBuffer``: the native barrier-alignment buffer.
"""

from eoscore._native._align import AlignmentBuffer
from eoscore.runtime.config import CheckpointConfig
from eoscore.runtime.coordinator import CheckpointCoordinator, CheckpointStats, Recovered
from eoscore.runtime.executor import Executor, RunResult
from eoscore.runtime.store import CheckpointStore, FileCheckpointStore, PendingWrite

__all__ = [
    "AlignmentBuffer",
    "CheckpointConfig",
    "CheckpointCoordinator",
    "CheckpointStats",
    "CheckpointStore",
    "Executor",
    "FileCheckpointStore",
    "PendingWrite",
    "Recovered",
    "RunResult",
]
