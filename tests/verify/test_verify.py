"""``eoscore verify``: catches a broken pipeline, passes a correct one, reports clearly."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from eoscore.verify import TargetError, compare, exclude_late, inject_duplicates, load_target
from eoscore.verify.report import VerifyReport
from tests.verify.pipelines import EVENTS, LATE

ROOT = Path(__file__).resolve().parents[2]


def verify(*args: str) -> tuple[int, dict[str, Any], str]:
    """``python -m eoscore.verify ... --json`` from the repo root: (rc, report, stderr)."""
    proc = subprocess.run(
        [sys.executable, "-m", "eoscore.verify", *args, "--json", "--kill-window", "0.4,1.0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.stdout, proc.stderr[-3000:]
    return proc.returncode, json.loads(proc.stdout), proc.stderr


# --- the two end-to-end verdicts ------------------------------------------------------


@pytest.mark.slow
def test_broken_pipeline_is_caught(tmp_path: Path) -> None:
    # Rows committed at write, positions committed separately: every kill between a
    # write and the next decision replays windows that are already visible.
    rc, report, _ = verify(
        "tests.verify.pipelines:broken", "-k", "5", "--seed", "3", "--workdir", str(tmp_path)
    )
    assert rc == 1
    assert report["ok"] is False
    assert report["kills"] >= 1
    assert report["duplicates_found"] > 0
    first = report["offending"]["duplicates"][0]
    assert len(first["values"]) >= 2 and first["values"][0] == first["values"][1]


@pytest.mark.slow
def test_correct_pipeline_passes_with_injected_duplicates(tmp_path: Path) -> None:
    rc, report, _ = verify(
        "tests.verify.pipelines:correct",
        "-k", "5", "--seed", "3", "--duplicates", "0.02", "--workdir", str(tmp_path),
    )  # fmt: skip
    assert rc == 0, report
    assert report["ok"] is True
    assert report["kills"] >= 3, report  # the verdict rests on real kills
    assert report["duplicates_injected"] > 1000
    assert report["records_in"] == EVENTS + report["duplicates_injected"]
    assert (report["duplicates_found"], report["missing"], report["extra"], report["wrong"]) == (
        0,
        0,
        0,
        0,
    )
    assert report["records_out"] == report["keys_expected"] > 0
    assert report["late_records"] == 0 and report["allow_late"] is False
    # (a run killed before its sources reopened, e.g. mid-restore, has no recovery time)
    assert 1 <= report["recovery_seconds"]["count"] <= report["restarts"]
    assert report["checkpoint_bytes"]["max"] > 0


# --- late records: never a silent loss ------------------------------------------------------


@pytest.mark.slow
def test_late_records_are_a_violation_with_their_exact_count(tmp_path: Path) -> None:
    # LATE records far behind the watermark: the windows leave them out, the target's
    # late side output commits them through a FileSink and read_late reads them back.
    rc, report, _ = verify(
        "tests.verify.pipelines:late", "-k", "4", "--seed", "3", "--workdir", str(tmp_path)
    )
    assert rc == 1, report
    assert report["ok"] is False
    assert report["kills"] >= 1
    assert report["late_records"] == LATE and report["late_exact"] is True
    assert len(report["late_examples"]) == 5 and report["late_examples"][0]["t"] == -1000
    # Nothing else is wrong: the only differences from the reference are theirs.
    assert report["duplicates_found"] == report["extra"] == 0
    assert report["missing"] + report["wrong"] > 0


@pytest.mark.slow
def test_allow_late_reports_them_and_leaves_exactly_them_out(tmp_path: Path) -> None:
    rc, report, _ = verify(
        "tests.verify.pipelines:late", "-k", "4", "--seed", "3", "--allow-late",
        "--workdir", str(tmp_path),
    )  # fmt: skip
    assert rc == 0, report
    assert report["ok"] is True and report["allow_late"] is True
    assert report["late_records"] == report["late_excluded"] == LATE
    assert (report["duplicates_found"], report["missing"], report["extra"], report["wrong"]) == (
        0, 0, 0, 0,
    )  # fmt: skip


@pytest.mark.slow
def test_late_records_dropped_without_a_side_output_are_caught(tmp_path: Path) -> None:
    # Nothing on the late side output: the records vanish from the pipeline, but the
    # verifier's pipeline processes count them as they go by.
    rc, report, _ = verify(
        "tests.verify.pipelines:late_unread", "-k", "3", "--seed", "3",
        "--workdir", str(tmp_path),
    )  # fmt: skip
    assert rc == 1, report
    assert report["late_exact"] is False
    assert report["late_records"] >= LATE  # a replay after a kill may count some again


def test_report_fails_on_late_records_unless_allowed() -> None:
    report = VerifyReport(target="m:f", kills=1)
    report.note_late([{"id": 1}, {"id": 2}, {"id": 3}])
    assert report.late_records == 3 and report.late_exact
    assert not report.ok
    text = report.format()
    assert "late         3 records behind the watermark" in text
    assert "FAILED: 3 late records" in text and "VIOLATED" in text
    assert report.to_dict()["late_records"] == 3
    report.allow_late = True
    assert report.ok
    assert "EXACTLY-ONCE HOLDS" in report.format()
    clean = VerifyReport(target="m:f", kills=1)
    assert clean.ok and "late         0 records" in clean.format()
    assert clean.to_dict()["late_records"] == 0


def test_exclude_late_removes_every_copy_of_a_late_record() -> None:
    records = [{"id": 1, "t": 5}, {"id": 2, "t": -9}, {"t": -9, "id": 2}, {"id": 3, "t": 6}]
    kept, excluded = exclude_late(records, [{"id": 2, "t": -9}])
    assert kept == [{"id": 1, "t": 5}, {"id": 3, "t": 6}]
    assert excluded == 2
    assert exclude_late(records, []) == (records, 0)


def test_a_bad_target_is_an_error_not_a_verdict(tmp_path: Path) -> None:
    rc, _, err = (lambda p: (p.returncode, None, p.stderr))(
        subprocess.run(
            [sys.executable, "-m", "eoscore.verify", "tests.verify.pipelines:not_a_target"],
            cwd=ROOT, capture_output=True, text=True, timeout=120,
        )
    )  # fmt: skip
    assert rc == 2
    assert "must return an eoscore.verify.VerifyTarget" in err


def test_a_failpoint_nothing_defines_is_an_error_not_a_timer_kill(tmp_path: Path) -> None:
    with pytest.raises(TargetError, match=r"did you mean 'runtime\.after_decision'"):
        load_target("tests.verify.pipelines:misspelled_failpoint", tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "eoscore.verify", "tests.verify.pipelines:misspelled_failpoint",
         "-k", "1", "--workdir", str(tmp_path / "run")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "'runtime.after_decison'" in proc.stderr
    assert not list((tmp_path / "run").rglob("run-*"))  # refused before any pipeline run


def test_list_failpoints_prints_every_defined_name() -> None:
    from eoscore import failpoints

    proc = subprocess.run(
        [sys.executable, "-m", "eoscore.verify", "--list-failpoints"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    listed = [line.split()[0] for line in proc.stdout.splitlines()]
    assert listed == list(failpoints.DEFINED)


# --- pieces -------------------------------------------------------------------------------


def test_compare_finds_every_kind_of_violation() -> None:
    expected = {"a": 1, "b": 2, "c": 3}
    found = compare([("a", 1), ("a", 1), ("b", 5), ("z", 9)], expected)
    assert (found.duplicate_records, found.missing, found.extra, found.wrong) == (1, 1, 1, 1)
    assert not found.ok
    assert found.examples["missing"] == [{"key": "c", "expected": 3}]
    assert found.examples["wrong"] == [{"key": "b", "expected": 2, "got": 5}]
    assert compare([("a", 1), ("b", 2), ("c", 3)], expected).ok


def test_report_needs_a_kill_to_pass() -> None:
    report = VerifyReport(target="m:f")
    assert not report.ok  # nothing was killed: nothing verified
    report.kills = 1
    assert report.ok
    assert "EXACTLY-ONCE HOLDS" in report.format()


def test_inject_duplicates_keeps_every_line_and_adds_copies(tmp_path: Path) -> None:
    lines = [f"line-{i}" for i in range(2000)]
    (tmp_path / "f.txt").write_text("\n".join(lines) + "\n")
    added = inject_duplicates(tmp_path, 0.1, random.Random(1))
    out = (tmp_path / "f.txt").read_text().splitlines()
    assert 100 < added < 300
    assert len(out) == len(lines) + added
    assert sorted(set(out)) == sorted(lines)


def test_load_target_explains_a_bad_spec(tmp_path: Path) -> None:
    with pytest.raises(TargetError, match="module:function"):
        load_target("no_colon", tmp_path)
    with pytest.raises(TargetError, match="cannot import"):
        load_target("no_such_module_xyz:f", tmp_path)
    with pytest.raises(TargetError, match="has no function"):
        load_target("tests.verify.pipelines:missing", tmp_path)
