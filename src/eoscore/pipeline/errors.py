"""Errors of pipelines and of the checkpoint runtime.

Classified by what the caller should do (one class per action, a reason enum
for the details), all under :class:`eoscore.errors.EosError`.
"""

from __future__ import annotations

import enum

from eoscore.errors import EosError

__all__ = [
    "CheckpointFailedError",
    "CheckpointFailureReason",
    "PipelineDefinitionError",
    "PipelineError",
    "RecoveryError",
    "TooManyCheckpointFailuresError",
]


class PipelineError(EosError):
    """A pipeline stopped; restart it and recovery resumes from the last decision."""


class PipelineDefinitionError(PipelineError, ValueError):
    """The pipeline was built wrongly (fix the code that builds it)."""


class CheckpointFailureReason(enum.Enum):
    """Why one checkpoint failed (Flink's ``CheckpointFailureReason``, reduced)."""

    TIMEOUT = "timed out before it was decided"
    ALIGNMENT_TIMEOUT = "alignment took too long and unaligned checkpoints are off"
    STORAGE = "writing the pending checkpoint to storage failed"
    SINK_PRE_COMMIT = "a sink failed to pre-commit"
    DECISION = "the decision could not be made durable"
    SINK_COMMIT = "a sink failed to commit after the decision"


class CheckpointFailedError(EosError):
    """One checkpoint failed; processing may continue (see ``tolerable_failures``)."""

    def __init__(
        self, checkpoint_id: int, reason: CheckpointFailureReason, detail: str = ""
    ) -> None:
        self.checkpoint_id = checkpoint_id
        self.reason = reason
        text = f"checkpoint {checkpoint_id} failed: {reason.value}"
        super().__init__(f"{text} ({detail})" if detail else text)


class TooManyCheckpointFailuresError(PipelineError):
    """More consecutive checkpoint failures than ``CheckpointConfig.tolerable_failures``."""


class RecoveryError(PipelineError):
    """Recovery found storage and decision disagreeing (named in the message); needs a human."""
