"""Per-partition queues of record batches waiting to be sent, with the producer's memory budget.

User threads append records (``send``) or prebuilt Arrow batches (``send_batch``); the sender thread drains
ready batches — one at the head of each partition's queue — and puts failed ones back at the head to
retry, so a partition's batches leave in order. A record batch keeps its records as Python lists and is
turned into Arrow arrays, column by column, only when drained (:meth:`ProducerBatch.build`).

A batch is *ready* when it is full (another batch queued behind it, or ``batch_size`` reached), has waited
``linger_ms``, or a flush or close is in progress; a retried batch waits ``retry_backoff_ms`` first.

Thread-safety: one condition variable (:attr:`RecordAccumulator.cond`) guards everything here. It also
wakes the sender (``wakeup``) and the user threads blocked on a full ``buffer_memory``. Never call the
transport or user callbacks while holding it.
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import pyarrow as pa

from raystream.client.futures import BatchResult, RecordFuture
from raystream.errors import ClosedError, RequestTimeoutError
from raystream.protocol import TopicMetadata, TopicPartition
from raystream.storage.batch import TIMESTAMP_COLUMN
from raystream.storage.records import HEADER_TYPE, RECORD_SCHEMA

#: RECORD_SCHEMA plus the producer's CreateTime column: what ``send`` batches look like on the wire.
PRODUCE_SCHEMA = RECORD_SCHEMA.append(pa.field(TIMESTAMP_COLUMN, pa.int64(), nullable=False))

RECORDS, ROWS, ARROW = "records", "rows", "arrow"


class ProducerBatch:
    """Records for one partition, sent as one produce request. Appended to under the accumulator's lock
    until drained; from then on owned by the sender thread alone."""

    __slots__ = ("tp", "kind", "schema", "keys", "values", "headers", "has_headers", "timestamps", "rows",
                 "arrow", "size", "count", "created", "deadline", "result", "attempts", "retry_at", "closed")

    def __init__(self, tp: TopicPartition, kind: str, now: float, delivery_timeout_s: float,
                 schema: pa.Schema | None = None, arrow: pa.RecordBatch | None = None) -> None:
        self.tp, self.kind, self.schema, self.arrow = tp, kind, schema, arrow
        self.keys: list[bytes | None] = []
        self.values: list[bytes | None] = []
        self.headers: list[Any] = []
        self.has_headers = False
        self.timestamps: list[int] = []
        self.rows: list[dict[str, Any]] = []
        self.size = 0
        self.count = 0
        self.created = now
        self.deadline = now + delivery_timeout_s
        self.result = BatchResult(tp.topic, tp.partition)
        self.attempts = 0
        self.retry_at = 0.0
        self.closed = kind == ARROW
        if arrow is not None:
            self.count = self.result.record_count = arrow.num_rows
            self.size = arrow.nbytes

    def append(self, key: bytes | None, value: Any, headers: Any, timestamp: int, size: int) -> int:
        index = self.count
        if self.kind == ROWS:
            self.rows.append(value)
        else:
            self.keys.append(key)
            self.values.append(value)
            self.headers.append(headers)
            self.has_headers = self.has_headers or headers is not None
        self.timestamps.append(timestamp)
        self.size += size
        self.count += 1
        self.result.record_count = self.count
        return index

    def build(self) -> pa.RecordBatch:
        """The batch as Arrow (built once, then cached for retries)."""
        if self.arrow is None:
            timestamps = pa.array(self.timestamps, type=pa.int64())
            if self.kind == ROWS:
                data = pa.RecordBatch.from_pylist(self.rows, schema=self.schema)
                self.arrow = data.append_column(pa.field(TIMESTAMP_COLUMN, pa.int64(), nullable=False),
                                                timestamps)
            else:
                headers = (pa.array(self.headers, type=HEADER_TYPE) if self.has_headers
                           else pa.nulls(self.count, HEADER_TYPE))
                self.arrow = pa.RecordBatch.from_arrays(
                    [pa.array(self.keys, type=pa.binary()), pa.array(self.values, type=pa.binary()), headers,
                     timestamps], schema=PRODUCE_SCHEMA)
            self.keys = self.values = self.headers = self.rows = self.timestamps = []  # type: ignore[assignment]
        return self.arrow

    def split(self) -> list[ProducerBatch]:
        """Two batches holding this batch's first and second halves (it was too large for the broker)."""
        data = self.build()
        half = self.count // 2
        parts = []
        for result, (start, count) in zip(self.result.split([half, self.count - half]),
                                          ((0, half), (half, self.count - half)), strict=True):
            part = ProducerBatch(self.tp, ARROW, self.created, 0.0, arrow=data.slice(start, count))
            part.result, part.deadline, part.attempts = result, self.deadline, self.attempts
            part.size = self.size * count // self.count
            parts.append(part)
        parts[1].size = self.size - parts[0].size
        return parts


class RecordAccumulator:
    def __init__(self, *, batch_size: int, linger_ms: int, buffer_memory: int, max_block_ms: int,
                 delivery_timeout_ms: int, rng: random.Random | None = None) -> None:
        self.batch_size = batch_size
        self.linger_s = linger_ms / 1000
        self.buffer_memory = buffer_memory
        self.max_block_s = max_block_ms / 1000
        self.delivery_timeout_s = delivery_timeout_ms / 1000
        self.rng = rng or random.Random()
        self.cond = threading.Condition()
        self.wakeup = False  # set (under cond) when the sender must look again before sleeping
        self.flushing = 0
        self.closed = False
        self._queues: dict[tuple[str, int], deque[ProducerBatch]] = {}  # by (topic, partition): cheap keys
        self._used = 0
        self._incomplete: set[BatchResult] = set()
        self._sticky: dict[str, int] = {}

    # -- user threads ----------------------------------------------------------------------------------------
    def append(self, topic: str, partition: int | None, meta: TopicMetadata, kind: str, key: bytes | None,
               value: Any, headers: Any, timestamp: int, size: int, schema: pa.Schema | None = None
               ) -> RecordFuture:
        """Add one record; ``partition=None`` uses the topic's sticky partition (chosen among
        those of ``meta`` with a leader). Blocks up to ``max_block_ms`` while ``buffer_memory`` is exhausted."""
        with self.cond:
            self._reserve(size)
            if partition is None:
                partition = self._sticky_partition(topic, size, meta)
            queue = self._queues.get((topic, partition))
            if queue is None:
                queue = self._queues[(topic, partition)] = deque()
            batch = queue[-1] if queue else None
            if batch is None or batch.closed or not self._has_room(batch, size):
                batch = ProducerBatch(TopicPartition(topic, partition), kind, time.monotonic(), self.delivery_timeout_s, schema=schema)
                self._track(batch)
                queue.append(batch)
                self._wake()
            index = batch.append(key, value, headers, timestamp, size)
            if batch.size >= self.batch_size:
                self._wake()
            return RecordFuture(batch.result, index, timestamp)

    def append_arrow(self, tp: TopicPartition, data: pa.RecordBatch) -> BatchResult:
        """Queue a prebuilt batch (from ``send_batch``) as one produce request."""
        with self.cond:
            batch = ProducerBatch(tp, ARROW, time.monotonic(), self.delivery_timeout_s, arrow=data)
            self._reserve(batch.size)
            self._track(batch)
            self._queues.setdefault((tp.topic, tp.partition), deque()).append(batch)
            self._wake()
            return batch.result

    def pick_partition(self, meta: TopicMetadata) -> int:
        """A partition for a whole unkeyed ``send_batch``: the sticky one, which then moves on."""
        with self.cond:
            current = self._sticky.get(meta.name)
            if current is None or current >= len(meta.partitions):
                current = self._choose(meta, None)
            self._sticky[meta.name] = self._choose(meta, current)
            return current

    def _has_room(self, batch: ProducerBatch, size: int) -> bool:
        return batch.count == 0 or batch.size + size <= self.batch_size

    def _sticky_partition(self, topic: str, size: int, meta: TopicMetadata) -> int:
        current = self._sticky.get(topic)
        if current is not None:
            queue = self._queues.get((topic, current))
            if queue and not queue[-1].closed and self._has_room(queue[-1], size):
                return current
        choice = self._choose(meta, current)
        self._sticky[topic] = choice
        return choice

    def _choose(self, meta: TopicMetadata, avoid: int | None) -> int:
        """A random partition with a leader (any partition if none has one), other than ``avoid``."""
        available = [p.partition for p in meta.partitions if p.leader >= 0] or list(range(len(meta.partitions)))
        choices = [p for p in available if p != avoid] or available
        return self.rng.choice(choices)

    def _reserve(self, size: int) -> None:
        """Take ``size`` bytes of ``buffer_memory`` (call with the lock held); an oversized request is let
        through when nothing else is buffered."""
        deadline = None
        while True:
            if self.closed:
                raise ClosedError("producer is closed")
            if self._used == 0 or self._used + size <= self.buffer_memory:
                self._used += size
                return
            now = time.monotonic()
            if deadline is None:
                deadline = now + self.max_block_s
            if now >= deadline:
                raise RequestTimeoutError(
                    f"could not allocate {size} bytes of buffer_memory={self.buffer_memory} within "
                    f"max_block_ms={round(self.max_block_s * 1000)} ({self._used} bytes in use)")
            self.cond.wait(deadline - now)

    def _track(self, batch: ProducerBatch) -> None:
        result = batch.result
        self._incomplete.add(result)
        result.add_callback(lambda: self._untrack(result))

    def _untrack(self, result: BatchResult) -> None:
        with self.cond:
            self._incomplete.discard(result)

    def _wake(self) -> None:
        self.wakeup = True
        self.cond.notify_all()

    def incomplete(self) -> list[BatchResult]:
        with self.cond:
            return list(self._incomplete)

    # -- sender thread ---------------------------------------------------------------------------------------
    def drain(self, now: float, can_send: Callable[[TopicPartition], bool]) -> tuple[list[ProducerBatch], float]:
        """Pop the ready head batch of every partition ``can_send`` allows. Returns the batches and when
        (monotonic seconds) the next queued batch becomes ready or expires."""
        out: list[ProducerBatch] = []
        next_at = float("inf")
        with self.cond:
            self.wakeup = False
            urgent = self.flushing > 0 or self.closed
            empty = []
            for key, queue in self._queues.items():
                if not queue:
                    empty.append(key)
                    continue
                next_at = min(next_at, min(b.deadline for b in queue))
                batch = queue[0]
                if batch.retry_at > now:
                    next_at = min(next_at, batch.retry_at)
                    continue
                linger_at = batch.created + self.linger_s
                ready = (urgent or batch.closed or len(queue) > 1 or batch.size >= self.batch_size
                         or linger_at <= now)
                if not ready:
                    next_at = min(next_at, linger_at)
                    continue
                if not can_send(batch.tp):
                    continue
                queue.popleft()
                batch.closed = True
                out.append(batch)
            for key in empty:
                del self._queues[key]
        return out, next_at

    def expire(self, now: float) -> list[ProducerBatch]:
        """Remove and return queued batches whose delivery timeout has passed."""
        expired = []
        with self.cond:
            for key, queue in self._queues.items():
                if any(b.deadline <= now for b in queue):
                    expired.extend(b for b in queue if b.deadline <= now)
                    self._queues[key] = deque(b for b in queue if b.deadline > now)
        return expired

    def reenqueue(self, batches: list[ProducerBatch], retry_at: float) -> None:
        """Put batches back at the head of their partition's queue (in the given order) to retry."""
        with self.cond:
            for batch in reversed(batches):
                batch.retry_at = retry_at
                batch.closed = True
                self._queues.setdefault((batch.tp.topic, batch.tp.partition), deque()).appendleft(batch)
            self._wake()

    def release(self, batch: ProducerBatch) -> None:
        """Return a finished batch's bytes to ``buffer_memory``."""
        with self.cond:
            self._used -= batch.size
            self.cond.notify_all()

    def drain_all(self) -> list[ProducerBatch]:
        """Remove and return every queued batch (a forced close fails them)."""
        with self.cond:
            out = [b for queue in self._queues.values() for b in queue]
            self._queues.clear()
            return out

    def has_queued(self) -> bool:
        with self.cond:
            return any(self._queues.values())

    def topics_in_use(self) -> set[str]:
        with self.cond:
            return {topic for (topic, _), queue in self._queues.items() if queue}

    @property
    def used_bytes(self) -> int:
        return self._used
