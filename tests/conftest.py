"""Suite-wide wiring: real-service fixtures, and soak runs kept out by default."""

from __future__ import annotations

import pytest

pytest_plugins = ["tests.fixtures.kafka", "tests.fixtures.postgres"]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--soak", action="store_true", default=False, help="also run tests marked soak"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Soak runs are long by design: they are deselected (not skipped) unless asked for.
    if config.getoption("--soak"):
        return
    soak = [item for item in items if item.get_closest_marker("soak")]
    if soak:
        config.hook.pytest_deselected(items=soak)
        items[:] = [item for item in items if not item.get_closest_marker("soak")]
