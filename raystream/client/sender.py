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

Idempotence (``idempotent=True``; Kafka's enable.idempotence): the thread fetches a producer id from the
controller before the first produce (retried after ``retry_backoff_ms``; queued batches meanwhile expire by
their delivery timeout as usual). A batch gets its partition's next base sequence when it is first drained
(sequences count records and wrap at 2**31-1) and keeps it on every retry, so the leader writes a retried
batch at most once and rejects a batch sent after a gap — which is what keeps records in order across
retries with up to 5 requests in flight:

    error of a sequenced batch                                 handling
    ---------------------------------------------------------  ----------------------------------------------
    OutOfOrderSequenceError, an earlier batch of the           retriable: held, resent in order after it
      partition unfinished (in flight, held, being retried)
      now or when this one was sent
    OutOfOrderSequenceError on a first attempt, the leader     reset the partition's sequences, then retry
      knows no sequence of this producer (expected 0: its        (no copy of it or of later batches can be
      state expired or is lost)                                  in the log)
    OutOfOrderSequenceError, otherwise                         fails the batch (then the partition resets)
    RecordTooLargeError                                        split: the halves share out its sequence range
    any other final failure (error, retries, delivery timeout) fails the batch; the partition resets

A *reset* waits until nothing is in flight to the partition, bumps the partition's producer epoch (a new
producer id once the Int16 epochs are used up), and re-sequences from 0 every batch of the partition not yet
acknowledged; the leader accepts a higher epoch starting at sequence 0. Epochs are per partition (the
leader's state is per partition too), so one partition's trouble does not disturb the others.

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
from raystream.errors import (
    ClosedError,
    NotLeaderError,
    OutOfOrderSequenceError,
    RecordTooLargeError,
    RequestTimeoutError,
)
from raystream.protocol import TopicPartition
from raystream.record import MAX_PRODUCER_EPOCH, increment_sequence

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


@dataclasses.dataclass(eq=False)
class _Sequences:
    """One partition's idempotence bookkeeping. ``producer_id == -1``: take the producer's current id."""

    producer_id: int
    producer_epoch: int
    next_sequence: int = 0
    #: Sequenced at least once and not finished (in flight, held or queued for a retry), in send order.
    unacked: list[ProducerBatch] = dataclasses.field(default_factory=list)


def _order(batch: ProducerBatch) -> tuple[int, tuple[int, ...]]:
    """Send order within a partition (split halves follow each other where their original was)."""
    return batch.seq, batch.part


class Sender:
    def __init__(self, accumulator: RecordAccumulator, metadata: MetadataCache, transport: BaseTransport, *,
                 acks: int, retries: int, retry_backoff_ms: int, request_timeout_ms: int,
                 delivery_timeout_ms: int, name: str, max_in_flight: int = 1, idempotent: bool = False,
                 leader_recheck_ms: int = 1000, replay_id: str | None = None,
                 transactional_id: str | None = None) -> None:
        self.acc = accumulator
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
        self.idempotent = idempotent
        # A replay producer (see Producer's replay_id): its sequences name records, so they can never be
        # restarted; what would reset them instead fails the producer for good (``_fatal``).
        self.replay_id = replay_id
        self._fatal: BaseException | None = None
        # A transactional producer: its id and epoch come from the coordinator (``begin_transactional``),
        # each partition joins the transaction before its first batch, and an error that would reset the
        # sequences is fatal (the coordinator owns the epoch). ``txn_error``: the first batch of the open
        # transaction that failed (commit refuses; abort clears it).
        self.transactional_id = transactional_id
        self.txn_partitions: set[TopicPartition] = set()
        self.txn_error: BaseException | None = None
        self.producer_id = self.producer_epoch = -1  # from the controller, fetched lazily (idempotent only)
        self._pid_retry_at = 0.0
        self._pid_error: BaseException | None = None
        self._sequences: dict[TopicPartition, _Sequences] = {}
        self._resets: set[TopicPartition] = set()  # partitions whose sequences must restart (see the docstring)
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
        recheck_at = self._recheck_stalled(now)
        for batch in self.acc.expire(now):
            self._fail(batch, self._expired(batch, self._pid_error if self.producer_id < 0 else None))
        for tp in list(self._resets):
            self._release_held(tp, now)
        metadata_at = self._refresh_metadata(now)
        pid_at = self._ensure_producer_id(now)
        batches, next_at = self.acc.drain(now, self._can_send, self._inflight.__contains__)
        for batch in batches:
            self._send(batch, now)
        if self._inflight:
            next_at = min(next_at, min(e.deadline for es in self._inflight.values() for e in es))
        next_at = min(next_at, metadata_at, pid_at, recheck_at)
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
        if self.idempotent:
            if tp in self._resets:
                return 0  # wait for the in-flight requests; the reset then re-sequences the partition
            seqs = self._sequences.get(tp)
            if self.producer_id < 0 and (seqs is None or seqs.producer_id < 0):
                return 0  # no producer id yet
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

    def _ensure_producer_id(self, now: float) -> float:
        """Fetch the producer id (idempotence) once something is queued; returns when to try again."""
        if not self.idempotent or self.producer_id >= 0 or self.transactional_id is not None:
            return float("inf")
        if now < self._pid_retry_at:
            return self._pid_retry_at
        if not self._held and not self.acc.has_queued():
            return float("inf")  # lazily: a producer that never sends never asks
        try:
            if self.replay_id is None:
                self.producer_id, self.producer_epoch = self.transport.init_producer_id(
                    timeout_s=self.request_timeout_ms / 1000)
            else:
                self.producer_id, self.producer_epoch = self.transport.init_producer_id(
                    timeout_s=self.request_timeout_ms / 1000, replay_id=self.replay_id)
        except Exception as exc:
            self._pid_error = exc
            self._pid_retry_at = now + self.backoff_s
            if getattr(exc, "retriable", False):
                log.info("producer id not available yet (%s: %s); retrying", type(exc).__name__, exc)
            else:  # no point waiting for the delivery timeout: what is queued now cannot be sent
                log.error("producer id request failed: %s: %s", type(exc).__name__, exc)
                for batch in self.acc.drain_all():
                    self._fail(batch, exc)
            return self._pid_retry_at
        self._pid_error = None
        log.debug("idempotent producer id %d epoch %d", self.producer_id, self.producer_epoch)
        return float("inf")

    # -- transactions ---------------------------------------------------------------------------------------
    def begin_transactional(self, producer_id: int, producer_epoch: int) -> None:
        """Take the id and epoch ``init_transactions`` got from the coordinator (sequences start at 0)."""
        with self.acc.cond:
            self.producer_id, self.producer_epoch = producer_id, producer_epoch
            self._sequences.clear()
            self.txn_partitions.clear()
            self.txn_error = None

    def _add_to_transaction(self, tp: TopicPartition) -> None:
        """AddPartitionsToTxn for ``tp`` before its first batch of the transaction (sender thread; blocks
        for one controller call per new partition and transaction)."""
        self.transport.txn_call("add_partitions_to_txn", self.transactional_id, self.producer_id,
                                self.producer_epoch, [tp], timeout_s=self.request_timeout_ms / 1000)
        self.txn_partitions.add(tp)

    def _assign_sequence(self, batch: ProducerBatch) -> None:
        """Give a batch drained for the first time (or after a reset) its partition's next sequences."""
        seqs = self._sequences.get(batch.tp)
        if seqs is None:
            seqs = self._sequences[batch.tp] = _Sequences(-1, -1)
        if seqs.producer_id < 0:
            seqs.producer_id, seqs.producer_epoch = self.producer_id, self.producer_epoch
        batch.producer_id, batch.producer_epoch = seqs.producer_id, seqs.producer_epoch
        batch.base_sequence = seqs.next_sequence
        seqs.next_sequence = increment_sequence(seqs.next_sequence, batch.count)
        if batch not in seqs.unacked:  # identity: a batch re-sequenced after a reset is there already
            seqs.unacked.append(batch)

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
            if self._fatal is not None:
                raise self._fatal
            if self.transactional_id is not None and tp not in self.txn_partitions:
                self._add_to_transaction(tp)
            if self.idempotent:
                if batch.base_sequence < 0:
                    self._assign_sequence(batch)
                batch.sent_behind = self._has_earlier_unfinished(batch)
                replay = {} if self.replay_id is None else {"replay": True}
                if self.transactional_id is not None:
                    replay["transactional"] = True
                future = self.transport.produce(tp, broker, data, self.acks, self.request_timeout_ms, epoch,
                                                producer_id=batch.producer_id, producer_epoch=batch.producer_epoch,
                                                base_sequence=batch.base_sequence, **replay)
            else:
                future = self.transport.produce(tp, broker, data, self.acks, self.request_timeout_ms, epoch)
        except Exception as exc:  # transports should return failed futures; be safe anyway
            future = failed_future(exc)
        entry = _InFlight(batch, future, now + self.request_timeout_ms / 1000, leader, now)
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
                self._finished(entry.batch)
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
            seqs = self._sequences.get(batch.tp)
            if seqs is not None and batch in seqs.unacked:
                at = seqs.unacked.index(batch)
                seqs.unacked[at:at + 1] = halves
            self._hold(halves, 0.0)
            return
        if getattr(exc, "invalid_metadata", False):
            self.metadata.request_update(batch.tp.topic)
        retriable = getattr(exc, "retriable", False)
        if self.idempotent and isinstance(exc, OutOfOrderSequenceError):
            retriable = self._sequence_gap_resolvable(batch, exc)
        if retriable:
            if now >= batch.deadline:
                exc = self._expired(batch, exc)
            elif batch.attempts <= self.retries:
                log.debug("retrying %d record(s) to %s after %s", batch.count, batch.tp, exc)
                self._hold([batch], now + self.backoff_s)
                return
        self._fail(batch, exc)

    def _sequence_gap_resolvable(self, batch: ProducerBatch, exc: OutOfOrderSequenceError) -> bool:
        """Whether an out-of-order batch can be retried safely (see the table in the module docstring)."""
        tp = batch.tp
        if tp in self._resets:
            return True  # an earlier batch failed for good: the reset re-sequences this one
        if batch.sent_behind or self._has_earlier_unfinished(batch):
            # An earlier batch was unfinished when this one was sent (Ray may run a caller's requests out
            # of order, so this one may have overtaken it) or still is: resend after it.
            return True
        if getattr(exc, "expected_sequence", None) == 0 and batch.attempts == 1:
            # The leader holds no sequence state for this producer id and epoch (expired, or a new leader
            # without it) and this was the batch's first attempt, so no copy of it is in the log and none of
            # the later ones can be: restart at sequence 0. (After an earlier attempt a copy may have been
            # written before the state was lost; resending it could duplicate it, so that case fails.)
            log.info("%s: the leader does not know this producer's sequences; resetting them", tp)
            self._resets.add(tp)
            return True
        return False

    def _has_earlier_unfinished(self, batch: ProducerBatch) -> bool:
        seqs = self._sequences.get(batch.tp)
        return seqs is not None and any(_order(b) < _order(batch) for b in seqs.unacked)

    def _finished(self, batch: ProducerBatch) -> bool:
        """Forget a batch that succeeded or failed for good; True if it held sequences."""
        seqs = self._sequences.get(batch.tp)
        if seqs is None or batch not in seqs.unacked:
            return False
        seqs.unacked.remove(batch)
        return batch.base_sequence >= 0

    def _reset_sequences(self, tp: TopicPartition) -> None:
        """Restart ``tp``'s sequences at 0 under a new epoch (nothing is in flight to it): every batch not
        yet acknowledged is sequenced again when it is next drained, in its original order."""
        self._resets.discard(tp)
        seqs = self._sequences.get(tp)
        if seqs is None:
            return
        if self.replay_id is not None or self.transactional_id is not None:
            who = (f"replay producer {self.replay_id!r}" if self.replay_id is not None
                   else f"transactional producer {self.transactional_id!r}")
            self._fatal = OutOfOrderSequenceError(
                f"{who} lost its sequence state on {tp}; it cannot re-sequence records: run it again from "
                f"its start (a replay producer: the brokers drop what was already written; a transactional "
                f"one: a new instance's init_transactions aborts what this one left open)",
                topic=tp.topic, partition=tp.partition)
            for batch in list(seqs.unacked):
                self._fail(batch, self._fatal)
            for batch in self.acc.drain_all():
                self._fail(batch, self._fatal)
            return
        for batch in seqs.unacked:
            batch.producer_id = batch.producer_epoch = batch.base_sequence = -1
        seqs.next_sequence = 0
        if seqs.producer_id < 0:
            return  # nothing was ever sequenced under an id here
        if seqs.producer_epoch < MAX_PRODUCER_EPOCH:
            seqs.producer_epoch += 1
        else:  # this id's epochs are used up on this partition: continue under a new producer id
            if seqs.producer_id == self.producer_id:
                self.producer_id = self.producer_epoch = -1
                self._pid_retry_at = 0.0
            seqs.producer_id = seqs.producer_epoch = -1
        log.info("%s: producer sequences reset (producer id %d, epoch %d)", tp, seqs.producer_id,
                 seqs.producer_epoch)

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
        if tp in self._resets:
            self._reset_sequences(tp)
        if tp not in self._held:
            return
        batches = sorted(self._held.pop(tp), key=_order)
        self.acc.reenqueue(batches, max(b.retry_at for b in batches))

    def _expired(self, batch: ProducerBatch, last: BaseException | None) -> RequestTimeoutError:
        cause = f"; last error: {type(last).__name__}: {last}" if last is not None else ""
        exc = RequestTimeoutError(
            f"expiring {batch.count} record(s) for {batch.tp}: delivery_timeout_ms={self.delivery_timeout_ms} "
            f"passed since batch creation{cause}", topic=batch.tp.topic, partition=batch.tp.partition)
        exc.__cause__ = last
        return exc

    def _fail(self, batch: ProducerBatch, exc: BaseException) -> None:
        if self.transactional_id is not None and self.txn_error is None:
            self.txn_error = exc  # the open transaction cannot commit any more
        if self._finished(batch):
            # Its sequences may or may not be in the log: the partition continues under a new epoch.
            self._resets.add(batch.tp)
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
