"""Per-partition queues of record batches waiting to be sent, with the producer's memory budget.

User threads append records (``send``) or prebuilt Arrow batches (``send_batch``); the sender thread drains
ready batches from the head of each partition's queue (as many as it may put in flight) and puts failed
ones back at the head to retry, so a partition's batches leave in order. A record batch keeps its records
as Python lists and is turned into Arrow arrays, column by column, only when drained
(:meth:`ProducerBatch.build`).

A batch is *ready* when it is full (another batch queued behind it, or ``batch_size`` reached), has waited
``linger_ms``, or a flush or close is in progress; a retried batch waits ``retry_backoff_ms`` first.

Thread-safety: one condition variable (:attr:`RecordAccumulator.cond`) guards everything here. It also
wakes the sender (:meth:`~RecordAccumulator.wake`, :meth:`~RecordAccumulator.await_wakeup`) and the user
threads blocked on a full ``buffer_memory``; the producer and the sender use these methods (and
``begin_flush`` / ``await_flush_completion``), never the condition itself. ``append`` (the per-record
path) takes the condition's (C-level) lock directly and notifies only when it starts a new batch or fills
one (the sender's linger timer covers the rest). Never call the transport or user callbacks while holding
it.
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import pyarrow as pa

from raystream.client.futures import BatchResult, RecordFuture, wait_all
from raystream.errors import ClosedError, RequestTimeoutError
from raystream.protocol import TopicMetadata, TopicPartition
from raystream.record import HEADER_TYPE, RECORD_SCHEMA, TIMESTAMP_COLUMN, increment_sequence

#: RECORD_SCHEMA plus the producer's CreateTime column: what ``send`` batches look like on the wire.
PRODUCE_SCHEMA = RECORD_SCHEMA.append(pa.field(TIMESTAMP_COLUMN, pa.int64(), nullable=False))

RECORDS, ROWS, ARROW = "records", "rows", "arrow"


def _binary_array(items: list[bytes | None]) -> pa.Array:
    """A binary array of ``items`` in one pass (``pa.array`` on a list of bytes is faster than joining
    the bytes and building offsets by hand); an all-null column (unkeyed records) costs nothing."""
    if items.count(None) == len(items):
        return pa.nulls(len(items), pa.binary())
    return pa.array(items, type=pa.binary())


def _closed(batches: list[ProducerBatch]) -> list[ProducerBatch]:
    """``batches``, taken out of their queues, marked closed: no append reaches them any more."""
    for batch in batches:
        batch.closed = True
    return batches


class ProducerBatch:
    """Records for one partition, sent as one produce request. Appended to under the accumulator's lock
    until drained; from then on owned by the sender thread alone."""

    __slots__ = ("tp", "kind", "schema", "keys", "values", "headers", "has_headers", "timestamps", "rows",
                 "arrow", "size", "count", "created", "deadline", "result", "attempts", "retry_at", "closed", "seq",
                 "part", "producer_id", "producer_epoch", "base_sequence", "sent_behind")

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
        self.seq = 0  # set by the sender when first sent: orders a partition's batches for retries
        self.part: tuple[int, ...] = ()  # which half of which half... of the batch ``seq`` it was split from
        # Idempotence (set by the sender when drained; kept across retries, cleared by a sequence reset):
        self.producer_id = self.producer_epoch = self.base_sequence = -1
        self.sent_behind = False  # last sent while an earlier batch of its partition was unfinished
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
            if headers is not None:
                if not self.has_headers:  # headers are kept only once a record has some
                    self.headers = [None] * index
                    self.has_headers = True
                self.headers.append(headers)
            elif self.has_headers:
                self.headers.append(None)
        self.timestamps.append(timestamp)
        self.size += size
        self.count = index + 1
        self.result.record_count = index + 1
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
                    [_binary_array(self.keys), _binary_array(self.values), headers, timestamps],
                    schema=PRODUCE_SCHEMA)
            self.keys = self.values = self.headers = self.rows = self.timestamps = []  # type: ignore[assignment]
        return self.arrow

    def split(self) -> list[ProducerBatch]:
        """Two batches holding this batch's first and second halves (it was too large for the broker).

        A sequenced batch's halves share out its sequence range (as Kafka's ProducerBatch.split): the first
        half keeps the base sequence, the second starts after it. The broker wrote nothing of the original,
        so the partition's sequence stays gapless and the batches sent after it keep theirs."""
        data = self.build()
        half = self.count // 2
        parts = []
        for index, (result, (start, count)) in enumerate(zip(self.result.split([half, self.count - half]),
                                                             ((0, half), (half, self.count - half)), strict=True)):
            part = ProducerBatch(self.tp, ARROW, self.created, 0.0, arrow=data.slice(start, count))
            part.result, part.deadline, part.attempts, part.seq = result, self.deadline, self.attempts, self.seq
            part.part = self.part + (index,)
            part.producer_id, part.producer_epoch = self.producer_id, self.producer_epoch
            if self.base_sequence >= 0:
                part.base_sequence = increment_sequence(self.base_sequence, start)
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
        self._lock = threading.RLock()  # re-entrant: the sender calls has_queued() holding cond
        self.cond = threading.Condition(self._lock)
        self.wakeup = False  # set (under cond) when the sender must look again before sleeping
        self.flushing = 0
        self.closed = False
        self._queues: dict[tuple[str, int], deque[ProducerBatch]] = {}  # by (topic, partition): cheap keys
        self._used = 0
        self._incomplete: set[BatchResult] = set()
        self._sticky: dict[str, int] = {}
        #: The open batch of each topic's sticky partition: where :meth:`append_sticky` puts unkeyed records
        #: without looking up the partition and its queue. A batch leaves its queue only closed, so an
        #: entry that is not closed is still its queue's last batch.
        self._open: dict[str, ProducerBatch] = {}

    # -- user threads ----------------------------------------------------------------------------------------
    def append(self, topic: str, partition: int | None, meta: TopicMetadata, kind: str, key: bytes | None,
               value: Any, headers: Any, timestamp: int, size: int, schema: pa.Schema | None = None
               ) -> RecordFuture:
        """Add one record; ``partition=None`` uses the topic's sticky partition (chosen among
        those of ``meta`` with a leader). Blocks up to ``max_block_ms`` while ``buffer_memory`` is exhausted."""
        with self._lock:  # the condition's own lock: C acquire/release, no Condition method calls
            if self.closed or (self._used and self._used + size > self.buffer_memory):
                self._reserve(size)  # raises, or blocks until memory is free
            else:
                self._used += size
            sticky = partition is None
            if sticky:
                partition = self._sticky_partition(topic, size, meta)
            queue = self._queues.get((topic, partition))
            if queue is None:
                queue = self._queues[(topic, partition)] = deque()
            batch = queue[-1] if queue else None
            if batch is None or batch.closed or (batch.count and batch.size + size > self.batch_size):
                batch = ProducerBatch(TopicPartition(topic, partition), kind, time.monotonic(),
                                      self.delivery_timeout_s, schema=schema)
                self._track(batch)
                queue.append(batch)
                self._wake()  # a new batch: the sender arms its linger timer
            if sticky:
                self._open[topic] = batch
            index = batch.append(key, value, headers, timestamp, size)
            if batch.size >= self.batch_size:
                self._wake()  # full: ready now
            return RecordFuture(batch.result, index, timestamp)

    def append_sticky(self, topic: str, value: bytes | None, timestamp: int, size: int) -> RecordFuture | None:
        """The per-record send's fast path: add an unkeyed record without headers to the open batch of the
        topic's sticky partition if it has room (and ``buffer_memory`` too); None means "use
        :meth:`append`", which also handles the first record, a full batch and blocking."""
        with self._lock:
            batch = self._open.get(topic)
            if (batch is None or batch.closed or self.closed or batch.size + size > self.batch_size
                    or self._used + size > self.buffer_memory or batch.has_headers):
                return None
            self._used += size
            index = batch.count
            batch.keys.append(None)
            batch.values.append(value)
            batch.timestamps.append(timestamp)
            batch.size += size
            batch.count = batch.result.record_count = index + 1
            if batch.size >= self.batch_size:
                self._wake()  # full: ready now
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

    # -- flush (user threads; Kafka's beginFlush / awaitFlushCompletion) ------------------------------------
    def begin_flush(self) -> None:
        """Make every queued batch ready now, ignoring ``linger_ms``, until the matching ``end_flush``."""
        with self.cond:
            self.flushing += 1
            self._wake()

    def end_flush(self) -> None:
        with self.cond:
            self.flushing -= 1

    def await_flush_completion(self, timeout: float | None) -> int:
        """Wait until every batch queued or in flight when called is done; returns how many are still
        pending when ``timeout`` (s) runs out (0: all done)."""
        pending = self.incomplete()
        if wait_all(pending, timeout):
            return 0
        return sum(1 for r in pending if not r.done())

    # -- waking the sender (any thread) ----------------------------------------------------------------------
    def wake(self) -> None:
        """Make the sender look again (at once if it sleeps in :meth:`await_wakeup`)."""
        with self._lock:
            self._wake()

    def close(self) -> None:
        """Refuse new records (appends raise ClosedError; what is queued is drained at once) and wake the
        sender."""
        with self._lock:
            self.closed = True
            self._wake()

    # -- sender thread ---------------------------------------------------------------------------------------
    def await_wakeup(self, timeout_s: float, ready: Callable[[], bool]) -> None:
        """Sleep up to ``timeout_s`` unless a wakeup is pending or ``ready()`` (the sender's own news, e.g.
        finished requests). Both are checked under the lock that :meth:`wake` takes, so news that comes
        with a wake() after the check is not missed."""
        with self._lock:
            if not (self.wakeup or ready()):
                self.cond.wait(timeout_s)

    def pause(self, timeout_s: float) -> None:
        """Sleep ``timeout_s``, or until the next wakeup, whether or not one is pending (the sender's pause
        after an unexpected error: a pending wakeup must not make it spin)."""
        with self._lock:
            self.cond.wait(timeout_s)

    def drain(self, now: float, can_send: Callable[[TopicPartition], int],
              busy: Callable[[TopicPartition], bool] | None = None) -> tuple[list[ProducerBatch], float]:
        """Pop ready batches from the head of every partition's queue, as many as ``can_send(tp)`` allows
        (an int; ``True`` means one), in queue order. Only *full* batches are pipelined: a batch ready just
        because its ``linger_ms`` passed waits while ``busy(tp)`` (a request to its partition is in flight)
        and so keeps collecting records — low-rate traffic stays batched instead of turning into a stream of
        tiny requests. Returns the batches and when (monotonic seconds) the next queued batch becomes ready
        or expires."""
        out: list[ProducerBatch] = []
        next_at = float("inf")
        with self._lock:
            self.wakeup = False
            urgent = self.flushing > 0 or self.closed
            empty = []
            for key, queue in self._queues.items():
                if not queue:
                    empty.append(key)
                    continue
                next_at = min(next_at, min(b.deadline for b in queue))
                allowed = None
                while queue:
                    batch = queue[0]
                    if batch.retry_at > now:
                        next_at = min(next_at, batch.retry_at)
                        break
                    linger_at = batch.created + self.linger_s
                    full = urgent or batch.closed or len(queue) > 1 or batch.size >= self.batch_size
                    if not full and linger_at > now:
                        next_at = min(next_at, linger_at)
                        break
                    if not full and (allowed is not None or (busy is not None and busy(batch.tp))):
                        break  # lingered but not full: wait for the request in flight (it wakes us)
                    if allowed is None:
                        allowed = int(can_send(batch.tp))
                    if allowed <= 0:
                        break
                    allowed -= 1
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
            return _closed(expired)

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

    def remove_queued(self, partitions: set[TopicPartition] | frozenset[TopicPartition]) -> list[ProducerBatch]:
        """Remove and return the batches queued for ``partitions`` (they cannot be sent: the sender fails
        them)."""
        with self.cond:
            return _closed([b for tp in partitions for b in self._queues.pop((tp.topic, tp.partition), ())])

    def drain_all(self) -> list[ProducerBatch]:
        """Remove and return every queued batch (a forced close fails them)."""
        with self.cond:
            out = [b for queue in self._queues.values() for b in queue]
            self._queues.clear()
            return _closed(out)

    def has_queued(self) -> bool:
        with self.cond:
            return any(self._queues.values())

    def topics_in_use(self) -> set[str]:
        with self.cond:
            return {topic for (topic, _), queue in self._queues.items() if queue}

    @property
    def used_bytes(self) -> int:
        return self._used
