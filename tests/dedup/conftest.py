"""Shared helpers for the dedup tests, and a native safety net."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import strategies as st

# Keys as a Python set sees them: ints over the whole supported range (with the edge
# values that share bit patterns), bytes and str (b"a" and "a" are different keys).
EDGE_INTS = [0, 1, -1, 2**63 - 1, 2**63, -(2**63), 2**64 - 1]
int_keys = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.integers(min_value=-3, max_value=3),
    st.sampled_from(EDGE_INTS),
)
keys = st.one_of(int_keys, st.binary(max_size=24), st.text(max_size=12))


@pytest.fixture(autouse=True)
def _no_ignored_exceptions(capfd: pytest.CaptureFixture[str]) -> Iterator[None]:
    """Fail a test whose stderr shows an exception swallowed by native code."""
    yield
    err = capfd.readouterr().err
    assert "Exception ignored" not in err, err
