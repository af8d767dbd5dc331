"""The pieces of eoscore.kafka that need no broker."""

from __future__ import annotations

import numpy as np
import pytest
from confluent_kafka import KafkaError

from eoscore.errors import EosError
from eoscore.kafka import (
    ErrorAction,
    ExactlyOnceProcessor,
    FatalKafkaError,
    ProcessorMetrics,
    ProducerFencedError,
    TransactionTimeoutError,
    classify,
)
from eoscore.kafka._dedup_step import DedupStep


@pytest.mark.parametrize(
    ("error", "action"),
    [
        (KafkaError(KafkaError._FENCED, fatal=True), ErrorAction.FENCED),
        (KafkaError(KafkaError.PRODUCER_FENCED), ErrorAction.FENCED),
        (
            KafkaError(KafkaError.INVALID_PRODUCER_EPOCH, txn_requires_abort=True),
            ErrorAction.FENCED,
        ),
        (KafkaError(KafkaError._TIMED_OUT, retriable=True), ErrorAction.RETRY),
        (KafkaError(KafkaError.CONCURRENT_TRANSACTIONS, retriable=True), ErrorAction.RETRY),
        (KafkaError(KafkaError._STATE, fatal=True), ErrorAction.FATAL),
        (KafkaError(KafkaError.TRANSACTION_ABORTABLE, txn_requires_abort=True), ErrorAction.ABORT),
        (
            KafkaError(KafkaError._TIMED_OUT, txn_requires_abort=True, retriable=True),
            ErrorAction.ABORT,
        ),
        (KafkaError(KafkaError._INVALID_ARG), ErrorAction.ERROR),
    ],
)
def test_classify(error: KafkaError, action: ErrorAction) -> None:
    assert classify(error) is action


def test_error_hierarchy() -> None:
    for cls in (ProducerFencedError, TransactionTimeoutError):
        assert issubclass(cls, FatalKafkaError)
        assert issubclass(cls, EosError)
    assert not issubclass(TransactionTimeoutError, ProducerFencedError)
    err = ProducerFencedError("x", kafka_error="e")
    assert err.kafka_error == "e"


class Msg:
    def __init__(self, key: bytes, partition: int = 0) -> None:
        self._key, self._partition = key, partition

    def key(self) -> bytes:
        return self._key

    def topic(self) -> str:
        return "t"

    def partition(self) -> int:
        return self._partition


class SetDedup:
    def __init__(self) -> None:
        self.seen: set[bytes | str] = set()

    def check_and_add(self, keys: list[bytes | str]) -> np.ndarray:
        out = np.array([k not in self.seen for k in keys], dtype=bool)
        self.seen.update(keys)
        return out


def _keys(msgs: list[Msg]) -> list[bytes]:
    return [m.key() for m in msgs]


def test_dedup_step_drops_duplicates_and_replays_after_abort() -> None:
    step = DedupStep(SetDedup(), lambda m: m.key())
    assert _keys(step.filter([Msg(b"a"), Msg(b"b"), Msg(b"a")])) == [b"a", b"b"]
    step.seal()
    step.committed()
    # The transaction that first saw c and d aborts: their replay must pass once.
    assert _keys(step.filter([Msg(b"c"), Msg(b"b"), Msg(b"d", 1)])) == [b"c", b"d"]
    step.aborted()
    assert _keys(step.filter([Msg(b"c"), Msg(b"b"), Msg(b"c")])) == [b"c"]
    step.revoked({("t", 1)})  # d's partition went elsewhere: no replay here
    assert _keys(step.filter([Msg(b"d", 1)])) == []
    # c passed in this (open) transaction; an abort now allows it once more.
    step.aborted()
    assert _keys(step.filter([Msg(b"c"), Msg(b"c")])) == [b"c"]


def test_metrics_percentiles_and_rates() -> None:
    m = ProcessorMetrics(interval_s=1.0)
    for ms in range(1, 101):
        m.txn.commit_done(ms / 1000)
    m.records_in, m.records_out = 500, 400
    assert m.tick(now=m._mark + 0.5) is None  # interval not over yet
    snap = m.tick(now=m._mark + 2.0)
    assert snap is not None
    assert snap.records_in_per_s == 250 and snap.records_out_per_s == 200
    assert snap.commit_latency_p50_ms == pytest.approx(50, abs=1)
    assert snap.commit_latency_p99_ms == pytest.approx(99, abs=1)
    assert snap.txns_committed == 100
    assert "p99" in snap.line()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"consumer_config": {"isolation.level": "read_uncommitted"}},
        {"consumer_config": {"enable.auto.commit": True}},
        {"commit_interval_ms": 0},
        {"commit_interval_ms": 5000, "transaction_timeout_ms": 5000},
        {"topics": []},
    ],
)
def test_config_that_breaks_exactly_once_is_refused(kwargs: dict) -> None:
    base = {
        "bootstrap_servers": "127.0.0.1:1",
        "group_id": "g",
        "topics": ["in"],
        "transform": lambda batch: [],
        "instance_id": "i",
    }
    with pytest.raises(ValueError):
        ExactlyOnceProcessor(**{**base, **kwargs})
