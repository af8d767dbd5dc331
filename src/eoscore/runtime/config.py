"""``CheckpointConfig``: the knobs users know from Flink."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CheckpointConfig"]


@dataclass(frozen=True)
class CheckpointConfig:
    """How often and how patiently the runtime checkpoints.

    Times are seconds. ``interval=None`` turns periodic checkpoints off (the
    final checkpoint at the end of a bounded input is still taken).
    """

    #: Time between the start of one checkpoint and the trigger of the next.
    interval: float | None = 1.0
    #: Minimum time between the end of one checkpoint and the start of the next.
    min_pause: float = 0.0
    #: A checkpoint not decided within this time is aborted (counts as a failure).
    timeout: float = 600.0
    #: Checkpoints in flight at once; the runtime supports exactly one.
    max_concurrent: int = 1
    #: Consecutive failed checkpoints tolerated before the pipeline stops.
    tolerable_failures: int = 0
    #: Completed checkpoints kept in storage (older ones are retired at step 5).
    retained: int = 1
    #: After this long aligning, switch the checkpoint to unaligned (None: never).
    aligned_timeout: float | None = None
    #: Start every checkpoint unaligned (barriers overtake in-flight records).
    unaligned: bool = False
    #: Records the alignment buffer holds before it stops pulling (backpressure).
    alignment_capacity: int = 20_000
    #: Records each channel's queue holds ahead of the executor (at least one
    #: batch fits): what an aligned barrier can wait behind, per channel, is this
    #: plus one batch (docs/runtime.md, "Barrier overtaking and queue bounds").
    channel_capacity: int = 1_000

    def __post_init__(self) -> None:
        if self.interval is not None and self.interval <= 0:
            raise ValueError(f"checkpoint interval must be positive, not {self.interval}")
        if self.min_pause < 0:
            raise ValueError(f"min_pause must not be negative, not {self.min_pause}")
        if self.timeout <= 0:
            raise ValueError(f"checkpoint timeout must be positive, not {self.timeout}")
        if self.max_concurrent != 1:
            raise ValueError("max_concurrent: the runtime runs one checkpoint at a time (use 1)")
        if self.tolerable_failures < 0:
            raise ValueError("tolerable_failures must not be negative")
        if self.retained < 1:
            raise ValueError("retain at least one completed checkpoint")
        if self.aligned_timeout is not None and self.aligned_timeout < 0:
            raise ValueError("aligned_timeout must not be negative")
        if self.alignment_capacity < 1:
            raise ValueError("alignment_capacity must be at least one record")
        if self.channel_capacity < 1:
            raise ValueError(
                f"channel_capacity must be at least one record, not {self.channel_capacity}"
            )
