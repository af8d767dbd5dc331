"""Errors of the Kafka exactly-once loop, classified by what the caller should do.

Every librdkafka error the loop meets goes through :func:`classify` once:

* ``RETRY``: the same call is repeated (``retriable()``, or a coordinator
  that is moving or loading).
* ``ABORT``: the transaction is aborted and every assigned partition is rewound to
  its committed offset (``txn_requires_abort()``); processing goes on.
* ``FENCED``: another producer with our ``transactional.id`` bumped the epoch, or
  the coordinator aborted our transaction because it outlived
  ``transaction.timeout.ms``. The broker answers both with the same
  ``INVALID_PRODUCER_EPOCH``; the processor tells them apart by the age of the
  transaction (see :class:`TransactionTimeoutError`).
* ``FATAL``: the client cannot continue (``fatal()``).
* ``ERROR``: anything else (a usage or state error); raised as is.
"""

from __future__ import annotations

import enum
from typing import Any

from confluent_kafka import KafkaError

from eoscore.errors import EosError

__all__ = [
    "ErrorAction",
    "FatalKafkaError",
    "KafkaProcessorError",
    "ProducerFencedError",
    "TransactionAbortRequired",
    "TransactionTimeoutError",
    "classify",
]

# Codes that mean "a newer instance of us exists" (producer epoch or static member).
_FENCED_CODES = frozenset(
    {
        KafkaError._FENCED,
        KafkaError.PRODUCER_FENCED,
        KafkaError.INVALID_PRODUCER_EPOCH,
        KafkaError.TRANSACTION_COORDINATOR_FENCED,
        KafkaError.FENCED_INSTANCE_ID,  # consumer side: same group.instance.id joined
    }
)


# Codes librdkafka does not always flag retriable() although asking again is right:
# the coordinator is moving or loading, or the request timed out on the way.
_TRANSIENT_CODES = frozenset(
    {
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.NOT_COORDINATOR,
        KafkaError._TIMED_OUT,
        KafkaError._TRANSPORT,
    }
)


class ErrorAction(enum.Enum):
    """What the loop does about one librdkafka error."""

    RETRY = "retry"
    ABORT = "abort"
    FENCED = "fenced"
    FATAL = "fatal"
    ERROR = "error"


def classify(error: Any) -> ErrorAction:
    """The action for a ``confluent_kafka.KafkaError``.

    Fencing is checked first: librdkafka also marks it ``fatal()``, and it must
    never be retried or aborted-and-continued (the old instance would keep
    writing next to the new one).
    """
    if error.code() in _FENCED_CODES:
        return ErrorAction.FENCED
    if error.fatal():
        return ErrorAction.FATAL
    if error.txn_requires_abort():
        return ErrorAction.ABORT
    if error.retriable() or error.code() in _TRANSIENT_CODES:
        return ErrorAction.RETRY
    return ErrorAction.ERROR


class KafkaProcessorError(EosError):
    """Base class of the errors raised by :mod:`eoscore.kafka`.

    ``kafka_error`` is the underlying ``confluent_kafka.KafkaError`` when there is
    one, else ``None``.
    """

    def __init__(self, message: str, kafka_error: Any = None) -> None:
        super().__init__(message)
        self.kafka_error = kafka_error


class TransactionAbortRequired(KafkaProcessorError):
    """The open transaction cannot commit, but aborting it and redoing its inputs can.

    Raised by :class:`eoscore.kafka.txn.TransactionalProducer`; its users abort
    and rewind (processor, relay) or fail the checkpoint (the pipeline's sink).
    """


class FatalKafkaError(KafkaProcessorError, RuntimeError):
    """The Kafka client hit an unrecoverable error; the processor has stopped.

    The open transaction (if any) is left to the coordinator, which aborts it.
    Restart the process; it resumes from the committed offsets.
    """


class ProducerFencedError(FatalKafkaError):
    """Another instance with the same ``transactional.id`` took over.

    This instance is a zombie: none of its uncommitted writes will become
    visible, and it must not retry. Stop it; the new instance owns the work.
    """


class TransactionTimeoutError(FatalKafkaError):
    """The transaction stayed open longer than ``transaction.timeout.ms``.

    The coordinator aborted it and bumped the producer epoch, so this producer
    can no longer write. Nothing was lost or duplicated: a restart resumes from
    the committed offsets. Raise ``transaction_timeout_ms`` or make batches
    cheaper; a process paused for that long is also reported this way.
    """
