"""The controller's replication control: topics, their partitions' replica sets, configs and schemas, and
the ISR changes leaders propose (Kafka's ReplicationControlManager).

Every change is a metadata record, appended before any replica hears of it (``MetadataStore.record``);
the replicas of new partitions are placed over every live broker (new nodes are registered first) and
created through the replica-handle registry.

Concurrency contract: on the controller actor's event loop. Every change holds the metadata lock
(``MetadataStore.lock``) from its check to its last record; topic and partition creation take the broker
registration lock before it (``BrokerRegistry.registration_lock``: registering new nodes must not race with
another registration). Replicas are told inside the lock, so changes reach them in order.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pyarrow as pa
import ray

from raystream.actors.brokers import BrokerRegistry
from raystream.actors.failover import FailureMonitor
from raystream.actors.metadata_store import MetadataStore
from raystream.actors.replica_handles import ReplicaHandles
from raystream.actors.replica_liveness import ReplicaLiveness
from raystream.config import BrokerConfig, TopicConfig
from raystream.core.metadata import ClusterMetadata
from raystream.core.names import validate_topic_name
from raystream.core.placement import assign_replicas
from raystream.errors import (
    FencedLeaderEpochError,
    InvalidPartitionsError,
    SchemaMismatchError,
    TopicAlreadyExistsError,
)
from raystream.protocol import PartitionInfo, PartitionState, TopicDescription, TopicMetadata
from raystream.record import check_user_schema
from raystream.storage.schema_evolution import compatibility_problems

log = logging.getLogger(__name__)


class ReplicationControl:
    def __init__(self, store: MetadataStore, brokers: BrokerRegistry, replicas: ReplicaHandles,
                 liveness: ReplicaLiveness, monitor: FailureMonitor, broker_config: BrokerConfig,
                 topic_defaults: TopicConfig) -> None:
        """``monitor``: gets the brokers that came back when creating a topic registers new nodes;
        ``topic_defaults``: what a new topic gets for each config it does not set."""
        self._store = store
        self.metadata = store.metadata
        self._brokers = brokers
        self._replicas = replicas
        self._liveness = liveness
        self._monitor = monitor
        self.broker_config = broker_config
        self.topic_defaults = topic_defaults

    async def create_topic(self, name: str, partitions: int | None = None, replication_factor: int | None = None,
                           config: dict[str, Any] | None = None, schema_bytes: bytes | None = None,
                           key_column: str | None = None, creation_id: str | None = None) -> TopicMetadata:
        """``None`` partitions / replication factor: the broker's ``num.partitions`` /
        ``default.replication.factor``; configs not given: ``self.topic_defaults``. ``creation_id``: the
        caller's id for this creation; the same call again (a retry) answers with the topic it made, and
        makes sure its replicas exist (the first attempt may have ended with the controller before that)."""
        validate_topic_name(name)
        if partitions is None:
            partitions = self.broker_config.num_partitions
        if replication_factor is None:
            replication_factor = self.broker_config.default_replication_factor
        if not isinstance(partitions, int) or isinstance(partitions, bool) or partitions < 1:
            raise InvalidPartitionsError(f"partitions must be an int >= 1, got {partitions!r}")
        topic_config = TopicConfig.from_dict(config, base=self.topic_defaults).to_dict()
        async with self._brokers.registration_lock():
            existing = self.metadata.topics.get(name)
            if existing is not None and creation_id is not None and existing.creation_id == creation_id:
                await self._replicas.ensure_replicas(existing)
                return existing.to_metadata()
            if existing is not None:
                raise TopicAlreadyExistsError(f"topic {name!r} already exists")
            await self._register_new_nodes()
            async with self._store.lock():
                return await self._create_topic_locked(name, partitions, replication_factor, topic_config,
                                                       schema_bytes, key_column, creation_id)

    async def _register_new_nodes(self) -> None:
        """Every live Ray node is a broker by the time replicas are placed (a node that just joined
        included), bounded by broker.registration.timeout.ms. The caller holds the registration lock."""
        await self._brokers.register_nodes(only_new=True, on_change=self._monitor.brokers_changed)

    async def _create_topic_locked(self, name: str, partitions: int, replication_factor: int,
                                   topic_config: dict[str, Any], schema_bytes: bytes | None,
                                   key_column: str | None, creation_id: str | None) -> TopicMetadata:
        if name in self.metadata.topics:
            raise TopicAlreadyExistsError(f"topic {name!r} already exists")
        assignment = assign_replicas(self._store.live_brokers(), range(partitions), replication_factor,
                                     start_index=len(self.metadata.topics))
        self._store.record(ClusterMetadata.topic_record(name, topic_config, schema_bytes, key_column, assignment,
                                                        creation_id))
        await self._replicas.ensure_replicas(self.metadata.topics[name])
        return self.metadata.topics[name].to_metadata()

    async def create_partitions(self, name: str, total: int) -> TopicMetadata:
        async with self._brokers.registration_lock():
            current = len(self._store.topic(name).partitions)
            if not isinstance(total, int) or total <= current:  # checked again under the metadata lock
                raise InvalidPartitionsError(f"topic {name!r} has {current} partitions; the new total must be "
                                             f"larger, got {total!r}")
            await self._register_new_nodes()
            async with self._store.lock():
                return await self._create_partitions_locked(name, total)

    async def _create_partitions_locked(self, name: str, total: int) -> TopicMetadata:
        topic = self._store.topic(name)
        current = len(topic.partitions)
        if not isinstance(total, int) or total <= current:
            raise InvalidPartitionsError(f"topic {name!r} has {current} partitions; the new total must be "
                                         f"larger, got {total!r}")
        rf = len(topic.partitions[0].replicas)
        assignment = assign_replicas(self._store.live_brokers(), range(current, total), rf)
        self._store.record(ClusterMetadata.partitions_record(name, assignment))
        await self._replicas.ensure_replicas(topic, list(range(current, total)))
        return topic.to_metadata()

    async def delete_topic(self, name: str) -> None:
        async with self._store.lock():
            topic = self._store.topic(name)
            self._store.record(ClusterMetadata.delete_record(name))
            self._replicas.forget_topic(name)
            self._liveness.forget_topic(name)
            calls = []
            for state in topic.partitions.values():
                for broker in state.replicas:
                    calls.append(self._stop_replica(name, state.partition, broker))
            await asyncio.gather(*calls)

    async def _stop_replica(self, topic: str, partition: int, broker: int) -> None:
        try:
            handle = self._replicas.lookup(topic, partition, broker)
        except ValueError:
            return  # never created or already gone
        try:
            await handle.shutdown.remote(delete=True)
        except Exception as exc:  # a dead replica's directory stays; it is not in the metadata any more
            log.warning("replica %s-%d on broker %d did not shut down cleanly: %s", topic, partition, broker, exc)
        ray.kill(handle, no_restart=True)

    async def alter_topic_config(self, name: str, config: dict[str, Any]) -> dict[str, Any]:
        async with self._store.lock():
            topic = self._store.topic(name)
            merged = TopicConfig.from_dict(config, base=TopicConfig.from_dict(topic.config)).to_dict()
            self._store.record(ClusterMetadata.config_record(name, merged))
            calls = [self._replicas.lookup(name, s.partition, b).update_config.remote(merged)
                     for s in topic.partitions.values() for b in s.replicas
                     if self._store.broker_alive(b)]
            await asyncio.gather(*calls, return_exceptions=True)
            return merged

    async def alter_topic_schema(self, name: str, schema_bytes: bytes) -> TopicMetadata:
        """Evolve an Arrow-native topic's schema (rules: ``raystream.storage.schema_evolution``): recorded,
        then every replica switches; old batches stay readable, read in the new schema."""
        new = pa.ipc.read_schema(pa.py_buffer(schema_bytes))
        check_user_schema(new)
        async with self._store.lock():
            topic = self._store.topic(name)
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
            self._store.record(ClusterMetadata.schema_record(name, schema_bytes, schema_id))
            calls = [self._replicas.lookup(name, s.partition, b).update_schema.remote(
                schema_bytes, schema_id) for s in topic.partitions.values() for b in s.replicas
                if self._store.broker_alive(b)]
            results = await asyncio.gather(*calls, return_exceptions=True)
            failed = [r for r in results if isinstance(r, BaseException)]
            if failed:  # a replica that missed it switches when it is re-created (schema_id at start-up)
                log.warning("%s: %d replica(s) did not take schema %d: %s", name, len(failed), schema_id, failed[0])
            return topic.to_metadata()

    async def describe_topic(self, name: str) -> TopicDescription:
        topic = self._store.topic(name)
        infos = await asyncio.gather(*(self._describe_partition(s) for s in
                                       (topic.partitions[p] for p in sorted(topic.partitions))))
        meta = topic.to_metadata()
        return TopicDescription(name, list(infos), dict(topic.config), meta.schema, meta.key_column)

    async def _describe_partition(self, state: PartitionState) -> PartitionInfo:
        node = {b: info.node_id for b, info in self.metadata.brokers.items()}
        offsets = {"log_start_offset": -1, "high_watermark": -1, "log_end_offset": -1}
        if state.leader >= 0:
            try:
                handle = self._replicas.lookup(state.topic, state.partition, state.leader)
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
        async with self._store.lock():
            state = self._store.partition_state(topic, partition)
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
                self._store.record(ClusterMetadata.partition_record(state, state.leader, state.leader_epoch, tuple(isr)))
                log.info("%s-%d ISR %s -> %s", topic, partition, list(state.isr), isr)
            new = self._store.partition_state(topic, partition)
            return list(new.isr), new.partition_epoch
