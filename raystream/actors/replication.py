"""Replication of a partition, both sides: the leader's replicator tasks and the follower's handlers.

Replication is **push**, driven by the leader: one replicator task per follower sends every new batch
(read back from the leader's log as the segment files' bytes, undecoded) to the follower, which checks
each message's checksum and writes the same bytes, and answers with its log end offset: a batch is
encoded once, by the leader that assigned its offsets. Why push rather than Kafka's pull: on Ray an actor call is the unit of
cost, and a push needs one call per batch per follower where pull needs a long-poll plus the data; the
leader also knows the moment data arrives, so acks=all completes one hop sooner. What pull gives Kafka —
the follower decides when it is ready, and catch-up after an outage is the same code as steady state — we
keep: the replicator always sends "from the follower's log end offset", so catch-up, steady state and
re-sync after a restart are one loop. Batches put in the object store are shared between followers at the
same position (the same ObjectRef is handed to each), and only the last few are kept.

When a replicator is idle it still sends an empty push every ``replica.lag.time.max.ms / 3``: that is the
heartbeat that keeps a live follower in the ISR and carries the high watermark.

Every push also carries the leader's log start offset, and the follower answers with its own: so a
follower's log start follows the leader's (retention, DeleteRecords) as Kafka's followers learn it from
fetch responses, and the leader knows each follower's, for DeleteRecords' low watermark. A DeleteRecords
wakes the idle replicators at once rather than waiting for the next heartbeat.

Concurrency: mixed into the async actor :class:`raystream.actors.replica.PartitionReplica`, whose event
loop runs every method here; it uses that class's state (``state``, ``log``, ``producers``,
``broker_config``, ``_shared_refs``, ``_push_positions``, ``_isr_tasks``, ``_wait`` / ``_signal``,
``_advance_high_watermark``) and is not usable on its own.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import ray

from raystream import handles
from raystream.clock import now_ms as _now_ms
from raystream.core.partition import IsrProposal
from raystream.errors import FencedLeaderEpochError, RaystreamError
from raystream.protocol import ReplicaStatus, Role
from raystream.storage.batch import RawBatches, raw_batches

log = logging.getLogger(__name__)
#: Object-store refs of pushes kept for followers at the same offset: at most this many, and only while
#: some follower's next push starts where one does (a push is up to replica.fetch.max.bytes, 16 MiB by
#: default, pinned in the object store while referenced).
_SHARED_REFS_MAX = 4



class ReplicationMixin:
    """Leader side (``_replicate_loop`` per follower, ISR expansion) and follower side (``replica_status``,
    ``truncate_for_leader``, ``replicate``) of replication; see the module docstring."""

    # -- replication: leader side ----------------------------------------------------------------------------
    def _follower(self, broker: int):
        return handles.get_replica(self.cluster, self.topic, self.partition, broker)

    async def _replicate_loop(self, broker: int, epoch: int) -> None:
        cfg = self.broker_config
        heartbeat_s = cfg.replica_lag_time_max_ms / 3000
        follower_leo: int | None = None
        handle = None
        while self.state.role is Role.LEADER and self.state.leader_epoch == epoch:
            try:
                if handle is None or follower_leo is None:
                    handle = self._follower(broker)
                    follower_leo = await self._sync_follower(handle, epoch)
                leo = self.log.log_end_offset
                batches: Any = []
                self._push_positions[broker] = follower_leo
                if follower_leo < leo:
                    batches = self._shared_ref(follower_leo)
                follower_leo, follower_start = await asyncio.wait_for(
                    handle.replicate.remote(epoch, self.broker_id, batches, self.state.high_watermark,
                                            self.log.log_start_offset),
                    timeout=cfg.request_timeout_ms / 1000)
                self._push_positions[broker] = follower_leo
                self._forget_shared_refs()
                if self.state.record_follower(broker, follower_leo, leo, _now_ms(), follower_start):
                    self._signal("hw")  # a DeleteRecords may be waiting for this follower's log start offset
                self._advance_high_watermark()
                self._maybe_expand_isr(broker)
                if follower_leo >= self.log.log_end_offset:
                    await self._wait("data", heartbeat_s)
            except asyncio.CancelledError:
                raise
            except RaystreamError as exc:
                if exc.invalid_metadata or "epoch" in type(exc).__name__.lower():
                    log.info("[%s] replication to broker %d stopped: %s", self.name, broker, exc)
                    return
                log.warning("[%s] replication to broker %d failed: %s", self.name, broker, exc)
                follower_leo = None
                self._push_positions.pop(broker, None)  # the re-sync decides where its next push starts
                await asyncio.sleep(cfg.replica_retry_backoff_ms / 1000)
            except Exception as exc:  # follower dead, restarting or slow: retry after a backoff
                log.info("[%s] follower %d unreachable (%s); retrying", self.name, broker, type(exc).__name__)
                handle, follower_leo = None, None
                self._push_positions.pop(broker, None)
                await asyncio.sleep(cfg.replica_retry_backoff_ms / 1000)

    async def _sync_follower(self, handle, epoch: int) -> int:
        """KIP-101/279 handshake: truncate the follower where its epochs and this leader's diverge."""
        status = await handle.replica_status.remote()
        follower_epochs = [(int(e), int(o)) for e, o in status.epochs]
        truncate_to = self.log.epoch_cache.truncation_point(follower_epochs, status.log_end_offset,
                                                            self.log.log_end_offset)
        return await handle.truncate_for_leader.remote(epoch, self.broker_id, truncate_to,
                                                       self.log.log_start_offset)

    def _shared_ref(self, start: int) -> ray.ObjectRef:
        """Batches from ``start`` put in the object store once and shared by followers at that offset."""
        for (ref_start, ref_end), ref in self._shared_refs.items():
            if ref_start == start and ref_end == self.log.log_end_offset:
                return ref
        batches = self.log.read_raw(start, self.broker_config.replica_fetch_max_bytes)
        ref = ray.put(batches)  # copies the file slices: the log may be truncated afterwards
        self._forget_shared_refs()
        self._shared_refs[(start, self.log.log_end_offset)] = ref
        while len(self._shared_refs) > _SHARED_REFS_MAX:
            self._shared_refs.popitem(last=False)
        return ref

    def _forget_shared_refs(self) -> None:
        """Drop the pushes no follower will be sent again (none's next push starts at them)."""
        wanted = set(self._push_positions.values())
        for key in [key for key in self._shared_refs if key[0] not in wanted]:
            del self._shared_refs[key]

    def _maybe_expand_isr(self, broker: int) -> None:
        """Propose adding ``broker`` without waiting for the controller: the proposed member counts for the
        high watermark from now on (the maximal ISR), so its replication must go on meanwhile."""
        proposal = self.state.start_isr_proposal(self.state.isr_to_expand(broker))
        if proposal is not None:
            task = asyncio.ensure_future(self._send_isr_proposal(proposal))
            self._isr_tasks.add(task)
            task.add_done_callback(self._isr_tasks.discard)

    async def _send_isr_proposal(self, proposal: IsrProposal) -> None:
        """Send a proposal the core started (``Partition.start_isr_proposal``) and hand it the outcome."""
        try:
            controller = handles.get_named(self.controller_name)
            new_isr, partition_epoch = await asyncio.wait_for(controller.alter_isr.remote(
                self.topic, self.partition, self.broker_id, proposal.leader_epoch, list(proposal.isr),
                proposal.partition_epoch), timeout=self.broker_config.request_timeout_ms / 1000)
            if self.state.isr_proposal_answered(proposal, tuple(new_isr), partition_epoch):
                log.info("[%s] ISR is now %s", self.name, new_isr)
        except FencedLeaderEpochError as exc:  # no longer the leader: the controller's new role follows
            log.info("[%s] ISR change to %s refused: %s", self.name, list(proposal.isr), exc)
        except Exception as exc:  # timed out or controller restarting: outcome unknown, stays pending
            log.warning("[%s] ISR change to %s not answered: %s", self.name, list(proposal.isr), exc)
        finally:
            self.state.isr_proposal_failed(proposal)  # ends the request if no answer did (no-op otherwise)
        self._advance_high_watermark()
        self._signal("hw")

    # -- replication: follower side ----------------------------------------------------------------------------
    async def replica_status(self) -> ReplicaStatus:
        return ReplicaStatus(self.log.log_end_offset, self.log.epoch_cache.latest_epoch,
                             list(self.log.epoch_cache.entries), self.log.log_start_offset,
                             self.state.high_watermark)

    async def truncate_for_leader(self, epoch: int, leader: int, offset: int, leader_log_start: int) -> int:
        self.state.accept_replication(epoch, leader)
        if offset < self.log.log_start_offset or self.log.log_end_offset < leader_log_start:
            self.log.truncate_fully_and_start_at(leader_log_start)
            self.producers.after_full_truncation()
        elif offset < self.log.log_end_offset:
            self.log.truncate_to(offset)
            self.producers.after_truncation()  # the cut batches' sequences must be accepted again
            log.info("[%s] truncated to %d following broker %d at epoch %d", self.name,
                     self.log.log_end_offset, leader, epoch)
        return self.log.log_end_offset

    async def replicate(self, epoch: int, leader: int, batches: list[RawBatches], high_watermark: int,
                        log_start_offset: int = 0) -> tuple[int, int]:
        """Append the leader's batches (its segments' bytes, each message checked here and written
        verbatim) from this replica's log end offset, take its high watermark and follow its log start offset
        (moved by retention or DeleteRecords; up to this replica's high watermark, as Kafka's followers do).
        Returns this replica's new log end offset and log start offset."""
        self.state.accept_replication(epoch, leader)
        leo = self.log.log_end_offset
        for group in batches:
            for raw in raw_batches(group):
                if raw.header.base_offset < leo:
                    if raw.header.last_offset < leo or self.log.log_start_offset < leo:
                        continue  # already here
                    # An empty log restarted inside this batch: the leader's log start offset, where the
                    # re-sync started it, was moved mid-batch by DeleteRecords. Restart at the batch, as
                    # Kafka's follower does (UnexpectedAppendOffset); the log start follows below.
                    self.log.truncate_fully_and_start_at(raw.header.base_offset)
                    self.producers.after_full_truncation()
                    leo = raw.header.base_offset
                # One batch per append, recorded at once: the producer state is exact at every segment roll.
                self.log.append_raw_as_follower(raw, now=_now_ms())
                self.producers.record(raw.header)
        if self.state.follow_high_watermark(high_watermark, self.log.log_end_offset):
            self.log.set_high_watermark(self.state.high_watermark)
        start = self.state.follower_log_start(log_start_offset, self.log.log_start_offset, self.log.log_end_offset)
        if start is not None:
            self.log.delete_records_before(start)
            self.producers.after_retention()
        return self.log.log_end_offset, self.log.log_start_offset
