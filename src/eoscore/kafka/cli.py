"""``eoscore txn ...``: lingering transactions from the command line.

``eoscore txn lingering -b HOST:PORT [-t TOPIC ...] [--window S] [--min-open S]``
lists partitions whose last stable offset lags the high watermark (exit 1 when
any is found, so scripts can alert on it). ``eoscore txn abort -b HOST:PORT
TRANSACTIONAL_ID`` aborts that id's open transaction by fencing it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from eoscore.kafka.errors import KafkaProcessorError
from eoscore.kafka.transactions import abort_transaction, find_lingering_transactions

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
    abort.set_defaults(run=_abort)


def _lingering(args: argparse.Namespace) -> int:
    found = find_lingering_transactions(
        args.bootstrap, args.topic, window_s=args.window, min_open_s=args.min_open
    )
    for item in found:
        if args.json:
            print(json.dumps({**asdict(item), "gap": item.gap}))
        else:
            age = "unknown" if item.open_for_s is None else f"{item.open_for_s:.1f}s"
            print(
                f"{item.topic}[{item.partition}] lso {item.last_stable_offset} "
                f"hwm {item.high_watermark} gap {item.gap} open for {age}"
            )
    if not found and not args.json:
        print("no lingering transactions")
    return 1 if found else 0


def _abort(args: argparse.Namespace) -> int:
    try:
        abort_transaction(args.bootstrap, args.transactional_id, timeout_s=args.timeout)
    except KafkaProcessorError as exc:
        print(f"eoscore txn abort: {exc}", file=sys.stderr)
        return 2
    print(f"transactional.id {args.transactional_id!r}: open transaction aborted (if any)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``eoscore txn`` on its own: ``python -m eoscore.kafka.cli txn lingering ...``."""
    from eoscore.cli import main as eoscore_main

    return eoscore_main(argv)


if __name__ == "__main__":
    sys.exit(main())
