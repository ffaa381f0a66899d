"""``rs.init`` / ``rs.shutdown``: connect this process to a raystream cluster (starting it if needed).

``init`` joins the Ray cluster this process already uses, else ``RAY_ADDRESS``, else starts a local Ray
(the embedded default); ``address="auto"`` joins a running cluster. The controller is a detached named
actor in namespace ``raystream``, one per cluster name, found or created here (``get_if_exists``), so a
notebook, the CLI and a Ray Data job share one cluster.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

import ray

from raystream import errors, handles
from raystream.core.names import validate_cluster_name

log = logging.getLogger(__name__)

_current: ClusterHandle | None = None


@dataclasses.dataclass(frozen=True)
class ClusterHandle:
    cluster: str
    data_dir: str
    controller: Any  # ray.actor.ActorHandle
    started_ray: bool

    def brokers(self) -> dict:
        return ray.get(self.controller.get_brokers.remote())


def default_data_dir() -> str:
    from raystream.cluster_config import HOME_DATA_DIR

    return os.environ.get("RAYSTREAM_DATA_DIR") or str(Path(HOME_DATA_DIR).expanduser())


def init(address: str | None = None, data_dir: str | None = None, cluster: str | None = None,
         broker_config: dict[str, Any] | None = None, config: str | os.PathLike | None = None,
         create: bool = True, **ray_init_kwargs: Any) -> ClusterHandle:
    """Connect to (or start) the raystream cluster ``cluster``. Idempotent for the same arguments.

    ``config``: a cluster defaults file (``raystream.yaml``; else ``$RAYSTREAM_CONFIG``; format and
    precedence in :mod:`raystream.cluster_config`). Arguments win over the environment, which wins over
    the file: ``cluster`` defaults to the file's, else ``"default"``; ``broker_config`` keys win over the
    file's ``broker`` section. The file's broker settings and topic defaults are given to the controller
    when this call creates it. ``create=False`` only joins a running cluster (ClusterNotFoundError if
    there is none): what the CLI's commands other than ``raystream start`` do, so that no command starts a
    controller by accident — on whatever node it happens to run."""
    global _current
    from raystream import cluster_config

    file = cluster_config.load(config)
    where = cluster_config.resolve_connection(file, address, cluster, data_dir)
    cluster = validate_cluster_name(where.cluster)
    if _current is not None and _current.cluster == cluster and ray.is_initialized():
        return _current
    started_ray = False
    if not ray.is_initialized():
        ray_init_kwargs.setdefault("log_to_driver", False)
        # "local" starts a new embedded Ray; plain None would join any cluster `ray start` left running.
        ray.init(address=where.address or "local", **ray_init_kwargs)
        started_ray = where.address is None
    data_dir = where.data_dir
    if not create:
        try:
            controller = handles.get_controller(cluster)
        except ValueError:
            raise errors.ClusterNotFoundError(
                f"no raystream cluster named {cluster!r} is running on this Ray cluster; start it with "
                f"`raystream start`") from None
        _current = ClusterHandle(cluster, data_dir, controller, started_ray)
        _set_client_context(_current)
        return _current
    here = ray.get_runtime_context().get_node_id()
    from raystream.actors.controller import Controller

    controller = ray.remote(Controller).options(**handles.controller_options(cluster, here)).remote(
        cluster, data_dir, file.broker_config(broker_config) or None, dict(file.topic_defaults) or None)
    ray.get(controller.start.remote())
    _current = ClusterHandle(cluster, data_dir, controller, started_ray)
    _set_client_context(_current)
    return _current


def _set_client_context(handle: ClusterHandle | None) -> None:
    try:
        from raystream.client import context
        from raystream.client.transport import RayTransport
    except ImportError:  # client package not built yet
        return
    context.set_current(RayTransport(handle.controller, handle.cluster) if handle else None)


def current() -> ClusterHandle | None:
    return _current


def shutdown(stop_cluster: bool = False) -> None:
    """Disconnect this process. With ``stop_cluster``, also stop the controller and every replica
    (data stays on disk). A Ray started by ``init`` is shut down too."""
    global _current
    handle = _current
    _current = None
    _set_client_context(None)
    if handle is None:
        return
    if stop_cluster or handle.started_ray:  # an embedded cluster dies with its Ray: close logs cleanly first
        stop(handle)
    if handle.started_ray and ray.is_initialized():
        ray.shutdown()


def stop(handle: ClusterHandle) -> None:
    """Gracefully stop a cluster's actors: its Kafka gateways first (if ``raystream start`` started any);
    every replica flushes and closes its log; then the controller and every node's broker agent (which
    releases its broker directory's lock)."""
    from raystream.actors.gateway_actor import stop_gateways

    stop_gateways(handle.cluster)
    metadata = ray.get(handle.controller.get_metadata.remote(None))

    refs, actors = [], []
    for topic in metadata.values():
        for part in topic.partitions:
            for broker in part.replicas:
                try:
                    actor = handles.get_replica(handle.cluster, topic.name, part.partition, broker)
                except ValueError:
                    continue
                refs.append(actor.shutdown.remote())
                actors.append(actor)
    _wait_for_shutdowns(refs, timeout_s=REPLICA_SHUTDOWN_TIMEOUT_S)
    for actor in actors:
        ray.kill(actor, no_restart=True)
    ray.kill(handle.controller, no_restart=True)
    _stop_broker_agents(handle.cluster)


#: How long ``stop`` waits for replicas to close their logs before killing them anyway.
REPLICA_SHUTDOWN_TIMEOUT_S = 60.0


def _wait_for_shutdowns(refs: list, timeout_s: float) -> None:
    """Wait (bounded) for the replicas' shutdown calls. A replica that cannot answer (its node died, it is
    restarting) is logged and killed like the rest: its log recovers on its next start, as after a crash."""
    ready, pending = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
    failed = len(pending)
    for ref in ready:
        try:
            ray.get(ref)
        except ray.exceptions.RayActorError:  # ActorDiedError, ActorUnavailableError
            failed += 1
    if failed:
        log.warning("stop: %d of %d replicas did not close their logs (node gone or replica restarting); "
                    "their logs recover when they start again", failed, len(refs))


def _stop_broker_agents(cluster: str, timeout_s: float = 10.0) -> None:
    """Kill every node's broker agent of ``cluster`` and wait (bounded) until their names are free, so that
    a ``start`` right after creates new agents, which claim the same broker directories again."""
    from raystream.protocol import broker_agent_name

    names = [broker_agent_name(cluster, n["NodeID"]) for n in ray.nodes() if n["Alive"]]
    for name in names:
        try:
            ray.kill(handles.get_named(name), no_restart=True)
        except ValueError:  # this node never had one
            pass
    handles.wait_until_gone(names, timeout_s)
