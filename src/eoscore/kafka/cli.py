"""``eoscore txn ...``: lingering transactions from the command line.

``eoscore txn lingering -b HOST:PORT [-t TOPIC ...] [--window S] [--min-open S]``
lists partitions whose last stable offset lags the high watermark, with the
transactional id holding each and since when its coordinator has it open (exit
1 when any is found, so scripts can alert on it; 2 on errors).
``eoscore txn abort -b HOST:PORT TRANSACTIONAL_ID`` checks with the id's
coordinator that it has an open transaction, then aborts it by fencing (exit 0);
an id without one is reported and left alone (exit 1).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from eoscore.kafka.errors import KafkaProcessorError
from eoscore.kafka.transactions import (
    AGE_FROM_COORDINATOR,
    LingeringPartition,
    NoOpenTransactionError,
    abort_transaction,
    find_lingering_transactions,
)

__all__ = ["add_commands", "main"]


def add_commands(subparsers: Any) -> None:
    """Add ``txn`` with its subcommands to an ``argparse`` subparsers object."""
    txn = subparsers.add_parser("txn", help="find and abort lingering Kafka transactions")
    commands = txn.add_subparsers(dest="txn_command", required=True)

    lingering = commands.add_parser(
        "lingering", help="partitions whose last stable offset lags the high watermark"
    )
    lingering.add_argument("-b", "--bootstrap", required=True, help="host:port of a broker")
    lingering.add_argument(
        "-t", "--topic", action="append", help="topic to check (repeatable; default: all)"
    )
    lingering.add_argument(
        "--window",
        type=float,
        default=2.0,
        help="seconds between two LSO samples; only partitions whose LSO did not move are "
        "reported (0: one sample; default 2)",
    )
    lingering.add_argument(
        "--min-open",
        type=float,
        default=0.0,
        help="only report transactions open at least this many seconds",
    )
    lingering.add_argument("--json", action="store_true", help="one JSON object per line")
    lingering.set_defaults(run=_lingering)

    abort = commands.add_parser(
        "abort", help="abort the open transaction of a transactional.id (fences its owner)"
    )
    abort.add_argument("-b", "--bootstrap", required=True, help="host:port of a broker")
    abort.add_argument("transactional_id")
    abort.add_argument("--timeout", type=float, default=60.0, help="seconds (default 60)")
    abort.add_argument(
        "--force",
        action="store_true",
        help="skip asking the coordinator whether the id has an open transaction (for "
        "TLS/SASL listeners, which the check cannot reach); an unknown id is then "
        "registered on the broker",
    )
    abort.set_defaults(run=_abort)


def _describe(item: LingeringPartition) -> str:
    head = (
        f"{item.topic}[{item.partition}] lso {item.last_stable_offset} "
        f"hwm {item.high_watermark} gap {item.gap}"
    )
    owner = (
        f"transactional.id {item.transactional_id!r} (producer id {item.producer_id})"
        if item.transactional_id is not None
        else "transactional.id unknown"
    )
    if item.open_for_s is None:
        age = "open for: unknown"
    elif item.age_source == AGE_FROM_COORDINATOR:
        age = f"open for {item.open_for_s:.1f}s (coordinator's transaction start time)"
    else:
        age = (
            f"open for {item.open_for_s:.1f}s by the timestamp of the record at the LSO "
            "(producer-set or upstream-kept unless LogAppendTime; may be wrong)"
        )
    line = f"{head} {owner} {age}"
    return f"{line}; {item.note}" if item.note else line


def _utc(ms: int) -> str:
    if ms < 0:
        return "unknown"
    when = datetime.datetime.fromtimestamp(ms / 1000.0, tz=datetime.timezone.utc)
    return when.isoformat(timespec="milliseconds")


def _lingering(args: argparse.Namespace) -> int:
    try:
        found = find_lingering_transactions(
            args.bootstrap, args.topic, window_s=args.window, min_open_s=args.min_open
        )
    except KafkaProcessorError as exc:
        print(f"eoscore txn lingering: {exc}", file=sys.stderr)
        return 2
    for item in found:
        if args.json:
            print(json.dumps({**asdict(item), "gap": item.gap}))
        else:
            print(_describe(item))
    if not found and not args.json:
        print("no lingering transactions")
    return 1 if found else 0


def _abort(args: argparse.Namespace) -> int:
    tid = args.transactional_id
    try:
        aborted = abort_transaction(
            args.bootstrap, tid, timeout_s=args.timeout, check=not args.force
        )
    except NoOpenTransactionError as exc:
        print(f"eoscore txn abort: {exc}", file=sys.stderr)
        return 1
    except KafkaProcessorError as exc:
        print(f"eoscore txn abort: {exc}", file=sys.stderr)
        return 2
    if aborted is None:
        print(f"transactional.id {tid!r}: fenced; its open transaction (if any) aborted")
    else:
        parts = ", ".join(f"{t}[{p}]" for t, p in aborted.partitions) or "no partitions"
        print(
            f"transactional.id {tid!r}: aborted the transaction of producer id "
            f"{aborted.producer_id} epoch {aborted.producer_epoch}, open since "
            f"{_utc(aborted.start_time_ms)} (coordinator clock), on {parts}"
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``eoscore txn`` on its own: ``python -m eoscore.kafka.cli txn lingering ...``."""
    from eoscore.cli import main as eoscore_main

    return eoscore_main(argv)


if __name__ == "__main__":
    sys.exit(main())
