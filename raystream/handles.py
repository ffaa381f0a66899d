"""Every raystream actor's Ray options and name lookups, in one place.

Each actor kind is started here with the options its role needs, and found here by its name:

============  ==========================================================================================
controller    detached, restarted forever (``max_restarts=-1``), calls resubmitted to the new incarnation
              after a restart (``max_task_retries=-1``), pinned to the node that started the cluster.
replica       detached, restarted forever, calls *not* retried by Ray (a produce retried blindly could be
              written twice; the client's sender owns retries), pinned to its broker's node (its log is
              on that node's disk).
broker agent  detached, never restarted (a new one is created on demand and claims the node's broker
              directory again), pinned to its node.
============  ==========================================================================================

All take ``num_cpus=0``: they wait on I/O, and reserving a CPU each would fit two on this machine.
Lookups raise ``ValueError`` (Ray's answer) when no actor has the name. Callable from any thread. This
module imports only Ray and the protocol names, never the actor classes: the client's transport looks
actors up here without importing the log engine, and the one place that starts each kind passes the class
(``ray.remote(cls).options(**replica_options(...))``).
"""

from __future__ import annotations

import time
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from raystream.protocol import (
    ACTOR_NAMESPACE,
    broker_agent_name,
    controller_actor_name,
    replica_actor_name,
)


def _pinned(node_id: str) -> NodeAffinitySchedulingStrategy:
    return NodeAffinitySchedulingStrategy(node_id, soft=False)


def get_named(name: str) -> Any:
    return ray.get_actor(name, namespace=ACTOR_NAMESPACE)


def actor_exists(name: str) -> bool:
    try:
        get_named(name)
    except ValueError:
        return False
    return True


def wait_until_gone(names: list[str], timeout_s: float) -> list[str]:
    """Wait, at most ``timeout_s``, until no actor holds any of ``names`` (a killed actor frees its name a
    moment later); the names still held then."""
    deadline = time.monotonic() + timeout_s
    while names and time.monotonic() < deadline:
        names = [name for name in names if actor_exists(name)]
        if names:
            time.sleep(0.05)
    return names


def get_controller(cluster: str) -> Any:
    return get_named(controller_actor_name(cluster))


def get_replica(cluster: str, topic: str, partition: int, broker_id: int) -> Any:
    return get_named(replica_actor_name(cluster, topic, partition, broker_id))


def get_broker_agent(cluster: str, node_id: str) -> Any:
    return get_named(broker_agent_name(cluster, node_id))


def controller_options(cluster: str, node_id: str) -> dict[str, Any]:
    """``.options(...)`` for the cluster's controller (the running one if it exists), pinned to ``node_id``."""
    return dict(name=controller_actor_name(cluster), namespace=ACTOR_NAMESPACE, get_if_exists=True,
                lifetime="detached", num_cpus=0, max_restarts=-1, max_task_retries=-1,
                scheduling_strategy=_pinned(node_id))


def replica_options(cluster: str, topic: str, partition: int, broker_id: int, node_id: str) -> dict[str, Any]:
    """``.options(...)`` for the replica actor of (topic, partition, broker_id) on ``node_id``."""
    return dict(name=replica_actor_name(cluster, topic, partition, broker_id), namespace=ACTOR_NAMESPACE,
                get_if_exists=True, lifetime="detached", num_cpus=0, max_restarts=-1, max_task_retries=0,
                scheduling_strategy=_pinned(node_id))


def broker_agent_options(cluster: str, node_id: str) -> dict[str, Any]:
    """``.options(...)`` for the broker agent of ``node_id`` (the running one if it exists)."""
    return dict(name=broker_agent_name(cluster, node_id), namespace=ACTOR_NAMESPACE, get_if_exists=True,
                lifetime="detached", num_cpus=0, max_restarts=0, scheduling_strategy=_pinned(node_id))
