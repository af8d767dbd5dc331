"""Stub for the native XXH3 module (public API: ``eoscore.hashing``)."""

from collections.abc import Iterable
from typing import Any

import numpy as np
import numpy.typing as npt
from typing_extensions import Buffer

def xxh3_64(data: Buffer | str, seed: int = 0) -> int: ...
def xxh3_128(data: Buffer | str, seed: int = 0) -> int: ...
def xxh3_64_many(
    keys: Iterable[bytes | bytearray | str] | npt.NDArray[Any], seed: int = 0
) -> npt.NDArray[np.uint64]: ...
