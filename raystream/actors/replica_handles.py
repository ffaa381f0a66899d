"""The controller's registry of partition-replica actors: finding, creating and caching their handles, and
sending each its role.

One owner of the handle cache (a name lookup is a GCS round trip: once per replica until the handle goes
stale); the failure monitor, the group coordinator (lag gauges), the transaction coordinator (markers) and
the topic changes all go through its methods. Creating a replica marks it starting in the
:class:`~raystream.actors.replica_liveness.ReplicaLiveness` table it was given.

Concurrency contract: used only on the controller actor's event loop; no lock of its own. Methods that
only look up or create handles never await; :meth:`ensure_replicas` and the role calls await replicas and
are called by their owners under the metadata lock (topic changes, reconciliation) or outside it (start).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import ray

from raystream import handles
from raystream.actors.metadata_store import MetadataStore
from raystream.actors.replica import PartitionReplica
from raystream.actors.replica_liveness import ReplicaKey, ReplicaLiveness
from raystream.config import BrokerConfig
from raystream.core.metadata import TopicState
from raystream.core.names import partition_dir_name
from raystream.protocol import PartitionState, controller_actor_name


class ReplicaHandles:
    def __init__(self, cluster: str, store: MetadataStore, broker_config: BrokerConfig,
                 liveness: ReplicaLiveness) -> None:
        self._cluster = cluster
        self._store = store
        self._broker_config = broker_config
        self._liveness = liveness
        self._handles: dict[ReplicaKey, Any] = {}

    # -- handles --------------------------------------------------------------------------------------------
    def lookup(self, topic: str, partition: int, broker: int) -> Any:
        """The replica actor's handle by name (a GCS round trip); ``ValueError`` if there is no such actor."""
        return handles.get_replica(self._cluster, topic, partition, broker)

    def cached(self, key: ReplicaKey) -> Any:
        """The replica's handle, looked up once and kept until :meth:`forget`."""
        handle = self._handles.get(key)
        if handle is None:
            handle = self._handles[key] = self.lookup(*key)
        return handle

    def forget(self, key: ReplicaKey) -> Any:
        """Drop a stale handle (the actor died or was replaced); returns it if one was cached."""
        return self._handles.pop(key, None)

    def forget_topic(self, name: str) -> None:
        for key in [k for k in self._handles if k[0] == name]:
            self._handles.pop(key, None)

    def exists(self, topic: str, partition: int, broker: int) -> bool:
        try:
            self.lookup(topic, partition, broker)
        except ValueError:
            return False
        return True

    def create(self, topic: str, partition: int, broker_id: int) -> Any:
        """The replica actor (created on its broker's node if it does not exist; found if it does)."""
        state = self._store.metadata.topics[topic]
        broker = self._store.metadata.brokers[broker_id]
        log_dir = str(Path(broker.log_dir) / partition_dir_name(topic, partition))
        options = handles.replica_options(self._cluster, topic, partition, broker_id, broker.node_id)
        return ray.remote(PartitionReplica).options(**options).remote(
            self._cluster, topic, partition, broker_id, log_dir, state.config, state.schema, state.key_column,
            controller_actor_name(self._cluster), vars(self._broker_config), state.schema_id)

    # -- roles ----------------------------------------------------------------------------------------------
    async def ensure_replicas(self, topic: TopicState, partitions: list[int] | None = None,
                              only_missing: bool = False) -> None:
        """Create (or find) the replica actors of ``partitions`` concurrently and send them their roles
        (``only_missing``: only to replicas whose actor had to be created)."""
        await asyncio.gather(*self.role_calls(topic, partitions, only_missing))

    def role_calls(self, topic: TopicState, partitions: list[int] | None = None, only_missing: bool = False) -> list:
        """Create (or find) the replica actors and return the (not yet awaited) calls that send their roles.
        A role sent late is harmless: a replica refuses a role older than the one it holds."""
        parts = [topic.partitions[p] for p in (partitions if partitions is not None else sorted(topic.partitions))]
        calls = []
        for state in parts:
            for broker in state.replicas:
                if not self._store.broker_alive(broker):
                    continue
                exists = self.exists(topic.name, state.partition, broker)
                if only_missing and exists:
                    continue
                handle = self.create(topic.name, state.partition, broker)
                if not exists:
                    key = (topic.name, state.partition, broker)
                    self.forget(key)
                    self._liveness.created(key)
                calls.append(self.send_role(handle, state, broker))
        return calls

    @staticmethod
    async def send_role(handle: Any, state: PartitionState, broker: int) -> None:
        if broker == state.leader:
            await handle.become_leader.remote(state.leader_epoch, list(state.replicas), list(state.isr),
                                              state.partition_epoch)
        else:
            await handle.become_follower.remote(state.leader_epoch, state.leader, list(state.replicas))
