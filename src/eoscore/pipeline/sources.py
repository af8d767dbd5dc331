"""Sources: where records enter a pipeline, one *channel* per independently
readable part (a file, a Kafka partition), each read on its own thread.

A channel reports its *position* after every batch it returns: JSON-able,
enough to resume reading right after that batch. Positions go into every
checkpoint; on recovery a source is reopened at the decided positions.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Mapping, Sequence
from fnmatch import fnmatch
from pathlib import Path
from typing import Any, Final

import msgspec

from eoscore.pipeline.errors import PipelineDefinitionError, PipelineError
from eoscore.pipeline.operators import Node, PassNode

__all__ = ["END", "ChannelReader", "EndOfInput", "FileSource", "Source"]


class EndOfInput:
    """Returned by ``ChannelReader.read`` when the channel has no more input, ever."""

    _instance: EndOfInput | None = None

    def __new__(cls) -> EndOfInput:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "END"


END: Final = EndOfInput()


class ChannelReader(abc.ABC):
    """Reads one channel. Called from that channel's own thread only."""

    #: Unique within its source (a file name, a partition number as text).
    name: str

    @abc.abstractmethod
    def read(self) -> list[Any] | EndOfInput | None:
        """The next batch, END when the input is exhausted, None if nothing is ready yet."""

    @abc.abstractmethod
    def position(self) -> Any:
        """JSON-able position right after the last record returned."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release files or connections."""


class Source(abc.ABC):
    """A replayable input: reopened at checkpointed positions, it reads the same records."""

    #: Unique within a pipeline; names the source in checkpoints.
    name: str = "source"

    @abc.abstractmethod
    def open(self, positions: Mapping[str, Any]) -> list[ChannelReader]:
        """Channel readers positioned at ``positions`` (channel name -> position)."""

    def node(self, name: str) -> Node:
        """The node the source's batches enter the graph through."""
        return PassNode(name)

    def encode(self, records: Sequence[Any]) -> Any:
        """Records in flight, as JSON (kept in unaligned checkpoints as channel state)."""
        return list(records)

    def decode(self, data: Any) -> list[Any]:
        """The inverse of ``encode``."""
        return list(data)


class _FileChannel(ChannelReader):
    def __init__(
        self, path: Path, name: str, offset: int, follow: bool, chunk: int, decode: str | None
    ) -> None:
        self.name = name
        self._decoder = msgspec.json.Decoder() if decode == "json" else None
        self._path = path
        self._offset = offset  # bytes consumed by records already returned
        self._follow = follow
        self._chunk = chunk
        self._file = open(path, "rb")
        self._file.seek(offset)
        self._rest = b""

    def read(self) -> list[Any] | EndOfInput | None:
        data = self._file.read(self._chunk)
        if not data:
            if self._follow:
                return None
            if self._rest:  # a last line without newline is a record too
                line, self._rest = self._rest, b""
                start = self._offset
                self._offset += len(line)
                return self._records(line, start)
            return END
        data = self._rest + data
        cut = data.rfind(b"\n")
        if cut < 0:
            self._rest = data
            return [] if len(data) < (1 << 26) else self._too_long()
        self._rest = data[cut + 1 :]
        start = self._offset
        self._offset += cut + 1
        return self._records(data[:cut], start)

    def _records(self, lines: bytes, start: int) -> list[Any]:
        if self._decoder is None:
            return lines.decode("utf-8").split("\n")
        try:
            return self._decoder.decode_lines(lines)
        except msgspec.DecodeError as exc:
            raise PipelineError(
                f"{self._path}: bad JSON in the lines from byte {start}: {exc}"
            ) from None

    def _too_long(self) -> list[Any]:
        raise ValueError(f"{self._path}: a line longer than 64 MiB (not newline-delimited?)")

    def position(self) -> int:
        return self._offset

    def close(self) -> None:
        self._file.close()


class FileSource(Source):
    """Newline-delimited UTF-8 records from the files of a directory.

    One channel per file present when the pipeline starts (sorted by name);
    the position of a channel is its byte offset. With ``follow=True`` the
    channels never end and records appended to the files are read as they
    arrive (only complete, newline-terminated lines); without it, each file
    ends at its end. Records are ``str`` lines without the newline, or with
    ``decode="json"`` each line's JSON value, decoded a whole read at a time
    by msgspec (about 5x ``json.loads`` per line; docs/runtime.md).
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        pattern: str = "*",
        follow: bool = False,
        name: str = "files",
        read_bytes: int = 1 << 16,
        decode: str | None = None,
    ) -> None:
        if decode not in (None, "json"):
            raise PipelineDefinitionError(
                f"FileSource decode must be None or 'json', not {decode!r}"
            )
        self.decode_as = decode
        self.directory = Path(directory)
        self.pattern = pattern
        self.follow = follow
        self.name = name
        self.read_bytes = read_bytes

    def files(self) -> list[Path]:
        return sorted(
            p for p in self.directory.iterdir() if p.is_file() and fnmatch(p.name, self.pattern)
        )

    def open(self, positions: Mapping[str, Any]) -> list[ChannelReader]:
        channels: list[ChannelReader] = []
        for path in self.files():
            offset = int(positions.get(path.name, 0))
            if offset > path.stat().st_size:
                raise ValueError(
                    f"{path}: checkpointed position {offset} is past the end of the file "
                    f"({path.stat().st_size} bytes); was the file truncated or replaced?"
                )
            channels.append(
                _FileChannel(path, path.name, offset, self.follow, self.read_bytes, self.decode_as)
            )
        if not channels:
            raise ValueError(f"FileSource: no files matching {self.pattern!r} in {self.directory}")
        return channels
