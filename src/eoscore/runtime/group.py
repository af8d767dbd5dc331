"""Scale-out on Kafka: one pipeline *task* per input partition, spread over workers
by a consumer group (Kafka Streams' task model).

Each worker process runs ``GroupWorker``. A consumer in the group is used only
for membership: the group assigns partitions to workers. For every assigned
partition the worker runs ``build(partition)`` (a pipeline that reads just
that partition) as a task on its own thread, with its checkpoints in
``state_root/<partition>`` (storage every worker can reach). On revoke the
task stops with a final checkpoint before the partition is released; on
assign a task recovers from the partition's decided checkpoint, so keyed
state moves with its partition. A task's ``KafkaSink`` uses a transactional
id derived from the partition: a new owner fences the old one (a zombie
cannot commit) and aborts its open transaction.

Not here yet: repartitioning when ``key_by`` changes the key (a keyed stream
must be partitioned by its key on input).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
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
    def __init__(self, partition: int, pipeline: Pipeline, state: Path, config: CheckpointConfig):
        self.partition = partition
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self._pipeline = pipeline
        self._state = state
        self._config = config
        self.thread = threading.Thread(target=self._run, name=f"eoscore-task-{partition}")

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
                log.info("task %d: storage busy (attempt %d); retrying", self.partition, attempt)
                time.sleep(0.2)
            except BaseException as exc:
                self.error = exc
                log.exception("task %d failed", self.partition)
                return


class GroupWorker:
    """Runs the tasks of the partitions the group assigns to this worker."""

    def __init__(
        self,
        build: Callable[[int], Pipeline],
        bootstrap: str,
        topic: str,
        group_id: str,
        state_root: str | os.PathLike[str],
        checkpoints: CheckpointConfig | None = None,
        *,
        session_timeout_ms: int = 6000,
    ) -> None:
        self.build = build
        self.topic = topic
        self.state_root = Path(state_root)
        self.config = checkpoints or CheckpointConfig()
        self.tasks: dict[int, _Task] = {}
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

    def _assign(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            task = _Task(
                tp.partition,
                self.build(tp.partition),
                self.state_root / str(tp.partition),
                self.config,
            )
            self.tasks[tp.partition] = task
            task.thread.start()
        log.info("assigned %s", sorted(tp.partition for tp in partitions))

    def _revoke(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        # Checkpoint before the partition leaves: each task stops with a final checkpoint.
        for tp in partitions:
            task = self.tasks.get(tp.partition)
            if task is not None:
                task.stop.set()
        for tp in partitions:
            task = self.tasks.pop(tp.partition, None)
            if task is not None:
                task.thread.join()
        log.info("revoked %s", sorted(tp.partition for tp in partitions))

    def run(self, stop: threading.Event) -> None:
        """Take part in the group until ``stop``; a failed task stops the worker."""
        self.consumer.subscribe([self.topic], on_assign=self._assign, on_revoke=self._revoke)
        try:
            while not stop.is_set():
                self.consumer.poll(0.1)  # membership and heartbeats; tasks read the records
                assigned = self.consumer.assignment()
                if assigned:
                    self.consumer.pause(assigned)
                for task in list(self.tasks.values()):
                    if task.error is not None:
                        raise EosError(
                            f"task for partition {task.partition} failed: {task.error}"
                        ) from task.error
        finally:
            self._revoke(self.consumer, [TopicPartition(self.topic, p) for p in list(self.tasks)])
            self.consumer.close()
