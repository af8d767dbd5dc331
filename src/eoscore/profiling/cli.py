"""``eoscore profile`` and ``eoscore capacity``."""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["add_commands", "main"]

_SUFFIX = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}


def _number(text: str) -> float:
    """``10M``, ``500``, ``1.5k``, ``100k/s``: decimal suffixes."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKmMgGtT]?)(?:/s)?\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number like 500, 10M or 1.5k")
    return float(m.group(1)) * _SUFFIX[m.group(2).lower()]


def _bandwidth(text: str) -> float:
    """MB/s: ``170``, ``170MB/s``, ``1.5GB/s``, ``800KB``."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(?:([kKmMgGtT])i?[bB])?(?:/s)?\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r}: expected MB/s like 170, 170MB/s or 1.5GB/s")
    scale = {None: 1.0, "k": 1 / 1024, "m": 1.0, "g": 1024.0, "t": 1024.0**2}
    return float(m.group(1)) * scale[m.group(2).lower() if m.group(2) else None]


def _count(text: str) -> int:
    return int(_number(text))


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def _counts(text: str) -> list[int]:
    return [_count(x) for x in text.split(",") if x]


def cmd_capacity(args: argparse.Namespace) -> int:
    from eoscore.profiling.capacity import (
        CapacityInputs,
        estimate,
        format_estimate,
        measure_codec,
    )

    inputs = CapacityInputs(
        entries=args.entries,
        bytes_per_entry=args.bytes_per_entry,
        interval=args.interval,
        write_mb_s=args.write_bandwidth,
        read_mb_s=args.read_bandwidth,
        processing_rate=args.rate,
        input_rate=args.input_rate,
        dirty_fraction=args.dirty,
        retained=args.retained,
        rto=args.rto,
    )
    codec = measure_codec(args.bytes_per_entry, values=args.values)
    result = estimate(inputs, codec)
    print(json.dumps(result, indent=2) if args.json else format_estimate(result))
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    from eoscore.profiling.profile import format_table, plot, run_profile, to_dicts

    def note(message: str) -> None:
        if not args.json:
            print(f"profiling: {message}", file=sys.stderr, flush=True)

    points = run_profile(args.intervals, args.keys, args.records, progress=note)
    png: str | None = None
    if not args.no_plot:
        try:
            png = str(plot(points, Path(args.plot)))
        except RuntimeError as exc:  # matplotlib missing: the table still stands
            print(f"eoscore profile: {exc}", file=sys.stderr)
    if args.json:
        print(json.dumps({"points": to_dicts(points), "plot": png}, indent=2))
    else:
        print(format_table(points))
        if png:
            print(f"plot: {png}")
    return 0


def add_commands(subparsers: Any) -> None:
    cap = subparsers.add_parser(
        "capacity",
        help="estimate checkpoint size, storage bandwidth and recovery time",
        description=(
            "The article's capacity formulas with a measured serialization ratio: a "
            "sample state of the given shape is checkpointed and restored here first. "
            "Sizes in MB are MiB; counts take k/M/G suffixes."
        ),
    )
    cap.add_argument("--entries", type=_count, required=True, help="state entries, e.g. 10M")
    cap.add_argument("--bytes-per-entry", type=_count, required=True, help="key + value bytes")
    cap.add_argument("--interval", type=float, required=True, help="checkpoint interval, s")
    cap.add_argument("--write-bandwidth", type=_bandwidth, default=170.0, metavar="MB_S",
                     help="storage write bandwidth, MB/s (default 170)")
    cap.add_argument("--read-bandwidth", type=_bandwidth, default=500.0, metavar="MB_S",
                     help="storage read bandwidth, MB/s (default 500)")
    cap.add_argument("--rate", type=_number, required=True,
                     help="records/s the pipeline processes (e.g. 100k)")
    cap.add_argument("--input-rate", type=_number, help="records/s arriving (default: --rate)")
    cap.add_argument("--dirty", type=float, default=1.0,
                     help="fraction of entries changed per interval (incremental; default 1)")
    cap.add_argument("--retained", type=int, default=1, help="completed checkpoints kept")
    cap.add_argument("--rto", type=float, help="recovery time objective, s")
    cap.add_argument("--values", choices=("random", "text"), default="text",
                     help="sample values: JSON-like text (default) or incompressible bytes")
    cap.add_argument("--json", action="store_true")
    cap.set_defaults(run=cmd_capacity)

    prof = subparsers.add_parser(
        "profile",
        help="measure throughput, checkpoint time/size and recovery per interval and state size",
    )
    prof.add_argument("--intervals", type=_floats, default=[0.1, 0.5, 2.0],
                      help="checkpoint intervals, s (default 0.1,0.5,2)")
    prof.add_argument("--keys", type=_counts, default=[10_000, 100_000, 1_000_000],
                      help="state sizes in keys (default 10k,100k,1M)")
    prof.add_argument("--records", type=_count, default=2_000_000,
                      help="input records per run (default 2M)")
    prof.add_argument("--plot", default="eoscore-profile.png", help="PNG path")
    prof.add_argument("--no-plot", action="store_true", help="table only")
    prof.add_argument("--json", action="store_true")
    prof.set_defaults(run=cmd_profile)


def main(argv: Sequence[str] | None = None) -> int:
    """This command alone, through the one ``eoscore`` parser."""
    from eoscore.cli import main as eoscore_main

    return eoscore_main(argv)
