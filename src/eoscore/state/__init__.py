"""Keyed operator state with dirty tracking, TTL and checkpoint support.

- ``ValueState``: one value per key.
- ``MapState``: a map (user key -> value) per key.
- ``ColumnarState``: numeric columns per int64 key, updated in batches
  (counters, sums: what aggregations use).
- ``DedupState``: the pipeline dedup's seen keys, checkpointed incrementally.

Keys and values are ints, floats, bools, None, strs, bytes, and lists, tuples
and dicts of those; nothing is ever pickled. Checkpoint them with
``eoscore.checkpoint.Checkpointer``.
"""

from eoscore.state.base import FrozenState, Snapshottable, StateRestorer
from eoscore.state.columnar import ColumnarState
from eoscore.state.dedup import DedupState
from eoscore.state.keyed import MapState, ValueState
from eoscore.state.ttl import Ttl

__all__ = [
    "ColumnarState",
    "DedupState",
    "FrozenState",
    "MapState",
    "Snapshottable",
    "StateRestorer",
    "Ttl",
    "ValueState",
]
