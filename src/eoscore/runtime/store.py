"""The storage seam of the commit protocol: ``CheckpointStore``.

The coordinator needs five things from storage: write a *pending* checkpoint
(state, source positions, sink handles) durably (step 2), record a decision
by atomic rename when no sink decides (step 3), mark a checkpoint complete
and retire older ones (step 5), and on recovery find the decided checkpoint,
restore it, and list what was written but never decided.

``FileCheckpointStore`` keeps operator state through ``eoscore.checkpoint``
(``Checkpointer`` over ``FileCheckpointStorage``: chunked, checksummed,
incremental, asynchronous) and the protocol's own records as small JSON
files published by fsync + atomic rename. In ``FileCheckpointStorage`` a
published manifest means "step 2 done" for us, not "decided".
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from eoscore import failpoints
from eoscore.checkpoint import Checkpointer, FileCheckpointStorage, PendingCheckpoint
from eoscore.pipeline.errors import RecoveryError
from eoscore.state.base import Snapshottable

__all__ = ["CheckpointStore", "FileCheckpointStore", "PendingWrite"]

_DECISION = re.compile(r"^(\d{10})\.json$")


class PendingWrite(Protocol):
    """Step 2 in flight: the pending checkpoint being written off the processing thread."""

    def done(self) -> bool: ...
    def result(self, timeout: float | None = None) -> object: ...


class CheckpointStore(Protocol):
    """What the coordinator needs from checkpoint storage (one writer at a time)."""

    def write_pending(
        self, checkpoint_id: int, meta: Mapping[str, Any], *, full: bool = False
    ) -> PendingWrite:
        """Step 2: freeze the states now, write them and ``meta`` durably in the background."""
        ...

    def discard(self, checkpoint_id: int) -> None:
        """Forget a pending checkpoint that will never be decided."""
        ...

    def decide(self, checkpoint_id: int, meta: Mapping[str, Any]) -> None:
        """Step 3 without a deciding sink: publish the decision atomically."""
        ...

    def decided(self) -> int | None:
        """The newest checkpoint decided through ``decide`` (None before the first)."""
        ...

    def complete(self, checkpoint_id: int) -> None:
        """Step 5: mark complete, retire older checkpoints."""
        ...

    def written(self) -> dict[int, dict[str, Any]]:
        """Every checkpoint whose step 2 finished: id -> its meta."""
        ...

    def restore(self, checkpoint_id: int) -> dict[str, Any]:
        """Load the states of a written checkpoint; returns its meta."""
        ...

    def close(self) -> None: ...


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_json(path: Path, data: Any) -> None:
    """Write ``data`` so that ``path`` holds either the old or the new content."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, allow_nan=False, separators=(",", ":"))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


class FileCheckpointStore:
    """Checkpoints in a local directory: ``state/`` (eoscore.checkpoint) + ``decisions/``."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        states: Mapping[str, Snapshottable],
        *,
        retained: int = 1,
    ) -> None:
        self.root = Path(directory)
        self.retained = retained
        (self.root / "decisions").mkdir(parents=True, exist_ok=True)
        self.storage = FileCheckpointStorage(self.root / "state")
        # A pending checkpoint must never push the decided one out: keep one more.
        self.checkpointer = Checkpointer(self.storage, states, retain=retained + 1)
        self._storage_ids: dict[int, int] = {}  # checkpoint id -> storage id
        for tmp in (self.root / "decisions").glob("*.tmp"):
            tmp.unlink(missing_ok=True)

    def close(self) -> None:
        self.checkpointer.wait()
        self.storage.close()

    # ---- step 2 -----------------------------------------------------------------

    def write_pending(
        self, checkpoint_id: int, meta: Mapping[str, Any], *, full: bool = False
    ) -> PendingCheckpoint:
        pending = self.checkpointer.trigger({**meta, "checkpoint_id": checkpoint_id}, full=full)
        self._storage_ids[checkpoint_id] = pending.checkpoint_id
        return pending

    def discard(self, checkpoint_id: int) -> None:
        self.checkpointer.wait()
        sid = self._storage_ids.pop(checkpoint_id, None)
        if sid is not None and sid in self.storage.checkpoints():
            self.storage.delete([sid])

    # ---- step 3 -----------------------------------------------------------------

    def _decision_path(self, checkpoint_id: int) -> Path:
        return self.root / "decisions" / f"{checkpoint_id:010d}.json"

    def decide(self, checkpoint_id: int, meta: Mapping[str, Any]) -> None:
        record = {"checkpoint_id": checkpoint_id, **meta}
        path = self._decision_path(checkpoint_id)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(record, f, allow_nan=False, separators=(",", ":"))
            f.flush()
            os.fsync(f.fileno())
        failpoints.hit("store.before_decision_rename")
        # The rename is the decision: before it checkpoint n never happened.
        os.replace(tmp, path)
        _fsync_dir(path.parent)

    def decided(self) -> int | None:
        found = [_DECISION.match(p.name) for p in (self.root / "decisions").iterdir()]
        ids = sorted(int(m.group(1)) for m in found if m)
        return ids[-1] if ids else None

    # ---- step 5 -----------------------------------------------------------------

    def complete(self, checkpoint_id: int) -> None:
        atomic_write_json(self.root / "decisions" / "COMPLETE", {"checkpoint_id": checkpoint_id})
        for p in (self.root / "decisions").iterdir():
            m = _DECISION.match(p.name)
            if m and int(m.group(1)) < checkpoint_id:
                p.unlink(missing_ok=True)
        keep = {self._storage_ids[checkpoint_id]} if checkpoint_id in self._storage_ids else set()
        written = self._written_storage()
        old = [sid for cid, sid in written.items() if cid < checkpoint_id and sid not in keep]
        old.sort()
        retire = old[: max(0, len(old) - (self.retained - 1))]
        if retire:
            self.storage.delete(retire)

    def completed(self) -> int | None:
        """The newest checkpoint whose step 5 finished."""
        try:
            data = json.loads((self.root / "decisions" / "COMPLETE").read_text("utf-8"))
        except FileNotFoundError:
            return None
        return int(data["checkpoint_id"])

    # ---- recovery ---------------------------------------------------------------

    def _written_storage(self) -> dict[int, int]:
        found: dict[int, int] = {}
        for sid in self.storage.checkpoints():
            meta = self.storage.read_manifest(sid).sources
            cid = meta.get("checkpoint_id")
            if isinstance(cid, int):
                found[cid] = sid
        self._storage_ids.update(found)
        return found

    def written(self) -> dict[int, dict[str, Any]]:
        return {
            cid: dict(self.storage.read_manifest(sid).sources)
            for cid, sid in self._written_storage().items()
        }

    def restore(self, checkpoint_id: int) -> dict[str, Any]:
        sid = self._written_storage().get(checkpoint_id)
        if sid is None:
            raise RecoveryError(
                f"checkpoint {checkpoint_id} was decided but its state is not in "
                f"{self.root / 'state'} (deleted by hand, or another pipeline's storage?)"
            )
        failpoints.hit("runtime.mid_restore")
        manifest = self.checkpointer.restore(sid)
        assert manifest is not None
        return dict(manifest.sources)
