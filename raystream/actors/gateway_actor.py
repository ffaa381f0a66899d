"""Kafka gateways run by raystream itself, one per Ray node (``raystream start`` with a ``gateway:`` section
in the configuration file; settings in :mod:`raystream.gateway.settings`, docs/kafka-protocol.md).

Two actor kinds, both detached, ``num_cpus=0``, in the ``raystream`` namespace:

==================  ======================================================================================
GatewaySupervisor   one per cluster (``{cluster}/gateways``), restarted forever, soft-pinned to the node
                    that started it (restarted elsewhere if that node dies). It keeps the directory of the
                    running gateways (Kafka node id, advertised host and port) from their announcements, and
                    every ``node.check.interval.ms`` starts a gateway on each live Ray node that has none
                    running: the nodes that join later get one too, and so does a node whose gateway died.
GatewayActor        one per (cluster, Ray node) (``{cluster}/gateway/{node id}``), hard-pinned to its node
                    and restarted while the node lives. It waits until its node is a broker, serves a
                    :class:`~raystream.gateway.server.Gateway` on its own event loop with the broker's id as
                    Kafka node id (so a partition's leader, a broker id, names the gateway on the leader's
                    node), and every ``registration.interval.ms`` announces itself to the supervisor and
                    reads back the directory, which its Metadata presents as the cluster's brokers.
==================  ======================================================================================

The directory is soft state: a restarted supervisor starts empty and is whole again one registration
interval later. A gateway not heard from for ``registration.timeout.ms``, or on a node Ray lists as dead,
leaves it. The controller is not involved: gateways are clients of the cluster (they find their broker id
with ``get_brokers``, as ``raystream status`` does).

Concurrency contract: both are async actors; their state lives on the actor's event loop, and blocking Ray
calls (``ray.nodes``, creating actors, the client transport) run in threads.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import os
import time
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from raystream import handles
from raystream.actors import logs
from raystream.errors import InvalidConfigurationError, RequestTimeoutError
from raystream.gateway.settings import GatewaySettings
from raystream.protocol import ACTOR_NAMESPACE

log = logging.getLogger(__name__)
#: How much longer than ``start.timeout.ms`` ``start_gateways`` waits for the supervisor itself to answer
#: (its own process may take seconds to start on a busy node).
START_SLACK_S = 30


def supervisor_name(cluster: str) -> str:
    return f"{cluster}/gateways"


def gateway_name(cluster: str, ray_node_id: str) -> str:
    return f"{cluster}/gateway/{ray_node_id}"


@dataclasses.dataclass(frozen=True)
class GatewayEntry:
    """One running gateway: its Ray node, its Kafka node id (the node's broker id) and advertised address."""

    ray_node_id: str
    node_id: int
    host: str
    port: int


def gateway_kwargs(settings: GatewaySettings) -> dict[str, Any]:
    """The :class:`~raystream.gateway.server.Gateway` arguments the settings give (besides the address).
    ``security`` becomes the gateway's ``security=`` (a :class:`raystream.gateway.security.SecurityConfig`,
    read on the node that runs the gateway: its TLS files must be there); refused by a gateway without it."""
    from raystream.gateway.server import Gateway

    kwargs: dict[str, Any] = dict(socket_request_max_bytes=settings.socket_request_max_bytes,
                                  connections_max_idle_ms=settings.connections_max_idle_ms,
                                  request_timeout_ms=settings.request_timeout_ms,
                                  metadata_max_age_ms=settings.metadata_max_age_ms)
    if settings.security is not None:
        if "security" not in inspect.signature(Gateway.__init__).parameters:
            raise InvalidConfigurationError("gateway.security is set, but this gateway has no security "
                                            "settings yet", key="gateway.security")
        from raystream.gateway.security import SecurityConfig  # with the parameter: the security settings

        try:
            kwargs["security"] = SecurityConfig.from_mapping(settings.security, base_dir=settings.base_dir)
        except InvalidConfigurationError as exc:
            raise InvalidConfigurationError(f"gateway.security: {exc.message}", key="gateway.security") from None
    return kwargs


class GatewayActor:
    """Serves the Kafka protocol on one Ray node (see the module docstring)."""

    def __init__(self, cluster: str, settings: GatewaySettings) -> None:
        logs.configure()
        self.cluster, self.settings = cluster, settings
        self.ray_node_id = ray.get_runtime_context().get_node_id()
        self.ip = ray.util.get_node_ip_address()
        self._gateway: Any = None
        self._peers: dict[int, tuple[str, int]] = {}
        self._error: str | None = None  # the last failure, for status() and `raystream start`'s message
        self._task = asyncio.get_running_loop().create_task(self._run())

    def peers(self) -> dict[int, tuple[str, int]]:
        """The other gateways as last read from the supervisor (the Gateway's ``peers``)."""
        return self._peers

    async def status(self) -> dict[str, Any]:
        entry = self._entry()
        return {"ray_node_id": self.ray_node_id, "pid": os.getpid(), "entry": entry, "error": self._error}

    def _entry(self) -> GatewayEntry | None:
        if self._gateway is None:  # set once it listens
            return None
        advertised = self.settings.advertised_host(self.ip, self.ray_node_id)
        return GatewayEntry(self.ray_node_id, self._gateway.node_id, advertised, self._gateway.port)

    async def _run(self) -> None:
        interval_s = self.settings.registration_interval_ms / 1000
        transport = await self._retrying("connect to the cluster", self._connect, interval_s)
        broker_id = await self._retrying("find this node's broker", lambda: self._broker_id(transport), interval_s)
        await self._retrying("start the gateway", lambda: self._start(transport, broker_id), interval_s)
        supervisor = None
        while True:  # announce, read the directory back; a supervisor restarting is missed for a round
            try:
                supervisor = supervisor or await asyncio.to_thread(
                    ray.get_actor, supervisor_name(self.cluster), namespace=ACTOR_NAMESPACE)
                peers = await asyncio.wait_for(supervisor.announce.remote(self._entry()),
                                               self.settings.request_timeout_ms / 1000)
                self._peers = {node: address for node, address in peers.items() if node != broker_id}
            except Exception as exc:  # noqa: BLE001 - gone, restarting or slow: try again next round
                supervisor = None
                log.info("[gateway %s] could not announce itself: %s: %.200s", self.ray_node_id[:12],
                         type(exc).__name__, exc)
            await asyncio.sleep(interval_s)

    async def _retrying(self, what: str, step, interval_s: float) -> Any:
        """``step()`` until it returns a value (not None); each failure is logged and kept for status()."""
        while True:
            try:
                result = await step()
                if result is not None:
                    self._error = None
                    return result
                self._error = f"waiting to {what}"
            except Exception as exc:  # noqa: BLE001 - kept for status() and retried: the node may settle
                self._error = f"could not {what}: {type(exc).__name__}: {exc}"
                log.warning("[gateway %s] %s", self.ray_node_id[:12], self._error)
            await asyncio.sleep(interval_s)

    async def _connect(self) -> Any:
        from raystream.client.transport import RayTransport

        return await asyncio.to_thread(RayTransport.connect, self.cluster)

    async def _broker_id(self, transport: Any) -> int | None:
        brokers = await asyncio.to_thread(transport.get_brokers, self.settings.request_timeout_ms / 1000)
        return next((b for b, info in sorted(brokers.items()) if info.node_id == self.ray_node_id and info.alive),
                    None)

    async def _start(self, transport: Any, broker_id: int) -> bool:
        from raystream.gateway.server import Gateway

        gateway = Gateway(transport, self.settings.listen_host or self.ip, self.settings.port,
                          advertised_host=self.settings.advertised_host(self.ip, self.ray_node_id),
                          node_id=broker_id, peers=self.peers, **gateway_kwargs(self.settings))
        await gateway.start()
        self._gateway = gateway
        log.info("[gateway %s] Kafka node %d listening on %s:%d, advertised as %s", self.ray_node_id[:12],
                 broker_id, gateway.host, gateway.port, gateway.advertised_host)
        return True


class GatewaySupervisor:
    """Starts a gateway on every Ray node and keeps the directory of running gateways (module docstring)."""

    def __init__(self, cluster: str, settings: GatewaySettings) -> None:
        logs.configure()
        self.cluster, self.settings = cluster, settings
        self._entries: dict[str, tuple[GatewayEntry, float]] = {}  # Ray node id -> (entry, monotonic seen)
        self._alive: set[str] = set()  # Ray's live nodes, as the last node check saw them
        self._announced = asyncio.Condition()
        self._task = asyncio.get_running_loop().create_task(self._node_loop())

    async def announce(self, entry: GatewayEntry | None) -> dict[int, tuple[str, int]]:
        """Record a gateway's announcement (None: not serving yet); the directory, Kafka node id ->
        (host, port)."""
        if entry is not None:
            self._entries[entry.ray_node_id] = (entry, time.monotonic())
            async with self._announced:
                self._announced.notify_all()
        return {e.node_id: (e.host, e.port) for e in self.entries()}

    def entries(self) -> list[GatewayEntry]:
        """The live gateways, by Kafka node id. Of two on one node id (a broker that moved to a new Ray
        node), the one heard from last."""
        expiry = time.monotonic() - self.settings.registration_timeout_ms / 1000
        live = sorted((seen, entry) for node, (entry, seen) in self._entries.items()
                      if seen >= expiry and (not self._alive or node in self._alive))
        return sorted({entry.node_id: entry for _, entry in live}.values(), key=lambda e: e.node_id)

    async def ensure(self, timeout_s: float) -> list[GatewayEntry]:
        """Start a gateway on every live node now and wait, at most ``timeout_s``, until each has announced
        itself; the live gateways. RequestTimeoutError names the nodes still missing and why."""
        await self._check_nodes()
        deadline = time.monotonic() + timeout_s

        def missing() -> set[str]:
            return self._alive - {e.ray_node_id for e in self.entries()}

        async with self._announced:
            while missing():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise RequestTimeoutError(f"Kafka gateways of cluster {self.cluster} did not start within "
                                              f"{timeout_s:.0f} s: {await self._why(sorted(missing()))}")
                try:
                    await asyncio.wait_for(self._announced.wait(), min(remaining, 1.0))
                except asyncio.TimeoutError:  # re-check: a node may have died meanwhile
                    await self._check_nodes()
        return self.entries()

    async def _why(self, nodes: list[str]) -> str:
        reasons = []
        for node in nodes:
            try:
                handle = await asyncio.to_thread(ray.get_actor, gateway_name(self.cluster, node),
                                                 namespace=ACTOR_NAMESPACE)
                status = await asyncio.wait_for(handle.status.remote(), 5)
                reasons.append(f"node {node[:12]}: {status['error'] or 'starting'}")
            except Exception as exc:  # noqa: BLE001 - the reason itself could not be read: say so
                reasons.append(f"node {node[:12]}: no answer ({type(exc).__name__})")
        return "; ".join(reasons)

    async def _node_loop(self) -> None:
        while True:
            try:
                await self._check_nodes()
            except Exception:  # noqa: BLE001 - Ray's node table unreachable for a round: try again
                log.exception("[gateways %s] node check failed", self.cluster)
            await asyncio.sleep(self.settings.node_check_interval_ms / 1000)

    async def _check_nodes(self) -> None:
        """Note Ray's live nodes, forget the gateways of dead ones, and start a gateway on every live node
        that has not announced one (``get_if_exists``: a gateway that is starting is left alone)."""
        nodes = await asyncio.to_thread(ray.nodes)
        self._alive = {n["NodeID"] for n in nodes if n["Alive"]}
        for node in set(self._entries) - self._alive:
            del self._entries[node]
        serving = {e.ray_node_id for e in self.entries()}
        for node in sorted(self._alive - serving):
            await asyncio.to_thread(_create_gateway, self.cluster, node, self.settings)


def _create_gateway(cluster: str, ray_node_id: str, settings: GatewaySettings) -> Any:
    return ray.remote(GatewayActor).options(
        name=gateway_name(cluster, ray_node_id), namespace=ACTOR_NAMESPACE, get_if_exists=True,
        lifetime="detached", num_cpus=0, max_restarts=-1, max_task_retries=0,
        scheduling_strategy=NodeAffinitySchedulingStrategy(ray_node_id, soft=False)).remote(cluster, settings)


def start_gateways(cluster: str, settings: GatewaySettings) -> list[GatewayEntry]:
    """Start (or find) the cluster's gateway supervisor on this node and wait until every live node serves
    a gateway (``start.timeout.ms``); the gateways. A running supervisor keeps the settings it was created
    with (as the controller does): ``raystream stop`` first to change them."""
    gateway_kwargs(settings)  # a setting this gateway cannot honour fails here, before anything starts
    here = ray.get_runtime_context().get_node_id()
    supervisor = ray.remote(GatewaySupervisor).options(
        name=supervisor_name(cluster), namespace=ACTOR_NAMESPACE, get_if_exists=True, lifetime="detached",
        num_cpus=0, max_restarts=-1, max_task_retries=-1,
        scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=True)).remote(cluster, settings)
    timeout_s = settings.start_timeout_ms / 1000
    try:
        return ray.get(supervisor.ensure.remote(timeout_s), timeout=timeout_s + START_SLACK_S)
    except ray.exceptions.GetTimeoutError:
        raise RequestTimeoutError(f"the Kafka gateway supervisor of cluster {cluster} did not answer within "
                                  f"{timeout_s + START_SLACK_S:.0f} s") from None
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        raise (cause if isinstance(cause, Exception) else exc) from None


def stop_gateways(cluster: str, timeout_s: float = 10.0) -> None:
    """Kill the cluster's gateway supervisor, then every node's gateway (no restart), and wait (bounded)
    until their names are free, so that a ``raystream start`` right after starts new ones. No-op without."""
    names = [supervisor_name(cluster)] + [gateway_name(cluster, n["NodeID"]) for n in ray.nodes()]
    killed = []
    for name in names:
        try:
            ray.kill(handles.get_named(name), no_restart=True)
            killed.append(name)
        except ValueError:  # none by that name
            pass
    handles.wait_until_gone(killed, timeout_s)
