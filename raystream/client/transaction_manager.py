"""The producer's idempotence and transaction bookkeeping (Kafka's TransactionManager): producer id and
epoch, per-partition sequence numbers and their resets, and the open transaction's partitions and error.
The sender asks it what to put in a request and what an error means; it sends nothing itself.

A producer is in one :class:`ProducerMode`, fixed by its configuration:

    mode            producer id from                   a sequence reset (see below)
    --------------  ---------------------------------  -------------------------------------------------
    plain           none (no sequences, no dedup)      never happens
    idempotent      init_producer_id, lazily           bumps the partition's epoch, re-sequences from 0
    replay          init_producer_id(replay_id)        fatal: sequences name records, they cannot restart
    transactional   init_transactions (coordinator)    fatal: the coordinator owns the epoch

Sequences (every mode but plain): a batch gets its partition's next base sequence when it is first sent
(sequences count records and wrap at 2**31-1) and keeps it on every retry, so the leader writes a retried
batch at most once and rejects a batch sent after a gap — which keeps records in order across retries
with up to 5 requests in flight:

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

A *reset* waits until nothing is in flight to the partition (the sender decides when), bumps the
partition's producer epoch (a new producer id once the Int16 epochs are used up), and re-sequences from 0
every batch of the partition not yet acknowledged; the leader accepts a higher epoch starting at sequence 0.
Epochs are per partition (the leader's state is per partition too), so one partition's trouble does not
disturb the others.

Transactions: a partition joins the open transaction (AddPartitionsToTxn) before its first batch is sent.
The sender learns of new partitions from :meth:`TransactionManager.in_transaction` while draining, and
sends one asynchronous AddPartitionsToTxn for all partitions that became new meanwhile (Kafka's
newPartitionsInTransaction), one such request at a time; the new partitions' batches wait in the
accumulator until it succeeds, other partitions send on. A retriable failure retries it after
``retry_backoff_ms``; any other fails the partitions' queued batches. The first batch of the open
transaction that fails for good is its *abortable error*: commit refuses, abort clears it.

Thread-safety: the sequence and producer-id state belongs to the sender thread. The transaction state
(``begin_transaction`` and the other user-facing calls, and the partitions the sender reads while
draining) is guarded by this manager's own lock, taken after the accumulator's lock when both are held
(never the other way round). ``initialized`` resets the sequences from a user thread: the producer calls
it only with nothing queued or in flight (``init_transactions`` comes before any send).
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import threading
from typing import TYPE_CHECKING, Any

from raystream.errors import (
    InvalidProducerEpochError,
    InvalidTxnStateError,
    OutOfOrderSequenceError,
    ProducerFencedError,
    RequestTimeoutError,
)
from raystream.protocol import TopicPartition
from raystream.record import MAX_PRODUCER_EPOCH, increment_sequence

if TYPE_CHECKING:
    from raystream.client.accumulator import ProducerBatch

log = logging.getLogger(__name__)

#: Kafka's limit for idempotence: the leader remembers the last 5 batches of each producer.
MAX_IN_FLIGHT_IDEMPOTENT = 5
_NO_FIELDS: dict[str, Any] = {}


class ProducerMode(enum.Enum):
    PLAIN = "plain"
    IDEMPOTENT = "idempotent"
    REPLAY = "replay"
    TRANSACTIONAL = "transactional"

    @property
    def sequenced(self) -> bool:
        """Whether batches carry a producer id, epoch and sequence (every mode but plain)."""
        return self is not ProducerMode.PLAIN


def _idempotence(enable_idempotence: bool | None, acks: int, retries: int, max_in_flight: int) -> bool:
    """Kafka's rules: on by default unless another setting rules it out; explicitly on, a conflict raises."""
    if enable_idempotence is not None and not isinstance(enable_idempotence, bool):
        raise TypeError(f"enable_idempotence must be a bool or None, got {type(enable_idempotence).__name__}")
    conflicts = []
    if acks != -1:
        conflicts.append(f"acks={acks} (idempotence needs acks='all')")
    if retries == 0:
        conflicts.append("retries=0 (idempotence needs retries > 0)")
    if max_in_flight > MAX_IN_FLIGHT_IDEMPOTENT:
        conflicts.append(f"max_in_flight_requests_per_connection={max_in_flight} (idempotence allows at most "
                         f"{MAX_IN_FLIGHT_IDEMPOTENT})")
    if enable_idempotence is None:
        return not conflicts
    if enable_idempotence and conflicts:
        raise ValueError("enable_idempotence=True conflicts with " + "; ".join(conflicts))
    return enable_idempotence


def producer_mode(enable_idempotence: bool | None, acks: int, retries: int, max_in_flight: int,
                  transactional_id: str | None, replay_id: str | None) -> ProducerMode:
    """The mode a producer's configuration asks for (raises TypeError/ValueError for a contradiction)."""
    if transactional_id is not None and enable_idempotence is None:
        enable_idempotence = True  # as Kafka: transactions need idempotence (and its settings)
    idempotent = _idempotence(enable_idempotence, acks, retries, max_in_flight)
    if transactional_id is not None and not idempotent:
        raise ValueError("transactional_id needs an idempotent producer (enable_idempotence not False)")
    if transactional_id is not None and replay_id is not None:
        raise ValueError("a producer is either transactional or a replay producer, not both")
    if replay_id is not None:
        if not isinstance(replay_id, str) or not replay_id:
            raise TypeError(f"replay_id must be a non-empty str or None, got {replay_id!r}")
        if not idempotent:
            raise ValueError("replay_id needs an idempotent producer (acks='all', retries > 0, "
                             "max_in_flight_requests_per_connection <= 5, enable_idempotence not False)")
        return ProducerMode.REPLAY
    if transactional_id is not None:
        return ProducerMode.TRANSACTIONAL
    return ProducerMode.IDEMPOTENT if idempotent else ProducerMode.PLAIN


class _TxnState(enum.Enum):
    """A transactional producer's own state: UNINITIALIZED -init_transactions-> READY -begin_transaction->
    IN_TRANSACTION -commit/abort-> READY (init_transactions again from any state)."""

    UNINITIALIZED = "uninitialized"
    READY = "ready"
    IN_TRANSACTION = "in_transaction"


@dataclasses.dataclass(eq=False)
class _Sequences:
    """One partition's idempotence bookkeeping. ``producer_id == -1``: take the producer's current id."""

    producer_id: int
    producer_epoch: int
    next_sequence: int = 0
    #: Sequenced at least once and not finished (in flight, held or queued for a retry), in send order.
    unacked: list[ProducerBatch] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True, eq=False)
class AddPartitionsRequest:
    """One AddPartitionsToTxn the sender has in flight (``args`` for the coordinator's method)."""

    partitions: frozenset[TopicPartition]
    args: tuple[Any, ...]
    deadline: float


def order(batch: ProducerBatch) -> tuple[int, tuple[int, ...]]:
    """Send order within a partition (split halves follow each other where their original was)."""
    return batch.seq, batch.part


class TransactionManager:
    """Producer id, epochs, sequences and the open transaction of one producer (see the module docstring
    for the rules and the thread-safety contract)."""

    def __init__(self, mode: ProducerMode, *, retry_backoff_ms: int, request_timeout_ms: int,
                 replay_id: str | None = None, transactional_id: str | None = None) -> None:
        assert (replay_id is not None) == (mode is ProducerMode.REPLAY), (mode, replay_id)
        assert (transactional_id is not None) == (mode is ProducerMode.TRANSACTIONAL), (mode, transactional_id)
        self.mode = mode
        self.replay_id = replay_id
        self.transactional_id = transactional_id
        self.backoff_s = retry_backoff_ms / 1000
        self.request_timeout_s = request_timeout_ms / 1000
        self.producer_id = self.producer_epoch = -1  # idempotent/replay: fetched lazily by the sender
        self._pid_retry_at = 0.0
        self._pid_error: BaseException | None = None
        self._sequences: dict[TopicPartition, _Sequences] = {}
        self._resets: set[TopicPartition] = set()  # partitions whose sequences must restart
        #: Replay or transactional producer whose sequences would have to restart: fails every batch after.
        self.fatal: BaseException | None = None
        self._lock = threading.Lock()  # the transaction state below (user threads and the sender)
        self._state = _TxnState.UNINITIALIZED
        self._partitions: set[TopicPartition] = set()  # in the open transaction
        self._new: set[TopicPartition] = set()  # waiting for the next AddPartitionsToTxn
        self._adding: AddPartitionsRequest | None = None
        self._add_retry_at = 0.0
        self._add_error: BaseException | None = None  # the last retriable failure, for expiry messages
        self._error: BaseException | None = None  # the open transaction's abortable error

    # -- producer id (sender thread) ---------------------------------------------------------------------------
    def producer_id_due(self, now: float) -> float:
        """When the sender should ask for a producer id: ``inf`` if it needs none (now), else a time (<= now:
        at once)."""
        if self.mode not in (ProducerMode.IDEMPOTENT, ProducerMode.REPLAY) or self.producer_id >= 0:
            return float("inf")
        return self._pid_retry_at

    def init_producer_id_args(self) -> dict[str, Any]:
        return _NO_FIELDS if self.replay_id is None else {"replay_id": self.replay_id}

    def set_producer_id(self, producer_id: int, producer_epoch: int) -> None:
        self.producer_id, self.producer_epoch = producer_id, producer_epoch
        self._pid_error = None
        log.debug("idempotent producer id %d epoch %d", producer_id, producer_epoch)

    def producer_id_failed(self, exc: BaseException, now: float) -> float:
        """Record a failed producer-id request; returns when to try again."""
        self._pid_error = exc
        self._pid_retry_at = now + self.backoff_s
        return self._pid_retry_at

    def last_error(self, tp: TopicPartition) -> BaseException | None:
        """What kept ``tp``'s queued batches from being sent (the cause named when they expire)."""
        if self.producer_id < 0:
            return self._pid_error
        with self._lock:
            return self._add_error if tp in self._new or (self._adding and tp in self._adding.partitions) else None

    # -- sequences (sender thread) -------------------------------------------------------------------------
    def sendable(self, tp: TopicPartition) -> bool:
        """Whether a batch of ``tp`` may be sent as far as ids and sequences go (not while the partition
        waits for a reset, nor before there is a producer id)."""
        if self.mode is ProducerMode.PLAIN:
            return True
        if tp in self._resets:
            return False  # wait for the in-flight requests; the reset then re-sequences the partition
        if self.producer_id < 0:
            seqs = self._sequences.get(tp)
            return seqs is not None and seqs.producer_id >= 0
        return True

    def request_fields(self, batch: ProducerBatch) -> dict[str, Any]:
        """The produce request's idempotence fields for ``batch`` (sequencing it on its first send); raises
        the fatal error of a producer that cannot go on."""
        if self.fatal is not None:
            raise self.fatal
        mode = self.mode
        if mode is ProducerMode.PLAIN:
            return _NO_FIELDS
        if batch.base_sequence < 0:
            self._assign_sequence(batch)
        batch.sent_behind = self.has_earlier_unfinished(batch)
        fields = {"producer_id": batch.producer_id, "producer_epoch": batch.producer_epoch,
                  "base_sequence": batch.base_sequence}
        if mode is ProducerMode.REPLAY:
            fields["replay"] = True
        elif mode is ProducerMode.TRANSACTIONAL:
            fields["transactional"] = True
        return fields

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

    def has_earlier_unfinished(self, batch: ProducerBatch) -> bool:
        seqs = self._sequences.get(batch.tp)
        return seqs is not None and any(order(b) < order(batch) for b in seqs.unacked)

    def split(self, batch: ProducerBatch, halves: list[ProducerBatch]) -> None:
        """``batch`` was split into ``halves``: they take its place among the unacknowledged batches."""
        seqs = self._sequences.get(batch.tp)
        if seqs is not None and batch in seqs.unacked:
            at = seqs.unacked.index(batch)
            seqs.unacked[at:at + 1] = halves

    def acknowledged(self, batch: ProducerBatch) -> None:
        self._forget(batch)

    def failed(self, batch: ProducerBatch, exc: BaseException) -> None:
        """``batch`` failed for good: the open transaction cannot commit, and a partition whose sequences
        the batch held continues under a new epoch (they may or may not be in the log)."""
        if self.mode is ProducerMode.TRANSACTIONAL:
            with self._lock:
                if self._error is None:
                    self._error = exc
        if self._forget(batch):
            self._resets.add(batch.tp)

    def _forget(self, batch: ProducerBatch) -> bool:
        """Forget a batch that succeeded or failed for good; True if it held sequences."""
        seqs = self._sequences.get(batch.tp)
        if seqs is None or batch not in seqs.unacked:
            return False
        seqs.unacked.remove(batch)
        return batch.base_sequence >= 0

    def retriable_sequence_error(self, batch: ProducerBatch, exc: OutOfOrderSequenceError) -> bool:
        """Whether an out-of-order batch can be retried safely (see the table in the module docstring)."""
        tp = batch.tp
        if tp in self._resets:
            return True  # an earlier batch failed for good: the reset re-sequences this one
        if batch.sent_behind or self.has_earlier_unfinished(batch):
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

    def resets_pending(self) -> list[TopicPartition]:
        return list(self._resets)

    def reset_pending(self, tp: TopicPartition) -> bool:
        return tp in self._resets

    def reset_sequences(self, tp: TopicPartition) -> list[ProducerBatch] | None:
        """Restart ``tp``'s sequences at 0 under a new epoch (call with nothing in flight to it): every batch
        not yet acknowledged is sequenced again when it is next drained, in its original order; returns
        None. A replay or transactional producer cannot: it sets :attr:`fatal` and returns the batches that
        must fail with it (the sender fails them, and everything queued)."""
        self._resets.discard(tp)
        seqs = self._sequences.get(tp)
        if seqs is None:
            return None
        if self.mode in (ProducerMode.REPLAY, ProducerMode.TRANSACTIONAL):
            who = (f"replay producer {self.replay_id!r}" if self.mode is ProducerMode.REPLAY
                   else f"transactional producer {self.transactional_id!r}")
            self.fatal = OutOfOrderSequenceError(
                f"{who} lost its sequence state on {tp}; it cannot re-sequence records: run it again from "
                f"its start (a replay producer: the brokers drop what was already written; a transactional "
                f"one: a new instance's init_transactions aborts what this one left open)",
                topic=tp.topic, partition=tp.partition)
            return list(seqs.unacked)
        for batch in seqs.unacked:
            batch.producer_id = batch.producer_epoch = batch.base_sequence = -1
        seqs.next_sequence = 0
        if seqs.producer_id < 0:
            return None  # nothing was ever sequenced under an id here
        if seqs.producer_epoch < MAX_PRODUCER_EPOCH:
            seqs.producer_epoch += 1
        else:  # this id's epochs are used up on this partition: continue under a new producer id
            if seqs.producer_id == self.producer_id:
                self.producer_id = self.producer_epoch = -1
                self._pid_retry_at = 0.0
            seqs.producer_id = seqs.producer_epoch = -1
        log.info("%s: producer sequences reset (producer id %d, epoch %d)", tp, seqs.producer_id,
                 seqs.producer_epoch)
        return None

    # -- the open transaction's partitions (sender thread; called while draining) ----------------------------
    def in_transaction(self, tp: TopicPartition) -> bool:
        """Whether ``tp`` may be sent to as far as the transaction goes. A partition not yet in the open
        transaction is not, and is queued for the next AddPartitionsToTxn."""
        if self.mode is not ProducerMode.TRANSACTIONAL:
            return True
        with self._lock:
            if tp in self._partitions:
                return True
            if self._adding is None or tp not in self._adding.partitions:
                self._new.add(tp)
            return False

    def add_partitions_request(self, now: float) -> AddPartitionsRequest | None:
        """The AddPartitionsToTxn to send now, if any: every new partition, once the previous request has
        finished and its retry backoff passed."""
        with self._lock:
            if not self._new or self._adding is not None or now < self._add_retry_at:
                return None
            partitions = frozenset(self._new)
            self._new.clear()
            self._adding = AddPartitionsRequest(
                partitions, (self.transactional_id, self.producer_id, self.producer_epoch,
                             sorted(partitions, key=lambda tp: (tp.topic, tp.partition))),
                now + self.request_timeout_s)
            return self._adding

    def next_add_at(self) -> float:
        """When the sender must look at AddPartitionsToTxn again (a retry due, or the one in flight expiring)."""
        with self._lock:
            if self._adding is not None:
                return self._adding.deadline
            return self._add_retry_at if self._new else float("inf")

    def expire_add_partitions(self, now: float) -> AddPartitionsRequest | None:
        """The request in flight if its ``request_timeout_ms`` has passed (the sender then fails it)."""
        with self._lock:
            adding = self._adding
        return adding if adding is not None and adding.deadline <= now else None

    def add_partitions_done(self, request: AddPartitionsRequest, exc: BaseException | None,
                            now: float) -> bool:
        """The answer to ``request`` (ignored if it is no longer the one in flight: it expired or a new
        transaction began). Returns False when the sender must fail the partitions' queued batches."""
        with self._lock:
            if request is not self._adding:
                return True
            self._adding = None
            if exc is None:
                self._partitions |= request.partitions
                self._add_error = None
                return True
            if getattr(exc, "retriable", False):
                log.info("AddPartitionsToTxn for %s failed (%s: %s); retrying", sorted(request.partitions),
                         type(exc).__name__, exc)
                self._new |= request.partitions
                self._add_error = exc
                self._add_retry_at = now + self.backoff_s
                return True
            return False

    def add_partitions_timeout(self, request: AddPartitionsRequest) -> RequestTimeoutError:
        return RequestTimeoutError(f"AddPartitionsToTxn for {sorted(request.partitions)} got no response within "
                                   f"request_timeout_ms={round(self.request_timeout_s * 1000)}")

    # -- the transaction's lifecycle (user threads) ---------------------------------------------------------
    def initialized(self, producer_id: int, producer_epoch: int) -> None:
        """Take the id and epoch ``init_transactions`` got from the coordinator (sequences start at 0)."""
        with self._lock:
            self.producer_id, self.producer_epoch = producer_id, producer_epoch
            self._sequences.clear()
            self._partitions.clear()
            self._error = None
            self._state = _TxnState.READY

    def check_send(self) -> None:
        """A transactional producer sends only inside a transaction."""
        if self.mode is ProducerMode.TRANSACTIONAL and self._state is not _TxnState.IN_TRANSACTION:
            raise InvalidTxnStateError("a transactional producer sends only inside a transaction "
                                       "(init_transactions, then begin_transaction)")

    def begin_transaction(self) -> None:
        with self._lock:
            if self._state is not _TxnState.READY:
                raise InvalidTxnStateError("begin_transaction needs init_transactions first and no open "
                                           "transaction" if self._state is _TxnState.UNINITIALIZED
                                           else "a transaction is already open")
            self._partitions.clear()
            self._error = None
            self._adding = None  # an answer still due belongs to the previous transaction
            self._state = _TxnState.IN_TRANSACTION

    def check_open(self, what: str) -> None:
        if self._state is not _TxnState.IN_TRANSACTION:
            raise InvalidTxnStateError(f"{what} needs an open transaction (begin_transaction)")

    def check_committable(self) -> None:
        """Raise the open transaction's abortable error, if a batch of it failed (then only abort is left)."""
        with self._lock:
            error = self._error
        if isinstance(error, (InvalidProducerEpochError, ProducerFencedError)):
            raise ProducerFencedError(f"transactional producer {self.transactional_id!r} was fenced by a newer "
                                      f"instance: {error}") from error
        if error is not None:
            raise InvalidTxnStateError(f"cannot commit: a record of this transaction failed "
                                       f"({type(error).__name__}: {error}); abort it") from error

    def coordinator_args(self) -> tuple[str | None, int, int]:
        """``(transactional_id, producer_id, producer_epoch)``: how coordinator calls name this producer."""
        return self.transactional_id, self.producer_id, self.producer_epoch

    def ended(self) -> None:
        """The transaction committed or aborted (EndTxn succeeded)."""
        with self._lock:
            self._error = None
            self._state = _TxnState.READY
