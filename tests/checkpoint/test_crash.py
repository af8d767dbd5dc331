"""Crash safety: SIGKILL a checkpoint writer at random moments, restore after each.

After every kill, the newest completed checkpoint must restore to exactly the
state the writer had when it took it (rebuilt here from the step function),
never go back in time, and leave no unreferenced files after cleanup.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from eoscore.checkpoint import FileCheckpointStorage, restore_into
from eoscore.state import ColumnarState, MapState, ValueState
from tests.checkpoint.crash_writer import apply_step, build_states

WRITER = Path(__file__).with_name("crash_writer.py")
ROOT = Path(__file__).resolve().parents[2]
KILLS = 25

States = dict[str, ValueState | MapState | ColumnarState]


def assert_same(got: States, want: States) -> None:
    gv, wv = got["v"], want["v"]
    assert isinstance(gv, ValueState) and isinstance(wv, ValueState)
    assert dict(gv.items()) == dict(wv.items())
    gm, wm = got["m"], want["m"]
    assert isinstance(gm, MapState) and isinstance(wm, MapState)
    assert {k: gm.entries(k) for k in gm.keys()} == {k: wm.entries(k) for k in wm.keys()}
    gc, wc = got["c"], want["c"]
    assert isinstance(gc, ColumnarState) and isinstance(wc, ColumnarState)
    gk, gcols = gc.items()
    wk, wcols = wc.items()
    go, wo = np.argsort(gk), np.argsort(wk)
    np.testing.assert_array_equal(gk[go], wk[wo])
    for name in wcols:
        np.testing.assert_array_equal(gcols[name][go], wcols[name][wo])


def _start(directory: Path, crash: str | None = None) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if crash:
        env["EOSCORE_CRASH"] = crash
    return subprocess.Popen(
        [sys.executable, str(WRITER), str(directory)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


@pytest.mark.slow
def test_sigkill_writer_at_random_points(tmp_path: Path) -> None:
    rng = random.Random(20261126)
    model = build_states()
    model_step = 0
    last = 0
    progressed_kills = 0
    debris = 0  # kills that caught a checkpoint half-written
    for attempt in range(KILLS):
        proc = _start(tmp_path)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("ready"):
            proc.kill()
            _, err = proc.communicate()
            pytest.fail(f"writer did not start: {line!r} {err}")
        assert int(line.split()[1]) == last
        # Mostly mid-checkpoint; sometimes right away (during its first steps).
        time.sleep(0 if attempt % 5 == 0 else rng.uniform(0.0, 0.25))
        os.kill(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
        assert proc.returncode == -signal.SIGKILL, err

        manifests = [int(p.name[:10]) for p in (tmp_path / "manifests").glob("*.json")]
        debris += any(
            int(p.name) > max(manifests, default=0) for p in (tmp_path / "data").iterdir()
        )
        with FileCheckpointStorage(tmp_path) as storage:  # cleans up the leftovers
            latest = storage.latest()
            assert latest is not None or last == 0
            if latest is None:
                continue
            # Never back in time (older ones may be gone: retention keeps two).
            assert latest >= last
            restored = build_states()
            manifest = restore_into(storage, latest, restored)
            assert manifest.sources == {"step": latest}
            while model_step < latest:
                model_step += 1
                apply_step(model, model_step)
            assert_same(restored, model)
            # Nothing unreferenced survives the cleanup.
            referenced = set().union(
                *(storage.read_manifest(c).files() for c in storage.checkpoints())
            )
            on_disk = {
                p.relative_to(tmp_path).as_posix()
                for p in (tmp_path / "data").rglob("*")
                if p.is_file()
            }
            assert on_disk == referenced
            assert not list((tmp_path / "manifests").glob("*.tmp"))
            progressed_kills += latest > last
            last = latest
    assert last > KILLS  # the writer really made progress between kills
    assert progressed_kills > KILLS // 2
    assert debris >= 3, "the kills never landed inside a checkpoint"


# Deterministic crash points, one per step of the commit protocol
# (docs/checkpoint-format.md): (call to die at, checkpoint that must be latest).
CRASH_POINTS = [
    # Per checkpoint: 3 segment fsyncs (step 2), 2 directory fsyncs (step 3),
    # the manifest's (step 4), the manifests directory's (step 5).
    ("fsync:2:before", 0),  # step 2: one segment durable, the next not yet
    ("fsync:5:after", 0),  # step 3 done: chunks durable, no manifest yet
    ("fsync:6:after", 0),  # step 4 done: manifest fsynced under its temporary name
    ("replace:3:before", 2),  # step 5: third manifest not yet renamed
    ("replace:3:after", 3),  # step 5: renamed, directory not yet fsynced
    ("unlink:1:before", 3),  # step 6: retention about to delete checkpoint 1
    ("unlink:1:after", 3),  # step 6: manifest 1 deleted, its files not yet
    ("unlink:3:after", 3),  # step 6: retention, between deleting two of its files
]


@pytest.mark.parametrize(("crash", "latest"), CRASH_POINTS)
def test_crash_at_each_step_of_the_commit(tmp_path: Path, crash: str, latest: int) -> None:
    proc = _start(tmp_path, crash)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 9, err
    with FileCheckpointStorage(tmp_path) as storage:  # cleanup runs here
        assert (storage.latest() or 0) == latest
        model = build_states()
        for step in range(1, latest + 1):
            apply_step(model, step)
        if latest:
            restored = build_states()
            manifest = restore_into(storage, latest, restored)
            assert manifest.sources == {"step": latest}
            assert_same(restored, model)
        referenced = set().union(
            set(), *(storage.read_manifest(c).files() for c in storage.checkpoints())
        )
    on_disk = {
        p.relative_to(tmp_path).as_posix() for p in (tmp_path / "data").rglob("*") if p.is_file()
    }
    assert on_disk == referenced
    assert not list((tmp_path / "manifests").glob("*.tmp"))
