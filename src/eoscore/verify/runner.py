"""The chaos loop of ``eoscore verify``: run, SIGKILL, restart, K times; then check.

Steps:

1. ``prepare`` the target, read its input, compute the reference (if given).
2. Optionally inject duplicate input lines (``input_dir``).
3. K times: start the pipeline process with one failpoint armed and a timer;
   whichever fires first SIGKILLs it (``load_target`` has refused any
   failpoint name nothing defines, which would leave only the timer).
   Recovery time is measured from the restart to the moment the sources are
   reopened.
4. A last run without kills, to the end of the input.
5. Count the late records (read back from the target's late output, or as
   the runs saw them); with ``allow_late`` leave them out of the reference's
   input. Compare the committed output with the reference (or with an
   uninterrupted run of the same input): count per key, duplicates, losses,
   values. Late records are a violation unless ``allow_late``.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eoscore.errors import EosError
from eoscore.verify.report import VerifyReport, compare
from eoscore.verify.target import VerifyTarget, load_target

__all__ = [
    "ChaosOptions",
    "JobFailedError",
    "exclude_late",
    "inject_duplicates",
    "run_verification",
]

#: Which hit to kill at, per failpoint: those hit per batch later, once-per-start ones
#: at their only hit; the rest (once per checkpoint) at one of the first few.
_HIT_RANGE = {
    "runtime.after_batch": (5, 60),
    "sql.after_flush": (1, 4),
    "files.after_write": (1, 20),
    "runtime.mid_restore": (1, 1),
}

Progress = Callable[[str, int, int], None]  # (message, done, total)


class JobFailedError(EosError, RuntimeError):
    """The pipeline process failed by itself (not by our SIGKILL): a bug, not a verdict."""


@dataclass
class ChaosOptions:
    kills: int = 10
    duplicates: float = 0.0  # fraction of input lines to duplicate
    seed: int = 0
    kill_window: tuple[float, float] = (0.5, 3.0)  # seconds after start, for timer kills
    timeout: float = 600.0  # the last, uninterrupted run
    allow_late: bool = False  # late records are reported, not a violation


def inject_duplicates(directory: Path, fraction: float, rng: random.Random) -> int:
    """Copy about ``fraction`` of the lines of every file a few lines later; the count."""
    added = 0
    for path in sorted(p for p in directory.iterdir() if p.is_file()):
        lines = path.read_text(encoding="utf-8").splitlines()
        out: list[str] = []
        pending: list[tuple[int, str]] = []
        for line in lines:
            out.append(line)
            if line and rng.random() < fraction:
                pending.append((len(out) + rng.randint(1, 50), line))
                pending.sort()
            while pending and pending[0][0] <= len(out):
                out.append(pending.pop(0)[1])
                added += 1
        out.extend(line for _, line in pending)
        added += len(pending)
        path.write_text("\n".join(out) + "\n", encoding="utf-8")
    return added


def _fingerprint(record: Any) -> str:
    try:
        return json.dumps(record, sort_keys=True, default=repr)
    except (TypeError, ValueError):
        return repr(record)


def exclude_late(records: Iterable[Any], late: Iterable[Any]) -> tuple[list[Any], int]:
    """The input without every record equal to a late one; how many were left out.

    Every copy goes: a duplicate of a late record is dropped by the pipeline's
    dedup (or is itself late), so the reference must not count it either.
    """
    records = list(records)
    gone = {_fingerprint(r) for r in late}
    kept = [r for r in records if _fingerprint(r) not in gone]
    return kept, len(records) - len(kept)


class _Runner:
    def __init__(self, spec: str, root: Path, cwd: Path) -> None:
        self.spec = spec
        self.root = root
        self.cwd = cwd
        self.logs = root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.count = 0

    def run(
        self, workdir: Path, failpoint: str | None, kill_after: float | None, timeout: float
    ) -> tuple[int, bool, Path, float]:
        """One pipeline process: (return code, killed by our timer, events file, start time)."""
        self.count += 1
        events = self.logs / f"run-{self.count:03d}.events"
        env = dict(os.environ)
        env.pop("EOSCORE_FAILPOINTS", None)
        if failpoint:
            env["EOSCORE_FAILPOINTS"] = failpoint
        path = [str(self.cwd), env.get("PYTHONPATH", "")]
        env["PYTHONPATH"] = os.pathsep.join(p for p in path if p)
        started = time.time()
        with open(self.logs / f"run-{self.count:03d}.stderr", "wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "eoscore.verify.child", self.spec, str(workdir),
                 str(events)],
                cwd=self.cwd,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
            timed_out = False
            try:
                proc.wait(timeout=kill_after if kill_after is not None else timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
                if kill_after is None:  # hung: leave its stacks in the log first
                    proc.send_signal(signal.SIGUSR1)
                    time.sleep(0.5)
                proc.send_signal(signal.SIGKILL)
                proc.wait()
            finally:
                if proc.poll() is None:  # the verifier itself was interrupted
                    proc.kill()
                    proc.wait()
        rc = proc.returncode
        if rc not in (0, -signal.SIGKILL) or (timed_out and kill_after is None):
            tail = (self.logs / f"run-{self.count:03d}.stderr").read_text(errors="replace")
            why = "timed out" if timed_out and kill_after is None else f"exited with {rc}"
            raise JobFailedError(
                f"{self.spec}: pipeline process {why} (not killed by the verifier):\n"
                f"{tail[-3000:]}"
            )
        return rc, timed_out, events, started


def _events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass  # a line cut short by the kill
    return out


def _checkpoint_sizes(target: VerifyTarget) -> dict[int, int]:
    from eoscore.checkpoint import FileCheckpointStorage, list_checkpoints

    directory = Path(target.state_dir) / "state"
    if not directory.exists():
        return {}
    storage = FileCheckpointStorage(directory, readonly=True)
    try:
        return {c["id"]: int(c["stored_bytes"]) for c in list_checkpoints(storage) if "id" in c
                and "stored_bytes" in c}
    finally:
        storage.close()


def _expected_from_run(
    spec: str, root: Path, runner: _Runner, options: ChaosOptions
) -> Mapping[Hashable, Any]:
    workdir = root / "baseline"
    workdir.mkdir(parents=True, exist_ok=True)
    target = load_target(spec, workdir)
    if target.prepare is not None:
        target.prepare()
    if options.duplicates and target.input_dir is not None:
        inject_duplicates(Path(target.input_dir), options.duplicates, random.Random(options.seed))
    runner.run(workdir, None, None, options.timeout)
    return dict(target.read_output())


def run_verification(
    spec: str,
    root: Path,
    options: ChaosOptions | None = None,
    *,
    progress: Progress | None = None,
    cwd: Path | None = None,
) -> VerifyReport:
    """Verify ``spec`` (``module:function``) with working files under ``root``."""
    options = options or ChaosOptions()
    note = progress or (lambda message, done, total: None)
    started = time.monotonic()
    rng = random.Random(options.seed)
    root.mkdir(parents=True, exist_ok=True)
    runner = _Runner(spec, root, cwd or Path.cwd())
    workdir = root / "chaos"
    workdir.mkdir(exist_ok=True)
    target = load_target(spec, workdir)
    report = VerifyReport(target=spec, allow_late=options.allow_late)
    late_seen = 0

    # Step 1: input and reference.
    note("preparing input", 0, options.kills)
    if target.prepare is not None:
        target.prepare()
    original = list(target.read_input()) if target.read_input is not None else None
    expected: Mapping[Hashable, Any] | None = None
    if target.reference is not None:
        if original is None:
            raise EosError(f"{spec}: a reference function needs read_input to feed it")
        expected = dict(target.reference(original))

    # Step 2: duplicates.
    if options.duplicates:
        if target.input_dir is None:
            raise EosError(f"{spec}: --duplicates needs the target's input_dir (line files)")
        report.duplicates_injected = inject_duplicates(
            Path(target.input_dir), options.duplicates, random.Random(options.seed)
        )
    if original is not None:
        report.records_in = len(original) + report.duplicates_injected

    # Step 3: the kills.
    points = list(target.failpoints)
    rng.shuffle(points)
    sizes: dict[int, int] = {}
    last_start: float | None = None
    for i in range(options.kills):
        failpoint = None
        if points and i % 3 != 2:  # two runs in three with a failpoint armed
            name = points[i % len(points)]
            at = rng.randint(*_HIT_RANGE.get(name, (1, 3)))
            failpoint = f"{name}=kill@{at}"
        lo, hi = options.kill_window
        # A failpoint run gets a late timer (only a fallback, for a defined failpoint
        # this pipeline never reaches: load_target refused names nothing defines);
        # the others are killed at a random moment.
        delay = 2 * hi if failpoint else rng.uniform(lo, hi)
        what = f"failpoint {failpoint}" if failpoint else f"kill after {delay:.1f}s"
        note(f"run {runner.count + 1}: {what}", i, options.kills)
        rc, by_timer, events, start = runner.run(workdir, failpoint, delay, options.timeout)
        report.runs += 1
        _note_recovery(report, events, start, last_start is not None)
        late_seen += _late_seen(events)
        last_start = start
        sizes.update(_checkpoint_sizes(target))
        if rc == 0:
            report.finished_early = True
            break
        report.kills += 1
        if by_timer:
            report.kills_at_random += 1
        else:
            report.kills_at_failpoints += 1
            report.failpoints_fired.append(failpoint.split("=")[0] if failpoint else "?")

    # Step 4: run to the end.
    if not report.finished_early:
        note(f"run {runner.count + 1}: to the end", options.kills, options.kills)
        _, _, events, start = runner.run(workdir, None, None, options.timeout)
        report.runs += 1
        _note_recovery(report, events, start, last_start is not None)
        late_seen += _late_seen(events)
        sizes.update(_checkpoint_sizes(target))
    report.checkpoint_bytes = [sizes[k] for k in sorted(sizes)]

    # Step 5: late records, then compare.
    report.late_records = late_seen
    if target.read_late is not None:
        late = list(target.read_late())
        report.note_late(late)
        if late and options.allow_late and target.reference is not None:
            assert original is not None  # a reference needs read_input (step 1)
            kept, report.late_excluded = exclude_late(original, late)
            expected = dict(target.reference(kept))
    if expected is None:
        note("uninterrupted reference run", options.kills, options.kills)
        report.reference = "uninterrupted run"
        expected = _expected_from_run(spec, root, runner, options)
    else:
        report.reference = "reference function (batch recomputation)"
    report.findings = compare(target.read_output(), expected)
    report.elapsed = time.monotonic() - started
    return report


def _late_seen(events: Path) -> int:
    """Late records one pipeline process reported (``late`` events of eoscore.verify.child)."""
    return sum(int(e.get("count", 0)) for e in _events(events) if e.get("event") == "late")


def _note_recovery(report: VerifyReport, events: Path, start: float, restart: bool) -> None:
    if not restart:
        return
    for event in _events(events):
        if event.get("event") == "opened":
            report.recovery_seconds.append(max(0.0, float(event["at"]) - start))
            return
