"""The controller's failure handling: replica heartbeats, leader election, ISR fencing, re-replication.

One component of :class:`raystream.actors.controller.Controller`, with its dependencies passed in: the
metadata store (records, the metadata lock), the broker registry (new nodes), the replica-handle registry
and the replica liveness table. Its one job: keeping every partition led by a live in-sync replica.

How a failure is noticed, fastest first:

* a replica's own process restarted by Ray (``ray.kill``, a crash): its new incarnation calls
  :meth:`rejoin` at once; a restarted leader lost its leader state, so another in-sync replica is elected;
* no heartbeat answered for ``replica.session.timeout.ms`` (1.5 s): a silent, hung or partitioned replica,
  or a node Ray has not declared dead yet (that takes Ray ~15 s; we do not wait for it);
* ``ActorDiedError`` on a heartbeat, or Ray reporting the node dead: the replica is gone for good.

A failed leader is replaced by the first live ISR member (``raystream.core.election``); a failed follower
leaves every ISR at once, so ``acks=all`` does not stall for ``replica.lag.time.max.ms``. Each decision is
appended to the metadata log before any replica hears of it, and every heartbeat re-checks that each live
replica knows its current role and epoch, re-sending it if not: a controller that crashed between
recording and telling comes back from its log and finishes the job. Epochs only grow through recorded
records, so one epoch never has two leaders.

Re-replication: a broker dead for ``replica.reassignment.delay.ms`` has each of its replicas (outside the
ISR by then) rebuilt on the least-loaded live broker that holds no replica of that partition; the new
follower copies the log from the leader and joins the ISR when it has caught up.

Concurrency contract: runs on the controller actor's event loop, as three loops (heartbeats, node checks,
decisions) started by :meth:`FailureMonitor.start`. Heartbeats go out and their answers are recorded
without any lock; every decision (elections, ISR fencing, re-replication, :meth:`FailureMonitor.rejoin`) is
taken under the metadata lock (``MetadataStore.lock``); node registration takes the registration lock
first (``BrokerRegistry.registration_lock``), then the metadata lock.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import ray
import ray.exceptions as rex

from raystream import metrics
from raystream.actors.brokers import BrokerRegistry
from raystream.actors.metadata_store import MetadataStore
from raystream.actors.replica_handles import ReplicaHandles
from raystream.actors.replica_liveness import ReplicaKey, ReplicaLiveness
from raystream.config import BrokerConfig, TopicConfig
from raystream.core.election import Election, elect_leader, fence_dead_followers, replacement_broker
from raystream.core.metadata import ClusterMetadata, TopicState
from raystream.protocol import PartitionState, Role

log = logging.getLogger(__name__)
_DEAD = "dead"


class FailureMonitor:
    """Heartbeats, elections, rejoins and re-replication (see the module docstring)."""

    def __init__(self, store: MetadataStore, brokers: BrokerRegistry, replicas: ReplicaHandles,
                 liveness: ReplicaLiveness, broker_config: BrokerConfig, gauges: metrics.ControllerGauges,
                 ensure_started: Callable[[], Awaitable[None]]) -> None:
        """``ensure_started``: runs the controller's start if it has not run in this incarnation (after Ray
        restarted the controller, the monitor's decision loop starts it before deciding anything)."""
        self._store = store
        self.metadata = store.metadata
        self._brokers = brokers
        self._replicas = replicas
        self._liveness = liveness
        self.broker_config = broker_config
        self._gauges = gauges  # partition health here, group lag in the group coordinator
        self._ensure_started = ensure_started
        self._broker_dead_since: dict[int, float] = {}
        self._reports: dict[ReplicaKey, tuple[Any, ...]] = {}  # last heartbeat answer per replica
        self._pending_heartbeats: dict[ReplicaKey, asyncio.Task] = {}
        self._forgotten_brokers: set[int] = set()  # dead brokers whose replica actors were killed
        self._offline_since: dict[ReplicaKey, float] = {}  # recorded leaders reporting no role
        self._alive_nodes: set[str] | None = None  # Ray's live node ids, as the node loop last saw them
        self._monitor: asyncio.Task | None = None

    def start(self) -> None:
        """Start the monitor's loops on the running event loop (none outside one: a unit test)."""
        try:
            self._monitor = asyncio.get_running_loop().create_task(self._monitor_loop())
        except RuntimeError:  # not on an event loop (a unit test constructing the class): no monitor
            self._monitor = None

    # -- liveness -----------------------------------------------------------------------------------------------
    async def _heartbeat(self, key: ReplicaKey, timeout_s: float) -> tuple[Any, ...] | str | None:
        try:
            handle = self._replicas.cached(key)
            return tuple(await asyncio.wait_for(handle.heartbeat.remote(), timeout_s))
        except ValueError:  # no such actor (never created, or killed for good)
            return None
        except rex.ActorDiedError:
            self._replicas.forget(key)
            return _DEAD
        except Exception:  # unavailable (restarting, node unreachable) or slow: no answer this round
            return None

    async def _monitor_loop(self) -> None:
        """Three independent loops, so that none delays another: heartbeats go out every interval whatever
        else is slow, node bookkeeping (which may wait on a dying node) never holds up an election."""
        interval_s = self.broker_config.replica_heartbeat_interval_ms / 1000
        await asyncio.gather(self._every(interval_s, self._send_heartbeats),
                             self._every(interval_s, self._check_nodes),
                             self._every(interval_s, self._check_once, needs_start=True))

    async def _every(self, interval_s: float, step, needs_start: bool = False) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                if needs_start:  # after Ray restarted this controller
                    await self._ensure_started()
                await step()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("controller failure check %s failed; retrying", step.__name__)

    async def _send_heartbeats(self) -> None:
        """One heartbeat per replica on a live broker, unless its previous one is still outstanding."""
        timeout_s = self.broker_config.replica_session_timeout_ms / 1000
        loop = asyncio.get_running_loop()
        for t in list(self.metadata.topics.values()):
            for s in list(t.partitions.values()):
                for b in s.replicas:
                    key = (t.name, s.partition, b)
                    info = self.metadata.brokers.get(b)
                    if info is not None and info.alive and key not in self._pending_heartbeats:
                        self._pending_heartbeats[key] = loop.create_task(self._heartbeat_into(key, timeout_s))

    async def _heartbeat_into(self, key: ReplicaKey, timeout_s: float) -> None:
        """One heartbeat, its answer recorded when it comes."""
        try:
            answer = await self._heartbeat(key, timeout_s)
            if answer == _DEAD:
                self._liveness.died(key)
            elif answer is not None:
                self._liveness.answered(key)
                self._reports[key] = answer
        finally:
            self._pending_heartbeats.pop(key, None)

    async def _check_once(self) -> None:
        """Decide on what the heartbeats say so far: elections, ISR fencing, re-replication."""
        async with self._store.lock():
            now = time.monotonic()
            for broker, info in self.metadata.brokers.items():  # Ray says the node is gone: so is the broker
                if info.alive and self._alive_nodes is not None and info.node_id not in self._alive_nodes:
                    self._store.set_broker_alive(broker, False)
                    self._broker_dead_since.setdefault(broker, now)
                    log.warning("broker %d (node %s) is dead", broker, info.node_id)
            for broker, info in self.metadata.brokers.items():
                if not info.alive:
                    self._broker_dead_since.setdefault(broker, now)
            await self._decide(now, dict(self._reports))
            await self._reassign_dead_brokers(now)
            self.report_partition_health()

    def report_partition_health(self) -> None:
        """Per topic, the under-replicated (ISR smaller than the replica set) and offline (no leader)
        partitions of the metadata — what ``raystream status`` shows — as gauges (``raystream.metrics``;
        a deleted topic's go to 0 once, then away)."""
        topics = self.metadata.topics
        self._gauges.under_replicated.update(
            {(name,): sum(len(s.isr) < len(s.replicas) for s in t.partitions.values()) for name, t in topics.items()})
        self._gauges.offline.update({(name,): sum(s.leader < 0 for s in t.partitions.values())
                                     for name, t in topics.items()})
        self._gauges.refresh()

    async def _check_nodes(self) -> None:
        """Follow Ray's node table: a dead broker's replica actors are killed (so the names are free when
        the broker returns); a new or returning node registers its broker and gets its replicas back.
        Probing the nodes happens outside the metadata lock (a dying node can keep it waiting)."""
        nodes = await asyncio.to_thread(ray.nodes)
        alive_nodes = {n["NodeID"] for n in nodes if n["Alive"]}
        self._alive_nodes = alive_nodes
        dead_with_actors = {b for b, info in self.metadata.brokers.items()
                            if not info.alive and b not in self._forgotten_brokers}
        for broker in dead_with_actors:
            self._forgotten_brokers.add(broker)
            await self.forget_broker_replicas(broker)
        known_nodes = {info.node_id for info in self.metadata.brokers.values() if info.alive}
        if alive_nodes <= known_nodes:
            return  # nothing new (dead nodes are handled by _check_once)
        async with self._brokers.registration_lock():
            # Short timeout: an agent still starting answers on a later round (its claim goes on meanwhile).
            await self._brokers.register_nodes(only_new=True, nodes=nodes, on_change=self.brokers_changed,
                                               timeout_s=2 * self.broker_config.replica_session_timeout_ms / 1000)

    async def brokers_changed(self, before: dict[int, Any]) -> None:
        """After a registration (under the metadata lock; ``before``: the brokers as they were): a broker
        that came back gets its replicas; one whose data dir came back on another Ray node (a machine
        restarted before Ray declared the old node dead, or a dead node's directory claimed by a new node
        sharing its root) first loses its old replica actors, pinned to the old node."""
        was_alive = {b for b, info in before.items() if info.alive}
        after = {b for b, info in self.metadata.brokers.items() if info.alive}
        moved = {b for b in after & was_alive if self.metadata.brokers[b].node_id != before[b].node_id}
        for broker in moved:
            log.warning("broker %d moved to node %s", broker, self.metadata.brokers[broker].node_id)
            await self.forget_broker_replicas(broker)
        returned = after - (was_alive - moved)
        for broker in returned:
            log.info("broker %d is alive (again)", broker)
            self._broker_dead_since.pop(broker, None)
            self._forgotten_brokers.discard(broker)
        if returned:
            await asyncio.gather(*(self._replicas.ensure_replicas(t, only_missing=True)
                                   for t in list(self.metadata.topics.values())))

    async def forget_broker_replicas(self, broker: int) -> None:
        """Kill (for good) every replica actor of ``broker`` and wait, bounded, until their names are free,
        so that replicas can be created again when the broker returns."""
        keys = [(topic.name, state.partition, broker) for topic in self.metadata.topics.values()
                for state in topic.partitions.values() if broker in state.replicas]
        for key in keys:
            handle = self._replicas.forget(key)
            self._liveness.died(key)
            try:
                ray.kill(handle or self._replicas.lookup(*key), no_restart=True)
            except Exception:  # already gone
                pass
        deadline = time.monotonic() + self.broker_config.replica_session_timeout_ms / 1000 * 4
        while keys and time.monotonic() < deadline:
            keys = [k for k in keys if self._replicas.exists(*k)]
            if keys:
                await asyncio.sleep(0.05)
        if keys:
            log.warning("replica actors %s of broker %d still exist after being killed", keys, broker)

    # -- decisions (under the metadata lock) -----------------------------------------------------------------
    async def _decide(self, now: float, reports: dict[ReplicaKey, tuple[Any, ...]]) -> None:
        notify: list[tuple[PartitionState, set[int]]] = []
        resend: list[tuple[PartitionState, int]] = []
        for topic in list(self.metadata.topics.values()):
            unclean = TopicConfig.from_dict(topic.config).unclean_leader_election_enable
            for p in sorted(topic.partitions):
                state = topic.partitions[p]
                live = self._liveness.live_replicas(state, now)
                election = elect_leader(state, live, unclean)
                if election is not None:
                    notify.append((self._apply_election(state, election), live))
                    continue
                isr = fence_dead_followers(state, live)
                if isr is not None:
                    log.warning("%s-%d: followers %s failed; ISR %s -> %s", state.topic, p,
                                sorted(set(state.isr) - set(isr)), list(state.isr), list(isr))
                    self._store.record(ClusterMetadata.partition_record(state, state.leader, state.leader_epoch, isr))
                    notify.append((topic.partitions[p], live))
                    continue
                restarted_leader = self._reconcile(state, live, reports, now, resend)
                if restarted_leader is not None:
                    election = elect_leader(state, live, unclean, "leader holds no role", avoid=restarted_leader)
                    if election is not None:
                        notify.append((self._apply_election(state, election), live))
        await asyncio.gather(*(self.notify_partition(s, live) for s, live in notify),
                             *(self._send_role_safely(s, b) for s, b in resend))

    def _reconcile(self, state: PartitionState, live: set[int], reports: dict[ReplicaKey, tuple[Any, ...]],
                   now: float, resend: list[tuple[PartitionState, int]]) -> int | None:
        """Replicas that missed their role (a send timed out, the controller crashed between recording and
        telling) get it again. A recorded leader that has held no role for a session timeout is returned:
        it must be replaced (a restarted leader normally rejoins at once; this is the backstop)."""
        timeout_s = self.broker_config.replica_session_timeout_ms / 1000
        stale_leader = None
        for broker in live:
            key = (state.topic, state.partition, broker)
            report = reports.get(key)
            if report is None:
                continue
            offline = report[0] == Role.OFFLINE.value
            if offline and broker == state.leader:
                if now - self._offline_since.setdefault(key, now) > timeout_s:
                    stale_leader = broker
                continue
            self._offline_since.pop(key, None)
            if offline or report[1] < state.leader_epoch:
                resend.append((state, broker))
        return stale_leader

    def _apply_election(self, state: PartitionState, election: Election) -> PartitionState:
        log.warning("%s-%d: %s; leader %d -> %d at epoch %d, ISR %s%s", state.topic, state.partition,
                    election.reason, state.leader, election.leader, election.leader_epoch, list(election.isr),
                    "" if election.clean else " (UNCLEAN: acknowledged records may be lost)")
        self._store.record(ClusterMetadata.partition_record(state, election.leader, election.leader_epoch,
                                                      election.isr))
        return self.metadata.topics[state.topic].partitions[state.partition]

    async def notify_partition(self, state: PartitionState, live: set[int] | None = None) -> None:
        """Tell the partition's replicas (only ``live`` ones when given: a failed replica would only make
        us wait; it learns its role when it rejoins or answers a heartbeat again)."""
        await asyncio.gather(*(self._send_role_safely(state, b) for b in state.replicas
                               if (live is None or b in live) and self._store.broker_alive(b)))

    async def _send_role_safely(self, state: PartitionState, broker: int) -> None:
        key = (state.topic, state.partition, broker)
        try:
            handle = self._replicas.cached(key)
            await asyncio.wait_for(self._replicas.send_role(handle, state, broker),
                                   self.broker_config.replica_session_timeout_ms / 1000)
        except Exception as exc:  # the next heartbeat re-checks its role
            log.info("could not tell %s-%d on broker %d its role: %s", state.topic, state.partition, broker,
                     type(exc).__name__)

    # -- a restarted replica -------------------------------------------------------------------------------------
    async def rejoin(self, topic: str, partition: int, broker: int, lost_data: bool = False) -> PartitionState | None:
        """Called by a replica whose process Ray restarted (or whose log directory was lost): it has no role
        yet. A restarted leader gives way to another in-sync replica (it lost the followers' progress); a
        replica that lost its data leaves the ISR first, so it can never be elected with an empty log.
        Returns the partition's state (None: this broker no longer holds a replica of it)."""
        async with self._store.lock():
            state = self.metadata.topics[topic].partitions.get(partition) if topic in self.metadata.topics \
                else None
            if state is None or broker not in state.replicas:
                return None
            key = (topic, partition, broker)
            self._liveness.rejoined(key)
            self._replicas.forget(key)
            live = self._liveness.live_replicas(state, time.monotonic()) | {broker}
            if lost_data and broker in state.isr:
                log.warning("%s-%d: replica on broker %d lost its log; removing it from the ISR", topic,
                            partition, broker)
                live.discard(broker)
                unclean = TopicConfig.from_dict(self.metadata.topics[topic].config).unclean_leader_election_enable
                election = elect_leader(state, live, unclean, "leader lost its log") if broker == state.leader \
                    else None
                if election is not None:
                    state = self._apply_election(state, election)
                if broker in state.isr:
                    isr = tuple(b for b in state.isr if b != broker)
                    self._store.record(ClusterMetadata.partition_record(state, state.leader, state.leader_epoch, isr))
                    state = self.metadata.topics[topic].partitions[partition]
            elif broker == state.leader:
                unclean = TopicConfig.from_dict(self.metadata.topics[topic].config).unclean_leader_election_enable
                election = elect_leader(state, live, unclean, "leader restarted", avoid=broker)
                if election is not None:
                    state = self._apply_election(state, election)
            others = [b for b in state.replicas if b != broker]
            await asyncio.gather(*(self._send_role_safely(state, b) for b in others
                                   if self._store.broker_alive(b)))
            return state

    # -- re-replication -------------------------------------------------------------------------------------------
    async def _reassign_dead_brokers(self, now: float) -> None:
        delay_s = self.broker_config.replica_reassignment_delay_ms / 1000
        overdue = {b for b, since in self._broker_dead_since.items() if now - since >= delay_s}
        # Ray may take a long while to declare a killed node dead; a broker none of whose replicas has
        # answered a heartbeat for the delay is just as gone.
        last_answer = self._liveness.last_answer_per_broker()
        overdue |= {b for b, heard in last_answer.items() if now - heard >= delay_s}
        if not overdue:
            return
        live = [b for b in self._store.live_brokers() if b not in overdue]
        load: dict[int, int] = {}
        for topic in self.metadata.topics.values():
            for state in topic.partitions.values():
                for b in state.replicas:
                    load[b] = load.get(b, 0) + 1
        moved: list[tuple[TopicState, int]] = []
        for dead in sorted(overdue):
            for topic in list(self.metadata.topics.values()):
                for p in sorted(topic.partitions):
                    state = topic.partitions[p]
                    # Never replace an ISR member: it may be the only copy of acknowledged records.
                    if dead not in state.replicas or dead in state.isr or state.leader < 0:
                        continue
                    new = replacement_broker(state, dead, live, load)
                    if new is None:
                        continue
                    replicas = tuple(new if b == dead else b for b in state.replicas)
                    log.warning("%s-%d: broker %d gone for over %.0f s; re-replicating its replica on broker %d",
                                topic.name, p, dead, delay_s, new)
                    self._store.record(ClusterMetadata.partition_record(state, state.leader, state.leader_epoch + 1,
                                                                  state.isr, replicas))
                    load[new] = load.get(new, 0) + 1
                    self._liveness.moved((topic.name, p, dead), (topic.name, p, new), now)
                    moved.append((topic, p))
        # Every decision is recorded; now start the new replicas and tell each partition, all at once
        # (a dead broker may have held hundreds of replicas).
        await asyncio.gather(*(self._replicas.ensure_replicas(topic, [p], only_missing=True) for topic, p in moved))
        await asyncio.gather(*(self.notify_partition(topic.partitions[p]) for topic, p in moved))
