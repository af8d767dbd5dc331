"""DedupState: the pipeline's dedup state, checkpointed incrementally in chunks.

Expected values come from a Python model (a dict of key -> generation), never
from the code under test.
"""

from __future__ import annotations

import copy
import gc
import math
import os
import tempfile
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from eoscore.checkpoint import Checkpointer, FileCheckpointStorage
from eoscore.checkpoint.checkpointer import restore_into
from eoscore.dedup import Deduplicator
from eoscore.errors import CorruptCheckpointError, EosError, RecordTooLargeError
from eoscore.state import ValueState
from eoscore.state.dedup import FORMAT_VERSION, DedupState

POOL: list[Any] = [0, 1, -1, 2**63, 2**64 - 1, -(2**63), 7, b"a", "a", b"", "", "payment-1"]
POOL += [f"id-{i}" for i in range(20)] + [i * 1000 for i in range(8)]
TTL = 30.0
GENS = 4
SPAN = TTL / (GENS - 1)
_SHM = "/dev/shm"


class Model:
    """What the state must remember: key -> generation it was first accepted in."""

    def __init__(self, ttl: float | None) -> None:
        self.ttl = ttl
        self.seen: dict[Any, int] = {}
        self.origin: float | None = None
        self.clock = 0.0
        self.gen = 0

    def _tick(self, t: float) -> None:
        if self.origin is None:
            self.origin = self.clock = t
        self.clock = max(self.clock, t)
        gen = math.floor((self.clock - self.origin) / SPAN)
        if gen > self.gen:
            self.gen = gen
            self.seen = {k: g for k, g in self.seen.items() if self.gen - g < GENS}

    def check(self, keys: list[Any], times: list[float] | None) -> list[bool]:
        out = []
        for i, k in enumerate(keys):
            if self.ttl is not None and times is not None:
                self._tick(times[i])
            new = k not in self.seen
            if new:
                self.seen[k] = self.gen
            out.append(new)
        return out


def _key(k: Any) -> tuple[str, Any]:
    return (type(k).__name__, k)


@settings(
    max_examples=25,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
class DedupStateMachine(RuleBasedStateMachine):
    """Batches, incremental and full checkpoints, restores of any earlier checkpoint."""

    ttl_setting: float | None = None

    @initialize()
    def setup(self) -> None:
        ttl = self.ttl_setting
        # tmpfs when there is one: the machine takes hundreds of fsynced checkpoints.
        self.tmp = tempfile.TemporaryDirectory(dir=_SHM if os.path.isdir(_SHM) else None)
        self.storage = FileCheckpointStorage(Path(self.tmp.name))
        self.ttl = ttl
        self.state = DedupState("d", 16, ttl=ttl)
        self.model = Model(ttl)
        self.cp = Checkpointer(
            self.storage, {"d": self.state}, retain=1000, max_chain=6, chunk_size=64 << 10
        )
        self.snapshots: dict[int, Model] = {}
        self.now = 0.0

    def teardown(self) -> None:
        if hasattr(self, "storage"):
            self.cp.wait()
            self.storage.close()
            self.tmp.cleanup()

    @rule(dt=st.sampled_from([1.0, 10.0, 25.0, 45.0]))
    def tick(self, dt: float) -> None:
        self.now += dt

    @rule(
        keys=st.lists(st.sampled_from(POOL), max_size=40),
        steps=st.lists(st.sampled_from([0.0, 0.5, 3.0, 10.0]), max_size=40),
        with_times=st.sampled_from([True, True, True, False]),
    )
    def batch(self, keys: list[Any], steps: list[float], with_times: bool) -> None:
        times = None
        if with_times and self.ttl is not None:
            times = []
            for i in range(len(keys)):
                self.now += steps[i] if i < len(steps) else 0.0
                times.append(self.now)
        want = self.model.check(keys, times)
        got = self.state.check_and_add(keys, None if times is None else np.array(times))
        assert got.tolist() == want

    @rule(full=st.booleans())
    def checkpoint(self, full: bool) -> None:
        done = self.cp.checkpoint(full=full)
        self.snapshots[done.checkpoint_id] = copy.deepcopy(self.model)

    @precondition(lambda self: bool(self.snapshots))
    @rule(data=st.data())
    def restore(self, data: st.DataObject) -> None:
        cid = data.draw(st.sampled_from(sorted(self.snapshots)))
        fresh = DedupState("d", 16, ttl=self.ttl)
        cp = Checkpointer(self.storage, {"d": fresh}, retain=1000, max_chain=6, chunk_size=64 << 10)
        self.cp.wait()
        cp.restore(cid)
        self.state, self.cp = fresh, cp
        self.model = copy.deepcopy(self.snapshots[cid])
        if self.model.origin is not None:
            self.now = max(self.now, self.model.clock)

    @invariant()
    def same_keys(self) -> None:
        if hasattr(self, "state"):
            assert len(self.state) == len(self.model.seen)
            assert len(self.state._log) == len(self.model.seen)


class DedupStateTtlMachine(DedupStateMachine):
    ttl_setting = TTL


TestDedupStateMachine = DedupStateMachine.TestCase
TestDedupStateTtlMachine = DedupStateTtlMachine.TestCase


# ---- unit tests ------------------------------------------------------------------


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[FileCheckpointStorage]:
    with FileCheckpointStorage(tmp_path / "cp") as s:
        yield s


def ids(lo: int, hi: int) -> list[str]:
    return [f"payment-{i:012d}" for i in range(lo, hi)]


def test_incremental_checkpoint_writes_only_new_keys(storage: FileCheckpointStorage) -> None:
    s = DedupState("d", 1000)
    s.check_and_add(ids(0, 200_000))
    cp = Checkpointer(storage, {"d": s})
    full = cp.checkpoint()
    s.check_and_add(ids(199_000, 201_000))  # 1,000 new
    inc = cp.checkpoint()
    assert full.full and not inc.full
    assert inc.entries_written == 1000 + 1  # the new keys and the control record
    assert inc.written_bytes < 0.02 * full.written_bytes
    same = cp.checkpoint()  # nothing happened: the chain is reused, nothing written
    assert same.written_bytes == 0
    fresh = DedupState("d", 10)
    restore_into(storage, same.checkpoint_id, {"d": fresh})
    assert len(fresh) == 201_000
    assert not fresh.check_and_add(ids(0, 201_000)).any()
    assert fresh.check_and_add(["payment-x"]).all()


def test_freeze_does_not_scan_the_keys() -> None:
    s = DedupState("d", 1000)
    for lo in range(0, 2_000_000, 200_000):
        s.check_and_add(ids(lo, lo + 200_000))
    started = time.perf_counter()
    for _ in range(20):
        s.freeze(incremental=False)
    per_freeze = (time.perf_counter() - started) / 20
    assert per_freeze < 0.005, per_freeze  # O(blocks): 2M keys are ~31 blocks


def test_ttl_expiry_survives_delta_chains(storage: FileCheckpointStorage) -> None:
    s = DedupState("d", 100, ttl=30.0)
    cp = Checkpointer(storage, {"d": s}, max_chain=100)
    model = Model(30.0)
    t = 0.0
    for step in range(40):
        keys = [f"k{(step * 7 + j) % 90}" for j in range(25)]
        times = [t + j * 0.4 for j in range(25)]
        t = times[-1]
        assert s.check_and_add(keys, np.array(times)).tolist() == model.check(keys, times)
        done = cp.checkpoint()
        fresh = DedupState("d", 100, ttl=30.0)
        restore_into(storage, done.checkpoint_id, {"d": fresh})
        assert len(fresh) == len(model.seen)
        probe = sorted({f"k{i}" for i in range(90)})
        assert fresh.deduplicator.check_and_add(probe).tolist() == [
            k not in model.seen for k in probe
        ]


def test_corrupt_chunk_raises_and_installs_nothing(storage: FileCheckpointStorage) -> None:
    s = DedupState("d", 1000)
    s.check_and_add(ids(0, 50_000))
    done = Checkpointer(storage, {"d": s}).checkpoint()
    seg = storage.read_manifest(done.checkpoint_id).states["d"].segments[0]
    path = storage.root / seg.file
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))
    target = DedupState("d", 10)
    target.check_and_add(["keep-me"])
    with pytest.raises(CorruptCheckpointError, match="checksum"):
        restore_into(storage, done.checkpoint_id, {"d": target})
    assert len(target) == 1 and not target.check_and_add(["keep-me"]).any()


def test_restorer_validates_rows() -> None:
    owner = DedupState("d", 10)
    src = DedupState("d", 10)
    src.check_and_add(["a", "b", 5])
    frozen = src.freeze(incremental=False)
    control = frozen._control
    rows = src._log.view(src._log.head, src._log.end)
    a, b, info = (np.concatenate(c) for c in zip(*rows.ranges(), strict=True))

    def build(ctrl: Any, cols: tuple[Any, Any, Any]) -> int:
        r = owner.restorer(owner.describe(), 3)
        r.begin_segment(True)
        r.deleted_column_keys(ctrl)
        r.columns(cols[0], [cols[1], cols[2]])
        return r.count()

    assert build(control, (a, b, info)) == 3
    four = control.copy()
    four[11] = 4
    with pytest.raises(CorruptCheckpointError, match="repeated"):  # a key twice
        build(four, (np.r_[a, a[:1]], np.r_[b, b[:1]], np.r_[info, info[:1]]))
    with pytest.raises(CorruptCheckpointError, match="says 4"):  # count differs
        build(four, (a, b, info))
    future = info.copy()
    future[0] += 4 << 2  # a generation after the current one
    with pytest.raises(CorruptCheckpointError):
        build(control, (a, b, future))
    wrong = control.copy()
    wrong[1] = FORMAT_VERSION + 1
    with pytest.raises(CorruptCheckpointError, match="format"):
        build(wrong, (a, b, info))
    assert len(owner) == 0  # nothing was installed


def test_unknown_format_and_settings_are_refused() -> None:
    s = DedupState("d", 10, ttl=5.0)
    with pytest.raises(ValueError, match="format 7"):
        s.restorer({"format": 7, "ttl": 5.0, "generations": 4})
    with pytest.raises(ValueError, match="ttl"):
        s.restorer({"format": FORMAT_VERSION, "ttl": 6.0, "generations": 4})


def test_format_1_checkpoint_still_restores(storage: FileCheckpointStorage) -> None:
    # What the old DedupNode wrote: a ValueState "<name>.seen" holding one snapshot,
    # its TTL and clock in seconds.
    old = Deduplicator(100, ttl=30.0)
    old.check_and_add(["a", "b", 3], [0.0, 1.0, 12.0])
    legacy = ValueState("d")
    legacy.put("snapshot", old.snapshot())
    done = Checkpointer(storage, {"d": legacy}).checkpoint()
    fresh = DedupState("d", 10, ttl=30.0 * 1_000_000)
    cp = Checkpointer(storage, {"d": fresh})
    cp.restore(done.checkpoint_id)
    assert len(fresh) == 3
    assert fresh.check_and_add(["a", 3, "c"], np.array([13e6, 13e6, 13e6])).tolist() == [
        False,
        False,
        True,
    ]
    # "a" (generation 0) expires once generation 4 starts, at 40 s: in microseconds now.
    assert fresh.check_and_add(["a", "b"], np.array([41e6, 41e6])).tolist() == [True, True]
    after = cp.checkpoint()  # the next checkpoint is a format-2 base
    assert after.full
    again = DedupState("d", 10, ttl=30.0 * 1_000_000)
    restore_into(storage, after.checkpoint_id, {"d": again})
    assert len(again) == len(fresh)
    other = DedupState("d", 10, ttl=60.0 * 1_000_000)
    with pytest.raises(ValueError, match="format 1"):
        restore_into(storage, done.checkpoint_id, {"d": other})


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_no_leak_over_checkpoint_and_restore_loops(storage: FileCheckpointStorage) -> None:
    keys = ids(0, 100_000)

    def step(i: int) -> None:
        s = DedupState("d", 1000, ttl=10.0)
        for j in range(5):
            s.check_and_add(keys[j * 20_000 : (j + 1) * 20_000], np.full(20_000, i * 50 + j))
        cp = Checkpointer(storage, {"d": s}, retain=1)
        done = cp.checkpoint(full=True)
        fresh = DedupState("d", 10, ttl=10.0)
        restore_into(storage, done.checkpoint_id, {"d": fresh})
        assert len(fresh) == len(s)

    for i in range(3):
        step(i)
    gc.collect()
    tracemalloc.start()
    traced0 = tracemalloc.get_traced_memory()[0]
    rss0 = _rss()
    for i in range(3, 23):
        step(i)
    gc.collect()
    traced = tracemalloc.get_traced_memory()[0] - traced0
    tracemalloc.stop()
    rss = _rss() - rss0
    # One leaked state per round would be 20 x ~7 MB (log and table of 100,000 keys).
    assert traced < 1 << 20, traced
    assert rss < 64 << 20, rss


def test_a_value_over_the_chunk_limit_names_its_state_and_key(
    storage: FileCheckpointStorage,
) -> None:
    # What killed the old dedup node: its whole deduplicator in one ValueState value.
    big = ValueState("node.seen")
    big.put("snapshot", b"x" * (64 << 20))
    pending = Checkpointer(storage, {"node.seen": big}).trigger()
    with pytest.raises(RecordTooLargeError) as info:
        pending.result()
    assert info.value.state == "node.seen" and info.value.key == "snapshot"
    assert "state 'node.seen' key 'snapshot'" in str(info.value)
    assert isinstance(info.value, EosError) and isinstance(info.value, ValueError)
