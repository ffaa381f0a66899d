"""The transaction coordinator, in the controller (Kafka's TransactionCoordinator + transaction log).

A transactional producer (``Producer(transactional_id=...)``) has one coordinator-side entry per
``transactional.id``: its producer id and epoch, state, the partitions written in the open transaction,
the consumer-group offsets to commit with it (``send_offsets_to_transaction``) and when it started. Every
change is recorded in the transaction log before it is acted on (the write-ahead rule): a compacted map
(``<data_dir>/<cluster>/__transaction_state``, as Kafka's topic of that name), so a restarted controller
finishes what was prepared, and the log stays the size of the live transactional ids. An id idle for
``TRANSACTIONAL_ID_EXPIRATION_MS`` (Kafka's transactional.id.expiration.ms, 7 days) is forgotten.

States and moves, as Kafka's::

    Empty / CompleteCommit / CompleteAbort --add_partitions / add_offsets--> Ongoing
    Ongoing --end_txn(commit)--> PrepareCommit --markers written, offsets applied--> CompleteCommit
    Ongoing --end_txn(abort), timeout, a newer init--> PrepareAbort --markers written--> CompleteAbort

``init_transactions`` fences older incarnations: it aborts (or completes) what the previous epoch left
open and bumps the epoch, so a zombie's requests fail with ProducerFencedError here and
InvalidProducerEpochError at the partition leaders. Markers go to each partition's leader
(``PartitionReplica.write_txn_marker``, answered once the ISR has the marker), retried across leader
changes until ``transaction.marker.timeout.ms``; an open transaction older than its
``transaction.timeout.ms`` is aborted by the coordinator (with an epoch bump, as Kafka does).

Concurrency contract: a component of the async controller actor, on its event loop (the timeout checks as
one task, started by :meth:`TransactionCoordinator.start`); one ``asyncio.Lock`` per transactional id orders
the calls for it, so a commit and a timeout abort never interleave; different ids proceed concurrently. It
never takes the metadata lock (it only reads topics, and producer ids need none).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from pathlib import Path
from typing import Any

import ray

from raystream.actors.groups import GroupCoordinator
from raystream.actors.metadata_store import MetadataStore
from raystream.actors.replica_handles import ReplicaHandles
from raystream.clock import now_ms
from raystream.config import BrokerConfig
from raystream.errors import (
    InvalidTxnStateError,
    ProducerFencedError,
    RaystreamError,
    RequestTimeoutError,
)
from raystream.protocol import TopicPartition
from raystream.record import MAX_PRODUCER_EPOCH
from raystream.storage.compacted_map import CompactedMap

log = logging.getLogger(__name__)

EMPTY, ONGOING, PREPARE_COMMIT, PREPARE_ABORT, COMPLETE_COMMIT, COMPLETE_ABORT = (
    "Empty", "Ongoing", "PrepareCommit", "PrepareAbort", "CompleteCommit", "CompleteAbort")
#: Kafka's transaction.timeout.ms default and transaction.max.timeout.ms.
DEFAULT_TRANSACTION_TIMEOUT_MS = 60_000
MAX_TRANSACTION_TIMEOUT_MS = 900_000
#: How long the coordinator keeps retrying a partition's marker (leader changes, a restarting replica).
TRANSACTION_MARKER_TIMEOUT_MS = 120_000
_TIMEOUT_CHECK_S = 1.0
TRANSACTIONAL_ID_EXPIRATION_MS = 7 * 24 * 3600 * 1000
TXN_STATE_DIR = "__transaction_state"
_RETRY_BACKOFF_S = 0.2


@dataclasses.dataclass
class TransactionState:
    """One transactional id's entry (the value kept in the transaction log)."""

    transactional_id: str
    producer_id: int
    producer_epoch: int
    state: str = EMPTY
    timeout_ms: int = DEFAULT_TRANSACTION_TIMEOUT_MS
    started_ms: int = -1
    partitions: list[list[Any]] = dataclasses.field(default_factory=list)  # [[topic, partition], ...]
    offsets: dict[str, list[list[Any]]] = dataclasses.field(default_factory=dict)  # group -> [[t, p, o, md]]
    updated_ms: int = -1


class TransactionCoordinator:
    """``init_transactions``, ``add_partitions_to_txn``, ``add_offsets_to_txn``, ``end_txn``; see the module
    docstring."""

    def __init__(self, root: Path, store: MetadataStore, groups: GroupCoordinator, replicas: ReplicaHandles,
                 broker_config: BrokerConfig) -> None:
        """``root``: ``<data_dir>/<cluster>``; ``store``: topics and producer ids; ``groups``: where a
        committed transaction's offsets go; ``replicas``: the leaders that take the markers."""
        self._store = store
        self.metadata = store.metadata
        self._groups = groups
        self._replicas = replicas
        self.broker_config = broker_config
        self._txn_store = CompactedMap(root / TXN_STATE_DIR, clock=now_ms)
        self._txn_locks: dict[str, asyncio.Lock] = {}
        self._txn_timeouts: asyncio.Task | None = None

    def start(self) -> None:
        """Start the timeout checks (which also finish transactions a restarted controller found prepared).
        Idempotent; call on the actor's event loop."""
        if self._txn_timeouts is None:
            self._txn_timeouts = asyncio.get_running_loop().create_task(self._txn_timeout_loop())

    def close(self) -> None:
        """Close the transaction log (what the controller process's death releases)."""
        self._txn_store.close()

    def _txn_lock(self, transactional_id: str) -> asyncio.Lock:
        self.start()
        if transactional_id not in self._txn_locks:
            self._txn_locks[transactional_id] = asyncio.Lock()
        return self._txn_locks[transactional_id]

    def _txn(self, transactional_id: str) -> TransactionState | None:
        record = self._txn_store.get(transactional_id)
        return None if record is None else TransactionState(**record)

    def _save_txn(self, txn: TransactionState) -> None:
        txn.updated_ms = now_ms()
        self._txn_store.update({txn.transactional_id: dataclasses.asdict(txn)})

    def _fenced(self, txn: TransactionState | None, transactional_id: str, producer_id: int,
                producer_epoch: int) -> TransactionState:
        if txn is None:
            raise InvalidTxnStateError(f"unknown transactional id {transactional_id!r}: call init_transactions")
        if producer_id != txn.producer_id or producer_epoch != txn.producer_epoch:
            raise ProducerFencedError(
                f"transactional id {transactional_id!r} belongs to producer {txn.producer_id} epoch "
                f"{txn.producer_epoch}, not {producer_id} epoch {producer_epoch}: fenced by a newer instance",
                transactional_id=transactional_id)
        return txn

    # -- the producer's calls -------------------------------------------------------------------------------------
    async def init_transactions(self, transactional_id: str,
                                timeout_ms: int = DEFAULT_TRANSACTION_TIMEOUT_MS) -> tuple[int, int]:
        """Kafka's InitProducerId for a transactional id: finish what an older instance left open (abort an
        ongoing transaction, complete a prepared one), then hand out the next epoch of the same producer id
        (a new id once the epochs are used up). Returns ``(producer_id, producer_epoch)``."""
        if not isinstance(transactional_id, str) or not transactional_id:
            raise TypeError(f"transactional_id must be a non-empty str, got {transactional_id!r}")
        if not isinstance(timeout_ms, int) or not 1 <= timeout_ms <= MAX_TRANSACTION_TIMEOUT_MS:
            raise ValueError(f"transaction_timeout_ms must be an int in [1, {MAX_TRANSACTION_TIMEOUT_MS}], "
                             f"got {timeout_ms!r}")
        async with self._txn_lock(transactional_id):
            txn = self._txn(transactional_id)
            if txn is None:
                txn = TransactionState(transactional_id, self._store.next_producer_id(), 0, timeout_ms=timeout_ms)
            else:
                if txn.state == ONGOING:  # abort it under the new epoch: its markers fence the old instance
                    self._bump_epoch(txn)
                    self._save_txn(txn)
                    await self._finish(txn, commit=False)
                elif txn.state in (PREPARE_COMMIT, PREPARE_ABORT):
                    await self._finish(txn, commit=txn.state == PREPARE_COMMIT)
                    self._bump_epoch(txn)
                else:
                    self._bump_epoch(txn)
                txn.state, txn.timeout_ms, txn.partitions, txn.offsets = EMPTY, timeout_ms, [], {}
            self._save_txn(txn)
            return txn.producer_id, txn.producer_epoch

    async def add_partitions_to_txn(self, transactional_id: str, producer_id: int, producer_epoch: int,
                                    partitions: list[TopicPartition]) -> None:
        """Kafka's AddPartitionsToTxn: the producer is about to write to ``partitions`` in its transaction."""
        async with self._txn_lock(transactional_id):
            txn = self._fenced(self._txn(transactional_id), transactional_id, producer_id, producer_epoch)
            self._begin(txn)
            known = {tuple(p) for p in txn.partitions}
            for tp in partitions:
                if tp.topic not in self.metadata.topics:
                    raise ValueError(f"unknown topic {tp.topic!r}")
                known.add((tp.topic, tp.partition))
            txn.partitions = sorted([list(p) for p in known])
            self._save_txn(txn)

    async def add_offsets_to_txn(self, transactional_id: str, producer_id: int, producer_epoch: int,
                                 group_id: str, offsets: dict[TopicPartition, tuple[int, str]]) -> None:
        """Kafka's AddOffsetsToTxn + TxnOffsetCommit: commit these group offsets if, and only if, the
        transaction commits."""
        async with self._txn_lock(transactional_id):
            txn = self._fenced(self._txn(transactional_id), transactional_id, producer_id, producer_epoch)
            self._begin(txn)
            pending = {(t, p): [t, p, o, m] for t, p, o, m in txn.offsets.get(group_id, [])}
            for tp, (offset, metadata) in offsets.items():
                if not isinstance(offset, int) or offset < 0:
                    raise ValueError(f"offset for {tp} must be an int >= 0, got {offset!r}")
                pending[(tp.topic, tp.partition)] = [tp.topic, tp.partition, offset, metadata or ""]
            txn.offsets[group_id] = list(pending.values())
            self._save_txn(txn)

    async def end_txn(self, transactional_id: str, producer_id: int, producer_epoch: int, commit: bool) -> None:
        """Kafka's EndTxn: prepare, write the markers, apply the offsets (commit), complete. A retried call
        for a transaction already completed the same way is answered as done."""
        async with self._txn_lock(transactional_id):
            txn = self._fenced(self._txn(transactional_id), transactional_id, producer_id, producer_epoch)
            if txn.state in (EMPTY, COMPLETE_COMMIT, COMPLETE_ABORT):
                done = {COMPLETE_COMMIT: True, COMPLETE_ABORT: False}.get(txn.state)
                if done is not None and done != commit:
                    raise InvalidTxnStateError(f"transaction of {transactional_id!r} already ended "
                                               f"({txn.state}); cannot {'commit' if commit else 'abort'}")
                return
            if txn.state in (PREPARE_COMMIT, PREPARE_ABORT) and (txn.state == PREPARE_COMMIT) != commit:
                raise InvalidTxnStateError(f"transaction of {transactional_id!r} is in {txn.state}")
            await self._finish(txn, commit)
            self._save_txn(txn)

    # -- inside -----------------------------------------------------------------------------------------------
    def _bump_epoch(self, txn: TransactionState) -> None:
        if txn.producer_epoch >= MAX_PRODUCER_EPOCH - 1:  # epochs used up: continue as a new producer id
            txn.producer_id, txn.producer_epoch = self._store.next_producer_id(), 0
        else:
            txn.producer_epoch += 1

    def _begin(self, txn: TransactionState) -> None:
        if txn.state in (PREPARE_COMMIT, PREPARE_ABORT):
            raise InvalidTxnStateError(f"transaction of {txn.transactional_id!r} is being ended ({txn.state})")
        if txn.state != ONGOING:
            txn.state, txn.started_ms, txn.partitions, txn.offsets = ONGOING, now_ms(), [], {}

    async def _finish(self, txn: TransactionState, commit: bool) -> None:
        """Take an Ongoing or Prepare* transaction to Complete* (records Prepare* first); no-op otherwise."""
        if txn.state == ONGOING:
            txn.state = PREPARE_COMMIT if commit else PREPARE_ABORT
            self._save_txn(txn)
        if txn.state not in (PREPARE_COMMIT, PREPARE_ABORT):
            return
        commit = txn.state == PREPARE_COMMIT
        await asyncio.gather(*(self._write_marker(TopicPartition(t, p), txn, commit) for t, p in txn.partitions))
        if commit:
            self._groups.complete_txn_offsets(txn.offsets, now_ms())
        txn.state = COMPLETE_COMMIT if commit else COMPLETE_ABORT
        txn.partitions, txn.offsets = [], {}
        log.info("transaction of %r (producer %d epoch %d) %s", txn.transactional_id, txn.producer_id,
                 txn.producer_epoch, "committed" if commit else "aborted")

    async def _write_marker(self, tp: TopicPartition, txn: TransactionState, commit: bool) -> None:
        deadline = now_ms() + TRANSACTION_MARKER_TIMEOUT_MS
        while True:
            topic = self.metadata.topics.get(tp.topic)
            if topic is None or tp.partition not in topic.partitions:
                return  # deleted meanwhile: nothing left to mark
            leader = topic.partitions[tp.partition].leader
            key = (tp.topic, tp.partition, leader)
            try:
                if leader < 0:
                    raise RequestTimeoutError(f"{tp} has no leader")
                await self._replicas.cached(key).write_txn_marker.remote(txn.producer_id, txn.producer_epoch, commit,
                                                                         self.broker_config.request_timeout_ms)
                return
            except (RaystreamError, ray.exceptions.RayError, ValueError) as exc:
                self._replicas.forget(key)
                if now_ms() >= deadline:
                    raise RequestTimeoutError(f"transaction marker for {tp} not written within "
                                              f"{TRANSACTION_MARKER_TIMEOUT_MS} ms: {exc}") from None
                log.info("marker for %s (producer %d) not written yet: %s", tp, txn.producer_id, exc)
                await asyncio.sleep(_RETRY_BACKOFF_S)

    async def _txn_timeout_loop(self) -> None:
        """Abort transactions open longer than their timeout (and fence their producer: epoch + 1)."""
        while True:
            await asyncio.sleep(_TIMEOUT_CHECK_S)
            now = now_ms()
            for transactional_id, record in self._txn_store.items():
                if record["state"] in (EMPTY, COMPLETE_COMMIT, COMPLETE_ABORT) and \
                        now - record["updated_ms"] >= TRANSACTIONAL_ID_EXPIRATION_MS:
                    self._txn_store.update(deletes=[transactional_id])
                    continue
                stuck = record["state"] in (PREPARE_COMMIT, PREPARE_ABORT)
                expired = record["state"] == ONGOING and now - record["started_ms"] >= record["timeout_ms"]
                if not (stuck or expired):
                    continue
                try:
                    async with self._txn_lock(transactional_id):
                        txn = self._txn(transactional_id)
                        if txn is None:
                            continue
                        if txn.state == ONGOING and now_ms() - txn.started_ms >= txn.timeout_ms:
                            log.warning("transaction of %r timed out after %d ms: aborting", transactional_id,
                                        txn.timeout_ms)
                            # Under a new epoch (Kafka's KIP-360): the markers fence the producer that let
                            # it time out, at the coordinator and at every partition it wrote to.
                            if txn.producer_epoch < MAX_PRODUCER_EPOCH - 1:
                                txn.producer_epoch += 1
                            await self._finish(txn, commit=False)
                            self._save_txn(txn)
                        elif txn.state in (PREPARE_COMMIT, PREPARE_ABORT):  # e.g. after a controller restart
                            await self._finish(txn, commit=txn.state == PREPARE_COMMIT)
                            self._save_txn(txn)
                except Exception as exc:  # the next round retries
                    log.warning("transaction %r could not be ended yet: %s", transactional_id, exc)
