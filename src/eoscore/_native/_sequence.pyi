"""Typing stub for the native producer-sequence tracker (public API: ``eoscore.sequence``)."""

import enum
from typing import Any

import numpy as np
import numpy.typing as npt
from typing_extensions import Buffer

SNAPSHOT_KIND: bytes
SNAPSHOT_VERSION: int

class CheckResult(enum.IntEnum):
    ACCEPT = 0
    DUPLICATE = 1
    OUT_OF_ORDER = 2
    FENCED = 3

class SequenceTracker:
    def __init__(self, expire_after: float | None = 86400.0) -> None: ...
    def check(
        self, pid: int, epoch: int, first_seq: int, last_seq: int, now: float | None = None
    ) -> CheckResult: ...
    def check_many(
        self,
        pids: npt.NDArray[np.integer[Any]] | list[int],
        epochs: npt.NDArray[np.integer[Any]] | list[int],
        first_seqs: npt.NDArray[np.integer[Any]] | list[int],
        last_seqs: npt.NDArray[np.integer[Any]] | list[int],
        now: float | None = None,
    ) -> npt.NDArray[np.uint8]: ...
    def expire(self, now: float | None = None) -> int: ...
    def producer(self, pid: int) -> tuple[int, list[tuple[int, int]], float] | None: ...
    def __len__(self) -> int: ...
    @property
    def expire_after(self) -> float | None: ...
    def snapshot(self) -> bytes: ...
    def restore(self, data: Buffer) -> None: ...
