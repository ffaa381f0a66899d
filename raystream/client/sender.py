"""The producer's background I/O thread.

Loop: collect finished requests → expire requests past ``request_timeout_ms`` and queued batches past
``delivery_timeout_ms`` → refresh metadata that went stale → drain ready batches and send each to its
partition's leader → sleep until the next linger / backoff / timeout deadline or a wakeup.

Pipelining and ordering: up to ``max_in_flight`` (``max_in_flight_requests_per_connection``, default 5 as
in Kafka) produce requests are in flight per partition. Only full batches are pipelined: a batch sent
because its ``linger_ms`` passed waits for the partition's request in flight, collecting records meanwhile.
Pipelined requests are *not* guaranteed to reach the leader in order: Ray starts an async actor's
requests as their arguments arrive, and a large batch travelling through the object store can be
overtaken by the next one (measured: 2 inversions in 1M records sent as 121 pipelined 1 MiB requests).
With idempotence the leader orders them by sequence number (it holds a batch that is ahead until the ones
before it arrive) and records land in send order. Without idempotence they can land out of order, and, as
in Kafka, a retry can reorder records too: a request sent after a failed one may have succeeded meanwhile
and is not undone; ``max_in_flight_requests_per_connection=1`` keeps strict order. When a request of a
partition fails with a retriable error (or must be split), that partition stops pipelining: nothing new is
sent to it until every request still in flight to it has finished, then the failed batches go back to the
head of its queue in their original order, and the partition sends one request at a time until one
succeeds.

Idempotence, replay and transactions: what goes into a request's producer id, epoch and sequence, when
a partition may be sent to, and what an error of a sequenced batch means are the
:class:`~raystream.client.transaction_manager.TransactionManager`'s decisions (its module docstring has
the rules); this thread asks it and acts. Two requests besides produce: the producer id (idempotent and
replay producers; fetched from the controller before the first produce, retried after
``retry_backoff_ms``, queued batches meanwhile expire by their delivery timeout as usual), and a
transactional producer's AddPartitionsToTxn, sent asynchronously for all the partitions new to the
transaction at once; their batches stay queued until it succeeds while other partitions send on.

Retries: an error flagged ``retriable`` is retried after ``retry_backoff_ms`` while ``retries`` and the
batch's delivery timeout allow (``invalid_metadata`` also schedules a metadata refresh); a batch the broker
finds too large is split in two and retried; anything else fails the batch's futures.

Thread-safety: the in-flight table and the completion queues belong to this thread; transport callbacks
(any thread) only append to a completion queue and then wake the thread (``RecordAccumulator.wake``; the
thread checks the queues under the same lock before it sleeps, so no wakeup is lost). The transaction
manager is this thread's too, except its transaction state (see its docstring).
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
from raystream.client.transaction_manager import AddPartitionsRequest, TransactionManager, order
from raystream.errors import (
    ClosedError,
    NotLeaderError,
    OutOfOrderSequenceError,
    RecordTooLargeError,
    RequestTimeoutError,
)
from raystream.protocol import TopicPartition

log = logging.getLogger(__name__)

#: Longest sleep between loop turns even when nothing is due (bounds the effect of any missed wakeup).
MAX_IDLE_S = 1.0


@dataclasses.dataclass(eq=False)
class _InFlight:
    batch: ProducerBatch
    future: Future
    deadline: float
    leader: tuple[int, int] = (-1, -1)  # (broker, leader epoch) the request went to
    sent_at: float = 0.0


class Sender:
    def __init__(self, accumulator: RecordAccumulator, metadata: MetadataCache, transport: BaseTransport,
                 txn: TransactionManager, *, acks: int, retries: int, retry_backoff_ms: int,
                 request_timeout_ms: int, delivery_timeout_ms: int, name: str, max_in_flight: int = 1,
                 leader_recheck_ms: int = 1000) -> None:
        self.acc = accumulator
        self.txn = txn  # ids, sequences and the transaction: see raystream.client.transaction_manager
        self.leader_recheck_s = leader_recheck_ms / 1000
        self._rechecked_at: dict[TopicPartition, float] = {}
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
        self._added: deque[tuple[AddPartitionsRequest, Future]] = deque()  # answered AddPartitionsToTxn
        self._closing = False
        self._force = False
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    # -- control (any thread) --------------------------------------------------------------------------------
    def start(self) -> None:
        self.thread.start()

    def initiate_close(self) -> None:
        """Send everything still queued, then stop."""
        self._closing = True
        self.acc.close()  # wakes this thread (after the flag is set: the loop reads it after waking)

    def force_close(self) -> None:
        """Stop now: fail everything queued or in flight with ClosedError."""
        self._force = True
        self.acc.wake()

    def wake(self) -> None:
        self.acc.wake()

    # -- the loop --------------------------------------------------------------------------------------------
    def _run(self) -> None:
        log.debug("producer sender thread started")
        while True:
            try:
                if self._run_once():
                    break
            except Exception:  # a bug must not silently strand every pending record
                log.exception("producer sender loop failed; continuing")
                self.acc.pause(self.backoff_s)
        log.debug("producer sender thread stopped")

    def _run_once(self) -> bool:
        """One turn of the loop; True when the thread should exit."""
        self._process_completions()
        if self._force:
            self._abort_everything()
            return True
        now = time.monotonic()
        self._expire_inflight(now)
        recheck_at = self._recheck_stalled(now)
        for batch in self.acc.expire(now):
            self._fail(batch, self._expired(batch, self.txn.last_error(batch.tp)))
        for tp in self.txn.resets_pending():
            self._release_held(tp, now)
        metadata_at = self._refresh_metadata(now)
        pid_at = self._ensure_producer_id(now)
        batches, next_at = self.acc.drain(now, self._can_send, self._inflight.__contains__)
        for batch in batches:
            self._send(batch, now)
        add_at = self._add_partitions(now)
        if self._inflight:
            next_at = min(next_at, min(e.deadline for es in self._inflight.values() for e in es))
        next_at = min(next_at, metadata_at, pid_at, recheck_at, add_at)
        if self._closing and not (self._inflight or self._completions or self.acc.has_queued()):
            return True
        self.acc.await_wakeup(min(MAX_IDLE_S, max(0.0, next_at - time.monotonic())), self._has_work)
        return False

    def _has_work(self) -> bool:
        """Something for the loop that came without a wakeup of the accumulator (checked under its lock)."""
        return bool(self._completions or self._added) or self._force

    def _can_send(self, tp: TopicPartition) -> int:
        """How many more requests may go to ``tp`` now (called by the accumulator's drain, under its lock)."""
        if tp in self._held or not self.txn.sendable(tp):
            return 0
        inflight = self._inflight.get(tp)
        room = (1 if tp in self._single else self.max_in_flight) - (len(inflight) if inflight else 0)
        if room <= 0:
            return 0
        if self.metadata.leader(tp) is None:
            self.metadata.request_update(tp.topic)
            return 0
        return room if self.txn.in_transaction(tp) else 0  # not yet: AddPartitionsToTxn goes first

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

    def _ensure_producer_id(self, now: float) -> float:
        """Fetch the producer id (idempotent and replay producers) once something is queued; returns when
        to try again."""
        due = self.txn.producer_id_due(now)
        if now < due:
            return due
        if not self._held and not self.acc.has_queued():
            return float("inf")  # lazily: a producer that never sends never asks
        try:
            producer_id, producer_epoch = self.transport.init_producer_id(
                timeout_s=self.request_timeout_ms / 1000, **self.txn.init_producer_id_args())
        except Exception as exc:
            retry_at = self.txn.producer_id_failed(exc, now)
            if getattr(exc, "retriable", False):
                log.info("producer id not available yet (%s: %s); retrying", type(exc).__name__, exc)
            else:  # no point waiting for the delivery timeout: what is queued now cannot be sent
                log.error("producer id request failed: %s: %s", type(exc).__name__, exc)
                for batch in self.acc.drain_all():
                    self._fail(batch, exc)
            return retry_at
        self.txn.set_producer_id(producer_id, producer_epoch)
        return float("inf")

    # -- AddPartitionsToTxn (asynchronous) --------------------------------------------------------------------
    def _add_partitions(self, now: float) -> float:
        """Send the AddPartitionsToTxn the transaction manager asks for, if any (one request for every
        partition new to the transaction); returns when to look again."""
        expired = self.txn.expire_add_partitions(now)
        if expired is not None:
            self._added_partitions(expired, self.txn.add_partitions_timeout(expired), now)
        request = self.txn.add_partitions_request(now)
        if request is not None:
            try:
                future = self.transport.txn_submit("add_partitions_to_txn", *request.args)
            except Exception as exc:  # transports should return failed futures; be safe anyway
                future = failed_future(exc)
            future.add_done_callback(lambda f, request=request: self._on_added(request, f))
        return self.txn.next_add_at()

    def _on_added(self, request: AddPartitionsRequest, future: Future) -> None:
        self._added.append((request, future))
        self.acc.wake()

    def _added_partitions(self, request: AddPartitionsRequest, exc: BaseException | None, now: float) -> None:
        if not self.txn.add_partitions_done(request, exc, now):
            assert exc is not None
            log.error("AddPartitionsToTxn for %s failed: %s: %s", sorted(request.partitions),
                      type(exc).__name__, exc)
            for batch in self.acc.remove_queued(request.partitions):
                self._fail(batch, exc)

    # -- produce ---------------------------------------------------------------------------------------------
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
            future = self.transport.produce(tp, broker, data, self.acks, self.request_timeout_ms, epoch,
                                            **self.txn.request_fields(batch))
        except Exception as exc:  # transports should return failed futures; be safe anyway
            future = failed_future(exc)
        entry = _InFlight(batch, future, now + self.request_timeout_ms / 1000, leader, now)
        self._inflight.setdefault(tp, []).append(entry)
        if self.acks == 0:  # fire and forget: done once handed to the transport (offsets unknown)
            batch.result.complete(-1, -1, -1)
        future.add_done_callback(lambda _f, tp=tp, entry=entry: self._on_done(tp, entry))

    def _on_done(self, tp: TopicPartition, entry: _InFlight) -> None:
        self._completions.append((tp, entry))
        self.acc.wake()

    def _process_completions(self) -> None:
        while self._added:
            request, future = self._added.popleft()
            self._added_partitions(request, future.exception(), time.monotonic())
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
                self.txn.acknowledged(entry.batch)
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

    def _recheck_stalled(self, now: float) -> float:
        """Leader moves while requests are in flight. A request to a leader whose node died may get no
        answer for a long time (Ray reports a lost node only after ~15 s), while the controller elects a new
        leader within ~2 s. So a partition whose oldest request has waited ``leader_recheck_ms`` has its
        metadata refreshed (at most once per ``leader_recheck_ms``); requests sent to a leader the metadata
        no longer names are abandoned and retried on the new one (idempotence makes that retry safe: the
        new leader returns the original offsets if the old one had replicated the batch). Returns when to
        look again."""
        next_at = float("inf")
        for tp, entries in list(self._inflight.items()):
            current = self.metadata.leader(tp)
            moved = [e for e in entries if current is not None and e.leader != current]
            for entry in moved:
                self._abandon(tp, entry, NotLeaderError(
                    f"leader of {tp} moved from broker {entry.leader[0]} (epoch {entry.leader[1]}) to broker "
                    f"{current[0]} (epoch {current[1]}) while a produce was in flight"), now)
            if moved:
                self._release_held(tp, now)
                continue
            due = min(e.sent_at for e in entries) + self.leader_recheck_s
            due = max(due, self._rechecked_at.get(tp, 0.0) + self.leader_recheck_s)
            if due <= now:
                self._rechecked_at[tp] = now
                self.metadata.request_update(tp.topic)
                due = now + self.leader_recheck_s
            next_at = min(next_at, due)
        return next_at

    def _abandon(self, tp: TopicPartition, entry: _InFlight, exc: BaseException, now: float) -> None:
        """Stop waiting for a request (its late answer, if any, is ignored) and treat it as failed."""
        self._remove_inflight(tp, entry)
        if self.acks == 0:
            self.acc.release(entry.batch)
            return
        self._on_error(entry.batch, exc, now)

    def _expire_inflight(self, now: float) -> None:
        for tp, entries in list(self._inflight.items()):
            for entry in [e for e in entries if e.deadline <= now]:
                self._abandon(tp, entry, RequestTimeoutError(
                    f"produce of {entry.batch.count} record(s) to {tp} got no response within "
                    f"request_timeout_ms={self.request_timeout_ms}"), now)
            self._release_held(tp, now)

    def _on_error(self, batch: ProducerBatch, exc: BaseException, now: float) -> None:
        if isinstance(exc, RecordTooLargeError) and batch.count > 1:
            log.info("splitting a batch of %d records to %s: %s", batch.count, batch.tp, exc)
            halves = batch.split()
            self.txn.split(batch, halves)
            self._hold(halves, 0.0)
            return
        if getattr(exc, "invalid_metadata", False):
            self.metadata.request_update(batch.tp.topic)
        retriable = getattr(exc, "retriable", False)
        if self.txn.mode.sequenced and isinstance(exc, OutOfOrderSequenceError):
            retriable = self.txn.retriable_sequence_error(batch, exc)
        if retriable:
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
        if tp in self._inflight:
            return
        if self.txn.reset_pending(tp):
            doomed = self.txn.reset_sequences(tp)
            if doomed is not None:  # a producer that cannot re-sequence: it fails for good
                fatal = self.txn.fatal
                assert fatal is not None
                # The held batches are among the doomed ones (held batches are sequenced): failed once,
                # they must not go back to the queue (to be failed, and their memory released, again).
                self._held.pop(tp, None)
                for batch in doomed:
                    self._fail(batch, fatal)
                for batch in self.acc.drain_all():
                    self._fail(batch, fatal)
        if tp not in self._held:
            return
        batches = sorted(self._held.pop(tp), key=order)
        self.acc.reenqueue(batches, max(b.retry_at for b in batches))

    def _expired(self, batch: ProducerBatch, last: BaseException | None) -> RequestTimeoutError:
        cause = f"; last error: {type(last).__name__}: {last}" if last is not None else ""
        exc = RequestTimeoutError(
            f"expiring {batch.count} record(s) for {batch.tp}: delivery_timeout_ms={self.delivery_timeout_ms} "
            f"passed since batch creation{cause}", topic=batch.tp.topic, partition=batch.tp.partition)
        exc.__cause__ = last
        return exc

    def _fail(self, batch: ProducerBatch, exc: BaseException) -> None:
        self.txn.failed(batch, exc)
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
