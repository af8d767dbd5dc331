"""Typing stub for the keyed window operators' per-batch kernels."""

from collections.abc import Hashable
from typing import TypeVar

import numpy as np
import numpy.typing as npt

_N = TypeVar("_N", np.int64, np.float64)
_I64 = npt.NDArray[np.int64]

def intern_keys(
    keys: list[Hashable],
    ids: dict[Hashable, int],
    originals: list[Hashable | None],
    free: list[int],
    fresh: list[int],
) -> _I64: ...
def scatter_min(target: npt.NDArray[_N], rows: _I64, values: npt.NDArray[_N]) -> None: ...
def scatter_max(target: npt.NDArray[_N], rows: _I64, values: npt.NDArray[_N]) -> None: ...
def scatter_sum(target: npt.NDArray[_N], rows: _I64, values: npt.NDArray[_N]) -> None: ...
def scatter_count(target: _I64, rows: _I64) -> None: ...
def scatter_first(
    target_time: _I64, target: npt.NDArray[_N], rows: _I64, times: _I64, values: npt.NDArray[_N]
) -> None: ...
def scatter_last(
    target_time: _I64, target: npt.NDArray[_N], rows: _I64, times: _I64, values: npt.NDArray[_N]
) -> None: ...
