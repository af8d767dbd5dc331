"""Named crash points compiled into the runtime, sources and sinks.

Chaos tests and ``eoscore verify`` need to kill a process at *exactly* the
moment that matters (between two commit-protocol steps, mid-snapshot), not only
at random ones. Code marks such a moment with ``failpoints.hit("name")``, and
every name the library hits is registered in :data:`DEFINED` with what a crash
there means (``eoscore verify --list-failpoints`` prints them).

Disabled (the normal case) a hit costs one falsy-dict check. Enabled through
the API or the ``EOSCORE_FAILPOINTS`` environment variable, read at import::

    EOSCORE_FAILPOINTS="sql.after_pre_commit=kill@3;runtime.mid_snapshot=kill%0.05"

``kill@k`` SIGKILLs the process at the k-th hit, ``kill%p`` at each hit with
probability p; ``raise`` in place of ``kill`` raises :class:`FailpointError`
instead (for in-process tests), and ``stop`` SIGSTOPs the process once (a
paused zombie that carries on when sent SIGCONT). ``EOSCORE_FAILPOINTS_SEED`` seeds the
probabilities so a failing run can be replayed.

A name nothing defines is refused (:class:`FailpointSpecError`, with the
closest defined names), so a typo cannot silently arm nothing. Test code
arms its own names with :func:`define`, or uses a name in one of the
:data:`TEST_NAMESPACES` (``test.*``; needed where a child process reads
the names from the environment before it could call ``define``).
"""

from __future__ import annotations

import difflib
import os
import random
import re
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from eoscore.errors import EosError

__all__ = [
    "DEFINED",
    "TEST_NAMESPACES",
    "FailpointError",
    "FailpointSpecError",
    "Rule",
    "active",
    "armed",
    "check",
    "define",
    "defined",
    "disable",
    "enable",
    "hit",
    "hits",
    "parse",
]

ENV = "EOSCORE_FAILPOINTS"
SEED_ENV = "EOSCORE_FAILPOINTS_SEED"

#: Every failpoint the library hits, sorted by name, with what a crash there
#: means. tests/test_failpoints.py checks it against the ``hit()`` calls in
#: src/eoscore: register a new ``hit()`` here (one line, in order), remove a
#: name here when its last ``hit()`` goes. docs/commit-protocol.md lists them.
DEFINED: Mapping[str, str] = MappingProxyType({
    "files.after_pre_commit": "FileSink prepared: staged parts rolled and fsynced (step 1)",
    "files.after_write": "FileSink appended a batch to the open staging part",
    "files.mid_commit": "FileSink commit: some staged parts renamed, others not (step 4)",
    "kafka.after_commit": "ExactlyOnceProcessor: transaction committed, nothing noted yet",
    "kafka.after_produce": "ExactlyOnceProcessor: a batch produced into the open transaction",
    "kafka.before_commit": "ExactlyOnceProcessor: offsets in the transaction, commit not sent",
    "kafka.before_produce": "ExactlyOnceProcessor: about to produce a batch's outputs",
    "kafka.mid_produce": "ExactlyOnceProcessor: half of a batch's outputs produced",
    "outbox.after_commit": "outbox relay: batch transaction committed, rows not marked",
    "outbox.after_init": "outbox relay: transactional producer claimed, state not read",
    "outbox.after_mark": "outbox relay: published rows marked in the database",
    "outbox.before_commit": "outbox relay: batch and relay state produced, commit not sent",
    "outbox.mid_batch": "outbox relay: half of a batch produced into the transaction",
    "runtime.after_batch": "a batch processed, its position noted (mid-window)",
    "runtime.after_complete": "checkpoint complete (after step 5)",
    "runtime.after_decision": "decision durable, no sink committed (step 3 -> 4)",
    "runtime.after_pending_write": "pending record and state written (step 2 -> 3)",
    "runtime.after_pre_commit": "every sink prepared (step 1 -> 2)",
    "runtime.after_sink_commits": "every sink committed (step 4 -> 5)",
    "runtime.before_pre_commit": "barriers aligned, no sink prepared (step 0 -> 1)",
    "runtime.between_sink_commits": "one sink committed, the next not yet (inside step 4)",
    "runtime.during_alignment": "a batch held in the alignment buffer",
    "runtime.mid_restore": "recovery: decision read, state not restored",
    "runtime.mid_snapshot": "state frozen and being written in the background (step 2)",
    "sink.kafka.after_commit": "KafkaSink: transaction committed, the decision made (step 3)",
    "sink.kafka.before_commit": "KafkaSink: decision in the transaction, commit not sent (step 3)",
    "source.before_barrier": "a reading thread about to inject a barrier",
    "sql.after_commit": "SqlSink: checkpoint's rows moved and ledger updated (step 4)",
    "sql.after_decision_commit": "StandaloneSqlSink: rows and decision committed",
    "sql.after_flush": "SQL sink: a batch of rows written into the open transaction",
    "sql.after_pre_commit": "StandaloneSqlSink: rows flushed, decision not committed (step 1)",
    "sql.after_prepare": "SqlSink: transaction prepared (PREPARE TRANSACTION, step 1)",
    "sql.before_decision_commit": "StandaloneSqlSink: decision written, COMMIT not sent",
    "sql.before_move": "SqlSink: commit about to move staged rows (step 4)",
    "sql.before_prepare": "SqlSink: ledger written, transaction not prepared (step 1)",
    "store.before_decision_rename": "decision file written and fsynced, not renamed (step 3)",
})

#: First dotted parts reserved for test and benchmark code: such names need no
#: registration (a child process reads them from the environment at import,
#: before it could call :func:`define`). The library never hits one.
TEST_NAMESPACES: tuple[str, ...] = ("bench", "driver", "test")

_test_defined: dict[str, str] = {}  # define(): names test code hits itself


class FailpointError(EosError):
    """Raised by a failpoint whose action is ``raise``."""


class FailpointSpecError(EosError, ValueError):
    """A failpoint spec cannot be armed: bad syntax, or a name nothing defines.

    Fix the spec; nothing was armed from it.
    """


@dataclass
class Rule:
    """When and how one failpoint fires."""

    action: str  # "kill", "stop" or "raise"
    at: int | None = None  # fire at this hit (1-based) ...
    probability: float | None = None  # ... or at each hit with this probability
    count: int = 0  # hits seen so far

    def __post_init__(self) -> None:
        if self.action not in ("kill", "stop", "raise"):
            raise FailpointSpecError(
                f"failpoint action must be 'kill', 'stop' or 'raise', not {self.action!r}"
            )
        if (self.at is None) == (self.probability is None):
            raise FailpointSpecError("a failpoint needs exactly one of at=k or probability=p")
        if self.at is not None and self.at < 1:
            raise FailpointSpecError(f"failpoint at={self.at}: hits count from 1")
        if self.probability is not None and not 0.0 < self.probability <= 1.0:
            raise FailpointSpecError(
                f"failpoint probability={self.probability} is outside (0, 1]"
            )


_rules: dict[str, Rule] = {}
_hits: dict[str, int] = {}
_random = random.Random()

_NAME = r"[\w.\-]+"
_SPEC = re.compile(rf"^\s*({_NAME})\s*=\s*(kill|stop|raise)\s*(?:@(\d+)|%([0-9.eE+-]+))\s*$")


def define(name: str, meaning: str = "defined by test code") -> str:
    """Allow test code to arm ``name``, a failpoint its own code hits; returns ``name``.

    The library's names are in :data:`DEFINED`; this is for the ones a test
    hits itself (a stand-in coordinator, a fake sink). Defining a library
    name is a no-op.
    """
    if not re.fullmatch(_NAME, name):
        raise FailpointSpecError(f"failpoint name {name!r}: use letters, digits, '_', '.', '-'")
    if name not in DEFINED:
        _test_defined[name] = meaning
    return name


def defined() -> dict[str, str]:
    """Every armable name with its meaning: the library's and those :func:`define` added."""
    return {**DEFINED, **_test_defined}


def check(name: str) -> None:
    """Raise :class:`FailpointSpecError` unless ``name`` is a defined failpoint.

    The message names the closest defined names (a typo is the usual cause).
    """
    if name in DEFINED or name in _test_defined or name.split(".", 1)[0] in TEST_NAMESPACES:
        return
    close = difflib.get_close_matches(name, list(defined()), n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(repr(c) for c in close)}?" if close else "no close match"
    raise FailpointSpecError(
        f"no failpoint is named {name!r} ({hint}); `eoscore verify --list-failpoints` "
        "lists the defined names"
    )


def parse(spec: str) -> dict[str, Rule]:
    """Parse ``name=kill@3;other=raise%0.1`` into rules.

    Raises :class:`FailpointSpecError` (a ``ValueError``) on bad syntax or a
    name nothing defines.
    """
    rules: dict[str, Rule] = {}
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        match = _SPEC.match(part)
        if not match:
            raise FailpointSpecError(
                f"{ENV}: cannot read {part!r}; expected NAME=kill@K or NAME=kill%P (or stop, raise)"
            )
        name, action, at, probability = match.groups()
        try:
            check(name)
        except FailpointSpecError as exc:
            raise FailpointSpecError(f"{ENV}: {part!r}: {exc}") from None
        rules[name] = Rule(
            action,
            at=int(at) if at else None,
            probability=float(probability) if probability else None,
        )
    return rules


def enable(
    name: str, action: str = "kill", *, at: int | None = None, probability: float | None = None
) -> None:
    """Arm failpoint ``name``; it fires at hit ``at`` or with ``probability`` per hit.

    Raises :class:`FailpointSpecError` for a name nothing defines.
    """
    check(name)
    _rules[name] = Rule(action, at=at, probability=probability)


def disable(name: str | None = None) -> None:
    """Disarm one failpoint, or all of them."""
    if name is None:
        _rules.clear()
        _hits.clear()
    else:
        _rules.pop(name, None)


def armed() -> bool:
    """True when any failpoint is armed (cheap: lets callers skip extra work)."""
    return bool(_rules)


def active() -> dict[str, Rule]:
    """The armed failpoints (a copy)."""
    return dict(_rules)


def hits(name: str) -> int:
    """How often an armed failpoint was reached (unarmed ones are not counted)."""
    return _hits.get(name, 0)


def hit(name: str) -> None:
    """Mark a crash point; fires only when ``name`` is armed.

    ``name`` must be registered in :data:`DEFINED` (a test checks every call).
    """
    if _rules:
        _fire(name)


def _fire(name: str) -> None:
    rule = _rules.get(name)
    if rule is None:
        return
    rule.count += 1
    _hits[name] = rule.count
    if rule.at is not None:
        fire = rule.count == rule.at
    else:
        fire = _random.random() < (rule.probability or 0.0)
    if not fire:
        return
    if rule.action == "raise":
        raise FailpointError(f"failpoint {name!r} fired at hit {rule.count}")
    if rule.action == "stop":
        del _rules[name]  # once: the resumed process must be able to go on
        os.kill(os.getpid(), signal.SIGSTOP)
        return
    os.kill(os.getpid(), signal.SIGKILL)


def _load_environment() -> None:
    spec = os.environ.get(ENV, "")
    if spec:
        _rules.update(parse(spec))
    seed = os.environ.get(SEED_ENV)
    if seed:
        _random.seed(int(seed))


_load_environment()
