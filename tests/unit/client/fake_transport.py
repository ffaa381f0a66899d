"""An in-process stand-in for the controller and the partition replica actors.

Each partition is a list of stored Arrow batches (``_offset``, ``_timestamp``, then the user columns) with
a log start offset and a high watermark (= log end offset unless ``hold_high_watermark``). Leaders are
broker ids; a request to a non-leader fails with NotLeaderError as a real replica would. Tests inject
faults (``inject``), move leaders (``move_leader``), make produce responses wait (``hold_produce``) and
inspect every call (``calls``).

Idempotent produce requests are checked by the real ``ProducerStateManager`` (one per partition), exactly
as a replica checks them. ``inject("produce", ...)`` fails a request before anything is written;
``inject("produce_after_append", ...)`` writes it and then fails the response (a lost reply).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from concurrent.futures import Future
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raystream import errors
from raystream.client.base import BaseTransport
from raystream.core.producer_state import ProducerStateManager
from raystream.protocol import (
    EARLIEST,
    LATEST,
    BrokerInfo,
    FetchResult,
    PartitionInfo,
    PartitionState,
    ProduceResult,
    TopicDescription,
    TopicMetadata,
    TopicPartition,
)
from raystream.record import RECORD_SCHEMA, increment_sequence
from raystream.storage.batch import BatchHeader


@dataclasses.dataclass
class FakeLog:
    schema: pa.Schema
    batches: list[pa.RecordBatch] = dataclasses.field(default_factory=list)
    log_start_offset: int = 0
    log_end_offset: int = 0
    high_watermark: int = 0
    producers: ProducerStateManager = dataclasses.field(default_factory=lambda: ProducerStateManager("fake"))


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
        self.logs: dict[TopicPartition, FakeLog] = {}
        self.max_message_bytes: dict[str, int] = {}
        self.calls: list[tuple] = []
        self.faults: list[Fault] = []
        self.held: list[tuple[Future, Any]] = []
        self.holding = False
        self.holding_list_offset = False
        self.hold_hw = False
        self.holding_failures = False
        self.next_producer_id = 1000
        self._waiters: dict[TopicPartition, list[tuple[Future, tuple]]] = {}

    # -- helpers for tests -----------------------------------------------------------------------------------
    def add_topic(self, name: str, partitions: int = 1, schema: pa.Schema | None = None,
                  key_column: str | None = None, max_message_bytes: int = 1048588) -> TopicMetadata:
        with self.lock:
            schema_bytes = schema.serialize().to_pybytes() if schema is not None else None
            states = tuple(PartitionState(name, p, tuple(self.brokers), self.brokers[p % len(self.brokers)], 0,
                                          tuple(self.brokers)) for p in range(partitions))
            meta = TopicMetadata(name, states, {"max.message.bytes": max_message_bytes}, schema_bytes, key_column)
            self.topics[name] = meta
            self.max_message_bytes[name] = max_message_bytes
            for p in range(partitions):
                self.logs[TopicPartition(name, p)] = FakeLog(schema if schema is not None else RECORD_SCHEMA)
            return meta

    def set_leader(self, tp: TopicPartition, broker: int) -> None:
        """Move (or with -1, take offline) the leader; bumps the leader epoch."""
        with self.lock:
            meta = self.topics[tp.topic]
            parts = list(meta.partitions)
            old = parts[tp.partition]
            parts[tp.partition] = dataclasses.replace(old, leader=broker, leader_epoch=old.leader_epoch + 1)
            self.topics[tp.topic] = dataclasses.replace(meta, partitions=tuple(parts))

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
            log = self.logs[tp]
            log.log_start_offset = offset
            log.batches = [b.filter(pc.greater_equal(b.column("_offset"), offset)) for b in log.batches]
            log.batches = [b for b in log.batches if b.num_rows]

    def advance_high_watermark(self, tp: TopicPartition) -> None:
        with self.lock:
            log = self.logs[tp]
            log.high_watermark = log.log_end_offset
            self._wake(tp)

    def records(self, tp: TopicPartition) -> pa.Table:
        with self.lock:
            log = self.logs[tp]
            if not log.batches:
                return pa.Table.from_batches([], schema=_stored_schema(log.schema))
            return pa.Table.from_batches(log.batches)

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

    def _check_leader(self, tp: TopicPartition, broker: int, epoch: int | None) -> FakeLog:
        meta = self._topic(tp.topic)
        if tp.partition >= len(meta.partitions):
            raise errors.UnknownTopicOrPartitionError(f"unknown partition {tp}")
        state = meta.partitions[tp.partition]
        if state.leader != broker:
            raise errors.NotLeaderError(f"broker {broker} is not the leader of {tp}")
        if epoch is not None and epoch < state.leader_epoch:
            raise errors.FencedLeaderEpochError(f"epoch {epoch} < {state.leader_epoch}")
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
                     timeout_s: float | None = None) -> TopicMetadata:
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
                del self.logs[TopicPartition(name, p)]

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
        with self.lock:
            self.calls.append(("alter_topic_config", name, config))
            meta = self._topic(name)
            merged = {**meta.config, **config}
            self.topics[name] = dataclasses.replace(meta, config=merged)
            return merged

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
            for p in range(current, total):
                self.logs[TopicPartition(name, p)] = FakeLog(schema if schema is not None else RECORD_SCHEMA)
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
                base_sequence: int = -1) -> Future:
        with self.lock:
            self.calls.append(("produce", tp, broker_id, batch.num_rows, acks, batch, producer_id, producer_epoch,
                               base_sequence))
            try:
                self._fault("produce", tp)
                log = self._check_leader(tp, broker_id, leader_epoch)
                limit = self.max_message_bytes.get(tp.topic, 1 << 40)
                if batch.nbytes > limit:
                    raise errors.RecordTooLargeError(f"batch of {batch.nbytes} bytes > {limit}")
                duplicate = None
                if producer_id >= 0:
                    duplicate = log.producers.check_and_prepare(
                        producer_id, producer_epoch, base_sequence,
                        increment_sequence(base_sequence, batch.num_rows - 1), 0)
                if duplicate is not None:
                    result = ProduceResult(duplicate.base_offset, -1, log.log_start_offset,
                                           duplicate.last_offset - duplicate.base_offset + 1, duplicate.timestamp)
                else:
                    result = self._append(tp, log, batch, producer_id, producer_epoch, base_sequence)
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

    def _append(self, tp: TopicPartition, log: FakeLog, batch: pa.RecordBatch, producer_id: int = -1,
                producer_epoch: int = -1, base_sequence: int = -1) -> ProduceResult:
        names = [n for n in batch.schema.names if n != "_timestamp"]
        if names != log.schema.names:
            raise errors.SchemaMismatchError(f"{names} != {log.schema.names}")
        n = batch.num_rows
        now = time.time_ns() // 1_000_000
        if "_timestamp" in batch.schema.names:
            ts = batch.column("_timestamp").fill_null(now)
        else:
            ts = pa.array(np.full(n, now, dtype=np.int64))
        base = log.log_end_offset
        offsets = pa.array(np.arange(base, base + n, dtype=np.int64))
        stored = pa.RecordBatch.from_arrays([offsets, ts] + [batch.column(c) for c in log.schema.names],
                                            schema=_stored_schema(log.schema))
        log.batches.append(stored)
        log.log_end_offset += n
        max_ts = int(pc.max(ts).as_py())
        log.producers.update(BatchHeader(base, n - 1, n, max_ts, max_ts, 0, producer_id, producer_epoch,
                                         base_sequence), 0)
        if not self.hold_hw:
            log.high_watermark = log.log_end_offset
            self._wake(tp)
        return ProduceResult(base, -1, log.log_start_offset, n, max_ts)

    def _read(self, log: FakeLog, offset: int, max_bytes: int, columns: list[str] | None) -> tuple[list, int]:
        out, total, next_offset = [], 0, offset
        for batch in log.batches:
            offsets = batch.column("_offset").to_numpy()
            lo, hi = int(np.searchsorted(offsets, offset)), int(np.searchsorted(offsets, log.high_watermark))
            if lo >= hi:
                continue
            piece = batch.slice(lo, hi - lo)
            if columns is not None:
                piece = piece.select(["_offset", "_timestamp"] + [c for c in columns])
            if out and total + piece.nbytes > max_bytes:
                break
            out.append(piece)
            total += piece.nbytes
            next_offset = int(offsets[hi - 1]) + 1
        return out, next_offset

    def fetch(self, tp: TopicPartition, broker_id: int, offset: int, max_bytes: int, max_wait_ms: int,
              min_bytes: int, columns: list[str] | None = None, leader_epoch: int | None = None,
              row_filter: Any = None) -> Future:
        with self.lock:
            self.calls.append(("fetch", tp, broker_id, offset, columns))
            try:
                self._fault("fetch", tp)
                log = self._check_leader(tp, broker_id, leader_epoch)
                if columns is not None:
                    unknown = [c for c in columns if c not in log.schema.names]
                    if unknown:
                        raise ValueError(f"unknown columns {unknown}")
                if offset < log.log_start_offset or offset > log.high_watermark:
                    raise errors.OffsetOutOfRangeError(
                        f"offset {offset} out of range for {tp}", offset=offset,
                        log_start_offset=log.log_start_offset, log_end_offset=log.high_watermark)
                batches, next_offset = self._read(log, offset, max_bytes, columns)
            except Exception as exc:
                return self._done(exc=exc)
            if batches or max_wait_ms <= 0:
                return self._done(self._result(log, batches, next_offset))
            future: Future = Future()
            args = (offset, max_bytes, columns)
            self._waiters.setdefault(tp, []).append((future, args))
            timer = threading.Timer(max_wait_ms / 1000, self._expire_waiter, (tp, future, offset))
            timer.daemon = True
            timer.start()
            return future

    def _result(self, log: FakeLog, batches: list, next_offset: int) -> FetchResult:
        return FetchResult(batches, log.high_watermark, log.log_start_offset, log.log_end_offset, next_offset,
                           sum(b.nbytes for b in batches))

    def _wake(self, tp: TopicPartition) -> None:
        waiters = self._waiters.pop(tp, [])
        log = self.logs[tp]
        for future, (offset, max_bytes, columns) in waiters:
            if not future.done():
                try:
                    batches, next_offset = self._read(log, offset, max_bytes, columns)
                    future.set_result(self._result(log, batches, next_offset))
                except Exception as exc:  # pragma: no cover
                    future.set_exception(exc)

    def _expire_waiter(self, tp: TopicPartition, future: Future, offset: int) -> None:
        with self.lock:
            if future.done():
                return
            waiters = self._waiters.get(tp, [])
            self._waiters[tp] = [w for w in waiters if w[0] is not future]
            log = self.logs.get(tp)
            if log is None:
                future.set_exception(errors.UnknownTopicOrPartitionError(f"{tp} deleted"))
            else:
                future.set_result(self._result(log, [], offset))

    def list_offset(self, tp: TopicPartition, broker_id: int, spec: int) -> Future:
        with self.lock:
            self.calls.append(("list_offset", tp, broker_id, spec))
            try:
                self._fault("list_offset", tp)
                log = self._check_leader(tp, broker_id, None)
            except Exception as exc:
                return self._done(exc=exc)
            answer = self._list_offset(log, spec)
            if self.holding_list_offset:
                future: Future = Future()
                self.held.append((future, answer))
                return future
            return self._done(answer)

    @staticmethod
    def _list_offset(log: FakeLog, spec: int) -> int:
        if spec == EARLIEST:
            return log.log_start_offset
        if spec == LATEST:
            return log.high_watermark
        for batch in log.batches:
            for offset, ts in zip(batch.column("_offset").to_pylist(), batch.column("_timestamp").to_pylist(),
                                  strict=True):
                if ts >= spec and offset < log.high_watermark:
                    return offset
        return -1


def _stored_schema(schema: pa.Schema) -> pa.Schema:
    return pa.schema([pa.field("_offset", pa.int64(), nullable=False),
                      pa.field("_timestamp", pa.int64(), nullable=False)] + list(schema))


def wait_for(condition, timeout: float = 10.0, message: str = "condition") -> None:
    """Wait until ``condition()`` holds, failing with ``message`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {message}")
        time.sleep(0.002)
