"""The producer's background I/O thread.

Loop: collect finished requests → expire requests past ``request_timeout_ms`` and queued batches past
``delivery_timeout_ms`` → refresh metadata that went stale → drain ready batches and send each to its
partition's leader → sleep until the next linger / backoff / timeout deadline or a wakeup.

Pipelining and ordering: up to ``max_in_flight`` (``max_in_flight_requests_per_connection``, default 5 as
in Kafka) produce requests are in flight per partition. Only full batches are pipelined: a batch sent
because its ``linger_ms`` passed waits for the partition's request in flight, collecting records meanwhile.
Requests stay in order because a replica actor runs the requests of one caller in submission order and
appends a batch before its first suspension point. When a request of a partition fails with a retriable
error (or must be split), that partition stops pipelining: nothing new is sent to it until every request
still in flight to it has finished, then the failed batches go back to the head of its queue in their
original order, and the partition sends one request at a time until one succeeds. As in Kafka without
idempotence, a retry can still reorder records: a request sent after the failed one may have succeeded
meanwhile and is not undone (``max_in_flight_requests_per_connection=1`` keeps strict order across
retries).

Retries: an error flagged ``retriable`` is retried after ``retry_backoff_ms`` while ``retries`` and the
batch's delivery timeout allow (``invalid_metadata`` also schedules a metadata refresh); a batch the broker
finds too large is split in two and retried; anything else fails the batch's futures.

Thread-safety: the in-flight table and the completion queue belong to this thread; transport callbacks
(any thread) only append to the completion queue and wake the thread through the accumulator's condition.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import deque
from concurrent.futures import Future

from raystream.client.accumulator import ProducerBatch, RecordAccumulator
from raystream.client.base import BaseTransport, failed_future
from raystream.client.metadata import MetadataCache
from raystream.errors import ClosedError, RecordTooLargeError, RequestTimeoutError
from raystream.protocol import TopicPartition

log = logging.getLogger(__name__)

#: Longest sleep between loop turns even when nothing is due (bounds the effect of any missed wakeup).
MAX_IDLE_S = 1.0


@dataclasses.dataclass(eq=False)
class _InFlight:
    batch: ProducerBatch
    future: Future
    deadline: float


class Sender:
    def __init__(self, accumulator: RecordAccumulator, metadata: MetadataCache, transport: BaseTransport, *,
                 acks: int, retries: int, retry_backoff_ms: int, request_timeout_ms: int,
                 delivery_timeout_ms: int, name: str, max_in_flight: int = 1) -> None:
        self.acc = accumulator
        self.metadata = metadata
        self.transport = transport
        self.acks = acks
        self.retries = retries
        self.backoff_s = retry_backoff_ms / 1000
        self.request_timeout_ms = request_timeout_ms
        self.delivery_timeout_ms = delivery_timeout_ms
        self.max_in_flight = max_in_flight
        self._inflight: dict[TopicPartition, list[_InFlight]] = {}  # per partition, in send order
        self._held: dict[TopicPartition, list[ProducerBatch]] = {}  # failed; retried once in-flight ones end
        self._single: set[TopicPartition] = set()  # recovering from an error: one request at a time
        self._seq = 0
        self._completions: deque[tuple[TopicPartition, _InFlight]] = deque()
        self._closing = False
        self._force = False
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    # -- control (any thread) --------------------------------------------------------------------------------
    def start(self) -> None:
        self.thread.start()

    def initiate_close(self) -> None:
        """Send everything still queued, then stop."""
        with self.acc.cond:
            self._closing = True
            self.acc.closed = True
            self.acc.wakeup = True
            self.acc.cond.notify_all()

    def force_close(self) -> None:
        """Stop now: fail everything queued or in flight with ClosedError."""
        with self.acc.cond:
            self._force = True
            self.acc.wakeup = True
            self.acc.cond.notify_all()

    def wake(self) -> None:
        with self.acc.cond:
            self.acc.wakeup = True
            self.acc.cond.notify_all()

    # -- the loop --------------------------------------------------------------------------------------------
    def _run(self) -> None:
        log.debug("producer sender thread started")
        while True:
            try:
                if self._run_once():
                    break
            except Exception:  # a bug must not silently strand every pending record
                log.exception("producer sender loop failed; continuing")
                with self.acc.cond:
                    self.acc.cond.wait(self.backoff_s)
        log.debug("producer sender thread stopped")

    def _run_once(self) -> bool:
        """One turn of the loop; True when the thread should exit."""
        self._process_completions()
        if self._force:
            self._abort_everything()
            return True
        now = time.monotonic()
        self._expire_inflight(now)
        for batch in self.acc.expire(now):
            self._fail(batch, self._expired(batch, None))
        metadata_at = self._refresh_metadata(now)
        batches, next_at = self.acc.drain(now, self._can_send, self._inflight.__contains__)
        for batch in batches:
            self._send(batch, now)
        if self._inflight:
            next_at = min(next_at, min(e.deadline for es in self._inflight.values() for e in es))
        next_at = min(next_at, metadata_at)
        with self.acc.cond:
            if self._completions or self.acc.wakeup or self._force:
                return False
            if self._closing and not self._inflight and not self.acc.has_queued():
                return True
            self.acc.cond.wait(min(MAX_IDLE_S, max(0.0, next_at - time.monotonic())))
        return False

    def _can_send(self, tp: TopicPartition) -> int:
        """How many more requests may go to ``tp`` now."""
        if tp in self._held:
            return 0
        inflight = self._inflight.get(tp)
        room = (1 if tp in self._single else self.max_in_flight) - (len(inflight) if inflight else 0)
        if room <= 0:
            return 0
        if self.metadata.leader(tp) is None:
            self.metadata.request_update(tp.topic)
            return 0
        return room

    def _refresh_metadata(self, now: float) -> float:
        in_use = self.acc.topics_in_use() | {tp.topic for tp in self._inflight} | {tp.topic for tp in self._held}
        topics, next_at = self.metadata.due(now, in_use)
        if topics:
            try:
                self.metadata.refresh(topics)
            except Exception as exc:  # the controller may be restarting: try again after a backoff
                log.warning("metadata refresh for %s failed: %s", topics, exc)
                for topic in topics:
                    self.metadata.request_update(topic)
            next_at = min(next_at, now + self.backoff_s)
        return next_at

    def _send(self, batch: ProducerBatch, now: float) -> None:
        tp = batch.tp
        leader = self.metadata.leader(tp)
        assert leader is not None, f"{tp} drained without a leader"
        broker, epoch = leader
        try:
            data = batch.build()
        except Exception as exc:  # e.g. a row that does not fit the topic's schema
            self._fail(batch, exc)
            return
        batch.attempts += 1
        if batch.attempts == 1:
            self._seq += 1
            batch.seq = self._seq
        try:
            future = self.transport.produce(tp, broker, data, self.acks, self.request_timeout_ms, epoch)
        except Exception as exc:  # transports should return failed futures; be safe anyway
            future = failed_future(exc)
        entry = _InFlight(batch, future, now + self.request_timeout_ms / 1000)
        self._inflight.setdefault(tp, []).append(entry)
        if self.acks == 0:  # fire and forget: done once handed to the transport (offsets unknown)
            batch.result.complete(-1, -1, -1)
        future.add_done_callback(lambda _f, tp=tp, entry=entry: self._on_done(tp, entry))

    def _on_done(self, tp: TopicPartition, entry: _InFlight) -> None:
        with self.acc.cond:
            self._completions.append((tp, entry))
            self.acc.wakeup = True
            self.acc.cond.notify_all()

    def _process_completions(self) -> None:
        while self._completions:
            tp, entry = self._completions.popleft()
            if not self._remove_inflight(tp, entry):
                continue  # it had timed out already; the batch was retried or failed then
            exc = entry.future.exception()
            if self.acks == 0:
                if exc is not None:
                    log.debug("acks=0 produce to %s failed: %s", tp, exc)
                self.acc.release(entry.batch)
            elif exc is None:
                result = entry.future.result()
                self._single.discard(tp)
                entry.batch.result.complete(result.base_offset, result.log_append_time, result.max_timestamp)
                self.acc.release(entry.batch)
            else:
                self._on_error(entry.batch, exc, time.monotonic())
            self._release_held(tp, time.monotonic())

    def _remove_inflight(self, tp: TopicPartition, entry: _InFlight) -> bool:
        entries = self._inflight.get(tp)
        if not entries or entry not in entries:
            return False
        entries.remove(entry)
        if not entries:
            del self._inflight[tp]
        return True

    def _expire_inflight(self, now: float) -> None:
        for tp, entries in list(self._inflight.items()):
            for entry in [e for e in entries if e.deadline <= now]:
                self._remove_inflight(tp, entry)
                if self.acks == 0:
                    self.acc.release(entry.batch)
                    continue
                self._on_error(entry.batch, RequestTimeoutError(
                    f"produce of {entry.batch.count} record(s) to {tp} got no response within "
                    f"request_timeout_ms={self.request_timeout_ms}"), now)
            self._release_held(tp, now)

    def _on_error(self, batch: ProducerBatch, exc: BaseException, now: float) -> None:
        if isinstance(exc, RecordTooLargeError) and batch.count > 1:
            log.info("splitting a batch of %d records to %s: %s", batch.count, batch.tp, exc)
            self._hold(batch.split(), 0.0)
            return
        if getattr(exc, "invalid_metadata", False):
            self.metadata.request_update(batch.tp.topic)
        if getattr(exc, "retriable", False):
            if now >= batch.deadline:
                exc = self._expired(batch, exc)
            elif batch.attempts <= self.retries:
                log.debug("retrying %d record(s) to %s after %s", batch.count, batch.tp, exc)
                self._hold([batch], now + self.backoff_s)
                return
        self._fail(batch, exc)

    def _hold(self, batches: list[ProducerBatch], retry_at: float) -> None:
        """Keep failed batches of a partition until its other requests in flight have finished (the
        partition stops pipelining meanwhile), then retry them in send order (``_release_held``)."""
        tp = batches[0].tp
        for batch in batches:
            batch.retry_at = retry_at
        self._held.setdefault(tp, []).extend(batches)
        self._single.add(tp)

    def _release_held(self, tp: TopicPartition, now: float) -> None:
        if tp in self._inflight or tp not in self._held:
            return
        batches = sorted(self._held.pop(tp), key=lambda b: b.seq)  # stable: split halves stay in order
        self.acc.reenqueue(batches, max(b.retry_at for b in batches))

    def _expired(self, batch: ProducerBatch, last: BaseException | None) -> RequestTimeoutError:
        cause = f"; last error: {type(last).__name__}: {last}" if last is not None else ""
        exc = RequestTimeoutError(
            f"expiring {batch.count} record(s) for {batch.tp}: delivery_timeout_ms={self.delivery_timeout_ms} "
            f"passed since batch creation{cause}", topic=batch.tp.topic, partition=batch.tp.partition)
        exc.__cause__ = last
        return exc

    def _fail(self, batch: ProducerBatch, exc: BaseException) -> None:
        batch.result.fail(exc)
        self.acc.release(batch)

    def _abort_everything(self) -> None:
        exc = ClosedError("producer was closed before these records were acknowledged")
        for entries in self._inflight.values():
            for entry in entries:
                self._fail(entry.batch, exc)
        self._inflight.clear()
        for batches in self._held.values():
            for batch in batches:
                self._fail(batch, exc)
        self._held.clear()
        for batch in self.acc.drain_all():
            self._fail(batch, exc)
