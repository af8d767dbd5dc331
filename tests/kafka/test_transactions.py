"""Lingering-transaction tools and their CLI on the real broker."""

from __future__ import annotations

import json
import time
import uuid

import pytest
from confluent_kafka import KafkaException, Producer

from eoscore.kafka import abort_transaction, find_lingering_transactions
from eoscore.kafka.cli import main as cli_main
from eoscore.kafka.transactions import stable_offsets
from tests.fixtures.kafka import TopicFactory
from tests.kafka._util import produce_inputs, read_committed


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


def test_abort_of_idle_transactional_id_is_harmless(kafka_bootstrap: str):
    abort_transaction(kafka_bootstrap, f"never-used-{uuid.uuid4().hex[:8]}", timeout_s=30)
