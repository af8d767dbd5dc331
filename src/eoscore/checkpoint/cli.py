"""``eoscore checkpoint list|inspect|verify``: look at a checkpoint directory.

The lead's ``eoscore.cli.build_parser`` wires these in with
``eoscore.checkpoint.cli.add_commands(commands)``. Every command opens the
storage read-only (no lock, no cleanup), prints for a person by default and
JSON with ``--json``. ``verify`` exits 1 if anything is damaged.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from eoscore.checkpoint.errors import CheckpointNotFoundError
from eoscore.checkpoint.report import describe_checkpoint, list_checkpoints, verify_checkpoint
from eoscore.checkpoint.storage import FileCheckpointStorage

__all__ = ["add_commands", "main"]


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def _age(seconds: float) -> str:
    for unit, span in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= span:
            return f"{seconds / span:.1f}{unit}"
    return f"{seconds:.0f}s"


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2) if args.json else text)


def _open(args: argparse.Namespace) -> FileCheckpointStorage:
    return FileCheckpointStorage(args.directory, readonly=True)


def _ids(args: argparse.Namespace, storage: FileCheckpointStorage) -> list[int]:
    if args.id is not None:
        return [args.id]
    ids = storage.checkpoints()
    if not ids:
        raise CheckpointNotFoundError(f"no completed checkpoints in {args.directory}")
    return ids


def cmd_list(args: argparse.Namespace) -> int:
    rows = list_checkpoints(_open(args))
    lines = [
        f"{'id':>8}  {'kind':11}  {'created':23}  {'age':>7}  {'entries':>11}  "
        f"{'size':>10}  {'written':>10}"
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['id']:>8}  DAMAGED: {r['error']}")
            continue
        lines.append(
            f"{r['id']:>8}  {'full' if r['full'] else 'incremental':11}  "
            f"{_when(r['created']):23}  {_age(r['age_seconds']):>7}  {r['entries']:>11}  "
            f"{_size(r['stored_bytes']):>10}  {_size(r['written_bytes']):>10}"
        )
    if not rows:
        lines = [f"no completed checkpoints in {args.directory}"]
    _emit(args, rows, "\n".join(lines))
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    storage = _open(args)
    cid = args.id if args.id is not None else _ids(args, storage)[-1]
    info = describe_checkpoint(storage, cid)
    lines = [
        f"checkpoint {cid} ({'full' if info['full'] else 'incremental'}), "
        f"created {_when(info['created'])}, {_age(info['age_seconds'])} ago",
        f"  size {_size(info['stored_bytes'])}, written by it {_size(info['written_bytes'])}, "
        f"sources {json.dumps(info['sources'])}",
    ]
    for name, s in info["state"].items():
        ratio = f"{s['compression_ratio']:.2f}x" if s["compression_ratio"] else "-"
        reused = (
            f", reuses {_size(s['reused_bytes'])} from {s['reused_from']}"
            if s["reused_from"]
            else ""
        )
        lines.append(
            f"  {name} ({s['type']}): {s['entries']} entries, {s['chunks']} chunks in "
            f"{s['segments']} segment(s), {_size(s['stored_bytes'])} stored "
            f"({_size(s['raw_bytes'])} raw, {ratio}){reused}"
        )
    _emit(args, info, "\n".join(lines))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    storage = _open(args)
    results = [verify_checkpoint(storage, cid) for cid in _ids(args, storage)]
    lines = []
    for r in results:
        if r["ok"]:
            lines.append(f"checkpoint {r['id']}: ok ({r['chunks']} chunks)")
        else:
            lines.append(f"checkpoint {r['id']}: DAMAGED")
            lines += [f"  {p}" for p in r["problems"]]
    _emit(args, results, "\n".join(lines))
    return 0 if all(r["ok"] for r in results) else 1


def _guard(run: Any) -> Any:
    def wrapped(args: argparse.Namespace) -> int:
        try:
            result: int = run(args)
            return result
        except (CheckpointNotFoundError, FileNotFoundError) as exc:
            print(f"eoscore checkpoint: {exc}", file=sys.stderr)
            return 2

    return wrapped


def add_commands(subparsers: Any) -> None:
    """Add ``checkpoint list|inspect|verify`` to an argparse subparsers object."""
    parser = subparsers.add_parser("checkpoint", help="list, inspect and verify checkpoints")
    commands = parser.add_subparsers(dest="checkpoint_command", required=True)
    for name, run, help_text, with_id in (
        ("list", cmd_list, "list completed checkpoints", False),
        ("inspect", cmd_inspect, "sizes, chunks, reuse and compression (default: newest)", True),
        (
            "verify",
            cmd_verify,
            "read every chunk and check every checksum (default: all); exits 1 on damage",
            True,
        ),
    ):
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("directory", help="the checkpoint directory")
        if with_id:
            sub.add_argument("id", nargs="?", type=int, help="checkpoint id")
        sub.add_argument("--json", action="store_true", help="machine-readable output")
        sub.set_defaults(run=_guard(run))


def main(argv: Sequence[str] | None = None) -> int:
    """Run a checkpoint command alone (``python -m eoscore.checkpoint.cli ...``)."""
    from eoscore.cli import main as eoscore_main

    return eoscore_main(argv)


if __name__ == "__main__":
    sys.exit(main())
