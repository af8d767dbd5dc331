"""One root for every error eoscore raises.

Each error also derives from the builtin a caller would naturally catch
(``ValueError`` for bad bytes), so ``except ValueError`` keeps working.
"""

from __future__ import annotations

__all__ = [
    "CheckpointNotFoundError",
    "CorruptCheckpointError",
    "CorruptSnapshotError",
    "EosError",
    "RecordTooLargeError",
]


class EosError(Exception):
    """Base class of every eoscore error."""


class CorruptSnapshotError(EosError, ValueError):
    """Snapshot bytes failed validation (magic, version, length or checksum).

    Nothing is built from bytes that raise this: the caller keeps whatever
    state it had and can fall back to an older snapshot.
    """


class CorruptCheckpointError(EosError, ValueError):
    """Checkpoint bytes failed validation (magic, version, length or checksum).

    Nothing is built from bytes that raise this: restore leaves the state as
    it was, and the caller can restore an older checkpoint instead. The
    message names the checkpoint, the file and the chunk, e.g.
    ``checkpoint 42 file data/42/counts.chunks chunk 7: checksum mismatch
    (file truncated?)``.
    """

    def __init__(
        self,
        reason: str,
        *,
        checkpoint: int | None = None,
        file: str | None = None,
        chunk: int | None = None,
    ) -> None:
        self.reason = reason
        self.checkpoint = checkpoint
        self.file = file
        self.chunk = chunk
        where = []
        if checkpoint is not None:
            where.append(f"checkpoint {checkpoint}")
        if file is not None:
            where.append(f"file {file}")
        if chunk is not None:
            where.append(f"chunk {chunk}")
        super().__init__(f"{' '.join(where)}: {reason}" if where else reason)

    def located(
        self, *, checkpoint: int | None = None, file: str | None = None, chunk: int | None = None
    ) -> CorruptCheckpointError:
        """The same error with the location filled in (fields already set win)."""
        return CorruptCheckpointError(
            self.reason,
            checkpoint=self.checkpoint if self.checkpoint is not None else checkpoint,
            file=self.file if self.file is not None else file,
            chunk=self.chunk if self.chunk is not None else chunk,
        )


class CheckpointNotFoundError(EosError, LookupError):
    """No completed checkpoint with the requested id exists in the storage."""


class RecordTooLargeError(EosError, ValueError):
    """One state entry encodes to more than a checkpoint chunk may hold (64 MiB).

    Retrying cannot help: the entry must be split (several keys), or the data
    kept in a state that checkpoints in chunks of its own (``ColumnarState``,
    ``MapState`` per user key, the dedup state). The message names the state
    and the key, e.g. ``state 'totals' key 'all': one entry encodes to
    70933247 bytes, over the 67108864-byte chunk limit``.
    """

    def __init__(
        self, size: int, limit: int, *, key: object = None, state: str | None = None
    ) -> None:
        self.size = size
        self.limit = limit
        self.key = key
        self.state = state
        where = []
        if state is not None:
            where.append(f"state {state!r}")
        where.append(f"key {_short(key)}")
        super().__init__(
            f"{' '.join(where)}: one entry encodes to {size} bytes, over the {limit}-byte "
            "chunk limit (split it over several keys, or keep it in a chunked state such "
            "as ColumnarState or MapState)"
        )

    def for_state(self, state: str) -> RecordTooLargeError:
        """The same error naming the state (a state already named wins)."""
        return RecordTooLargeError(self.size, self.limit, key=self.key, state=self.state or state)


def _short(key: object) -> str:
    text = repr(key)
    return text if len(text) <= 80 else text[:77] + "..."
