"""The kill loop shared by the sink crash tests: run ``_driver`` and SIGKILL it.

Every run is either killed by a timer at a random moment or armed with one
failpoint (``name=kill@k``) from the given list, in turn. When a run finishes
before enough kills happened, more records are appended to the source and the
loop goes on; after the last kill one clean run must finish the source.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
RUN_TIMEOUT_S = 120.0


@dataclass
class Source:
    path: Path
    keys: int = 0  # 0: every record its own key
    records: list[dict[str, Any]] = field(default_factory=list)

    def extend(self, count: int) -> None:
        start = len(self.records)
        new = [
            {"id": i, "k": f"k{i % self.keys if self.keys else i}", "v": i}
            for i in range(start, start + count)
        ]
        with self.path.open("a") as f:
            f.writelines(json.dumps(r) + "\n" for r in new)
        self.records.extend(new)


@dataclass
class Outcome:
    timer_kills: int = 0
    failpoint_kills: int = 0
    runs: int = 0
    fired: dict[str, int] = field(default_factory=dict)

    @property
    def kills(self) -> int:
        return self.timer_kills + self.failpoint_kills


def _run(config: Path, spec: str | None, timer: float | None, seed: int) -> tuple[int, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), EOSCORE_FAILPOINTS_SEED=str(seed))
    env.pop("EOSCORE_FAILPOINTS", None)
    if spec:
        env["EOSCORE_FAILPOINTS"] = spec
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.sinks._driver", str(config)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=timer if timer is not None else RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        if timer is None:
            proc.kill()
            out, err = proc.communicate()
            raise AssertionError(f"driver hung for {RUN_TIMEOUT_S}s:\n{err}") from None
        proc.send_signal(signal.SIGKILL)
        out, err = proc.communicate()
    if proc.returncode not in (0, -signal.SIGKILL) or (proc.returncode == 0 and "done" not in out):
        raise AssertionError(f"driver failed (exit {proc.returncode}):\n{err}")
    return proc.returncode, out


def kill_loop(
    cfg: dict[str, Any],
    tmp: Path,
    source: Source,
    points: Sequence[str],
    *,
    kills: int = 20,
    timer_kills: int = 5,
    seed: int = 0,
    timer: tuple[float, float] = (0.2, 1.0),
    chunk: int = 600,
) -> Outcome:
    rng = random.Random(seed)
    config = tmp / "driver.json"
    config.write_text(json.dumps(cfg))
    outcome = Outcome()
    schedule: list[str | None] = []
    for point in points:  # every other run is killed by the timer
        schedule += [None, point]
    while outcome.kills < kills or outcome.timer_kills < timer_kills:
        spec = schedule[outcome.runs % len(schedule)]
        outcome.runs += 1
        armed = f"{spec}=kill@{rng.randint(1, 4)}" if spec else None
        timeout = None if spec else rng.uniform(*timer)
        code, out = _run(config, armed, timeout, rng.randrange(1 << 30))
        if code == -signal.SIGKILL:
            if spec:
                outcome.failpoint_kills += 1
                outcome.fired[spec] = outcome.fired.get(spec, 0) + 1
            else:
                outcome.timer_kills += 1
        elif "done" in out:
            source.extend(chunk)  # finished early: give it more to do
    code, out = _run(config, None, None, 0)
    assert code == 0 and "done" in out, out
    return outcome
