"""The verdict of a chaos run: what was checked, what was found, how it is printed."""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["Findings", "VerifyReport", "compare", "spread"]

SHOWN = 5  # offending records shown per kind


@dataclass
class Findings:
    """How the committed output differs from the expected one."""

    records_out: int = 0
    keys_out: int = 0
    keys_expected: int = 0
    duplicate_records: int = 0  # rows beyond the first for a key
    missing: int = 0  # expected keys absent from the output
    extra: int = 0  # keys in the output that should not exist
    wrong: int = 0  # keys whose value differs from the expected one
    examples: dict[str, list[Any]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not (self.duplicate_records or self.missing or self.extra or self.wrong)


def _show(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_show(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _show(v) for k, v in value.items()}
    return repr(value)


def compare(
    rows: Iterable[tuple[Hashable, Any]], expected: Mapping[Hashable, Any]
) -> Findings:
    """Count per key, duplicates, losses, extras and wrong values."""
    rows = list(rows)
    counts = Counter(k for k, _ in rows)
    got: dict[Hashable, list[Any]] = {}
    for k, v in rows:
        got.setdefault(k, []).append(v)
    f = Findings(records_out=len(rows), keys_out=len(got), keys_expected=len(expected))
    dup_keys = [k for k, c in counts.items() if c > 1]
    f.duplicate_records = sum(counts[k] - 1 for k in dup_keys)
    missing = [k for k in expected if k not in got]
    extra = [k for k in got if k not in expected]
    wrong = [k for k in expected if k in got and got[k][0] != expected[k]]
    f.missing, f.extra, f.wrong = len(missing), len(extra), len(wrong)
    ex = f.examples
    if dup_keys:
        ex["duplicates"] = [{"key": _show(k), "values": _show(got[k])} for k in dup_keys[:SHOWN]]
    if missing:
        ex["missing"] = [{"key": _show(k), "expected": _show(expected[k])} for k in missing[:SHOWN]]
    if extra:
        ex["extra"] = [{"key": _show(k), "values": _show(got[k])} for k in extra[:SHOWN]]
    if wrong:
        ex["wrong"] = [
            {"key": _show(k), "expected": _show(expected[k]), "got": _show(got[k][0])}
            for k in wrong[:SHOWN]
        ]
    return f


def spread(values: Sequence[float]) -> dict[str, float] | None:
    """min/median/max, or None when there are no values."""
    if not values:
        return None
    return {
        "min": min(values),
        "median": statistics.median(values),
        "max": max(values),
        "count": len(values),
    }


@dataclass
class VerifyReport:
    """Everything ``eoscore verify`` measured and found (``--json`` prints ``to_dict()``)."""

    target: str
    runs: int = 0
    kills: int = 0
    kills_at_failpoints: int = 0
    kills_at_random: int = 0
    failpoints_fired: list[str] = field(default_factory=list)
    finished_early: bool = False  # the job completed before every planned kill
    records_in: int | None = None
    duplicates_injected: int = 0
    reference: str = "function"  # "function" or "uninterrupted run"
    recovery_seconds: list[float] = field(default_factory=list)
    checkpoint_bytes: list[int] = field(default_factory=list)
    findings: Findings = field(default_factory=Findings)
    #: Records windows received behind the watermark (+ allowed lateness): left out
    #: of the window results. Exact when the target reads them back (``read_late``).
    late_records: int = 0
    late_exact: bool = False  # counted from the committed late output, not per run
    allow_late: bool = False  # --allow-late: reported, not a violation
    late_excluded: int | None = None  # input records left out of the reference for them
    late_examples: list[Any] = field(default_factory=list)
    elapsed: float = 0.0

    @property
    def restarts(self) -> int:
        return max(0, self.runs - 1)

    @property
    def late_violation(self) -> bool:
        """Late records, not allowed: a window left input out of its results."""
        return self.late_records > 0 and not self.allow_late

    @property
    def ok(self) -> bool:
        return self.findings.ok and self.kills > 0 and not self.late_violation

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("findings")
        data.pop("recovery_seconds")
        data.pop("checkpoint_bytes")
        f = self.findings
        data.update(
            ok=self.ok,
            restarts=self.restarts,
            records_out=f.records_out,
            keys_out=f.keys_out,
            keys_expected=f.keys_expected,
            duplicates_found=f.duplicate_records,
            missing=f.missing,
            extra=f.extra,
            wrong=f.wrong,
            offending=f.examples,
            recovery_seconds=spread(self.recovery_seconds),
            checkpoint_bytes=spread([float(b) for b in self.checkpoint_bytes]),
        )
        return data

    def format(self) -> str:
        """The human report."""
        f = self.findings
        lines = [f"eoscore verify {self.target}"]
        fired = ", ".join(sorted(set(self.failpoints_fired))) or "none"
        lines.append(
            f"  kills        {self.kills} (at failpoints {self.kills_at_failpoints}, "
            f"at random moments {self.kills_at_random}); restarts {self.restarts}"
        )
        lines.append(f"  failpoints   {fired}")
        if self.finished_early:
            lines.append("  note         the job finished before every planned kill (more input?)")
        rin = "?" if self.records_in is None else f"{self.records_in:,}"
        lines.append(
            f"  records      in {rin} (duplicates injected {self.duplicates_injected:,}), "
            f"out {f.records_out:,} for {f.keys_out:,} keys (expected {f.keys_expected:,})"
        )
        rec = spread(self.recovery_seconds)
        if rec:
            lines.append(
                f"  recovery     min {rec['min']:.2f}s  median {rec['median']:.2f}s  "
                f"max {rec['max']:.2f}s  over {rec['count']} restarts"
            )
        size = spread([float(b) for b in self.checkpoint_bytes])
        if size:
            lines.append(
                f"  checkpoints  {size['count']} seen, min {_bytes(size['min'])}  "
                f"median {_bytes(size['median'])}  max {_bytes(size['max'])}"
            )
        lines.append(f"  compared to  the {self.reference}")
        lines.extend(self._late_lines())
        lines.append(
            f"  duplicates   {f.duplicate_records}   missing {f.missing}   "
            f"extra {f.extra}   wrong values {f.wrong}"
        )
        for kind, items in f.examples.items():
            lines.append(f"  first {kind}:")
            lines.extend(f"    {item}" for item in items)
        if self.kills == 0:
            lines.append("  FAILED: no kill landed; nothing was verified (larger input?)")
        if self.late_violation:
            lines.append(
                f"  FAILED: {self.late_records:,} late records were left out of the window "
                "results (input out of order beyond out_of_orderness + allowed_lateness?); "
                "--allow-late accepts them"
            )
        lines.append(f"  verdict      {'EXACTLY-ONCE HOLDS' if self.ok else 'VIOLATED'}"
                     f" ({self.elapsed:.1f}s)")
        return "\n".join(lines)


    def note_late(self, late: Sequence[Any]) -> None:
        """The late records read back from the pipeline's late output (exact)."""
        self.late_records, self.late_exact = len(late), True
        self.late_examples = [_show(r) for r in late[:SHOWN]]

    def _late_lines(self) -> list[str]:
        how = (
            "read back from the pipeline's late output"
            if self.late_exact
            else "seen by the pipeline processes (a replay after a kill may count twice)"
        )
        lines = [f"  late         {self.late_records:,} records behind the watermark, {how}"]
        if self.late_records and self.allow_late:
            if self.late_excluded is not None:
                lines.append(
                    f"  late input   {self.late_excluded:,} input records equal to a late one "
                    "left out of the reference (--allow-late)"
                )
            elif self.reference.startswith("reference"):
                lines.append(
                    "  late input   still in the reference (the target has no read_late): "
                    "missing or wrong windows may be theirs"
                )
        if self.late_examples:
            lines.append("  first late:")
            lines.extend(f"    {item}" for item in self.late_examples)
        return lines


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"
