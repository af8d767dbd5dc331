"""``eoscore capacity``: the article's formulas, with a measured serialization ratio."""

from __future__ import annotations

import json

import pytest

from eoscore.profiling.capacity import CapacityInputs, CodecMeasurement, estimate, measure_codec
from eoscore.profiling.cli import _bandwidth, _number, main

MB = 1024 * 1024


def codec(ratio: float, speed: float = 1e9) -> CodecMeasurement:
    return CodecMeasurement(1000, 500, "text", ratio, encode_mb_s=speed, decode_mb_s=speed)


def test_reproduces_the_articles_numbers_with_its_2x_guess() -> None:
    # 10M entries x 500 B x 2 = 9.5 GB; 3 retained = 28.6 GB; restore at 500 MB/s ~ 20 s;
    # 10 GB in 60 s needs ~170 MB/s.
    inputs = CapacityInputs(10_000_000, 500, 60, 1000, 500, 100_000, retained=2)
    e = estimate(inputs, codec(2.0))
    assert e["checkpoint_mb"] / 1024 == pytest.approx(9.31, abs=0.01)
    assert e["storage_mb"] / 1024 == pytest.approx(27.94, abs=0.01)
    assert e["restore_seconds"] == pytest.approx(10_000_000 * 1000 / MB / 500)
    assert e["write_bandwidth_mb_s"] == pytest.approx(e["checkpoint_mb"] / 60)
    assert 150 < e["write_bandwidth_mb_s"] < 170


def test_replay_and_rto() -> None:
    inputs = CapacityInputs(1_000_000, 100, 30, 1000, 100, 50_000, input_rate=25_000, rto=60)
    e = estimate(inputs, codec(1.0))
    write = e["write_seconds"]
    assert e["replay_records"] == pytest.approx(25_000 * (30 + write))
    assert e["replay_seconds"] == pytest.approx(e["replay_records"] / 50_000)
    assert e["catch_up_seconds"] == pytest.approx(e["replay_records"] / 25_000)
    assert e["meets_rto"] is True
    # The longest interval that fits, plugged back in, recovers in exactly the RTO.
    at_limit = estimate(
        CapacityInputs(1_000_000, 100, e["max_interval_for_rto"], 1000, 100, 50_000,
                       input_rate=25_000, rto=60),
        codec(1.0),
    )  # fmt: skip
    assert at_limit["recovery_seconds"] == pytest.approx(60)


def test_a_write_slower_than_the_interval_is_flagged() -> None:
    e = estimate(CapacityInputs(10_000_000, 1000, 5, 50, 500, 10_000), codec(1.0))
    assert e["write_keeps_up"] is False


def test_measured_ratio_depends_on_the_values() -> None:
    random_values = measure_codec(200, entries=5000, values="random")
    text_values = measure_codec(200, entries=5000, values="text")
    assert 0.9 < random_values.ratio < 1.3  # incompressible: only framing on top
    assert text_values.ratio < random_values.ratio
    assert random_values.decode_mb_s > 0 and random_values.encode_mb_s > 0


def test_cli_json_states_its_assumptions(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["capacity", "--entries", "1M", "--bytes-per-entry", "200", "--interval", "10",
            "--rate", "50k", "--rto", "30", "--json"]  # fmt: skip
    assert main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["inputs"]["entries"] == 1_000_000
    assert data["inputs"]["processing_rate"] == 50_000
    assert data["checkpoint_mb"] == pytest.approx(data["logical_mb"] * data["measured"]["ratio"])
    assert any("2x" in a for a in data["assumptions"])
    assert "max_interval_for_rto" in data


def test_numbers_with_suffixes() -> None:
    assert _number("10M") == 10_000_000
    assert _number("1.5k") == 1500
    assert _number("100k/s") == 100_000
    assert _bandwidth("170") == _bandwidth("170MB/s") == 170
    assert _bandwidth("1.5GB/s") == 1536
    assert _bandwidth("512KB") == 0.5
