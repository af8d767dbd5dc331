"""Idempotence and progress tracking for consume-transform-produce loops.

* :class:`SequenceTracker`: Kafka's broker-side producer-state check (per producer
  id: epoch and the last 5 batches) for our own inputs; ``check`` / ``check_many``
  answer ACCEPT, DUPLICATE, OUT_OF_ORDER or FENCED.
* :class:`OffsetTracker`: offsets handed out and completed out of order per
  topic-partition; ``committable`` is the offset to commit and ``encode`` packs the
  completions above it into bounded commit metadata.

Both are native; the rules are in ``docs/trackers.md``.
"""

from __future__ import annotations

from eoscore._native._offsets import MAX_SPAN, MIN_ENCODE_BYTES, OffsetTracker
from eoscore._native._sequence import CheckResult, SequenceTracker

__all__ = [
    "ACCEPT",
    "DUPLICATE",
    "FENCED",
    "MAX_SPAN",
    "MIN_ENCODE_BYTES",
    "OUT_OF_ORDER",
    "CheckResult",
    "OffsetTracker",
    "SequenceTracker",
]

ACCEPT = CheckResult.ACCEPT
DUPLICATE = CheckResult.DUPLICATE
OUT_OF_ORDER = CheckResult.OUT_OF_ORDER
FENCED = CheckResult.FENCED
