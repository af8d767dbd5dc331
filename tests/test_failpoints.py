from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from eoscore import failpoints
from eoscore.errors import EosError
from eoscore.failpoints import FailpointError, FailpointSpecError


@pytest.fixture(autouse=True)
def _disarm() -> None:
    failpoints.disable()


def test_disabled_failpoint_does_nothing_and_counts_nothing() -> None:
    for _ in range(100):
        failpoints.hit("test.never_armed")
    assert failpoints.hits("test.never_armed") == 0


def test_raise_at_kth_hit_only() -> None:
    failpoints.enable("test.step_two", "raise", at=3)
    failpoints.hit("test.step_two")
    failpoints.hit("test.step_two")
    with pytest.raises(FailpointError, match=r"test\.step_two"):
        failpoints.hit("test.step_two")
    failpoints.hit("test.step_two")  # past the k-th hit it stays quiet
    assert failpoints.hits("test.step_two") == 4


def test_probability_fires_roughly_that_often() -> None:
    failpoints.enable("test.p", "raise", probability=0.25)
    fired = 0
    for _ in range(4000):
        try:
            failpoints.hit("test.p")
        except FailpointError:
            fired += 1
    assert 700 < fired < 1300


def test_parse_reads_the_environment_syntax() -> None:
    rules = failpoints.parse("test.a=kill@3; runtime.after_batch=raise%0.5;")
    assert rules["test.a"].action == "kill" and rules["test.a"].at == 3
    assert rules["runtime.after_batch"].action == "raise"
    assert rules["runtime.after_batch"].probability == 0.5


@pytest.mark.parametrize(
    "spec", ["test.a=kill", "test.a=boom@1", "test.a=kill@0", "test.a=kill%2", "=kill@1"]
)
def test_bad_specs_are_rejected_with_a_clear_message(spec: str) -> None:
    with pytest.raises(FailpointSpecError):
        failpoints.parse(spec)


def test_environment_kill_sigkills_the_process_at_that_hit() -> None:
    code = (
        "from eoscore import failpoints\n"
        "for i in range(1, 6):\n"
        "    print(i, flush=True)\n"
        "    failpoints.hit('test.demo_point')\n"
    )
    env = {**os.environ, "EOSCORE_FAILPOINTS": "test.demo_point=kill@3"}
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
        "    failpoints.hit('test.zombie_point')\n"
        "    print(i, flush=True)\n"
    )
    env = {**os.environ, "EOSCORE_FAILPOINTS": "test.zombie_point=stop@1"}
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


# --- the registry: a name nothing defines is an error -----------------------------------


def test_an_unknown_name_is_refused_naming_the_closest_defined_ones() -> None:
    with pytest.raises(FailpointSpecError, match=r"'runtime\.after_batch'") as info:
        failpoints.parse("runtime.after_bach=kill@3")
    assert "EOSCORE_FAILPOINTS" in str(info.value)
    assert isinstance(info.value, ValueError) and isinstance(info.value, EosError)
    with pytest.raises(FailpointSpecError, match=r"did you mean 'sql\.after_commit'"):
        failpoints.enable("sql.after_comit", "raise", at=1)
    with pytest.raises(ValueError, match="no close match"):
        failpoints.enable("zzz", "raise", at=1)
    assert failpoints.active() == {}  # nothing was armed


def test_a_spec_with_one_unknown_name_arms_none_of_it() -> None:
    with pytest.raises(FailpointSpecError):
        failpoints.parse("runtime.after_batch=kill@1;runtime.aftr_complete=kill@1")


def test_test_code_arms_its_own_names_by_define_or_a_test_namespace() -> None:
    with pytest.raises(FailpointSpecError):
        failpoints.enable("mytest.point", "raise", at=1)
    assert failpoints.define("mytest.point", "a test's own point") == "mytest.point"
    failpoints.enable("mytest.point", "raise", at=1)
    with pytest.raises(FailpointError):
        failpoints.hit("mytest.point")
    assert failpoints.defined()["mytest.point"] == "a test's own point"
    assert "mytest.point" not in failpoints.DEFINED  # the library's registry is unchanged
    for namespace in failpoints.TEST_NAMESPACES:
        failpoints.parse(f"{namespace}.anything=kill@1")
    with pytest.raises(FailpointSpecError):
        failpoints.define("bad name")


def test_an_unknown_name_in_the_environment_fails_the_import() -> None:
    env = {**os.environ, "EOSCORE_FAILPOINTS": "runtime.mid_snapshat=kill@1"}
    result = subprocess.run(
        [sys.executable, "-c", "import eoscore.failpoints"],
        env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert "FailpointSpecError" in result.stderr
    assert "did you mean 'runtime.mid_snapshot'" in result.stderr


def test_the_registry_is_sorted_one_line_each_and_outside_the_test_namespaces() -> None:
    names = list(failpoints.DEFINED)
    assert names == sorted(names), "keep DEFINED sorted by name"
    for name, meaning in failpoints.DEFINED.items():
        assert re.fullmatch(r"[a-z_]+(\.[a-z_]+)+", name), name
        assert name.split(".", 1)[0] not in failpoints.TEST_NAMESPACES, name
        assert meaning and "\n" not in meaning and len(meaning) <= 80, name


# --- the registry equals the names src/eoscore hits -------------------------------------

SRC = Path(__file__).resolve().parents[1] / "src" / "eoscore"
DOCS = Path(__file__).resolve().parents[1] / "docs"

#: hit() arguments the scan cannot read, per (file, source text of the argument),
#: with the names they take. Prefer a literal; list a computed name here.
COMPUTED_NAMES: dict[tuple[str, str], frozenset[str]] = {}

#: The keyword through which a caller names a component's failpoints:
#: ``f"{failpoint_prefix}.before_commit"`` in kafka/txn.py.
PREFIX_PARAMETER = "failpoint_prefix"


def _is_hit(call: ast.Call, bare_hit: bool) -> bool:
    func = call.func
    if isinstance(func, ast.Attribute):
        owner = func.value
        return func.attr == "hit" and isinstance(owner, ast.Name) and owner.id == "failpoints"
    return bare_hit and isinstance(func, ast.Name) and func.id == "hit"


def _prefixes(trees: dict[str, ast.Module]) -> set[str]:
    """Every value ``failpoint_prefix`` takes: literal keywords and parameter defaults."""
    found: set[str] = set()
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, ast.keyword) and node.arg == PREFIX_PARAMETER:
                assert isinstance(node.value, ast.Constant), ast.unparse(node)
                found.add(node.value.value)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                args = node.args
                positional = [*args.posonlyargs, *args.args]
                with_default = positional[len(positional) - len(args.defaults) :]
                pairs = list(zip(with_default, args.defaults, strict=True))
                pairs += [
                    (a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True) if d
                ]
                for arg, default in pairs:
                    if arg.arg == PREFIX_PARAMETER and isinstance(default, ast.Constant):
                        found.add(default.value)
    return found


def _template(expr: ast.expr) -> str | None:
    """``f"{failpoint_prefix}.suffix"`` -> ``".suffix"``; None for any other shape."""
    if not isinstance(expr, ast.JoinedStr) or len(expr.values) != 2:
        return None
    head, tail = expr.values
    if (
        isinstance(head, ast.FormattedValue)
        and isinstance(head.value, ast.Name)
        and head.value.id == PREFIX_PARAMETER
        and head.conversion == -1
        and head.format_spec is None
        and isinstance(tail, ast.Constant)
    ):
        return str(tail.value)
    return None


def _assigned(tree: ast.Module, target: str) -> list[ast.expr]:
    """The values assigned to ``target`` (source text, e.g. ``self._fp_before``) in a module."""
    values = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(ast.unparse(t) == target for t in node.targets):
            values.append(node.value)
        elif isinstance(node, ast.AnnAssign) and node.value and ast.unparse(node.target) == target:
            values.append(node.value)
    return values


def hit_names() -> dict[str, set[str]]:
    """Every failpoint name ``hit()`` is called with in src/eoscore, with where."""
    trees = {
        str(path.relative_to(SRC)): ast.parse(path.read_text(encoding="utf-8"), str(path))
        for path in sorted(SRC.rglob("*.py"))
    }
    prefixes = _prefixes(trees)
    used: dict[str, set[str]] = {}
    unreadable = []
    for rel, tree in trees.items():
        if rel == "failpoints.py":
            continue
        bare_hit = any(
            isinstance(n, ast.ImportFrom) and n.module == "eoscore.failpoints"
            and any(a.name == "hit" for a in n.names)
            for n in ast.walk(tree)
        )
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and _is_hit(node, bare_hit)):
                continue
            where = f"{rel}:{node.lineno}"
            assert len(node.args) == 1 and not node.keywords, where
            arg = node.args[0]
            names: set[str] = set()
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                names = {arg.value}
            elif (rel, ast.unparse(arg)) in COMPUTED_NAMES:
                names = set(COMPUTED_NAMES[rel, ast.unparse(arg)])
            else:
                text = ast.unparse(arg)
                values = [arg] if isinstance(arg, ast.JoinedStr) else _assigned(tree, text)
                suffixes = [_template(v) for v in values]
                if values and all(s is not None for s in suffixes):
                    names = {p + str(s) for p in prefixes for s in suffixes}
            if not names:
                unreadable.append(f"{where}: hit({ast.unparse(arg)})")
            for name in names:
                used.setdefault(name, set()).add(where)
    assert not unreadable, (
        "cannot tell which failpoint names these hit() calls use; pass a literal, or list "
        f"the names in COMPUTED_NAMES: {unreadable}"
    )
    return used


def test_every_failpoint_hit_is_registered_and_every_registered_one_is_hit() -> None:
    used = hit_names()
    unregistered = {n: sorted(w) for n, w in used.items() if n not in failpoints.DEFINED}
    never_hit = sorted(set(failpoints.DEFINED) - set(used))
    assert not unregistered, f"register these in eoscore.failpoints.DEFINED: {unregistered}"
    assert not never_hit, f"nothing in src/eoscore hits these; drop them from DEFINED: {never_hit}"


def test_the_scan_sees_literal_and_prefix_built_names() -> None:
    used = hit_names()
    assert "runtime.after_batch" in used  # a literal
    assert {"kafka.before_commit", "sink.kafka.after_commit", "outbox.before_commit"} <= set(used)


def test_no_native_module_hits_a_failpoint() -> None:
    # The scan reads Python; a hit() in a .pyx would escape it (extend the scan then).
    native = [p for p in SRC.rglob("*.px[di]") if "failpoints" in p.read_text(encoding="utf-8")]
    assert not native, native


def test_every_defined_failpoint_is_documented() -> None:
    text = (DOCS / "commit-protocol.md").read_text(encoding="utf-8")
    missing = [n for n in failpoints.DEFINED if f"`{n}`" not in text]
    assert not missing, f"list these in docs/commit-protocol.md (Failpoints): {missing}"


def test_the_verifier_arms_only_defined_failpoints() -> None:
    from eoscore.verify import runner, target

    names = [
        *target.DEFAULT_FAILPOINTS,
        *(n for group in target.SINK_FAILPOINTS.values() for n in group),
        *runner._HIT_RANGE,
    ]
    assert [n for n in names if n not in failpoints.DEFINED] == []
