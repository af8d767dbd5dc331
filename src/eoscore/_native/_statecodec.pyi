"""Typing stub for the state chunk codec (see docs/checkpoint-format.md)."""

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from typing_extensions import Buffer

HEADER_SIZE: int
FORMAT_VERSION: int
MIN_CHUNK_SIZE: int
MAX_CHUNK_SIZE: int
DEFAULT_CHUNK_SIZE: int
KIND_RECORDS: int
KIND_KEYS: int
KIND_COLUMNS: int
KIND_COLUMN_KEYS: int
CODEC_RAW: int
CODEC_LZ4: int
NATIVE_LZ4: bool

def check_value(value: object) -> None: ...
def encode_value(value: object) -> bytes: ...
def decode_value(data: Buffer) -> Any: ...
def read_header(chunk: Buffer) -> tuple[int, int, int, int, int, int]: ...
def checksum(data: Buffer, seed: int = 0) -> int: ...

class ChunkEncoder:
    chunk_size: int
    compress: bool
    acceleration: int
    def __init__(
        self, chunk_size: int = ..., compress: bool = True, acceleration: int = 1
    ) -> None: ...
    def records(self, items: Iterable[tuple[object, object]]) -> Iterator[bytes]: ...
    def keys(self, keys: Iterable[object]) -> Iterator[bytes]: ...
    def columns(
        self, keys: npt.NDArray[np.int64], columns: Sequence[npt.NDArray[Any]] = ()
    ) -> Iterator[bytes]: ...

class ChunkDecoder:
    def __init__(self) -> None: ...
    def header(self, chunk: Buffer) -> tuple[int, int, int, int, int, int]: ...
    def records(
        self, chunk: Buffer, expect_checksum: int | None = None
    ) -> list[tuple[Any, Any]]: ...
    def records_into(
        self, chunk: Buffer, target: dict[Any, Any], expect_checksum: int | None = None
    ) -> int: ...
    def keys(self, chunk: Buffer, expect_checksum: int | None = None) -> list[Any]: ...
    def columns(
        self, chunk: Buffer, expect_checksum: int | None = None
    ) -> tuple[npt.NDArray[np.int64], list[npt.NDArray[Any]]]: ...
def _use_native_lz4(flag: bool) -> bool: ...
