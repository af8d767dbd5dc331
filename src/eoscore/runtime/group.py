"""Scale-out on Kafka: one pipeline *task* per input partition, spread over workers
by a consumer group (Kafka Streams' task model).

Each worker process runs ``GroupWorker``. A consumer in the group is used only
for membership: the group assigns partitions to workers. For every assigned
partition the worker runs ``build(partition)`` (a pipeline that reads just
that partition) as a task on its own thread, with its checkpoints in
``state_root/<topic>/<partition>`` (storage every worker can reach). On revoke the
task stops with a final checkpoint before the partition is released; on
assign a task recovers from the partition's decided checkpoint, so keyed
state moves with its partition. A task's ``KafkaSink`` uses a transactional
id derived from the partition: a new owner fences the old one (a zombie
cannot commit) and aborts its open transaction.

A pipeline whose ``key_by`` changes the key runs as two *stages* joined by
an internal topic (``eoscore.pipeline.repartition``): ``stages`` maps each
topic a stage reads to its ``build``, the group subscribes to all of them,
and a task is one partition of one of those topics.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from confluent_kafka import Consumer, TopicPartition

from eoscore.errors import EosError
from eoscore.runtime.config import CheckpointConfig

if TYPE_CHECKING:
    from eoscore.pipeline.builder import Pipeline

log = logging.getLogger(__name__)

__all__ = ["GroupWorker"]


class _Task:
    def __init__(self, name: str, pipeline: Pipeline, state: Path, config: CheckpointConfig):
        self.name = name
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self._pipeline = pipeline
        self._state = state
        self._config = config
        self.thread = threading.Thread(target=self._run, name=f"eoscore-task-{name}")

    def _run(self) -> None:
        for attempt in range(100):
            try:
                self._pipeline.run(self._state, self._config, stop=self.stop)
                return
            except EosError as exc:
                # The previous owner (a worker being removed) still holds the
                # storage lock: wait for it to let go.
                if "LOCK is held" not in str(exc) or self.stop.is_set():
                    self.error = exc
                    return
                log.info("task %s: storage busy (attempt %d); retrying", self.name, attempt)
                time.sleep(0.2)
            except BaseException as exc:
                self.error = exc
                log.exception("task %s failed", self.name)
                return


class GroupWorker:
    """Runs the tasks of the partitions the group assigns to this worker.

    ``stages`` maps a topic to the ``build(partition)`` of the pipeline that
    reads one of its partitions (one entry, or one per stage of a
    repartitioned pipeline). A task's checkpoints live in
    ``state_root/<topic>/<partition>``.
    """

    def __init__(
        self,
        stages: Mapping[str, Callable[[int], Pipeline]],
        bootstrap: str,
        group_id: str,
        state_root: str | os.PathLike[str],
        checkpoints: CheckpointConfig | None = None,
        *,
        session_timeout_ms: int = 6000,
    ) -> None:
        if not stages:
            raise EosError("GroupWorker needs at least one stage")
        self.stages = dict(stages)
        self.state_root = Path(state_root)
        self.config = checkpoints or CheckpointConfig()
        self.tasks: dict[tuple[str, int], _Task] = {}
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": group_id,
                "enable.auto.commit": False,
                "session.timeout.ms": session_timeout_ms,
                "heartbeat.interval.ms": max(100, session_timeout_ms // 6),
                "partition.assignment.strategy": "range",
            }
        )

    def _log_owned(self) -> None:
        log.info("owns [%s]", ", ".join(f"{t}/{p}" for t, p in sorted(self.tasks)))

    def _assign(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            key = (tp.topic, tp.partition)
            task = _Task(
                f"{tp.topic}/{tp.partition}",
                self.stages[tp.topic](tp.partition),
                self.state_root / tp.topic / str(tp.partition),
                self.config,
            )
            self.tasks[key] = task
            task.thread.start()
        self._log_owned()

    def _revoke(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        # Checkpoint before the partition leaves: each task stops with a final checkpoint.
        keys = [(tp.topic, tp.partition) for tp in partitions]
        for key in keys:
            task = self.tasks.get(key)
            if task is not None:
                task.stop.set()
        for key in keys:
            task = self.tasks.pop(key, None)
            if task is not None:
                task.thread.join()
        self._log_owned()

    def run(self, stop: threading.Event) -> None:
        """Take part in the group until ``stop``; a failed task stops the worker."""
        self.consumer.subscribe(list(self.stages), on_assign=self._assign, on_revoke=self._revoke)
        try:
            while not stop.is_set():
                self.consumer.poll(0.1)  # membership and heartbeats; tasks read the records
                assigned = self.consumer.assignment()
                if assigned:
                    self.consumer.pause(assigned)
                for task in list(self.tasks.values()):
                    if task.error is not None:
                        raise EosError(f"task {task.name} failed: {task.error}") from task.error
        finally:
            self._revoke(self.consumer, [TopicPartition(t, p) for t, p in list(self.tasks)])
            self.consumer.close()
