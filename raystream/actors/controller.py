"""The controller actor: cluster metadata, broker registry, replica placement, ISR changes.

One detached named actor per raystream cluster (namespace ``raystream``), pinned to the node that started
it (its metadata log lives on that node's disk) and restarted by Ray after a crash (``max_restarts=-1``):
it replays its metadata log and re-sends every replica its role, so nothing is lost.

Brokers: a broker is a stable id kept in ``<data_dir>/<cluster>/meta.properties`` on each node (as Kafka's
``meta.properties``); the controller maps it to the node's current Ray node id at start, so a new Ray
cluster on the same data directories finds every topic and record again. A node's data directory is its
``RAYSTREAM_DATA_DIR`` if set, else the cluster's ``data_dir``.

Concurrency: an async actor; metadata changes are serialised by ``self._lock`` (one change at a time,
appended to the metadata log before it is applied); reads need no lock.
"""

from __future__ import annotations

import asyncio
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
    controller_actor_name,
    replica_actor_name,
)
from raystream.storage.records import check_user_schema
from raystream.storage.schema_evolution import compatibility_problems

log = logging.getLogger(__name__)
METADATA_DIR = "__controller"
METADATA_LOG = "metadata.log"
META_PROPERTIES = "meta.properties"


@ray.remote(num_cpus=0)
def register_broker(cluster: str, default_data_dir: str, proposed_id: int) -> tuple[int, str]:
    """Runs on one node: read (or create) that node's stable broker id. Returns (broker id, data dir)."""
    data_dir = os.environ.get("RAYSTREAM_DATA_DIR") or default_data_dir
    root = Path(data_dir) / cluster
    root.mkdir(parents=True, exist_ok=True)
    meta = root / META_PROPERTIES
    if meta.exists():
        props = dict(line.split("=", 1) for line in meta.read_text().splitlines() if "=" in line)
        return int(props["broker.id"]), data_dir
    tmp = meta.with_suffix(".tmp")
    tmp.write_text(f"broker.id={proposed_id}\ncluster={cluster}\n")
    os.replace(tmp, meta)
    return proposed_id, data_dir


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
        self.metadata = ClusterMetadata()
        self._dir = Path(data_dir) / cluster / METADATA_DIR
        self._dir.mkdir(parents=True, exist_ok=True)
        self._log_path = self._dir / METADATA_LOG
        self._replay()
        self._log_file = open(self._log_path, "ab")  # noqa: SIM115 - held for the actor's lifetime
        self._lock: asyncio.Lock | None = None
        self._started = False
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
        async with self._registration_lock_(), self._lock_():
            if register or not self.metadata.brokers:
                await self._register_brokers()
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

    async def _register_brokers(self, timeout_s: float = 60.0) -> None:
        """Probe every live node for its broker id and record the result. Call with the metadata lock held
        (the failure monitor uses :meth:`_probe_nodes` unlocked, then :meth:`_apply_registration`)."""
        await self._apply_registration(*await self._probe_nodes(timeout_s))

    async def _probe_nodes(self, timeout_s: float) -> tuple[list[dict], list[Any]]:
        """Ask each live node for its broker id (creating it on a new node). Needs no metadata lock; the
        caller must not run two probes at once (ids are proposed from the recorded maximum), hence
        ``self._registration`` around probe and apply in the monitor."""
        nodes = [n for n in await asyncio.to_thread(ray.nodes) if n["Alive"]]
        proposed = self.metadata.next_broker_id
        calls = []
        for i, node in enumerate(nodes):
            strategy = NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
            calls.append(register_broker.options(scheduling_strategy=strategy).remote(
                self.cluster, self.data_dir, proposed + i))
        # Bounded: a node Ray still lists as alive may be gone (Ray takes ~15 s to notice); the failure
        # monitor passes a short timeout (such a node counts as unregistered this round, asked again later).
        results = await asyncio.gather(*(asyncio.wait_for(c, timeout_s) for c in calls), return_exceptions=True)
        return nodes, list(results)

    async def _apply_registration(self, nodes: list[dict], results: list[Any]) -> None:
        alive_ids = set()
        for node, result in zip(nodes, results, strict=True):
            if isinstance(result, BaseException):
                # Dead, dying or just slow: a broker already known on this node keeps its state (replica
                # heartbeats judge its replicas); an unknown one is registered on a later round.
                log.info("node %s did not register its broker: %s", node["NodeID"], type(result).__name__)
                alive_ids.update(b for b, info in self.metadata.brokers.items()
                                 if info.node_id == node["NodeID"] and info.alive)
                continue
            broker_id, data_dir = result
            alive_ids.add(broker_id)
            known = self.metadata.brokers.get(broker_id)
            if known is None or known.node_id != node["NodeID"] or known.data_dir != data_dir:
                self._record(ClusterMetadata.broker_record(broker_id, node["NodeID"], data_dir))
        for broker_id, info in list(self.metadata.brokers.items()):
            alive = broker_id in alive_ids
            if info.alive != alive:
                self.metadata.brokers[broker_id] = BrokerInfo(info.broker_id, info.node_id, info.data_dir, alive)

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
        log_dir = str(Path(broker.data_dir) / self.cluster / partition_dir_name(topic, partition))
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
                if not self.metadata.brokers.get(broker, BrokerInfo(broker, "", "", False)).alive:
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
        async with self._registration_lock_(), self._lock_():
            if name in self.metadata.topics:
                raise TopicAlreadyExistsError(f"topic {name!r} already exists")
            await self._register_brokers()
            brokers = self._live_brokers()
            assignment = assign_replicas(brokers, range(partitions), replication_factor,
                                         start_index=len(self.metadata.topics))
            self._record(ClusterMetadata.topic_record(name, topic_config, schema_bytes, key_column, assignment))
            await self._ensure_replicas(self.metadata.topics[name])
            return self.metadata.topics[name].to_metadata()

    async def create_partitions(self, name: str, total: int) -> TopicMetadata:
        async with self._lock_():
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
                offsets = {k: described[k] for k in offsets}
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
                # Computed from a stale view (the controller fenced a dead follower, or an election ran):
                # the leader hears the current state from the controller and proposes again if needed.
                raise FencedLeaderEpochError(
                    f"{topic}-{partition}: ISR change based on partition epoch {partition_epoch} rejected; "
                    f"current partition epoch is {state.partition_epoch}")
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
