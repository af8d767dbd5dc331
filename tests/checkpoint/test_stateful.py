"""Stateful property test: checkpoints and restores against a dict model.

Random interleavings of writes, deletes, full and incremental checkpoints,
retention and restores (of the newest or an older retained checkpoint, then
carrying on from it): every restore must equal the model as it was when that
checkpoint was taken.
"""

from __future__ import annotations

import shutil
import tempfile
from typing import Any

import numpy as np
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from eoscore.checkpoint import Checkpointer, FileCheckpointStorage
from eoscore.state import ColumnarState, ValueState

Model = tuple[dict[Any, Any], dict[int, int]]


class CheckpointMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="eoscore-stateful-")
        self.storage = FileCheckpointStorage(self.dir)
        self.values: dict[Any, Any] = {}
        self.counts: dict[int, int] = {}
        self.snaps: dict[int, Model] = {}
        self._fresh_states()

    def _fresh_states(self) -> None:
        self.v = ValueState("v")
        self.c = ColumnarState("c")
        self.cp = Checkpointer(
            self.storage, {"v": self.v, "c": self.c}, retain=3, max_chain=3, delta_ratio=0.6
        )

    def teardown(self) -> None:
        self.storage.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    @rule(key=st.integers(0, 40) | st.text(max_size=3), value=st.integers() | st.text(max_size=4))
    def put(self, key: Any, value: Any) -> None:
        self.v.put(key, value)
        self.values[key] = value

    @rule(key=st.integers(0, 40) | st.text(max_size=3))
    def delete(self, key: Any) -> None:
        assert self.v.delete(key) == (key in self.values)
        self.values.pop(key, None)

    @rule(keys=st.lists(st.integers(0, 200), min_size=1, max_size=30), amount=st.integers(-3, 3))
    def add(self, keys: list[int], amount: int) -> None:
        self.c.add(np.array(keys, np.int64), amount)
        for k in keys:
            self.counts[k] = self.counts.get(k, 0) + amount

    @rule(keys=st.lists(st.integers(0, 200), max_size=10))
    def remove(self, keys: list[int]) -> None:
        self.c.delete(np.array(keys, np.int64))
        for k in keys:
            self.counts.pop(k, None)

    @rule(full=st.booleans())
    def checkpoint(self, full: bool) -> None:
        done = self.cp.checkpoint({"n": len(self.snaps)}, full=full)
        self.snaps[done.checkpoint_id] = (dict(self.values), dict(self.counts))

    @rule(pick=st.integers(0, 2))
    def restore(self, pick: int) -> None:
        ids = self.storage.checkpoints()
        if not ids:
            return
        cid = ids[-1 - min(pick, len(ids) - 1)]
        self._fresh_states()
        manifest = self.cp.restore(cid)
        assert manifest is not None and manifest.checkpoint_id == cid
        values, counts = self.snaps[cid]
        self.values, self.counts = dict(values), dict(counts)

    @invariant()
    def live_state_matches_model(self) -> None:
        assert dict(self.v.items()) == self.values
        keys, cols = self.c.items()
        assert dict(zip(keys.tolist(), cols["value"].tolist(), strict=True)) == self.counts


CheckpointMachine.TestCase.settings = settings(
    max_examples=25, stateful_step_count=30, deadline=None
)
TestCheckpointMachine = CheckpointMachine.TestCase
