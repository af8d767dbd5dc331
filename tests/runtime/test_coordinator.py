"""The commit protocol and recovery, step by step, with recording sinks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from eoscore import failpoints
from eoscore.errors import RecordTooLargeError
from eoscore.pipeline import PipelineError, RecoveryError, TooManyCheckpointFailuresError
from eoscore.runtime import CheckpointConfig, CheckpointCoordinator, FileCheckpointStore
from eoscore.runtime.coordinator import RUNTIME_FORMAT
from eoscore.sinks.two_phase import (
    DecidingSink,
    Decision,
    PreparedHandle,
    RecoveryPlan,
    TwoPhaseSink,
)
from eoscore.state import ValueState


class Recorder(TwoPhaseSink):
    def __init__(self, name: str, log: list[tuple[Any, ...]]) -> None:
        self.name = name
        self.log = log
        self.plans: list[RecoveryPlan] = []

    def recover(self, plan: RecoveryPlan) -> None:
        self.plans.append(plan)

    def begin(self, checkpoint_id: int) -> None:
        self.log.append((self.name, "begin", checkpoint_id))

    def write(self, records: Sequence[Any]) -> None:
        pass

    def pre_commit(self, checkpoint_id: int) -> PreparedHandle:
        self.log.append((self.name, "pre_commit", checkpoint_id))
        return {"id": checkpoint_id}

    def commit(self, checkpoint_id: int, handle: PreparedHandle) -> None:
        self.log.append((self.name, "commit", checkpoint_id))

    def abort(self, checkpoint_id: int, handle: PreparedHandle | None) -> None:
        self.log.append((self.name, "abort", checkpoint_id))


class Decider(Recorder, DecidingSink):
    """Its 'transaction log' survives coordinators (a stand-in for Kafka)."""

    def __init__(self, name: str, log: list[tuple[Any, ...]], durable: list[Decision]) -> None:
        super().__init__(name, log)
        self.durable = durable

    def commit_decision(
        self, checkpoint_id: int, positions: Mapping[str, Any], handle: PreparedHandle
    ) -> None:
        self.log.append((self.name, "decide", checkpoint_id))
        self.durable.append(Decision(checkpoint_id, positions))

    def read_decision(self) -> Decision | None:
        return self.durable[-1] if self.durable else None


def make(
    root: Path, sinks: list[TwoPhaseSink], **config: Any
) -> tuple[CheckpointCoordinator, ValueState]:
    state = ValueState("counts")
    store = FileCheckpointStore(root, {"counts": state})
    return CheckpointCoordinator("t", store, sinks, CheckpointConfig(**config)), state


def test_steps_run_in_order_and_recovery_restores_the_decision(tmp_path: Path) -> None:
    log: list[tuple[Any, ...]] = []
    a = Recorder("a", log)
    coordinator, state = make(tmp_path, [a])
    assert coordinator.recover().checkpoint_id is None
    state.put("k", 1)
    coordinator.snapshot(1, {"src": {"ch": 10}}, {})
    coordinator.finish()
    assert log == [("a", "begin", 1), ("a", "pre_commit", 1), ("a", "begin", 2), ("a", "commit", 1)]
    state.put("k", 2)
    failpoints.enable("runtime.after_pending_write", "raise", at=1)
    try:
        coordinator.snapshot(2, {"src": {"ch": 20}}, {})
        with pytest.raises(failpoints.FailpointError):
            coordinator.finish()  # crash: 2 is written but never decided
    finally:
        failpoints.disable()
    coordinator.close()

    b = Recorder("a", [])
    again, restored = make(tmp_path, [b])
    recovered = again.recover()
    assert recovered.checkpoint_id == 1
    assert recovered.meta is not None and recovered.meta["positions"] == {"src": {"ch": 10}}
    assert restored.get("k") == 1
    (plan,) = b.plans
    assert plan.decided == Decision(1, {"src": {"ch": 10}})
    assert [c for c, _ in plan.commit] == [1]  # step 4 redone (idempotent)
    assert [c for c, _ in plan.abort] == [2]  # prepared, never decided
    assert again.next_id == 3
    assert b.log == [("a", "begin", 3)]
    again.close()


def test_a_crash_after_the_decision_commits_on_recovery(tmp_path: Path) -> None:
    log: list[tuple[Any, ...]] = []
    coordinator, state = make(tmp_path, [Recorder("a", log), Recorder("b", log)])
    coordinator.recover()
    state.put("k", 5)
    failpoints.enable("runtime.after_decision", "raise", at=1)
    try:
        coordinator.snapshot(1, {}, {})
        with pytest.raises(failpoints.FailpointError):
            coordinator.finish()
    finally:
        failpoints.disable()
    assert ("a", "commit", 1) not in log
    coordinator.close()
    a, b = Recorder("a", []), Recorder("b", [])
    again, restored = make(tmp_path, [a, b])
    assert again.recover().checkpoint_id == 1
    assert restored.get("k") == 5
    assert [c for c, _ in a.plans[0].commit] == [1] and [c for c, _ in b.plans[0].commit] == [1]
    again.close()


def test_the_deciding_sink_decides_and_others_follow(tmp_path: Path) -> None:
    log: list[tuple[Any, ...]] = []
    durable: list[Decision] = []
    decider, other = Decider("kafka", log, durable), Recorder("db", log)
    coordinator, state = make(tmp_path, [decider, other])
    coordinator.recover()
    state.put("k", 1)
    coordinator.snapshot(1, {"src": {"0": 5}}, {})
    coordinator.finish()
    assert log.index(("kafka", "decide", 1)) < log.index(("db", "commit", 1))
    assert ("kafka", "commit", 1) not in log  # its decision was its commit
    assert coordinator.store.decided() is None  # no decision file: Kafka decided
    # Pending 2 written, then a crash before Kafka commits: 1 is what recovery restores.
    state.put("k", 2)
    failpoints.enable("runtime.after_pending_write", "raise", at=1)
    try:
        coordinator.snapshot(2, {"src": {"0": 9}}, {})
        with pytest.raises(failpoints.FailpointError):
            coordinator.finish()
    finally:
        failpoints.disable()
    coordinator.close()
    again, restored = make(tmp_path, [Decider("kafka", [], durable), Recorder("db", [])])
    assert again.recover().checkpoint_id == 1
    assert restored.get("k") == 1
    again.close()


def test_storage_failures_are_tolerated_up_to_the_limit(tmp_path: Path) -> None:
    log: list[tuple[Any, ...]] = []
    coordinator, _ = make(tmp_path, [Recorder("a", log)], tolerable_failures=1)
    coordinator.recover()

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise OSError("disk full")

    real = coordinator.store.write_pending
    coordinator.store.write_pending = broken  # type: ignore[method-assign]
    coordinator.snapshot(1, {}, {})  # one failure is tolerated
    assert coordinator.stats.failed == 1
    coordinator.store.write_pending = real  # type: ignore[method-assign]
    coordinator.snapshot(2, {}, {})
    coordinator.finish()
    # The output prepared for failed checkpoint 1 is committed with checkpoint 2.
    assert ("a", "commit", 1) in log and ("a", "commit", 2) in log
    coordinator.store.write_pending = broken  # type: ignore[method-assign]
    coordinator.snapshot(3, {}, {})
    with pytest.raises(TooManyCheckpointFailuresError):
        coordinator.snapshot(4, {}, {})
    coordinator.close()


def test_two_deciding_sinks_are_refused(tmp_path: Path) -> None:
    durable: list[Decision] = []
    with pytest.raises(Exception, match="at most one deciding sink"):
        make(tmp_path, [Decider("x", [], durable), Decider("y", [], durable)])


@pytest.mark.parametrize("written", [None, 1, 3])
def test_a_checkpoint_of_another_runtime_format_is_refused_before_any_state(
    tmp_path: Path, written: int | None
) -> None:
    """Format 1 (float-second event time, before native windows) has no
    ``runtime_format`` key: its checkpoints are refused by name, never half-read."""
    coordinator, state = make(tmp_path, [Recorder("a", [])])
    coordinator.recover()
    state.put("k", 1)
    coordinator.snapshot(1, {"src": {"ch": 10}}, {"runtime_format": written})
    coordinator.finish()
    coordinator.close()
    again, restored = make(tmp_path, [Recorder("a", [])])
    shown = 1 if written is None else written
    with pytest.raises(RecoveryError, match=f"runtime format {shown}.*format {RUNTIME_FORMAT}"):
        again.recover()
    assert restored.get("k") is None  # nothing of it was loaded
    again.close()


def test_an_entry_too_large_for_a_chunk_fails_at_once_naming_it(tmp_path: Path) -> None:
    """Retrying cannot shrink it: no tolerable_failures rounds, a clear error."""
    coordinator, state = make(tmp_path, [Recorder("a", [])], tolerable_failures=5)
    coordinator.recover()
    with pytest.raises(RecordTooLargeError, match="state 'counts' key 'blob'"):
        state.put("blob", b"x" * ((64 << 20) + 1))  # refused where it is written
    state.put("parts", [b"x" * (1 << 20)] * 70)  # ~70 MiB once encoded: found at the write
    coordinator.snapshot(1, {"src": {"ch": 1}}, {})
    with pytest.raises(PipelineError, match=r"checkpoint 1 cannot be written.*'parts'"):
        coordinator.finish()
    assert coordinator.stats.failed == 0
    coordinator.close()
