"""One root for every error eoscore raises.

Each error also derives from the builtin a caller would naturally catch
(``ValueError`` for bad bytes), so ``except ValueError`` keeps working.
"""

from __future__ import annotations

__all__ = ["CorruptSnapshotError", "EosError"]


class EosError(Exception):
    """Base class of every eoscore error."""


class CorruptSnapshotError(EosError, ValueError):
    """Snapshot bytes failed validation (magic, version, length or checksum).

    Nothing is built from bytes that raise this: the caller keeps whatever
    state it had and can fall back to an older snapshot.
    """
