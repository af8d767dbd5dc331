"""Pipelines: sources -> operators -> two-phase sinks, run with exactly-once checkpoints.

- ``Pipeline``, ``Stream``, ``KeyedStream``: the builder (``map``, ``filter``,
  ``flat_map``, ``assign_timestamps``, ``dedup``, ``union``, ``key_by``,
  ``aggregate``/``reduce``, ``window``, ``connect``, ``sink``).
- ``Tumbling``, ``Sliding``, ``Session``, ``WindowResult``: event-time windows;
  ``count``, ``sum_of``, ``min_of``, ``max_of``, ``mean_of``, ``first_of``,
  ``last_of``: built-in aggregations (``.window(...).agg(total=sum_of("amount"))``).
- ``FileSource``: newline-delimited files; ``KafkaSource`` in ``eoscore.pipeline.kafka``;
  ``Repartition`` (re-keying through a Kafka topic) in ``eoscore.pipeline.repartition``.
- ``CollectingSink``: an in-memory two-phase sink for tests and examples
  (durable sinks: ``eoscore.sinks``).

Run with ``Pipeline.run(state_dir, CheckpointConfig(...))``; docs/runtime.md.
"""

from eoscore.pipeline.aggregations import (
    Aggregation,
    count,
    first_of,
    last_of,
    max_of,
    mean_of,
    min_of,
    sum_of,
)
from eoscore.pipeline.assigners import Session, Sliding, Tumbling
from eoscore.pipeline.builder import (
    ConnectedStreams,
    KeyedStream,
    Pipeline,
    Stream,
    WindowedStream,
    WindowOutput,
)
from eoscore.pipeline.errors import (
    CheckpointFailedError,
    CheckpointFailureReason,
    PipelineDefinitionError,
    PipelineError,
    RecoveryError,
    TooManyCheckpointFailuresError,
)
from eoscore.pipeline.operators import KeyedAccess
from eoscore.pipeline.sources import END, ChannelReader, EndOfInput, FileSource, Source
from eoscore.pipeline.testing import CollectingSink
from eoscore.pipeline.windows import WindowResult

__all__ = [
    "END",
    "Aggregation",
    "ChannelReader",
    "CheckpointFailedError",
    "CheckpointFailureReason",
    "CollectingSink",
    "ConnectedStreams",
    "EndOfInput",
    "FileSource",
    "KeyedAccess",
    "KeyedStream",
    "Pipeline",
    "PipelineDefinitionError",
    "PipelineError",
    "RecoveryError",
    "Session",
    "Sliding",
    "Source",
    "Stream",
    "TooManyCheckpointFailuresError",
    "Tumbling",
    "WindowOutput",
    "WindowResult",
    "WindowedStream",
    "count",
    "first_of",
    "last_of",
    "max_of",
    "mean_of",
    "min_of",
    "sum_of",
]
