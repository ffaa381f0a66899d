"""The controller's group coordinator: consumer-group membership, assignments and committed offsets.

One component of :class:`raystream.actors.controller.Controller`; the rules live in :mod:`raystream.core.group`
(one :class:`~raystream.core.group.GroupMetadata` per group) and the assignors in
:mod:`raystream.core.assignors`. The coordinator assigns partitions itself (server side), so a join
returns the member's assignment directly: ``join_group`` is Kafka's JoinGroup + SyncGroup in one call. It
long-polls while the join phase runs (other members rejoining, ``group.initial.rebalance.delay.ms``).

Committed offsets live in a :class:`~raystream.storage.compacted_map.CompactedMap` under
``<data_dir>/<cluster>/__consumer_offsets`` — a compacted segment log of our own, like Kafka's internal
topic — keyed by (group, topic, partition), so they survive a controller restart; group *membership* does
not (members rejoin when their heartbeat fails, as after a Kafka coordinator move). Offsets of a group
that has been empty for ``offsets.retention.minutes`` are deleted.

Concurrency contract: runs on the controller actor's event loop (its ticks and lag gauges as two tasks
started by :meth:`GroupCoordinator.start`); no ``await`` between reading and changing a group, so group
operations need no lock (they never touch the metadata lock either, and only read the metadata).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from pathlib import Path
from typing import Any

from raystream import metrics
from raystream.actors.replica_handles import ReplicaHandles
from raystream.clock import now_ms as _now_ms
from raystream.config import BrokerConfig
from raystream.core.assignors import Subscription
from raystream.core.group import GroupMetadata, GroupState
from raystream.core.group_results import ClassicJoinResult, JoinCompletion, JoinResult
from raystream.core.lag import consumer_lag
from raystream.core.metadata import ClusterMetadata
from raystream.errors import GroupIdNotFoundError, GroupNotEmptyError, UnknownMemberIdError
from raystream.protocol import (
    LATEST,
    DescribeGroupResult,
    JoinGroupResult,
    ListOffsetsRequest,
    TopicPartition,
)
from raystream.storage.compacted_map import CompactedMap

log = logging.getLogger(__name__)
OFFSETS_DIR = "__consumer_offsets"
GENERATIONS_DIR = "__group_generations"
_GROUP_TICK_S = 0.1
_LAG_CALLS_IN_FLIGHT_MAX = 64  # ListOffsets calls to leaders at once while computing the lag gauges



class GroupCoordinator:
    """Consumer groups (see the module docstring)."""

    def __init__(self, root: Path, metadata: ClusterMetadata, broker_config: BrokerConfig,
                 replicas: ReplicaHandles | None, gauges: metrics.ControllerGauges) -> None:
        """``root``: ``<data_dir>/<cluster>``; ``metadata``: read only (topics and their partition counts);
        ``replicas``: where the lag gauges ask leaders for high watermarks."""
        self.metadata = metadata
        self.broker_config = broker_config
        self._replicas = replicas
        self._gauges = gauges
        self._groups: dict[str, GroupMetadata] = {}
        self._join_waiters: dict[str, dict[str, asyncio.Future]] = {}
        self._empty_since_ms: dict[str, int] = {}
        self._rebalancing: dict[str, asyncio.Event] = {}  # set while a group's join phase runs
        self._sync_waiters: dict[str, list[asyncio.Future]] = {}  # classic syncs waiting for the leader's
        self._offsets = CompactedMap(root / OFFSETS_DIR, clock=_now_ms)
        # Each group's last generation id (Kafka keeps it in its GroupMetadata records of __consumer_offsets):
        # a restarted coordinator continues from it, so no generation id is ever handed out twice.
        self._generations = CompactedMap(root / GENERATIONS_DIR, clock=_now_ms)
        self._group_task: asyncio.Task | None = None
        self._lag_task: asyncio.Task | None = None

    def start(self) -> None:
        """Start the group ticks and the lag gauges on the running event loop (none outside one)."""
        try:
            self._group_task = asyncio.get_running_loop().create_task(self._group_loop())
            self._lag_task = asyncio.get_running_loop().create_task(self._lag_loop())
        except RuntimeError:  # not on an event loop (constructed in a unit test)
            self._group_task = self._lag_task = None

    def close(self) -> None:
        """Stop the loops and close the committed-offsets and group-generation logs."""
        for task in (self._group_task, self._lag_task):
            if task is not None:
                task.cancel()
        self._offsets.close()
        self._generations.close()

    def complete_txn_offsets(self, offsets: dict[str, list[list[Any]]], now_ms: int) -> None:
        """A committed transaction's group offsets (group -> [[topic, partition, offset, metadata]]) become
        the groups' committed offsets (Kafka's GroupCoordinator.onTransactionCompleted)."""
        self._offsets.update({(group, t, p): [o, m, now_ms] for group, entries in offsets.items()
                              for t, p, o, m in entries})

    def _group(self, group_id: str, create: bool = False) -> GroupMetadata | None:
        group = self._groups.get(group_id)
        if group is None and create:
            if not isinstance(group_id, str) or not group_id:
                raise ValueError(f"group_id must be a non-empty str, got {group_id!r}")
            group = GroupMetadata(group_id, member_ids=lambda client: f"{client or 'consumer'}-{uuid.uuid4()}",
                                  initial_rebalance_delay_ms=self.broker_config.group_initial_rebalance_delay_ms,
                                  topic_partitions=self._partition_counts(),
                                  generation_id=self._generations.get(group_id, 0))
            self._groups[group_id] = group
        return group

    def _partition_counts(self) -> dict[str, int]:
        return {name: len(t.partitions) for name, t in self.metadata.topics.items()}

    # -- membership --------------------------------------------------------------------------------------------
    async def join_group(self, group_id: str, member_id: str | None, group_instance_id: str | None,
                         client_id: str, protocols: list[str], topics: list[str], owned: list[TopicPartition],
                         owned_generation: int, session_timeout_ms: int, rebalance_timeout_ms: int) -> JoinGroupResult:
        """JoinGroup + SyncGroup in one call (see :class:`~raystream.protocol.JoinGroupResult`)."""
        subscription = Subscription(sorted(set(topics)), list(owned), owned_generation, group_instance_id)
        group, result, completion = await self._join(group_id, member_id, group_instance_id, client_id, protocols,
                                                     subscription, session_timeout_ms, rebalance_timeout_ms)
        generation = result.generation_id if completion is None else completion.generation_id
        sync = group.sync(result.member_id, generation, now_ms=_now_ms())
        self._tick_group(group)
        return JoinGroupResult(result.member_id, sync.generation_id, sync.protocol, tuple(sync.assignment or ()),
                               tuple(sync.revoked), sync.rejoin)

    async def join_group_classic(self, group_id: str, member_id: str | None, group_instance_id: str | None,
                                 client_id: str, protocols: list[str], subscription: Subscription,
                                 session_timeout_ms: int, rebalance_timeout_ms: int) -> ClassicJoinResult:
        """Kafka's JoinGroup alone (the member sends :meth:`sync_group_classic` next), for Kafka clients of
        the gateway. They share the group rules with the Python handles: a group whose protocol is one of
        raystream's assignors is assigned here, for every member; another protocol (a Kafka client's own
        assignor) is assigned by the leader, which gets every member's subscription."""
        group, result, completion = await self._join(group_id, member_id, group_instance_id, client_id, protocols,
                                                     subscription, session_timeout_ms, rebalance_timeout_ms)
        generation = result.generation_id if completion is None else completion.generation_id
        server = group.server_assignment
        leader = None if server else group.leader_id
        members = () if leader != result.member_id else tuple(
            (m.member_id, m.group_instance_id, m.subscription) for m in group.members.values())
        return ClassicJoinResult(result.member_id, generation, group.protocol, leader, server, members)

    async def sync_group_classic(self, group_id: str, member_id: str, generation_id: int,
                                 assignments: dict[str, list[TopicPartition]] | None = None
                                 ) -> tuple[TopicPartition, ...]:
        """Kafka's SyncGroup: the member's partitions in ``generation_id``. ``assignments``: the leader's, in
        a group the leader assigns (ignored otherwise). A follower's sync waits for the leader's, as in
        Kafka; a rebalance meanwhile raises RebalanceInProgressError (the member rejoins)."""
        group = self._group(group_id)
        if group is None:
            raise UnknownMemberIdError(f"unknown group {group_id!r} (the coordinator restarted?)",
                                       group_id=group_id, member_id=member_id)
        timeout_s = max((m.rebalance_timeout_ms for m in group.members.values()), default=0) / 1000 + 30
        deadline = time.monotonic() + timeout_s
        while True:
            sync = group.sync(member_id, generation_id, assignments, now_ms=_now_ms())
            self._tick_group(group)
            if sync.assignment is not None:
                return tuple(sync.assignment)
            waiter = asyncio.get_running_loop().create_future()
            self._sync_waiters.setdefault(group_id, []).append(waiter)
            await asyncio.wait_for(waiter, max(0.0, deadline - time.monotonic()))

    async def _join(self, group_id: str, member_id: str | None, group_instance_id: str | None, client_id: str,
                    protocols: list[str], subscription: Subscription, session_timeout_ms: int,
                    rebalance_timeout_ms: int) -> tuple[GroupMetadata, JoinResult, JoinCompletion | None]:
        """Join and, while the join phase runs, wait for its completion (None: answered at once)."""
        group = self._group(group_id, create=True)
        group.update_topic_partitions(self._partition_counts(), _now_ms())
        result = group.join(member_id, group_instance_id, protocols, subscription,
                            session_timeout_ms=session_timeout_ms, rebalance_timeout_ms=rebalance_timeout_ms,
                            now_ms=_now_ms(), client_id=client_id)
        if not result.awaiting:
            return group, result, None
        waiter = asyncio.get_running_loop().create_future()
        old = self._join_waiters.setdefault(group_id, {}).pop(result.member_id, None)
        if old is not None and not old.done():
            old.set_exception(UnknownMemberIdError(f"member {result.member_id} joined again"))
        self._join_waiters[group_id][result.member_id] = waiter
        self._tick_group(group)
        completion: JoinCompletion = await asyncio.wait_for(waiter, rebalance_timeout_ms / 1000 + 30)
        return group, result, completion

    async def heartbeat_group(self, group_id: str, member_id: str, generation_id: int, wait_ms: int = 0) -> bool:
        """True: a rebalance is in progress, the member must rejoin. ``wait_ms``: a long-poll heartbeat —
        held until a rebalance starts or ``wait_ms`` passes, so members hear of a rebalance at once instead
        of at their next heartbeat (Kafka waits up to heartbeat.interval.ms here)."""
        group = self._group(group_id)
        if group is None:
            raise UnknownMemberIdError(f"unknown group {group_id!r} (the coordinator restarted?)",
                                       group_id=group_id, member_id=member_id)
        if group.heartbeat(member_id, generation_id, _now_ms()).rebalance_in_progress or wait_ms <= 0:
            return group.state is GroupState.PREPARING_REBALANCE
        event = self._rebalancing.setdefault(group_id, asyncio.Event())
        try:
            await asyncio.wait_for(event.wait(), wait_ms / 1000)
        except asyncio.TimeoutError:
            pass
        if member_id not in group.members:
            raise UnknownMemberIdError(f"member {member_id} left group {group_id!r} meanwhile",
                                       group_id=group_id, member_id=member_id)
        # Not a second heartbeat: the member's session counts from when it last *sent* one, so a client
        # that died during the hold expires on time.
        return group.state is GroupState.PREPARING_REBALANCE

    async def leave_group(self, group_id: str, member_id: str, group_instance_id: str | None = None) -> None:
        """LeaveGroup; a static member may leave by its ``group_instance_id`` alone (``member_id`` "")."""
        group = self._group(group_id)
        if group is not None and not member_id and group_instance_id is not None:
            member_id = next((m.member_id for m in group.members.values()
                              if m.group_instance_id == group_instance_id), "")
        if group is not None and member_id in group.members:
            group.leave(member_id, _now_ms())
            self._tick_group(group)

    def _tick_group(self, group: GroupMetadata) -> None:
        """Apply time to one group and answer the joins its completed join phase decided."""
        result = group.poll(_now_ms())
        if result.completion is not None:
            self._generations.update({group.group_id: result.completion.generation_id})  # before anyone hears
            waiters = self._join_waiters.pop(group.group_id, {})
            for member_id, waiter in waiters.items():
                if waiter.done():
                    continue
                if member_id in result.completion.members:
                    waiter.set_result(result.completion)
                else:
                    waiter.set_exception(UnknownMemberIdError(
                        f"member {member_id} was removed from group {group.group_id!r} during the rebalance",
                        group_id=group.group_id, member_id=member_id))
        if group.state is GroupState.EMPTY:
            self._empty_since_ms.setdefault(group.group_id, _now_ms())
        else:
            self._empty_since_ms.pop(group.group_id, None)
        if group.state is not GroupState.COMPLETING_REBALANCE:  # assigned, or rebalancing: syncs try again
            for waiter in self._sync_waiters.pop(group.group_id, []):
                if not waiter.done():
                    waiter.set_result(None)
        event = self._rebalancing.get(group.group_id)
        if group.state is GroupState.PREPARING_REBALANCE:
            self._rebalancing.setdefault(group.group_id, asyncio.Event()).set()
        elif event is not None and event.is_set():
            self._rebalancing[group.group_id] = asyncio.Event()  # the next rebalance wakes the next waiters

    async def _group_loop(self) -> None:
        retention_ms = self.broker_config.offsets_retention_minutes * 60_000
        last_retention = 0.0
        while True:
            await asyncio.sleep(_GROUP_TICK_S)
            try:
                counts = self._partition_counts()
                for group in list(self._groups.values()):
                    group.update_topic_partitions(counts, _now_ms())
                    self._tick_group(group)
                if time.monotonic() - last_retention > 60:
                    last_retention = time.monotonic()
                    self._expire_offsets(retention_ms)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("group coordinator tick failed")

    # -- lag metrics ---------------------------------------------------------------------------------------------
    async def _lag_loop(self) -> None:
        """Every ``metrics.group.lag.interval.ms``: each group's lag per topic as a gauge."""
        interval_s = self.broker_config.metrics_group_lag_interval_ms / 1000
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.report_group_lag()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("group lag metrics failed")

    async def report_group_lag(self) -> None:
        """The lag ``describe_group`` shows (committed offsets here, each leader's high watermark, one
        :func:`~raystream.core.lag.consumer_lag`), summed per (group, topic) over its partitions with a
        committed offset. A (group, topic) with a partition whose lag is unknown this round (no leader, or
        it did not answer) keeps its last value; one without committed offsets any more (group deleted,
        offsets expired, topic deleted) goes to 0 once, then away (``raystream.metrics.ControllerGauges``)."""
        committed: dict[str, dict[TopicPartition, int]] = {}
        for (group_id, topic, partition), (offset, _, _) in self._offsets.items():
            if topic in self.metadata.topics:
                committed.setdefault(group_id, {})[TopicPartition(topic, partition)] = offset
        ends = await self._high_watermarks({tp for offsets in committed.values() for tp in offsets})
        lags: dict[tuple[str, str], int | None] = {}
        for group_id, offsets in committed.items():
            for tp, lag in consumer_lag(offsets, ends).items():
                key, known = (group_id, tp.topic), lags.get((group_id, tp.topic), 0)
                lags[key] = None if lag is None or known is None else known + lag
        self._gauges.group_lag.update(lags)

    async def _high_watermarks(self, tps: set[TopicPartition]) -> dict[TopicPartition, int | None]:
        """Each partition's high watermark from its leader (ListOffsets LATEST, as ``Admin.describe_group``
        asks); None where there is no leader or it did not answer within the session timeout."""
        timeout_s = self.broker_config.replica_session_timeout_ms / 1000
        in_flight = asyncio.Semaphore(_LAG_CALLS_IN_FLIGHT_MAX)

        async def ask(tp: TopicPartition) -> int | None:
            topic = self.metadata.topics.get(tp.topic)
            state = topic.partitions.get(tp.partition) if topic is not None else None
            if state is None or state.leader < 0:
                return None
            async with in_flight:
                try:
                    handle = self._replicas.cached((tp.topic, tp.partition, state.leader))
                    return await asyncio.wait_for(handle.list_offset.remote(ListOffsetsRequest(LATEST)), timeout_s)
                except Exception:  # leader moving, restarting or gone: unknown this round
                    return None

        ordered = sorted(tps)
        return dict(zip(ordered, await asyncio.gather(*(ask(tp) for tp in ordered)), strict=True))

    def _expire_offsets(self, retention_ms: int) -> None:
        """Kafka's offsets.retention.minutes: offsets of a group empty (or unknown) for that long go."""
        now = _now_ms()
        stale = []
        for (group_id, topic, partition), (_, _, committed_ms) in self._offsets.items():
            group = self._groups.get(group_id)
            if group is not None and group.state is not GroupState.EMPTY:
                continue
            since = self._empty_since_ms.get(group_id, committed_ms)
            if now - max(since, committed_ms) >= retention_ms:
                stale.append((group_id, topic, partition))
        if stale:
            log.info("offsets.retention: deleting %d committed offsets of empty groups", len(stale))
            self._offsets.update(deletes=stale)

    # -- offsets -----------------------------------------------------------------------------------------------
    async def commit_offsets(self, group_id: str, member_id: str, generation_id: int,
                             offsets: dict[TopicPartition, tuple[int, str]]) -> None:
        """Commit ``offsets`` (tp → (offset, metadata)) for the group; a stale generation or an unknown
        member raises CommitFailedError. A consumer outside any generation (-1) may commit while the group is
        empty (manual assignment with a group id)."""
        group = self._group(group_id, create=generation_id < 0)
        if group is None:
            raise UnknownMemberIdError(f"unknown group {group_id!r}", group_id=group_id, member_id=member_id)
        group.validate_commit(member_id, generation_id, now_ms=_now_ms())
        now = _now_ms()
        puts = {}
        for tp, (offset, metadata) in offsets.items():
            if tp.topic not in self.metadata.topics:
                raise ValueError(f"cannot commit an offset for unknown topic {tp.topic!r}")
            if not isinstance(offset, int) or offset < 0:
                raise ValueError(f"offset for {tp} must be an int >= 0, got {offset!r}")
            puts[(group_id, tp.topic, tp.partition)] = [offset, metadata or "", now]
        self._offsets.update(puts)
        self._tick_group(group)

    async def fetch_offsets(self, group_id: str, partitions: list[TopicPartition] | None = None
                            ) -> dict[TopicPartition, tuple[int, str]]:
        """Committed (offset, metadata) per partition; partitions without a commit are left out."""
        out = {}
        for (g, topic, partition), (offset, metadata, _) in self._offsets.items():
            tp = TopicPartition(topic, partition)
            if g == group_id and (partitions is None or tp in partitions):
                out[tp] = (offset, metadata)
        return out

    # -- admin -------------------------------------------------------------------------------------------------
    async def list_groups(self) -> list[str]:
        with_offsets = {g for (g, _, _), _ in self._offsets.items()}
        live = {g for g, group in self._groups.items() if group.state is not GroupState.DEAD}
        return sorted(live | with_offsets)

    async def describe_group_state(self, group_id: str) -> DescribeGroupResult:
        group = self._group(group_id)
        offsets = await self.fetch_offsets(group_id)
        if group is None and not offsets:
            raise GroupIdNotFoundError(f"unknown group {group_id!r}", group_id=group_id)
        if group is None:
            return DescribeGroupResult(group_id, GroupState.EMPTY.value, -1, None, [], offsets)
        d = group.describe()
        members = [{"member_id": m.member_id, "group_instance_id": m.group_instance_id, "client_id": m.client_id,
                    "topics": list(m.topics), "assignment": list(m.assignment)} for m in d.members]
        return DescribeGroupResult(group_id, d.state.value, d.generation_id, d.protocol, members, offsets)

    async def reset_group_offsets(self, group_id: str, offsets: dict[TopicPartition, int]) -> None:
        """Replace committed offsets; only while the group has no active member (Kafka's rule)."""
        group = self._group(group_id)
        if group is not None and group.state not in (GroupState.EMPTY, GroupState.DEAD):
            raise GroupNotEmptyError(f"group {group_id!r} is {group.state.value}: stop its consumers first",
                                     group_id=group_id)
        await self.commit_offsets(group_id, "", -1, {tp: (o, "reset") for tp, o in offsets.items()})

    async def delete_group(self, group_id: str) -> None:
        group = self._group(group_id)
        keys = [k for k, _ in self._offsets.items() if k[0] == group_id]
        if group is None and not keys:
            raise GroupIdNotFoundError(f"unknown group {group_id!r}", group_id=group_id)
        if group is not None:
            group.delete()  # GroupNotEmptyError unless Empty
            self._groups.pop(group_id, None)
            self._generations.update(deletes=[group_id] if group_id in self._generations else [])
        self._offsets.update(deletes=keys)
