"""Lingering-transaction tools and their CLI on the real broker, checked against
Kafka's own TransactionsCommand (``kafka-transactions.sh``)."""

from __future__ import annotations

import json
import time
import uuid

import pytest
from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient

from eoscore.kafka import abort_transaction, find_lingering_transactions
from eoscore.kafka.cli import main as cli_main
from eoscore.kafka.transactions import (
    AGE_FROM_COORDINATOR,
    NoOpenTransactionError,
    describe_transaction,
    list_transactions,
    stable_offsets,
)
from tests.fixtures.kafka import TopicFactory
from tests.kafka import _javatools as java
from tests.kafka._util import produce_inputs, read_committed

DAY_MS = 86_400_000


def test_find_and_abort_lingering_transaction(
    kafka_bootstrap: str, kafka_topic: TopicFactory, capsys: pytest.CaptureFixture[str]
):
    stuck, busy = kafka_topic(2), kafka_topic(1)
    produce_inputs(kafka_bootstrap, stuck, [(b"k", b"before")] * 4)
    txn_id = f"lingering-{uuid.uuid4().hex[:8]}"
    owner = Producer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "transactional.id": txn_id,
            "transaction.timeout.ms": 600_000,
        }
    )
    owner.init_transactions(30)
    owner.begin_transaction()
    for i in range(3):
        owner.produce(stuck, b"open-%d" % i, partition=1)
    assert owner.flush(30) == 0  # written, never committed: the owner "crashed"

    found = find_lingering_transactions(kafka_bootstrap, [stuck, busy], window_s=1.0)
    assert [(x.topic, x.partition) for x in found] == [(stuck, 1)]
    item = found[0]
    assert item.gap == 3 and item.stuck
    assert item.transactional_id == txn_id and item.age_source == AGE_FROM_COORDINATOR
    assert item.open_for_s is not None and 0 <= item.open_for_s < 120

    assert (
        cli_main(
            ["txn", "lingering", "-b", kafka_bootstrap, "-t", stuck, "--window", "0", "--json"]
        )
        == 1
    )
    row = json.loads(capsys.readouterr().out.strip())
    assert (row["topic"], row["partition"], row["gap"]) == (stuck, 1, 3)

    assert cli_main(["txn", "abort", "-b", kafka_bootstrap, txn_id]) == 0
    deadline = time.monotonic() + 30
    while find_lingering_transactions(kafka_bootstrap, [stuck]):
        assert time.monotonic() < deadline, "LSO still behind after the abort"
        time.sleep(0.2)
    lso, hwm = stable_offsets(kafka_bootstrap, [stuck])[(stuck, 1)]
    assert lso == hwm  # the abort marker moved both past the open records
    assert cli_main(["txn", "lingering", "-b", kafka_bootstrap, "-t", stuck]) == 0
    assert "no lingering" in capsys.readouterr().out
    assert all(v != b"open-0" for _k, v, _h in read_committed(kafka_bootstrap, stuck))

    # The old owner was fenced by the abort: it cannot commit its writes later.
    with pytest.raises(KafkaException) as info:
        owner.commit_transaction(30)
    assert info.value.args[0].fatal()
    del info, owner  # the traceback cycle would keep the fenced producer alive


def test_abort_of_an_id_without_open_transaction_changes_nothing(kafka_bootstrap: str):
    never_used = f"never-used-{uuid.uuid4().hex[:8]}"
    with pytest.raises(NoOpenTransactionError, match="unknown to the transaction coordinator"):
        abort_transaction(kafka_bootstrap, never_used, timeout_s=30)
    assert describe_transaction(kafka_bootstrap, never_used) is None  # nothing created

    done = f"committed-{uuid.uuid4().hex[:8]}"
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "transactional.id": done})
    producer.init_transactions(30)
    producer.begin_transaction()
    producer.commit_transaction(30)  # empty: the coordinator has the id, nothing open
    before = describe_transaction(kafka_bootstrap, done)
    assert before is not None and not before.is_open
    with pytest.raises(NoOpenTransactionError, match="no open transaction") as info:
        abort_transaction(kafka_bootstrap, done, timeout_s=30)
    assert info.value.state == before.state
    after = describe_transaction(kafka_bootstrap, done)
    assert after is not None and after.producer_epoch == before.producer_epoch  # not fenced
    del info, producer


def _broker_id(bootstrap: str) -> int:
    brokers = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=30).brokers
    assert len(brokers) == 1, "the fixture's broker is a single node"
    return next(iter(brokers))


def test_lingering_and_abort_agree_with_kafka_transactions_command(
    kafka_bootstrap: str, kafka_topic: TopicFactory, capsys: pytest.CaptureFixture[str]
):
    topic = kafka_topic(2)
    produce_inputs(kafka_bootstrap, topic, [(b"k", b"before")] * 2)
    txn_id = f"abandoned-{uuid.uuid4().hex[:8]}"
    typo = txn_id[:-1] + ("x" if txn_id[-1] != "x" else "y")
    owner = Producer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "transactional.id": txn_id,
            "transaction.timeout.ms": 600_000,
        }
    )
    owner.init_transactions(30)
    began = time.time()
    owner.begin_transaction()
    now_ms = int(time.time() * 1000)
    # Record timestamps that say nothing about when the transaction began: kept
    # from an upstream system two days old (partition 0), and an hour ahead (1).
    for i in range(3):
        owner.produce(topic, b"open-%d" % i, partition=0, timestamp=now_ms - 2 * DAY_MS)
        owner.produce(topic, b"open-%d" % i, partition=1, timestamp=now_ms + 3_600_000)
    assert owner.flush(30) == 0  # in the log, never committed: the owner walked away
    flushed = time.time()

    # Kafka's view, while ours is computed.
    broker = str(_broker_id(kafka_bootstrap))
    k_list = java.start_transactions(kafka_bootstrap, "list")
    k_describe = java.start_transactions(kafka_bootstrap, "describe", "--transactional-id", txn_id)
    k_hanging = java.start_transactions(kafka_bootstrap, "find-hanging", "--broker-id", broker)

    found = find_lingering_transactions(kafka_bootstrap, [topic])
    looked = time.time()
    assert cli_main(["txn", "lingering", "-b", kafka_bootstrap, "-t", topic, "--window", "0"]) == 1
    text = capsys.readouterr().out
    assert [(x.topic, x.partition, x.gap) for x in found] == [(topic, 0, 3), (topic, 1, 3)]
    pid = found[0].producer_id
    for item in found:
        assert item.transactional_id == txn_id and item.producer_id == pid
        assert item.age_source == AGE_FROM_COORDINATOR and item.note is None
        # The coordinator's start time: between begin and the end of the flush
        # (same machine, same clock), whatever the records' timestamps say.
        assert item.open_since is not None and began - 1 <= item.open_since <= flushed + 1
        assert item.open_for_s is not None and item.open_for_s <= looked - began + 1
        assert f"{topic}[{item.partition}]" in text
    assert text.count(f"transactional.id '{txn_id}'") == 2
    assert "coordinator's transaction start time" in text

    listed = {r["TransactionalId"]: r for r in java.table(k_list.result())}
    assert listed[txn_id]["TransactionState"] == "Ongoing"
    assert int(listed[txn_id]["ProducerId"]) == pid
    assert int(listed[txn_id]["Coordinator"]) == int(broker)
    ours = {t.transactional_id: t for t in list_transactions(kafka_bootstrap)}
    assert {k: (int(r["ProducerId"]), r["TransactionState"]) for k, r in listed.items()} == {
        k: (t.producer_id, t.state) for k, t in ours.items() if k in listed
    }
    (described,) = java.table(k_describe.result())
    assert described["TransactionalId"] == txn_id
    assert described["TransactionState"] == "Ongoing"
    assert int(described["CurrentTransactionStartTimeMs"]) == round(found[0].open_since * 1000)
    assert sorted(described["TopicPartitions"].split(",")) == [f"{topic}-0", f"{topic}-1"]
    assert int(described["TransactionTimeoutMs"]) == 600_000
    # Kafka's duration is measured the same way, a few seconds apart from ours.
    kafka_age = int(described["TransactionDurationMs"]) / 1000
    assert abs(kafka_age - found[0].open_for_s) < (time.time() - began) + 1
    # Not *hanging* in Kafka's sense (its coordinator knows it): find-hanging
    # lists nothing, and we named its owner rather than calling it hanging.
    hanging = k_hanging.result()
    assert hanging.returncode == 0, hanging.stderr[-2000:]
    assert java.table(hanging) == []

    # A mistyped id: refused, nothing created, the real transaction stays open.
    assert cli_main(["txn", "abort", "-b", kafka_bootstrap, typo]) == 1
    err = capsys.readouterr().err
    assert typo in err and "unknown to the transaction coordinator" in err
    assert "nothing created" in err
    still = find_lingering_transactions(kafka_bootstrap, [topic])
    assert [(x.partition, x.transactional_id) for x in still] == [(0, txn_id), (1, txn_id)]

    # A read_committed reader is stuck behind the open transaction...
    produce_inputs(kafka_bootstrap, topic, [(b"k", b"after")])  # lands on one partition
    assert [v for _k, v, _h in read_committed(kafka_bootstrap, topic)] == [b"before"] * 2

    # ...until the real abort: the LSO moves past the open records and the reader advances.
    assert cli_main(["txn", "abort", "-b", kafka_bootstrap, txn_id]) == 0
    out = capsys.readouterr().out
    assert f"transactional.id '{txn_id}': aborted" in out and f"producer id {pid}" in out
    deadline = time.monotonic() + 30
    while find_lingering_transactions(kafka_bootstrap, [topic]):
        assert time.monotonic() < deadline, "LSO still behind after the abort"
        time.sleep(0.2)
    assert all(lso == hwm for lso, hwm in stable_offsets(kafka_bootstrap, [topic]).values())
    values = sorted(v for _k, v, _h in read_committed(kafka_bootstrap, topic))
    assert values == [b"after", b"before", b"before"]

    # Kafka agrees: the typo never became an id, the real one is no longer open.
    k_typo = java.start_transactions(kafka_bootstrap, "describe", "--transactional-id", typo)
    k_after = java.start_transactions(kafka_bootstrap, "describe", "--transactional-id", txn_id)
    k_list = java.start_transactions(kafka_bootstrap, "list")
    typo_done = k_typo.result()
    assert typo_done.returncode != 0 and "could not be found" in typo_done.stderr
    (after,) = java.table(k_after.result())
    assert after["TransactionState"] in ("PrepareAbort", "CompleteAbort", "Empty")
    assert int(after["ProducerEpoch"]) > int(described["ProducerEpoch"])  # the owner is fenced
    listed = {r["TransactionalId"]: r for r in java.table(k_list.result())}
    assert typo not in listed and listed[txn_id]["TransactionState"] != "Ongoing"

    # Aborting again: nothing open any more, said so, exit 1.
    assert cli_main(["txn", "abort", "-b", kafka_bootstrap, txn_id]) == 1
    assert "no open transaction" in capsys.readouterr().err
    with pytest.raises(KafkaException):
        owner.commit_transaction(30)
    del owner


def test_without_the_coordinators_the_age_is_labelled_as_a_record_timestamp(
    kafka_bootstrap: str,
    kafka_topic: TopicFactory,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
):
    """Where ListTransactions/DescribeTransactions cannot be sent (TLS/SASL
    listeners, Kafka < 3.0) the figure is the record timestamp, and says so."""
    from eoscore.kafka import transactions

    def unreachable(*_args: object) -> None:
        raise transactions.ProtocolError("127.0.0.1:1: cannot connect (simulated)")

    monkeypatch.setattr(transactions, "_owners", unreachable)
    topic = kafka_topic(1)
    owner = Producer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "transactional.id": f"fallback-{uuid.uuid4().hex[:8]}",
            "transaction.timeout.ms": 60_000,
        }
    )
    owner.init_transactions(30)
    owner.begin_transaction()
    stamped = int(time.time() * 1000) - DAY_MS
    owner.produce(topic, b"open", timestamp=stamped)
    assert owner.flush(30) == 0
    try:
        (item,) = find_lingering_transactions(kafka_bootstrap, [topic])
        assert item.transactional_id is None and item.age_source == transactions.AGE_FROM_RECORD
        assert item.open_since == stamped / 1000  # the record's timestamp, as labelled
        assert item.note is not None and "coordinators not asked" in item.note
        assert cli_main(["txn", "lingering", "-b", kafka_bootstrap, "-t", topic, "--window", "0"])
        text = capsys.readouterr().out
        assert "transactional.id unknown" in text and "timestamp of the record at the LSO" in text
        assert "simulated" in text
    finally:
        owner.abort_transaction(30)
        del owner


def test_protocol_encoding_matches_kafkas_wire_format():
    """Unsigned varints and compact strings as the Kafka protocol defines them."""
    from eoscore.kafka import _txn_protocol as wire

    assert wire._uvarint(0) == b"\x00"
    assert wire._uvarint(127) == b"\x7f"
    assert wire._uvarint(300) == b"\xac\x02"
    assert wire._compact_str("ab") == b"\x03ab" and wire._compact_str(None) == b"\x00"
    assert wire._compact_array([b"x", b"y"]) == b"\x03xy"
    data = b"\xac\x02" + b"\x03ab" + b"\x01\x05\x02zz" + b"\x00\x00\x00\x07"
    r = wire._Reader(data)
    assert r.uvarint() == 300 and r.compact_str() == "ab"
    r.tags()  # one tagged field (tag 5, 2 bytes): skipped
    assert r.int32() == 7
    with pytest.raises(wire.ProtocolError, match="truncated"):
        r.int8()
