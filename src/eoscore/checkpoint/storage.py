"""Where checkpoints live: the ``CheckpointStorage`` interface and the
embedded default, ``FileCheckpointStorage``.

A checkpoint becomes visible only when its manifest is published; everything
before that is invisible and is cleaned up by the next writer that opens the
storage. The file implementation's crash-safety argument, step by step, is
in docs/checkpoint-format.md ("Commit protocol"); the code carries matching
``# Step N`` comments.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from eoscore._native._statecodec import HEADER_SIZE, read_header
from eoscore.checkpoint.errors import CheckpointNotFoundError, CorruptCheckpointError
from eoscore.checkpoint.manifest import ChunkRef, Manifest, SegmentRef
from eoscore.errors import EosError

__all__ = ["CheckpointStorage", "FileCheckpointStorage", "SegmentWriter"]

_MANIFEST = re.compile(r"^(\d{10})\.json$")
_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


class SegmentWriter(ABC):
    """Appends one state's chunks for one checkpoint."""

    #: The segment's file, relative to the storage root ('/'-separated).
    file: str

    @abstractmethod
    def write(self, chunk: bytes) -> ChunkRef:
        """Append one encoded chunk; returns where it went."""

    @abstractmethod
    def close(self) -> None:
        """Finish the segment (for files: flush and fsync)."""


class CheckpointStorage(ABC):
    """A place to keep checkpoints. One writer at a time; any number of readers."""

    @abstractmethod
    def checkpoints(self) -> list[int]:
        """Ids of completed checkpoints, oldest first."""

    @abstractmethod
    def read_manifest(self, checkpoint_id: int) -> Manifest:
        """The manifest of a completed checkpoint (validated)."""

    @abstractmethod
    def begin(self) -> int:
        """Start a checkpoint; returns its id (greater than every completed one)."""

    @abstractmethod
    def segment_writer(self, checkpoint_id: int, index: int, name: str) -> SegmentWriter:
        """A writer for state ``name`` (the ``index``-th) of a begun checkpoint."""

    @abstractmethod
    def commit(self, manifest: Manifest) -> None:
        """Publish a checkpoint atomically: after this it is complete, before it invisible."""

    @abstractmethod
    def abort(self, checkpoint_id: int) -> None:
        """Forget a begun, uncommitted checkpoint and its files (best effort)."""

    @abstractmethod
    def read_chunks(
        self, checkpoint_id: int, segment: SegmentRef
    ) -> Iterator[tuple[int, ChunkRef, bytes]]:
        """(index, ref, bytes) of each chunk of a segment, one at a time.

        Raises CorruptCheckpointError naming ``checkpoint_id``, the file and the
        chunk if the file is missing or shorter than the manifest says.
        """

    @abstractmethod
    def delete(self, checkpoint_ids: Iterable[int]) -> None:
        """Delete checkpoints, then every file no remaining checkpoint references."""

    def latest(self) -> int | None:
        """Id of the newest completed checkpoint, or None."""
        ids = self.checkpoints()
        return ids[-1] if ids else None

    def retain(self, keep: int) -> list[int]:
        """Keep the newest ``keep`` checkpoints; return the ids deleted."""
        if keep < 1:
            raise ValueError("keep at least one checkpoint")
        old = self.checkpoints()[:-keep]
        if old:
            self.delete(old)
        return old


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _FileSegmentWriter(SegmentWriter):
    def __init__(self, root: Path, file: str) -> None:
        self.file = file
        self._f: BinaryIO = open(root / file, "xb", buffering=1 << 20)
        self._offset = 0

    def write(self, chunk: bytes) -> ChunkRef:
        kind, _codec, raw_len, _stored, count, checksum = read_header(chunk)
        ref = ChunkRef(self._offset, len(chunk), kind, count, raw_len, checksum)
        self._f.write(chunk)
        self._offset += len(chunk)
        return ref

    def close(self) -> None:
        if self._f.closed:
            return
        try:  # Step 2 (end): the segment's bytes are durable before any manifest names them.
            self._f.flush()
            os.fsync(self._f.fileno())
        finally:
            self._f.close()


class FileCheckpointStorage(CheckpointStorage):
    """Checkpoints in a local directory (the embedded default).

    Layout: ``manifests/<id>.json`` (present = complete), chunk files under
    ``data/<id>/``, and a ``LOCK`` file the writing process holds. Opening it
    for writing (the default) takes the lock and removes what a crashed writer
    left behind; ``readonly=True`` does neither (for the CLI and inspection).
    """

    def __init__(self, directory: str | os.PathLike[str], *, readonly: bool = False) -> None:
        self.root = Path(directory)
        self.readonly = readonly
        self._lock_fd: int | None = None
        self._in_progress: set[int] = set()
        if readonly:
            if not (self.root / "manifests").is_dir():
                raise FileNotFoundError(f"{self.root} holds no eoscore checkpoints")
            return
        (self.root / "manifests").mkdir(parents=True, exist_ok=True)
        (self.root / "data").mkdir(exist_ok=True)
        self._lock()
        self.cleanup()

    # ---- housekeeping ----------------------------------------------------------

    def _lock(self) -> None:
        fd = os.open(self.root / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise EosError(
                f"another process is writing checkpoints to {self.root} (LOCK is held)"
            ) from None
        self._lock_fd = fd

    def close(self) -> None:
        """Release the writer lock."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> FileCheckpointStorage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _writable(self) -> None:
        if self.readonly:
            raise EosError(f"{self.root} was opened read-only")

    def cleanup(self) -> list[str]:
        """Remove leftovers of a crashed writer; return what was removed.

        Leftovers are manifest temp files and data files that no completed
        checkpoint references. If some manifest cannot be read, data files are
        kept (we cannot tell what it references).
        """
        self._writable()
        removed: list[str] = []
        for tmp in (self.root / "manifests").glob("*.tmp"):
            tmp.unlink(missing_ok=True)
            removed.append(f"manifests/{tmp.name}")
        try:
            referenced = self._referenced()
        except CorruptCheckpointError:
            return removed
        removed += self._remove_unreferenced(referenced)
        return removed

    def _referenced(self) -> set[str]:
        files: set[str] = set()
        for cid in self.checkpoints():
            files |= self.read_manifest(cid).files()
        return files

    def _remove_unreferenced(self, referenced: set[str]) -> list[str]:
        removed = []
        data = self.root / "data"
        for folder in sorted(data.iterdir()):
            if not folder.is_dir() or not folder.name.isdigit():
                continue
            if int(folder.name) in self._in_progress:
                continue
            for f in folder.iterdir():
                rel = f"data/{folder.name}/{f.name}"
                if rel not in referenced:
                    f.unlink(missing_ok=True)
                    removed.append(rel)
            if not any(folder.iterdir()):
                folder.rmdir()
        if removed:
            _fsync_dir(data)
        return removed

    # ---- reading ---------------------------------------------------------------

    def _manifest_path(self, checkpoint_id: int) -> Path:
        return self.root / "manifests" / f"{checkpoint_id:010d}.json"

    def checkpoints(self) -> list[int]:
        found = (_MANIFEST.match(p.name) for p in (self.root / "manifests").iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def read_manifest(self, checkpoint_id: int) -> Manifest:
        path = self._manifest_path(checkpoint_id)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise CheckpointNotFoundError(
                f"no completed checkpoint {checkpoint_id} in {self.root}"
            ) from None
        return Manifest.from_bytes(data, checkpoint_id=checkpoint_id, file=f"manifests/{path.name}")

    def read_chunks(
        self, checkpoint_id: int, segment: SegmentRef
    ) -> Iterator[tuple[int, ChunkRef, bytes]]:
        def corrupt(reason: str, chunk: int | None = None) -> CorruptCheckpointError:
            return CorruptCheckpointError(
                reason, checkpoint=checkpoint_id, file=segment.file, chunk=chunk
            )

        try:
            f = open(self.root / segment.file, "rb")
        except FileNotFoundError:
            raise corrupt("file is missing (deleted by hand?)") from None
        with f:
            size = os.fstat(f.fileno()).st_size
            for i, ref in enumerate(segment.chunks):
                if ref.length < HEADER_SIZE:
                    raise corrupt("manifest gives a chunk shorter than a header", i)
                if ref.offset + ref.length > size:
                    raise corrupt(
                        f"file has {size} bytes but the chunk ends at "
                        f"{ref.offset + ref.length} (file truncated?)",
                        i,
                    )
                f.seek(ref.offset)
                yield i, ref, f.read(ref.length)

    # ---- writing ---------------------------------------------------------------

    def begin(self) -> int:
        self._writable()
        # Step 1: a new id and an empty directory of its own; nothing an
        # earlier checkpoint uses is ever written to.
        checkpoint_id = max([*self.checkpoints(), *self._in_progress], default=0) + 1
        folder = self.root / "data" / f"{checkpoint_id:010d}"
        if folder.exists():  # a crashed attempt at this id (cleanup missed it)
            shutil.rmtree(folder)
        folder.mkdir()
        self._in_progress.add(checkpoint_id)
        return checkpoint_id

    def segment_writer(self, checkpoint_id: int, index: int, name: str) -> SegmentWriter:
        self._writable()
        safe = _SAFE.sub("_", name)[:64]
        file = f"data/{checkpoint_id:010d}/{index:03d}-{safe}.chunks"
        return _FileSegmentWriter(self.root, file)

    def commit(self, manifest: Manifest) -> None:
        self._writable()
        cid = manifest.checkpoint_id
        # Step 2 happened in the segment writers: every chunk file was flushed
        # and fsynced as it was closed.
        # Step 3: make the chunk files' directory entries durable.
        _fsync_dir(self.root / "data" / f"{cid:010d}")
        _fsync_dir(self.root / "data")
        # Step 4: write the manifest under a temporary name and fsync it.
        final = self._manifest_path(cid)
        tmp = final.with_name(final.name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(manifest.to_bytes())
            f.flush()
            os.fsync(f.fileno())
        # Step 5: atomically rename it into place and fsync the directory:
        # from here on the checkpoint is complete; before, it did not exist.
        os.replace(tmp, final)
        _fsync_dir(self.root / "manifests")
        self._in_progress.discard(cid)

    def abort(self, checkpoint_id: int) -> None:
        self._in_progress.discard(checkpoint_id)
        if self._manifest_path(checkpoint_id).exists():
            return  # committed after all: keep it
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(self.root / "data" / f"{checkpoint_id:010d}")
        self._manifest_path(checkpoint_id).with_suffix(".json.tmp").unlink(missing_ok=True)

    def delete(self, checkpoint_ids: Iterable[int]) -> None:
        self._writable()
        # Step 6: manifests first (the checkpoints stop existing), then the
        # files nothing references any more. A crash in between leaves only
        # unreferenced files, which the next cleanup removes.
        for cid in checkpoint_ids:
            self._manifest_path(cid).unlink(missing_ok=True)
        _fsync_dir(self.root / "manifests")
        self._remove_unreferenced(self._referenced())
