"""``eoscore profile``: a small grid really measures and plots."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eoscore.profiling.cli import main
from eoscore.profiling.profile import ProfilePoint, format_table, plot, run_profile


@pytest.fixture(scope="module")
def points() -> list[ProfilePoint]:
    return run_profile([0.05, 1.0], [500, 20_000], 60_000)


def test_every_point_is_measured(points: list[ProfilePoint]) -> None:
    assert [(p.interval, p.keys) for p in points] == [
        (0.05, 500), (1.0, 500), (0.05, 20_000), (1.0, 20_000)
    ]  # fmt: skip
    for p in points:
        assert p.records == 60_000
        assert p.throughput > 0 and p.checkpoints >= 1
        assert p.duration_median_ms >= p.async_median_ms >= 0
        assert p.recovery_ms > 0
    small, large = points[1], points[3]
    assert large.checkpoint_bytes > 5 * small.checkpoint_bytes  # size follows state
    assert "records/s" in format_table(points)


def test_plot_is_a_png(points: list[ProfilePoint], tmp_path: Path) -> None:
    path = plot(points, tmp_path / "p.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 10_000


def test_cli_json_without_plot(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["profile", "--intervals", "0.5", "--keys", "100", "--records", "5k", "--no-plot",
            "--json"]  # fmt: skip
    assert main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["plot"] is None
    assert [p["keys"] for p in data["points"]] == [100]
