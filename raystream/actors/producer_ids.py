"""A partition replica's idempotent-producer state, kept in step with its log and its snapshot files.

The rules live in :mod:`raystream.core.producer_state` (pure) and the file format in
:mod:`raystream.storage.producer_snapshot`; this module is the plumbing the replica actor calls at each
point of a log's life, as Kafka's UnifiedLog does with its ProducerStateManager:

    event                                   what happens here
    --------------------------------------  ---------------------------------------------------------------
    log opened (actor start or restart)     load the newest snapshot at or below the log end offset, replay
                                            the batch headers after it (no data is decoded)
    leader's check before an append         ``check_in_order``: a batch ahead of its expected sequence first
                                            waits (bounded) for the ones it overtook on the way
    leader append / follower append         ``record(header)`` — every batch, so ``end_offset`` follows the log
    segment roll (``Log.on_roll``)          snapshot named for the new segment's base offset
    truncation (follower, KIP-101)          delete snapshots above the new log end offset, reload
    full truncation (follower out of range) delete every snapshot, start empty at the new log start
    retention moved the log start offset    delete snapshots below it (entries are kept: KIP-360)
    housekeeping                            drop producers idle for ``producer.id.expiration.ms``
    clean shutdown                          snapshot at the log end offset (the next open replays nothing)

Snapshots are an optimisation, except for one thing: a missing or corrupt one costs a longer replay (the
log's headers replayed from its start rebuild what the leader had), but a producer whose batches retention
already deleted is then forgotten — as in Kafka, which also keeps its state only in snapshots.

Concurrency: not thread-safe. Every call comes from the replica actor's event loop; ``on_roll`` runs inside
``Log.append`` on that same loop, with the log's lock held (it touches only this state and snapshot files).
The leader's final ``check`` → ``Log.append`` → ``record`` sequence must run with no ``await`` in between,
so the batches of one producer are checked and applied one at a time; ``check_in_order`` may wait *before*
its final check (for batches of the producer that were overtaken on the way), never after it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from raystream.clock import now_ms as _now_ms
from raystream.core.producer_state import DuplicateBatch, ProducerStateManager, ReplayOverlap
from raystream.errors import OutOfOrderSequenceError
from raystream.record import MAX_SEQUENCE, increment_sequence
from raystream.storage.batch import BatchHeader
from raystream.storage.log import Log
from raystream.storage.producer_snapshot import (
    delete_snapshots_above,
    delete_snapshots_below,
    load_latest_snapshot,
    write_snapshot,
)

log = logging.getLogger(__name__)
#: As Kafka's producer.id.expiration.check.interval.ms: how often housekeeping looks for idle producers
#: (more often when ``producer.id.expiration.ms`` itself is shorter).
PRODUCER_ID_EXPIRATION_CHECK_INTERVAL_MS = 600_000
#: How long the leader holds a batch whose sequence is ahead of the expected one, waiting for the batches
#: before it (Ray may run one caller's pipelined requests out of order) before answering with
#: OutOfOrderSequenceError. The sender retries such a batch anyway; waiting saves the round trips.
REORDER_WAIT_MS = 1000



def sequence_ahead(exc: OutOfOrderSequenceError) -> bool:
    """Whether the rejected batch starts *after* the expected sequence (a gap that batches still on their
    way may fill), not before it (an old retry). Sequences wrap at 2**31, so "after" is the shorter way."""
    expected, received = getattr(exc, "expected_sequence", None), getattr(exc, "received_sequence", None)
    if not isinstance(expected, int) or not isinstance(received, int):
        return False
    return 0 < (received - expected) % (MAX_SEQUENCE + 1) < (MAX_SEQUENCE + 1) // 2


class ReplicaProducerState:
    """The producer state of the replica that owns ``log`` (see the module docstring)."""

    def __init__(self, log_: Log, name: str) -> None:
        self.log = log_
        self.name = name
        self.manager = ProducerStateManager(name)
        self.replayed_batches = 0  # by the last load: how much of the log the snapshot did not cover
        self.load()
        log_.on_roll = self._on_roll

    # -- loading --------------------------------------------------------------------------------------------
    def load(self) -> None:
        """(Re)build the state from the newest usable snapshot and the log after it (Kafka's
        truncateAndReload): snapshots outside ``[log start, log end]`` are deleted first."""
        directory = self.log.directory
        start, end = self.log.log_start_offset, self.log.log_end_offset
        delete_snapshots_above(directory, end)
        delete_snapshots_below(directory, start)
        loaded = load_latest_snapshot(
            directory, end, lambda offset, data: ProducerStateManager.from_snapshot_bytes(
                data, self.name, self.manager.max_batches_per_producer, end_offset=offset))
        if loaded is None:
            manager = ProducerStateManager(self.name, self.manager.max_batches_per_producer)
            manager.reset(start)
        else:
            manager = loaded[1]
        self.manager = manager
        self.replayed_batches = manager.replay(self.log.iter_headers(max(manager.end_offset, start)), _now_ms())
        log.debug("[%s] producer state: %d producer(s), snapshot %s, %d batch(es) replayed", self.name,
                  len(manager), None if loaded is None else loaded[0], self.replayed_batches)

    def after_truncation(self) -> None:
        """The log lost its tail (``Log.truncate_to``): forget what was cut, reload."""
        self.load()

    def after_full_truncation(self) -> None:
        """The log restarted empty (``Log.truncate_fully_and_start_at``): no snapshot describes it."""
        delete_snapshots_above(self.log.directory, -1)
        self.manager = ProducerStateManager(self.name, self.manager.max_batches_per_producer)
        self.manager.reset(self.log.log_start_offset)

    # -- the leader's check and every replica's record -----------------------------------------------------
    def check(self, producer_id: int, producer_epoch: int, base_sequence: int,
              record_count: int, replay: bool = False) -> DuplicateBatch | ReplayOverlap | None:
        """The leader's check of a batch it is about to append (see ``ProducerStateManager.check_and_prepare``).
        Returns the original batch for a retry; raises OutOfOrderSequenceError / InvalidProducerEpochError /
        InvalidRecordError. Changes nothing: :meth:`record` must follow the append."""
        last_sequence = increment_sequence(base_sequence, record_count - 1) if base_sequence >= 0 else base_sequence
        return self.manager.check_and_prepare(producer_id, producer_epoch, base_sequence, last_sequence, _now_ms(),
                                              replay)

    async def check_in_order(self, producer_id: int, producer_epoch: int, base_sequence: int, record_count: int,
                             wait: Callable[[float], Awaitable[None]], max_wait_s: float,
                             recheck: Callable[[], None], replay: bool = False
                             ) -> DuplicateBatch | ReplayOverlap | None:
        """:meth:`check`, except that a batch *ahead* of its expected sequence first waits up to
        ``max_wait_s`` (``wait(seconds)`` returns at the next append or the timeout) for the batches before
        it — Ray may start one caller's pipelined requests out of order — calling ``recheck()`` (e.g. "still
        the leader?") after every wait. Returns right after the successful check, without suspending, so
        the caller's append follows it with no ``await`` in between."""
        deadline = time.monotonic() + max_wait_s
        while True:
            try:
                return self.check(producer_id, producer_epoch, base_sequence, record_count, replay)
            except OutOfOrderSequenceError as exc:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not sequence_ahead(exc):
                    raise
            await wait(remaining)
            recheck()

    def record(self, header: BatchHeader) -> None:
        """A batch is now in the log (appended by the leader or replicated): remember it."""
        self.manager.update(header, 0)  # ``now`` is not used by update: the state depends on the log only

    def catch_up(self) -> None:
        """Replay any batches the state has not seen (it lags only if a caller skipped :meth:`record`)."""
        if self.manager.end_offset < self.log.log_end_offset:
            self.manager.replay(self.log.iter_headers(self.manager.end_offset), _now_ms())

    # -- snapshots and housekeeping -------------------------------------------------------------------------
    def snapshot(self) -> int | None:
        """Write the state as of the log end offset (clean shutdown). Returns its offset."""
        self.catch_up()
        offset = self.manager.end_offset
        if offset != self.log.log_end_offset:
            return None  # defensive: a snapshot must describe the log end exactly (the next open replays)
        write_snapshot(self.log.directory, offset, self.manager.snapshot_bytes())
        return offset

    def _on_roll(self, base_offset: int) -> None:
        # Every batch below the new segment was recorded by now (the appender records right after each
        # append), so the state is exactly the state "as of" the roll offset. Otherwise skip: no harm.
        if self.manager.end_offset == base_offset:
            write_snapshot(self.log.directory, base_offset, self.manager.snapshot_bytes())

    def after_retention(self) -> None:
        """The log start offset moved: snapshots below it can never be used again. The producers' entries
        stay (as since Kafka 2.8, KIP-360): a producer whose batches were deleted is still known."""
        delete_snapshots_below(self.log.directory, self.log.log_start_offset)
        self.manager.drop_aborted_below(self.log.log_start_offset)

    def expire(self, expiration_ms: int, now_ms: int | None = None) -> list[int]:
        """Forget producers idle (by their batches' max timestamp) for ``expiration_ms``."""
        expired = self.manager.remove_expired(_now_ms() if now_ms is None else now_ms, expiration_ms)
        if expired:
            log.info("[%s] expired %d idle producer id(s)", self.name, len(expired))
        return expired

    def __len__(self) -> int:
        return len(self.manager)
