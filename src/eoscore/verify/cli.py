"""``eoscore verify MODULE:FUNCTION``: chaos-test a pipeline's exactly-once claim."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from eoscore import failpoints
from eoscore.errors import EosError
from eoscore.verify.runner import ChaosOptions, run_verification

__all__ = ["Progress", "add_commands", "list_failpoints", "main"]


class Progress:
    """A bar on a terminal, plain lines otherwise (CI logs)."""

    def __init__(self, stream: TextIO, enabled: bool = True) -> None:
        self.stream = stream
        self.enabled = enabled
        self.tty = stream.isatty()

    def __call__(self, message: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self.tty:
            width = 24
            filled = width * done // max(1, total)
            bar = "#" * filled + "." * (width - filled)
            self.stream.write(f"\r\x1b[K[{bar}] {done}/{total} kills  {message}")
        else:
            self.stream.write(f"[{done}/{total}] {message}\n")
        self.stream.flush()

    def done(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


def _window(text: str) -> tuple[float, float]:
    lo, _, hi = text.partition(",")
    try:
        window = (float(lo), float(hi or lo))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: expected LO,HI seconds") from exc
    if not 0 <= window[0] <= window[1]:
        raise argparse.ArgumentTypeError(f"{text!r}: need 0 <= LO <= HI")
    return window


def list_failpoints(stream: TextIO) -> None:
    """Every failpoint a target may arm, with what a crash there means."""
    width = max(len(name) for name in failpoints.DEFINED)
    for name, meaning in failpoints.DEFINED.items():
        stream.write(f"{name:{width}}  {meaning}\n")


def cmd_verify(args: argparse.Namespace) -> int:
    if args.list_failpoints:
        list_failpoints(sys.stdout)
        return 0
    if args.target is None:
        print("eoscore verify: a MODULE:FUNCTION target is needed (or --list-failpoints)",
              file=sys.stderr)
        return 2
    options = ChaosOptions(
        kills=args.kills,
        duplicates=args.duplicates,
        seed=args.seed,
        kill_window=args.kill_window,
        timeout=args.timeout,
        allow_late=args.allow_late,
    )
    progress = Progress(sys.stderr, enabled=not args.quiet)
    root = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="eoscore-verify-"))
    try:
        report = run_verification(args.target, root, options, progress=progress)
    except EosError as exc:
        progress.done()
        print(f"eoscore verify: {exc}", file=sys.stderr)
        return 2
    finally:
        if not args.workdir and not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    progress.done()
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, default=str))
    else:
        print(report.format())
    return 0 if report.ok else 1


def add_commands(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "verify",
        help="kill and restart a pipeline K times, then check its output is exactly-once",
        description=(
            "Run MODULE:FUNCTION's pipeline in a subprocess, SIGKILL it at failpoints and "
            "at random moments, restart it, and check the output: no duplicates, no "
            "losses, values equal to the reference, and no late records (input a window "
            "received behind the watermark and left out of its results). Exit 1 on a "
            "violation, 2 on an error."
        ),
    )
    p.add_argument("target", nargs="?",
                   help="module:function returning an eoscore.verify.VerifyTarget")
    p.add_argument("--list-failpoints", action="store_true",
                   help="print every failpoint name a target may arm, and exit")
    p.add_argument("-k", "--kills", type=int, default=10, help="kills before the last run")
    p.add_argument("--duplicates", type=float, default=0.0, metavar="FRACTION",
                   help="duplicate this fraction of input lines (needs input_dir)")
    p.add_argument("--seed", type=int, default=0, help="seeds kill moments and duplicates")
    p.add_argument("--kill-window", type=_window, default=(0.5, 3.0), metavar="LO,HI",
                   help="timer kills land this many seconds after a start (default 0.5,3)")
    p.add_argument("--allow-late", action="store_true",
                   help="report late records instead of failing on them (the reference then "
                   "leaves them out, if the target has read_late)")
    p.add_argument("--timeout", type=float, default=600.0, help="limit for the last run")
    p.add_argument("--workdir", help="keep working files here (default: a temporary dir)")
    p.add_argument("--keep", action="store_true", help="do not delete the temporary dir")
    p.add_argument("--json", action="store_true", help="print the report as JSON (CI)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    p.set_defaults(run=cmd_verify)


def main(argv: Sequence[str] | None = None) -> int:
    """This command alone, through the one ``eoscore`` parser."""
    from eoscore.cli import main as eoscore_main

    return eoscore_main(["verify", *(sys.argv[1:] if argv is None else argv)])
