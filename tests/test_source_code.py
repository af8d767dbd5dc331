"""Lint and type checks are part of the suite, so CI fails on them like on any test."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NATIVE = ROOT / "src" / "eoscore" / "_native"

pytestmark = pytest.mark.lint


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)


def test_ruff_is_clean() -> None:
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or "ruff"
    result = _run(ruff, "check", "src", "tests", "bench", "setup.py")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_is_clean() -> None:
    result = _run(sys.executable, "-m", "mypy")
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_extension_has_a_stub() -> None:
    missing = [p.name for p in NATIVE.glob("*.pyx") if not p.with_suffix(".pyi").exists()]
    assert not missing, f"extensions without a .pyi stub: {missing}"


def test_generated_native_files_are_not_tracked() -> None:
    result = _run("git", "ls-files", "src/eoscore/_native")
    if result.returncode != 0:  # not a git checkout (e.g. an sdist): nothing is tracked
        return
    tracked = [line for line in result.stdout.split() if line.endswith((".c", ".so", ".html"))]
    assert not tracked, f"generated files tracked by git: {tracked}"
