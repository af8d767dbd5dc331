"""Taking and restoring checkpoints of a set of named states.

``Checkpointer.trigger`` is called at the barrier. It freezes every state (the
only part that stalls processing: a shallow copy, or just the changed entries)
and returns at once; a background thread encodes the frozen views into chunks
(the native encoder releases the GIL while compressing and hashing), writes
them and publishes the manifest. Processing continues meanwhile.

Incremental checkpoints write, per state, only the entries changed since the
previous checkpoint (a delta segment) and reference the earlier segments; a
state is written in full when forced, when its delta chain is long, or when
its deltas would add up to a large part of the state anyway.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from eoscore._native._statecodec import (
    DEFAULT_CHUNK_SIZE,
    KIND_COLUMN_KEYS,
    KIND_COLUMNS,
    KIND_KEYS,
    KIND_RECORDS,
    ChunkDecoder,
    ChunkEncoder,
)
from eoscore.checkpoint.errors import CorruptCheckpointError
from eoscore.checkpoint.manifest import Manifest, SegmentRef, StateEntry
from eoscore.checkpoint.storage import CheckpointStorage
from eoscore.errors import RecordTooLargeError
from eoscore.state.base import FrozenState, Snapshottable, StateRestorer

log = logging.getLogger(__name__)

#: Longest delta chain of a state with ``append_only = True`` (see ``_incremental``).
APPEND_ONLY_CHAIN = 256

__all__ = ["Checkpointer", "CompletedCheckpoint", "PendingCheckpoint", "restore_into"]


@dataclass(frozen=True)
class CompletedCheckpoint:
    """What a finished checkpoint wrote."""

    checkpoint_id: int
    full: bool
    written_bytes: int  # bytes of chunks this checkpoint wrote
    total_bytes: int  # bytes of chunks the checkpoint references (its own and reused)
    entries_written: int
    stall_seconds: float  # time processing was stopped at the barrier (the freeze)
    write_seconds: float  # time the background phase took


class PendingCheckpoint:
    """A checkpoint being written in the background."""

    def __init__(self, checkpoint_id: int) -> None:
        self.checkpoint_id = checkpoint_id
        self._done = threading.Event()
        self._result: CompletedCheckpoint | None = None
        self._error: BaseException | None = None

    def done(self) -> bool:
        return self._done.is_set()

    def result(self, timeout: float | None = None) -> CompletedCheckpoint:
        """Wait for the checkpoint; raise whatever made it fail."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"checkpoint {self.checkpoint_id} still being written")
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result


class Checkpointer:
    """Checkpoints ``states`` (name -> state) into ``storage``.

    Not thread-safe: call ``trigger``, ``checkpoint`` and ``restore`` from the
    processing thread. At most one checkpoint is in flight; ``trigger`` waits
    for the previous one first. Use one Checkpointer per storage, holding every
    state of the job: a checkpoint is consistent across the states it holds.
    """

    def __init__(
        self,
        storage: CheckpointStorage,
        states: Mapping[str, Snapshottable],
        *,
        retain: int = 3,
        max_chain: int = 8,
        delta_ratio: float = 0.5,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        compress: bool = True,
    ) -> None:
        if retain < 1:
            raise ValueError("retain at least one checkpoint")
        self.storage = storage
        self.states = dict(states)
        self.retain = retain
        self.max_chain = max_chain
        self.delta_ratio = delta_ratio
        self._encoder = ChunkEncoder(chunk_size, compress)
        self._chains: dict[str, StateEntry] = {}  # each state's entry in the last checkpoint
        self._pending: PendingCheckpoint | None = None
        self._thread: threading.Thread | None = None

    # ---- taking ------------------------------------------------------------------

    def _incremental(self, name: str, state: Snapshottable, meta: dict[str, Any]) -> bool:
        chain = self._chains.get(name)
        if chain is None or chain.meta != meta or chain.state_type != state.state_type:
            return False
        if getattr(state, "append_only", False):
            # Its deltas only add entries and drop a prefix, never rewrite one: a
            # restore reads each entry written once, however long the chain (with a
            # TTL, expired ones too), so only the chain's length is capped (the
            # manifest lists every segment).
            return len(chain.segments) <= APPEND_ONLY_CHAIN
        if len(chain.segments) > self.max_chain:
            return False
        base = chain.segments[0].entries
        room = self.delta_ratio * max(base, 1) - sum(s.entries for s in chain.segments[1:])
        # The O(1) bound settles the common case without scanning the state.
        return state.dirty_bound() <= room or state.dirty_count() <= room

    def trigger(
        self, sources: Mapping[str, Any] | None = None, *, full: bool = False
    ) -> PendingCheckpoint:
        """Take a checkpoint at this barrier; returns once the states are frozen.

        ``sources`` (JSON-able: source positions, offsets) is stored with the
        state and returned by ``restore``. ``full=True`` writes every state
        in full, referencing nothing earlier.
        """
        src = dict(sources or {})
        json.dumps(src, allow_nan=False)  # fail here, not on the writer thread
        self.wait()
        started = time.perf_counter()
        created = time.time()
        checkpoint_id = self.storage.begin()
        frozen: dict[str, tuple[FrozenState, dict[str, Any], int]] = {}
        try:
            for name, state in self.states.items():
                meta = state.describe()
                incremental = not full and self._incremental(name, state, meta)
                frozen[name] = (state.freeze(incremental), meta, len(state))
        except BaseException:
            for view, _, _ in frozen.values():
                view.release()
            self._chains.clear()
            self.storage.abort(checkpoint_id)
            raise
        stall = time.perf_counter() - started
        pending = PendingCheckpoint(checkpoint_id)
        self._pending = pending
        self._thread = threading.Thread(
            target=self._write,
            args=(pending, frozen, src, created, stall),
            name=f"eoscore-checkpoint-{checkpoint_id}",
            daemon=True,
        )
        self._thread.start()
        return pending

    def checkpoint(
        self, sources: Mapping[str, Any] | None = None, *, full: bool = False
    ) -> CompletedCheckpoint:
        """trigger() and wait for the result."""
        return self.trigger(sources, full=full).result()

    def wait(self) -> None:
        """Wait for the checkpoint in flight, if any (its errors stay on its handle)."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _write(
        self,
        pending: PendingCheckpoint,
        frozen: dict[str, tuple[FrozenState, dict[str, Any], int]],
        sources: dict[str, Any],
        created: float,
        stall: float,
    ) -> None:
        started = time.perf_counter()
        cid = pending.checkpoint_id
        try:
            states: dict[str, StateEntry] = {}
            written = entries = 0
            # Step 2: encode each frozen view chunk by chunk into its segment file.
            for index, (name, (view, meta, count)) in enumerate(frozen.items()):
                if view.incremental and view.entries == 0:  # unchanged: reuse the chain
                    view.release()
                    states[name] = replace(self._chains[name], entries=count)
                    continue
                writer = self.storage.segment_writer(cid, index, name)
                try:
                    chunks = tuple(writer.write(c) for c in view.chunks(self._encoder))
                except RecordTooLargeError as exc:
                    raise exc.for_state(name) from None
                finally:
                    writer.close()
                    view.release()
                segment = SegmentRef(
                    cid,
                    writer.file,
                    "delta" if view.incremental else "base",
                    view.entries,
                    chunks,
                )
                written += segment.stored_bytes
                entries += view.entries
                earlier = self._chains[name].segments if view.incremental else ()
                states[name] = StateEntry(
                    self.states[name].state_type, meta, count, (*earlier, segment)
                )
            manifest = Manifest(
                cid,
                created,
                all(s.segments[0].checkpoint == cid for s in states.values()),
                sources,
                states,
            )
            self.storage.commit(manifest)  # Steps 3-5: durable files, then the manifest
            self._chains = dict(states)
            try:  # Step 6
                self.storage.retain(self.retain)
            except Exception:  # the checkpoint itself is complete; retry next time
                log.exception("checkpoint %d: retention failed", cid)
            total = sum(s.stored_bytes for e in states.values() for s in e.segments)
            pending._result = CompletedCheckpoint(
                cid,
                manifest.full,
                written,
                total,
                entries,
                stall,
                time.perf_counter() - started,
            )
        except BaseException as exc:
            # The dirty tracking was reset at the freeze: the next checkpoint
            # must write every state in full.
            self._chains.clear()
            for view, _, _ in frozen.values():
                view.release()
            try:
                self.storage.abort(cid)
            finally:
                pending._error = exc
        finally:
            pending._done.set()

    # ---- restoring ----------------------------------------------------------------

    def restore(self, checkpoint_id: int | None = None) -> Manifest | None:
        """Load every state from a checkpoint (default: the newest).

        All or nothing: states are built off to the side and installed only
        after every chunk was read and validated. Returns the manifest (its
        ``sources`` are where to resume reading), or None if there is no
        checkpoint yet. A state the checkpoint does not have is left empty.
        """
        self.wait()
        if checkpoint_id is None:
            checkpoint_id = self.storage.latest()
            if checkpoint_id is None:
                return None
        manifest = restore_into(self.storage, checkpoint_id, self.states)
        self._chains = {n: e for n, e in manifest.states.items() if n in self.states}
        return manifest


def restore_into(
    storage: CheckpointStorage, checkpoint_id: int, states: Mapping[str, Snapshottable]
) -> Manifest:
    """Restore ``states`` from checkpoint ``checkpoint_id`` (all or nothing)."""
    manifest = storage.read_manifest(checkpoint_id)
    decoder = ChunkDecoder()
    builders: list[tuple[StateRestorer, Snapshottable]] = []
    for name, state in states.items():
        entry = manifest.states.get(name)
        if entry is None:
            builders.append((state.restorer(state.describe(), 0), state))
            continue
        if entry.state_type != state.state_type and entry.state_type not in getattr(
            state, "restores_from", ()
        ):
            raise ValueError(
                f"checkpoint {checkpoint_id} holds {name!r} as {entry.state_type} state, "
                f"not {state.state_type}"
            )
        builder = state.restorer(entry.meta, entry.entries)
        for segment in entry.segments:
            read_segment(storage, checkpoint_id, segment, decoder, builder)
        got = builder.count()
        if got != entry.entries:
            raise CorruptCheckpointError(
                f"state {name!r} restored {got} entries, the manifest says {entry.entries}",
                checkpoint=checkpoint_id,
            )
        builders.append((builder, state))
    for builder, _ in builders:
        builder.install()
    return manifest


def read_segment(
    storage: CheckpointStorage,
    checkpoint_id: int,
    segment: SegmentRef,
    decoder: ChunkDecoder,
    builder: StateRestorer | None,
) -> None:
    """Decode (and validate) every chunk of a segment, feeding ``builder`` if given."""
    if builder is not None:
        builder.begin_segment(segment.role == "base")
    for i, ref, data in storage.read_chunks(checkpoint_id, segment):
        try:
            if ref.kind == KIND_RECORDS:
                target = builder.records_dict() if builder is not None else None
                if target is not None:
                    decoder.records_into(data, target, ref.checksum)
                else:
                    items = decoder.records(data, ref.checksum)
                    if builder is not None:
                        builder.records(items)
            elif ref.kind == KIND_KEYS:
                keys = decoder.keys(data, ref.checksum)
                if builder is not None:
                    builder.deleted_keys(keys)
            elif ref.kind == KIND_COLUMNS:
                ckeys, cols = decoder.columns(data, ref.checksum)
                if builder is not None:
                    builder.columns(ckeys, cols)
            elif ref.kind == KIND_COLUMN_KEYS:
                ckeys, _ = decoder.columns(data, ref.checksum)
                if builder is not None:
                    builder.deleted_column_keys(ckeys)
            else:
                raise CorruptCheckpointError(f"manifest gives unknown chunk kind {ref.kind}")
        except CorruptCheckpointError as exc:
            raise exc.located(checkpoint=checkpoint_id, file=segment.file, chunk=i) from None
