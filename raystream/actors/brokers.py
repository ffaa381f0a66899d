"""The controller's broker registry: which Ray node each broker (a stable id, one log directory) lives on.

Each node runs a broker agent (:mod:`raystream.actors.broker`) that claims a broker directory and holds its
lock; the registry asks the agents (creating one on a new node) for their broker ids, proposing distinct
new ids, and records the answers as ``broker`` metadata records. Brokers on no live node are marked dead.
See :mod:`raystream.actors.controller` for the directory layout.

Concurrency contract: on the controller actor's event loop. Registration is serialised by
:meth:`BrokerRegistry.registration_lock` (taken before the metadata lock, never after): the nodes are
probed outside the metadata lock (a dying node must not hold up elections), the answers recorded under it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import ray

from raystream import handles
from raystream.actors.broker import BrokerAgent
from raystream.actors.metadata_store import MetadataStore
from raystream.config import BrokerConfig
from raystream.core.metadata import ClusterMetadata
from raystream.protocol import BrokerInfo

log = logging.getLogger(__name__)
#: Called under the metadata lock after a registration, with the brokers as they were before it.
BrokersChanged = Callable[[dict[int, BrokerInfo]], Awaitable[None]]


class BrokerRegistry:
    def __init__(self, cluster: str, data_dir: str, store: MetadataStore, broker_config: BrokerConfig) -> None:
        self.cluster = cluster
        self.data_dir = data_dir
        self.broker_config = broker_config
        self._store = store
        self.metadata = store.metadata
        self._registration: asyncio.Lock | None = None
        #: Broker ids proposed to agents that did not answer are never proposed again (see _probe_nodes).
        self._next_broker_proposal = 0

    def registration_lock(self) -> asyncio.Lock:
        """Serialises broker registration (probe + record); taken before the metadata lock, never after."""
        if self._registration is None:
            self._registration = asyncio.Lock()
        return self._registration

    async def register_nodes(self, only_new: bool, timeout_s: float | None = None,
                             nodes: list[dict] | None = None, on_change: BrokersChanged | None = None) -> None:
        """Make Ray's live nodes brokers: ask each node's broker agent for its broker (creating the agent on
        a new node), all at once and bounded by ``timeout_s`` (default ``broker.registration.timeout.ms``),
        then record the answers. ``only_new``: only the nodes without a live broker yet (no call at all when
        there is none); else every live node, and brokers on no live node are marked dead.

        The caller holds the registration lock (two probes at once could propose one id twice), not the
        metadata lock: the probe runs outside it (a dying node must not hold up elections), the recording
        under it. ``on_change`` (the failure monitor's ``brokers_changed``): called under the metadata lock
        with the brokers as they were before, so brokers that came back or moved get their replicas."""
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
        async with self._store.lock():
            before = {b: info for b, info in self.metadata.brokers.items()}
            self.apply_registration(nodes, results, full=not only_new)
            if on_change is not None:
                await on_change(before)

    def agent(self, node_id: str):
        """The broker agent of ``node_id`` (created there if it has none)."""
        return ray.remote(BrokerAgent).options(**handles.broker_agent_options(self.cluster, node_id)).remote(
            self.cluster, self.data_dir)

    async def _probe_nodes(self, nodes: list[dict], timeout_s: float) -> list[Any]:
        """Ask each node's agent for its (broker id, data dir, log dir), proposing distinct new ids (an
        agent that already holds a broker directory ignores the proposal). Bounded: a node Ray still lists
        as alive may be gone (Ray takes ~15 s to notice); such a node counts as unregistered this time."""
        proposed = max(self.metadata.next_broker_id, self._next_broker_proposal)

        async def register(node_id: str, broker_id: int) -> tuple[int, str, str]:
            return tuple(await self.agent(node_id).register.remote(broker_id))

        calls = [asyncio.wait_for(register(n["NodeID"], proposed + i), timeout_s) for i, n in enumerate(nodes)]
        results = list(await asyncio.gather(*calls, return_exceptions=True))
        # An agent that did not answer may still claim a new directory with its proposed id: never propose
        # that id again (an id proposed to an agent that answered is recorded, or was not used).
        unanswered = [proposed + i for i, r in enumerate(results) if isinstance(r, BaseException)]
        self._next_broker_proposal = max([self._next_broker_proposal, *(i + 1 for i in unanswered)])
        return results

    def apply_registration(self, nodes: list[dict], results: list[Any], full: bool = True) -> None:
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
                self._store.record(ClusterMetadata.broker_record(broker_id, node_id, data_dir, log_dir))
        for broker_id, info in list(self.metadata.brokers.items()):
            if not full and info.node_id not in probed and broker_id not in alive_ids:
                continue
            self._store.set_broker_alive(broker_id, broker_id in alive_ids)
