"""Exactly-once consume-transform-produce for confluent-kafka users.

* :class:`ExactlyOnceProcessor`: the loop (``docs/kafka-processor.md``).
* :class:`OutputRecord`: what a transform returns.
* :mod:`eoscore.kafka.transactions`: find and abort lingering transactions.
* Errors, by what to do: :class:`ProducerFencedError` (another instance took
  over: stop), :class:`TransactionTimeoutError` (restart),
  :class:`FatalKafkaError` (restart), all :class:`KafkaProcessorError`.
"""

from eoscore.kafka.errors import (
    ErrorAction,
    FatalKafkaError,
    KafkaProcessorError,
    ProducerFencedError,
    TransactionTimeoutError,
    classify,
)
from eoscore.kafka.metrics import MetricsSnapshot, ProcessorMetrics
from eoscore.kafka.processor import ExactlyOnceProcessor, OutputRecord, Transform
from eoscore.kafka.transactions import (
    LingeringPartition,
    NoOpenTransactionError,
    abort_transaction,
    find_lingering_transactions,
)

__all__ = [
    "ErrorAction",
    "ExactlyOnceProcessor",
    "FatalKafkaError",
    "KafkaProcessorError",
    "LingeringPartition",
    "MetricsSnapshot",
    "NoOpenTransactionError",
    "OutputRecord",
    "ProcessorMetrics",
    "ProducerFencedError",
    "TransactionTimeoutError",
    "Transform",
    "abort_transaction",
    "classify",
    "find_lingering_transactions",
]
