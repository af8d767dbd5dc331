"""A processor in its own process, for the crash and zombie tests.

Usage: ``python _child.py '<json config>'`` (``"dedup": prefix`` adds a
DurableDedup keyed by the message key); failpoints come from
``EOSCORE_FAILPOINTS`` (see eoscore.failpoints). SIGTERM stops it cleanly. Exit codes: 0 clean stop,
3 ProducerFencedError, 4 TransactionTimeoutError, 5 other error. The error class
is printed on the last stderr line.
"""

from __future__ import annotations

import faulthandler
import json
import logging
import os
import signal
import sys
import time

from eoscore.kafka import ExactlyOnceProcessor, ProducerFencedError, TransactionTimeoutError
from eoscore.kafka.dedup_changelog import DurableDedup
from tests.kafka._util import make_transform


def main() -> int:
    cfg = json.loads(sys.argv[1])
    logging.basicConfig(level=os.environ.get("EOSCORE_TEST_LOG", "WARNING"), stream=sys.stderr)
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # stack dump on demand
    headers = [("instance", cfg["tag"].encode())] if cfg.get("tag") else None
    inner = make_transform(cfg["output"], headers)
    throttle = float(cfg.get("throttle_s", 0.0))

    first = [True]

    def transform(batch: list) -> list:
        if first[0]:
            first[0] = False
            print("first-batch", flush=True)
        if throttle:
            time.sleep(throttle)  # leave work for the next crash
        return inner(batch)

    proc = ExactlyOnceProcessor(
        bootstrap_servers=cfg["bootstrap"],
        group_id=cfg["group"],
        topics=[cfg["input"]],
        transform=transform,
        instance_id=cfg["instance"],
        commit_interval_ms=cfg.get("commit_interval_ms", 100),
        batch_size=cfg.get("batch_size", 200),
        transaction_timeout_ms=cfg.get("transaction_timeout_ms", 10_000),
        static_membership=cfg.get("static", False),
        consumer_config={
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 500,
            **cfg.get("consumer_config", {}),
        },
        producer_config=cfg.get("producer_config", {}),
        dedup=DurableDedup(cfg["dedup"]) if cfg.get("dedup") else None,
    )
    signal.signal(signal.SIGTERM, lambda *_: proc.stop())
    try:
        proc.run()
    except ProducerFencedError as exc:
        print(f"ProducerFencedError: {exc}", file=sys.stderr)
        return 3
    except TransactionTimeoutError as exc:
        print(f"TransactionTimeoutError: {exc}", file=sys.stderr)
        return 4
    except Exception as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 5
    print(f"records_in {proc.metrics.records_in}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
