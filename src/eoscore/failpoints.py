"""Named crash points compiled into the runtime, sources and sinks.

Chaos tests and ``eoscore verify`` need to kill a process at *exactly* the
moment that matters (between two commit-protocol steps, mid-snapshot), not only
at random ones. Code marks such a moment with ``failpoints.hit("name")``.

Disabled (the normal case) a hit costs one falsy-dict check. Enabled through
the API or the ``EOSCORE_FAILPOINTS`` environment variable, read at import::

    EOSCORE_FAILPOINTS="sink.after_pre_commit=kill@3;checkpoint.mid_snapshot=kill%0.05"

``kill@k`` SIGKILLs the process at the k-th hit, ``kill%p`` at each hit with
probability p; ``raise`` in place of ``kill`` raises :class:`FailpointError`
instead (for in-process tests), and ``stop`` SIGSTOPs the process once (a
paused zombie that carries on when sent SIGCONT). ``EOSCORE_FAILPOINTS_SEED`` seeds the
probabilities so a failing run can be replayed.
"""

from __future__ import annotations

import os
import random
import re
import signal
from dataclasses import dataclass

from eoscore.errors import EosError

__all__ = ["FailpointError", "Rule", "active", "armed", "disable", "enable", "hit", "hits", "parse"]

ENV = "EOSCORE_FAILPOINTS"
SEED_ENV = "EOSCORE_FAILPOINTS_SEED"


class FailpointError(EosError):
    """Raised by a failpoint whose action is ``raise``."""


@dataclass
class Rule:
    """When and how one failpoint fires."""

    action: str  # "kill", "stop" or "raise"
    at: int | None = None  # fire at this hit (1-based) ...
    probability: float | None = None  # ... or at each hit with this probability
    count: int = 0  # hits seen so far

    def __post_init__(self) -> None:
        if self.action not in ("kill", "stop", "raise"):
            raise ValueError(
                f"failpoint action must be 'kill', 'stop' or 'raise', not {self.action!r}"
            )
        if (self.at is None) == (self.probability is None):
            raise ValueError("a failpoint needs exactly one of at=k or probability=p")
        if self.at is not None and self.at < 1:
            raise ValueError(f"failpoint at={self.at}: hits count from 1")
        if self.probability is not None and not 0.0 < self.probability <= 1.0:
            raise ValueError(f"failpoint probability={self.probability} is outside (0, 1]")


_rules: dict[str, Rule] = {}
_hits: dict[str, int] = {}
_random = random.Random()

_SPEC = re.compile(r"^\s*([\w.\-]+)\s*=\s*(kill|stop|raise)\s*(?:@(\d+)|%([0-9.eE+-]+))\s*$")


def parse(spec: str) -> dict[str, Rule]:
    """Parse ``name=kill@3;other=raise%0.1`` into rules (ValueError on bad syntax)."""
    rules: dict[str, Rule] = {}
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        match = _SPEC.match(part)
        if not match:
            raise ValueError(
                f"{ENV}: cannot read {part!r}; expected NAME=kill@K or NAME=kill%P (or stop, raise)"
            )
        name, action, at, probability = match.groups()
        rules[name] = Rule(
            action,
            at=int(at) if at else None,
            probability=float(probability) if probability else None,
        )
    return rules


def enable(
    name: str, action: str = "kill", *, at: int | None = None, probability: float | None = None
) -> None:
    """Arm failpoint ``name``; it fires at hit ``at`` or with ``probability`` per hit."""
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
    """Mark a crash point; fires only when ``name`` is armed."""
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
