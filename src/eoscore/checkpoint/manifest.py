"""Checkpoint manifests: what a completed checkpoint consists of.

A manifest is a small JSON document (never pickle) listing, per state, the
segments to apply in order: a base (a full copy) followed by zero or more
deltas, each a file of chunks written by some checkpoint, possibly an earlier
one. It carries its own XXH3 checksum so a damaged manifest is detected.
Format: docs/checkpoint-format.md.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from eoscore._native._statecodec import checksum
from eoscore.checkpoint.errors import CorruptCheckpointError

__all__ = ["ChunkRef", "Manifest", "SegmentRef", "StateEntry"]

FORMAT = "eoscore-checkpoint"
VERSION = 1


@dataclass(frozen=True)
class ChunkRef:
    """Where one chunk lives in its segment file, and what it must hash to."""

    offset: int
    length: int
    kind: int
    count: int
    raw_len: int
    checksum: int

    def to_json(self) -> list[int]:
        return [self.offset, self.length, self.kind, self.count, self.raw_len, self.checksum]

    @classmethod
    def from_json(cls, data: Any) -> ChunkRef:
        if (
            not isinstance(data, list)
            or len(data) != 6
            or not all(type(x) is int and x >= 0 for x in data)
        ):
            raise ValueError("chunk reference must be six non-negative integers")
        return cls(*data)


@dataclass(frozen=True)
class SegmentRef:
    """A file of chunks written by checkpoint ``checkpoint``: a base or a delta."""

    checkpoint: int
    file: str  # relative to the storage root, '/'-separated
    role: str  # "base" or "delta"
    entries: int
    chunks: tuple[ChunkRef, ...]

    @property
    def stored_bytes(self) -> int:
        return sum(c.length for c in self.chunks)

    @property
    def raw_bytes(self) -> int:
        return sum(c.raw_len for c in self.chunks)

    def to_json(self) -> dict[str, Any]:
        return {
            "checkpoint": self.checkpoint,
            "file": self.file,
            "role": self.role,
            "entries": self.entries,
            "chunks": [c.to_json() for c in self.chunks],
        }

    @classmethod
    def from_json(cls, data: Any) -> SegmentRef:
        if data["role"] not in ("base", "delta"):
            raise ValueError(f"unknown segment role {data['role']!r}")
        file = data["file"]
        if not isinstance(file, str) or file.startswith("/") or ".." in file.split("/"):
            raise ValueError(f"segment file {file!r} is not a relative path inside the storage")
        return cls(
            int(data["checkpoint"]),
            file,
            data["role"],
            int(data["entries"]),
            tuple(ChunkRef.from_json(c) for c in data["chunks"]),
        )


@dataclass(frozen=True)
class StateEntry:
    """One state in a checkpoint: its type, settings and segment chain."""

    state_type: str
    meta: dict[str, Any]
    entries: int  # live entries after applying the chain
    segments: tuple[SegmentRef, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "type": self.state_type,
            "meta": self.meta,
            "entries": self.entries,
            "segments": [s.to_json() for s in self.segments],
        }

    @classmethod
    def from_json(cls, data: Any) -> StateEntry:
        segments = tuple(SegmentRef.from_json(s) for s in data["segments"])
        if segments and segments[0].role != "base":
            raise ValueError("a state's first segment must be a base")
        if any(s.role != "delta" for s in segments[1:]):
            raise ValueError("only the first segment of a state may be a base")
        return cls(str(data["type"]), dict(data["meta"]), int(data["entries"]), segments)


@dataclass(frozen=True)
class Manifest:
    """A completed checkpoint: source positions plus every state's segments."""

    checkpoint_id: int
    created: float  # Unix time the checkpoint was triggered
    full: bool  # every state written as a base (no reference to earlier files)
    sources: dict[str, Any]
    states: dict[str, StateEntry] = field(default_factory=dict)

    def files(self) -> set[str]:
        """Every segment file this checkpoint needs."""
        return {s.file for e in self.states.values() for s in e.segments}

    def to_bytes(self) -> bytes:
        body = {
            "format": FORMAT,
            "version": VERSION,
            "id": self.checkpoint_id,
            "created": self.created,
            "full": self.full,
            "sources": self.sources,
            "states": {name: e.to_json() for name, e in self.states.items()},
        }
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
        body["checksum"] = f"{checksum(canonical.encode()):016x}"
        return (json.dumps(body, sort_keys=True, indent=1, allow_nan=False) + "\n").encode()

    @classmethod
    def from_bytes(cls, data: bytes, *, checkpoint_id: int, file: str) -> Manifest:
        """Parse and validate; CorruptCheckpointError names the checkpoint and file."""

        def corrupt(reason: str) -> CorruptCheckpointError:
            return CorruptCheckpointError(reason, checkpoint=checkpoint_id, file=file)

        try:
            body = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            raise corrupt("manifest is not valid JSON (file truncated?)") from None
        if not isinstance(body, dict) or body.get("format") != FORMAT:
            raise corrupt("not an eoscore checkpoint manifest")
        if body.get("version") != VERSION:
            raise corrupt(f"manifest version {body.get('version')} is not supported")
        stored = body.pop("checksum", None)
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
        if stored != f"{checksum(canonical.encode()):016x}":
            raise corrupt("manifest checksum mismatch (file damaged?)")
        try:
            manifest = cls(
                int(body["id"]),
                float(body["created"]),
                bool(body["full"]),
                dict(body["sources"]),
                {str(n): StateEntry.from_json(e) for n, e in body["states"].items()},
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise corrupt(f"manifest is malformed: {exc}") from None
        if manifest.checkpoint_id != checkpoint_id:
            raise corrupt(f"manifest names checkpoint {manifest.checkpoint_id}")
        return manifest
