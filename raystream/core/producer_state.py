"""Idempotent-producer state of one partition (Kafka's ProducerStateManager / ProducerStateEntry).

The leader asks :meth:`ProducerStateManager.check_and_prepare` about every batch *before* appending it,
and every replica (leader after the append, follower after replicating, recovery while replaying the
log) records the batch with :meth:`ProducerStateManager.update`. Rules of ``check_and_prepare`` for a
batch ``(pid, epoch, first_seq, last_seq)`` against the producer's entry (current epoch ``E``, last
sequence ``L``, the last 5 batches ``B``)::

    case                                        result
    ------------------------------------------  --------------------------------------------------------
    pid == -1 (not idempotent)                  None: append, no checks
    seq or epoch out of range (< 0, > max)      InvalidRecordError
    unknown pid, first_seq == 0                 None: append (a new producer)
    unknown pid, first_seq != 0                 OutOfOrderSequenceError (simplified UNKNOWN_PRODUCER_ID)
    epoch == E and (first, last) is in B        DuplicateBatch: answer with the ORIGINAL offsets, no append
    epoch <  E                                  InvalidProducerEpochError (fenced: a zombie producer)
    epoch >  E, first_seq == 0                  None: append (the producer bumped its epoch)
    epoch >  E, first_seq != 0                  OutOfOrderSequenceError (a new epoch starts at 0)
    epoch == E, first_seq == next(L)            None: append (in order)
    replay, epoch == E, last_seq < next(L)      DuplicateBatch with base_offset -1: all written before
    replay, epoch == E, first_seq < next(L)     ReplayOverlap(next(L) - first_seq): append only the rest
    epoch == E, otherwise                       OutOfOrderSequenceError (a gap, or a retry older than B)

A *replay* producer (``replay=True``; ``Producer(replay_id=...)``) is a producer that may be run again
from its start with the same producer id and epoch — a retried Ray task — sending the same records in
the same order per partition, but not necessarily in the same batches. Its sequence numbers then name
records, not batches, so a record with a sequence below ``next(L)`` is one the log already holds: it is
dropped, and a run that died anywhere resumes exactly where the log ends.

``next(L)`` is ``L + 1``, wrapping from ``2**31 - 1`` to 0 as Kafka's sequences do (``L`` is -1 when the
epoch has no batch yet, so ``next(L)`` is 0). A stale epoch raises ``InvalidProducerEpochError`` rather
than ``ProducerFencedError``: since Kafka 2.7 (KIP-588) the partition leader answers a produce request of
an older epoch with INVALID_PRODUCER_EPOCH; PRODUCER_FENCED comes from the transaction coordinator.

``update`` validates nothing (Kafka's append with origin REPLICATION): the leader already validated the
batch, and a replayed log may legally begin mid-sequence after retention deleted its head. So replaying a
log's batch headers in order rebuilds exactly the state the leader had — the same on every replica and
after failover. ``end_offset`` (Kafka's map end offset) is the offset after the last recorded batch;
snapshots (:meth:`~ProducerStateManager.snapshot_bytes`, files via
:mod:`raystream.storage.producer_snapshot`) store the state as of that offset, and
:meth:`~ProducerStateManager.replay` applies only the batches a loaded snapshot does not cover yet.

Pure: no I/O, no clock (time comes in as ``now_ms``). Not thread-safe: the replica actor's event loop
serialises all calls.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable
from typing import Any

import crc32c
import msgpack

from raystream.errors import (
    CorruptRecordError,
    InvalidProducerEpochError,
    InvalidRecordError,
    OutOfOrderSequenceError,
)
from raystream.record import (
    MAX_PRODUCER_EPOCH,
    MAX_SEQUENCE,
    NO_PRODUCER_EPOCH,
    NO_PRODUCER_ID,
    NO_SEQUENCE,
    increment_sequence,
)
from raystream.storage.batch import BatchHeader

log = logging.getLogger(__name__)

#: As Kafka's ProducerStateEntry.NUM_BATCHES_TO_RETAIN (and max.in.flight.requests.per.connection <= 5).
NUM_BATCHES_TO_RETAIN = 5
#: Kafka's producer.id.expiration.ms default (one day).
DEFAULT_PRODUCER_ID_EXPIRATION_MS = 86_400_000
#: 2 adds the aborted transactions; version 1 snapshots (none) are still read.
SNAPSHOT_VERSION = 2
_READABLE_SNAPSHOT_VERSIONS = (1, 2)


def batch_last_sequence(header: BatchHeader) -> int:
    """The last sequence of a stored batch, wrapped as Kafka does (``BatchHeader.last_sequence`` does not
    wrap); ``NO_SEQUENCE`` for a batch without sequences."""
    if header.base_sequence < 0:
        return NO_SEQUENCE
    return increment_sequence(header.base_sequence, header.last_offset_delta)


@dataclasses.dataclass(frozen=True)
class ProducerBatch:
    """What a producer's entry remembers of one appended batch: enough to answer its retry (Kafka's
    ProducerStateEntry's BatchMetadata; renamed here, as ``raystream.protocol.BatchMetadata`` is the public
    answer of ``send_batch``)."""

    first_seq: int
    last_seq: int
    first_offset: int
    last_offset: int
    timestamp: int  # the batch's max timestamp, as the original produce response reported it

    @property
    def base_offset(self) -> int:
        return self.first_offset


@dataclasses.dataclass(frozen=True)
class DuplicateBatch:
    """``check_and_prepare``'s answer to a retry of a batch that is already in the log: do not append;
    reply with these (the original) offsets and timestamp."""

    producer_id: int
    producer_epoch: int
    base_sequence: int
    last_sequence: int
    base_offset: int
    last_offset: int
    timestamp: int


@dataclasses.dataclass(frozen=True)
class AbortedTransaction:
    """An aborted transaction of one producer in this partition: its batches lie in
    ``[first_offset, last_offset]``; ``last_offset`` is the ABORT marker's (Kafka's AbortedTxn)."""

    producer_id: int
    first_offset: int
    last_offset: int


@dataclasses.dataclass(frozen=True)
class ReplayOverlap:
    """``check_and_prepare``'s answer, for a *replay* producer, to a batch whose first ``skip`` records were
    already written (by an earlier run of the same deterministic producer, batched differently): append
    only the rest, from sequence ``base_sequence + skip``."""

    skip: int


@dataclasses.dataclass
class ProducerStateEntry:
    """One producer id's state: its epoch, its last batches (oldest first) and its idle clock."""

    producer_id: int
    producer_epoch: int = NO_PRODUCER_EPOCH
    batches: list[ProducerBatch] = dataclasses.field(default_factory=list)
    last_timestamp: int = -1
    current_txn_first_offset: int | None = None  # first offset of the open transaction, if any

    @property
    def is_empty(self) -> bool:
        return not self.batches

    @property
    def first_seq(self) -> int:
        return self.batches[0].first_seq if self.batches else NO_SEQUENCE

    @property
    def last_seq(self) -> int:
        return self.batches[-1].last_seq if self.batches else NO_SEQUENCE

    @property
    def last_offset(self) -> int:
        return self.batches[-1].last_offset if self.batches else -1

    def find_batch(self, producer_epoch: int, first_seq: int, last_seq: int) -> ProducerBatch | None:
        """The retained batch of ``producer_epoch`` covering exactly ``first_seq..last_seq``, if any."""
        if producer_epoch != self.producer_epoch:
            return None
        for batch in self.batches:
            if batch.first_seq == first_seq and batch.last_seq == last_seq:
                return batch
        return None

    def set_epoch(self, producer_epoch: int) -> None:
        """Move to ``producer_epoch``; a different epoch forgets the batches (sequences restart at 0)."""
        if producer_epoch != self.producer_epoch:
            self.batches = []
            self.producer_epoch = producer_epoch

    def add_batch(self, batch: ProducerBatch, max_batches: int) -> None:
        self.batches.append(batch)
        if len(self.batches) > max_batches:
            del self.batches[:len(self.batches) - max_batches]

    def touch(self, timestamp: int) -> None:
        # Never backwards: a batch with an older (CreateTime) timestamp must not age an active producer.
        self.last_timestamp = max(self.last_timestamp, timestamp)


class ProducerStateManager:
    """The idempotent-producer state of one partition replica. See the module docstring for the rules.

    Not thread-safe: the replica actor's event loop serialises all calls.
    """

    def __init__(self, partition_name: str, max_batches_per_producer: int = NUM_BATCHES_TO_RETAIN) -> None:
        if max_batches_per_producer < 1:
            raise ValueError(f"max_batches_per_producer must be >= 1, not {max_batches_per_producer}")
        self.partition_name = partition_name
        self.max_batches_per_producer = max_batches_per_producer
        self.producers: dict[int, ProducerStateEntry] = {}
        self.end_offset = 0  # the offset after the last batch recorded (Kafka's map end offset)
        #: Aborted transactions, by marker offset (Kafka's transaction index): what read_committed skips.
        self.aborted: list[AbortedTransaction] = []
        #: producer id -> offset ranges of its aborted transactions (the lookup behind :meth:`is_aborted`).
        self._aborted_by_producer: dict[int, list[tuple[int, int]]] = {}
        #: Producer ids with an open transaction (so the LSO costs O(open transactions), not O(producers)).
        self._open: set[int] = set()

    # -- queries --------------------------------------------------------------------------------------------
    def entry(self, producer_id: int) -> ProducerStateEntry | None:
        return self.producers.get(producer_id)

    def __len__(self) -> int:
        return len(self.producers)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ProducerStateManager):
            return NotImplemented
        return (self.partition_name == other.partition_name and self.end_offset == other.end_offset
                and self.producers == other.producers and self.aborted == other.aborted)

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return (f"ProducerStateManager({self.partition_name}, producers={len(self.producers)}, "
                f"end_offset={self.end_offset})")

    # -- the leader's check ---------------------------------------------------------------------------------
    def check_and_prepare(self, producer_id: int, producer_epoch: int, base_sequence: int, last_sequence: int,
                          now_ms: int, replay: bool = False) -> DuplicateBatch | ReplayOverlap | None:
        """Check a batch the leader is about to append (see the table in the module docstring).

        Returns a :class:`DuplicateBatch` for a retry of a batch already appended (do not append it
        again), ``None`` when the batch may be appended — then :meth:`update` must record it before the
        next batch of the same producer is checked. Changes no state. ``now_ms`` is accepted for a
        uniform signature; these rules do not depend on time.
        """
        if producer_id == NO_PRODUCER_ID:
            return None
        self._check_ranges(producer_id, producer_epoch, base_sequence, last_sequence)
        entry = self.producers.get(producer_id)
        if entry is None:
            if base_sequence != 0:
                raise self._out_of_order(producer_id, producer_epoch, 0, base_sequence,
                                         "unknown producer id: its first batch must have sequence 0")
            return None
        duplicate = entry.find_batch(producer_epoch, base_sequence, last_sequence)
        if duplicate is not None:
            return DuplicateBatch(producer_id, producer_epoch, base_sequence, last_sequence,
                                  duplicate.first_offset, duplicate.last_offset, duplicate.timestamp)
        if producer_epoch < entry.producer_epoch:
            raise InvalidProducerEpochError(
                f"[{self.partition_name}] producer {producer_id} has epoch {producer_epoch}, older than its "
                f"current epoch {entry.producer_epoch}: fenced", partition=self.partition_name,
                producer_id=producer_id, producer_epoch=producer_epoch, current_epoch=entry.producer_epoch)
        if producer_epoch > entry.producer_epoch:
            if base_sequence != 0:
                raise self._out_of_order(producer_id, producer_epoch, 0, base_sequence,
                                         f"a new epoch (current {entry.producer_epoch}) starts at sequence 0")
            return None
        expected = increment_sequence(entry.last_seq, 1)
        if replay and base_sequence < expected and producer_epoch == entry.producer_epoch:
            # A replay of records this producer already wrote (see ReplayOverlap); sequences of a replay
            # never wrap, so plain comparisons hold.
            if last_sequence < expected:
                return DuplicateBatch(producer_id, producer_epoch, base_sequence, last_sequence, -1,
                                      entry.last_offset, entry.batches[-1].timestamp if entry.batches else -1)
            return ReplayOverlap(expected - base_sequence)
        if base_sequence != expected:
            raise self._out_of_order(producer_id, producer_epoch, expected, base_sequence,
                                     f"last appended sequence {entry.last_seq}")
        return None

    def _check_ranges(self, producer_id: int, producer_epoch: int, base_sequence: int,
                      last_sequence: int) -> None:
        problems = []
        if producer_id < 0:
            problems.append(f"producer id {producer_id}")
        if not 0 <= producer_epoch <= MAX_PRODUCER_EPOCH:
            problems.append(f"producer epoch {producer_epoch}")
        if not 0 <= base_sequence <= MAX_SEQUENCE:
            problems.append(f"base sequence {base_sequence}")
        if not 0 <= last_sequence <= MAX_SEQUENCE:
            problems.append(f"last sequence {last_sequence}")
        if problems:
            raise InvalidRecordError(
                f"[{self.partition_name}] idempotent batch of producer {producer_id} has an invalid "
                + ", ".join(problems), partition=self.partition_name, producer_id=producer_id)

    def _out_of_order(self, producer_id: int, producer_epoch: int, expected: int, received: int,
                      reason: str) -> OutOfOrderSequenceError:
        return OutOfOrderSequenceError(
            f"[{self.partition_name}] out of order sequence for producer {producer_id} (epoch "
            f"{producer_epoch}): expected sequence {expected}, received {received} ({reason})",
            partition=self.partition_name, producer_id=producer_id, producer_epoch=producer_epoch,
            expected_sequence=expected, received_sequence=received)

    # -- recording batches ----------------------------------------------------------------------------------
    def update(self, header: BatchHeader, now_ms: int) -> ProducerStateEntry | None:
        """Record a batch that is now in the log (appended, replicated or replayed). Validates nothing and
        never raises for a legal history. Returns the producer's entry (``None`` for a batch without a
        producer id). ``now_ms`` is accepted for a uniform signature: the state depends on the log only,
        so every replica derives the same state (the idle clock runs on the batches' max timestamps, as in
        Kafka)."""
        self.end_offset = max(self.end_offset, header.next_offset)
        producer_id = header.producer_id
        if producer_id < 0:
            return None
        entry = self.producers.get(producer_id)
        if entry is None:
            entry = self.producers[producer_id] = ProducerStateEntry(producer_id)
        elif header.producer_epoch < entry.producer_epoch:
            log.warning("[%s] batch at offset %d of producer %d has epoch %d, older than the last seen %d",
                        self.partition_name, header.base_offset, producer_id, header.producer_epoch,
                        entry.producer_epoch)
        entry.set_epoch(header.producer_epoch)
        entry.touch(header.max_timestamp)
        if header.is_control:  # a transaction marker ends the open transaction (commit or abort)
            first = entry.current_txn_first_offset
            if first is not None and not header.is_commit_marker:
                self._add_aborted(AbortedTransaction(producer_id, first, header.base_offset))
            entry.current_txn_first_offset = None
            self._open.discard(producer_id)
            return entry
        if header.base_sequence >= 0:
            entry.add_batch(ProducerBatch(header.base_sequence, batch_last_sequence(header), header.base_offset,
                                          header.last_offset, header.max_timestamp),
                            self.max_batches_per_producer)
        if header.is_transactional and entry.current_txn_first_offset is None:
            entry.current_txn_first_offset = header.base_offset
            self._open.add(producer_id)
        return entry

    def replay(self, headers: Iterable[BatchHeader], now_ms: int) -> int:
        """Record the batches of ``headers`` (in log order) that end at or after :attr:`end_offset` — the
        part of the log a loaded snapshot does not cover. Returns how many were recorded."""
        applied = 0
        for header in headers:
            if header.last_offset < self.end_offset:
                continue
            self.update(header, now_ms)
            applied += 1
        return applied

    def rebuild(self, headers: Iterable[BatchHeader], now_ms: int, start_offset: int = 0) -> None:
        """Forget everything, then record every batch of ``headers`` (a log's batches in order, e.g. after
        a truncation or when no usable snapshot exists)."""
        self.reset(start_offset)
        for header in headers:
            self.update(header, now_ms)

    # -- forgetting -----------------------------------------------------------------------------------------
    # -- transactions -----------------------------------------------------------------------------------------
    def first_unstable_offset(self) -> int | None:
        """The first offset of the oldest open transaction (the last stable offset is ``min(HW, this)``)."""
        firsts = [self.producers[pid].current_txn_first_offset for pid in self._open]
        return min(firsts) if firsts else None

    def is_aborted(self, header: BatchHeader) -> bool:
        """Is this a data batch of an aborted transaction (or an abort marker)? read_committed skips it."""
        if not header.is_transactional:
            return False
        ranges = self._aborted_by_producer.get(header.producer_id)
        return ranges is not None and any(lo <= header.base_offset <= hi for lo, hi in ranges)

    def _add_aborted(self, txn: AbortedTransaction) -> None:
        self.aborted.append(txn)
        self._aborted_by_producer.setdefault(txn.producer_id, []).append((txn.first_offset, txn.last_offset))

    def drop_aborted_below(self, offset: int) -> None:
        """Forget aborted transactions that end below ``offset`` (the log start moved past them)."""
        kept = [t for t in self.aborted if t.last_offset >= offset]
        if len(kept) != len(self.aborted):
            self.aborted, self._aborted_by_producer = [], {}
            for txn in kept:
                self._add_aborted(txn)

    def remove_expired(self, now_ms: int,
                       producer_id_expiration_ms: int = DEFAULT_PRODUCER_ID_EXPIRATION_MS) -> list[int]:
        """Drop the producers idle for at least ``producer_id_expiration_ms`` (Kafka's
        producer.id.expiration.ms), except those with an open transaction. Returns the dropped ids."""
        expired = [pid for pid, entry in self.producers.items()
                   if entry.current_txn_first_offset is None
                   and now_ms - entry.last_timestamp >= producer_id_expiration_ms]
        for pid in expired:
            del self.producers[pid]
        return expired

    def clear(self) -> None:
        """Forget every producer (``end_offset`` is kept)."""
        self.producers.clear()
        self._open.clear()

    def reset(self, start_offset: int = 0) -> None:
        """Forget every producer and start over at ``start_offset`` (before a rebuild from the log)."""
        self.producers.clear()
        self._open.clear()
        self.aborted, self._aborted_by_producer = [], {}
        self.end_offset = start_offset

    # -- snapshots ------------------------------------------------------------------------------------------
    def snapshot_bytes(self) -> bytes:
        """The state as bytes: msgpack ``[version, crc32c(body), body]``; the body is msgpack
        ``[partition, end_offset, [[pid, epoch, last_timestamp, txn_first_offset, [[first_seq, last_seq,
        first_offset, last_offset, timestamp], ...]], ...]]``. Every retained batch is kept (Kafka keeps
        only the last one), so a retry is still recognised after recovery from a snapshot."""
        producers = [[e.producer_id, e.producer_epoch, e.last_timestamp, e.current_txn_first_offset,
                      [[b.first_seq, b.last_seq, b.first_offset, b.last_offset, b.timestamp] for b in e.batches]]
                     for e in self.producers.values()]
        aborted = [[t.producer_id, t.first_offset, t.last_offset] for t in self.aborted]
        body = msgpack.packb([self.partition_name, self.end_offset, producers, aborted])
        return msgpack.packb([SNAPSHOT_VERSION, crc32c.crc32c(body), body])

    @classmethod
    def from_snapshot_bytes(cls, data: bytes, partition_name: str | None = None,
                            max_batches_per_producer: int = NUM_BATCHES_TO_RETAIN,
                            end_offset: int | None = None) -> ProducerStateManager:
        """The state :meth:`snapshot_bytes` encoded. ``partition_name`` (default: the stored one) names the
        result; with ``end_offset`` (the offset in the snapshot's file name) the stored end offset must
        match. Raises :class:`~raystream.errors.CorruptRecordError` for bad, foreign or damaged bytes."""
        body = _checked_body(data)
        try:
            fields = msgpack.unpackb(body, strict_map_key=False)
            name, stored_end, producers = fields[:3]
            aborted = fields[3] if len(fields) > 3 else []  # version 1: no transactions
            manager = cls(partition_name if partition_name is not None else str(name), max_batches_per_producer)
            manager.end_offset = _int(stored_end)
            for pid, epoch, last_ts, txn_first, batches in producers:
                entry = ProducerStateEntry(_int(pid), _int(epoch), [], _int(last_ts),
                                           None if txn_first is None else _int(txn_first))
                entry.batches = [ProducerBatch(*(_int(v) for v in b)) for b in batches]
                del entry.batches[:-max_batches_per_producer]
                manager.producers[entry.producer_id] = entry
                if entry.current_txn_first_offset is not None:
                    manager._open.add(entry.producer_id)
            for pid, first, last in aborted:
                manager._add_aborted(AbortedTransaction(_int(pid), _int(first), _int(last)))
        except CorruptRecordError:
            raise
        except Exception as exc:  # a checksummed body that does not fit the format: a bug or a foreign file
            raise CorruptRecordError(f"malformed producer snapshot: {exc!r:.200}") from None
        if end_offset is not None and manager.end_offset != end_offset:
            raise CorruptRecordError(
                f"producer snapshot for offset {end_offset} holds the state at offset {manager.end_offset}")
        return manager


def _checked_body(data: bytes) -> bytes:
    try:
        frame = msgpack.unpackb(data)
    except Exception as exc:  # msgpack raises several types for garbage; all mean a corrupt snapshot
        raise CorruptRecordError(f"undecodable producer snapshot: {exc!r:.200}") from None
    if not isinstance(frame, list) or len(frame) != 3:
        raise CorruptRecordError(f"not a producer snapshot: {frame!r:.80}")
    version, checksum, body = frame
    if version not in _READABLE_SNAPSHOT_VERSIONS:
        raise CorruptRecordError(f"unsupported producer snapshot version {version!r:.20}")
    if not isinstance(body, bytes) or checksum != crc32c.crc32c(body):
        raise CorruptRecordError("producer snapshot checksum mismatch")
    return body


def _int(value: Any) -> int:
    if type(value) is not int:
        raise CorruptRecordError(f"expected an integer in the producer snapshot, found {value!r:.40}")
    return value
