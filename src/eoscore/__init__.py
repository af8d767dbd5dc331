"""eoscore: exactly-once stream processing with Cython hot paths."""

from eoscore.errors import CorruptSnapshotError, EosError

__version__ = "0.1.0"

__all__ = ["CorruptSnapshotError", "EosError", "__version__"]
