"""The .pyi stubs describe what the extensions really export."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

NATIVE = Path(__file__).resolve().parents[2] / "src" / "eoscore" / "_native"


@pytest.mark.parametrize("name", ["_sequence", "_offsets", "_offset_window"])
def test_stub_names_exist_at_runtime(name: str) -> None:
    module = importlib.import_module(f"eoscore._native.{name}")
    tree = ast.parse((NATIVE / f"{name}.pyi").read_text())
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            runtime = getattr(module, node.name)
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AnnAssign):
                    member = item.name if isinstance(item, ast.FunctionDef) else None
                    if member and member != "__init__":
                        assert hasattr(runtime, member), f"{node.name}.{member}"
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            assert hasattr(module, node.target.id), node.target.id
    # and the other way: every public runtime method is in the stub
    stubbed = {
        item.name
        for node in tree.body if isinstance(node, ast.ClassDef)
        for item in node.body if isinstance(item, ast.FunctionDef)
    }
    for cls in (getattr(module, n.name) for n in tree.body if isinstance(n, ast.ClassDef)):
        public = {m for m in vars(cls) if not m.startswith("_")}
        if not isinstance(cls, type) or issubclass(cls, int):
            continue
        assert public <= stubbed, f"{cls.__name__}: not in the stub: {public - stubbed}"


def test_public_module_exports() -> None:
    import eoscore.sequence as seq

    for name in seq.__all__:
        assert hasattr(seq, name)
