"""``eoscore reconcile`` and ``eoscore sql prepared``.

Wire with ``add_commands(subparsers)`` (``eoscore.cli.COMMAND_MODULES``). The
commands only parse arguments and call :mod:`eoscore.reconcile` and
:mod:`eoscore.sinks.sql`.

Exit codes: 0 all good; 1 reconcile found gaps or duplicates, or prepared
transactions are listed/left; 2 bad arguments or an unreadable source/sink.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Hashable, Iterable
from typing import Any

from eoscore.errors import EosError

__all__ = ["add_commands"]


def add_commands(subparsers: Any) -> None:
    """Add ``reconcile`` and ``sql`` to an argparse subparsers object."""
    rec = subparsers.add_parser(
        "reconcile",
        help="compare a sink against the source range it consumed; exit 1 on gaps/duplicates",
        description="Report ids of a source range that are missing from a sink (gaps) or "
        "in it more than once (duplicates).",
    )
    rec.add_argument("--source", nargs="+", required=True, help="source files (NDJSON or CSV)")
    rec.add_argument("--source-format", choices=["ndjson", "csv"], default="ndjson")
    rec.add_argument("--start", type=int, default=0, help="first source line (0-based)")
    rec.add_argument("--end", type=int, default=None, help="end source line (exclusive)")
    rec.add_argument("--key", required=True, help="id field(s) in the source, comma-separated")
    sink = rec.add_mutually_exclusive_group(required=True)
    sink.add_argument("--sql", metavar="DATABASE", help="SQLite path or postgresql:// DSN")
    sink.add_argument("--files", metavar="DIR", help="a FileSink directory")
    sink.add_argument("--kafka", metavar="BOOTSTRAP", help="Kafka bootstrap servers")
    rec.add_argument("--table", help="table of --sql")
    rec.add_argument("--where", help="SQL condition limiting the sink rows (--sql)")
    rec.add_argument("--topic", help="topic of --kafka")
    rec.add_argument("--sink-key", help="id column(s)/field(s) in the sink; default: --key; "
                     "for --kafka without it, the message key")
    rec.add_argument("--limit", type=int, default=20, help="ids shown per list")
    rec.add_argument("--json", action="store_true", help="print the report as JSON")
    rec.set_defaults(run=_reconcile)

    sql = subparsers.add_parser("sql", help="SQL sink maintenance")
    sql_commands = sql.add_subparsers(dest="sql_command", required=True)
    prep = sql_commands.add_parser(
        "prepared",
        help="list or resolve PostgreSQL prepared transactions left by eoscore sinks",
        description="Prepared transactions hold their locks until resolved. Commit those "
        "whose checkpoint was decided, roll back the others (the checkpoint storage says "
        "which); gids are eoscore:<pipeline>:<sink>@<worker>:<checkpoint>.",
    )
    prep.add_argument("dsn", help="postgresql:// DSN")
    prep.add_argument("--prefix", default="eoscore:", help="gid prefix (default eoscore:)")
    prep.add_argument("--commit", action="append", default=[], metavar="GID")
    prep.add_argument("--rollback", action="append", default=[], metavar="GID")
    prep.add_argument("--rollback-older-than", type=float, metavar="SECONDS",
                      help="roll back every listed transaction prepared longer ago than this")
    prep.set_defaults(run=_prepared)


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _reconcile(args: argparse.Namespace) -> int:
    from eoscore import reconcile as rc

    key = _split(args.key)
    sink_key = _split(args.sink_key) if args.sink_key else key
    try:
        if args.source_format == "csv":
            source: Iterable[Hashable] = list(rc.keys_from_csv(args.source, key))[
                args.start : args.end
            ]
        else:
            source = rc.keys_from_ndjson(args.source, key, start=args.start, end=args.end)
        expected = list(source)
        if args.sql:
            if not args.table:
                raise SystemExit("eoscore reconcile: --sql needs --table")
            found = rc.keys_from_sql(args.sql, args.table, sink_key, where=args.where)
        elif args.files:
            found = rc.keys_from_files(args.files, sink_key)
        else:
            if not args.topic:
                raise SystemExit("eoscore reconcile: --kafka needs --topic")
            found = rc.keys_from_kafka(
                args.kafka, args.topic, _split(args.sink_key) if args.sink_key else None
            )
        report = rc.reconcile(expected, found)
    except (EosError, OSError) as exc:
        print(f"eoscore reconcile: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report.to_json()))
    else:
        print(report.summary(args.limit))
    return 0 if report.ok else 1


def _prepared(args: argparse.Namespace) -> int:
    from eoscore.sinks.sql import list_prepared, resolve_prepared

    for gid in args.commit:
        print(f"commit {gid}: {'done' if resolve_prepared(args.dsn, gid, commit=True) else 'gone'}")
    for gid in args.rollback:
        done = resolve_prepared(args.dsn, gid, commit=False)
        print(f"rollback {gid}: {'done' if done else 'gone'}")
    left = list_prepared(args.dsn, args.prefix)
    if args.rollback_older_than is not None:
        keep = []
        for tx in left:
            age = tx.age_s
            if age > args.rollback_older_than:
                done = resolve_prepared(args.dsn, tx.gid, commit=False)
                print(f"rollback {tx.gid} (prepared {age:.0f}s ago): {'done' if done else 'gone'}")
            else:
                keep.append(tx)
        left = keep
    for tx in left:
        print(f"{tx.gid}\tprepared {tx.prepared}\towner {tx.owner}\tdatabase {tx.database}")
    if not left:
        print("no prepared transactions left")
    return 1 if left else 0
