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

The actor class is the controller's one remote surface and holds no logic of its own beyond start-up: it
is composed of components, each given its dependencies in its constructor, and every remote method
delegates to one of them:

    component (raystream.actors.*)         its job
    -------------------------------------  ----------------------------------------------------------------
    metadata_store.MetadataStore           topics, brokers, partition states, producer ids; the metadata
                                           log (raystream.storage.metadata_log) and the metadata lock
    brokers.BrokerRegistry                 which Ray node each broker lives on; the registration lock
    replica_liveness.ReplicaLiveness       when each replica last answered, which are starting or dead
    replica_handles.ReplicaHandles         the replica actors: one handle cache, creation, roles
    failover.FailureMonitor                heartbeats, node checks, elections, rejoin, re-replication
    replication_control.ReplicationControl topic changes, ISR changes proposed by leaders
    groups.GroupCoordinator                consumer groups and their committed offsets
    transactions.TransactionCoordinator    transactions (markers, transactional offsets)

Each gets its dependencies in its constructor (below); none reaches into another's state.

Concurrency: an async actor; everything runs on its event loop. Metadata changes are serialised by the
metadata lock (one change at a time, appended to the metadata log before it is applied; reads need no
lock); broker registration by the registration lock, taken before the metadata lock, never after. Groups
and transactions never take either (see each component's docstring).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from raystream import metrics
from raystream.actors import logs
from raystream.actors.brokers import BrokerRegistry
from raystream.actors.failover import FailureMonitor
from raystream.actors.groups import GroupCoordinator
from raystream.actors.metadata_store import MetadataStore
from raystream.actors.replica_handles import ReplicaHandles
from raystream.actors.replica_liveness import ReplicaLiveness
from raystream.actors.replication_control import ReplicationControl
from raystream.actors.transactions import DEFAULT_TRANSACTION_TIMEOUT_MS, TransactionCoordinator
from raystream.clock import now_ms
from raystream.config import BrokerConfig, TopicConfig
from raystream.core.assignors import Subscription
from raystream.core.group_results import ClassicJoinResult
from raystream.core.metadata import ClusterMetadata
from raystream.protocol import (
    BrokerInfo,
    ClusterConfig,
    DescribeGroupResult,
    JoinGroupResult,
    PartitionState,
    TopicDescription,
    TopicMetadata,
    TopicPartition,
)

log = logging.getLogger(__name__)


class Controller:
    def __init__(self, cluster: str, data_dir: str, broker_config: dict[str, Any] | None = None,
                 topic_defaults: dict[str, Any] | None = None) -> None:
        logs.configure()
        self.cluster = cluster
        self.data_dir = data_dir
        self.broker_config = BrokerConfig.from_dict(broker_config)
        #: What a new topic gets for each config it does not set (the cluster defaults file's topic_defaults
        #: over Kafka's defaults); resolved at create and recorded with the topic.
        self.topic_defaults = TopicConfig.from_dict(topic_defaults)
        root = Path(data_dir) / cluster
        self.store = MetadataStore(cluster, root)
        self.metadata: ClusterMetadata = self.store.metadata
        self._started = False
        self.liveness = ReplicaLiveness(self.metadata, self.broker_config)
        self.replicas = ReplicaHandles(cluster, self.store, self.broker_config, self.liveness)
        self.brokers = BrokerRegistry(cluster, data_dir, self.store, self.broker_config)
        gauges = metrics.ControllerGauges()  # partition health from the monitor, group lag from the groups
        self.monitor = FailureMonitor(self.store, self.brokers, self.replicas, self.liveness, self.broker_config,
                                      gauges, ensure_started=self._ensure_started)
        self.topics = ReplicationControl(self.store, self.brokers, self.replicas, self.liveness, self.monitor,
                                         self.broker_config, self.topic_defaults)
        self.groups = GroupCoordinator(root, self.metadata, self.broker_config, self.replicas, gauges)
        self.transactions = TransactionCoordinator(root, self.store, self.groups, self.replicas,
                                                   self.broker_config)
        self.monitor.start()
        self.groups.start()
        log.info("controller %s replayed %d topics, %d brokers", cluster, len(self.metadata.topics),
                 len(self.metadata.brokers))

    def _close_logs(self) -> None:
        """Close the metadata, committed-offsets, group-generation and transaction logs (what this process's
        death would release)."""
        self.groups.close()
        self.transactions.close()
        self.store.close()

    # -- start-up -----------------------------------------------------------------------------------------------
    async def start(self, register: bool = True) -> dict[int, BrokerInfo]:
        """Register the brokers of all live nodes and (re)assert every replica's role. Idempotent.
        ``register=False`` (a controller Ray restarted): keep the recorded brokers; the failure monitor's
        node loop registers new nodes, so a dying node cannot delay the restart."""
        async with self.brokers.registration_lock():
            if register or not self.metadata.brokers:
                # A repeated start on a running controller handles brokers that moved, as the monitor does;
                # the first start sends every replica its role below anyway.
                await self.brokers.register_nodes(
                    only_new=False, on_change=self.monitor.brokers_changed if self._started else None)
            async with self.store.lock():
                # First start (or restart): every replica gets its role again. Later calls only replace
                # replicas whose actors are gone (stopped for good, or their process could not be restarted).
                only_missing = self._started
                self._started = True
                self.transactions.start()
                calls = [c for t in list(self.metadata.topics.values())
                         for c in self.replicas.role_calls(t, only_missing=only_missing)]
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

    async def _ensure_started(self) -> None:
        """The failure monitor's hook: after Ray restarted this controller, start before deciding."""
        if not self._started:
            await self.start(register=False)

    async def ping(self) -> str:
        return self.cluster

    # -- topics (ReplicationControl) --------------------------------------------------------------------------
    async def create_topic(self, name: str, partitions: int | None = None, replication_factor: int | None = None,
                           config: dict[str, Any] | None = None, schema_bytes: bytes | None = None,
                           key_column: str | None = None, creation_id: str | None = None) -> TopicMetadata:
        return await self.topics.create_topic(name, partitions, replication_factor, config, schema_bytes,
                                              key_column, creation_id)

    async def create_partitions(self, name: str, total: int) -> TopicMetadata:
        return await self.topics.create_partitions(name, total)

    async def delete_topic(self, name: str) -> None:
        await self.topics.delete_topic(name)

    async def alter_topic_config(self, name: str, config: dict[str, Any]) -> dict[str, Any]:
        return await self.topics.alter_topic_config(name, config)

    async def alter_topic_schema(self, name: str, schema_bytes: bytes) -> TopicMetadata:
        return await self.topics.alter_topic_schema(name, schema_bytes)

    async def describe_topic(self, name: str) -> TopicDescription:
        return await self.topics.describe_topic(name)

    async def alter_isr(self, topic: str, partition: int, leader: int, leader_epoch: int, isr: list[int],
                        partition_epoch: int) -> tuple[list[int], int]:
        return await self.topics.alter_isr(topic, partition, leader, leader_epoch, isr, partition_epoch)

    # -- reads (MetadataStore) ----------------------------------------------------------------------------------
    async def list_topics(self) -> list[str]:
        return sorted(self.metadata.topics)

    async def get_metadata(self, topics: list[str] | None = None) -> dict[str, TopicMetadata]:
        names = sorted(self.metadata.topics) if topics is None else list(topics)
        return {name: self.store.topic(name).to_metadata() for name in names}

    async def get_brokers(self) -> dict[int, BrokerInfo]:
        return dict(self.metadata.brokers)

    async def get_cluster_config(self) -> ClusterConfig:
        """The broker settings this controller runs with and the defaults new topics get (Kafka's names)."""
        return ClusterConfig(self.broker_config.to_dict(), self.topic_defaults.to_dict())

    async def get_partition_state(self, topic: str, partition: int) -> PartitionState:
        return self.store.partition_state(topic, partition)

    async def init_producer_id(self, replay_id: str | None = None) -> tuple[int, int]:
        """A new idempotent-producer id and its epoch (always 0): ``(producer_id, producer_epoch)``.

        With ``replay_id`` (a replay producer, e.g. one Ray Data write task): the id recorded for it, so
        every run of that producer — a retried task — is the same producer to the brokers; the first call
        hands out a new id and records the pairing in the metadata log before answering. Ids never repeat,
        across restarts too (``MetadataStore.next_producer_id``).
        Concurrency: no ``await`` inside, so the read-and-advance is atomic on the actor's event loop; it
        deliberately does not take the metadata lock, so producers do not wait behind a slow topic change.
        """
        if replay_id is not None:
            if not isinstance(replay_id, str) or not replay_id:
                raise TypeError(f"replay_id must be a non-empty str, got {replay_id!r}")
            return self.store.replay_producer_id(replay_id, now_ms()), 0
        return self.store.next_producer_id(), 0

    # -- a restarted replica (FailureMonitor) -------------------------------------------------------------------
    async def rejoin(self, topic: str, partition: int, broker: int, lost_data: bool = False) -> PartitionState | None:
        return await self.monitor.rejoin(topic, partition, broker, lost_data)

    # -- consumer groups (GroupCoordinator) -----------------------------------------------------------------------
    async def join_group(self, group_id: str, member_id: str | None, group_instance_id: str | None,
                         client_id: str, protocols: list[str], topics: list[str], owned: list[TopicPartition],
                         owned_generation: int, session_timeout_ms: int, rebalance_timeout_ms: int) -> JoinGroupResult:
        return await self.groups.join_group(group_id, member_id, group_instance_id, client_id, protocols, topics,
                                            owned, owned_generation, session_timeout_ms, rebalance_timeout_ms)

    async def join_group_classic(self, group_id: str, member_id: str | None, group_instance_id: str | None,
                                 client_id: str, protocols: list[str], subscription: Subscription,
                                 session_timeout_ms: int, rebalance_timeout_ms: int) -> ClassicJoinResult:
        return await self.groups.join_group_classic(group_id, member_id, group_instance_id, client_id, protocols,
                                                    subscription, session_timeout_ms, rebalance_timeout_ms)

    async def sync_group_classic(self, group_id: str, member_id: str, generation_id: int,
                                 assignments: dict[str, list[TopicPartition]] | None = None
                                 ) -> tuple[TopicPartition, ...]:
        return await self.groups.sync_group_classic(group_id, member_id, generation_id, assignments)

    async def heartbeat_group(self, group_id: str, member_id: str, generation_id: int, wait_ms: int = 0) -> bool:
        return await self.groups.heartbeat_group(group_id, member_id, generation_id, wait_ms)

    async def leave_group(self, group_id: str, member_id: str, group_instance_id: str | None = None) -> None:
        await self.groups.leave_group(group_id, member_id, group_instance_id)

    async def commit_offsets(self, group_id: str, member_id: str, generation_id: int,
                             offsets: dict[TopicPartition, tuple[int, str]]) -> None:
        await self.groups.commit_offsets(group_id, member_id, generation_id, offsets)

    async def fetch_offsets(self, group_id: str, partitions: list[TopicPartition] | None = None
                            ) -> dict[TopicPartition, tuple[int, str]]:
        return await self.groups.fetch_offsets(group_id, partitions)

    async def list_groups(self) -> list[str]:
        return await self.groups.list_groups()

    async def describe_group_state(self, group_id: str) -> DescribeGroupResult:
        return await self.groups.describe_group_state(group_id)

    async def reset_group_offsets(self, group_id: str, offsets: dict[TopicPartition, int]) -> None:
        await self.groups.reset_group_offsets(group_id, offsets)

    async def delete_group(self, group_id: str) -> None:
        await self.groups.delete_group(group_id)

    # -- transactions (TransactionCoordinator) ------------------------------------------------------------------
    async def init_transactions(self, transactional_id: str,
                                timeout_ms: int = DEFAULT_TRANSACTION_TIMEOUT_MS) -> tuple[int, int]:
        return await self.transactions.init_transactions(transactional_id, timeout_ms)

    async def add_partitions_to_txn(self, transactional_id: str, producer_id: int, producer_epoch: int,
                                    partitions: list[TopicPartition]) -> None:
        await self.transactions.add_partitions_to_txn(transactional_id, producer_id, producer_epoch, partitions)

    async def add_offsets_to_txn(self, transactional_id: str, producer_id: int, producer_epoch: int,
                                 group_id: str, offsets: dict[TopicPartition, tuple[int, str]]) -> None:
        await self.transactions.add_offsets_to_txn(transactional_id, producer_id, producer_epoch, group_id,
                                                   offsets)

    async def end_txn(self, transactional_id: str, producer_id: int, producer_epoch: int, commit: bool) -> None:
        await self.transactions.end_txn(transactional_id, producer_id, producer_epoch, commit)
