"""What ``eoscore checkpoint list|inspect|verify`` report, as plain data.

Kept apart from the CLI so tools can call it directly.
"""

from __future__ import annotations

import time
from typing import Any

from eoscore._native._statecodec import ChunkDecoder
from eoscore.checkpoint.checkpointer import read_segment
from eoscore.checkpoint.errors import CorruptCheckpointError
from eoscore.checkpoint.manifest import Manifest
from eoscore.checkpoint.storage import CheckpointStorage

__all__ = ["describe_checkpoint", "list_checkpoints", "verify_checkpoint"]


def _summary(manifest: Manifest, now: float) -> dict[str, Any]:
    cid = manifest.checkpoint_id
    segments = [s for e in manifest.states.values() for s in e.segments]
    return {
        "id": cid,
        "created": manifest.created,
        "age_seconds": max(0.0, now - manifest.created),
        "full": manifest.full,
        "states": len(manifest.states),
        "entries": sum(e.entries for e in manifest.states.values()),
        "stored_bytes": sum(s.stored_bytes for s in segments),
        "written_bytes": sum(s.stored_bytes for s in segments if s.checkpoint == cid),
    }


def list_checkpoints(storage: CheckpointStorage) -> list[dict[str, Any]]:
    """One summary per completed checkpoint, oldest first.

    A checkpoint whose manifest is damaged is listed with an ``error``.
    """
    now = time.time()
    out: list[dict[str, Any]] = []
    for cid in storage.checkpoints():
        try:
            out.append(_summary(storage.read_manifest(cid), now))
        except CorruptCheckpointError as exc:
            out.append({"id": cid, "error": str(exc)})
    return out


def describe_checkpoint(storage: CheckpointStorage, checkpoint_id: int) -> dict[str, Any]:
    """Per-state sizes, chunk counts, reuse of earlier checkpoints and compression."""
    manifest = storage.read_manifest(checkpoint_id)
    info = _summary(manifest, time.time())
    info["sources"] = manifest.sources
    states: dict[str, Any] = {}
    for name, entry in manifest.states.items():
        stored = sum(s.stored_bytes for s in entry.segments)
        raw = sum(s.raw_bytes for s in entry.segments)
        reused = sum(s.stored_bytes for s in entry.segments if s.checkpoint != checkpoint_id)
        states[name] = {
            "type": entry.state_type,
            "entries": entry.entries,
            "segments": len(entry.segments),
            "chunks": sum(len(s.chunks) for s in entry.segments),
            "stored_bytes": stored,
            "raw_bytes": raw,
            "reused_bytes": reused,
            "reused_from": sorted({s.checkpoint for s in entry.segments} - {checkpoint_id}),
            "compression_ratio": round(raw / stored, 3) if stored else None,
            "meta": entry.meta,
        }
    info["state"] = states
    return info


def verify_checkpoint(storage: CheckpointStorage, checkpoint_id: int) -> dict[str, Any]:
    """Read and decode every chunk of a checkpoint; list every problem found.

    Keeps going after a damaged segment so one run reports all of them.
    """
    problems: list[str] = []
    chunks = 0
    try:
        manifest = storage.read_manifest(checkpoint_id)
    except CorruptCheckpointError as exc:
        return {"id": checkpoint_id, "ok": False, "chunks": 0, "problems": [str(exc)]}
    decoder = ChunkDecoder()
    for entry in manifest.states.values():
        for segment in entry.segments:
            try:
                read_segment(storage, checkpoint_id, segment, decoder, None)
            except CorruptCheckpointError as exc:
                problems.append(str(exc))
            chunks += len(segment.chunks)
    return {"id": checkpoint_id, "ok": not problems, "chunks": chunks, "problems": problems}
