from __future__ import annotations

import os
import subprocess
import sys

import pytest

from eoscore import failpoints
from eoscore.failpoints import FailpointError


@pytest.fixture(autouse=True)
def _disarm() -> None:
    failpoints.disable()


def test_disabled_failpoint_does_nothing_and_counts_nothing() -> None:
    for _ in range(100):
        failpoints.hit("never.armed")
    assert failpoints.hits("never.armed") == 0


def test_raise_at_kth_hit_only() -> None:
    failpoints.enable("step.two", "raise", at=3)
    failpoints.hit("step.two")
    failpoints.hit("step.two")
    with pytest.raises(FailpointError, match=r"step\.two"):
        failpoints.hit("step.two")
    failpoints.hit("step.two")  # past the k-th hit it stays quiet
    assert failpoints.hits("step.two") == 4


def test_probability_fires_roughly_that_often() -> None:
    failpoints.enable("p", "raise", probability=0.25)
    fired = 0
    for _ in range(4000):
        try:
            failpoints.hit("p")
        except FailpointError:
            fired += 1
    assert 700 < fired < 1300


def test_parse_reads_the_environment_syntax() -> None:
    rules = failpoints.parse("a.b=kill@3; c=raise%0.5;")
    assert rules["a.b"].action == "kill" and rules["a.b"].at == 3
    assert rules["c"].action == "raise" and rules["c"].probability == 0.5


@pytest.mark.parametrize("spec", ["a=kill", "a=boom@1", "a=kill@0", "a=kill%2", "=kill@1"])
def test_bad_specs_are_rejected_with_a_clear_message(spec: str) -> None:
    with pytest.raises(ValueError):
        failpoints.parse(spec)


def test_environment_kill_sigkills_the_process_at_that_hit() -> None:
    code = (
        "from eoscore import failpoints\n"
        "for i in range(1, 6):\n"
        "    print(i, flush=True)\n"
        "    failpoints.hit('demo.point')\n"
    )
    env = {**os.environ, "EOSCORE_FAILPOINTS": "demo.point=kill@3"}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == -9
    assert result.stdout.split() == ["1", "2", "3"]


def test_stop_pauses_once_and_the_process_carries_on_after_sigcont() -> None:
    import signal
    import time

    code = (
        "from eoscore import failpoints\n"
        "for i in range(1, 4):\n"
        "    failpoints.hit('zombie.point')\n"
        "    print(i, flush=True)\n"
    )
    env = {**os.environ, "EOSCORE_FAILPOINTS": "zombie.point=stop@1"}
    child = subprocess.Popen(
        [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 30
        while _state(child.pid) != "T":
            assert time.monotonic() < deadline, "the failpoint never stopped the process"
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGCONT)
        out, _ = child.communicate(timeout=30)
    finally:
        child.kill()
    assert child.returncode == 0
    assert out.split() == ["1", "2", "3"]


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0]
