"""What the checkpoint machinery needs from a state: the ``Snapshottable`` protocol.

A checkpoint happens in two phases (Flink's synchronous and asynchronous
parts). At the barrier, on the processing thread, ``freeze`` returns a
``FrozenState``: a cheap, consistent view of the state (a shallow copy, or
only the changed entries for an incremental checkpoint) and clears the dirty
tracking. Later, on the checkpoint thread, ``FrozenState.chunks`` encodes the
view while processing continues. Restore goes the other way: ``restorer``
returns a ``StateRestorer`` that builds the state from decoded chunks off to
the side and installs it only when every chunk has been read.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from eoscore._native._statecodec import ChunkEncoder

__all__ = ["FrozenState", "Snapshottable", "StateRestorer"]


class FrozenState(Protocol):
    """A state as it was at the barrier, ready to encode on another thread."""

    #: True if this holds only the changes since the previous checkpoint.
    incremental: bool
    #: Entries (upserts and deletes) this view will write.
    entries: int

    def chunks(self, encoder: ChunkEncoder) -> Iterator[bytes]:
        """Encoded chunks, one at a time (so memory stays at one chunk)."""
        ...

    def release(self) -> None:
        """Called once the chunks are written (or the checkpoint failed)."""
        ...


class StateRestorer(Protocol):
    """Builds a state from chunks, then swaps it in with ``install``."""

    def begin_segment(self, base: bool) -> None:
        """The chunks that follow belong to a new segment (a base or a delta)."""
        ...

    def records_dict(self) -> dict[Any, Any] | None:
        """A dict that record chunks may be decoded straight into, or None."""
        ...

    def records(self, items: list[tuple[Any, Any]]) -> None: ...
    def deleted_keys(self, keys: list[Any]) -> None: ...
    def columns(self, keys: npt.NDArray[np.int64], columns: list[npt.NDArray[Any]]) -> None: ...
    def deleted_column_keys(self, keys: npt.NDArray[np.int64]) -> None: ...
    def count(self) -> int:
        """Entries built so far (checked against the manifest before install)."""
        ...

    def install(self) -> None: ...


class Snapshottable(Protocol):
    """A state the ``Checkpointer`` can snapshot and restore."""

    #: "value", "map", "columnar" or "dedup" (recorded in the manifest). A state
    #: may also declare ``append_only`` and ``restores_from``
    #: (docs/checkpoint-format.md, "Incremental checkpoints").
    state_type: str

    def __len__(self) -> int: ...

    def describe(self) -> dict[str, Any]:
        """JSON-able settings a restore must match (columns, TTL)."""
        ...

    def dirty_count(self) -> int:
        """Keys changed (written or deleted) since the last freeze."""
        ...

    def dirty_bound(self) -> int:
        """A cheap upper bound of ``dirty_count`` (O(1))."""
        ...

    def freeze(self, incremental: bool) -> FrozenState:
        """Consistent view for the checkpoint; resets the dirty tracking."""
        ...

    def restorer(self, meta: Mapping[str, Any], expected: int = 0) -> StateRestorer:
        """A builder for this state from a checkpoint written with ``meta``.

        ``expected`` is the entry count of the checkpoint (a sizing hint).
        """
        ...
