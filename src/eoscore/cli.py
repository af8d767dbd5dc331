"""The ``eoscore`` command line.

Each feature adds its own subcommand here; the commands only parse arguments
and call the library, so everything they do is also reachable from Python.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence

import eoscore

__all__ = ["main"]


def native_modules() -> list[str]:
    """Names of the compiled modules this installation ships."""
    import eoscore._native as native

    return sorted(
        f"eoscore._native.{info.name}"
        for info in pkgutil.iter_modules(native.__path__)
        if not info.ispkg
    )


def _selfcheck(args: argparse.Namespace) -> int:
    names = native_modules()
    for name in names:
        module = importlib.import_module(name)
        print(f"{name:32} {module.__file__}")
    print(f"eoscore {eoscore.__version__}: {len(names)} native modules import")
    return 0


#: Modules that contribute subcommands through ``add_commands(subparsers)``.
COMMAND_MODULES: tuple[str, ...] = (
    "eoscore.demo.cli",
    "eoscore.verify.cli",
    "eoscore.checkpoint.cli",
    "eoscore.kafka.cli",
    "eoscore.sinks.cli",
    "eoscore.profiling.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eoscore", description=__doc__)
    parser.add_argument("--version", action="version", version=f"eoscore {eoscore.__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    selfcheck = commands.add_parser("selfcheck", help="import every native module")
    selfcheck.set_defaults(run=_selfcheck)
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.run(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
