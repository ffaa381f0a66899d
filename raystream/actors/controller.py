"""The controller actor: cluster metadata, broker registry, replica placement, ISR changes.

One detached named actor per raystream cluster (namespace ``raystream``), pinned to the node that started
it (its metadata log lives on that node's disk) and restarted by Ray after a crash (``max_restarts=-1``):
it replays its metadata log and re-sends every replica its role, so nothing is lost.

Brokers: one per Ray node, and one per log directory (Kafka's rule, enforced by a lock). Each node runs a
broker agent (``raystream.actors.broker``) that claims a broker directory under the node's root
``<data dir>/<cluster>/`` and holds its ``.lock`` while it lives: ``broker-<id>/`` with the stable id in its
``meta.properties`` (as Kafka's) and the broker's partition directories (``raystream.storage.broker_dirs``).
A node's data dir is its ``RAYSTREAM_DATA_DIR`` if set, else the cluster's ``data_dir``; several nodes may
share one (one machine, NFS/EFS) and still are distinct brokers with distinct logs. The controller maps each
broker to its node's current Ray node id (at start, before every placement for nodes without a broker yet,
and in the failure monitor for nodes that join later), so a new Ray cluster on the same data directories
finds every topic and record again. A root of the older layout (``<root>/meta.properties``, partitions
directly in the root) is one broker directory itself. The controller's own logs (``__controller``, committed
offsets, transactions) live in ``<data_dir>/<cluster>/`` of the controller's node.

Registration is serialised by the registration lock (taken before the metadata lock, never after); the
nodes are asked outside the metadata lock, the answers recorded under it.

Concurrency: an async actor; metadata changes are serialised by ``self._lock`` (one change at a time,
appended to the metadata log before it is applied); reads need no lock.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Any

import msgpack
import pyarrow as pa
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from raystream import metrics
from raystream.actors import logs
from raystream.actors.failover import FailoverMixin
from raystream.actors.groups import GroupCoordinatorMixin
from raystream.actors.transactions import TransactionCoordinatorMixin
from raystream.config import BrokerConfig, TopicConfig
from raystream.core.metadata import ClusterMetadata, TopicState
from raystream.core.names import partition_dir_name, validate_topic_name
from raystream.core.placement import assign_replicas
from raystream.errors import (
    FencedLeaderEpochError,
    InvalidPartitionsError,
    SchemaMismatchError,
    TopicAlreadyExistsError,
    UnknownTopicOrPartitionError,
)
from raystream.protocol import (
    ACTOR_NAMESPACE,
    BrokerInfo,
    PartitionInfo,
    PartitionState,
    TopicDescription,
    TopicMetadata,
    broker_agent_name,
    controller_actor_name,
    replica_actor_name,
)
from raystream.storage.records import check_user_schema
from raystream.storage.schema_evolution import compatibility_problems

log = logging.getLogger(__name__)
METADATA_DIR = "__controller"
METADATA_LOG = "metadata.log"

class Controller(FailoverMixin, GroupCoordinatorMixin, TransactionCoordinatorMixin):
    def __init__(self, cluster: str, data_dir: str, broker_config: dict[str, Any] | None = None,
                 topic_defaults: dict[str, Any] | None = None) -> None:
        logs.configure()
        self.cluster = cluster
        self.data_dir = data_dir
        self.broker_config = BrokerConfig.from_dict(broker_config)
        #: What a new topic gets for each config it does not set (the cluster defaults file's topic_defaults
        #: over Kafka's defaults); resolved at create and recorded with the topic.
        self.topic_defaults = TopicConfig.from_dict(topic_defaults)
        self.metadata = ClusterMetadata(cluster)
        self._dir = Path(data_dir) / cluster / METADATA_DIR
        self._dir.mkdir(parents=True, exist_ok=True)
        self._log_path = self._dir / METADATA_LOG
        self._replay()
        self._log_file = open(self._log_path, "ab")  # noqa: SIM115 - held for the actor's lifetime
        self._lock: asyncio.Lock | None = None
        self._started = False
        #: Broker ids proposed to agents that did not answer are never proposed again (see _probe_nodes).
        self._next_broker_proposal = 0
        self._init_failover()
        self._init_groups(Path(data_dir) / cluster)
        self._init_transactions(Path(data_dir) / cluster)
        log.info("controller %s replayed %d topics, %d brokers", cluster, len(self.metadata.topics),
                 len(self.metadata.brokers))

    # -- metadata log ------------------------------------------------------------------------------------------
    def _replay(self) -> None:
        if not self._log_path.exists():
            return
        good = 0
        with open(self._log_path, "rb") as f:
            unpacker = msgpack.Unpacker(f, raw=False, strict_map_key=False)
            try:
                for record in unpacker:
                    self.metadata.apply(record)
                    good = unpacker.tell()
            except (msgpack.OutOfData, ValueError, KeyError) as exc:
                log.warning("metadata log has a torn tail after byte %d: %s", good, exc)
        if good < self._log_path.stat().st_size:
            os.truncate(self._log_path, good)

    def _record(self, record: dict[str, Any]) -> None:
        """Persist then apply one change (the write-ahead rule). Every ISR change (leader proposals, fenced
        followers, elections, lost logs) passes here, so this is where ISR shrinks and expands are counted."""
        self._log_file.write(msgpack.packb(record))
        self._log_file.flush()
        os.fsync(self._log_file.fileno())
        isr_before = self.metadata.topics[record["topic"]].partitions[record["p"]].isr \
            if record["t"] == "partition" else None
        self.metadata.apply(record)
        if isr_before is not None:
            metrics.isr_changed(record["topic"], isr_before, record["isr"])

    def _close_logs(self) -> None:
        """Close the committed-offsets, group-generation and transaction logs (what this process's death
        would release)."""
        self._offsets.close()
        self._generations.close()
        self._txn_store.close()

    def _lock_(self) -> asyncio.Lock:
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    # -- start-up -----------------------------------------------------------------------------------------------
    async def start(self, register: bool = True) -> dict[int, BrokerInfo]:
        """Register the brokers of all live nodes and (re)assert every replica's role. Idempotent.
        ``register=False`` (a controller Ray restarted): keep the recorded brokers; the failure monitor's
        node loop registers new nodes, so a dying node cannot delay the restart."""
        async with self._registration_lock_():
            if register or not self.metadata.brokers:
                # A repeated start on a running controller handles brokers that moved, as the monitor does;
                # the first start sends every replica its role below anyway.
                await self._register_nodes(only_new=False, reconcile=self._started)
            async with self._lock_():
                # First start (or restart): every replica gets its role again. Later calls only replace
                # replicas whose actors are gone (stopped for good, or their process could not be restarted).
                only_missing = self._started
                self._started = True
                self._start_transaction_coordinator()
                calls = [c for t in list(self.metadata.topics.values())
                         for c in self._replica_role_calls(t, only_missing=only_missing)]
                brokers = dict(self.metadata.brokers)
        # Outside the lock: a replica on a node that died silently must not hold up elections; one that
        # missed its role gets it from the failure monitor's reconciliation.
        timeout_s = 2 * self.broker_config.replica_session_timeout_ms / 1000
        results = await asyncio.gather(*(asyncio.wait_for(c, timeout_s) for c in calls), return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            log.info("%d replica(s) did not take their role at start (%s); the monitor retries",
                     len(failed), type(failed[0]).__name__)
        return brokers

    # -- brokers --------------------------------------------------------------------------------------------------
    async def _register_nodes(self, only_new: bool, timeout_s: float | None = None,
                              nodes: list[dict] | None = None, reconcile: bool = True) -> None:
        """Make Ray's live nodes brokers: ask each node's broker agent for its broker (creating the agent on
        a new node), all at once and bounded by ``timeout_s`` (default ``broker.registration.timeout.ms``),
        then record the answers. ``only_new``: only the nodes without a live broker yet (no call at all when
        there is none); else every live node, and brokers on no live node are marked dead.

        The caller holds the registration lock (two probes at once could propose one id twice), not the
        metadata lock: the probe runs outside it (a dying node must not hold up elections), the recording
        under it. ``reconcile``: brokers that came back or moved get their replicas (the failure monitor's
        :meth:`_brokers_changed`)."""
        if timeout_s is None:
            timeout_s = self.broker_config.broker_registration_timeout_ms / 1000
        if nodes is None:
            nodes = await asyncio.to_thread(ray.nodes)
        nodes = [n for n in nodes if n["Alive"]]
        if only_new:
            known = {info.node_id for info in self.metadata.brokers.values() if info.alive}
            nodes = [n for n in nodes if n["NodeID"] not in known]
            if not nodes:
                return
        results = await self._probe_nodes(nodes, timeout_s)
        async with self._lock_():
            before = {b: info for b, info in self.metadata.brokers.items()}
            self._apply_registration(nodes, results, full=not only_new)
            if reconcile:
                await self._brokers_changed(before)

    def _broker_agent(self, node_id: str):
        """The broker agent of ``node_id`` (created there if it has none)."""
        from raystream.actors.broker import BrokerAgent

        return ray.remote(BrokerAgent).options(
            name=broker_agent_name(self.cluster, node_id), namespace=ACTOR_NAMESPACE, get_if_exists=True,
            lifetime="detached", num_cpus=0, max_restarts=0,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
        ).remote(self.cluster, self.data_dir)

    async def _probe_nodes(self, nodes: list[dict], timeout_s: float) -> list[Any]:
        """Ask each node's agent for its (broker id, data dir, log dir), proposing distinct new ids (an
        agent that already holds a broker directory ignores the proposal). Bounded: a node Ray still lists
        as alive may be gone (Ray takes ~15 s to notice); such a node counts as unregistered this time."""
        proposed = max(self.metadata.next_broker_id, self._next_broker_proposal)

        async def register(node_id: str, broker_id: int) -> tuple[int, str, str]:
            return tuple(await self._broker_agent(node_id).register.remote(broker_id))

        calls = [asyncio.wait_for(register(n["NodeID"], proposed + i), timeout_s) for i, n in enumerate(nodes)]
        results = list(await asyncio.gather(*calls, return_exceptions=True))
        # An agent that did not answer may still claim a new directory with its proposed id: never propose
        # that id again (an id proposed to an agent that answered is recorded, or was not used).
        unanswered = [proposed + i for i, r in enumerate(results) if isinstance(r, BaseException)]
        self._next_broker_proposal = max([self._next_broker_proposal, *(i + 1 for i in unanswered)])
        return results

    def _apply_registration(self, nodes: list[dict], results: list[Any], full: bool = True) -> None:
        """Record what the probed ``nodes`` answered (``results``, in order) and set every broker's alive
        flag: alive if its node answered with it; one on a probed node that did not answer keeps its flag;
        one on a node not probed keeps its flag too, unless ``full`` (every live node was probed)."""
        probed = {n["NodeID"] for n in nodes}
        answers: dict[int, tuple[str, str, str]] = {}  # broker id -> (node id, data dir, log dir)
        alive_ids = set()
        for node, result in zip(nodes, results, strict=True):
            node_id = node["NodeID"]
            if isinstance(result, BaseException):
                # Dead, dying or just slow: a broker already known on this node keeps its state (replica
                # heartbeats judge its replicas); an unknown one is registered on a later round.
                cause = getattr(result, "cause", None) or result  # a RayTaskError carries the agent's error
                log.info("node %s did not register its broker: %s: %.300s", node_id, type(cause).__name__, cause)
                alive_ids.update(b for b, info in self.metadata.brokers.items()
                                 if info.node_id == node_id and info.alive)
                continue
            broker_id, data_dir, log_dir = result
            other = answers.get(broker_id)
            if other is not None:
                # Two live nodes claim one broker id: two data directories hold the same meta.properties
                # (a copied directory). Kafka refuses the second registration; so do we, keeping the node
                # the metadata already maps it to.
                recorded = self.metadata.brokers.get(broker_id)
                keep, refuse = (node_id, other[0]) if recorded and recorded.node_id == node_id else (other[0], node_id)
                log.error("broker id %d is claimed by nodes %s and %s (log dirs %s, %s); registering it on %s "
                          "only", broker_id, other[0], node_id, other[2], log_dir, keep)
                if keep == other[0]:
                    continue
            answers[broker_id] = (node_id, data_dir, log_dir)
            alive_ids.add(broker_id)
        for broker_id, (node_id, data_dir, log_dir) in sorted(answers.items()):
            known = self.metadata.brokers.get(broker_id)
            if known is None or (known.node_id, known.data_dir, known.log_dir) != (node_id, data_dir, log_dir):
                self._record(ClusterMetadata.broker_record(broker_id, node_id, data_dir, log_dir))
        for broker_id, info in list(self.metadata.brokers.items()):
            if not full and info.node_id not in probed and broker_id not in alive_ids:
                continue
            alive = broker_id in alive_ids
            if info.alive != alive:
                self.metadata.brokers[broker_id] = dataclasses.replace(info, alive=alive)

    def _live_brokers(self) -> list[int]:
        return sorted(b for b, info in self.metadata.brokers.items() if info.alive)

    # -- replicas -----------------------------------------------------------------------------------------------
    def _replica_handle(self, topic: str, partition: int, broker_id: int, create: bool = True):
        name = replica_actor_name(self.cluster, topic, partition, broker_id)
        if not create:
            return ray.get_actor(name, namespace=ACTOR_NAMESPACE)
        from raystream.actors.replica import PartitionReplica

        state = self.metadata.topics[topic]
        broker = self.metadata.brokers[broker_id]
        log_dir = str(Path(broker.log_dir) / partition_dir_name(topic, partition))
        return ray.remote(PartitionReplica).options(
            name=name, namespace=ACTOR_NAMESPACE, get_if_exists=True, lifetime="detached",
            num_cpus=0, max_restarts=-1, max_task_retries=0,
            scheduling_strategy=NodeAffinitySchedulingStrategy(broker.node_id, soft=False),
        ).remote(self.cluster, topic, partition, broker_id, log_dir, state.config, state.schema,
                 state.key_column, controller_actor_name(self.cluster), vars(self.broker_config), state.schema_id)

    async def _ensure_replicas(self, topic: TopicState, partitions: list[int] | None = None,
                               only_missing: bool = False) -> None:
        """Create (or find) the replica actors of ``partitions`` concurrently and send them their roles
        (``only_missing``: only to replicas whose actor had to be created)."""
        await asyncio.gather(*self._replica_role_calls(topic, partitions, only_missing))

    def _replica_role_calls(self, topic: TopicState, partitions: list[int] | None = None,
                            only_missing: bool = False) -> list:
        """Create (or find) the replica actors and return the (not yet awaited) calls that send their roles.
        A role sent late is harmless: a replica refuses a role older than the one it holds."""
        parts = [topic.partitions[p] for p in (partitions if partitions is not None else sorted(topic.partitions))]
        calls = []
        for state in parts:
            for broker in state.replicas:
                if not self.metadata.brokers.get(broker, BrokerInfo(broker, "", "", "", False)).alive:
                    continue
                exists = self._replica_exists(topic.name, state.partition, broker)
                if only_missing and exists:
                    continue
                handle = self._replica_handle(topic.name, state.partition, broker)
                if not exists:
                    self._replica_created((topic.name, state.partition, broker))
                calls.append(self._send_role(handle, state, broker))
        return calls

    def _replica_exists(self, topic: str, partition: int, broker: int) -> bool:
        try:
            self._replica_handle(topic, partition, broker, create=False)
        except ValueError:
            return False
        return True

    @staticmethod
    async def _send_role(handle, state: PartitionState, broker: int) -> None:
        if broker == state.leader:
            await handle.become_leader.remote(state.leader_epoch, list(state.replicas), list(state.isr),
                                              state.partition_epoch)
        else:
            await handle.become_follower.remote(state.leader_epoch, state.leader, list(state.replicas))

    # -- topics ---------------------------------------------------------------------------------------------------
    async def create_topic(self, name: str, partitions: int | None = None, replication_factor: int | None = None,
                           config: dict[str, Any] | None = None, schema_bytes: bytes | None = None,
                           key_column: str | None = None) -> TopicMetadata:
        """``None`` partitions / replication factor: the broker's ``num.partitions`` /
        ``default.replication.factor``; configs not given: ``self.topic_defaults``."""
        validate_topic_name(name)
        if partitions is None:
            partitions = self.broker_config.num_partitions
        if replication_factor is None:
            replication_factor = self.broker_config.default_replication_factor
        if not isinstance(partitions, int) or isinstance(partitions, bool) or partitions < 1:
            raise InvalidPartitionsError(f"partitions must be an int >= 1, got {partitions!r}")
        topic_config = TopicConfig.from_dict(config, base=self.topic_defaults).to_dict()
        async with self._registration_lock_():
            if name in self.metadata.topics:
                raise TopicAlreadyExistsError(f"topic {name!r} already exists")
            # Every live Ray node is a broker by the time replicas are placed (a node that just joined
            # included), bounded by broker.registration.timeout.ms.
            await self._register_nodes(only_new=True)
            async with self._lock_():
                return await self._create_topic_locked(name, partitions, replication_factor, topic_config,
                                                       schema_bytes, key_column)

    async def _create_topic_locked(self, name: str, partitions: int, replication_factor: int,
                                   topic_config: dict[str, Any], schema_bytes: bytes | None,
                                   key_column: str | None) -> TopicMetadata:
        if name in self.metadata.topics:
            raise TopicAlreadyExistsError(f"topic {name!r} already exists")
        assignment = assign_replicas(self._live_brokers(), range(partitions), replication_factor,
                                     start_index=len(self.metadata.topics))
        self._record(ClusterMetadata.topic_record(name, topic_config, schema_bytes, key_column, assignment))
        await self._ensure_replicas(self.metadata.topics[name])
        return self.metadata.topics[name].to_metadata()

    async def create_partitions(self, name: str, total: int) -> TopicMetadata:
        async with self._registration_lock_():
            current = len(self._topic(name).partitions)
            if not isinstance(total, int) or total <= current:  # checked again under the metadata lock
                raise InvalidPartitionsError(f"topic {name!r} has {current} partitions; the new total must be "
                                             f"larger, got {total!r}")
            await self._register_nodes(only_new=True)  # as create_topic: place over every live node
            async with self._lock_():
                return await self._create_partitions_locked(name, total)

    async def _create_partitions_locked(self, name: str, total: int) -> TopicMetadata:
        topic = self._topic(name)
        current = len(topic.partitions)
        if not isinstance(total, int) or total <= current:
            raise InvalidPartitionsError(f"topic {name!r} has {current} partitions; the new total must be "
                                         f"larger, got {total!r}")
        rf = len(topic.partitions[0].replicas)
        assignment = assign_replicas(self._live_brokers(), range(current, total), rf)
        self._record({"t": "partitions", "name": name, "assignment": {p: list(r) for p, r in assignment.items()}})
        await self._ensure_replicas(topic, list(range(current, total)))
        return topic.to_metadata()

    async def delete_topic(self, name: str) -> None:
        async with self._lock_():
            topic = self._topic(name)
            self._record({"t": "delete", "name": name})
            for key in [k for k in self._handles if k[0] == name]:
                self._handles.pop(key, None)
            for key in [k for k in self._last_heard if k[0] == name]:
                self._last_heard.pop(key, None)
                self._starting.pop(key, None)
            calls = []
            for state in topic.partitions.values():
                for broker in state.replicas:
                    calls.append(self._stop_replica(name, state.partition, broker))
            await asyncio.gather(*calls)

    async def _stop_replica(self, topic: str, partition: int, broker: int) -> None:
        try:
            handle = self._replica_handle(topic, partition, broker, create=False)
        except ValueError:
            return  # never created or already gone
        try:
            await handle.shutdown.remote(delete=True)
        except Exception as exc:  # a dead replica's directory stays; it is not in the metadata any more
            log.warning("replica %s-%d on broker %d did not shut down cleanly: %s", topic, partition, broker, exc)
        ray.kill(handle, no_restart=True)

    async def alter_topic_config(self, name: str, config: dict[str, Any]) -> dict[str, Any]:
        async with self._lock_():
            topic = self._topic(name)
            merged = TopicConfig.from_dict(config, base=TopicConfig.from_dict(topic.config)).to_dict()
            self._record({"t": "config", "name": name, "config": merged})
            calls = [self._replica_handle(name, s.partition, b, create=False).update_config.remote(merged)
                     for s in topic.partitions.values() for b in s.replicas
                     if self.metadata.brokers[b].alive]
            await asyncio.gather(*calls, return_exceptions=True)
            return merged

    async def alter_topic_schema(self, name: str, schema_bytes: bytes) -> TopicMetadata:
        """Evolve an Arrow-native topic's schema (rules: ``raystream.storage.schema_evolution``): recorded,
        then every replica switches; old batches stay readable, read in the new schema."""
        new = pa.ipc.read_schema(pa.py_buffer(schema_bytes))
        check_user_schema(new)
        async with self._lock_():
            topic = self._topic(name)
            if topic.schema is None:
                raise SchemaMismatchError(f"topic {name!r} has no schema to evolve (a record topic)", fields=[])
            old = pa.ipc.read_schema(pa.py_buffer(topic.schema))
            problems = compatibility_problems(old, new)
            if topic.key_column and topic.key_column not in new.names:
                problems.append(f"key column {topic.key_column!r} must stay")
            if problems:
                raise SchemaMismatchError(f"incompatible schema for {name!r}: " + "; ".join(problems),
                                          fields=problems)
            if old.equals(new):
                return topic.to_metadata()
            schema_id = topic.schema_id + 1
            self._record({"t": "schema", "name": name, "schema": schema_bytes, "schema_id": schema_id})
            calls = [self._replica_handle(name, s.partition, b, create=False).update_schema.remote(
                schema_bytes, schema_id) for s in topic.partitions.values() for b in s.replicas
                if self.metadata.brokers[b].alive]
            results = await asyncio.gather(*calls, return_exceptions=True)
            failed = [r for r in results if isinstance(r, BaseException)]
            if failed:  # a replica that missed it switches when it is re-created (schema_id at start-up)
                log.warning("%s: %d replica(s) did not take schema %d: %s", name, len(failed), schema_id, failed[0])
            return topic.to_metadata()

    def _topic(self, name: str) -> TopicState:
        topic = self.metadata.topics.get(name)
        if topic is None:
            raise UnknownTopicOrPartitionError(f"unknown topic {name!r}", topic=name)
        return topic

    # -- reads ------------------------------------------------------------------------------------------------------
    async def list_topics(self) -> list[str]:
        return sorted(self.metadata.topics)

    async def get_metadata(self, topics: list[str] | None = None) -> dict[str, TopicMetadata]:
        names = sorted(self.metadata.topics) if topics is None else list(topics)
        return {name: self._topic(name).to_metadata() for name in names}

    async def get_brokers(self) -> dict[int, BrokerInfo]:
        return dict(self.metadata.brokers)

    async def get_partition_state(self, topic: str, partition: int) -> PartitionState:
        state = self._topic(topic).partitions.get(partition)
        if state is None:
            raise UnknownTopicOrPartitionError(f"unknown partition {topic}-{partition}")
        return state

    async def describe_topic(self, name: str) -> TopicDescription:
        topic = self._topic(name)
        infos = await asyncio.gather(*(self._describe_partition(s) for s in
                                       (topic.partitions[p] for p in sorted(topic.partitions))))
        meta = topic.to_metadata()
        return TopicDescription(name, list(infos), dict(topic.config), meta.schema)

    async def _describe_partition(self, state: PartitionState) -> PartitionInfo:
        node = {b: info.node_id for b, info in self.metadata.brokers.items()}
        offsets = {"log_start_offset": -1, "high_watermark": -1, "log_end_offset": -1}
        if state.leader >= 0:
            try:
                handle = self._replica_handle(state.topic, state.partition, state.leader, create=False)
                described = await asyncio.wait_for(handle.describe.remote(), timeout=5)
                offsets = {k: getattr(described, k) for k in offsets}
            except Exception as exc:  # the partition is shown, with unknown offsets
                log.info("describe %s-%d: leader unavailable: %s", state.topic, state.partition, exc)
        return PartitionInfo(state.partition, node.get(state.leader), state.leader_epoch,
                             [node.get(b, str(b)) for b in state.replicas], [node.get(b, str(b)) for b in state.isr],
                             **offsets)

    # -- ISR changes (from leaders) ---------------------------------------------------------------------------------
    async def alter_isr(self, topic: str, partition: int, leader: int, leader_epoch: int, isr: list[int],
                        partition_epoch: int) -> tuple[list[int], int]:
        async with self._lock_():
            state = await self.get_partition_state(topic, partition)
            if leader != state.leader or leader_epoch != state.leader_epoch:
                raise FencedLeaderEpochError(
                    f"{topic}-{partition}: ISR change from broker {leader} epoch {leader_epoch} rejected; "
                    f"leader is {state.leader} at epoch {state.leader_epoch}")
            if partition_epoch != state.partition_epoch:
                # Computed from a stale view (the controller fenced a dead follower, or the answer to this
                # leader's earlier proposal was lost): refused, and the answer is the current state, which
                # the leader adopts (and proposes again from, if still needed). Raising instead would leave
                # a leader that missed an answer proposing from a stale epoch for its whole epoch.
                log.info("%s-%d: ISR change from partition epoch %d refused (current %d, ISR %s)", topic,
                         partition, partition_epoch, state.partition_epoch, list(state.isr))
                return list(state.isr), state.partition_epoch
            if leader not in isr or not set(isr) <= set(state.replicas):
                raise ValueError(f"{topic}-{partition}: invalid ISR {isr} for replicas {list(state.replicas)}")
            if tuple(isr) != state.isr:
                self._record(ClusterMetadata.partition_record(state, state.leader, state.leader_epoch, tuple(isr)))
                log.info("%s-%d ISR %s -> %s", topic, partition, list(state.isr), isr)
            new = await self.get_partition_state(topic, partition)
            return list(new.isr), new.partition_epoch

    async def ping(self) -> str:
        return self.cluster

    async def init_producer_id(self, replay_id: str | None = None) -> tuple[int, int]:
        """A new idempotent-producer id and its epoch (always 0): ``(producer_id, producer_epoch)``.

        With ``replay_id`` (a replay producer, e.g. one Ray Data write task): the id recorded for it, so
        every run of that producer — a retried task — is the same producer to the brokers; the first call
        hands out a new id and records the pairing in the metadata log before answering.

        Ids never repeat, across restarts too: they are handed out from memory within a block whose end is
        recorded in the metadata log first (``producer_ids {next}``, 1000 ids ahead), so a restarted
        controller continues after the recorded end and at most skips the unused rest of a block.
        Concurrency: no ``await`` inside, so the read-and-advance is atomic on the actor's event loop; it
        deliberately does not take ``self._lock``, so producers do not wait behind a slow topic change.
        """
        if replay_id is not None:
            if not isinstance(replay_id, str) or not replay_id:
                raise TypeError(f"replay_id must be a non-empty str, got {replay_id!r}")
            known = self.metadata.replay_producers.get(replay_id)
            if known is not None:
                return known[0], 0
            producer_id = self._next_producer_id()
            self._record({"t": "replay_producer", "id": replay_id, "pid": producer_id, "at": int(time.time() * 1000)})
            return producer_id, 0
        return self._next_producer_id(), 0

    def _next_producer_id(self) -> int:
        block = 1000
        cursor: int | None = getattr(self, "_producer_id_cursor", None)  # the next id to hand out
        if cursor is None or cursor >= self.metadata.next_producer_id:
            # This incarnation's first call (continue after everything recorded so far) or the block is used
            # up: reserve the next block durably before handing out any id of it.
            cursor = self.metadata.next_producer_id if cursor is None else cursor
            self._record({"t": "producer_ids", "next": cursor + block})
        self._producer_id_cursor = cursor + 1
        return cursor
