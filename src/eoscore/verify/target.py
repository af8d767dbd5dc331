"""What ``eoscore verify`` needs from a user's pipeline: a :class:`VerifyTarget`.

The user names a function, ``module:function``, that takes a working
directory and returns a ``VerifyTarget``. It is called in the verifier's
process (to prepare input, read output, compute the reference) and in every
pipeline process it starts (to build the pipeline), so it must describe the
same pipeline every time it is called with the same directory.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eoscore import failpoints
from eoscore.errors import EosError
from eoscore.runtime.config import CheckpointConfig

if TYPE_CHECKING:
    from eoscore.pipeline.builder import Pipeline

__all__ = [
    "DEFAULT_FAILPOINTS",
    "SINK_FAILPOINTS",
    "TargetError",
    "VerifyTarget",
    "check_failpoints",
    "load_target",
]

#: Crash points the verifier arms, one per run (a defined one that the pipeline
#: never reaches is harmless: a timer kills that run instead; a name nothing
#: defines is refused by :func:`load_target`). Every gap of the commit
#: protocol (docs/commit-protocol.md), plus restore.
DEFAULT_FAILPOINTS: tuple[str, ...] = (
    "runtime.after_batch",
    "source.before_barrier",
    "runtime.before_pre_commit",
    "runtime.after_pre_commit",
    "runtime.mid_snapshot",
    "runtime.after_pending_write",
    "store.before_decision_rename",
    "runtime.after_decision",
    "runtime.between_sink_commits",
    "runtime.after_sink_commits",
    "runtime.after_complete",
    "runtime.mid_restore",
)

#: The sinks' own crash points (docs/sinks.md), to add for a target that uses them.
SINK_FAILPOINTS: dict[str, tuple[str, ...]] = {
    "standalone_sql": (
        "sql.after_flush",
        "sql.after_pre_commit",
        "sql.before_decision_commit",
        "sql.after_decision_commit",
    ),
    "sql": ("sql.after_flush", "sql.before_prepare", "sql.after_prepare", "sql.before_move",
            "sql.after_commit"),
    "files": ("files.after_write", "files.after_pre_commit", "files.mid_commit"),
    "kafka": ("sink.kafka.before_commit",),
}


class TargetError(EosError, ValueError):
    """The ``module:function`` given to ``eoscore verify`` is not a usable target."""


@dataclass
class VerifyTarget:
    """A pipeline under test, with its input and output described.

    ``build`` returns the pipeline (called once per pipeline process).
    ``read_output`` returns the committed output as ``(key, value)`` pairs:
    every key must appear once in a correct run. ``reference`` maps the input
    records to the expected ``{key: value}`` (a batch recomputation); without
    it the verifier compares against an uninterrupted run of the same input.
    A record a window receives behind the watermark (late) is a violation
    unless ``--allow-late`` is given; ``read_late`` makes its count exact.
    """

    build: Callable[[], Pipeline]
    state_dir: Path
    read_output: Callable[[], Iterable[tuple[Hashable, Any]]]
    #: Writes the input and creates output tables; called once before the first run.
    prepare: Callable[[], None] | None = None
    #: The input records (counted in the report and given to ``reference``).
    read_input: Callable[[], Iterable[Any]] | None = None
    reference: Callable[[Iterable[Any]], Mapping[Hashable, Any]] | None = None
    #: The late records the pipeline kept (its windows' late side output, written
    #: through an exactly-once sink), as ``read_input`` gives them: their exact count
    #: is reported, and with ``--allow-late`` they are left out of ``reference``'s
    #: input (every input record equal to a late one). Without it only the late
    #: records the pipeline processes saw are counted (a replay may count twice).
    read_late: Callable[[], Iterable[Any]] | None = None
    #: Directory of newline-delimited input files: ``--duplicates`` copies lines there.
    input_dir: Path | None = None
    checkpoints: CheckpointConfig = field(default_factory=lambda: CheckpointConfig(interval=0.25))
    failpoints: Sequence[str] = DEFAULT_FAILPOINTS


def load_target(spec: str, workdir: Path) -> VerifyTarget:
    """Import ``module:function`` and call it with ``workdir``."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise TargetError(f"{spec!r}: expected module:function (e.g. myjobs.orders:verify_target)")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise TargetError(f"{spec!r}: cannot import {module_name!r}: {exc}") from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise TargetError(f"{spec!r}: {module_name} has no function {attr!r}")
    target = factory(workdir)
    if not isinstance(target, VerifyTarget):
        raise TargetError(
            f"{spec!r} returned {type(target).__name__}; it must return an "
            "eoscore.verify.VerifyTarget"
        )
    check_failpoints(spec, target.failpoints)
    return target


def check_failpoints(spec: str, names: Iterable[str]) -> None:
    """Raise :class:`TargetError` if a name in ``names`` is not a defined failpoint.

    Armed, such a name would never fire and every "failpoint" run would end
    by the fallback timer: a typo must stop the verification instead.
    """
    for name in names:
        try:
            failpoints.check(name)
        except failpoints.FailpointSpecError as exc:
            raise TargetError(f"{spec!r}: VerifyTarget.failpoints: {exc}") from exc
