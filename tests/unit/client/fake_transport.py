"""An in-process stand-in for the controller and the partition replica actors.

Each partition is a :class:`fake_partition.FakePartition`: a real ``raystream.storage.log.Log`` in a
temporary directory with the real core's produce / fetch / list-offsets decisions
(``raystream.core.partition``, the real ``ProducerStateManager`` for idempotence), so the client tests
exercise the decisions a replica makes. Leaders are broker ids; a request to a non-leader fails in the core
with NotLeaderError as a real replica would. Tests inject faults (``inject``), move leaders
(``set_leader``), make produce responses wait (``hold_produce``), hold the high watermark (``hold_hw``,
then ``advance_high_watermark``), delete a log's head (``truncate_front``) and inspect every call
(``calls``).

``inject("produce", ...)`` fails a request before anything is written; ``inject("produce_after_append",
...)`` writes it and then fails the response (a lost reply).
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import threading
import time
import weakref
from concurrent.futures import Future
from typing import Any

import pyarrow as pa
from fake_partition import FakePartition

from raystream import errors
from raystream.client.base import BaseTransport
from raystream.config import BrokerConfig, TopicConfig
from raystream.protocol import (
    BrokerInfo,
    ClusterConfig,
    FetchRequest,
    ListOffsetsRequest,
    PartitionInfo,
    PartitionState,
    ProduceRequest,
    TopicDescription,
    TopicMetadata,
    TopicPartition,
)
from raystream.record import RECORD_SCHEMA


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclasses.dataclass
class Fault:
    method: str
    exc: BaseException
    times: int
    tp: TopicPartition | None = None
    skip: int = 0  # let this many matching calls through first


class FakeTransport(BaseTransport):
    def __init__(self, cluster: str = "test", brokers: int = 3) -> None:
        self.cluster = cluster
        self.brokers = list(range(brokers))
        self.lock = threading.RLock()
        self.topics: dict[str, TopicMetadata] = {}
        #: One per partition (``.producers`` is its ProducerStateManager, ``.log`` its Log).
        self.logs: dict[TopicPartition, FakePartition] = {}
        self._directory = tempfile.TemporaryDirectory(prefix="raystream-fake-")
        self._closer = weakref.finalize(self, _close, self.logs, self._directory)
        self.max_message_bytes: dict[str, int] = {}
        self.calls: list[tuple] = []
        self.faults: list[Fault] = []
        self.held: list[tuple[Future, Any]] = []
        self.holding = False
        self.holding_list_offset = False
        self.hold_hw = False
        self.holding_failures = False
        self.next_producer_id = 1000
        #: What ``get_cluster_config`` reports, as a controller started with these would.
        self.broker_config = BrokerConfig()
        self.topic_defaults = TopicConfig()
        self._waiters: dict[TopicPartition, list[tuple[Future, int, FetchRequest]]] = {}

    def close(self) -> None:
        """Close every partition's log and remove the temporary directory (also done at collection)."""
        self._closer()

    # -- helpers for tests -----------------------------------------------------------------------------------
    def add_topic(self, name: str, partitions: int = 1, schema: pa.Schema | None = None,
                  key_column: str | None = None,
                  max_message_bytes: int = TopicConfig.max_message_bytes) -> TopicMetadata:
        with self.lock:
            schema_bytes = schema.serialize().to_pybytes() if schema is not None else None
            states = tuple(PartitionState(name, p, tuple(self.brokers), self.brokers[p % len(self.brokers)], 0,
                                          tuple(self.brokers)) for p in range(partitions))
            meta = TopicMetadata(name, states, {"max.message.bytes": max_message_bytes}, schema_bytes, key_column)
            self.topics[name] = meta
            self.max_message_bytes[name] = max_message_bytes
            for state in states:
                self._new_partition(state, schema, key_column, max_message_bytes)
            return meta

    def _new_partition(self, state: PartitionState, schema: pa.Schema | None, key_column: str | None,
                       max_message_bytes: int) -> None:
        directory = os.path.join(self._directory.name, f"{state.topic}-{state.partition}")
        self.logs[state.tp] = FakePartition(str(state.tp), directory, schema if schema is not None else RECORD_SCHEMA,
                                            key_column, max_message_bytes, list(self.brokers), state.leader,
                                            _now_ms())

    def set_leader(self, tp: TopicPartition, broker: int) -> None:
        """Move (or with -1, take offline) the leader; bumps the leader epoch."""
        with self.lock:
            meta = self.topics[tp.topic]
            parts = list(meta.partitions)
            old = parts[tp.partition]
            parts[tp.partition] = dataclasses.replace(old, leader=broker, leader_epoch=old.leader_epoch + 1)
            self.topics[tp.topic] = dataclasses.replace(meta, partitions=tuple(parts))
            self.logs[tp].elect(broker, old.leader_epoch + 1, _now_ms())

    def leader_of(self, tp: TopicPartition) -> int:
        return self.topics[tp.topic].partitions[tp.partition].leader

    def inject(self, method: str, exc: BaseException, times: int = 1, tp: TopicPartition | None = None,
               skip: int = 0) -> None:
        with self.lock:
            self.faults.append(Fault(method, exc, times, tp, skip))

    def hold_produce(self, failures: bool = False) -> None:
        """Apply produce requests but keep their responses until ``release`` (``failures``: failed ones too,
        so that responses are released strictly in request order)."""
        self.holding_failures = failures
        self.holding = True

    def release(self) -> None:
        with self.lock:
            self.holding = self.holding_list_offset = False
            held, self.held = self.held, []
        for future, result in held:
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)

    def truncate_front(self, tp: TopicPartition, offset: int) -> None:
        with self.lock:
            self.logs[tp].truncate_front(offset)

    def advance_high_watermark(self, tp: TopicPartition) -> None:
        with self.lock:
            self.logs[tp].advance_high_watermark()
            self._wake(tp)

    def records(self, tp: TopicPartition) -> pa.Table:
        with self.lock:
            return self.logs[tp].records()

    def values(self, tp: TopicPartition) -> list:
        return self.records(tp).column("value").to_pylist()

    def count(self, method: str) -> int:
        return sum(1 for c in self.calls if c[0] == method)

    # -- plumbing --------------------------------------------------------------------------------------------
    def _fault(self, method: str, tp: TopicPartition | None = None) -> None:
        with self.lock:
            for fault in self.faults:
                if fault.method == method and fault.times > 0 and (fault.tp is None or fault.tp == tp):
                    if fault.skip > 0:
                        fault.skip -= 1
                        continue
                    fault.times -= 1
                    raise fault.exc

    def _topic(self, name: str) -> TopicMetadata:
        meta = self.topics.get(name)
        if meta is None:
            raise errors.UnknownTopicOrPartitionError(f"unknown topic {name!r}", topic=name)
        return meta

    def _partition(self, tp: TopicPartition) -> FakePartition:
        meta = self._topic(tp.topic)
        if tp.partition >= len(meta.partitions):
            raise errors.UnknownTopicOrPartitionError(f"unknown partition {tp}")
        return self.logs[tp]

    @staticmethod
    def _done(value: Any = None, exc: BaseException | None = None) -> Future:
        future: Future = Future()
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(value)
        return future

    # -- controller ------------------------------------------------------------------------------------------
    def get_metadata(self, topics: list[str] | None = None, timeout_s: float | None = None) -> dict[str, TopicMetadata]:
        with self.lock:
            self.calls.append(("get_metadata", topics))
            self._fault("get_metadata")
            names = sorted(self.topics) if topics is None else topics
            return {name: self._topic(name) for name in names}

    def get_brokers(self, timeout_s: float | None = None) -> dict[int, BrokerInfo]:
        return {b: BrokerInfo(b, f"node{b}", "/tmp", f"/tmp/broker-{b}") for b in self.brokers}

    def create_topic(self, name: str, partitions: int | None, replication_factor: int | None,
                     config: dict | None = None,
                     schema_bytes: bytes | None = None, key_column: str | None = None,
                     timeout_s: float | None = None, creation_id: str | None = None) -> TopicMetadata:
        with self.lock:
            self.calls.append(("create_topic", name, partitions, replication_factor, config, schema_bytes, key_column))
            if name in self.topics:
                raise errors.TopicAlreadyExistsError(f"topic {name!r} already exists")
            schema = pa.ipc.read_schema(pa.py_buffer(schema_bytes)) if schema_bytes else None
            return self.add_topic(name, partitions or 1, schema, key_column)

    def delete_topic(self, name: str, timeout_s: float | None = None) -> None:
        with self.lock:
            self.calls.append(("delete_topic", name))
            meta = self._topic(name)
            del self.topics[name]
            for p in range(len(meta.partitions)):
                self.logs.pop(TopicPartition(name, p)).close()

    def list_topics(self, timeout_s: float | None = None) -> list[str]:
        self.calls.append(("list_topics",))
        return sorted(self.topics)

    def describe_topic(self, name: str, timeout_s: float | None = None) -> TopicDescription:
        with self.lock:
            self.calls.append(("describe_topic", name))
            meta = self._topic(name)
            infos = []
            for state in meta.partitions:
                log = self.logs[state.tp]
                infos.append(PartitionInfo(state.partition, f"node{state.leader}", state.leader_epoch,
                                           [f"node{b}" for b in state.replicas], [f"node{b}" for b in state.isr],
                                           log.log_start_offset, log.high_watermark, log.log_end_offset))
            return TopicDescription(name, infos, dict(meta.config), meta.schema)

    def alter_topic_config(self, name: str, config: dict, timeout_s: float | None = None) -> dict:
        """As the controller: validated over the topic's config (InvalidConfigurationError), resolved in full,
        and handed to every partition's log."""
        with self.lock:
            self.calls.append(("alter_topic_config", name, config))
            meta = self._topic(name)
            resolved = TopicConfig.from_dict(config, base=TopicConfig.from_dict(meta.config, base=self.topic_defaults))
            merged = resolved.to_dict()
            self.topics[name] = dataclasses.replace(meta, config=merged)
            for p in range(len(meta.partitions)):
                self.logs[TopicPartition(name, p)].log.config = resolved
            return merged

    def get_cluster_config(self, timeout_s: float | None = None) -> ClusterConfig:
        with self.lock:
            self.calls.append(("get_cluster_config",))
            self._fault("get_cluster_config")
            return ClusterConfig(self.broker_config.to_dict(), self.topic_defaults.to_dict())

    def create_partitions(self, name: str, total: int, timeout_s: float | None = None) -> TopicMetadata:
        with self.lock:
            self.calls.append(("create_partitions", name, total))
            meta = self._topic(name)
            current = len(meta.partitions)
            if total <= current:
                raise errors.InvalidPartitionsError(f"{name} has {current} partitions")
            schema = meta.schema
            new = tuple(PartitionState(name, p, tuple(self.brokers), self.brokers[p % len(self.brokers)], 0,
                                       tuple(self.brokers)) for p in range(current, total))
            for state in new:
                self._new_partition(state, schema, meta.key_column, self.max_message_bytes[name])
            self.topics[name] = dataclasses.replace(meta, partitions=meta.partitions + new)
            return self.topics[name]

    def init_producer_id(self, timeout_s: float | None = None) -> tuple[int, int]:
        with self.lock:
            self.calls.append(("init_producer_id",))
            self._fault("init_producer_id")
            self.next_producer_id += 1
            return self.next_producer_id - 1, 0

    # -- replicas --------------------------------------------------------------------------------------------
    def produce(self, tp: TopicPartition, broker_id: int, batch: pa.RecordBatch, acks: int, timeout_ms: int,
                leader_epoch: int | None = None, producer_id: int = -1, producer_epoch: int = -1,
                base_sequence: int = -1, replay: bool = False, transactional: bool = False) -> Future:
        with self.lock:
            self.calls.append(("produce", tp, broker_id, batch.num_rows, acks, batch, producer_id, producer_epoch,
                               base_sequence))
            request = ProduceRequest(batch, acks, timeout_ms, leader_epoch, producer_id, producer_epoch,
                                     base_sequence, replay, transactional)
            try:
                self._fault("produce", tp)
                result = self._partition(tp).produce(broker_id, request, _now_ms(), advance_hw=not self.hold_hw)
                if not self.hold_hw:
                    self._wake(tp)
                self._fault("produce_after_append", tp)
            except Exception as exc:
                if not (self.holding and self.holding_failures):
                    return self._done(exc=exc)
                result = exc
            if self.holding:
                future: Future = Future()
                self.held.append((future, result))
                return future
            return self._done(result)

    def fetch(self, tp: TopicPartition, broker_id: int, offset: int, max_bytes: int, max_wait_ms: int,
              min_bytes: int, columns: list[str] | None = None, leader_epoch: int | None = None,
              row_filter: Any = None, read_committed: bool = False) -> Future:
        """The replica's long poll: answered at once with ``min_bytes``, else when the high watermark moves
        far enough, else after ``max_wait_ms`` with what there is."""
        with self.lock:
            self.calls.append(("fetch", tp, broker_id, offset, columns))
            request = FetchRequest(offset, max_bytes, max_wait_ms, min_bytes, columns, leader_epoch, row_filter,
                                   read_committed)
            try:
                self._fault("fetch", tp)
                result = self._partition(tp).fetch(broker_id, request)
            except Exception as exc:
                return self._done(exc=exc)
            if result.bytes >= min_bytes or max_wait_ms <= 0:
                return self._done(result)
            future: Future = Future()
            self._waiters.setdefault(tp, []).append((future, broker_id, request))
            timer = threading.Timer(max_wait_ms / 1000, self._expire_waiter, (tp, future, broker_id, request))
            timer.daemon = True
            timer.start()
            return future

    def _wake(self, tp: TopicPartition) -> None:
        """The high watermark moved: answer the waiting fetches that now have ``min_bytes``."""
        partition = self.logs[tp]
        waiting = []
        for future, broker, request in self._waiters.pop(tp, []):
            if future.done():
                continue
            try:
                result = partition.fetch(broker, request)
            except Exception as exc:
                future.set_exception(exc)
                continue
            if result.bytes >= request.min_bytes:
                future.set_result(result)
            else:
                waiting.append((future, broker, request))
        if waiting:
            self._waiters[tp] = waiting

    def _expire_waiter(self, tp: TopicPartition, future: Future, broker: int, request: FetchRequest) -> None:
        with self.lock:
            if future.done():
                return
            self._waiters[tp] = [w for w in self._waiters.get(tp, []) if w[0] is not future]
            partition = self.logs.get(tp)
            if partition is None:
                future.set_exception(errors.UnknownTopicOrPartitionError(f"{tp} deleted"))
                return
            try:
                future.set_result(partition.fetch(broker, request))
            except Exception as exc:
                future.set_exception(exc)

    def list_offset(self, tp: TopicPartition, broker_id: int, spec: int, read_committed: bool = False) -> Future:
        with self.lock:
            self.calls.append(("list_offset", tp, broker_id, spec))
            try:
                self._fault("list_offset", tp)
                answer = self._partition(tp).list_offset(broker_id, ListOffsetsRequest(spec, read_committed))
            except Exception as exc:
                return self._done(exc=exc)
            if self.holding_list_offset:
                future: Future = Future()
                self.held.append((future, answer))
                return future
            return self._done(answer)

    def delete_records(self, tp: TopicPartition, broker_id: int, offset: int, timeout_ms: int,
                       leader_epoch: int | None = None) -> Future:
        with self.lock:
            self.calls.append(("delete_records", tp, broker_id, offset, timeout_ms))
            try:
                self._fault("delete_records", tp)
                low = self._partition(tp).delete_records(broker_id, offset, leader_epoch)
            except Exception as exc:
                return self._done(exc=exc)
            return self._done(low)


def _close(partitions: dict[TopicPartition, FakePartition], directory: tempfile.TemporaryDirectory) -> None:
    for partition in partitions.values():
        partition.close()
    partitions.clear()
    directory.cleanup()


def wait_for(condition, timeout: float = 10.0, message: str = "condition") -> None:
    """Wait until ``condition()`` holds, failing with ``message`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {message}")
        time.sleep(0.002)
