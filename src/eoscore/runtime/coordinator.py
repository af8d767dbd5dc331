"""The checkpoint coordinator: the commit protocol and recovery.

docs/commit-protocol.md has the numbered steps; the ``# Step N`` comments
below are the same steps. A checkpoint is complete when one durable decision
for it exists (the deciding sink's commit, or the decision file's rename);
everything else is derived from that decision.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from eoscore import failpoints
from eoscore.errors import RecordTooLargeError
from eoscore.pipeline.errors import (
    CheckpointFailedError,
    CheckpointFailureReason,
    PipelineError,
    RecoveryError,
    TooManyCheckpointFailuresError,
)
from eoscore.runtime.config import CheckpointConfig
from eoscore.runtime.store import CheckpointStore, PendingWrite
from eoscore.sinks.two_phase import (
    DecidingSink,
    Decision,
    PreparedHandle,
    RecoveryPlan,
    TwoPhaseSink,
)

log = logging.getLogger(__name__)

__all__ = ["CheckpointCoordinator", "CheckpointStats", "Recovered"]

#: sink name -> handle, per checkpoint id whose output is prepared but not committed.
Handles = dict[int, dict[str, PreparedHandle]]


@dataclass
class Recovered:
    """What recovery restored: the decided checkpoint's meta (None on a first start)."""

    checkpoint_id: int | None
    meta: Mapping[str, Any] | None
    aborted: list[int] = field(default_factory=list)


@dataclass
class CheckpointStats:
    """Counters a test or a profile can read."""

    triggered: int = 0
    completed: int = 0
    failed: int = 0
    aligned: int = 0
    unaligned: int = 0
    channel_state_records: int = 0
    buffered_records: int = 0  # records held in the alignment buffer, summed over checkpoints
    #: Per aligned or unaligned checkpoint: records processed from its trigger to its cut
    #: (0 unaligned; aligned, at most what the channel queues held: docs/runtime.md).
    barrier_records: list[int] = field(default_factory=list)
    last_stall: float = 0.0  # barrier to resumed processing, seconds
    max_stall: float = 0.0
    durations: list[float] = field(default_factory=list)


class _InFlight:
    def __init__(self, checkpoint_id: int, write: PendingWrite, meta: dict[str, Any]) -> None:
        self.checkpoint_id = checkpoint_id
        self.write = write
        self.meta = meta


class CheckpointCoordinator:
    """Triggers checkpoints, runs the commit protocol, and recovers.

    Runs on the processing thread; the only background work is the state
    write of step 2 (``CheckpointStore.write_pending``).
    """

    def __init__(
        self,
        pipeline: str,
        store: CheckpointStore,
        sinks: Sequence[TwoPhaseSink],
        config: CheckpointConfig,
        *,
        worker: str = "0",
    ) -> None:
        deciding = [s for s in sinks if isinstance(s, DecidingSink)]
        if len(deciding) > 1:
            names = ", ".join(s.name for s in deciding)
            raise PipelineError(f"a pipeline has at most one deciding sink, not: {names}")
        self.pipeline = pipeline
        self.worker = worker
        self.store = store
        self.sinks = list(sinks)
        self.deciding: DecidingSink | None = deciding[0] if deciding else None
        self.config = config
        self.stats = CheckpointStats()
        self.next_id = 1
        self._open_id = 0  # the checkpoint id sinks currently collect output for
        self._uncommitted: Handles = {}  # prepared, not yet decided (carried forward)
        self._in_flight: _InFlight | None = None
        self._failures = 0
        self._force_full = False
        self._last_start = time.monotonic()
        self._last_end = time.monotonic()

    # ---- recovery ------------------------------------------------------------------

    def recover(self) -> Recovered:
        """Read the decision, redo or abort what sinks prepared, restore the state."""
        for sink in self.sinks:
            sink.open(self.pipeline, self.worker)
        written = self.store.written()
        if self.deciding is not None:
            decision = self.deciding.read_decision()
            decided = decision.checkpoint_id if decision is not None else None
        else:
            decided = self.store.decided()
        if decided is not None and decided not in written:
            raise RecoveryError(
                f"{self.pipeline}: checkpoint {decided} was decided but storage holds only "
                f"{sorted(written)}; was the state directory replaced or deleted?"
            )
        meta = written.get(decided) if decided is not None else None
        commit: Handles = _handles(meta) if meta is not None else {}
        abort: Handles = {}
        for cid, other in written.items():
            if decided is None or cid > decided:
                for hid, per_sink in _handles(other).items():
                    if hid not in commit:
                        abort.setdefault(hid, {}).update(per_sink)
        positions = dict(meta.get("positions", {})) if meta is not None else {}
        decision_obj = Decision(decided, positions) if decided is not None else None
        # Redo step 4 for the decided checkpoint; abort what was never decided.
        for sink in self.sinks:
            sink.recover(
                RecoveryPlan(
                    decision_obj,
                    commit=[(h, s[sink.name]) for h, s in sorted(commit.items()) if sink.name in s],
                    abort=[(h, s[sink.name]) for h, s in sorted(abort.items()) if sink.name in s],
                )
            )
        for cid in written:
            if decided is None or cid > decided:
                self.store.discard(cid)
        if decided is not None:
            assert meta is not None
            _check_format(self.pipeline, decided, meta)
            meta = self.store.restore(decided)
            self.store.complete(decided)  # Step 5 (again, if the crash came before it)
        self.next_id = max([decided or 0, *written, *abort]) + 1
        self._open_id = self.next_id
        for sink in self.sinks:
            sink.begin(self._open_id)
        return Recovered(decided, meta, sorted(c for c in written if c not in commit))

    # ---- triggering ----------------------------------------------------------------

    @property
    def busy(self) -> bool:
        return self._in_flight is not None

    def due(self, now: float) -> bool:
        """True when the next periodic checkpoint should start."""
        interval = self.config.interval
        if interval is None or self._in_flight is not None:
            return False
        return now - self._last_start >= interval and now - self._last_end >= self.config.min_pause

    def begin_checkpoint(self) -> int:
        """Allocate the id for the barrier about to be injected."""
        self._last_start = time.monotonic()
        self.stats.triggered += 1
        return self._open_id

    def cancel(self, checkpoint_id: int, reason: CheckpointFailureReason) -> None:
        """A checkpoint failed before its barrier completed: nothing was prepared."""
        self._failed(CheckpointFailedError(checkpoint_id, reason))

    def snapshot(
        self,
        checkpoint_id: int,
        positions: Mapping[str, Any],
        extra: Mapping[str, Any],
    ) -> None:
        """Every channel delivered the barrier: steps 1 and 2 (the synchronous part)."""
        assert checkpoint_id == self._open_id, (checkpoint_id, self._open_id)
        # Step 1: every sink pre-commits: output flushed and prepared, not visible.
        failpoints.hit("runtime.before_pre_commit")
        prepared: dict[str, PreparedHandle] = {}
        for sink in self.sinks:
            try:
                prepared[sink.name] = dict(sink.pre_commit(checkpoint_id))
            except Exception as exc:
                raise PipelineError(
                    f"checkpoint {checkpoint_id}: sink {sink.name!r} failed to pre-commit: {exc}"
                ) from exc
        self._uncommitted[checkpoint_id] = prepared
        self._open_id = self.next_id = checkpoint_id + 1
        for sink in self.sinks:
            sink.begin(self._open_id)
        failpoints.hit("runtime.after_pre_commit")
        # Step 2: state, positions and every prepared handle become pending checkpoint n.
        meta = {
            "positions": dict(positions),
            "handles": {str(h): s for h, s in self._uncommitted.items()},
            "runtime_format": RUNTIME_FORMAT,
            **extra,
        }
        try:
            write = self.store.write_pending(checkpoint_id, meta, full=self._force_full)
            failpoints.hit("runtime.mid_snapshot")  # frozen; being written in the background
        except Exception as exc:
            self.store.discard(checkpoint_id)
            self._failed(
                CheckpointFailedError(checkpoint_id, CheckpointFailureReason.STORAGE, str(exc))
            )
            return
        self._force_full = False
        self._in_flight = _InFlight(checkpoint_id, write, meta)

    def poll(self, wait: bool = False) -> None:
        """Advance the checkpoint in flight once its state is written (steps 3 to 5)."""
        flight = self._in_flight
        if flight is None:
            return
        if not wait and not flight.write.done():
            if time.monotonic() - self._last_start > self.config.timeout:
                self._in_flight = None
                self.store.discard(flight.checkpoint_id)
                self._force_full = True
                self._failed(
                    CheckpointFailedError(flight.checkpoint_id, CheckpointFailureReason.TIMEOUT)
                )
            return
        self._in_flight = None
        n = flight.checkpoint_id
        try:
            flight.write.result()
        except RecordTooLargeError as exc:
            self.store.discard(n)
            # Retrying cannot help: every later checkpoint would hold the same entry.
            raise PipelineError(f"checkpoint {n} cannot be written: {exc}") from exc
        except Exception as exc:
            self.store.discard(n)
            self._force_full = True
            self._failed(CheckpointFailedError(n, CheckpointFailureReason.STORAGE, str(exc)))
            return
        failpoints.hit("runtime.after_pending_write")
        self._decide(n, flight.meta)

    def _decide(self, n: int, meta: Mapping[str, Any]) -> None:
        handles = self._uncommitted
        # Step 3: the decision. Everything before it is undone on recovery,
        # everything after it is redone.
        try:
            if self.deciding is not None:
                self.deciding.commit_decision(
                    n, meta["positions"], handles[n].get(self.deciding.name, {})
                )
            else:
                self.store.decide(n, {"positions": meta["positions"]})
        except Exception as exc:
            raise PipelineError(
                f"checkpoint {n}: the decision failed ({exc}); restart to recover"
            ) from exc
        failpoints.hit("runtime.after_decision")
        # Step 4: every other sink commits n (and any earlier carried-forward ids).
        for hid in sorted(handles):
            for sink in self.sinks:
                if sink is self.deciding or sink.name not in handles[hid]:
                    continue
                try:
                    sink.commit(hid, handles[hid][sink.name])
                except Exception as exc:
                    raise PipelineError(
                        f"checkpoint {n} is decided but sink {sink.name!r} failed to commit "
                        f"{hid} ({exc}); restart: recovery redoes the commit"
                    ) from exc
                failpoints.hit("runtime.between_sink_commits")
        self._uncommitted = {}
        failpoints.hit("runtime.after_sink_commits")
        # Step 5: checkpoint n is complete; older ones are retired.
        self.store.complete(n)
        failpoints.hit("runtime.after_complete")
        self._failures = 0
        self._last_end = time.monotonic()
        self.stats.completed += 1
        self.stats.durations.append(self._last_end - self._last_start)

    def finish(self) -> None:
        """Wait for the checkpoint in flight and finish its protocol."""
        self.poll(wait=True)

    def _failed(self, error: CheckpointFailedError) -> None:
        self.stats.failed += 1
        self._failures += 1
        self._last_end = time.monotonic()
        log.warning("%s", error)
        if self._failures > self.config.tolerable_failures:
            raise TooManyCheckpointFailuresError(
                f"{self._failures} consecutive checkpoint failures "
                f"(tolerable_failures={self.config.tolerable_failures}); last: {error}"
            ) from error

    def close(self) -> None:
        for sink in self.sinks:
            try:
                sink.close()
            except Exception:
                log.exception("closing sink %s", sink.name)
        self.store.close()


def _handles(meta: Mapping[str, Any]) -> Handles:
    return {int(h): dict(s) for h, s in meta.get("handles", {}).items()}


#: The layout of operator state and event time that checkpoints are written in.
#: 1: event time as float seconds (before 0.2); 2: int64 microseconds, native
#: window state (docs/runtime.md).
RUNTIME_FORMAT = 2


def _check_format(pipeline: str, checkpoint_id: int, meta: Mapping[str, Any]) -> None:
    """Refuse, before any state is loaded, a checkpoint of another runtime format."""
    found = meta.get("runtime_format")
    if found is None:
        found = 1  # written before the format was recorded
    if found != RUNTIME_FORMAT:
        what = " (event time as float seconds)" if found == 1 else ""
        raise RecoveryError(
            f"{pipeline}: checkpoint {checkpoint_id} was written in runtime format {found}"
            f"{what}; this version writes and reads format "
            f"{RUNTIME_FORMAT} (int64 microseconds, native window state) and cannot resume "
            "it: finish the job with the version that wrote it, or start from a new state "
            "directory (the sinks' own recovery still refuses to commit twice)"
        )
