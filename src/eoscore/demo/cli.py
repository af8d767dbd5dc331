"""``eoscore demo``: the order pipeline, killed mid-run several times, then verified.

Runs on the embedded default (files in, SQLite out, checkpoints on local disk)
with no servers; ``--kafka`` and ``--postgres`` swap in real services.

Late orders (behind the watermark: left out of the window totals) are kept in
``late/`` and counted. With the input's disorder within the pipeline's bound
there must be none: any is a failure, whatever the totals say. ``--disorder``
generates input beyond the bound; ``--allow-late`` then reports the late
orders and leaves them out of the batch recomputation instead of failing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from eoscore.demo.orders import (
    JITTER,
    LATE_DIR,
    PARTITIONS,
    WINDOW,
    DemoSettings,
    expected_totals,
)
from eoscore.errors import EosError
from eoscore.verify.cli import Progress
from eoscore.verify.runner import ChaosOptions, exclude_late, run_verification
from eoscore.verify.target import load_target

__all__ = ["add_commands", "main", "run_demo"]

TARGET = "eoscore.demo.orders:verify_target"


def run_demo(
    settings: DemoSettings, root: Path, options: ChaosOptions, progress: Progress | None = None
) -> dict[str, Any]:
    """Run the demo under ``root``; the report plus the demo's totals, as plain data."""
    saved = {k: os.environ.get(k) for k in settings.to_env()}
    os.environ.update(settings.to_env())  # the pipeline processes read the same settings
    try:
        report = run_verification(TARGET, root, options, progress=progress)
        target = load_target(TARGET, root / "chaos")
        assert target.read_input is not None and target.read_late is not None
        orders = list(target.read_input())
        if options.allow_late:  # the same batch recomputation verify compared with
            orders, _ = exclude_late(orders, target.read_late())
        expected = expected_totals(orders)
        actual = target.read_output()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    info = json.loads((root / "chaos" / "input.json").read_text())
    data = report.to_dict()
    data["demo"] = {
        "orders": info["orders"],
        "duplicate_deliveries": info["duplicates"],
        "out_of_order_seconds": settings.disorder,
        "out_of_orderness_bound_seconds": JITTER,
        "window_seconds": WINDOW.size,
        "late_orders": report.late_records,
        "late_allowed": options.allow_late,
        "late_orders_dir": str(root / "chaos" / LATE_DIR),
        "source": f"kafka {settings.kafka}" if settings.kafka else f"{PARTITIONS} files",
        "sink": "postgresql" if settings.postgres else "sqlite",
        "database": settings.postgres or str(root / "chaos" / "totals.db"),
        "expected_total_cents": sum(v[1] for v in expected.values()),
        "actual_total_cents": sum(v[1] for _, v in actual),
        "expected_orders": sum(v[0] for v in expected.values()),
        "actual_orders": sum(v[0] for _, v in actual),
    }
    d = data["demo"]
    data["verified"] = bool(
        report.ok  # includes: no late orders, unless allowed
        and d["expected_total_cents"] == d["actual_total_cents"]
        and d["expected_orders"] == d["actual_orders"]
    )
    return data


def _late_lines(d: dict[str, Any]) -> list[str]:
    late, where = d["late_orders"], d["late_orders_dir"]
    disorder, bound = d["out_of_order_seconds"], d["out_of_orderness_bound_seconds"]
    kept = f"kept in {where}" if where else f"kept in {LATE_DIR}/ of the deleted workdir (--keep)"
    if not late:
        return ["  late         0 orders behind the watermark"]
    if d["late_allowed"]:
        return [
            f"  late         {late:,} orders behind the watermark, left out of the batch "
            f"recomputation (--allow-late); {kept}"
        ]
    why = (
        f"the input's disorder (up to {disorder:g}s) is within the pipeline's {bound:g}s "
        "bound, so none may be late: reordered input?"
        if disorder <= bound
        else f"the input's disorder (up to {disorder:g}s) exceeds the pipeline's {bound:g}s "
        "bound; --allow-late accepts them"
    )
    return [
        f"  LATE         {late:,} orders arrived behind the watermark and are missing from "
        f"the totals; {kept}",
        f"               {why}",
    ]


def _money(cents: int) -> str:
    return f"${cents / 100:,.2f}"


def format_demo(data: dict[str, Any], report_text: str | None = None) -> str:
    d = data["demo"]
    rec = data["recovery_seconds"]
    size = data["checkpoint_bytes"]
    lines = [
        "eoscore demo: orders -> dedup by order id -> per-customer totals "
        f"(1-minute tumbling windows) -> {d['sink']}",
        f"  input        {d['orders']:,} orders + {d['duplicate_deliveries']:,} duplicate "
        f"deliveries, event times out of order by up to {d['out_of_order_seconds']:.0f}s "
        f"({d['source']})",
        f"  watermark    out_of_orderness {d['out_of_orderness_bound_seconds']:.0f}s; "
        "late orders go to a side output, committed with each checkpoint",
        f"  chaos        {data['kills']} SIGKILLs ({data['kills_at_failpoints']} at "
        f"commit-protocol failpoints, {data['kills_at_random']} at random moments), "
        f"{data['restarts']} restarts",
        f"  failpoints   {', '.join(sorted(set(data['failpoints_fired']))) or 'none'}",
    ]
    if rec:
        lines.append(
            f"  recovery     min {rec['min']:.2f}s  median {rec['median']:.2f}s  "
            f"max {rec['max']:.2f}s  (restart to reading again)"
        )
    if size:
        lines.append(
            f"  checkpoints  median {size['median'] / 1024:,.0f} KiB on disk "
            f"({size['count']:.0f} sampled between runs)"
        )
    same = d["expected_total_cents"] == d["actual_total_cents"]
    lines += [
        "verification (committed rows vs. a batch recomputation of the input)",
        f"  total        expected {_money(d['expected_total_cents'])}  actual "
        f"{_money(d['actual_total_cents'])}  {'equal' if same else 'DIFFERENT'}",
        f"  orders       expected {d['expected_orders']:,}  actual {d['actual_orders']:,}",
        f"  windows      {data['keys_expected']:,} customer-windows expected, "
        f"{data['records_out']:,} rows committed",
        f"  duplicates   {data['duplicates_found']}   missing {data['missing']}   "
        f"extra {data['extra']}   wrong {data['wrong']}",
        *_late_lines(d),
    ]
    for kind, items in data["offending"].items():
        lines.append(f"  first {kind}: {items[:3]}")
    verdict = "EXACTLY-ONCE VERIFIED" if data["verified"] else "VERIFICATION FAILED"
    if data["late_records"] and not d["late_allowed"]:
        verdict += f" ({data['late_records']:,} late orders)"
    lines.append(f"  {verdict} in {data['elapsed']:.1f}s")
    return "\n".join(lines)


def cmd_demo(args: argparse.Namespace) -> int:
    settings = DemoSettings(
        orders=args.orders,
        seed=args.seed,
        disorder=JITTER if args.disorder is None else args.disorder,
        kafka=args.kafka,
        postgres=args.postgres,
    )
    options = ChaosOptions(
        kills=args.kills, seed=args.seed, kill_window=(0.4, 1.0), allow_late=args.allow_late
    )
    progress = Progress(sys.stderr, enabled=not args.json and not args.quiet)
    root = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="eoscore-demo-"))
    try:
        data = run_demo(settings, root, options, progress)
    except EosError as exc:
        progress.done()
        print(f"eoscore demo: {exc}", file=sys.stderr)
        return 2
    finally:
        if not args.workdir and not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    progress.done()
    if not args.workdir and not args.keep:
        data["demo"]["late_orders_dir"] = None  # deleted with the temporary dir
    if args.json:
        print(json.dumps(data, indent=2, default=str))
    else:
        print(format_demo(data))
    return 0 if data["verified"] else 1


def add_commands(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "demo",
        help="run the order pipeline, kill it mid-run several times, verify exactly-once",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--kafka", metavar="BOOTSTRAP", help="read the orders from a real Kafka")
    p.add_argument("--postgres", metavar="DSN", help="write the totals to PostgreSQL")
    p.add_argument("--orders", type=int, default=DemoSettings.orders, help="orders to generate")
    p.add_argument("--kills", type=int, default=6, help="SIGKILLs before the last run")
    p.add_argument("--seed", type=int, default=DemoSettings.seed)
    p.add_argument("--disorder", type=float, metavar="SECONDS",
                   help=f"how far event times go back in the input (default {JITTER:g}, the "
                   "pipeline's bound; more makes late orders)")
    p.add_argument("--allow-late", action="store_true",
                   help="report late orders and leave them out of the check instead of failing")
    p.add_argument("--workdir", help="keep the demo's files here (default: a temporary dir)")
    p.add_argument("--keep", action="store_true", help="do not delete the temporary dir")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    p.set_defaults(run=cmd_demo)


def main(argv: Sequence[str] | None = None) -> int:
    """This command alone, through the one ``eoscore`` parser."""
    from eoscore.cli import main as eoscore_main

    return eoscore_main(["demo", *(sys.argv[1:] if argv is None else argv)])


