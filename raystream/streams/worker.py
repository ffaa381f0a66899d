"""A stream worker: one consumer-group member running the tasks of the partitions it is assigned (Kafka
Streams' ``StreamThread``).

The worker's consumer subscribes to every source topic of the application with the ``range`` assignor, so
partition ``p`` of co-partitioned topics lands on one member — the inputs of task ``<sub-topology>_p``.
Rebalances move tasks: ``on_revoke`` commits and closes the tasks leaving, ``on_assign`` opens (restores)
the tasks arriving, ``on_lost`` drops them without committing.

Each loop turn polls Arrow tables per partition, runs each through its task, and every
``commit_interval_ms`` commits:

* **at_least_once** — every task flushes its caches into the shared producer; the producer is flushed
  (every output and changelog record acknowledged), then the input offsets are committed.
* **exactly_once** — every task has its own transactional producer; a commit sends the task's input
  offsets to its transaction and commits it, so outputs, changelog records and offsets become visible
  together or not at all.

Not thread-safe: one thread runs :meth:`run_once` / :meth:`commit` / :meth:`close`; :meth:`status` and
:meth:`query` may be called from other threads (they read the task table, which is replaced, not
mutated, on rebalances).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from raystream.client.admin import Admin
from raystream.client.consumer import Consumer
from raystream.client.producer import Producer
from raystream.protocol import TopicPartition
from raystream.streams.task import StreamTask, TaskId
from raystream.streams.topology import Topology

log = logging.getLogger(__name__)

EXACTLY_ONCE, AT_LEAST_ONCE = "exactly_once", "at_least_once"


@dataclasses.dataclass(frozen=True)
class StreamsConfig:
    """Settings of a stream application (Kafka Streams' names, with underscores)."""

    application_id: str
    processing_guarantee: str = AT_LEAST_ONCE
    #: Kafka Streams: 30000 ms at-least-once, 100 ms exactly-once.
    commit_interval_ms: int | None = None
    poll_ms: int = 100
    state_dir: str = ""
    auto_offset_reset: str = "earliest"
    #: Records per poll (None: what the fetches buffered, bounded by ``fetch_max_bytes``).
    max_poll_records: int | None = None
    #: Reading a changelog or table topic while restoring: give up after this long without progress.
    restore_timeout_ms: int = 120_000
    cluster: Any = None
    consumer_config: dict = dataclasses.field(default_factory=dict)
    producer_config: dict = dataclasses.field(default_factory=dict)

    @property
    def commit_interval_s(self) -> float:
        default = 100 if self.processing_guarantee == EXACTLY_ONCE else 30_000
        return (self.commit_interval_ms if self.commit_interval_ms is not None else default) / 1000


class StreamWorker:
    def __init__(self, topology: Topology, config: StreamsConfig, worker_id: str) -> None:
        self.topology, self.config, self.worker_id = topology, config, worker_id
        self.exactly_once = config.processing_guarantee == EXACTLY_ONCE
        self.state_dir = f"{config.state_dir}/{config.application_id}"
        self.subs = {t: sub for sub in topology.subtopologies() for t in sub.source_topics}
        self.tasks: dict[TaskId, StreamTask] = {}
        self._schemas: dict[str, tuple] = {}
        cluster = config.cluster
        self.admin = Admin(cluster=cluster)
        self.consumer = Consumer(group_id=config.application_id, enable_auto_commit=False,
                                 isolation_level="read_committed", auto_offset_reset=config.auto_offset_reset,
                                 partition_assignment_strategy=["range"], client_id=f"{config.application_id}-"
                                 f"{worker_id}", cluster=cluster, **config.consumer_config)
        self.restore_consumer = Consumer(isolation_level="read_committed", enable_auto_commit=False,
                                         auto_offset_reset="earliest", cluster=cluster)
        self.producer = None if self.exactly_once else Producer(acks="all", cluster=cluster,
                                                                **config.producer_config)
        self.error: BaseException | None = None
        self._last_commit = time.monotonic()
        self._committed: dict[TopicPartition, int] = {}
        self.consumer.subscribe(topology.source_topics(), on_assign=self._on_assign, on_revoke=self._on_revoke,
                                on_lost=self._on_lost)

    # -- the loop ----------------------------------------------------------------------------------------
    def run_once(self) -> int:
        """One poll and the processing of what it returned; commits when the interval is due. Returns the
        number of records processed."""
        tables = self.consumer.poll_arrow_partitions(timeout=self.config.poll_ms / 1000,
                                                     max_records=self.config.max_poll_records)
        count = 0
        for tp, table in tables.items():
            task = self.tasks.get(TaskId(self.subs[tp.topic].id, tp.partition))
            if task is None:  # not ours any more (a rebalance ran inside poll)
                continue
            task.process(tp, table)
            count += table.num_rows
        if time.monotonic() - self._last_commit >= self.config.commit_interval_s:
            self.commit()
        return count

    def commit(self) -> None:
        """Flush every task and commit its input offsets with its outputs (see the module docstring)."""
        self._last_commit = time.monotonic()
        if self.exactly_once:
            for task in list(self.tasks.values()):
                offsets = task.flush()
                new = {tp: o for tp, o in offsets.items() if self._committed.get(tp) != o}
                if new or task.pending_output:
                    if offsets:
                        task.producer.send_offsets_to_transaction(offsets, self.config.application_id)
                    task.producer.commit_transaction()
                    task.producer.begin_transaction()
                    task.pending_output = False
                    self._committed.update(offsets)
            return
        offsets: dict[TopicPartition, int] = {}
        for task in list(self.tasks.values()):
            offsets.update(task.flush())
        self.producer.flush()
        for task in self.tasks.values():
            task.pending_output = False
        new = {tp: o for tp, o in offsets.items() if self._committed.get(tp) != o}
        if new:
            self.consumer.commit(new)
            self._committed.update(new)

    # -- rebalances --------------------------------------------------------------------------------------
    def _task_ids(self, partitions: set[TopicPartition]) -> set[TaskId]:
        return {TaskId(self.subs[tp.topic].id, tp.partition) for tp in partitions if tp.topic in self.subs}

    def _on_assign(self, partitions: set[TopicPartition]) -> None:
        owned = self.consumer.assignment()
        tasks = dict(self.tasks)
        for task_id in sorted(self._task_ids(owned), key=lambda t: (t.subtopology, t.partition)):
            if task_id in tasks:
                continue
            sub = self.topology.subtopologies()[task_id.subtopology]
            task = StreamTask(task_id, sub, self.topology, self)
            restored = task.restore()
            log.info("%s: task %s restored %d records", self.worker_id, task_id, restored)
            tasks[task_id] = task
        self.tasks = tasks

    def _on_revoke(self, partitions: set[TopicPartition]) -> None:
        if self.error is None:
            self.commit()
        self._close_tasks(self._task_ids(partitions), clean=self.error is None)

    def _on_lost(self, partitions: set[TopicPartition]) -> None:
        self._close_tasks(self._task_ids(partitions), clean=False)

    def _close_tasks(self, task_ids: set[TaskId], clean: bool) -> None:
        tasks = dict(self.tasks)
        for task_id in task_ids:
            task = tasks.pop(task_id, None)
            if task is None:
                continue
            for tp in task.inputs:
                self._committed.pop(tp, None)
            try:
                task.close(clean)
            finally:
                if self.exactly_once:
                    self._close_producer(task.producer, abort=not clean)
        self.tasks = tasks

    @staticmethod
    def _close_producer(producer: Producer, abort: bool) -> None:
        try:
            if abort:
                producer.abort_transaction()
        except Exception as exc:  # fenced or already ended: the transaction is over either way
            log.info("abort on close: %s", exc)
        producer.close()

    # -- what tasks ask of the worker ----------------------------------------------------------------------
    def producer_for(self, task: StreamTask) -> Producer:
        if not self.exactly_once:
            return self.producer
        producer = Producer(transactional_id=f"{self.config.application_id}-{task.id}", acks="all",
                            cluster=self.config.cluster, **self.config.producer_config)
        producer.init_transactions()  # fences the task's previous owner and aborts what it left open
        producer.begin_transaction()
        return producer

    def _describe(self, topic: str) -> tuple:
        if topic not in self._schemas:
            desc = self.admin.describe_topic(topic)
            self._schemas[topic] = (desc.schema, desc.key_column)
        return self._schemas[topic]

    def topic_schema(self, topic: str) -> pa.Schema | None:
        return self._describe(topic)[0]

    def key_column(self, topic: str) -> str | None:
        return self._describe(topic)[1]

    def end_offset(self, tp: TopicPartition) -> int:
        return self.restore_consumer.end_offsets([tp])[tp]

    def committed(self, tp: TopicPartition) -> int | None:
        return self.consumer.committed([tp])[tp]

    def read(self, tp: TopicPartition, start: int, end: int) -> Iterator[pa.Table]:
        """The records of ``tp`` in ``[start, end)`` (read_committed), as tables."""
        if start >= end:
            return
        consumer = self.restore_consumer
        consumer.assign([tp])
        consumer.seek(tp, start)
        deadline = time.monotonic() + self.config.restore_timeout_ms / 1000
        try:
            while consumer.position(tp) < end:
                for _, table in consumer.poll_arrow_partitions(timeout=0.5).items():
                    deadline = time.monotonic() + self.config.restore_timeout_ms / 1000
                    offsets = table.column("offset").to_numpy()
                    yield table.slice(0, int((offsets < end).sum()))
                if time.monotonic() > deadline:
                    raise TimeoutError(f"restoring from {tp}: no progress for {self.config.restore_timeout_ms} "
                                       f"ms at offset {consumer.position(tp)} of {end}")
        finally:
            consumer.assign([])

    # -- status and shutdown -----------------------------------------------------------------------------
    def status(self) -> dict:
        tasks = self.tasks
        return {"worker": self.worker_id, "error": None if self.error is None else repr(self.error),
                "tasks": {str(t): {"inputs": sorted(f"{tp.topic}-{tp.partition}" for tp in task.inputs),
                                   "state_bytes": task.state_size_bytes(),
                                   **dataclasses.asdict(task.metrics)} for t, task in tasks.items()}}

    def query(self, store: str, key: bytes) -> tuple[bool, Any]:
        """(owned, value): whether a task of this worker holds ``key``'s partition of ``store``."""
        for task in list(self.tasks.values()):
            if store in task.sub.stores and task.partition == self._partition_of(task, key):
                return True, task.query(store, key)
        return False, None

    def _partition_of(self, task: StreamTask, key: bytes) -> int:
        from raystream.core.partitioner import partition_for_key

        topic = task.sub.source_topics[0]
        return partition_for_key(key, len(self.consumer.partitions_for_topic(topic)))

    def close(self) -> None:
        """Commit (unless failed), close every task (checkpoints), leave the group."""
        try:
            if self.error is None:
                self.commit()
            self._close_tasks(set(self.tasks), clean=self.error is None)
        finally:
            self.consumer.close()
            self.restore_consumer.close()
            if self.producer is not None:
                self.producer.close()
            self.admin.close()
